"""Contrastive training of the fusion model on an index's stored vectors.

Loss per step (InfoNCE, learned temperature, both directions):

* text -> item: a batch of (query vector, item) slots - judged pairs and the catalog's own
  pseudo-queries, each query clean or augmented - against the batch's items plus one hard
  negative per slot (an item judged clearly lower for that query, or one mined from the current
  model's top results). Items go through modality dropout, so a text learns to find an item from
  its photo alone.
* photo -> item (catalogs with photos): an item's photo alone (an augmented view when cached,
  with that view's colour histogram) against the items' other views.

Known false negatives never count as negatives: items judged about as relevant to the same
query, items that generated the same pseudo-query, and items whose own text contains every word
of the query.

Validation every epoch on a held-out part of the TRAINING data (judged queries and catalog items
chosen by a hash), early stopping on it, and the best epoch - possibly the untrained start, which
ranks text exactly like the text encoder - is what gets saved.
"""

from __future__ import annotations

import hashlib
import math
import random
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from indexer.fusion.data import (
    BOW_BUCKETS,
    KIND_ATTR,
    KIND_JUDGED,
    KIND_NAMES,
    KIND_SPAN,
    KIND_TITLE,
    PairSet,
    attribute_values,
    bow,
    catalog_pairs,
    catalog_synonyms,
    grade_top,
    item_text,
    judged_pairs,
    photo_view_colours,
    photo_views,
)
from shopsearch.errors import ConfigError, InvalidQueryError

NEG_INF = -1e4


@dataclass
class TrainConfig:
    epochs: int = 15
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.01
    patience: int = 3
    seed: int = 0
    d_model: int = 256
    n_layers: int = 2
    n_heads: int = 4
    ff_dim: int = 512
    dropout: float = 0.1
    val_fraction: float = 0.1
    max_catalog_items: int = 20_000  # items that get pseudo-queries (a sample of large catalogs)
    catalog_slots_per_epoch: int = 20_000
    photo_views: int = 0  # augmented photo views to encode and cache per training item
    hard_negatives: bool = True
    mine_depth: int = 30
    mine_max: int = 8_000  # slots that get a mined negative per epoch
    p_clean: float = 0.5  # chance a slot uses its clean query instead of an augmented one
    view_weight: float = 0.5
    view_alike_jaccard: float = 0.25  # items this alike are not each other's negatives (photo loss)
    n_gram_buckets: int = 0  # hashed word/trigram channel (0: off; it lowered HD validation 0.72 -> 0.66)
    colour: bool = True  # a colour-histogram token next to the photo (catalogs with photos)
    p_colour_drop: float = 0.1  # chance an item's histogram is hidden while its photo stays
    colour_view_jitter: bool = False  # photo views' histograms with the brightness/saturation jitter
    p_drop_query_words: float = 0.5  # share of training queries without their words (items: half that)
    p_content_drop: float = 0.35
    synonym_threshold: float = 0.8
    max_minutes: float | None = None
    threads: int = 1

    @classmethod
    def from_settings(cls, settings: Any) -> TrainConfig:
        """Defaults from the ``fusion_*`` settings (see shopsearch.settings)."""
        return cls(
            epochs=settings.fusion_epochs,
            batch_size=settings.fusion_batch_size,
            lr=settings.fusion_lr,
            seed=settings.fusion_seed,
            d_model=settings.fusion_d_model,
            n_layers=settings.fusion_layers,
            n_heads=settings.fusion_heads,
            photo_views=settings.fusion_photo_views,
            threads=settings.fusion_threads,
            n_gram_buckets=settings.fusion_gram_buckets,
        )

    def __post_init__(self) -> None:
        # epochs 0 published an untrained model over the trained one
        for name, value, low in (("epochs", self.epochs, 1), ("batch size", self.batch_size, 2)):
            if value < low:
                raise ConfigError(f"train-fusion needs {name} >= {low}, got {value}")
        if self.patience < 1:
            raise ConfigError(f"train-fusion needs patience >= 1, got {self.patience}")
        if not 0 <= self.photo_views <= 16:
            raise ConfigError(f"train-fusion needs photo views between 0 and 16, got {self.photo_views}")
        if self.max_minutes is not None and not (math.isfinite(self.max_minutes) and self.max_minutes > 0):
            raise ConfigError(
                f"train-fusion's time budget must be a positive number of minutes, got {self.max_minutes}"
            )
        if self.d_model % self.n_heads:
            raise ConfigError(f"d_model {self.d_model} must be a multiple of n_heads {self.n_heads}")
        if not 0 <= self.val_fraction < 1:
            raise ConfigError("val_fraction must be in [0, 1)")


@dataclass
class TrainResult:
    model_dir: Path
    history: list[dict[str, Any]]
    best_epoch: int
    val_start: dict[str, float]
    val_best: dict[str, float]
    counts: dict[str, int]
    seconds: float
    publish: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["model_dir"] = str(self.model_dir)
        return d


def _hash_fraction(key: str, seed: int, what: str) -> float:
    digest = hashlib.sha1(f"{seed}\x00{what}\x00{key}".encode()).hexdigest()
    return int(digest[:12], 16) / float(16**12)


# ====================================================================== batches and masks
def _bow_matrix(sets: list[frozenset[int]]) -> np.ndarray:
    m = np.zeros((len(sets), BOW_BUCKETS), dtype=np.float32)
    for i, s in enumerate(sets):
        if s:
            m[i, list(s)] = 1.0
    return m


class _Data:
    """Everything the trainer indexes by item position or text id."""

    def __init__(
        self,
        items: Any,
        item_bows: list[frozenset[int]],
        pairs: PairSet,
        text_vecs: np.ndarray,
        attr_values: list[frozenset[str]] | None = None,
        text_grams: np.ndarray | None = None,
    ) -> None:
        self.items = items
        self.item_bows = item_bows
        self.attr_values = attr_values
        self.pairs = pairs
        self.arr = pairs.arrays()
        self.text_vecs = text_vecs
        self.text_bows = [bow(t) for t in pairs.texts]
        self.text_grams = text_grams  # (n_texts, max_query_grams) or None


def false_negative_mask(
    data: _Data, slots: np.ndarray, col_items: np.ndarray, margin: float = 0.5
) -> np.ndarray:
    """(len(slots), len(col_items)) True where a column must not count as a negative for a
    slot's query: its own item again, an item known to answer the query about as well, or an
    unjudged item whose text contains every word of the query."""
    groups = data.arr["group"][slots]
    grades = data.arr["grade"][slots]
    own = data.arr["item"][slots]
    qb = [data.text_bows[g] for g in groups]
    qm = _bow_matrix(qb)
    cm = _bow_matrix([data.item_bows[c] for c in col_items])
    qlen = np.asarray([len(s) for s in qb], dtype=np.float32)
    contains = ((qm @ cm.T) >= qlen[:, None] - 0.5) & (qlen[:, None] > 0)
    mask = contains | (col_items[None, :] == own[:, None])
    cols_of: dict[int, list[int]] = {}
    for j, c in enumerate(col_items.tolist()):
        cols_of.setdefault(c, []).append(j)
    for i, g in enumerate(groups.tolist()):
        known = data.pairs.known.get(g)
        if not known:
            continue
        if len(known) < len(cols_of):
            hits = ((c, known[c]) for c in known if c in cols_of)
        else:
            hits = ((c, known[c]) for c in cols_of if c in known)
        for c, kg in hits:
            # judged: as relevant as this slot's item -> not a negative; clearly lower -> a negative
            mask[i, cols_of[c]] = kg > grades[i] - margin
    return mask


# ====================================================================== validation
@dataclass
class _Val:
    judged_q: np.ndarray | None = None  # (Q, text_dim) query vectors
    judged_grams: np.ndarray | None = None
    judged_rel: list[dict[int, float]] = field(default_factory=list)  # item position -> grade
    judged_pos_min: float = 0.0
    cat_q: np.ndarray | None = None  # (Q, text_dim)
    cat_grams: np.ndarray | None = None
    cat_rel: list[set[int]] = field(default_factory=list)  # positions within cat_items
    cat_items: np.ndarray | None = None  # item positions
    photo_items: np.ndarray | None = None  # item positions with a photo
    photo_alike: np.ndarray | None = None  # (P, P) alike pairs among photo_items


def alike_matrix(sets: list[frozenset[str]], threshold: float) -> np.ndarray:
    """(n, n) True where two different items share at least ``threshold`` (Jaccard) of their
    attribute values (colour, type, ...: see ``attribute_values``)."""
    n = len(sets)
    if threshold >= 1 or not n:
        return np.zeros((n, n), dtype=bool)
    ids: dict[str, int] = {}
    m = np.zeros((n, 1 + sum(len(v) for v in sets)), dtype=np.float32)
    for i, v in enumerate(sets):
        for x in v:
            m[i, ids.setdefault(x, len(ids))] = 1.0
    inter = m @ m.T
    size = m.sum(axis=1)
    union = size[:, None] + size[None, :] - inter
    jac = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    return (jac >= threshold) & ~np.eye(n, dtype=bool)


def _photo_only(items: Any) -> Any:
    """The same items as a photo-only catalog would hold them: image token alone."""
    out = items.copy()
    out.text_mask[:] = False
    out.video_mask[:] = False
    out.brand[:] = 0
    out.category[:] = 0
    out.price[:] = 0
    out.grams[:] = 0
    return out


def _dcg(gains: list[float]) -> float:
    return sum(g / math.log2(i + 2) for i, g in enumerate(gains) if g > 0)


def _topk(scores: np.ndarray, k: int) -> np.ndarray:
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def evaluate(
    model: Any, data: _Data, val: _Val, all_positions: np.ndarray, all_vecs: np.ndarray | None = None
) -> dict[str, float]:
    """Validation scores in [0, 1]; ``score`` is their mean (the early-stopping criterion).

    judged_ndcg10c: condensed NDCG@10 of the top 100 over the whole catalog (unjudged items
    removed, as the evaluation reports it); judged_recall100: share of relevant judged items in
    the top 100; cat_text: NDCG@10 of a
    pseudo-query over the held-out items (relevant: items that answer it); cat_text_photo: the
    same over photo-only views of those items (cross-modal); photo: precision@10 of an item's
    photo alone among the held-out items, counting the item itself and items alike to it (shared
    attribute values, as the photo loss treats them)."""
    from indexer.fusion.model import embed_items, embed_queries

    out: dict[str, float] = {}
    if val.judged_q is not None and len(val.judged_q):
        iv = all_vecs if all_vecs is not None else embed_items(model, data.items.take(all_positions))[0]
        qv = embed_queries(model, val.judged_q, val.judged_grams)
        nd, rc = [], []
        for s in range(0, len(qv), 256):
            scores = qv[s : s + 256] @ iv.T
            top = all_positions[_topk(scores, 100)]
            for i in range(len(top)):
                rel = val.judged_rel[s + i]
                condensed = [int(d) for d in top[i] if int(d) in rel][:10]
                ideal = _dcg(sorted((g for g in rel.values() if g > 0), reverse=True)[:10])
                nd.append(_dcg([rel[d] for d in condensed]) / ideal if ideal > 0 else 0.0)
                relevant = {d for d, g in rel.items() if g >= val.judged_pos_min}
                rc.append(len(relevant & set(top[i].tolist())) / max(1, len(relevant)))
        out["judged_ndcg10c"] = float(np.mean(nd))
        out["judged_recall100"] = float(np.mean(rc))
    if val.cat_q is not None and len(val.cat_q) and val.cat_items is not None:
        items = data.items.take(val.cat_items)
        qv = embed_queries(model, val.cat_q, val.cat_grams)
        views = [("cat_text", items, None)]
        keep = np.flatnonzero(items.image_mask)
        if len(keep):
            photo_only = _photo_only(items.take(keep))
            views.append(("cat_text_photo", photo_only, {int(p): j for j, p in enumerate(keep)}))
        for name, view, where in views:
            iv, _ = embed_items(model, view)
            top = _topk(qv @ iv.T, 10)
            scores = []
            for i, rel in enumerate(val.cat_rel):
                rel_view = rel if where is None else {where[p] for p in rel if p in where}
                if not rel_view:
                    continue
                gains = [1.0 if j in rel_view else 0.0 for j in top[i]]
                scores.append(_dcg(gains) / _dcg([1.0] * min(10, len(rel_view))))
            if scores:
                out[name] = float(np.mean(scores))
    if val.photo_items is not None and len(val.photo_items) > 1:
        items = data.items.take(val.photo_items)
        qv, _ = embed_items(model, _photo_only(items))
        iv, _ = embed_items(model, items)
        top = _topk(qv @ iv.T, 10)
        alike = val.photo_alike if val.photo_alike is not None else np.zeros((len(top), len(top)), bool)
        out["photo"] = float(
            np.mean([np.mean([j == i or alike[i, j] for j in top[i]]) for i in range(len(top))])
        )
    out["score"] = float(np.mean([v for v in out.values()])) if out else 0.0
    return out


# ====================================================================== training
class Trainer:
    """One training run over precomputed vectors (no encoder runs inside the loop)."""

    def __init__(
        self,
        model: Any,
        data: _Data,
        val: _Val,
        train_positions: np.ndarray,
        all_positions: np.ndarray,
        views: dict[int, np.ndarray],
        cfg: TrainConfig,
        *,
        view_colours: dict[int, np.ndarray] | None = None,
        progress: bool = False,
        log: Callable[[str], None] | None = None,
    ) -> None:
        import torch

        self.torch = torch
        self.model = model
        self.data = data
        self.val = val
        self.train_positions = train_positions
        self.all_positions = all_positions
        self.views = views
        self.view_colours = view_colours or {}  # position -> histograms aligned with views[position]
        self.cfg = cfg
        self.progress = progress
        self.log = log or (lambda _m: None)
        self.rng = np.random.default_rng(cfg.seed)
        self.pyrng = random.Random(cfg.seed)
        kinds = data.arr["kind"]
        self.judged_slots = np.flatnonzero(kinds == KIND_JUDGED)
        cat = np.flatnonzero(kinds != KIND_JUDGED)
        by_item: dict[int, list[int]] = {}
        for s in cat.tolist():
            by_item.setdefault(int(data.arr["item"][s]), []).append(s)
        self.cat_by_item = by_item
        self.photo_positions = np.asarray(
            [p for p in train_positions.tolist() if data.items.image_mask[p]], dtype=np.int64
        )
        gates = [p for n, p in model.named_parameters() if n == "words_gate"]
        rest = [p for n, p in model.named_parameters() if n != "words_gate"]
        self.opt = torch.optim.AdamW(
            [{"params": rest}, {"params": gates, "lr": cfg.lr * 10, "weight_decay": 0.0}],
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
        )

    # ----------------------------------------------------------------- sampling
    def _per_item(self) -> int:
        """Catalog slots drawn per item and epoch: up to 3 when the catalog is small next to
        ``catalog_slots_per_epoch``, else 1 (and only a sample of items)."""
        return max(1, min(3, self.cfg.catalog_slots_per_epoch // max(1, len(self.cat_by_item))))

    def _n_slots(self) -> int:
        k = self._per_item()
        cat = sum(min(k, len(v)) for v in self.cat_by_item.values())
        return len(self.judged_slots) + min(cat, self.cfg.catalog_slots_per_epoch)

    def _epoch_slots(self) -> np.ndarray:
        items = list(self.cat_by_item)
        self.pyrng.shuffle(items)
        k = self._per_item()
        cat: list[int] = []
        for i in items:
            if len(cat) >= self.cfg.catalog_slots_per_epoch:
                break
            cands = self.cat_by_item[i]
            cat.extend(self.pyrng.sample(cands, min(k, len(cands))))
        cat = cat[: self.cfg.catalog_slots_per_epoch]
        slots = np.concatenate([self.judged_slots, np.asarray(cat, dtype=np.int64)])
        self.rng.shuffle(slots)
        return slots

    def _variants(self, slots: np.ndarray) -> np.ndarray:
        out = np.empty(len(slots), dtype=np.int64)
        for i, s in enumerate(slots.tolist()):
            vs = self.data.pairs.variants[s]
            out[i] = (
                vs[0] if len(vs) == 1 or self.pyrng.random() < self.cfg.p_clean else self.pyrng.choice(vs[1:])
            )
        return out

    def _mine(self, slots: np.ndarray, variants: np.ndarray, all_vecs: np.ndarray) -> dict[int, int]:
        """slot -> hard negative item: judged-lower items first, else one of the current model's
        top results for the query that is not a known or likely positive."""
        from indexer.fusion.model import embed_queries

        neg: dict[int, int] = {}
        lower_slots = [s for s in slots.tolist() if self.data.pairs.lower[s]]
        for s in lower_slots:
            if self.pyrng.random() < 0.5:
                neg[s] = self.pyrng.choice(self.data.pairs.lower[s])
        todo = np.asarray([s for s in slots.tolist() if s not in neg], dtype=np.int64)
        if not self.cfg.hard_negatives or not len(todo):
            return neg
        todo = todo[self.rng.permutation(len(todo))[: self.cfg.mine_max]]
        var_of = dict(zip(slots.tolist(), variants.tolist(), strict=True))
        var = np.asarray([var_of[s] for s in todo.tolist()], dtype=np.int64)
        pool = self.train_positions
        iv = all_vecs[pool]
        grams = None if self.data.text_grams is None else self.data.text_grams[var]
        qv = embed_queries(self.model, self.data.text_vecs[var], grams)
        depth = min(self.cfg.mine_depth, len(pool))
        for s0 in range(0, len(todo), 1024):
            top = _topk(qv[s0 : s0 + 1024] @ iv.T, depth)
            chunk = todo[s0 : s0 + 1024]
            cands = pool[top]
            for i, s in enumerate(chunk.tolist()):
                ok = self._negatives_among(s, cands[i].tolist())
                if ok:
                    neg[s] = ok[self.pyrng.randrange(min(len(ok), 10))]
        return neg

    def _negatives_among(self, slot: int, candidates: list[int], margin: float = 0.5) -> list[int]:
        """The candidates that may serve as negatives for a slot (same rule as
        ``false_negative_mask``, for one row)."""
        d = self.data
        own = int(d.arr["item"][slot])
        group = int(d.arr["group"][slot])
        grade = float(d.arr["grade"][slot])
        qb = d.text_bows[group]
        known = d.pairs.known.get(group, {})
        out = []
        for c in candidates:
            if c == own:
                continue
            if c in known:
                if known[c] > grade - margin:
                    continue
            elif qb and qb <= d.item_bows[c]:
                continue
            out.append(c)
        return out

    # ----------------------------------------------------------------- steps
    def _loss_text(self, slots: np.ndarray, variants: np.ndarray, neg: dict[int, int]) -> Any:
        from indexer.fusion.model import modality_dropout, to_tensors

        torch = self.torch
        data = self.data
        own = data.arr["item"][slots]
        negs = np.asarray([neg[s] for s in slots.tolist() if s in neg], dtype=np.int64)
        cols = np.concatenate([own, negs])
        cfg = self.cfg
        items = modality_dropout(
            data.items.take(cols), self.rng, p_content=cfg.p_content_drop, p_colour=cfg.p_colour_drop
        )
        items.grams[self.rng.random(len(cols)) < self.cfg.p_drop_query_words / 2] = 0
        if self.views:
            self._swap_views(items, cols, p=0.3)
        mask = false_negative_mask(data, slots, cols)
        mask[np.arange(len(slots)), np.arange(len(slots))] = False
        q = torch.from_numpy(data.text_vecs[variants])
        grams = None
        if data.text_grams is not None:
            g = data.text_grams[variants].astype(np.int64)
            # some queries train without their words: the encoder vector must carry them alone,
            # so the lexical channel adds to the semantic one instead of replacing it
            g[self.rng.random(len(g)) < self.cfg.p_drop_query_words] = 0
            grams = torch.from_numpy(g)
        qv = self.model.encode_queries(q, grams)
        iv, _ = self.model.encode_items(to_tensors(items))
        scale = self.model.logit_scale.clamp(max=math.log(100)).exp()
        m = torch.from_numpy(mask)
        logits = (scale * qv @ iv.T).masked_fill(m, NEG_INF)
        target = torch.arange(len(slots))
        w = torch.from_numpy(data.arr["grade"][slots])
        loss_q = (torch.nn.functional.cross_entropy(logits, target, reduction="none") * w).sum() / w.sum()
        logits_t = (scale * iv[: len(slots)] @ qv.T).masked_fill(m[:, : len(slots)].T, NEG_INF)
        loss_i = (torch.nn.functional.cross_entropy(logits_t, target, reduction="none") * w).sum() / w.sum()
        return (loss_q + loss_i) / 2

    def _swap_views(self, items: Any, positions: np.ndarray, p: float) -> None:
        """Replace stored photo vectors by cached augmented views (crops, jitter) at random, and
        the colour histogram by that view's (when the model has the colour token)."""
        for i, pos in enumerate(positions.tolist()):
            v = self.views.get(pos)
            if v is not None and items.image_mask[i] and self.pyrng.random() < p:
                k = self.pyrng.randrange(len(v))
                items.image[i] = v[k]
                c = self.view_colours.get(pos)
                if c is not None and len(c) == len(v):
                    items.colour[i] = c[k]

    def _loss_view(self, batch: np.ndarray) -> Any:
        from indexer.fusion.model import modality_dropout, to_tensors

        torch = self.torch
        items = self.data.items.take(batch)
        photo = _photo_only(items)
        self._swap_views(photo, batch, p=0.7)
        other = modality_dropout(items, self.rng, p_content=0.5, p_colour=self.cfg.p_colour_drop)
        other.text_mask |= items.text_mask  # the other view keeps its text: photo <-> described item
        a, _ = self.model.encode_items(to_tensors(photo))
        b, _ = self.model.encode_items(to_tensors(other))
        scale = self.model.logit_scale.clamp(max=math.log(100)).exp()
        logits = scale * a @ b.T
        alike = torch.from_numpy(self._alike(batch))
        logits = logits.masked_fill(alike, NEG_INF)
        target = torch.arange(len(batch))
        f = torch.nn.functional.cross_entropy
        return (f(logits, target) + f(logits.T, target)) / 2

    def _alike(self, batch: np.ndarray) -> np.ndarray:
        """(B, B) True where two different items share at least ``view_alike_jaccard`` of their
        attribute values (colour, type, ...: see ``attribute_values``): such a pair is not used
        as a negative of the photo -> item loss (two blue t-shirts are not wrong answers)."""
        vals = self.data.attr_values
        if vals is None:
            return np.zeros((len(batch), len(batch)), dtype=bool)
        return alike_matrix([vals[int(p)] for p in batch], self.cfg.view_alike_jaccard)

    def _all_vecs(self) -> np.ndarray:
        """Every item's vector under the current model: judged validation and the next epoch's
        mining share it (computed once per epoch)."""
        from indexer.fusion.model import embed_items

        return embed_items(self.model, self.data.items.take(self.all_positions))[0]

    def run(self) -> tuple[int, list[dict[str, Any]], dict[str, float], dict[str, float]]:
        from tqdm.auto import tqdm

        torch = self.torch
        cfg = self.cfg
        t_start = time.perf_counter()
        all_vecs = self._all_vecs()
        start = evaluate(self.model, self.data, self.val, self.all_positions, all_vecs)
        self.log(f"epoch 0 (untrained): {_fmt(start)}")
        best_score, best_epoch = start["score"], 0
        best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        history: list[dict[str, Any]] = [{"epoch": 0, "val": start, "loss": None, "seconds": 0.0}]
        n_slots = self._n_slots()
        steps_per_epoch = max(1, math.ceil(n_slots / cfg.batch_size))
        total = max(1, steps_per_epoch * cfg.epochs)
        warmup = max(1, total // 20)
        sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt,
            lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / total))),
        )
        bad_epochs = 0
        for epoch in range(1, cfg.epochs + 1):
            t0 = time.perf_counter()
            slots = self._epoch_slots()
            variants = self._variants(slots)
            t_mine = time.perf_counter()
            neg = self._mine(slots, variants, all_vecs)
            t_mine = time.perf_counter() - t_mine
            self.model.train()
            losses = []
            bar = tqdm(
                range(0, len(slots), cfg.batch_size),
                desc=f"fusion epoch {epoch}/{cfg.epochs}",
                unit="batch",
                disable=not self.progress,
                leave=False,
            )
            for s in bar:
                sl = slots[s : s + cfg.batch_size]
                if len(sl) < 2:
                    continue
                loss = self._loss_text(sl, variants[s : s + cfg.batch_size], neg)
                if len(self.photo_positions) >= 2 and cfg.view_weight > 0:
                    batch = self.rng.choice(
                        self.photo_positions, size=min(len(sl), len(self.photo_positions)), replace=False
                    )
                    loss = loss + cfg.view_weight * self._loss_view(batch)
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
                self.opt.step()
                sched.step()
                losses.append(float(loss.detach()))
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
            bar.close()
            t_val = time.perf_counter()
            all_vecs = self._all_vecs()
            metrics = evaluate(self.model, self.data, self.val, self.all_positions, all_vecs)
            t_val = time.perf_counter() - t_val
            secs = time.perf_counter() - t0
            history.append(
                {
                    "epoch": epoch,
                    "val": metrics,
                    "loss": float(np.mean(losses)) if losses else None,
                    "seconds": round(secs, 1),
                    "seconds_mining": round(t_mine, 1),
                    "seconds_validation": round(t_val, 1),
                }
            )
            improved = metrics["score"] > best_score + 1e-4
            self.log(
                f"epoch {epoch}: loss {history[-1]['loss'] or 0:.4f}  {_fmt(metrics)}  "
                f"{secs:.0f} s (mining {t_mine:.0f}, validation {t_val:.0f}){'  *' if improved else ''}"
            )
            if improved:
                best_score, best_epoch = metrics["score"], epoch
                best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
                bad_epochs = 0
            else:
                bad_epochs += 1
                if bad_epochs >= cfg.patience:
                    self.log(f"early stop: no gain for {cfg.patience} epochs")
                    break
            if cfg.max_minutes is not None and time.perf_counter() - t_start > 60 * cfg.max_minutes:
                self.log(f"time budget of {cfg.max_minutes} min reached")
                break
        self.model.load_state_dict(best_state)
        self.model.eval()
        best = next(h["val"] for h in history if h["epoch"] == best_epoch)
        return best_epoch, history, start, best


def _fmt(m: Mapping[str, float]) -> str:
    return "  ".join(f"{k} {v:.4f}" for k, v in m.items())


# ====================================================================== entry point
def train_fusion(
    index_dir: Path,
    settings: Any,
    *,
    queries: Mapping[str, str] | None = None,
    qrels: Mapping[str, Mapping[str, float]] | None = None,
    exclude_ids: set[str] | None = None,
    config: TrainConfig | None = None,
    progress: bool = True,
    publish: bool = True,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train on the live generation of ``index_dir`` and save to ``INDEX/models/fusion``; with
    ``publish`` also write the generation's fused vectors (a new sidecar version that serving
    processes pick up). ``queries``/``qrels`` must be TRAINING judgments; ``exclude_ids`` are
    items never trained on (an evaluation's held-out items: they are still embedded)."""
    import torch

    from indexer.embcache import EmbeddingCache, encode_texts_cached
    from indexer.encoders.colour import COLOUR_DIM, COLOUR_NAME
    from indexer.fusion.features import build_vocab, query_grams, rows_arrays
    from indexer.fusion.model import FusionConfig, FusionModel, save_checkpoint
    from indexer.fusion.sidecar import model_dir, publish_current
    from indexer.spelling import SpellCorrector
    from indexer.store import LiveIndex

    cfg = config or TrainConfig()
    log = log or (lambda _m: None)
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(max(1, cfg.threads))
    index_dir = Path(index_dir)
    live = LiveIndex(index_dir, settings)
    cache = EmbeddingCache(index_dir / "embcache.sqlite")
    try:
        table, vectors = live.table, live.vectors
        exclude = set(exclude_ids or ())
        all_rows = table.live_rows()
        products = [table.product(int(r)) for r in all_rows]
        train_mask = np.asarray([p.id not in exclude for p in products], dtype=bool)
        if not train_mask.any():
            raise ConfigError("every item is excluded from training: nothing to learn from")
        text_enc = live.encoders.text
        text_dim = vectors["text"].dim if "text" in vectors else text_enc.dim
        if text_dim != text_enc.dim:
            raise ConfigError(
                f"the index's text vectors have {text_dim} dims but the configured text model makes "
                f"{text_enc.dim}: rebuild the index or set text_model as it was built"
            )
        vocab = build_vocab([p for p, ok in zip(products, train_mask, strict=True) if ok])
        image_dim = vectors["image"].dim if "image" in vectors else 0
        mconf = FusionConfig(
            text_dim=text_dim,
            image_dim=image_dim,
            video_dim=vectors["video"].dim if "video" in vectors else 0,
            d_model=cfg.d_model,
            n_layers=cfg.n_layers,
            n_heads=cfg.n_heads,
            ff_dim=cfg.ff_dim,
            dropout=cfg.dropout,
            n_gram_buckets=cfg.n_gram_buckets,
            colour_dim=COLOUR_DIM if cfg.colour and image_dim else 0,
            colour_model=COLOUR_NAME if cfg.colour and image_dim else "",
            text_model=text_enc.name,
            image_model=live.manifest.get("models", {}).get("image", {}).get("name", ""),
            **vocab,
        )
        if not mconf.video_dim and "image" not in vectors and "video" in vectors:
            mconf.video_dim = vectors["video"].dim
        t_items = time.perf_counter()
        items = rows_arrays(
            all_rows, table, vectors, mconf, colour_cache=cache, max_pixels=settings.max_image_pixels
        )
        if mconf.colour_dim:
            secs = time.perf_counter() - t_items
            log(f"colour histograms of {int(items.colour_mask.sum())} photos in {secs:.0f} s")
        item_bows = [bow(item_text(p)) for p in products]
        positions = np.arange(len(all_rows))
        train_pos = positions[train_mask]
        id_pos = {p.id: i for i, p in enumerate(products)}

        # held-out part of the training data: items and judged queries chosen by a hash
        val_item = np.asarray(
            [
                ok and _hash_fraction(p.id, cfg.seed, "val-item") < cfg.val_fraction
                for p, ok in zip(products, train_mask, strict=True)
            ]
        )
        fit_pos = positions[train_mask & ~val_item]
        val_pos = positions[val_item][:2000]
        n_excl = int((~train_mask).sum())
        log(f"{len(all_rows)} items: {len(fit_pos)} to fit, {len(val_pos)} to validate, {n_excl} excluded")

        pairs = PairSet()
        synonyms = catalog_synonyms(
            [products[i] for i in fit_pos[: cfg.max_catalog_items * 2]],
            text_enc,
            cache,
            threshold=cfg.synonym_threshold,
        )
        log(f"{len(synonyms)} catalog words have synonyms, e.g. {dict(list(synonyms.items())[:5])}")
        val_queries: dict[str, str] = {}
        n_judged = 0
        if queries and settings.spell_correction:  # as the retriever will search them
            corrector = SpellCorrector(live.vocabulary)
            queries = {q: corrector.correct(t).text for q, t in queries.items()}
        if queries and qrels:
            fit_q = {
                q: t
                for q, t in queries.items()
                if _hash_fraction(q, cfg.seed, "val-query") >= cfg.val_fraction
            }
            val_queries = {q: t for q, t in queries.items() if q not in fit_q and q in qrels}
            train_ids = {p.id: int(i) for i, p in zip(positions, products, strict=True) if train_mask[i]}
            n_judged = judged_pairs(pairs, fit_q, qrels, train_ids, synonyms, seed=cfg.seed)
            if not n_judged:
                raise InvalidQueryError(
                    "no judged (query, item) pair with a grade above 0 names an item of this index"
                )
        order = np.random.default_rng(cfg.seed).permutation(fit_pos)[: cfg.max_catalog_items]
        order.sort()
        catalog_pairs(pairs, [products[i] for i in order], order.tolist(), synonyms, seed=cfg.seed)
        if not len(pairs):
            raise ConfigError("the catalog gives no training pairs (no titles, attributes or judgments)")

        # validation queries: one attribute phrase and one title/span per held-out item
        val = _Val()
        vp = PairSet()
        catalog_pairs(vp, [products[i] for i in val_pos], list(range(len(val_pos))), {}, seed=cfg.seed + 1)
        picked: dict[tuple[int, int], int] = {}
        for s in range(len(vp)):
            kind = (
                KIND_ATTR
                if vp.kind[s] == KIND_ATTR
                else KIND_TITLE
                if vp.kind[s] in (KIND_TITLE, KIND_SPAN)
                else -1
            )
            if kind == KIND_TITLE and vp.kind[s] == KIND_TITLE:
                continue  # a span is a fairer test than the whole title
            picked.setdefault((vp.item[s], kind), s)
        texts_to_encode = list(pairs.texts)
        val_texts = [vp.texts[vp.group[s]] for s in picked.values()]
        if len(val_pos):
            vbows = [item_bows[int(p)] for p in val_pos]
            val.cat_items = val_pos
            val.cat_rel = []
            for s in picked.values():
                qb = bow(vp.texts[vp.group[s]])
                rel = {j for j, b in enumerate(vbows) if qb and qb <= b} | set(vp.known[vp.group[s]])
                val.cat_rel.append(rel)
            photo = val_pos[items.image_mask[val_pos]]
            val.photo_items = photo if len(photo) > 1 else None
            if val.photo_items is not None:
                sets = [attribute_values(products[int(i)]) for i in photo]
                val.photo_alike = alike_matrix(sets, cfg.view_alike_jaccard)
        if val_queries:
            grades = [g for j in qrels.values() for g in j.values()]
            top = grade_top(grades) or 1.0  # no positive grade: no query is kept below
            val.judged_pos_min = max(top / 2, min((g for g in grades if g > 0), default=top)) / top
            keep = []
            for q, t in val_queries.items():
                rel = {id_pos[d]: min(g / top, 1.0) for d, g in qrels[q].items() if d in id_pos}
                if any(g >= val.judged_pos_min for g in rel.values()):
                    keep.append((" ".join(t.split()), rel))
            val.judged_rel = [r for _, r in keep]
            val_texts += [t for t, _ in keep]
        log(f"encoding {len(texts_to_encode) + len(val_texts)} query texts (embedding cache first)")
        all_vecs = encode_texts_cached(
            text_enc, texts_to_encode + val_texts, cache, batch_size=128, progress=progress
        )
        text_vecs = all_vecs[: len(texts_to_encode)]
        rest = all_vecs[len(texts_to_encode) :]
        if picked:
            val.cat_q = rest[: len(picked)]
            val.cat_grams = query_grams(val_texts[: len(picked)], mconf)
        if val.judged_rel:
            val.judged_q = rest[len(picked) :]
            val.judged_grams = query_grams(val_texts[len(picked) :], mconf)

        views: dict[int, np.ndarray] = {}
        view_colours: dict[int, np.ndarray] = {}
        if cfg.photo_views > 0 and mconf.image_dim and "image" in vectors:
            t_views = time.perf_counter()
            train_products = [products[i] for i in train_pos if items.image_mask[i]]
            by_id = photo_views(
                train_products,
                live.encoders.image,
                cache,
                n_views=cfg.photo_views,
                seed=cfg.seed,
                batch_size=settings.encode_batch_size,
                max_pixels=settings.max_image_pixels,
                progress=progress,
            )
            views = {id_pos[k]: v for k, v in by_id.items() if v.shape[1] == mconf.image_dim}
            if mconf.colour_dim:
                hist_by_id = photo_view_colours(
                    [p for p in train_products if id_pos[p.id] in views],
                    cache,
                    n_views=cfg.photo_views,
                    seed=cfg.seed,
                    jitter=cfg.colour_view_jitter,
                    max_pixels=settings.max_image_pixels,
                    progress=progress,
                )
                view_colours = {id_pos[k]: v for k, v in hist_by_id.items()}
            n_views = sum(len(v) for v in views.values())
            secs_views = time.perf_counter() - t_views
            log(f"{n_views} augmented photo views of {len(views)} items in {secs_views:.0f} s")

        counts = {KIND_NAMES[k]: int(np.sum(np.asarray(pairs.kind) == k)) for k in KIND_NAMES}
        counts.update(
            {
                "texts": len(pairs.texts),
                "fit_items": int(len(fit_pos)),
                "val_items": int(len(val_pos)),
                "val_queries": len(val.judged_rel),
                "excluded_items": int((~train_mask).sum()),
                "photo_view_items": len(views),
                "colour_items": int(items.colour_mask.sum()),
            }
        )
        log(f"training pairs: {counts}")
        torch.manual_seed(cfg.seed)  # here: loading encoders above may have drawn from torch's RNG
        model = FusionModel(mconf)
        data = _Data(
            items,
            item_bows,
            pairs,
            text_vecs,
            [attribute_values(p) for p in products],
            query_grams(pairs.texts, mconf) if mconf.n_gram_buckets else None,
        )
        trainer = Trainer(
            model,
            data,
            val,
            fit_pos,
            positions,
            views,
            cfg,
            view_colours=view_colours,
            progress=progress,
            log=log,
        )
        best_epoch, history, start, best = trainer.run()
    finally:
        cache.close()
        live.close()
        torch.set_num_threads(threads_before)

    seconds = time.perf_counter() - t0
    target = model_dir(index_dir)
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    record = {
        "best_epoch": best_epoch,
        "val_start": start,
        "val_best": best,
        "history": history,
        "counts": counts,
        "seconds": round(seconds, 1),
        "config": asdict(cfg),
        "generation": live.generation,
        "excluded_items": int((~train_mask).sum()),
    }
    save_checkpoint(model, tmp, {"train": record})
    old = target.with_name(target.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    tmp.rename(target)
    shutil.rmtree(old, ignore_errors=True)
    result = TrainResult(target, history, best_epoch, start, best, counts, seconds)
    if publish:
        result.publish = publish_current(index_dir, settings, progress=progress)
    return result
