"""Training pairs for the fusion model, and their augmentations.

Two sources of (query text, item) pairs:

* judged: queries with graded judgments (training split only; the caller chooses the files).
  Items graded clearly lower for the same query are the first hard negatives.
* self-supervised, from the catalog itself, so a catalog without judgments still trains: the
  title, contiguous spans of the title (query-like fragments), and attribute phrases such as
  "<colour> <category leaf>" built from the item's own short attribute values.

Every clean query gets augmented variants: a one-character typo (the evaluation's own
``typo`` perturbation), a word dropped, and synonym swaps whose synonyms come from the catalog's
own vocabulary (its frequent words' nearest neighbours under the text encoder). Photos get
augmented views (random crop, flip, brightness/contrast/saturation jitter, never hue: colour is
what shoppers search for) encoded once and cached with the embedding cache.
"""

from __future__ import annotations

import hashlib
import random
import re
import zlib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from indexer.embcache import EmbeddingCache, encode_cached, file_key
from indexer.encoders.base import ImageEncoder, TextEncoder
from indexer.media import load_image
from indexer.product import Product
from shopsearch.errors import MediaError

KIND_JUDGED, KIND_TITLE, KIND_SPAN, KIND_ATTR = 0, 1, 2, 3
KIND_NAMES = {KIND_JUDGED: "judged", KIND_TITLE: "title", KIND_SPAN: "span", KIND_ATTR: "attributes"}
BOW_BUCKETS = 4096
MAX_ATTR_VALUE_CHARS = 30

_WORD = re.compile(r"[0-9a-z]+(?:['.\-][0-9a-z]+)*")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _stem(w: str) -> str:
    """Crude plural folding so that 'shirt' and 'shirts' match in the false-negative test."""
    return w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w


def bow(text: str) -> frozenset[int]:
    """Stable hashed bag of (folded) words: crc32, not ``hash()``, so runs are reproducible."""
    return frozenset(zlib.crc32(_stem(w).encode()) % BOW_BUCKETS for w in words(text))


def item_text(p: Product) -> str:
    """Everything an item says about itself (for the false-negative word test)."""
    vals = " ".join(str(v) for v in p.attributes.values() if not isinstance(v, bool))
    return " ".join([p.title, p.brand, p.category.replace(">", " "), vals, p.description[:300]])


def stable_rng(*parts: object) -> random.Random:
    digest = hashlib.sha256("\x00".join(str(p) for p in parts).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


# ====================================================================== pseudo-queries
def _short_values(p: Product) -> list[str]:
    out: list[str] = []
    seen: set[str] = set()
    for v in p.attributes.values():
        if isinstance(v, bool) or isinstance(v, int | float):
            continue  # numbers alone make poor queries ("0.5")
        s = " ".join(str(v).split())
        if not s or len(s) > MAX_ATTR_VALUE_CHARS or not any(c.isalpha() for c in s):
            continue
        for part in s.split("|"):
            key = part.strip().casefold()
            if key and key not in seen:
                seen.add(key)
                out.append(part.strip())
    return out


def attribute_values(p: Product) -> frozenset[str]:
    """The item's short attribute values and category leaf, case-folded: what 'the same kind of
    product' means in the catalog's own terms (photo views of items that share most of these are
    soft positives for each other)."""
    leaf = p.category.split(">")[-1].strip() if p.category else ""
    vals = {v.casefold() for v in _short_values(p)}
    if leaf:
        vals.add(leaf.casefold())
    return frozenset(vals)


def pseudo_queries(p: Product, rng: random.Random, *, n_attr: int = 3) -> list[tuple[int, str]]:
    """(kind, text) self-supervised queries for one item: title, a title span, attribute phrases.

    An attribute phrase is 1-2 of the item's short attribute values (and sometimes its brand)
    followed by its category leaf, e.g. 'Blue Skirts' or 'Women Casual Skirts'; without a category
    it is 2-3 values. Values are the catalog's own words, so nothing here is specific to one data
    set."""
    out: list[tuple[int, str]] = []
    title = " ".join(p.title.split())
    if title:
        out.append((KIND_TITLE, title))
        toks = title.split()
        if len(toks) >= 4:
            length = rng.randint(2, min(4, len(toks) - 1))
            start = rng.randrange(0, len(toks) - length + 1)
            out.append((KIND_SPAN, " ".join(toks[start : start + length])))
    leaf = p.category.split(">")[-1].strip() if p.category else ""
    values = [v for v in _short_values(p) if v.casefold() != leaf.casefold()]
    if p.brand.strip() and rng.random() < 0.3:
        values.append(p.brand.strip())
    seen: set[str] = set()
    for _ in range(n_attr * 3):
        if len(seen) >= n_attr or not values:
            break
        if leaf:
            picked = rng.sample(values, k=min(len(values), rng.randint(1, 2)))
            text = " ".join([*picked, leaf])
        else:
            if len(values) < 2:
                break
            text = " ".join(rng.sample(values, k=min(len(values), rng.randint(2, 3))))
        key = text.casefold()
        if key not in seen:
            seen.add(key)
            out.append((KIND_ATTR, text))
    if leaf and not values and leaf.casefold() not in seen:
        out.append((KIND_ATTR, leaf))
    return out


# ====================================================================== augmentations
def catalog_synonyms(
    products: Sequence[Product],
    encoder: TextEncoder,
    cache: EmbeddingCache | None,
    *,
    max_words: int = 3000,
    min_count: int = 3,
    threshold: float = 0.8,
    per_word: int = 3,
) -> dict[str, list[str]]:
    """word -> up to ``per_word`` near-synonyms among the catalog's frequent words (cosine of the
    text encoder's word vectors at least ``threshold``; pure spelling variants such as
    'tshirt'/'t-shirt' pass first). Numbers and words of under 3 letters are left alone."""
    from indexer.embcache import encode_texts_cached

    counts: Counter[str] = Counter()
    for p in products:
        counts.update(
            w for w in words(f"{p.title} {' '.join(_short_values(p))}") if w.isalpha() and len(w) >= 3
        )
    vocab = [w for w, n in counts.most_common(max_words) if n >= min_count]
    if len(vocab) < 2:
        return {}
    vecs = encode_texts_cached(encoder, vocab, cache, batch_size=256)
    sims = vecs @ vecs.T
    np.fill_diagonal(sims, -1.0)
    out: dict[str, list[str]] = {}
    for i, w in enumerate(vocab):
        cand = np.flatnonzero(sims[i] >= threshold)
        cand = cand[np.argsort(-sims[i, cand])][:per_word]
        # a plural of the same word is not a swap worth training on
        syn = [vocab[j] for j in cand if _stem(vocab[j]) != _stem(w)]
        if syn:
            out[w] = syn
    return out


def swap_synonym(text: str, synonyms: Mapping[str, Sequence[str]], rng: random.Random) -> str:
    toks = text.split()
    spots = [i for i, t in enumerate(toks) if t.lower() in synonyms]
    if not spots:
        return text
    i = rng.choice(spots)
    toks[i] = rng.choice(list(synonyms[toks[i].lower()]))
    return " ".join(toks)


def drop_word(text: str, rng: random.Random) -> str:
    toks = text.split()
    if len(toks) < 3:
        return text
    del toks[rng.randrange(len(toks))]
    return " ".join(toks)


def variants(text: str, rng: random.Random, synonyms: Mapping[str, Sequence[str]]) -> list[str]:
    """Augmented forms of one query: a typo, a synonym swap and a dropped word (when they change
    something)."""
    from evaluation.perturb import typo  # the same one-edit typos the robustness runs use

    out = []
    for v in (typo(text, rng), swap_synonym(text, synonyms, rng), drop_word(text, rng)):
        if v != text and v not in out:
            out.append(v)
    return out


# ====================================================================== pairs
@dataclass
class PairSet:
    """Positive (query, item) slots. ``items`` are positions in the trainer's item arrays;
    ``group`` identifies the clean query (slots with the same clean text share it), and
    ``known`` maps a group to {item: grade} for the items that answer it (judged grades, or
    1.0 for every item that generated that text)."""

    texts: list[str] = field(default_factory=list)
    item: list[int] = field(default_factory=list)
    kind: list[int] = field(default_factory=list)
    grade: list[float] = field(default_factory=list)
    group: list[int] = field(default_factory=list)
    variants: list[list[int]] = field(default_factory=list)  # text ids, clean first
    lower: list[list[int]] = field(default_factory=list)  # judged-lower items (hard negatives)
    known: dict[int, dict[int, float]] = field(default_factory=dict)
    _text_id: dict[str, int] = field(default_factory=dict)

    def text_id(self, text: str) -> int:
        i = self._text_id.get(text)
        if i is None:
            i = self._text_id[text] = len(self.texts)
            self.texts.append(text)
        return i

    def add(
        self, clean: str, item: int, kind: int, grade: float, extra: Sequence[str], lower: Sequence[int] = ()
    ) -> None:
        g = self.text_id(clean)
        self.item.append(item)
        self.kind.append(kind)
        self.grade.append(grade)
        self.group.append(g)
        self.variants.append([g, *(self.text_id(v) for v in extra)])
        self.lower.append(list(lower))
        known = self.known.setdefault(g, {})
        known[item] = max(grade, known.get(item, 0.0))

    def __len__(self) -> int:
        return len(self.item)

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "item": np.asarray(self.item, dtype=np.int64),
            "kind": np.asarray(self.kind, dtype=np.int64),
            "grade": np.asarray(self.grade, dtype=np.float32),
            "group": np.asarray(self.group, dtype=np.int64),
        }


def grade_top(grades: Sequence[float]) -> float:
    """The top of the grade scale: the highest grade but for the top 1% of positive grades, so
    one mistyped grade (30 on a 0-3 scale) does not halve the positive cut-off for every other
    judgment; grades above it count as the top. 0 without a positive grade."""
    positive = np.sort(np.asarray([g for g in grades if g > 0], dtype=np.float64))
    if not len(positive):
        return 0.0
    return float(positive[min(len(positive) - 1, int(0.99 * len(positive)))])


def judged_pairs(
    pairs: PairSet,
    queries: Mapping[str, str],
    qrels: Mapping[str, Mapping[str, float]],
    item_pos: Mapping[str, int],
    synonyms: Mapping[str, Sequence[str]],
    *,
    seed: int = 0,
) -> int:
    """Add (query, item) slots for items graded in the upper half of the scale; items graded at
    least half the scale lower become that slot's hard negatives. Returns slots added."""
    grades = [g for j in qrels.values() for g in j.values()]
    top = grade_top(grades)
    if top <= 0:  # no positive grade: nothing to learn a match from
        return 0
    pos_min = max(top / 2, min((g for g in grades if g > 0), default=top))
    margin = max(top / 2, 1e-9)
    added = 0
    for qid, text in queries.items():
        judged = qrels.get(qid)
        text = " ".join(text.split())
        if not judged or not text:
            continue
        rng = stable_rng(seed, "judged", qid)
        extra = variants(text, rng, synonyms)
        graded = [(item_pos[d], float(g)) for d, g in judged.items() if d in item_pos]
        for item, g in graded:
            if g < pos_min:
                continue
            lower = [j for j, h in graded if h <= g - margin]
            pairs.add(text, item, KIND_JUDGED, min(g / top, 1.0), extra, lower)
            added += 1
        known = pairs.known.setdefault(pairs.text_id(text), {})
        for item, g in graded:  # judged-irrelevant items are known too (grade 0 -> a negative)
            known.setdefault(item, min(g / top, 1.0))
    return added


def catalog_pairs(
    pairs: PairSet,
    products: Sequence[Product],
    positions: Sequence[int],
    synonyms: Mapping[str, Sequence[str]],
    *,
    seed: int = 0,
    n_attr: int = 3,
) -> int:
    """Add self-supervised slots for ``products`` (at item positions ``positions``)."""
    added = 0
    for p, pos in zip(products, positions, strict=True):
        rng = stable_rng(seed, "catalog", p.id)
        for kind, text in pseudo_queries(p, rng, n_attr=n_attr):
            extra = variants(text, rng, synonyms) if kind != KIND_TITLE else [typo_only(text, rng)]
            pairs.add(text, pos, kind, 1.0, [e for e in extra if e != text])
            added += 1
    return added


def typo_only(text: str, rng: random.Random) -> str:
    from evaluation.perturb import typo

    return typo(text, rng)


# ====================================================================== photo views
def augment_photo(image: Image.Image, rng: random.Random, *, photometric: bool = True) -> Image.Image:
    """Random resized crop (55-100% of the area), horizontal flip, brightness/contrast/saturation
    jitter of +-20%. Hue is never changed: the colour is what a shopper asks for. Without
    ``photometric`` the jitter is left out but the same crop and flip are drawn (the colour
    histogram of a view: see ``photo_view_colours``)."""
    img = image.convert("RGB")
    w, h = img.size
    for _ in range(10):
        area = w * h * rng.uniform(0.55, 1.0)
        ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        cw, ch = int(round((area * ratio) ** 0.5)), int(round((area / ratio) ** 0.5))
        if 0 < cw <= w and 0 < ch <= h:
            x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
            img = img.crop((x, y, x + cw, y + ch))
            break
    if rng.random() < 0.5:
        img = ImageOps.mirror(img)
    if not photometric:
        return img
    img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.8, 1.2))
    img = ImageEnhance.Contrast(img).enhance(rng.uniform(0.8, 1.2))
    img = ImageEnhance.Color(img).enhance(rng.uniform(0.8, 1.2))
    return img


def photo_views(
    products: Sequence[Product],
    encoder: ImageEncoder,
    cache: EmbeddingCache | None,
    *,
    n_views: int,
    seed: int = 0,
    batch_size: int = 32,
    max_pixels: int = 64_000_000,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """item id -> (n_views, dim) vectors of augmented copies of its first photo. Each view is
    seeded by (seed, item id, view) and cached by (encoder, view, seed, file bytes), so a rerun
    encodes nothing. Photos that fail to decode are skipped (the item trains on its stored vector)."""
    from tqdm.auto import tqdm

    todo: list[tuple[str, str, int]] = []
    for p in products:
        if p.images and n_views > 0:
            todo.extend((p.id, p.images[0], v) for v in range(n_views))
    keys: list[str] = []
    ok: list[tuple[str, str, int]] = []
    for item_id, path, v in todo:
        try:
            keys.append(file_key(f"{encoder.name}:fusion-aug{v}:s{seed}", Path(path)))
            ok.append((item_id, path, v))
        except OSError:
            continue
    bar = tqdm(total=len(ok), desc="photo views", unit="img", disable=not progress)
    broken: set[int] = set()

    def encode_missing(idx: list[int]) -> np.ndarray:
        out = np.zeros((len(idx), encoder.dim), dtype=np.float32)
        for s in range(0, len(idx), batch_size):
            chunk = idx[s : s + batch_size]
            imgs, where = [], []
            for j, i in enumerate(chunk):
                item_id, path, v = ok[i]
                try:
                    img = load_image(path, max_pixels=max_pixels)
                except MediaError:
                    broken.add(i)
                    continue
                imgs.append(augment_photo(img, stable_rng(seed, "photo", item_id, v)))
                where.append(s + j)
            if imgs:
                out[where] = encoder.encode(imgs, batch_size=batch_size)
            bar.update(len(chunk))
        return out

    vecs = encode_cached(keys, encode_missing, cache, dim=encoder.dim) if ok else np.zeros((0, encoder.dim))
    bar.close()
    per: dict[str, list[np.ndarray]] = {}
    for i, (item_id, _, _) in enumerate(ok):
        if i not in broken and np.linalg.norm(vecs[i]) > 0:
            per.setdefault(item_id, []).append(vecs[i])
    return {k: np.stack(v).astype(np.float32) for k, v in per.items()}


def photo_view_colours(
    products: Sequence[Product],
    cache: EmbeddingCache | None,
    *,
    n_views: int,
    seed: int = 0,
    jitter: bool = False,
    max_pixels: int = 64_000_000,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """item id -> (n_views, COLOUR_DIM) colour histograms of the views ``photo_views`` encodes
    (same seeds, so the same crop and flip), cached like them. ``jitter`` False (the default)
    leaves the brightness/contrast/saturation jitter (hue-preserving already) out of the histogram.
    Measured on Fashion's training items: the jitter moves a histogram far (cosine to the clean
    one 0.85, crop and flip alone 0.985), so far that a jittered view finds its colour among the
    other photos' histograms in 39% of its top 10 instead of 52%; trained both ways, the
    trainer's validation items (training part) found the same type and colour from a photo in
    48.0% of the top 10 without the jitter and 47.4% with it (one seed each: a wash), so the
    histogram keeps the exact colours and the photo vector alone learns lighting invariance."""
    from tqdm.auto import tqdm

    from indexer.encoders.colour import COLOUR_DIM, COLOUR_NAME, colour_histogram

    ok: list[tuple[str, str, int]] = []
    keys: list[str] = []
    tag = f"{COLOUR_NAME}:fusion-aug{{}}:s{seed}{':jitter' if jitter else ''}"
    for p in products:
        for v in range(n_views if p.images else 0):
            try:
                keys.append(file_key(tag.format(v), Path(p.images[0])))
            except OSError:
                continue
            ok.append((p.id, p.images[0], v))
    bar = tqdm(total=len(ok), desc="photo view colours", unit="img", disable=not progress)

    def compute(idx: list[int]) -> np.ndarray:
        out = np.zeros((len(idx), COLOUR_DIM), dtype=np.float32)
        for j, i in enumerate(idx):
            item_id, path, v = ok[i]
            try:
                img = load_image(path, max_pixels=max_pixels)
            except MediaError:
                continue
            view = augment_photo(img, stable_rng(seed, "photo", item_id, v), photometric=jitter)
            out[j] = colour_histogram(view)
            bar.update(1)
        return out

    hists = encode_cached(keys, compute, cache, dim=COLOUR_DIM) if ok else np.zeros((0, COLOUR_DIM))
    bar.close()
    per: dict[str, list[np.ndarray]] = {}
    for i, (item_id, _, _) in enumerate(ok):
        if hists[i].any():
            per.setdefault(item_id, []).append(hists[i])
    return {k: np.stack(v).astype(np.float32) for k, v in per.items()}
