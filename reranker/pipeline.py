"""The search pipeline a storefront calls: retrieve candidates, re-rank, page, facet.

The pipeline lives in the re-ranking stage because it is the last stage before the API: it may
import the retriever and the indexer, and the API imports it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from indexer.filters import Filters
from indexer.media import load_image
from indexer.product import Product
from indexer.report import IngestReport
from indexer.spelling import Correction
from indexer.store import LiveIndex
from reranker.base import Reranker
from reranker.serving import open_reranker
from retriever.search import Candidate, Retriever
from shopsearch.errors import InvalidQueryError
from shopsearch.settings import Settings, load_settings


@dataclass(frozen=True)
class SearchRequest:
    text: str | None = None
    image: bytes | None = None  # encoded image file (JPEG/PNG/...), as uploaded
    image_name: str | None = None  # where the image came from, for errors ("--image x.jpg")
    k: int = 10
    offset: int = 0
    filters: Filters = field(default_factory=Filters)
    explain: bool = False
    user_id: str | None = None  # --- collaborative filtering: personalises the "cf" source
    spell_correction: bool | None = None  # None: the settings' spell_correction


@dataclass
class SearchResult:
    id: str
    score: float
    product: Product
    # explain: {"bm25": {"rank": 1, "score": 12.3}, "text": {...}, "image": {...}, "fused": 0.03}
    explain: dict[str, Any] | None = None


@dataclass
class SearchResponse:
    results: list[SearchResult]
    total: int  # size of the merged candidate set the page was cut from
    offset: int
    k: int
    # {"category": {"Men": 12, "Men > Tops": 7}, "brand": {"Luma": 9},
    #  "price": [{"min": 0, "max": 25, "count": 3}, ...]}
    facets: dict[str, Any]
    took_ms: float
    # set when spelling correction searched correction.text (.changed) or offers a suggestion
    correction: Correction | None = None

    def spelling_fields(self) -> dict[str, Any]:
        """The spelling part of a JSON response (API and ``shopsearch search --json`` alike)."""
        c = self.correction
        return {
            "corrected_query": c.text if c is not None and c.changed else None,
            "corrections": [{"from": a, "to": b} for a, b in c.changes] if c is not None else [],
            "did_you_mean": c.suggestion if c is not None else None,
        }


class SearchPipeline:
    """retrieve -> re-rank -> facet -> page. Thread-safe for concurrent searches; writes go
    through ``upsert``/``delete`` (serialised by the index)."""

    def __init__(self, index: LiveIndex, retriever: Retriever, reranker: Reranker) -> None:
        self.index = index
        self.retriever = retriever
        self.reranker = reranker

    @classmethod
    def open(
        cls, index_dir: Path, settings: Settings | None = None, reranker: Reranker | None = None
    ) -> SearchPipeline:
        settings = settings or load_settings()
        index = LiveIndex(Path(index_dir), settings)
        # the trained re-ranker of the index (pass-through until one is trained; see reranker.serving)
        return cls(index, Retriever(index, settings), reranker or open_reranker(index, settings))

    @property
    def settings(self) -> Settings:
        return self.retriever.settings

    def search(self, req: SearchRequest) -> SearchResponse:
        t0 = time.perf_counter()
        if req.k < 1 or req.k > MAX_PAGE:
            raise InvalidQueryError(f"k must be between 1 and {MAX_PAGE}, got {req.k}")
        if req.offset < 0 or req.offset > MAX_OFFSET:
            raise InvalidQueryError(f"offset must be between 0 and {MAX_OFFSET}, got {req.offset}")
        image = (
            load_image(req.image, max_pixels=self.settings.max_image_pixels, name=req.image_name)
            if req.image is not None
            else None
        )
        self.index.maybe_reload()
        with self.index.reading():  # writes wait for the whole search, re-ranking included
            retrieval = self.retriever.retrieve(
                req.text,
                image,
                req.filters,
                depth=req.offset + req.k,
                explain=req.explain,
                user_id=req.user_id,
                spell=req.spell_correction,
            )
            ranked = retrieval.candidates if retrieval.browse else self.reranker.rerank(retrieval)
            table = self.index.table
            page = ranked[req.offset : req.offset + req.k]
            results = [
                SearchResult(
                    id=c.id,
                    score=round(c.score, 6),
                    product=product,
                    explain=_explain(c) if req.explain else None,
                )
                for c in page
                if (product := table.rows[c.row]) is not None
            ]
            facets = table.facets(c.row for c in ranked)
        return SearchResponse(
            results=results,
            total=len(ranked),
            offset=req.offset,
            k=req.k,
            facets=facets,
            took_ms=round((time.perf_counter() - t0) * 1000, 3),
            correction=retrieval.correction,
        )

    def get(self, item_id: str) -> Product:
        return self.index.get(item_id)

    def upsert(self, products: list[Product]) -> IngestReport:
        return self.index.upsert(products)

    def delete(self, ids: list[str]) -> list[str]:
        return self.index.delete(ids)

    def info(self) -> dict[str, Any]:
        return {
            **self.index.info(),
            "reranker": self.reranker.name,
            # why the checkpoint on disk is not the one serving (a broken or half-copied model)
            "reranker_error": getattr(self.reranker, "last_error", None),
            "cf": self.retriever.cf.info(),  # --- collaborative filtering
        }

    def reload_reranker(self) -> str:
        """Load the re-ranker checkpoint now; searches keep the old model until the new one is
        ready (the swap is one reference assignment). Returns the new re-ranker's name."""
        reload = getattr(self.reranker, "reload", None)
        if reload is not None:
            reload()
        else:
            self.reranker = open_reranker(self.index, self.settings)
        return self.reranker.name

    def close(self) -> None:
        self.retriever.cf.close()
        self.index.close()


MAX_PAGE = 100
MAX_OFFSET = 10_000


def _explain(c: Candidate) -> dict[str, Any]:
    out: dict[str, Any] = {s: {"rank": h.rank, "score": round(h.score, 6)} for s, h in c.sources.items()}
    out["fused"] = round(c.score, 6)
    out.update(c.detail)
    return out
