"""Cross-fitted candidate lists: each training query's fused source comes from a fusion model
that never saw that query.

Why: the re-ranker reads the fused source (rank, score) as features. When the index's fusion model
was trained on the same judgments as the re-ranker, those features are better on the training
lists than they will be on any new query, and the re-ranker learns to over-trust them. On Home
Depot (benchmarks/bench_crossfit.py) the over-trusting re-ranker validated at 0.852 NDCG@10
condensed and tested at 0.778; with cross-fitted lists it validated at 0.795 and tested at 0.783.

How: the queries are cut into ``folds`` parts by a hash of their text. For each part, a snapshot of
the live generation (hard links where possible: nothing in it is modified in place; the
embedding cache is copied) gets a fusion model trained with the index model's own training
config on the other parts' judgments, and that part's lists are built from the snapshot. The
snapshots are deleted afterwards. Costs one fusion training per fold.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import fields
from pathlib import Path
from typing import Any

from indexer.store import snapshot_live_generation
from reranker.features import FeatureExtractor
from reranker.train import ListSet, build_lists
from shopsearch.errors import ConfigError, IndexCorruptError

SNAPSHOT_PREFIX = ".crossfit-"


def fold_of(text: str, folds: int, seed: int = 0) -> int:
    """Which part a query belongs to: by its text, so a query and its perturbed copies stay together."""
    digest = hashlib.sha1(f"crossfit\x00{seed}\x00{' '.join(text.split())}".encode()).hexdigest()
    return int(digest, 16) % folds


def fusion_train_config(index_dir: Path) -> Any:
    """The training config of the index's fusion model (so the fold models are trained alike)."""
    from indexer.fusion.sidecar import model_dir
    from indexer.fusion.train import TrainConfig

    path = model_dir(Path(index_dir)) / "config.json"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        saved = doc["train"]["config"]
    except FileNotFoundError:
        raise ConfigError(
            f"--fusion-folds needs a fusion model in {path.parent}: run 'shopsearch train-fusion' first"
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise IndexCorruptError(f"{path} has no readable training config: {exc}") from None
    known = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in saved.items() if k in known})


def crossfit_lists(
    index_dir: Path,
    settings: Any,
    parts: Mapping[str, tuple[Mapping[str, str], Sequence[str]]],
    qrels: Mapping[str, Mapping[str, float]],
    *,
    folds: int,
    seed: int,
    depth: int,
    progress: bool,
    log: Callable[[str], None],
) -> dict[str, ListSet]:
    """``parts``: name -> (queries, variants), e.g. train and validation. Returns one ListSet per
    name, built fold by fold from snapshots whose fusion model never saw the fold's queries."""
    from reranker.base import PassThroughReranker
    from reranker.pipeline import SearchPipeline

    if folds < 2:
        raise ConfigError(f"cross-fitting needs at least 2 folds, got {folds}")
    index_dir = Path(index_dir)
    config = fusion_train_config(index_dir)
    every = {q: t for queries, _ in parts.values() for q, t in queries.items()}
    fold = {q: fold_of(t, folds, seed) for q, t in every.items()}
    built: dict[str, list[ListSet]] = {name: [] for name in parts}
    others = [{q: t for q, t in every.items() if fold[q] != f} for f in range(folds)]
    if any(not o or len(o) == len(every) for o in others):
        raise ConfigError(f"{len(every)} queries are too few for {folds} cross-fitting folds")
    snaps = [index_dir / f"{SNAPSHOT_PREFIX}{f}" for f in range(folds)]
    fold_settings = [settings.model_copy(update={"index_dir": snap}) for snap in snaps]
    try:
        jobs = []
        for f, snap in enumerate(snaps):
            snapshot_live_generation(index_dir, snap)
            jobs.append((snap, fold_settings[f], others[f], {q: qrels[q] for q in others[f] if q in qrels}))
        _train_fold_models(jobs, config, progress, log)
        for f, snap in enumerate(snaps):
            pipeline = SearchPipeline.open(snap, fold_settings[f], reranker=PassThroughReranker())
            try:
                extractor = FeatureExtractor(pipeline.index)
                extractor.warm(progress=False)
                for name, (queries, variants) in parts.items():
                    mine = {q: t for q, t in queries.items() if fold[q] == f}
                    if mine:
                        built[name].append(
                            build_lists(
                                pipeline,
                                extractor,
                                mine,
                                qrels,
                                variants=variants,
                                seed=seed,
                                depth=depth,
                                progress=progress,
                            )
                        )
            finally:
                pipeline.close()
    finally:
        for snap in snaps:
            shutil.rmtree(snap, ignore_errors=True)
    out = {}
    for name, sets in built.items():
        first = sets[0]
        meta = {**first.meta, "fusion_folds": folds}
        out[name] = ListSet([x for s in sets for x in s.lists], first.item_vectors, first.item_present, meta)
    return out


def _train_fold_models(
    jobs: list[tuple[Path, Any, Mapping[str, str], Mapping[str, Any]]],
    config: Any,
    progress: bool,
    log: Callable[[str], None],
) -> None:
    """One fusion training per fold. The trainings are independent and each uses
    ``config.threads`` torch threads, so with spare cores they run side by side in worker
    processes (Home Depot, two folds on two cores: folds and lists 805 -> 629 s); each process
    seeds itself as a lone training would, so the models are the same either way."""
    from indexer.fusion.train import train_fusion

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = min(len(jobs), max(1, cores // max(1, config.threads)))
    for f, (_, _, queries, _) in enumerate(jobs):
        log(f"cross-fitting fold {f + 1}/{len(jobs)}: fusion model on {len(queries)} other queries")
    if workers < 2:
        for snap, local, queries, fold_qrels in jobs:
            train_fusion(
                snap, local, queries=queries, qrels=fold_qrels, config=config, progress=progress, log=log
            )
        return
    log(f"training the {len(jobs)} fold models in {workers} processes (their progress is not shown)")
    ctx = multiprocessing.get_context("spawn")  # torch and forked threads do not mix
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        futures = [pool.submit(_train_one_fold, *job, config) for job in jobs]
        for f, fut in enumerate(futures):
            fut.result()  # a failed fold raises its own error here
            log(f"cross-fitting fold {f + 1}/{len(jobs)}: fusion model trained")


def _train_one_fold(snap: Path, settings: Any, queries: Any, qrels: Any, config: Any) -> None:
    from indexer.fusion.train import train_fusion

    train_fusion(
        snap, settings, queries=queries, qrels=qrels, config=config, progress=False, log=lambda _m: None
    )
