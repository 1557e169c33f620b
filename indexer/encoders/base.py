"""Encoder interfaces. Every backend returns float32, L2-normalised rows so that inner
product = cosine everywhere downstream (FAISS indexes use METRIC_INNER_PRODUCT)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image


class TextEncoder(ABC):
    """Encodes catalog texts (batched) and single queries (latency-critical)."""

    name: str  # stable identifier written to the manifest, e.g. "sentence-transformers/all-MiniLM-L6-v2"
    dim: int

    @abstractmethod
    def encode(self, texts: Sequence[str], *, batch_size: int = 64, progress: bool = False) -> np.ndarray:
        """(len(texts), dim) float32, L2-normalised."""

    def encode_query(self, text: str) -> np.ndarray:
        """(dim,) float32. Backends override this with a faster single-item path."""
        return self.encode([text])[0]


class ImageEncoder(ABC):
    """Encodes decoded RGB images. ``supports_text`` is true for CLIP-style models whose
    ``encode_text`` lands in the same space as images (text-to-image search)."""

    name: str
    dim: int
    supports_text: bool = False

    @abstractmethod
    def encode(
        self, images: Sequence[Image.Image], *, batch_size: int = 32, progress: bool = False
    ) -> np.ndarray:
        """(len(images), dim) float32, L2-normalised."""

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        raise NotImplementedError(f"{self.name} has no text tower")


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int, enabled: bool, label: str, unit: str) -> Any:
    """A tqdm bar for long encodes, or a silent stand-in (tqdm is imported only when shown)."""
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"encoding ({label})", unit=unit)
