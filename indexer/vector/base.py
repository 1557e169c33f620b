"""Vector index interface: FAISS on CPU or GPU behind one API (like implicit's ANN wrappers)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np


class VectorIndex(ABC):
    """Inner-product search over L2-normalised float32 vectors, keyed by int64 labels
    (the engine uses item row numbers as labels).

    ``allowed`` is an optional boolean mask indexed by label: only labels where it is True may be
    returned (filters and deletions). Implementations must keep recall under restrictive masks:
    fall back to exact search over the allowed rows when ANN cannot fill k.
    """

    dim: int
    kind: str  # "flat" | "hnsw" | "ivfpq"
    device: str  # "cpu" | "gpu"

    @abstractmethod
    def add(self, vectors: np.ndarray, labels: np.ndarray) -> None:
        """Add (n, dim) float32 rows with their int64 labels. Re-adding a label is not allowed:
        the caller gives an updated item a new label and masks the old one out."""

    @abstractmethod
    def search(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """queries (nq, dim) -> (scores (nq, k) float32, labels (nq, k) int64); missing = -1."""

    @property
    @abstractmethod
    def ntotal(self) -> int: ...

    @abstractmethod
    def contains(self, labels: np.ndarray) -> np.ndarray:
        """Boolean mask: which of ``labels`` have a stored vector."""

    @abstractmethod
    def vectors_for(self, labels: np.ndarray) -> np.ndarray:
        """(len(labels), dim) float32 copies of stored vectors, read locally: the re-ranker, the
        fusion features and CF cold start read them on every query, so no backend may make this
        a network round trip. A label without a vector raises ItemNotFoundError."""

    @abstractmethod
    def save(self, path: Path) -> None:
        """Write to a directory (created if needed). Must not use pickle."""
