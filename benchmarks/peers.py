"""Peer engines the benchmarks compare shopsearch against, fed the same items and vectors.

* :class:`LanceHybridPeer`: LanceDB with its native full-text index on the title, an
  IVF_HNSW_SQ vector index over our own text vectors and hybrid search fused by its
  ``RRFReranker``, the closest off-the-shelf equivalent of our hybrid retrieval.
* :class:`BM25sPeer`: bm25s (Snowball English stemming, English stop words) over the titles, a
  second lexical baseline for our tantivy BM25.

Query encoding is the caller's job: both peers take a ready vector (or none), so a benchmark can
encode with the exact encoder our engine uses and time encoding and searching separately.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# LanceDB's Rust core logs a deprecation warning on every hybrid query; keep stderr readable.
os.environ.setdefault("LANCEDB_LOG", "error")


def dir_size_bytes(path: Path) -> int:
    """Bytes of all regular files under ``path`` (0 if it does not exist)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


@dataclass
class PeerBuild:
    """What building a peer cost."""

    seconds: float
    stages: dict[str, float]  # seconds per build stage
    size_bytes: int


class LanceHybridPeer:
    """LanceDB hybrid search (native FTS on ``title`` + vector ANN, RRF fusion)."""

    name = "lancedb"
    table_name = "items"

    def __init__(self, path: Path, *, rrf_k: int = 60) -> None:
        import lancedb
        from lancedb.rerankers import RRFReranker

        self.path = Path(path)
        self.db = lancedb.connect(str(self.path))
        self.table = self.db.open_table(self.table_name)
        self.reranker = RRFReranker(K=rrf_k)
        self.index_type = next(
            (str(i.index_type) for i in self.table.list_indices() if "vector" in i.columns), "none"
        )

    @classmethod
    def build(
        cls,
        path: Path,
        ids: Sequence[str],
        titles: Sequence[str],
        vectors: np.ndarray,
        *,
        ann: bool = True,
        rrf_k: int = 60,
    ) -> tuple[LanceHybridPeer, PeerBuild]:
        """(Re)create the table at ``path``. ``vectors`` are L2-normalised rows aligned with ``ids``,
        so the index uses the dot product (= cosine, as our FAISS inner product)."""
        import lancedb
        import pyarrow as pa
        from lancedb.index import FTS, HnswSq

        if not (len(ids) == len(titles) == len(vectors)):
            raise ValueError(f"ids ({len(ids)}), titles ({len(titles)}) and vectors ({len(vectors)}) differ")
        path = Path(path)
        shutil.rmtree(path, ignore_errors=True)
        stages: dict[str, float] = {}
        t0 = time.perf_counter()
        vecs = np.ascontiguousarray(vectors, dtype=np.float32)
        data = pa.table(
            {
                "id": pa.array(list(ids), type=pa.string()),
                "title": pa.array(list(titles), type=pa.string()),
                "vector": pa.FixedSizeListArray.from_arrays(pa.array(vecs.ravel()), vecs.shape[1]),
            }
        )
        db = lancedb.connect(str(path))
        table = db.create_table(cls.table_name, data, mode="overwrite")
        stages["write"] = time.perf_counter() - t0
        t = time.perf_counter()
        # Same analysis as our tantivy title field: lower case, English stemming, ASCII folding.
        table.create_index("title", config=FTS(stem=True, remove_stop_words=True, ascii_folding=True))
        stages["fts_index"] = time.perf_counter() - t
        if ann:
            t = time.perf_counter()
            table.create_index("vector", config=HnswSq(distance_type="dot"))
            stages["ann_index"] = time.perf_counter() - t
        seconds = time.perf_counter() - t0
        peer = cls(path, rrf_k=rrf_k)
        return peer, PeerBuild(seconds=seconds, stages=stages, size_bytes=dir_size_bytes(path))

    def hybrid(self, text: str, vector: np.ndarray, k: int = 10) -> list[str]:
        """Ids of the top ``k`` of FTS + ANN fused by RRF (each leg fetches ``k``, LanceDB's default)."""
        rows = (
            self.table.search(query_type="hybrid")
            .vector(np.asarray(vector, dtype=np.float32))
            .text(text)
            .rerank(reranker=self.reranker)
            .limit(k)
            .select(["id"])
            .to_arrow()
        )
        return rows.column("id").to_pylist()

    def fts(self, text: str, k: int = 10) -> list[str]:
        rows = self.table.search(text, query_type="fts").limit(k).select(["id"]).to_arrow()
        return rows.column("id").to_pylist()

    def vector(self, vector: np.ndarray, k: int = 10) -> list[str]:
        rows = (
            self.table.search(np.asarray(vector, dtype=np.float32), vector_column_name="vector")
            .limit(k)
            .select(["id"])
            .to_arrow()
        )
        return rows.column("id").to_pylist()


class BM25sPeer:
    """bm25s over titles: Lucene BM25 (k1=1.5, b=0.75), English stop words, Snowball stemmer."""

    name = "bm25s"

    def __init__(self, ids: Sequence[str], titles: Sequence[str]) -> None:
        import bm25s
        import Stemmer  # PyStemmer: without it bm25s does no stemming, unlike tantivy's "en_stem"

        t0 = time.perf_counter()
        self._bm25s = bm25s
        self.stemmer = Stemmer.Stemmer("english")
        self.ids = list(ids)
        tokens = bm25s.tokenize(list(titles), stopwords="en", stemmer=self.stemmer, show_progress=False)
        self.retriever = bm25s.BM25()
        self.retriever.index(tokens, show_progress=False)
        self.build_seconds = time.perf_counter() - t0

    def search(self, text: str, k: int = 10) -> list[str]:
        tokens = self._bm25s.tokenize(
            [text], stopwords="en", stemmer=self.stemmer, show_progress=False, allow_empty=True
        )
        if not tokens.vocab or all(len(t) == 0 for t in tokens.ids):
            return []
        k = min(k, len(self.ids))
        docs, scores = self.retriever.retrieve(tokens, k=k, show_progress=False, n_threads=1)
        return [self.ids[int(d)] for d, s in zip(docs[0], scores[0], strict=True) if s > 0]
