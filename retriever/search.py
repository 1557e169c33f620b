"""Candidate generation: lexical BM25, text-vector ANN and image-vector ANN, filtered before the
cut and merged by a configurable fusion.

Every source sees the same filter: the lexical engine gets it as a query clause, the vector
indexes as a boolean row mask (which also hides deleted and replaced rows).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from indexer.encoders.colour import colour_histogram
from indexer.filters import Filters
from indexer.spelling import Correction, SpellCorrector
from indexer.store import LiveIndex
from retriever.cf import CFSource  # --- collaborative filtering
from retriever.fusion import FUSERS, fusion_head
from shopsearch.errors import InvalidQueryError
from shopsearch.settings import Settings

log = logging.getLogger(__name__)

MAX_QUERY_CHARS = 1000


@dataclass
class SourceHit:
    rank: int
    score: float
    terms: tuple[float, ...] | None = None  # the source's score terms (the CF source: CF_TERMS)


@dataclass
class Candidate:
    row: int
    id: str
    score: float
    sources: dict[str, SourceHit] = field(default_factory=dict)
    detail: dict[str, Any] = field(default_factory=dict)  # e.g. BM25 per field, for explain


@dataclass
class Retrieval:
    candidates: list[Candidate]
    text: str | None
    timings_ms: dict[str, float]
    query_vectors: dict[str, np.ndarray] = field(default_factory=dict)
    browse: bool = False
    correction: Correction | None = None  # set when spelling correction changed the query or has a suggestion


class Retriever:
    """Turns a text and/or image query into fused candidates from every available source."""

    def __init__(self, index: LiveIndex, settings: Settings) -> None:
        self.index = index
        self.settings = settings
        self.cf = CFSource(index.index_dir, settings)  # --- collaborative filtering: lazy, hot-reloaded
        self._corrector: SpellCorrector | None = None
        self._model_warned: tuple[str, str] | None = None

    def _text_encoder(self) -> Any:
        """The query encoder, with a warning (once per pair) when it is not the model the index
        was built with: another model of the same width encodes without error and silently
        ranks worse (a text score of 0.08 where 0.59 was expected)."""
        encoder = self.index.encoders.text
        built = ((self.index.manifest.get("models") or {}).get("text") or {}).get("name")
        if built and encoder.name != built and self._model_warned != (built, encoder.name):
            self._model_warned = (built, encoder.name)
            log.warning(
                "the index was built with text model %s but queries are encoded with %s: set "
                "text_model to the index's model, or rebuild the index with this one",
                built,
                encoder.name,
            )
        return encoder

    def correct(self, text: str | None, *, spell: bool | None = None) -> Correction | None:
        """The query as it will be searched: whitespace collapsed and, unless switched off (here or
        in the settings), misspelled words replaced by catalog words (indexer.spelling)."""
        text = " ".join((text or "").split())
        if not text:
            return None
        if len(text) > MAX_QUERY_CHARS:
            raise InvalidQueryError(
                f"query text is {len(text)} characters; the limit is {MAX_QUERY_CHARS}", "query"
            )
        if not (self.settings.spell_correction if spell is None else spell):
            return Correction(text, text)
        vocabulary = self.index.vocabulary  # a reload brings a new one: a new corrector with it
        corrector = self._corrector
        if corrector is None or corrector.vocab is not vocabulary:
            corrector = self._corrector = SpellCorrector(vocabulary)
        return corrector.correct(text)

    def query_text(self, text: str | None) -> str | None:
        """What the encoders see for ``text``: batch evaluation encodes this, as retrieve would."""
        try:
            c = self.correct(text)
        except InvalidQueryError:  # too long: retrieve() refuses it, with the reason
            return " ".join((text or "").split()) or None
        return None if c is None else c.text

    def retrieve(
        self,
        text: str | None = None,
        image: Image.Image | None = None,
        filters: Filters | None = None,
        *,
        depth: int | None = None,
        explain: bool = False,
        sources: set[str] | None = None,
        query_vectors: Mapping[str, np.ndarray] | None = None,
        user_id: str | None = None,
        spell: bool | None = None,
    ) -> Retrieval:
        """``sources`` restricts the run to some of bm25/text/text_image/image (evaluation runs
        each alone); sources with weight 0 in the settings are skipped entirely.
        ``query_vectors`` passes precomputed normalised query vectors by source (batch
        evaluation encodes all queries at once) instead of calling the encoders; they must be
        the encodings of :meth:`query_text`. ``spell``: overrides the spelling-correction setting.
        Runs under the index's read lock: a write lands before or after it, never half-way."""
        self.index.maybe_reload()
        with self.index.reading():
            return self._retrieve(
                text,
                image,
                filters,
                depth=depth,
                explain=explain,
                sources=sources,
                query_vectors=query_vectors,
                user_id=user_id,
                spell=spell,
            )

    def _retrieve(
        self,
        text: str | None,
        image: Image.Image | None,
        filters: Filters | None,
        *,
        depth: int | None,
        explain: bool,
        sources: set[str] | None,
        query_vectors: Mapping[str, np.ndarray] | None,
        user_id: str | None,
        spell: bool | None,
    ) -> Retrieval:
        given = query_vectors or {}
        filters = filters or Filters()
        weights_cfg = self.settings.source_weights

        def use(source: str) -> bool:
            return (sources is None or source in sources) and weights_cfg.get(source, 1.0) > 0

        index = self.index
        t = time.perf_counter()
        correction = self.correct(text, spell=spell)
        t_spell = _ms(t)
        typed = correction.original if correction else None  # the click log knows what shoppers type
        text = correction.text if correction else None
        table, vectors, lexical = index.table, index.vectors, index.lexical  # one consistent snapshot
        n = max(depth or 0, self.settings.candidates)
        timings: dict[str, float] = {"spell": t_spell}

        t = time.perf_counter()
        mask = table.mask(filters)
        # no filter and no dead rows: the vector indexes need no mask (saves a pass over all labels)
        vmask = None if filters.is_empty() and table.n_rows == len(table) else mask
        timings["filter"] = _ms(t)

        if text is None and image is None:  # browse: everything that matches the filters
            rows = np.flatnonzero(mask)
            cands = [Candidate(row=int(r), id=table.product(int(r)).id, score=0.0) for r in rows]
            return Retrieval(cands, None, timings, browse=True)
        if correction is not None and not correction.changed and correction.suggestion is None:
            correction = None

        lists: dict[str, list[tuple[int, float]]] = {}
        details: dict[int, dict[str, Any]] = {}
        terms: dict[str, dict[int, tuple[float, ...]]] = {}  # source -> row -> its score terms
        qvecs: dict[str, np.ndarray] = {}
        if text is not None and use("bm25"):
            t = time.perf_counter()
            n_lex = max(n, self.settings.bm25_depth)
            hits = lexical.search(text, n_lex, filters, explain=explain)
            ranked = []
            for h in hits:
                row = table.id_to_row.get(h.id)
                if row is not None and mask[row]:
                    ranked.append((row, float(h.score)))
                    if explain and h.fields:
                        details[row] = {"bm25_fields": dict(h.fields)}
            lists["bm25"] = ranked
            timings["bm25"] = _ms(t)
        if text is not None:
            if "text" in vectors and use("text"):
                t = time.perf_counter()
                q = given["text"] if "text" in given else self._text_encoder().encode_query(text)
                qvecs["text"] = q
                timings["encode_text"] = _ms(t)
                t = time.perf_counter()
                lists["text"] = _vector_hits(vectors["text"], q, n, vmask)
                timings["text_ann"] = _ms(t)
            clip = self.settings.image_model.startswith("open_clip")
            if clip and "image" in vectors and use("text_image"):
                t = time.perf_counter()
                q = (
                    given["text_image"]
                    if "text_image" in given
                    else index.encoders.image.encode_text([text])[0]
                )
                qvecs["text_image"] = q
                lists["text_image"] = _vector_hits(vectors["image"], q, n, vmask)
                timings["text_image"] = _ms(t)
        if image is not None and use("image"):
            if "image" not in vectors and "video" not in vectors:
                raise InvalidQueryError("this index has no image or video vectors: search it by text")
            t = time.perf_counter()
            q = given["image"] if "image" in given else index.encoders.image.encode([image])[0]
            qvecs["image"] = q
            timings["encode_image"] = _ms(t)
            t = time.perf_counter()
            best: dict[int, float] = {}
            for modality in ("image", "video"):  # a photo query matches photos and video frames
                if modality in vectors:
                    for row, score in _vector_hits(vectors[modality], q, n, vmask):
                        best[row] = max(score, best.get(row, -np.inf))
            lists["image"] = sorted(best.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
            timings["image_ann"] = _ms(t)
        # --- collaborative filtering: clicks of this query (and close spellings), personalised
        # by user_id; same row mask as the other sources. Absent until 'shopsearch train-cf' ran.
        if text is not None and use("cf"):
            t = time.perf_counter()
            cf = self.cf.candidates(
                typed, self.settings.cf_candidates, table, mask, user_id=user_id, explain=explain
            )
            if cf is not None and cf.hits:
                lists["cf"] = cf.hits
                terms["cf"] = cf.terms
                for row, d in cf.details.items():
                    details.setdefault(row, {})["cf_detail"] = d
            timings["cf"] = _ms(t)
        # --- end collaborative filtering
        # --- fusion model (indexer.fusion): learned item vectors; the text goes through the query
        # tower, a photo (its vector and, for models with a colour token, its colour histogram)
        # through the item tower. Absent until 'shopsearch train-fusion' ran.
        fused = getattr(index, "fused", None)
        if fused is not None and use("fused") and (text is not None or image is not None):
            t = time.perf_counter()
            q = given.get("fused")
            if q is None and (text is not None or fused.config.image_dim):
                tv = iv = colour = None
                if text is not None:
                    tv = qvecs.get("text", given.get("text"))
                    tv = self._text_encoder().encode_query(text) if tv is None else tv
                if image is not None and fused.config.image_dim:
                    iv = qvecs.get("image", given.get("image"))
                    iv = index.encoders.image.encode([image])[0] if iv is None else iv
                    colour = colour_histogram(image) if fused.config.colour_dim else None
                q = fused.query_vector(tv, iv, text, colour)
            if q is not None:
                qvecs["fused"] = q
                lists["fused"] = fused.search(q, n, mask)
                if explain:
                    top = lists["fused"][: max(depth or 10, 10)]
                    att = fused.attention([r for r, _ in top], table, vectors)
                    for rank, (row, score) in enumerate(top, 1):
                        info = {"rank": rank, "score": round(score, 6), "attention": att.get(row, {})}
                        details.setdefault(row, {})["fused_model"] = info
            timings["fused"] = _ms(t)
        # --- end fusion model

        t = time.perf_counter()
        fuse = FUSERS[self.settings.fusion]
        kwargs = {"k": self.settings.rrf_k} if self.settings.fusion == "rrf" else {}
        weights = {s: weights_cfg.get(s, 1.0) for s in lists}
        fused = fuse(fusion_head(lists, n), weights, **kwargs)
        cands: dict[int, Candidate] = {}
        for source, ranked in lists.items():
            for rank, (row, score) in enumerate(ranked, 1):
                c = cands.get(row)
                if c is None:
                    fs = float(fused.get(row, 0.0))
                    c = cands[row] = Candidate(row=row, id=table.product(row).id, score=fs)
                    c.detail = details.get(row, {})
                c.sources[source] = SourceHit(rank=rank, score=score, terms=terms.get(source, {}).get(row))
        # ties: the better source rank first (keeps an engine's own order), then the id (stable pages)
        ordered = sorted(
            cands.values(), key=lambda c: (-c.score, min(h.rank for h in c.sources.values()), c.id)
        )
        timings["fuse"] = _ms(t)
        return Retrieval(ordered, text, timings, qvecs, correction=correction)


def _vector_hits(index, query: np.ndarray, n: int, mask: np.ndarray | None) -> list[tuple[int, float]]:
    scores, labels = index.search(query[None, :].astype(np.float32), n, allowed=mask)
    return [(int(lab), float(s)) for s, lab in zip(scores[0], labels[0], strict=True) if lab >= 0]


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 3)
