"""The item table: products by row, liveness, and the columns filters and facets read.

Rows are append-only: an updated item gets a new row (its vectors get a new label) and the old row
is marked dead. Row numbers double as the int64 labels of every vector index, so one boolean mask
(``mask()``) expresses both filters and deletions for every source.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from indexer.filters import Filters, fold
from indexer.product import Product, category_prefixes

# "Nice" price bucket edges; the facet uses the ones that fall inside the catalog's range.
_PRICE_EDGES = [0, 10, 25, 50, 100, 200, 500, 1000, 2500, 5000, 10000, 25000, 100000]


def attribute_values(value: Any) -> list[str]:
    """Multi-valued attributes are written 'a|b|c' (as many catalogs export them)."""
    if isinstance(value, bool):
        return [str(value).lower()]
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return [v for v in (s.strip() for s in str(value).split("|")) if v]


class ItemTable:
    """In-memory item store with keyword postings for exact filters."""

    def __init__(self) -> None:
        self.rows: list[Product | None] = []
        self.id_to_row: dict[str, int] = {}
        self._live = np.zeros(0, dtype=bool)
        self._price = np.zeros(0, dtype=np.float64)
        self._postings: dict[str, list[int]] = defaultdict(list)
        self._posting_cache: dict[str, np.ndarray] = {}

    # ----------------------------------------------------------------- writes
    def _grow(self, n: int) -> None:
        if n <= len(self._live):
            return
        cap = max(n, 2 * len(self._live), 1024)
        live = np.zeros(cap, dtype=bool)
        live[: len(self._live)] = self._live
        price = np.full(cap, np.nan)
        price[: len(self._price)] = self._price
        self._live, self._price = live, price

    def append(self, product: Product) -> tuple[int, int | None]:
        """Add a product as a new row; returns (new_row, replaced_row or None)."""
        old = self.id_to_row.get(product.id)
        if old is not None:
            self._kill(old)
        row = len(self.rows)
        self._grow(row + 1)
        self.rows.append(product)
        self.id_to_row[product.id] = row
        self._live[row] = True
        self._price[row] = product.price if product.price is not None else np.nan
        for key in self._keys(product):
            self._postings[key].append(row)
            self._posting_cache.pop(key, None)
        return row, old

    def delete(self, item_id: str) -> int | None:
        row = self.id_to_row.pop(item_id, None)
        if row is not None:
            self._kill(row)
        return row

    def _kill(self, row: int) -> None:
        self._live[row] = False
        self.rows[row] = None

    @staticmethod
    def _keys(p: Product) -> set[str]:
        keys: set[str] = set()
        if p.brand:
            keys.add("b:" + fold(p.brand))
        for c in p.all_categories():
            for prefix in category_prefixes(c):
                keys.add("c:" + fold(prefix))
        for name, value in p.attributes.items():
            for v in attribute_values(value):
                keys.add(f"a:{fold(name)}={fold(v)}")
        return keys

    # ----------------------------------------------------------------- reads
    def __len__(self) -> int:
        return len(self.id_to_row)

    @property
    def n_rows(self) -> int:
        return len(self.rows)

    def get(self, item_id: str) -> Product | None:
        row = self.id_to_row.get(item_id)
        return None if row is None else self.rows[row]

    def product(self, row: int) -> Product:
        p = self.rows[row]
        assert p is not None, f"row {row} is dead"
        return p

    def is_live(self, row: int) -> bool:
        return 0 <= row < len(self.rows) and bool(self._live[row])

    def live_rows(self) -> np.ndarray:
        return np.flatnonzero(self._live[: self.n_rows])

    def _posting(self, key: str) -> np.ndarray:
        arr = self._posting_cache.get(key)
        if arr is None:
            arr = np.asarray(self._postings.get(key, ()), dtype=np.int64)
            self._posting_cache[key] = arr
        return arr

    def mask(self, filters: Filters | None = None) -> np.ndarray:
        """Boolean mask over rows: live and matching every filter."""
        n = self.n_rows
        mask = self._live[:n].copy()
        if filters is None or filters.is_empty():
            return mask
        if filters.category:
            mask &= self._key_mask("c:" + fold(filters.category), n)
        if filters.brands:
            any_brand = np.zeros(n, dtype=bool)
            for b in filters.brands:
                any_brand |= self._key_mask("b:" + fold(b), n)
            mask &= any_brand
        for name, value in filters.attributes:
            mask &= self._key_mask(f"a:{fold(name)}={fold(value)}", n)
        if filters.price_min is not None or filters.price_max is not None:
            price = self._price[:n]
            with np.errstate(invalid="ignore"):
                ok = ~np.isnan(price)
                if filters.price_min is not None:
                    ok &= price >= filters.price_min
                if filters.price_max is not None:
                    ok &= price <= filters.price_max
            mask &= ok
        return mask

    def _key_mask(self, key: str, n: int) -> np.ndarray:
        m = np.zeros(n, dtype=bool)
        rows = self._posting(key)
        m[rows[rows < n]] = True
        return m

    # ----------------------------------------------------------------- facets
    def facets(self, rows: Iterable[int], max_values: int = 20) -> dict[str, Any]:
        """Counts over the given rows: every category level, brands, and price buckets."""
        cats: Counter[str] = Counter()
        brands: Counter[str] = Counter()
        prices: list[float] = []
        for r in rows:
            p = self.rows[r]
            if p is None:
                continue
            if p.category:
                cats.update(category_prefixes(p.category))
            if p.brand:
                brands[p.brand] += 1
            if p.price is not None:
                prices.append(p.price)
        return {
            "category": dict(_top(cats, max_values)),
            "brand": dict(_top(brands, max_values)),
            "price": price_buckets(prices),
        }

    def catalog_stats(self) -> dict[str, Any]:
        live = [p for p in self.rows if p is not None]
        return {
            "items": len(live),
            "with_text": sum(p.has_text() for p in live),
            "with_image": sum(bool(p.images) for p in live),
            "with_video": sum(bool(p.video) for p in live),
            "with_price": sum(p.price is not None for p in live),
        }


def _top(counter: Counter[str], n: int) -> list[tuple[str, int]]:
    return sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))[:n]


def price_buckets(prices: Sequence[float]) -> list[dict[str, Any]]:
    """Counts in 'nice' ranges [min, max); the last bucket is open-ended (max None)."""
    if not prices:
        return []
    lo, hi = min(prices), max(prices)
    edges = [e for e in _PRICE_EDGES if e <= hi]
    start = max(i for i, e in enumerate(edges) if e <= lo) if edges else 0
    edges = edges[start:]
    counts = [0] * len(edges)
    for price in prices:
        idx = max(i for i, e in enumerate(edges) if e <= price) if price >= edges[0] else 0
        counts[idx] += 1
    out = []
    for i, e in enumerate(edges):
        upper = edges[i + 1] if i + 1 < len(edges) else None
        if counts[i]:
            out.append({"min": e, "max": upper, "count": counts[i]})
    return out
