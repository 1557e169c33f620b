"""Model inputs from what an index already stores: products (brand, category path, price) and
the per-modality vectors keyed by row. Nothing is re-encoded here."""

from __future__ import annotations

import math
import re
import zlib
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from indexer.filters import fold
from indexer.fusion.model import FusionConfig, ItemArrays
from indexer.product import Product, category_prefixes

N_PRICE_BUCKETS = 16
MIN_VOCAB_COUNT = 2


def build_vocab(
    products: Sequence[Product], *, min_count: int = MIN_VOCAB_COUNT, n_price_buckets: int = N_PRICE_BUCKETS
) -> dict[str, Any]:
    """Brands and category prefixes seen at least ``min_count`` times, and log-price bucket
    edges at quantiles of the catalog's prices (empty when it has none)."""
    brands: Counter[str] = Counter()
    cats: Counter[str] = Counter()
    prices = []
    for p in products:
        if p.brand.strip():
            brands[fold(p.brand)] += 1
        for c in p.all_categories()[:1]:
            cats.update(category_prefixes(c))
        if isinstance(p.price, int | float) and not isinstance(p.price, bool) and p.price > 0:
            prices.append(math.log1p(float(p.price)))
    brand_list = sorted(b for b, n in brands.items() if n >= min_count)
    cat_list = sorted(c for c, n in cats.items() if n >= min_count)
    edges: list[float] = []
    if len(prices) >= 2 * n_price_buckets:
        qs = np.quantile(np.asarray(prices), np.linspace(0, 1, n_price_buckets + 1)[1:-1])
        edges = sorted({round(float(q), 6) for q in qs})
    return {
        "brands": {b: i + 1 for i, b in enumerate(brand_list)},
        "categories": {c: i + 1 for i, c in enumerate(cat_list)},
        "price_edges": edges,
    }


_WORD = re.compile(r"[0-9a-z]+")


def char_grams(text: str, n_buckets: int, max_grams: int) -> np.ndarray:
    """(max_grams,) int32: hashed whole words and character trigrams of the words (with '<'/'>'
    boundary marks), ids 1..n_buckets, 0-padded, in order of first appearance. A typo changes at
    most three trigrams of one word; the rest still match."""
    out = np.zeros(max(1, max_grams), dtype=np.int32)
    if not n_buckets or not max_grams:
        return out
    seen: dict[int, None] = {}
    for w in _WORD.findall(text.lower()):
        grams = [f"w:{w}"]
        padded = f"<{w}>"
        grams += [padded[i : i + 3] for i in range(len(padded) - 2)]
        for g in grams:
            seen.setdefault(1 + zlib.crc32(g.encode()) % n_buckets, None)
            if len(seen) >= max_grams:
                break
        if len(seen) >= max_grams:
            break
    ids = list(seen)
    out[: len(ids)] = ids
    return out


def query_grams(texts: Sequence[str], config: FusionConfig) -> np.ndarray:
    return (
        np.stack([char_grams(t, config.n_gram_buckets, config.max_query_grams) for t in texts])
        if texts
        else (np.zeros((0, max(1, config.max_query_grams)), dtype=np.int32))
    )


def item_words(p: Product) -> str:
    """The words an item shows a shopper at a glance: title, brand, category leaf, short values."""
    leaf = p.category.split(">")[-1] if p.category else ""
    vals = " ".join(str(v) for v in p.attributes.values() if not isinstance(v, bool) and len(str(v)) <= 40)
    return " ".join([p.title, p.brand, leaf, vals])


def meta_features(products: Sequence[Product], config: FusionConfig) -> dict[str, np.ndarray]:
    """brand (N,), category (N, depth), price (N,) ids; 0 = unknown or absent."""
    n = len(products)
    brand = np.zeros(n, dtype=np.int64)
    category = np.zeros((n, config.max_category_depth), dtype=np.int64)
    price = np.zeros(n, dtype=np.int64)
    edges = np.asarray(config.price_edges, dtype=np.float64)
    for i, p in enumerate(products):
        if p.brand:
            brand[i] = config.brands.get(fold(p.brand), 0)
        cats = p.all_categories()
        if cats:
            ids = [config.categories.get(c, 0) for c in category_prefixes(cats[0])]
            ids = [x for x in ids if x][-config.max_category_depth :]
            category[i, : len(ids)] = ids
        if (
            config.price_edges
            and isinstance(p.price, int | float)
            and not isinstance(p.price, bool)
            and p.price > 0
        ):
            price[i] = 1 + int(np.searchsorted(edges, math.log1p(float(p.price)), side="right"))
    return {"brand": brand, "category": category, "price": price}


def photo_colours(
    products: Sequence[Product], cache: Any = None, *, max_pixels: int = 64_000_000
) -> tuple[np.ndarray, np.ndarray]:
    """(N, COLOUR_DIM) colour histograms of the items' main photos (``images[0]``) and a present
    mask; items without a readable photo have none. ``cache``: the index's EmbeddingCache."""
    from indexer.encoders.colour import colour_histograms

    paths = [p.images[0] if p.images else None for p in products]
    return colour_histograms(paths, cache, max_pixels=max_pixels)


def item_arrays(
    products: Sequence[Product],
    vectors: Mapping[str, Mapping[int, np.ndarray] | tuple[np.ndarray, np.ndarray]],
    config: FusionConfig,
    *,
    colour_cache: Any = None,
    max_pixels: int = 64_000_000,
) -> ItemArrays:
    """ItemArrays for ``products``; ``vectors`` maps modality -> (matrix aligned with products,
    present mask) or -> {position: vector}. Modalities the model has no token for are ignored.
    A model with the colour token gets ``vectors["colour"]`` when given, else the histograms of
    the items' photo files (``photo_colours``); an item has a colour only if it has a photo vector."""
    n = len(products)
    out = ItemArrays.empty(n, config)
    if config.colour_dim and "colour" not in vectors:
        vectors = {**vectors, "colour": photo_colours(products, colour_cache, max_pixels=max_pixels)}
    for modality, dim in (
        ("text", config.text_dim),
        ("image", config.image_dim),
        ("video", config.video_dim),
        ("colour", config.colour_dim),
    ):
        src = vectors.get(modality)
        if src is None or dim == 0:
            continue
        mat: np.ndarray = getattr(out, modality)
        mask: np.ndarray = getattr(out, f"{modality}_mask")
        if isinstance(src, tuple):
            m, present = src
            mat[present] = m[present]
            mask[:] = present
        else:
            for pos, v in src.items():
                mat[pos] = v
                mask[pos] = True
    out.colour_mask &= out.image_mask  # the histogram is part of the photo token's evidence
    meta = meta_features(products, config)
    out.brand, out.category, out.price = meta["brand"], meta["category"], meta["price"]
    if config.n_gram_buckets:
        for i, p in enumerate(products):
            out.grams[i] = char_grams(item_words(p), config.n_gram_buckets, config.max_item_grams)
    return out


def rows_arrays(
    rows: np.ndarray,
    table: Any,
    vector_indexes: Mapping[str, Any],
    config: FusionConfig,
    *,
    colour_cache: Any = None,
    max_pixels: int = 64_000_000,
) -> ItemArrays:
    """ItemArrays for item-table rows, reading their vectors back from the loaded indexes
    (``vectors_for``) - the serving path for WAL upserts and for a freshly trained model. Colour
    histograms (models with the colour token) come from the rows' photo files."""
    rows = np.asarray(rows, dtype=np.int64)
    products = [table.product(int(r)) for r in rows]
    vecs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for modality, dim in (
        ("text", config.text_dim),
        ("image", config.image_dim),
        ("video", config.video_dim),
    ):
        index = vector_indexes.get(modality)
        if index is None or dim == 0 or index.dim != dim:
            continue
        present = index.contains(rows) if len(rows) else np.zeros(0, dtype=bool)
        mat = np.zeros((len(rows), dim), dtype=np.float32)
        if present.any():
            mat[present] = index.vectors_for(rows[present])
        vecs[modality] = (mat, present)
    return item_arrays(products, vecs, config, colour_cache=colour_cache, max_pixels=max_pixels)
