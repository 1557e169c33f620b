"""Cold start: map an item's content vectors (text, image) into the CF item space, so an item
nobody has engaged with yet still gets a CF vector and can be retrieved and scored.

Two regressions, both fitted on *warm* items (items with interactions, whose learned factors
carry what shoppers did with them):

* ``knn`` (default): the similarity-weighted mean of the factors of the k warm items nearest in
  content space (cosine, weights ``sim ** power``). Measured on Home Depot with simulated clicks
  it finds ~10x more relevant cold items than the linear map: CF spaces are far from linear in
  text embeddings, and a new product mostly behaves like its closest catalogue neighbours.
* ``ridge``: a closed-form, centred ridge regression (the classic linear mapping).

Items with a few interactions get a shrunk blend ``(n * learned + k * mapped) / (n + k)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shopsearch.errors import ConfigError, IndexCorruptError

KNN_K = 5
KNN_POWER = 3.0


def _check_pair(x: np.ndarray, y: np.ndarray) -> None:
    if x.ndim != 2 or y.ndim != 2 or len(x) != len(y) or len(x) < 2:
        raise ConfigError(f"cold-start mapping needs >= 2 paired rows, got {x.shape} and {y.shape}")


@dataclass
class RidgeMapper:
    weights: np.ndarray  # (d_content, d_cf) float32
    x_mean: np.ndarray  # (d_content,)
    y_mean: np.ndarray  # (d_cf,)
    lam: float
    kind: str = "ridge"

    @property
    def dim(self) -> int:
        return int(self.x_mean.shape[0])

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, lam: float = 1.0) -> RidgeMapper:
        """W = (Xc'Xc + lam I)^-1 Xc'Yc, solved in the smaller of the two dual forms."""
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        _check_pair(x, y)
        xm, ym = x.mean(axis=0), y.mean(axis=0)
        xc, yc = x - xm, y - ym
        n, d = xc.shape
        if d <= n:
            w = np.linalg.solve(xc.T @ xc + lam * np.eye(d), xc.T @ yc)
        else:  # kernel form: W = Xc'(Xc Xc' + lam I)^-1 Yc
            w = xc.T @ np.linalg.solve(xc @ xc.T + lam * np.eye(n), yc)
        return cls(w.astype(np.float32), xm.astype(np.float32), ym.astype(np.float32), float(lam))

    def predict(self, x: np.ndarray, exclude: np.ndarray | None = None) -> np.ndarray:
        del exclude  # a linear map has no neighbours to leave out
        return ((np.asarray(x, dtype=np.float32) - self.x_mean) @ self.weights + self.y_mean).astype(
            np.float32
        )

    def arrays(self) -> dict[str, Any]:
        return {
            "weights": self.weights,
            "x_mean": self.x_mean,
            "y_mean": self.y_mean,
            "lam": np.float64(self.lam),
        }


@dataclass
class KnnMapper:
    """Content-space kNN regression onto warm items' factors."""

    x: np.ndarray  # (n_warm, d_content) float32, L2-normalised
    y: np.ndarray  # (n_warm, d_cf) float32
    k: int = KNN_K
    power: float = KNN_POWER
    kind: str = "knn"
    _index: Any = field(default=None, repr=False)

    @property
    def dim(self) -> int:
        return int(self.x.shape[1])

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, k: int = KNN_K, power: float = KNN_POWER) -> KnnMapper:
        x = np.asarray(x, dtype=np.float32)
        _check_pair(x, np.asarray(y))
        return cls(_normalise(x), np.asarray(y, dtype=np.float32), int(k), float(power))

    def _search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        from indexer.vector import make_vector_index

        if self._index is None:
            index = make_vector_index(self.x.shape[1], len(self.x), kind="auto", device="cpu")
            index.add(self.x, np.arange(len(self.x), dtype=np.int64))
            self._index = index
        return self._index.search(q, min(k, len(self.x)))

    def predict(self, x: np.ndarray, exclude: np.ndarray | None = None) -> np.ndarray:
        """``exclude[i]`` = warm row to leave out for query row i (an item is not its own
        neighbour when a warm item is mapped), -1 for none."""
        q = _normalise(np.asarray(x, dtype=np.float32))
        out = np.zeros((len(q), self.y.shape[1]), dtype=np.float32)
        for start in range(0, len(q), 4096):
            sims, idx = self._search(q[start : start + 4096], self.k + 1)
            if exclude is not None:
                ex = exclude[start : start + 4096, None]
                sims = np.where(idx == ex, -np.inf, sims)
            order = np.argsort(-sims, axis=1, kind="stable")[:, : self.k]
            sims = np.take_along_axis(sims, order, axis=1)
            idx = np.take_along_axis(idx, order, axis=1)
            w = np.where((idx >= 0) & np.isfinite(sims), np.maximum(sims, 0.0), 0.0) ** self.power
            w_sum = w.sum(axis=1, keepdims=True)
            vec = (w[:, :, None] * self.y[np.maximum(idx, 0)]).sum(axis=1)
            fallback = self.y.mean(axis=0)
            out[start : start + 4096] = np.where(w_sum > 0, vec / np.maximum(w_sum, 1e-12), fallback)
        return out

    def arrays(self) -> dict[str, Any]:
        return {"x": self.x, "y": self.y, "k": np.int64(self.k), "power": np.float64(self.power)}


ContentMapper = RidgeMapper | KnnMapper


def fit_mapper(x: np.ndarray, y: np.ndarray, kind: str = "knn") -> ContentMapper:
    if kind == "knn":
        return KnnMapper.fit(x, y)
    if kind == "ridge":
        return RidgeMapper.fit(x, y, choose_lambda(x, y))
    raise ConfigError(f"unknown cold-start mapping {kind!r}; expected 'knn' or 'ridge'")


def save_mapper(mapper: ContentMapper, path: Path) -> None:
    np.savez(path, kind=np.asarray(mapper.kind), **mapper.arrays())


def load_mapper(path: Path) -> ContentMapper:
    with np.load(path, allow_pickle=False) as z:
        kind = str(z["kind"])
        if kind == "ridge":
            return RidgeMapper(z["weights"], z["x_mean"], z["y_mean"], float(z["lam"]))
        if kind == "knn":
            return KnnMapper(z["x"], z["y"], int(z["k"]), float(z["power"]))
    raise IndexCorruptError(f"{path}: unknown cold-start mapping kind {kind!r}")


def _normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def choose_lambda(
    x: np.ndarray,
    y: np.ndarray,
    grid: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 100.0),
    seed: int = 0,
) -> float:
    """Pick the ridge strength by mean cosine between held-out predictions and true vectors:
    closed-form leave-one-out (kernel side; centring aside) up to 2,000 warm items, a 20% hold-out
    above."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n = len(x)
    if n < 4:
        return 1.0
    best = (-np.inf, grid[0])
    if n <= 2000:
        xc, yc = x - x.mean(axis=0), y - y.mean(axis=0)
        k = xc @ xc.T
        for lam in grid:
            h = k @ np.linalg.inv(k + lam * np.eye(n))  # hat matrix of the centred ridge
            resid = yc - h @ yc
            loo = y - resid / np.maximum(1 - np.diag(h), 1e-9)[:, None]
            best = max(best, (float(np.mean(cosine_rows(loo, y))), lam))
        return best[1]
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    cut = int(n * 0.8)
    tr, va = perm[:cut], perm[cut:]
    for lam in grid:
        pred = RidgeMapper.fit(x[tr], y[tr], lam).predict(x[va])
        best = max(best, (float(np.mean(cosine_rows(pred, y[va]))), lam))
    return best[1]


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    return (a * b).sum(axis=1) / np.maximum(na * nb, 1e-12)


def blend(learned: np.ndarray, mapped: np.ndarray, counts: np.ndarray, shrink: float) -> np.ndarray:
    """Per item: (n * learned + k * mapped) / (n + k); n = 0 gives the mapped vector."""
    n = np.asarray(counts, dtype=np.float32)[:, None]
    return ((n * learned + shrink * mapped) / (n + shrink)).astype(np.float32)
