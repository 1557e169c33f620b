"""LightGBM LambdaMART: the baseline the Transformer must beat.

It re-ranks the same candidate lists with "simple features" only (BM25, cosine, lengths, term
overlap: :data:`reranker.features.SIMPLE_FEATURES`), trained on the same queries with graded
labels and a linear gain (as the evaluation's NDCG). Unjudged candidates enter the training lists
as grade 0, a random sample of them per list ("sample": fast, and on validation as good as all
of them; "zero": all; "drop": none, which ranks unjudged junk into the top 100). The model is
saved in LightGBM's text format with a JSON config: no pickle.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from reranker.checkpoint import CONFIG_FILE, publish, read_weights
from reranker.features import FEATURE_NAMES, SIMPLE_FEATURES
from shopsearch.errors import ConfigError, IndexCorruptError

if TYPE_CHECKING:
    from reranker.train import ListSet, QueryList

MODEL_FILE = "lambdamart.txt"
MAX_GRADE = 30


@dataclass
class LambdaMARTConfig:
    features: tuple[str, ...] = SIMPLE_FEATURES
    n_estimators: int = 600
    learning_rate: float = 0.05
    num_leaves: int = 31
    min_child_samples: int = 20
    unjudged: Literal["sample", "zero", "drop"] = "sample"
    unjudged_sample: int = 40
    seed: int = 0
    k: int = 10
    depth: int = 100
    threads: int = 1
    select: Literal["condensed", "plain"] = "condensed"  # validation metric (see TrainConfig.select)


@dataclass
class LambdaMART:
    """A trained booster and the feature columns it reads."""

    booster: Any
    features: tuple[str, ...]
    best_iteration: int
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = [f for f in self.features if f not in FEATURE_NAMES]
        if unknown:
            raise IndexCorruptError(f"LambdaMART model reads unknown feature(s) {unknown}")
        self._cols = np.asarray([FEATURE_NAMES.index(f) for f in self.features])

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Scores for a (n, len(FEATURE_NAMES)) feature matrix."""
        if len(features) == 0:
            return np.zeros(0)
        return np.asarray(
            self.booster.predict(features[:, self._cols], num_iteration=self.best_iteration, num_threads=1),
            dtype=np.float64,
        )

    def save(self, folder: Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / (MODEL_FILE + ".tmp")
        self.booster.save_model(str(tmp), num_iteration=self.best_iteration)
        doc = {
            "format": 1,
            "kind": "lambdamart",
            "features": list(self.features),
            "best_iteration": self.best_iteration,
            "meta": self.meta,
        }
        publish(folder, doc, {MODEL_FILE: tmp})

    @classmethod
    def load(cls, folder: Path) -> LambdaMART:
        import lightgbm as lgb

        folder = Path(folder)
        try:
            doc = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
            text = read_weights(folder, doc, MODEL_FILE).decode("utf-8")
            if not _complete_model_text(text):  # LightGBM would abort the process, not raise
                raise IndexCorruptError(
                    f"LambdaMART model {folder / MODEL_FILE} is cut short (still being copied?)"
                )
            booster = lgb.Booster(model_str=text)
        except FileNotFoundError as exc:
            raise IndexCorruptError(f"LambdaMART checkpoint {folder} is incomplete: {exc.filename}") from None
        except (OSError, ValueError, AttributeError, lgb.basic.LightGBMError) as exc:
            raise IndexCorruptError(f"LambdaMART checkpoint {folder} is unreadable: {exc}") from None
        if doc.get("kind") != "lambdamart":
            raise IndexCorruptError(
                f"{folder}/{CONFIG_FILE} is a {doc.get('kind')!r} checkpoint, not LambdaMART"
            )
        return cls(booster, tuple(doc["features"]), int(doc.get("best_iteration") or 0), doc.get("meta", {}))


def _complete_model_text(text: str) -> bool:
    """A LightGBM text model ends with its parameters block and the pandas line after it."""
    tail = text[-4096:]
    return "end of trees" in text and "end of parameters" in tail and "pandas_categorical:" in tail


def _matrix(
    lists: Sequence[QueryList], cols: np.ndarray, unjudged: str, sample: int = 40, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    xs, ys, groups = [], [], []
    for x in lists:
        labels = x.labels
        keep = labels >= 0 if unjudged != "zero" else np.ones(len(labels), dtype=bool)
        if unjudged == "sample":
            unj = np.flatnonzero(labels < 0)
            keep[rng.choice(unj, min(sample, len(unj)), replace=False)] = True
        if keep.sum() < 2 or not (labels[keep] > 0).any():
            continue
        xs.append(x.features[keep][:, cols])
        ys.append(np.clip(np.rint(np.maximum(labels[keep], 0)), 0, MAX_GRADE).astype(np.int32))
        groups.append(int(keep.sum()))
    if not xs:
        raise ConfigError("no training list has two or more judged candidates with a positive grade")
    return np.concatenate(xs), np.concatenate(ys), groups


def train_lambdamart(
    train: ListSet,
    val: ListSet,
    qrels: Mapping[str, Mapping[str, float]],
    cfg: LambdaMARTConfig | None = None,
) -> tuple[LambdaMART, dict[str, Any]]:
    """Fit on ``train``'s lists (all variants), pick the number of trees by condensed (or, with
    ``cfg.select``, plain) NDCG@k on ``val``'s clean lists ranked in full, as the evaluation ranks them."""
    import lightgbm as lgb

    from reranker.train import rank_lists, score_rankings, selection_key

    cfg = cfg or LambdaMARTConfig()
    t0 = time.perf_counter()
    cols = np.asarray([FEATURE_NAMES.index(f) for f in cfg.features])
    X, y, groups = _matrix(train.lists, cols, cfg.unjudged, cfg.unjudged_sample, cfg.seed)
    max_grade = int(y.max())
    params = {
        "objective": "lambdarank",
        "metric": "ndcg",
        "eval_at": [cfg.k],
        "label_gain": list(range(max_grade + 1)),  # linear gain, as the evaluation's NDCG
        "learning_rate": cfg.learning_rate,
        "num_leaves": cfg.num_leaves,
        "min_child_samples": cfg.min_child_samples,
        "seed": cfg.seed,
        "deterministic": True,
        "num_threads": cfg.threads,
        "verbose": -1,
        "lambdarank_truncation_level": 30,
    }
    booster = lgb.train(params, lgb.Dataset(X, y, group=groups), num_boost_round=cfg.n_estimators)
    val_lists = [x for x in val.lists if x.variant == "clean"]
    best_it, best, curve = cfg.n_estimators, -1.0, {}
    for it in range(50, cfg.n_estimators + 1, 50):
        scores = [booster.predict(x.features[:, cols], num_iteration=it, num_threads=1) for x in val_lists]
        m = score_rankings(rank_lists(val_lists, scores, cfg.depth), qrels, cfg.k, cfg.depth)
        curve[it] = m
        if m[selection_key(cfg.k, cfg.select)] > best + 1e-6:
            best, best_it = m[selection_key(cfg.k, cfg.select)], it
    seconds = time.perf_counter() - t0
    meta = {
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.__dict__.items()},
        "train_lists": len(groups),
        "best_iteration": best_it,
        "val": curve.get(best_it, {}),
        "seconds": round(seconds, 2),
    }
    return LambdaMART(booster, tuple(cfg.features), best_it, meta), meta
