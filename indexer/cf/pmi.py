"""Item-to-item co-engagement by pointwise mutual information.

A *basket* is everything one session engaged with (or one user, for events without a session).
With N baskets, n_i baskets holding item i and n_ij holding both i and j:

    PMI(i, j) = log( n_ij * N / (n_i * n_j) )

Only pairs seen together at least ``min_count`` times and with PMI > 0 are kept, the ``top_k``
best per item (ties: more co-occurrences first). Baskets larger than ``max_basket`` are
truncated to their most recent items so one crawler-like session cannot cost O(n^2).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp


@dataclass
class ItemNeighbours:
    """CSR of each item's co-engaged items, best first, with PMI and raw co-counts."""

    ptr: np.ndarray  # int64 (n_items + 1)
    item: np.ndarray  # int32
    pmi: np.ndarray  # float32
    count: np.ndarray  # float32

    def of(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        s, e = self.ptr[i], self.ptr[i + 1]
        return self.item[s:e], self.pmi[s:e]

    def step(self, items: np.ndarray, mass: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One random-walk step: (neighbours, sum over ``items`` of mass_i * PMI(i, j)), neighbours
        distinct and ascending. Vectorised over the CSR rows: a broad query lists hundreds of
        items, and a Python loop over their neighbours is what a query would wait for."""
        items = np.asarray(items, dtype=np.int64)
        starts, ends = self.ptr[items], self.ptr[items + 1]
        lens = ends - starts
        total = int(lens.sum())
        if total == 0:
            return np.zeros(0, np.int64), np.zeros(0)
        idx = np.arange(total) - np.repeat(np.cumsum(lens) - lens, lens) + np.repeat(starts, lens)
        contrib = np.repeat(np.asarray(mass, dtype=np.float64), lens) * self.pmi[idx]
        uniq, inv = np.unique(self.item[idx], return_inverse=True)
        return uniq.astype(np.int64), np.bincount(inv, weights=contrib, minlength=len(uniq))

    def save(self, path: Path) -> None:
        np.savez(path, ptr=self.ptr, item=self.item, pmi=self.pmi, count=self.count)

    @classmethod
    def load(cls, path: Path) -> ItemNeighbours:
        with np.load(path, allow_pickle=False) as z:
            return cls(**{k: z[k] for k in z.files})


def basket_ids(sessions: list[str | None], users: list[str | None]) -> np.ndarray:
    """Dense basket number per event: the session when known, else the user, else -1."""
    ids: dict[str, int] = {}
    out = np.full(len(sessions), -1, dtype=np.int64)
    for n, (s, u) in enumerate(zip(sessions, users, strict=True)):
        key = f"s:{s}" if s is not None else (f"u:{u}" if u is not None else None)
        if key is not None:
            out[n] = ids.setdefault(key, len(ids))
    return out


def cooccurrence_pmi(
    basket: np.ndarray,
    item: np.ndarray,
    n_items: int,
    *,
    min_count: int = 2,
    top_k: int = 50,
    max_basket: int = 200,
) -> ItemNeighbours:
    """PMI neighbours from (basket, item) pairs (events in time order; basket -1 is ignored)."""
    ok = basket >= 0
    b, i = basket[ok], item[ok]
    if len(b) == 0:
        return ItemNeighbours(
            np.zeros(n_items + 1, np.int64),
            np.zeros(0, np.int32),
            np.zeros(0, np.float32),
            np.zeros(0, np.float32),
        )
    # distinct (basket, item) pairs, keeping the most recent max_basket items of each basket
    n_baskets = int(b.max()) + 1
    last = np.arange(len(b))
    key = b * n_items + i
    uniq, first_pos = np.unique(key[::-1], return_index=True)  # last occurrence of each pair
    pos = last[::-1][first_pos]
    bb, ii = uniq // n_items, uniq % n_items
    order = np.lexsort((-pos, bb))
    bb, ii = bb[order], ii[order]
    sizes = np.bincount(bb, minlength=n_baskets)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    keep = (np.arange(len(bb)) - starts[bb]) < max_basket
    bb, ii = bb[keep], ii[keep]
    m = sp.csr_matrix((np.ones(len(bb), dtype=np.float64), (bb, ii)), shape=(n_baskets, n_items))
    n_total = float(n_baskets)
    n_i = np.asarray(m.sum(axis=0)).ravel()
    co = (m.T @ m).tocsr()
    co.setdiag(0)
    co.eliminate_zeros()
    co = co.tocoo()
    sel = co.data >= min_count
    r, c, n_ij = co.row[sel], co.col[sel], co.data[sel]
    pmi = np.log(n_ij * n_total / (n_i[r] * n_i[c]))
    pos_ = pmi > 0
    r, c, n_ij, pmi = r[pos_], c[pos_], n_ij[pos_], pmi[pos_]
    order = np.lexsort((c, -n_ij, -pmi, r))
    r, c, n_ij, pmi = r[order], c[order], n_ij[order], pmi[order]
    counts = np.bincount(r, minlength=n_items)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    keep = (np.arange(len(r)) - starts[r]) < top_k
    r, c, n_ij, pmi = r[keep], c[keep], n_ij[keep], pmi[keep]
    ptr = np.zeros(n_items + 1, dtype=np.int64)
    ptr[1:] = np.cumsum(np.bincount(r, minlength=n_items))
    return ItemNeighbours(ptr, c.astype(np.int32), pmi.astype(np.float32), n_ij.astype(np.float32))
