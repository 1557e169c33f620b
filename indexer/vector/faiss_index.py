"""FAISS vector indexes behind :class:`~indexer.vector.base.VectorIndex`, on CPU or GPU.

One base class holds everything both devices share: input checks, the raw float32 vectors and
their labels (kept for exact search over a filtered subset, for re-ranking and for saving), the
mask handling and the save format. :class:`FaissCpuIndex` and :class:`FaissGpuIndex` differ only
in how the faiss index is placed and how a filter mask reaches it:

* CPU: the mask becomes an ``IDSelectorBitmap`` passed in the search parameters. The index is an
  ``IndexIDMap``, which wraps the selector in ``IDSelectorTranslated``, so the bitmap is indexed by
  our labels (checked against faiss 1.15).
* GPU: faiss GPU indexes take no selector, so we ask for more hits and drop the masked ones.

Either way, when the mask leaves few rows (or a small share) we search exactly over those rows
with numpy, and when ANN comes back with fewer than ``min(k, allowed)`` hits we redo that query
exactly, so a restrictive filter never empties or thins the result list.

Small query batches run on one thread (faiss OpenMP and numpy alike): on a loaded machine a
2-thread single query waits for a time slice and gets 5-10x slower (see bench_vector.py).
Searches may run concurrently from several threads; ``add`` and ``save`` must not overlap them.

Kinds: ``flat`` (exact ``IndexFlatIP``), ``hnsw`` (``IndexHNSWFlat``, CPU only: faiss has no GPU
HNSW) and ``ivfpq`` (``IndexIVFPQ``, re-scored exactly from the raw vectors).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from indexer.vector.base import VectorIndex
from shopsearch.errors import (
    ConfigError,
    IndexCorruptError,
    IndexNotFoundError,
    InvalidQueryError,
    ItemNotFoundError,
)

FORMAT_VERSION = 1
KINDS = ("flat", "hnsw", "ivfpq")

# HNSW, measured by benchmarks/bench_vector.py on 54,667 real MiniLM vectors (Home Depot titles,
# real queries): efSearch 64/128/256 -> recall@10 0.965/0.981/0.990 at 0.15/0.25/0.44 ms.
# efConstruction 200 instead of 128 bought +0.5 point for ~2x the build time.
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 128
HNSW_EF_SEARCH = 128

# IVF-PQ: faiss wants >= 39 training points per centroid; 256 PQ centroids per sub-quantizer.
IVF_POINTS_PER_CENTROID = 39
IVFPQ_MIN_TRAIN = IVF_POINTS_PER_CENTROID * 256
IVFPQ_NBITS = 8  # the only code size GPU IVF-PQ supports
IVFPQ_REFINE = 10  # candidates re-scored exactly per requested hit ...
IVFPQ_MIN_CANDIDATES = 128  # ... and at least this many (PQ ranks are rough at small k)
# sub-quantizer counts GPU IVF-PQ supports (faiss IVFPQ::isSupportedPQCodeLength): choosing from
# these keeps a CPU-built index movable to a GPU.
_GPU_PQ_M = (96, 64, 56, 48, 40, 32, 28, 24, 20, 16, 12, 8, 4, 3, 2, 1)

# Masked search goes exact (numpy over the allowed rows) when the allowed rows are few or a
# small share of the index; otherwise ANN with an ID selector, HNSW efSearch / IVF nprobe
# widened by 1/share up to FILTER_WIDEN_MAX. Measured on 54,667 real MiniLM vectors, HNSW
# ef=128, one query, one thread (bench_vector.py): exact costs 0.24 ms at 1.1k rows, 0.49 ms at
# 2.7k, 0.87 ms at 5.5k, 2.3 ms at 11k. Filtered ANN recall@10 at 2% / 5% / 10% share:
# unwidened 0.71 / 0.89 / 0.95 (0.4 ms); x4 0.955 / 0.988 / 0.993 (~1 ms); x8 0.985 / 0.995 /
# 0.998 (~2 ms); at 1% even x8 gives 0.96, hence exact below 2%.
EXACT_MAX_ROWS = 5_000
EXACT_MAX_FRACTION = 0.02
FILTER_WIDEN_MAX = 8.0

# Batches up to this size run single-threaded (faiss OpenMP = 1, numpy einsum instead of BLAS).
# Measured on the shared 2-core box: a 2-thread single query over 54k rows takes 16-24 ms p50
# when another process holds a core (the threads wait for a time slice), 3 ms on one thread.
# Parallelism belongs across concurrent requests, not inside one query.
SMALL_BATCH = 4

# GPU k-selection limit (2048 on recent builds, 1024 on old ones: take the safe one).
GPU_MAX_K = 1024
# Labels index a dense position table (int32), like the boolean masks that callers pass.
MAX_LABEL = 2**31 - 2

_FILES = ("index.faiss", "vectors.npy", "labels.npy", "meta.json")


def gpu_count() -> int:
    """Number of GPUs faiss can use (0 with faiss-cpu)."""
    try:
        return int(faiss.get_num_gpus())
    except AttributeError:
        return 0


def choose_kind(expected_size: int, hnsw_threshold: int = 20_000, ivfpq_threshold: int = 2_000_000) -> str:
    """The index kind 'auto' picks for a collection of ``expected_size`` vectors."""
    if expected_size < hnsw_threshold:
        return "flat"
    if expected_size < ivfpq_threshold:
        return "hnsw"
    return "ivfpq"


def choose_pq_m(dim: int) -> int:
    """PQ sub-quantizer count: divides ``dim``, about 8 dims per sub-quantizer (48 for 384),
    and one that GPU IVF-PQ supports."""
    candidates = [m for m in _GPU_PQ_M if dim % m == 0]
    # closest to 8 dims per code byte; on a tie prefer more bytes (better recall)
    return min(candidates, key=lambda m: (abs(dim // m - 8), -m))


def choose_nlist(expected_size: int, n_train: int) -> int:
    """~4*sqrt(n) lists, capped so that every centroid gets enough training points."""
    want = int(round(4 * math.sqrt(max(expected_size, n_train, 1))))
    return max(1, min(want, n_train // IVF_POINTS_PER_CENTROID))


def default_nprobe(nlist: int) -> int:
    """Lists probed per query: nlist/8. Measured at 54,667 real MiniLM vectors, nlist 935, 128
    re-scored candidates: nprobe 32/64/128 -> recall@10 0.91/0.94/0.96."""
    return max(1, min(nlist, GPU_MAX_K, max(16, nlist // 8)))


class VectorStore:
    """Raw float32 vectors and int64 labels in insertion order, with a label -> row table.

    Grows by doubling so that incremental adds stay amortised O(batch). A store loaded with
    ``mmap`` keeps the read-only memory map until the first add, which copies it into RAM.
    """

    def __init__(self, dim: int, vectors: np.ndarray | None = None, labels: np.ndarray | None = None):
        self.dim = dim
        if vectors is None or labels is None:
            self._vecs = np.empty((0, dim), dtype=np.float32)
            self._labels = np.empty(0, dtype=np.int64)
            self.n = 0
        else:
            self._vecs = vectors
            self._labels = labels
            self.n = len(labels)
        self._pos = np.full(0, -1, dtype=np.int32)
        if self.n:
            self._index_labels(self._labels[: self.n], 0)

    @property
    def vectors(self) -> np.ndarray:
        return self._vecs[: self.n]

    @property
    def labels(self) -> np.ndarray:
        return self._labels[: self.n]

    def positions(self, labels: np.ndarray) -> np.ndarray:
        """Row of each label, -1 where absent."""
        labels = np.asarray(labels, dtype=np.int64)
        out = np.full(labels.shape, -1, dtype=np.int64)
        inside = (labels >= 0) & (labels < len(self._pos))
        out[inside] = self._pos[labels[inside]]
        return out

    def append(self, vectors: np.ndarray, labels: np.ndarray) -> None:
        n_new = self.n + len(labels)
        if n_new > len(self._labels) or not self._vecs.flags.writeable:
            cap = max(n_new, 2 * self.n, 1024)
            vecs = np.empty((cap, self.dim), dtype=np.float32)
            vecs[: self.n] = self._vecs[: self.n]
            labs = np.empty(cap, dtype=np.int64)
            labs[: self.n] = self._labels[: self.n]
            self._vecs, self._labels = vecs, labs
        self._vecs[self.n : n_new] = vectors
        self._labels[self.n : n_new] = labels
        self._index_labels(labels, self.n)
        self.n = n_new

    def _index_labels(self, labels: np.ndarray, first_row: int) -> None:
        top = int(labels.max()) + 1
        if top > len(self._pos):
            grown = np.full(max(top, 2 * len(self._pos)), -1, dtype=np.int32)
            grown[: len(self._pos)] = self._pos
            self._pos = grown
        self._pos[labels] = np.arange(first_row, first_row + len(labels), dtype=np.int32)


@contextmanager
def _threads_for(nq: int) -> Iterator[None]:
    """One OpenMP thread for a small batch. omp_set_num_threads sets the calling thread's own
    OpenMP setting (checked with libgomp), so concurrent searches and builds are unaffected."""
    if nq > SMALL_BATCH:
        yield
        return
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def _inner(q: np.ndarray, vecs: np.ndarray) -> np.ndarray:
    """(nq, m) inner products; einsum (one thread, no BLAS pool) for small batches."""
    if len(q) <= SMALL_BATCH:
        return np.einsum("qd,md->qm", q, vecs)
    return q @ vecs.T


def _topk(sims: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best-first (scores, column indices) of each row of ``sims``, at most k per row."""
    m = sims.shape[1]
    kk = min(k, m)
    if kk < m:
        idx = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
    else:
        idx = np.broadcast_to(np.arange(m), sims.shape)
    part = np.take_along_axis(sims, idx, axis=1)
    order = np.argsort(-part, axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1), np.take_along_axis(idx, order, axis=1)


class FaissIndexBase(VectorIndex):
    """Shared logic of the CPU and GPU indexes; subclasses place the faiss index and run ANN.

    Extra public API beyond VectorIndex: ``vectors_for``, ``contains``, ``labels``, ``params``,
    ``set_search_params``.
    """

    device = "cpu"

    def __init__(
        self,
        dim: int,
        kind: str,
        params: dict[str, Any],
        *,
        index: faiss.Index | None = None,
        store: VectorStore | None = None,
    ) -> None:
        if kind not in KINDS:
            raise ConfigError(f"unknown vector index kind {kind!r}; expected one of {', '.join(KINDS)}")
        if not isinstance(dim, int | np.integer) or dim <= 0:
            raise ConfigError(f"vector dimension must be a positive integer, got {dim!r}")
        self.dim = int(dim)
        self.kind = kind
        self._params = dict(params)
        self._store = store if store is not None else VectorStore(self.dim)
        # None only for an IVF-PQ index still waiting for its training data
        self._index: faiss.Index | None = self._place(index) if index is not None else None

    # ----------------------------------------------------------------- device-specific parts
    def _place(self, cpu_index: faiss.Index) -> faiss.Index:
        """Move a CPU faiss index where this class searches it."""
        return cpu_index

    def _cpu_index(self) -> faiss.Index:
        """A CPU faiss index equivalent to ``self._index`` (for faiss.write_index)."""
        assert self._index is not None
        return self._index

    def _ann(
        self, queries: np.ndarray, n_cand: int, allowed: np.ndarray | None, n_allowed: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """(scores, labels) candidates from the faiss index; may contain masked labels."""
        raise NotImplementedError

    # ----------------------------------------------------------------- public API
    @property
    def ntotal(self) -> int:
        return self._store.n

    @property
    def labels(self) -> np.ndarray:
        """Labels of the stored vectors, in insertion order (read-only view)."""
        view = self._store.labels.view()
        view.flags.writeable = False
        return view

    @property
    def params(self) -> dict[str, Any]:
        """Build and search parameters (written to meta.json)."""
        return dict(self._params)

    def set_search_params(
        self,
        *,
        ef_search: int | None = None,
        nprobe: int | None = None,
        exact_max_rows: int | None = None,
        exact_max_fraction: float | None = None,
    ) -> None:
        """Tune search without rebuilding: HNSW efSearch, IVF nprobe, and the masked-search
        crossover (exact over the allowed rows when they are at most ``exact_max_rows`` or at
        most ``exact_max_fraction`` of the index). Saved with the index."""
        if ef_search is not None:
            if self.kind != "hnsw" or ef_search < 1:
                raise ConfigError(f"ef_search applies to HNSW indexes and must be >= 1 ({self.kind})")
            self._params["ef_search"] = int(ef_search)
        if nprobe is not None:
            if self.kind != "ivfpq" or not 1 <= nprobe <= GPU_MAX_K:
                raise ConfigError(f"nprobe applies to IVF-PQ indexes and must be in 1..{GPU_MAX_K}")
            self._params["nprobe"] = int(nprobe)
            if self._index is not None:
                self._set_nprobe(int(nprobe))
        if exact_max_rows is not None:
            if exact_max_rows < 0:
                raise ConfigError(f"exact_max_rows must be >= 0, got {exact_max_rows}")
            self._params["exact_max_rows"] = int(exact_max_rows)
        if exact_max_fraction is not None:
            if not 0.0 <= exact_max_fraction <= 1.0:
                raise ConfigError(f"exact_max_fraction must be in [0, 1], got {exact_max_fraction}")
            self._params["exact_max_fraction"] = float(exact_max_fraction)

    def _set_nprobe(self, nprobe: int) -> None:
        """Make the faiss index itself probe ``nprobe`` lists (CPU searches also pass it per call)."""
        assert self._index is not None
        faiss.extract_index_ivf(self._index).nprobe = nprobe

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kind={self.kind!r}, dim={self.dim}, ntotal={self.ntotal})"

    def contains(self, labels: np.ndarray) -> np.ndarray:
        """Boolean mask: which of ``labels`` have a stored vector."""
        return self._store.positions(np.asarray(labels)) >= 0

    def vectors_for(self, labels: np.ndarray) -> np.ndarray:
        """(len(labels), dim) float32 copy of the stored vectors (the re-ranker reads these)."""
        labels = np.asarray(labels)
        pos = self._store.positions(labels)
        if (pos < 0).any():
            missing = labels[pos < 0][:5].tolist()
            raise ItemNotFoundError(f"no vector stored for label(s) {missing} in the {self.kind} index")
        return np.array(self._store.vectors[pos], dtype=np.float32)

    def add(self, vectors: np.ndarray, labels: np.ndarray) -> None:
        x, ids = self._check_add(vectors, labels)
        if len(ids) == 0:
            return
        if self._index is None:
            self._index = self._place(build_ivfpq(self.dim, self._params, x))
        self._index.add_with_ids(x, ids)
        self._store.append(x, ids)

    def search(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        q = self._check_queries(queries)
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise InvalidQueryError(f"k must be a positive integer, got {k!r}")
        k = int(k)
        nq = q.shape[0]
        out_s = np.full((nq, k), -np.inf, dtype=np.float32)
        out_l = np.full((nq, k), -1, dtype=np.int64)
        n = self.ntotal
        if n == 0 or nq == 0:
            return out_s, out_l

        rows_ok: np.ndarray | None = None
        n_allowed = n
        if allowed is not None:
            allowed = self._check_mask(allowed)
            rows_ok = self._allowed_rows(allowed)
            n_allowed = int(np.count_nonzero(rows_ok))
            if n_allowed == 0:
                return out_s, out_l
            if self._prefer_exact(n_allowed):
                rows = np.flatnonzero(rows_ok)
                s, lab = self._exact(q, k, rows)
                out_s[:, : s.shape[1]], out_l[:, : s.shape[1]] = s, lab
                return out_s, out_l

        n_cand = max(k * IVFPQ_REFINE, IVFPQ_MIN_CANDIDATES) if self.kind == "ivfpq" else k
        with _threads_for(nq):
            cand_s, cand_l = self._ann(q, min(n_cand, n), allowed, n_allowed)
        if self.kind == "ivfpq":
            cand_s = self._rescore(q, cand_l)
        keep = cand_l >= 0
        if allowed is not None:
            keep &= self._label_allowed(cand_l, allowed)
        s, lab = self._compact(cand_s, cand_l, keep, k)
        out_s[:, : s.shape[1]], out_l[:, : s.shape[1]] = s, lab

        short = np.count_nonzero(out_l >= 0, axis=1) < min(k, n_allowed)
        if short.any():
            rows = None if rows_ok is None else np.flatnonzero(rows_ok)
            s, lab = self._exact(q[short], k, rows)
            out_s[short] = -np.inf
            out_l[short] = -1
            out_s[short, : s.shape[1]], out_l[short, : s.shape[1]] = s, lab
        return out_s, out_l

    def save(self, path: Path) -> None:
        """Write index.faiss, vectors.npy, labels.npy and (last) meta.json into ``path``.

        Each file goes to a temporary name and is renamed into place (an open memory map of the
        old vectors.npy stays valid); a save cut short leaves files that disagree on count or
        labels, which load_vector_index reports as corrupt rather than serving them.
        """
        if self._index is None:  # untrained IVF-PQ: nothing in faiss yet
            raise ConfigError("cannot save an IVF-PQ index before any vectors were added (it is untrained)")
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        meta = {
            "format_version": FORMAT_VERSION,
            "dim": self.dim,
            "kind": self.kind,
            "count": self.ntotal,
            "params": self._params,
            "faiss_version": faiss.__version__,
        }
        _write_atomic(path / "index.faiss", lambda f: faiss.write_index(self._cpu_index(), f))
        _write_atomic(path / "vectors.npy", lambda f: _save_npy(f, self._store.vectors))
        _write_atomic(path / "labels.npy", lambda f: _save_npy(f, self._store.labels))
        _write_atomic(path / "meta.json", lambda f: Path(f).write_text(json.dumps(meta, indent=2) + "\n"))

    # ----------------------------------------------------------------- internals
    def _prefer_exact(self, n_allowed: int) -> bool:
        # (flat is exact either way; past these sizes its full scan with a selector is faster
        # than gathering the allowed rows: 3.0 vs 10.7 ms at 40% of 54k rows)
        return (
            n_allowed <= self._params.get("exact_max_rows", EXACT_MAX_ROWS)
            or n_allowed <= self._params.get("exact_max_fraction", EXACT_MAX_FRACTION) * self.ntotal
        )

    def _exact(self, q: np.ndarray, k: int, rows: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Brute-force inner product over all rows or the given row numbers."""
        vecs = self._store.vectors if rows is None else self._store.vectors[rows]
        s, idx = _topk(_inner(q, vecs), k)
        row_ids = idx if rows is None else rows[idx]
        return s.astype(np.float32, copy=False), self._store.labels[row_ids]

    def _rescore(self, q: np.ndarray, cand_l: np.ndarray) -> np.ndarray:
        """Exact inner products of each query with its candidates (IVF-PQ scores are approximate)."""
        pos = self._store.positions(cand_l)
        vecs = self._store.vectors[np.maximum(pos, 0)]
        sims = np.einsum("qd,qcd->qc", q, vecs, dtype=np.float32)
        sims[pos < 0] = -np.inf
        return sims

    @staticmethod
    def _compact(s: np.ndarray, lab: np.ndarray, keep: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Keep the flagged candidates, best first, at most k per row (-1/-inf padded)."""
        s = np.where(keep, s, -np.inf).astype(np.float32, copy=False)
        order = np.argsort(-s, axis=1, kind="stable")[:, :k]
        s = np.take_along_axis(s, order, axis=1)
        lab = np.where(np.isneginf(s), -1, np.take_along_axis(lab, order, axis=1))
        return s, lab

    def _allowed_rows(self, allowed: np.ndarray) -> np.ndarray:
        """The mask (indexed by label) read at every stored row."""
        return self._label_allowed(self._store.labels, allowed)

    @staticmethod
    def _label_allowed(labels: np.ndarray, allowed: np.ndarray) -> np.ndarray:
        inside = (labels >= 0) & (labels < len(allowed))
        out = np.zeros(labels.shape, dtype=bool)
        out[inside] = allowed[labels[inside]]
        return out

    def _check_add(self, vectors: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        vectors = np.asarray(vectors)
        labels = np.asarray(labels)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ConfigError(
                f"vectors must have shape (n, {self.dim}) for this {self.kind} index, got {vectors.shape}"
                " (was the index built with another encoder?)"
            )
        if not np.issubdtype(vectors.dtype, np.floating):
            raise ConfigError(f"vectors must be floating point (float32), got dtype {vectors.dtype}")
        if labels.ndim != 1 or len(labels) != len(vectors):
            raise ConfigError(
                f"labels must be a 1-D array with one label per vector ({len(vectors)}), "
                f"got shape {labels.shape}"
            )
        if len(labels) and not np.issubdtype(labels.dtype, np.integer):
            raise ConfigError(f"labels must be integers, got dtype {labels.dtype}")
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        ids = np.ascontiguousarray(labels, dtype=np.int64)
        if len(ids) == 0:
            return x, ids
        bad = ~np.isfinite(x).all(axis=1)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ConfigError(f"vector of label {ids[i]} (batch row {i}) contains NaN or infinity")
        if ids.min() < 0 or ids.max() > MAX_LABEL:
            i = int(np.flatnonzero((ids < 0) | (ids > MAX_LABEL))[0])
            raise ConfigError(f"label {ids[i]} (batch row {i}) is out of range 0..{MAX_LABEL}")
        uniq, counts = np.unique(ids, return_counts=True)
        if (counts > 1).any():
            raise ConfigError(f"label {uniq[counts > 1][0]} appears more than once in this batch")
        present = self._store.positions(ids) >= 0
        if present.any():
            raise ConfigError(
                f"label {ids[present][0]} is already in the {self.kind} index: give an updated item a "
                "new label and mask the old one out"
            )
        return x, ids

    def _check_queries(self, queries: np.ndarray) -> np.ndarray:
        q = np.asarray(queries)
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ConfigError(
                f"query vectors must have {self.dim} dimensions for this {self.kind} index, got shape "
                f"{np.shape(queries)} (query encoder and index disagree?)"
            )
        if not (np.issubdtype(q.dtype, np.floating) or np.issubdtype(q.dtype, np.integer)):
            raise InvalidQueryError(f"query vectors must be numeric, got dtype {q.dtype}")
        q = np.ascontiguousarray(q, dtype=np.float32)
        if not np.isfinite(q).all():
            raise InvalidQueryError("query vector contains NaN or infinity")
        return q

    @staticmethod
    def _check_mask(allowed: np.ndarray) -> np.ndarray:
        if not isinstance(allowed, np.ndarray) or allowed.dtype != np.bool_ or allowed.ndim != 1:
            got = (
                f"{allowed.dtype} array of shape {allowed.shape}"
                if isinstance(allowed, np.ndarray)
                else type(allowed).__name__
            )
            raise InvalidQueryError(f"allowed must be a 1-D boolean numpy array indexed by label, got {got}")
        return allowed


class FaissCpuIndex(FaissIndexBase):
    """CPU index: filter masks go into faiss as an ID selector on our labels."""

    device = "cpu"

    def _ann(
        self, queries: np.ndarray, n_cand: int, allowed: np.ndarray | None, n_allowed: int
    ) -> tuple[np.ndarray, np.ndarray]:
        assert self._index is not None
        bits = None
        extra: dict[str, Any] = {}
        if allowed is not None:
            # bit i of byte i>>3 (little bit order) is label i; labels past the mask read as 0
            bits = np.packbits(allowed, bitorder="little")
            extra["sel"] = faiss.IDSelectorBitmap(len(bits), faiss.swig_ptr(bits))
        # a selective mask hides most of what the beam / the probed lists hold: widen them by
        # 1/share, up to a cap (past it the exact path or the exact fallback is cheaper)
        widen = min(self.ntotal / n_allowed, float(self._params.get("filter_widen_max", FILTER_WIDEN_MAX)))
        if self.kind == "hnsw":
            ef = max(int(self._params["ef_search"]), n_cand)
            params = faiss.SearchParametersHNSW(efSearch=math.ceil(ef * widen), **extra)
        elif self.kind == "ivfpq":
            nprobe = min(math.ceil(int(self._params["nprobe"]) * widen), int(self._params["nlist"]))
            params = faiss.SearchParametersIVF(nprobe=nprobe, **extra)
        else:
            params = faiss.SearchParameters(**extra) if extra else None
        scores, labels = self._index.search(queries, n_cand, params=params)
        del bits, extra  # the bitmap and selector must outlive the search
        return scores, labels


class FaissGpuIndex(FaissIndexBase):
    """GPU index (flat or IVF-PQ) on one device. faiss GPU indexes take no ID selector, so a
    mask is applied after an enlarged search; queries left short go exact over the allowed rows.
    """

    device = "gpu"

    def __init__(
        self, dim: int, kind: str, params: dict[str, Any], *, gpu_id: int = 0, **kwargs: Any
    ) -> None:
        if gpu_count() == 0:
            raise ConfigError("device 'gpu' requested but faiss sees no GPU (is faiss-gpu installed?)")
        if kind == "hnsw":
            raise ConfigError("faiss has no GPU HNSW: use kind 'flat' (exact, fast on GPU) or device 'cpu'")
        self._gpu_id = gpu_id
        self._res = faiss.StandardGpuResources()  # must outlive the GPU index
        super().__init__(dim, kind, params, **kwargs)

    def _place(self, cpu_index: faiss.Index) -> faiss.Index:
        options = faiss.GpuClonerOptions()
        # fp16 PQ lookup tables let up to 96 sub-quantizers fit in shared memory; flat stays fp32
        options.useFloat16 = self.kind == "ivfpq"
        # IndexIDMap stays on the host and wraps the GPU flat/IVF-PQ index; nprobe is copied over
        return faiss.index_cpu_to_gpu(self._res, self._gpu_id, cpu_index, options)

    def _cpu_index(self) -> faiss.Index:
        return faiss.index_gpu_to_cpu(self._index)

    def _set_nprobe(self, nprobe: int) -> None:
        assert self._index is not None
        faiss.GpuParameterSpace().set_index_parameter(self._index, "nprobe", nprobe)

    def _ann(
        self, queries: np.ndarray, n_cand: int, allowed: np.ndarray | None, n_allowed: int
    ) -> tuple[np.ndarray, np.ndarray]:
        assert self._index is not None
        if allowed is not None:
            # ask for enough hits that ~2x n_cand survive the mask on average
            n_cand = math.ceil(2 * n_cand * self.ntotal / n_allowed)
        n_cand = min(n_cand, self.ntotal, GPU_MAX_K)
        return self._index.search(queries, n_cand)


def _as_matrix(vectors: np.ndarray, dim: int, what: str) -> np.ndarray:
    x = np.asarray(vectors)
    if x.ndim != 2 or x.shape[1] != dim or not np.issubdtype(x.dtype, np.floating):
        raise ConfigError(f"{what} must be a float array of shape (n, {dim}), got {x.dtype} {x.shape}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise ConfigError(f"{what} contains NaN or infinity")
    return x


def _save_npy(filename: str, array: np.ndarray) -> None:
    with open(filename, "wb") as f:  # a file object: np.save would append ".npy" to a name
        np.save(f, array, allow_pickle=False)


def _write_atomic(target: Path, write: Any) -> None:
    tmp = target.with_name(target.name + ".tmp")
    write(str(tmp))
    os.replace(tmp, target)


def make_params(kind: str, expected_size: int) -> dict[str, Any]:
    """Default build/search parameters of a new index (written to meta.json, read back on load)."""
    params: dict[str, Any] = {
        "expected_size": int(expected_size),
        "exact_max_rows": EXACT_MAX_ROWS,
        "exact_max_fraction": EXACT_MAX_FRACTION,
    }
    if kind == "hnsw":
        params.update(m=HNSW_M, ef_construction=HNSW_EF_CONSTRUCTION, ef_search=HNSW_EF_SEARCH)
    return params


def new_faiss_index(kind: str, dim: int, params: dict[str, Any]) -> faiss.Index:
    """An empty CPU faiss index (flat or HNSW) wrapped in IndexIDMap for arbitrary labels."""
    if kind == "flat":
        return faiss.IndexIDMap(faiss.IndexFlatIP(dim))
    if kind == "hnsw":
        hnsw = faiss.IndexHNSWFlat(dim, int(params["m"]), faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = int(params["ef_construction"])
        hnsw.hnsw.efSearch = int(params["ef_search"])
        return faiss.IndexIDMap(hnsw)
    raise ConfigError(f"kind {kind!r} needs training data: use build_ivfpq")


def build_ivfpq(dim: int, params: dict[str, Any], train: np.ndarray) -> faiss.Index:
    """A trained, empty CPU IVF-PQ index in an IndexIDMap; records nlist/pq_m/nprobe in params."""
    if len(train) < IVFPQ_MIN_TRAIN:
        raise ConfigError(
            f"IVF-PQ needs at least {IVFPQ_MIN_TRAIN} training vectors, got {len(train)}: pass "
            "train_vectors to make_vector_index, add a larger first batch, or use kind 'flat'/'hnsw'"
        )
    nlist = choose_nlist(int(params.get("expected_size", len(train))), len(train))
    m = choose_pq_m(dim)
    nprobe = int(params.get("nprobe") or default_nprobe(nlist))
    quantizer = faiss.IndexFlatIP(dim)
    ivf = faiss.IndexIVFPQ(quantizer, dim, nlist, m, IVFPQ_NBITS, faiss.METRIC_INNER_PRODUCT)
    ivf.train(train)
    ivf.nprobe = nprobe  # stored in index.faiss and copied by index_cpu_to_gpu
    params.update(nlist=nlist, pq_m=m, pq_nbits=IVFPQ_NBITS, nprobe=nprobe)
    return faiss.IndexIDMap(ivf)


def resolve_device(device: str, kind: str) -> str:
    """'auto' -> 'gpu' when faiss sees a GPU and the kind runs there, else 'cpu'."""
    if device not in ("auto", "cpu", "gpu"):
        raise ConfigError(f"unknown device {device!r}; expected 'auto', 'cpu' or 'gpu'")
    if device == "auto":
        return "gpu" if gpu_count() > 0 and kind != "hnsw" else "cpu"
    if device == "gpu" and gpu_count() == 0:
        raise ConfigError("device 'gpu' requested but faiss sees no GPU (is faiss-gpu installed?)")
    return device


def make_vector_index(
    dim: int,
    expected_size: int,
    *,
    kind: str = "auto",
    device: str = "auto",
    hnsw_threshold: int = 20_000,
    ivfpq_threshold: int = 2_000_000,
    train_vectors: np.ndarray | None = None,
) -> FaissIndexBase:
    """An empty index sized for ``expected_size`` vectors.

    kind 'auto': exact flat below ``hnsw_threshold``, HNSW below ``ivfpq_threshold``, IVF-PQ at
    or above. On a GPU, 'auto' keeps exact flat up to ``ivfpq_threshold`` instead of HNSW (faiss
    has no GPU HNSW, and GPU brute force is exact and fast at that size). IVF-PQ trains on
    ``train_vectors`` or, without them, on the first batch given to ``add``.
    """
    if isinstance(dim, bool) or not isinstance(dim, int | np.integer) or dim <= 0:
        raise ConfigError(f"vector dimension must be a positive integer, got {dim!r}")
    dim = int(dim)
    if kind != "auto" and kind not in KINDS:
        raise ConfigError(f"unknown vector index kind {kind!r}; expected 'auto' or one of {', '.join(KINDS)}")
    chosen = choose_kind(expected_size, hnsw_threshold, ivfpq_threshold) if kind == "auto" else kind
    if kind == "auto" and chosen == "hnsw" and device != "cpu" and gpu_count() > 0:
        chosen = "flat"
    dev = resolve_device(device, chosen)
    params = make_params(chosen, expected_size)
    cpu_index: faiss.Index | None = None
    if chosen != "ivfpq":
        cpu_index = new_faiss_index(chosen, dim, params)
    elif train_vectors is not None:
        cpu_index = build_ivfpq(dim, params, _as_matrix(train_vectors, dim, "train_vectors"))
    cls = FaissGpuIndex if dev == "gpu" else FaissCpuIndex
    return cls(dim, chosen, params, index=cpu_index)


def load_vector_index(path: Path | str, *, device: str = "auto", mmap: bool = True) -> FaissIndexBase:
    """Open a directory written by ``save``. No pickle anywhere; ``mmap`` maps vectors.npy
    read-only instead of reading it (the first ``add`` copies it into memory)."""
    path = Path(path)
    if not path.is_dir():
        raise IndexNotFoundError(f"no vector index at {path}")
    if not (path / "meta.json").is_file():
        raise IndexNotFoundError(f"no vector index at {path} (meta.json missing)")
    for name in _FILES:
        if not (path / name).is_file():
            raise IndexCorruptError(f"vector index at {path} is incomplete: {name} is missing")

    meta_file = path / "meta.json"
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        version, dim, kind = meta["format_version"], int(meta["dim"]), meta["kind"]
        count, params = int(meta["count"]), dict(meta["params"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise IndexCorruptError(f"{meta_file} is unreadable: {exc}") from None
    if version != FORMAT_VERSION:
        raise IndexCorruptError(
            f"{meta_file}: format version {version} is not supported (expected {FORMAT_VERSION}); rebuild"
        )
    if kind not in KINDS or dim <= 0 or count < 0:
        raise IndexCorruptError(f"{meta_file}: invalid kind/dim/count ({kind!r}, {dim}, {count})")

    vec_file, lab_file = path / "vectors.npy", path / "labels.npy"
    try:
        vectors = np.load(vec_file, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise IndexCorruptError(f"{vec_file} is unreadable: {exc}") from None
    if vectors.dtype != np.float32 or vectors.shape != (count, dim):
        raise IndexCorruptError(
            f"{vec_file}: expected float32 of shape ({count}, {dim}), got {vectors.dtype} {vectors.shape}"
        )
    try:
        labels = np.load(lab_file, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise IndexCorruptError(f"{lab_file} is unreadable: {exc}") from None
    if labels.dtype != np.int64 or labels.shape != (count,):
        raise IndexCorruptError(
            f"{lab_file}: expected int64 of shape ({count},), got {labels.dtype} {labels.shape}"
        )
    if count and (labels.min() < 0 or labels.max() > MAX_LABEL or len(np.unique(labels)) != count):
        raise IndexCorruptError(f"{lab_file}: labels are negative, too large or duplicated")

    idx_file = path / "index.faiss"
    try:
        cpu_index = faiss.read_index(str(idx_file))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "read error"
        raise IndexCorruptError(f"{idx_file} is not a readable faiss index: {first}") from None
    if not isinstance(cpu_index, faiss.IndexIDMap) or cpu_index.d != dim or cpu_index.ntotal != count:
        raise IndexCorruptError(
            f"{idx_file} does not match meta.json (expected a {kind} IndexIDMap of dim {dim} with {count} "
            f"vectors, got {type(cpu_index).__name__} d={cpu_index.d} ntotal={cpu_index.ntotal})"
        )
    if not np.array_equal(faiss.vector_to_array(cpu_index.id_map), labels):
        raise IndexCorruptError(f"{idx_file} and {lab_file} disagree on the labels")

    dev = resolve_device(device, kind)
    store = VectorStore(dim, vectors, labels)
    if dev == "gpu":
        return FaissGpuIndex(dim, kind, params, index=cpu_index, store=store)
    return FaissCpuIndex(dim, kind, params, index=cpu_index, store=store)
