"""Training data for the re-rankers, and training of the listwise Transformer.

A training example is one query's candidate list, built by the real retriever and the real
:class:`~reranker.features.FeatureExtractor` (the serving code path), labelled with the query's
graded judgments; unjudged candidates are labelled -1 (unknown).

Splits: ``query_split`` is the Home Depot train/test split of ``benchmarks/splits.py`` (same
formula; a test checks they agree), so ``--split-train-only`` never lets a test query in. The
validation queries are carved from the training queries by another hash of the query text, so
repeated queries stay on one side and every seed sees the same validation set.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from tqdm import tqdm

from evaluation.metrics import evaluate_query
from evaluation.perturb import PERTURBATIONS, perturb
from reranker.features import FEATURE_NAMES, FeatureExtractor, ListFeatures
from shopsearch.errors import ConfigError, IndexCorruptError

UNJUDGED = -1.0
CACHE_VERSION = 1
EVENT_SNAPSHOT = ".event-labels-"  # INDEX/<this><random>: the copy whose CF model sees older events only


# ====================================================================== splits
def query_split(text: str) -> Literal["train", "test"]:
    """'test' when sha1 of the stripped, lower-cased query text is odd (benchmarks.splits)."""
    digest = hashlib.sha1(text.strip().lower().encode("utf-8")).hexdigest()
    return "test" if int(digest, 16) % 2 == 1 else "train"


def is_validation(text: str, fraction: float) -> bool:
    """Whether a training query goes to the validation set (a second, independent hash)."""
    digest = hashlib.sha1(("validation\x00" + text.strip().lower()).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


# ====================================================================== lists
@dataclass
class QueryList:
    """One query's candidates: features, item rows, labels, and the query's own inputs."""

    qid: str
    text: str
    variant: str  # "clean" or a perturbation kind
    features: np.ndarray  # (n, F) float32
    rows: np.ndarray  # (n,) int64
    labels: np.ndarray  # (n,) float32 grades, UNJUDGED where unknown
    doc_ids: list[str]
    qvec: np.ndarray  # (dim,) float32, zeros when the query had no text vector
    pieces: np.ndarray  # (m,) int64 word-piece ids


@dataclass
class ListSet:
    """Lists plus the item vectors they refer to (one matrix per modality, indexed by row)."""

    lists: list[QueryList]
    item_vectors: dict[str, np.ndarray]  # modality -> (n_rows, dim) float32
    item_present: dict[str, np.ndarray]  # modality -> (n_rows,) bool
    meta: dict[str, Any] = field(default_factory=dict)

    def subset(self, keep: Callable[[QueryList], bool]) -> ListSet:
        return ListSet([x for x in self.lists if keep(x)], self.item_vectors, self.item_present, self.meta)

    def save(self, path: Path) -> None:
        """One .npz (no pickle) with every list concatenated and an offsets table."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        lens = np.asarray([len(x.rows) for x in self.lists], dtype=np.int64)
        plens = np.asarray([len(x.pieces) for x in self.lists], dtype=np.int64)
        header = {
            "version": CACHE_VERSION,
            "features": list(FEATURE_NAMES),
            "meta": self.meta,
            "qids": [x.qid for x in self.lists],
            "texts": [x.text for x in self.lists],
            "variants": [x.variant for x in self.lists],
            "doc_ids": [d for x in self.lists for d in x.doc_ids],
            "modalities": list(self.item_vectors),
        }
        arrays: dict[str, np.ndarray] = {
            "header": np.frombuffer(json.dumps(header).encode("utf-8"), dtype=np.uint8),
            "lens": lens,
            "plens": plens,
            "features": np.concatenate([x.features for x in self.lists]) if self.lists else np.zeros((0, 0)),
            "rows": np.concatenate([x.rows for x in self.lists]) if self.lists else np.zeros(0),
            "labels": np.concatenate([x.labels for x in self.lists]) if self.lists else np.zeros(0),
            "pieces": np.concatenate([x.pieces for x in self.lists]) if self.lists else np.zeros(0),
            "qvecs": np.stack([x.qvec for x in self.lists]) if self.lists else np.zeros((0, 0)),
        }
        for m, mat in self.item_vectors.items():
            arrays[f"vec:{m}"] = mat
            arrays[f"present:{m}"] = self.item_present[m]
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, **arrays)
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> ListSet:
        try:
            data = np.load(Path(path), allow_pickle=False)
            header = json.loads(bytes(data["header"]).decode("utf-8"))
        except (OSError, ValueError, KeyError) as exc:
            raise IndexCorruptError(f"re-ranker list cache {path} is unreadable: {exc}") from None
        if header.get("version") != CACHE_VERSION or header.get("features") != list(FEATURE_NAMES):
            raise IndexCorruptError(f"re-ranker list cache {path} was built by another version: delete it")
        lens, plens = data["lens"], data["plens"]
        offs = np.concatenate([[0], np.cumsum(lens)])
        poffs = np.concatenate([[0], np.cumsum(plens)])
        feats, rows, labels, pieces, qvecs = (
            data["features"],
            data["rows"],
            data["labels"],
            data["pieces"],
            data["qvecs"],
        )
        docs = header["doc_ids"]
        lists = []
        for i, qid in enumerate(header["qids"]):
            a, b = int(offs[i]), int(offs[i + 1])
            lists.append(
                QueryList(
                    qid=qid,
                    text=header["texts"][i],
                    variant=header["variants"][i],
                    features=feats[a:b],
                    rows=rows[a:b].astype(np.int64),
                    labels=labels[a:b].astype(np.float32),
                    doc_ids=docs[a:b],
                    qvec=qvecs[i],
                    pieces=pieces[int(poffs[i]) : int(poffs[i + 1])].astype(np.int64),
                )
            )
        mods = header["modalities"]
        return cls(
            lists,
            {m: data[f"vec:{m}"] for m in mods},
            {m: data[f"present:{m}"].astype(bool) for m in mods},
            header.get("meta", {}),
        )


def _item_vectors(index: Any) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    n = index.table.n_rows
    vecs, present = {}, {}
    for modality, vindex in index.vectors.items():
        rows = np.arange(n, dtype=np.int64)
        have = vindex.contains(rows)
        mat = np.zeros((n, vindex.dim), dtype=np.float32)
        if have.any():
            mat[have] = vindex.vectors_for(rows[have])
        vecs[modality], present[modality] = mat, have
    return vecs, present


def build_lists(
    pipeline: Any,
    extractor: FeatureExtractor,
    queries: Mapping[str, str],
    qrels: Mapping[str, Mapping[str, float]],
    *,
    variants: Sequence[str] = ("clean",),
    seed: int = 0,
    depth: int = 100,
    progress: bool = True,
    batch_size: int = 64,
) -> ListSet:
    """Retrieve and featurise every query (and each perturbed variant of it) once.

    Perturbed variants (typo, drop, case from evaluation.perturb) keep the original judgments:
    a misspelt query still wants the same products."""
    bad = [v for v in variants if v != "clean" and v not in PERTURBATIONS]
    if bad:
        raise ConfigError(f"unknown query variant(s) {bad}: use 'clean' or one of {', '.join(PERTURBATIONS)}")
    index = pipeline.index
    retriever = pipeline.retriever
    jobs: list[tuple[str, str, str]] = []
    for qid, text in queries.items():
        for v in variants:
            t = text if v == "clean" else perturb(text, v, qid, seed=seed)
            if v != "clean" and t == text:
                continue  # nothing changed: the clean list already covers it
            jobs.append((qid, v, " ".join(t.split())))
    dim = index.vectors["text"].dim if "text" in index.vectors else 0
    qv: dict[str, np.ndarray] = {}
    # the retriever searches a spelling-corrected text: the batch encodes that, as it would
    searched = {t: retriever.query_text(t) or t for _, _, t in jobs if t}
    texts = sorted(set(searched.values()))
    if dim and texts:
        vecs = index.encoders.text.encode(texts, batch_size=batch_size, progress=progress)
        qv = dict(zip(texts, vecs, strict=True))
    lists = []
    for qid, variant, text in tqdm(jobs, desc="candidate lists", unit="q", disable=not progress):
        if not text:
            continue
        given = {"text": qv[searched[text]]} if searched[text] in qv else None
        retrieval = retriever.retrieve(text, None, depth=depth, query_vectors=given)
        if not retrieval.candidates:
            continue
        lf = extractor.extract(retrieval)
        judged = qrels.get(qid, {})
        lists.append(list_from_features(qid, variant, lf, judged, dim))
    vecs_by_mod, present = _item_vectors(index)
    meta = {
        "generation": getattr(index, "generation", None),
        "items": len(index.table),
        "depth": depth,
        "variants": list(variants),
        "seed": seed,
        "fusion": retriever.settings.fusion,
        "weights": dict(retriever.settings.source_weights),
        "candidates": retriever.settings.candidates,
        "bm25_candidates": retriever.settings.bm25_candidates,
    }
    return ListSet(lists, vecs_by_mod, present, meta)


def list_from_features(
    qid: str, variant: str, lf: ListFeatures, judged: Mapping[str, float], dim: int
) -> QueryList:
    q = lf.query.vectors.get("text")
    return QueryList(
        qid=qid,
        text=lf.query.text,
        variant=variant,
        features=lf.features,
        rows=lf.rows,
        labels=np.asarray([judged.get(c.id, UNJUDGED) for c in lf.candidates], dtype=np.float32),
        doc_ids=[c.id for c in lf.candidates],
        qvec=np.asarray(q, dtype=np.float32) if q is not None else np.zeros(dim, dtype=np.float32),
        pieces=lf.query.pieces,
    )


# ====================================================================== scoring
def rank_lists(
    lists: Sequence[QueryList], scores: Sequence[np.ndarray], depth: int = 100
) -> dict[str, list[str]]:
    """qid -> doc ids best first, cut at ``depth`` (ties keep the retrieval order)."""
    out = {}
    for x, s in zip(lists, scores, strict=True):
        order = np.lexsort((np.arange(len(s)), -np.asarray(s, dtype=np.float64)))
        out[x.qid] = [x.doc_ids[i] for i in order[:depth]]
    return out


def score_rankings(
    rankings: Mapping[str, Sequence[str]],
    qrels: Mapping[str, Mapping[str, float]],
    k: int = 10,
    depth: int = 100,
) -> dict[str, float]:
    """Mean NDCG@k in both forms (condensed: unjudged removed) over the ranked queries, with the
    evaluation package's own metric code."""
    plain, cond = [], []
    for qid, ranking in rankings.items():
        m = evaluate_query(list(ranking), qrels[qid], k=k, depth=depth)
        plain.append(m[f"ndcg@{k}"])
        cond.append(m[f"ndcg@{k}_condensed"])
    return {
        f"ndcg@{k}": float(np.mean(plain)) if plain else 0.0,
        f"ndcg@{k}_condensed": float(np.mean(cond)) if cond else 0.0,
        "queries": len(plain),
    }


def fused_order_scores(lists: Sequence[QueryList]) -> list[np.ndarray]:
    """The retrieval's own order as scores (the fixed-fusion baseline on the same lists)."""
    col = FEATURE_NAMES.index("fused_inv_log_pos")
    return [x.features[:, col].astype(np.float64) for x in lists]


# ====================================================================== transformer training
DROP_GROUPS: dict[str, tuple[str, ...]] = {
    "bm25": tuple(n for n in FEATURE_NAMES if n.startswith("src:bm25:")),
    "text": tuple(n for n in FEATURE_NAMES if n.startswith(("src:text:", "cos:text"))),
    "bm25f": tuple(n for n in FEATURE_NAMES if n.startswith("bm25f:")),
    "overlap": ("cover_any", "cover_title", "cover_idf", "all_terms", "code_match", "brand_in_query"),
    "wp": tuple(n for n in FEATURE_NAMES if n.startswith("wp:")),
    "price": ("has_price", "log_price", "log_price_rel"),
}


@dataclass
class TrainConfig:
    """Everything that decides a training run (written into the checkpoint's config.json)."""

    epochs: int = 8
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0
    patience: int = 4
    val_fraction: float = 0.15
    d_model: int = 64
    heads: int = 4
    layers: int = 2
    ff: int = 128
    dropout: float = 0.0
    cross_attention: bool = True
    # augmentation
    augment: bool = True
    perturbed_share: float = 0.4  # chance of training on a perturbed variant of the query
    crop_prob: float = 0.3  # chance of training on a random subset of the candidates
    drop_group_prob: float = 0.08  # chance of zeroing one feature group (a missing source)
    # adversarial training on the input embeddings
    adversarial: Literal["none", "fgm", "pgd"] = "fgm"
    adv_eps: float = 0.25
    pgd_steps: int = 2
    # the running average of the weights from epoch ``average_from`` on is a candidate for the kept
    # model beside each epoch's own (0: off); it smooths the epoch-to-epoch noise of selection
    average_from: int = 2
    # after selection, train again on training + validation lists for the chosen epochs
    refit: bool = False
    # the validation metric that picks the epoch and the head mix: condensed NDCG for judgments
    # (unjudged items are unknown), plain NDCG for click labels (an item the query's shoppers
    # passed over is a weak negative, not unknown)
    select: Literal["condensed", "plain"] = "condensed"
    k: int = 10
    depth: int = 100
    threads: int = 1

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ConfigError("epochs and batch size must be >= 1 and the learning rate > 0")
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"val_fraction must be between 0 and 1, got {self.val_fraction}")
        if self.d_model % self.heads:
            raise ConfigError(f"d_model ({self.d_model}) must be a multiple of heads ({self.heads})")
        if self.select not in ("condensed", "plain"):
            raise ConfigError(f"select must be condensed or plain, got {self.select!r}")
        if self.adversarial not in ("none", "fgm", "pgd"):
            raise ConfigError(f"adversarial must be none, fgm or pgd, got {self.adversarial!r}")


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


class Batcher:
    """Pads lists into tensors; applies the augmentations when ``rng`` is given."""

    def __init__(self, data: ListSet, channels: list[tuple[str, str, int]], piece_table: np.ndarray | None):
        self.data = data
        self.channels = channels
        self.piece_table = piece_table
        self.piece_dim = piece_table.shape[1] if piece_table is not None else 384
        self._groups = {
            g: np.asarray([FEATURE_NAMES.index(n) for n in names]) for g, names in DROP_GROUPS.items()
        }

    def batch(
        self,
        lists: Sequence[QueryList],
        rng: np.random.Generator | None = None,
        cfg: TrainConfig | None = None,
    ) -> dict[str, Any]:
        import torch

        items = []
        for x in lists:
            idx = np.arange(len(x.rows))
            feats = x.features
            qvec = x.qvec
            drop_text = False
            if rng is not None and cfg is not None:
                idx = rng.permutation(len(idx))
                if rng.random() < cfg.crop_prob and len(idx) > 10:
                    idx = idx[: max(10, int(len(idx) * rng.uniform(0.5, 1.0)))]
                feats = feats.copy()
                for g, cols in self._groups.items():
                    if rng.random() < cfg.drop_group_prob:
                        feats[:, cols] = 0.0
                        drop_text = drop_text or g == "text"
            items.append((x, idx, feats[idx], np.zeros_like(qvec) if drop_text else qvec))
        b = len(items)
        n = max(len(it[1]) for it in items)
        m = max(1, max(len(it[0].pieces) for it in items))
        F = len(FEATURE_NAMES)
        feats = np.zeros((b, n, F), dtype=np.float32)
        labels = np.full((b, n), -2.0, dtype=np.float32)  # -2: padding
        cmask = np.zeros((b, n), dtype=bool)
        qv = np.zeros((b, self.channels[0][2] if self.channels else 384), dtype=np.float32)
        pieces = np.zeros((b, m, self.piece_dim), dtype=np.float32)
        pmask = np.zeros((b, m), dtype=bool)
        chans = [np.zeros((b, n, dim), dtype=np.float32) for _, _, dim in self.channels]
        for i, (x, idx, f, q) in enumerate(items):
            k = len(idx)
            feats[i, :k] = f
            labels[i, :k] = x.labels[idx]
            cmask[i, :k] = True
            if len(q) == qv.shape[1]:
                qv[i] = q
            if self.piece_table is not None and len(x.pieces):
                pieces[i, : len(x.pieces)] = self.piece_table[x.pieces]
                pmask[i, : len(x.pieces)] = True
            rows = x.rows[idx]
            for c, (_qkey, modality, _dim) in enumerate(self.channels):
                mat = self.data.item_vectors.get(modality)
                if mat is not None and len(q) == mat.shape[1]:
                    chans[c][i, :k] = mat[rows] * q[None, :]
        return {
            "feats": torch.from_numpy(feats),
            "channels": [torch.from_numpy(c) for c in chans],
            "qvec": torch.from_numpy(qv),
            "pieces": torch.from_numpy(pieces),
            "cand_mask": torch.from_numpy(cmask),
            "piece_mask": torch.from_numpy(pmask),
            "labels": torch.from_numpy(labels),
        }


def listwise_loss(scores: Any, labels: Any, mode: str = "mix", unjudged_weight: float = 0.3) -> Any:
    """Softmax cross-entropy between the scores and the label distribution gain / sum(gain)
    (ListNet top-1, the "softmax loss"), over judged candidates only ("mask"), or over all with
    unjudged as gain 0 ("zero"), or the sum of both ("mix"). Lists without a positive grade are
    skipped. ``scores`` (B, N) for one head, or (B, N, 2) for the two heads: head 0 gets "zero",
    head 1 gets "mask" (``mode`` is then ignored)."""
    import torch

    valid = labels > -1.5
    judged = labels > -0.5
    gain = labels.clamp(min=0.0)

    def ce(s: Any, keep: Any) -> Any:
        g = torch.where(keep, gain, torch.zeros_like(gain))
        total = g.sum(dim=1)
        ok = total > 0
        if not ok.any():
            return s.sum() * 0.0
        logp = torch.log_softmax(s.masked_fill(~keep, -1e4), dim=1)
        target = g / total.clamp(min=1e-9).unsqueeze(1)
        return -(target * torch.where(keep, logp, torch.zeros_like(logp))).sum(dim=1)[ok].mean()

    if scores.dim() == 3:
        return ce(scores[..., 0], valid) + ce(scores[..., 1], judged)
    if mode == "mask":
        return ce(scores, judged)
    if mode == "zero":
        return ce(scores, valid)
    return ce(scores, judged) + unjudged_weight * ce(scores, valid)


def _channels(data: ListSet) -> list[tuple[str, str, int]]:
    mat = data.item_vectors.get("text")
    if mat is None or not data.lists or len(data.lists[0].qvec) != mat.shape[1]:
        return []
    return [("text", "text", int(mat.shape[1]))]


MIX_GRID: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0, 2.0)


def predict_heads(
    model: Any, batcher: Batcher, lists: Sequence[QueryList], batch_size: int = 32
) -> list[np.ndarray]:
    """Each list's two head scores, (n, 2)."""
    import torch

    model.eval()
    out: list[np.ndarray] = []
    with torch.no_grad():
        for start in range(0, len(lists), batch_size):
            chunk = lists[start : start + batch_size]
            b = batcher.batch(chunk)
            cand, query, x = model.embed(b["feats"], b["channels"], b["qvec"], b["pieces"])
            heads = model.encode(cand, query, x, b["cand_mask"], b["piece_mask"])
            for i, q in enumerate(chunk):
                out.append(heads[i, : len(q.rows)].numpy().astype(np.float64))
    return out


def combine_heads(heads: np.ndarray, mix: float) -> np.ndarray:
    """numpy twin of ListwiseTransformer.combine for one list."""
    z = (heads - heads.mean(axis=0)) / np.sqrt(heads.var(axis=0) + 1e-6)
    return z[:, 0] + mix * z[:, 1]


def predict_lists(
    model: Any, batcher: Batcher, lists: Sequence[QueryList], batch_size: int = 32
) -> list[np.ndarray]:
    """Final scores (the model's own mix of its heads)."""
    mix = float(model.mix)
    return [combine_heads(h, mix) for h in predict_heads(model, batcher, lists, batch_size)]


def choose_mix(
    heads: Sequence[np.ndarray],
    lists: Sequence[QueryList],
    qrels: Mapping[str, Mapping[str, float]],
    k: int,
    depth: int,
    grid: Sequence[float] = MIX_GRID,
    select: str = "condensed",
) -> tuple[float, dict[str, float], dict[float, dict[str, float]]]:
    """The head mix with the best condensed NDCG@k among those whose plain NDCG@k is within 0.01
    of the best plain one: the condensed form is the headline, but a mix that buys it by
    filling the top with unjudged items is not taken. With ``select="plain"``: the best plain."""
    results = {
        mix: score_rankings(rank_lists(lists, [combine_heads(h, mix) for h in heads], depth), qrels, k, depth)
        for mix in grid
    }
    best_plain = max(r[f"ndcg@{k}"] for r in results.values())
    ok = [m for m, r in results.items() if r[f"ndcg@{k}"] >= best_plain - 0.01]
    mix = max(ok, key=lambda m: (results[m][selection_key(k, select)], -m))
    return mix, results[mix], results


def selection_key(k: int, select: str) -> str:
    """The validation metric's key in ``score_rankings``' result."""
    return f"ndcg@{k}_condensed" if select == "condensed" else f"ndcg@{k}"


@dataclass
class TrainResult:
    model: Any
    history: list[dict[str, float]]
    best_epoch: int
    best_val: dict[str, float]
    seconds: float
    config: TrainConfig


def train_transformer(
    train: ListSet,
    val: ListSet,
    qrels: Mapping[str, Mapping[str, float]],
    cfg: TrainConfig,
    *,
    piece_table: np.ndarray | None,
    progress: bool = True,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train on ``train`` (all variants), early-stop on condensed NDCG@k of ``val`` (clean lists).
    torch's thread count and deterministic-algorithms flag are set for the run and restored."""
    import torch

    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    try:
        torch.set_num_threads(cfg.threads)
        seed_everything(cfg.seed)
        result = _train_transformer(train, val, qrels, cfg, piece_table, progress, on_epoch)
        if cfg.refit and result.best_epoch:
            both = ListSet(train.lists + val.lists, train.item_vectors, train.item_present, train.meta)
            result = _refit(both, cfg, result, piece_table, progress)
        return result
    finally:
        # restoring the flags must not mask what ended the run (a Ctrl-C here once surfaced as
        # torch's own AttributeError from a half-imported module instead of the interrupt)
        with contextlib.suppress(Exception):
            torch.set_num_threads(threads)
            torch.use_deterministic_algorithms(deterministic)


def _new_model(
    train: ListSet, cfg: TrainConfig, piece_table: np.ndarray | None, channels: list[tuple[str, str, int]]
) -> Any:
    """A freshly initialised model whose feature normalisation comes from ``train``'s clean lists."""
    import torch

    from reranker.transformer import ListwiseTransformer, ModelConfig

    mcfg = ModelConfig(
        features=list(FEATURE_NAMES),
        channels=channels,
        query_dim=channels[0][2] if channels else 384,
        piece_dim=piece_table.shape[1] if piece_table is not None else 384,
        d_model=cfg.d_model,
        heads=cfg.heads,
        layers=cfg.layers,
        ff=cfg.ff,
        dropout=cfg.dropout,
        cross_attention=cfg.cross_attention,
    )
    model = ListwiseTransformer(mcfg)
    allf = np.concatenate([x.features for x in train.lists if x.variant == "clean"])
    mean, std = allf.mean(axis=0), allf.std(axis=0)
    # a feature constant in training (a field or source this catalog lacks) is switched off:
    # normalised to 0 whatever its value later, so a catalog that has it cannot feed the model
    # values it never learned from
    constant = std < 1e-6
    mean[constant], std[constant] = 0.0, 1e6
    model.feat_mean.copy_(torch.from_numpy(mean))
    model.feat_std.copy_(torch.from_numpy(np.maximum(std, 1e-3)))
    return model


class _Fit:
    """One training run's moving parts: the model, its optimiser and schedule over ``cfg.epochs``,
    the data sampler, and the running weight average. Selection and refit both drive it, so the
    refit sees the very schedule and sampling the selection pass saw."""

    def __init__(self, train: ListSet, cfg: TrainConfig, piece_table: np.ndarray | None) -> None:
        import torch

        self.cfg = cfg
        self.rng = np.random.default_rng(cfg.seed)
        self.channels = _channels(train)
        self.model = _new_model(train, cfg, piece_table, self.channels)
        self.batcher = Batcher(train, self.channels, piece_table)
        self.by_qid: dict[str, list[QueryList]] = {}
        for x in train.lists:
            if (x.labels > 0).any():
                self.by_qid.setdefault(x.qid, []).append(x)
        self.qids = sorted(self.by_qid)
        if not self.qids:
            raise ConfigError(
                "no training list has a relevant product among its candidates: do the judged document "
                "ids name items of this index, with grades above 0?"
            )
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.steps_per_epoch = math.ceil(len(self.qids) / cfg.batch_size)
        self.sched = torch.optim.lr_scheduler.OneCycleLR(
            self.opt, max_lr=cfg.lr, total_steps=cfg.epochs * self.steps_per_epoch, pct_start=0.1
        )
        self.avg_state: dict[str, Any] | None = None
        self.n_avg = 0

    def epoch(self, epoch: int, progress: bool) -> tuple[float, dict[str, Any]]:
        """Train one epoch; returns the mean loss and a copy of the weights after it (the running
        average is updated from ``cfg.average_from`` on)."""
        import torch

        cfg, rng = self.cfg, self.rng
        self.model.train()
        order = rng.permutation(len(self.qids))
        losses = []
        desc = f"epoch {epoch}/{cfg.epochs}"
        bar = tqdm(range(self.steps_per_epoch), desc=desc, disable=not progress, unit="batch")
        for step in bar:
            chosen = []
            for i in order[step * cfg.batch_size : (step + 1) * cfg.batch_size]:
                variants = self.by_qid[self.qids[i]]
                clean = [x for x in variants if x.variant == "clean"]
                pert = [x for x in variants if x.variant != "clean"]
                if cfg.augment and pert and (not clean or rng.random() < cfg.perturbed_share):
                    chosen.append(pert[rng.integers(len(pert))])
                else:
                    chosen.append((clean or variants)[0])
            b = self.batcher.batch(chosen, rng if cfg.augment else None, cfg)
            self.opt.zero_grad()
            loss = _step_loss(self.model, b, cfg)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.opt.step()
            self.sched.step()
            losses.append(float(loss))
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
        state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        if cfg.average_from and epoch >= cfg.average_from:
            self.n_avg += 1
            if self.avg_state is None:
                self.avg_state = {k: v.clone() for k, v in state.items()}
            else:
                for k, v in self.avg_state.items():
                    if v.is_floating_point():
                        v.mul_((self.n_avg - 1) / self.n_avg).add_(state[k] / self.n_avg)
        return float(np.mean(losses)), state


def _train_transformer(
    train: ListSet,
    val: ListSet,
    qrels: Mapping[str, Mapping[str, float]],
    cfg: TrainConfig,
    piece_table: np.ndarray | None,
    progress: bool,
    on_epoch: Callable[[int, dict[str, float]], None] | None,
) -> TrainResult:
    t0 = time.perf_counter()
    fit = _Fit(train, cfg, piece_table)
    model = fit.model
    val_batcher = Batcher(val, fit.channels, piece_table)
    val_lists = [x for x in val.lists if x.variant == "clean"]
    history: list[dict[str, float]] = []
    best, best_epoch, best_state, bad_epochs = -1.0, 0, None, 0
    key = selection_key(cfg.k, cfg.select)
    for epoch in range(1, cfg.epochs + 1):
        loss, state = fit.epoch(epoch, progress)
        heads = predict_heads(model, val_batcher, val_lists)
        mix, metrics, _ = choose_mix(heads, val_lists, qrels, cfg.k, cfg.depth, select=cfg.select)
        averaged = False
        if fit.avg_state is not None and fit.n_avg > 1:  # one epoch averaged is that epoch itself
            model.load_state_dict(fit.avg_state)
            a_heads = predict_heads(model, val_batcher, val_lists)
            a_mix, a_metrics, _ = choose_mix(a_heads, val_lists, qrels, cfg.k, cfg.depth, select=cfg.select)
            model.load_state_dict(state)
            if a_metrics[key] > metrics[key]:
                mix, metrics, averaged = a_mix, a_metrics, True
        rec = {
            "epoch": epoch,
            "loss": loss,
            **metrics,
            "mix": mix,
            "averaged": float(averaged),
            "seconds": time.perf_counter() - t0,
        }
        history.append(rec)
        if on_epoch:
            on_epoch(epoch, rec)
        main = metrics[key]
        if main > best + 1e-5:
            best, best_epoch, bad_epochs = main, epoch, 0
            best_state = {k: v.clone() for k, v in (fit.avg_state if averaged else state).items()}
            best_state["mix"].fill_(mix)
        else:
            bad_epochs += 1
            if bad_epochs >= cfg.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    best_rec = next(h for h in history if h["epoch"] == best_epoch) if history else {}
    return TrainResult(model, history, best_epoch, best_rec, time.perf_counter() - t0, cfg)


def _refit(
    both: ListSet, cfg: TrainConfig, chosen: TrainResult, piece_table: np.ndarray | None, progress: bool
) -> TrainResult:
    """Train again from the same seed on training + validation lists for the epochs the
    selection pass chose, with its choice of weight averaging and head mix: the validation
    queries become training data once they have picked the stopping point."""
    t0 = time.perf_counter()
    seed_everything(cfg.seed)
    fit = _Fit(both, cfg, piece_table)
    state: dict[str, Any] = {}
    for epoch in range(1, chosen.best_epoch + 1):
        _, state = fit.epoch(epoch, progress)
    if chosen.best_val.get("averaged") and fit.avg_state is not None:
        state = fit.avg_state
    fit.model.load_state_dict(state)
    fit.model.mix.fill_(float(chosen.best_val.get("mix", 0.0)))
    fit.model.eval()
    best_val = {**chosen.best_val, "refit_epochs": chosen.best_epoch}
    seconds = chosen.seconds + time.perf_counter() - t0
    return TrainResult(fit.model, chosen.history, chosen.best_epoch, best_val, seconds, cfg)


def _step_loss(model: Any, b: dict[str, Any], cfg: TrainConfig) -> Any:
    """Backpropagate the listwise loss, plus the loss under an adversarial perturbation of the
    input embeddings (candidate and query tokens): FGM takes one step of size eps along the
    loss gradient's direction (reusing the gradient of the clean backward pass); PGD takes a few
    smaller steps, each projected back onto the eps-ball. Returns the clean loss (detached)."""
    import torch

    cand, query, x = model.embed(b["feats"], b["channels"], b["qvec"], b["pieces"])
    labels, cm, pm = b["labels"], b["cand_mask"], b["piece_mask"]
    if cfg.adversarial != "none":
        cand.retain_grad()
        query.retain_grad()
    loss = listwise_loss(model.encode(cand, query, x, cm, pm), labels)
    if cfg.adversarial == "none":
        loss.backward()
        return loss.detach()
    loss.backward(retain_graph=True)

    def step(gc: Any, gq: Any, dc: Any, dq: Any, size: float) -> tuple[Any, Any]:
        norm = torch.sqrt((gc**2).sum(dim=(1, 2)) + (gq**2).sum(dim=(1, 2))).clamp(min=1e-12)[:, None, None]
        dc, dq = dc + size * gc / norm, dq + size * gq / norm
        tot = torch.sqrt((dc**2).sum(dim=(1, 2)) + (dq**2).sum(dim=(1, 2))).clamp(min=1e-12)
        scale = torch.clamp(cfg.adv_eps / tot, max=1.0)[:, None, None]  # project onto the eps-ball
        return (dc * scale).detach(), (dq * scale).detach()

    zc, zq = torch.zeros_like(cand), torch.zeros_like(query)
    if cfg.adversarial == "fgm":
        dc, dq = step(cand.grad, query.grad, zc, zq, cfg.adv_eps)
    else:
        size = 1.5 * cfg.adv_eps / cfg.pgd_steps
        dc, dq = step(cand.grad, query.grad, zc, zq, size)
        for _ in range(cfg.pgd_steps - 1):
            vc, vq = dc.clone().requires_grad_(True), dq.clone().requires_grad_(True)
            s = model.encode(cand.detach() + vc, query.detach() + vq, x.detach(), cm, pm)
            inner = listwise_loss(s, labels)
            gc, gq = torch.autograd.grad(inner, [vc, vq])
            dc, dq = step(gc, gq, dc, dq, size)
    adv = listwise_loss(model.encode(cand + dc, query + dq, x, cm, pm), labels)
    adv.backward()
    return loss.detach()


# ====================================================================== end to end
@dataclass
class TrainingRun:
    """What ``shopsearch train-reranker`` reports."""

    model_dir: Path
    kind: str
    queries: dict[str, int]
    val: dict[str, float]
    val_fused: dict[str, float]
    best_epoch: int
    seconds: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)


def select_queries(
    queries_path: Path, qrels_path: Path, *, split_train_only: bool
) -> tuple[dict[str, str], dict[str, dict[str, float]], dict[str, int]]:
    """Judged queries with a positive grade; with ``split_train_only`` only the train half."""
    from evaluation.qrels import read_qrels, read_queries

    queries = read_queries(Path(queries_path))
    qrels = read_qrels(Path(qrels_path))
    usable = {q: t for q, t in queries.items() if q in qrels and any(g > 0 for g in qrels[q].values())}
    kept = {q: t for q, t in usable.items() if not split_train_only or query_split(t) == "train"}
    counts = {"queries": len(queries), "judged": len(usable), "used": len(kept)}
    if len(kept) < 10:
        raise ConfigError(
            f"only {len(kept)} usable queries in {queries_path} (with a positive judgment in {qrels_path}"
            f"{' and in the train half' if split_train_only else ''}): need at least 10 to train"
        )
    return kept, qrels, counts


def _check_out(out: Path | None, index_dir: Path, default: Path) -> None:
    """Refuse a checkpoint folder that would overwrite something else before any work: another
    folder of the index (``--out INDEX/models/fusion`` replaced the fusion model), or a folder
    holding a model of another kind."""
    if out is None:
        return
    target, index, own = Path(out).resolve(), index_dir.resolve(), default.resolve()
    if target != own and (target == index or index in target.parents):
        raise ConfigError(
            f"--out {out} is inside the index {index_dir}, where only {default} holds a re-ranker: "
            "leave --out out, or give a folder outside the index"
        )
    config = target / "config.json"
    if config.is_file():
        try:
            kind = json.loads(config.read_text(encoding="utf-8")).get("kind")
        except (OSError, ValueError, AttributeError):
            kind = None
        if kind not in ("listwise-transformer", "lambdamart"):
            raise ConfigError(f"--out {out} already holds something that is not a re-ranker ({config})")


def train_reranker(
    index_dir: Path,
    queries_path: Path | None = None,
    qrels_path: Path | None = None,
    *,
    settings: Any,
    cfg: TrainConfig | None = None,
    kind: Literal["transformer", "lambdamart"] = "transformer",
    split_train_only: bool = False,
    out: Path | None = None,
    cache: Path | None = None,
    fusion_folds: int = 1,
    from_events: bool = False,
    label_share: float = 0.2,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> TrainingRun:
    """Build candidate lists with the index's own retriever, train, and write the checkpoint
    (default INDEX/models/reranker, where serving picks it up without a restart). With
    ``fusion_folds`` >= 2 the lists' fused source is cross-fitted (reranker.crossfit): use it when
    the index's fusion model was trained on these same judgments. With ``from_events`` the labels
    are the index's stored interactions instead of judgments (reranker.clicks): the newest
    ``label_share`` of them, over lists whose CF source was fitted on the older ones only."""
    from reranker.base import PassThroughReranker
    from reranker.pipeline import SearchPipeline
    from reranker.serving import model_dir

    cfg = cfg or TrainConfig()
    t0 = time.perf_counter()
    index_dir = Path(index_dir)
    _check_out(out, index_dir, model_dir(index_dir))
    snap: Path | None = None
    if from_events:
        cfg = replace(cfg, select="plain")  # click labels: passed-over items are weak negatives
        if queries_path is not None or qrels_path is not None or split_train_only:
            raise ConfigError("labels come from judgments (queries + qrels) or from stored events, not both")
        if fusion_folds > 1:
            raise ConfigError(
                "--fusion-folds cross-fits judgments the fusion model was trained on; event labels need none"
            )
        snap, pipeline, queries, qrels, counts = _event_labels(
            index_dir, settings, label_share, progress, log
        )
    else:
        if queries_path is None or qrels_path is None:
            raise ConfigError("training needs --queries and --qrels (judgments), or --from-events")
        queries, qrels, counts = select_queries(queries_path, qrels_path, split_train_only=split_train_only)
        pipeline = SearchPipeline.open(index_dir, settings, reranker=PassThroughReranker())
    val_q = {q: t for q, t in queries.items() if is_validation(t, cfg.val_fraction)}
    train_q = {q: t for q, t in queries.items() if q not in val_q}
    counts.update({"train": len(train_q), "validation": len(val_q)})
    log(f"queries: {counts}")
    try:
        if not val_q or not train_q:
            raise ConfigError(f"{len(queries)} queries are too few to carve a validation set from")
        extractor = FeatureExtractor(pipeline.index)
        extractor.warm(progress=progress)
        variants = ("clean", "typo", "drop") if cfg.augment and kind == "transformer" else ("clean",)
        key = list_cache_key(
            getattr(pipeline.index, "generation", None),
            train_q,
            val_q,
            variants,
            cfg.seed,
            settings,
            # event labels: the same queries may carry other grades, over another CF model
            qrels if from_events else None,
        )
        if fusion_folds > 1:
            from reranker.crossfit import crossfit_lists

            got = crossfit_lists(
                index_dir,
                settings,
                {"train": (train_q, variants), "val": (val_q, ("clean",))},
                qrels,
                folds=fusion_folds,
                seed=cfg.seed,
                depth=cfg.depth,
                progress=progress,
                log=log,
            )
            lists, val = got["train"], got["val"]
            counts["fusion_folds"] = fusion_folds
        else:
            lists = _cached_lists(
                cache, key, "train", pipeline, extractor, train_q, qrels, variants, cfg, progress
            )
            val = _cached_lists(
                cache, key, "val", pipeline, extractor, val_q, qrels, ("clean",), cfg, progress
            )
        t_lists = time.perf_counter() - t0
        val_clean = [x for x in val.lists if x.variant == "clean"]
        fused = score_rankings(rank_lists(val_clean, fused_order_scores(val_clean), cfg.depth), qrels, cfg.k)
        log(f"validation, fused order: {_fmt(fused)}")
        folder = Path(out) if out is not None else model_dir(Path(index_dir))
        t1 = time.perf_counter()
        if kind == "lambdamart":
            from reranker.lambdamart import LambdaMARTConfig, train_lambdamart

            lcfg = LambdaMARTConfig(
                seed=cfg.seed, k=cfg.k, depth=cfg.depth, threads=cfg.threads, select=cfg.select
            )
            model, meta = train_lambdamart(lists, val, qrels, lcfg)
            model.meta.update({"queries": counts, "val_fused": fused})
            model.save(folder)
            best, history, best_epoch = meta["val"], [], 0
        else:
            pieces = extractor.pieces
            result = train_transformer(
                lists,
                val,
                qrels,
                cfg,
                piece_table=pieces.table if pieces is not None else None,
                progress=progress,
                on_epoch=lambda e, r: log(f"epoch {e}: loss {r['loss']:.4f}, validation {_fmt(r)}"),
            )
            if cfg.refit:
                log(f"refit on training + validation queries for {result.best_epoch} epochs")
            from reranker.transformer import save_checkpoint

            meta = {
                "train": asdict(cfg),
                "queries": counts,
                "split_train_only": split_train_only,
                "best_epoch": result.best_epoch,
                "val": result.best_val,
                "val_fused": fused,
                "history": result.history,
                "pieces_fingerprint": pieces.fingerprint if pieces is not None else None,
                "index_generation": getattr(pipeline.index, "generation", None),
                "seconds_training": round(result.seconds, 1),
            }
            save_checkpoint(result.model, folder, meta)
            best, history, best_epoch = result.best_val, result.history, result.best_epoch
        seconds = {
            "lists": round(t_lists, 1),
            "training": round(time.perf_counter() - t1, 1),
            "total": round(time.perf_counter() - t0, 1),
        }
        log(
            f"wrote {folder} in {seconds['total']:.0f} s; validation {_fmt(best)} (fused order {_fmt(fused)})"
        )
        return TrainingRun(folder, kind, counts, best, fused, best_epoch, seconds, history)
    finally:
        pipeline.close()
        if snap is not None:
            shutil.rmtree(snap, ignore_errors=True)


def _event_labels(
    index_dir: Path, settings: Any, share: float, progress: bool, log: Callable[[str], None]
) -> tuple[Path, Any, dict[str, str], dict[str, dict[str, float]], dict[str, int]]:
    """(snapshot, its pipeline, queries, qrels, counts) for training on stored events: the newest
    ``share`` of the events are the labels; the snapshot's CF generation is fitted on the rest, and
    its live counting is off, so no list sees a label event through its CF features."""
    from indexer.cf.train import train_cf
    from indexer.interactions import EventStore
    from indexer.store import snapshot_live_generation
    from reranker.base import PassThroughReranker
    from reranker.clicks import MIN_LABEL_QUERIES, judgments_from_events, label_split
    from reranker.pipeline import SearchPipeline

    if not (index_dir / "events").is_dir():
        raise ConfigError(f"no event store in {index_dir}: run 'shopsearch events import' first")
    with EventStore(index_dir, settings) as store:
        events = store.read()
    older, newer = label_split(events, share)
    # one folder per run: two trainings on one index must not share a snapshot
    snap = Path(tempfile.mkdtemp(prefix=EVENT_SNAPSHOT, dir=index_dir))
    pipeline = None
    try:
        snapshot_live_generation(index_dir, snap, fused=True)
        local = settings.model_copy(update={"index_dir": snap, "cf_live": False})
        log(f"CF features: a CF model on the older {len(older)} events; labels: the newest {len(newer)}")
        report = train_cf(snap, local, log=older, progress=progress)
        log(f"CF model for the lists: {report.counts}")
        pipeline = SearchPipeline.open(snap, local, reranker=PassThroughReranker())
        got = judgments_from_events(
            newer,
            settings.event_weights,
            eta=settings.cf_position_bias_eta,
            known_items=pipeline.index.table.id_to_row.keys(),
        )
        if len(got.queries) < MIN_LABEL_QUERIES:
            raise ConfigError(
                f"the newest {len(newer)} events name only {len(got.queries)} queries with a catalog item "
                f"({got.counts}): need at least {MIN_LABEL_QUERIES} to train"
            )
        counts = {**{f"label_{k}": v for k, v in got.counts.items()}, "cf_events": len(older)}
        return snap, pipeline, got.queries, got.qrels, counts
    except BaseException:
        if pipeline is not None:
            pipeline.close()
        shutil.rmtree(snap, ignore_errors=True)
        raise


def _fmt(m: Mapping[str, Any]) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in m.items() if k.startswith("ndcg"))


def list_cache_key(
    generation: str | None,
    train_q: Mapping[str, str],
    val_q: Mapping[str, str],
    variants: Sequence[str],
    seed: int,
    settings: Any,
    labels: Mapping[str, Mapping[str, float]] | None,
) -> str:
    """Name of a ``--cache`` entry: everything that shapes the lists, the retrieval settings
    included (lists cached before a change of depth or weights would otherwise be reused)."""
    retrieval = [
        settings.fusion,
        settings.rrf_k,
        sorted(dict(settings.source_weights).items()),
        settings.candidates,
        settings.bm25_depth,
        settings.cf_candidates,
        settings.spell_correction,
    ]
    doc = [
        generation,
        sorted(train_q),
        sorted(val_q),
        list(variants),
        seed,
        sorted((q, sorted(g.items())) for q, g in labels.items()) if labels is not None else None,
        retrieval,
    ]
    return hashlib.sha1(json.dumps(doc).encode()).hexdigest()[:12]


def _cached_lists(
    cache: Path | None,
    key: str,
    part: str,
    pipeline: Any,
    extractor: FeatureExtractor,
    queries: Mapping[str, str],
    qrels: Mapping[str, Mapping[str, float]],
    variants: Sequence[str],
    cfg: TrainConfig,
    progress: bool,
) -> ListSet:
    path = Path(cache) / f"lists-{key}-{part}.npz" if cache is not None else None
    if path is not None and path.is_file():
        return ListSet.load(path)
    lists = build_lists(
        pipeline,
        extractor,
        queries,
        qrels,
        variants=variants,
        seed=cfg.seed,
        depth=cfg.depth,
        progress=progress,
    )
    if path is not None:
        lists.save(path)
    return lists
