"""Training: events -> query graph, PMI neighbours, learned factors, cold-start mapping, tuned
blend weights -> a new CF generation in ``INDEX/cf/``.

Layout::

    INDEX/cf/CURRENT              name of the live CF generation (replaced atomically)
    INDEX/cf/cf-000004/           manifest.json, items.json, users.json, queries.json,
                                  queries_fuzzy.npz, graph.npz, pmi.npz, tokens.json, tokens.npz,
                                  item_trend.npy, query_factors.npy, user_factors.npy, user_items.npz,
                                  item_counts.npy, item_factors.npy, coldstart.npz,
                                  item_ann/ (FAISS index over the factors, see indexer.vector)

Blend weights are tuned on a time-based hold-out (the newest 10% of the log) with the model fitted
on the older 90%; the published model is then refitted on everything with those weights.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from indexer.cf.coldstart import blend, fit_mapper
from indexer.cf.factors import Factors, interaction_matrix, train_als, train_gmf
from indexer.cf.graph import (
    PRIOR_FLOOR,
    build_query_graph,
    decay,
    event_weights,
    item_activity,
    trend_from_totals,
)
from indexer.cf.model import BlendParams, CFModel, UserHistory
from indexer.cf.pmi import basket_ids, cooccurrence_pmi
from indexer.cf.queries import QueryVocab
from indexer.cf.tokenmodel import build_token_model
from indexer.durable import atomic_write_text, fsync_tree
from indexer.interactions import EventLog
from indexer.locks import file_lock
from shopsearch.errors import ConfigError
from shopsearch.settings import Settings

CF_DIR = "cf"
# items with at least this many events train the cold-start mapping: kNN borrows from any item
# with a click; a linear map needs the better-determined factors of busier items
MIN_WARM_EVENTS = {"knn": 1, "ridge": 5}
COLD_SHRINK = 1.0  # pseudo-events of the mapped vector in the blend for sparse items
HOLDOUT_SHARE = 0.1
MIN_TUNE_EVENTS = 200
_KEEP = 2

GRID: dict[str, tuple[float, ...]] = {
    "alpha": (0.1, 0.3, 1.0, 3.0, 10.0),
    "gamma": (0.0, 0.15, 0.3, 0.5, 0.7, 1.0),
    "w_als": (0.0, 0.25, 0.5, 1.0, 2.0, 4.0),
    "w_pmi": (0.0, 0.05, 0.1, 0.2, 0.4),
    "w_user": (0.0, 0.25, 0.5, 1.0, 2.0),
    "kappa_tok": (0.0, 1.0, 3.0, 10.0, 30.0),
    "w_trend": (0.0, 0.1, 0.2, 0.3, 0.5, 1.0),
    "w_seen": (-3.0, -1.0, -0.3, 0.0, 0.3, 1.0),
}


@dataclass
class ContentVectors:
    """Content vectors of catalog items (text and image concatenated), for cold start."""

    ids: list[str]
    matrix: np.ndarray  # (n, d) float32
    modalities: list[str]


@dataclass
class TrainReport:
    generation: str | None
    path: Path | None
    counts: dict[str, int]
    seconds: dict[str, float]
    peak_rss_mb: float
    params: dict[str, float]
    holdout: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        c = self.counts
        h = self.holdout
        how = ", replayed live" if h.get("protocol") == "live replay" else ""
        tuned = (
            f"; hold-out MAP@5 {h['map5_default']:.3f} -> {h['map5_tuned']:.3f} ({h['events']} events{how})"
            if "map5_tuned" in h
            else ""
        )
        return (
            f"trained CF on {c['events']} events ({c['items']} items, {c['query_groups']} query groups, "
            f"{c['users']} users, {c['cold_items_mapped']} cold items mapped) in "
            f"{self.seconds.get('total', 0):.1f} s, peak RSS {self.peak_rss_mb:.0f} MB{tuned}"
        )


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ====================================================================== fitting
def fit_model(
    log: EventLog,
    settings: Settings,
    *,
    params: BlendParams | None = None,
    content: ContentVectors | None = None,
    cold_start: bool = True,
    mapping: str = "knn",
    model_kind: str | None = None,
    progress: Callable[[str], None] | None = None,
    threads: int = 0,
) -> CFModel:
    """Fit every CF part on ``log`` (all of it: splitting is the caller's business)."""
    step = progress or (lambda _name: None)
    timings: dict[str, float] = {}
    t_all = time.perf_counter()
    if len(log) == 0:
        raise ConfigError("no events to train on: import events first ('shopsearch events import')")

    t = time.perf_counter()
    step("vocabulary")
    content_ids = content.ids if content is not None else []
    item_ids = sorted(set(log.item) | set(content_ids))
    item_index = {x: i for i, x in enumerate(item_ids)}
    item = np.fromiter((item_index[x] for x in log.item), dtype=np.int64, count=len(log))
    vocab, group = QueryVocab.build(log.query)
    timings["vocabulary"] = time.perf_counter() - t

    t = time.perf_counter()
    step("query graph")
    base = event_weights(
        log.event, log.ts, log.position, settings.event_weights, eta=settings.cf_position_bias_eta
    )
    w_all = base * decay(log.ts, settings.cf_half_life_days) if settings.cf_half_life_days > 0 else base
    w_recent = base * decay(log.ts, settings.cf_recent_half_life_days)
    graph = build_query_graph(group, item, w_all, w_recent, len(vocab), len(item_ids))
    activity = item_activity(item, w_all, w_recent, len(item_ids))
    trend = trend_from_totals(activity[0], activity[1])
    timings["graph"] = time.perf_counter() - t

    t = time.perf_counter()
    step("token model")
    token_model = build_token_model(log.query, item, w_all, len(item_ids))
    timings["tokens"] = time.perf_counter() - t

    t = time.perf_counter()
    step("co-engagement PMI")
    neighbours = cooccurrence_pmi(basket_ids(log.session, log.user), item, len(item_ids))
    timings["pmi"] = time.perf_counter() - t

    t = time.perf_counter()
    step(f"factors ({model_kind or settings.cf_model})")
    user_ids = sorted({u for u in log.user if u is not None})
    user_index = {x: i for i, x in enumerate(user_ids)}
    has_q = group >= 0
    user_row = np.fromiter(
        (user_index.get(u, -1) if u is not None else -1 for u in log.user), dtype=np.int64, count=len(log)
    )
    has_u = user_row >= 0
    rows = np.concatenate([group[has_q], len(vocab) + user_row[has_u]])
    cols = np.concatenate([item[has_q], item[has_u]])
    vals = np.concatenate([w_all[has_q], w_all[has_u]])
    matrix = interaction_matrix(rows, cols, vals, len(vocab) + len(user_ids), len(item_ids))
    kind = model_kind or settings.cf_model
    if kind == "als":
        fac: Factors = train_als(matrix, factors=settings.cf_factors, threads=threads)
    elif kind == "gmf":
        fac = train_gmf(matrix, factors=settings.cf_factors)
    else:
        raise ConfigError(f"unknown cf_model {kind!r}; expected 'als' or 'gmf'")
    timings["factors"] = fac.seconds
    item_factors = fac.items

    t = time.perf_counter()
    raw_counts = np.bincount(item, minlength=len(item_ids))
    mapper = None
    n_mapped = 0
    if content is not None and cold_start and len(content.ids):
        step(f"cold-start mapping ({mapping})")
        rows_c = np.asarray([item_index[x] for x in content.ids], dtype=np.int64)
        warm = raw_counts[rows_c] >= MIN_WARM_EVENTS.get(mapping, 1)
        if int(warm.sum()) >= 10:
            mapper = fit_mapper(content.matrix[warm], item_factors[rows_c[warm]], mapping)
            exclude = np.full(len(rows_c), -1, dtype=np.int64)
            exclude[warm] = np.arange(int(warm.sum()))  # a warm item is not its own neighbour
            mapped = mapper.predict(content.matrix, exclude=exclude)
            item_factors = item_factors.copy()
            item_factors[rows_c] = blend(item_factors[rows_c], mapped, raw_counts[rows_c], COLD_SHRINK)
            cold = rows_c[raw_counts[rows_c] == 0]
            n_mapped = len(cold)
            # a cold item's click prior is the typical prior of an item with one event, not the
            # floor: otherwise every item with a single click outranks every cold one
            seen = raw_counts > 0
            if len(cold) and seen.any():
                graph.prior[cold] = (
                    np.median(graph.prior[seen & (raw_counts <= 1)])
                    if (seen & (raw_counts <= 1)).any()
                    else np.median(graph.prior[seen])
                )
                graph.prior /= graph.prior.sum()
    timings["coldstart"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t_all

    manifest = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": kind,
        "factors": int(item_factors.shape[1]),
        "event_weights": dict(settings.event_weights),
        "half_life_days": settings.cf_half_life_days,
        "recent_half_life_days": settings.cf_recent_half_life_days,
        "position_bias_eta": settings.cf_position_bias_eta,
        "content_modalities": content.modalities if content is not None else [],
        "counts": {
            "events": len(log),
            "items": len(item_ids),
            "items_with_events": int((raw_counts > 0).sum()),
            "query_groups": len(vocab),
            "users": len(user_ids),
            "graph_edges": int(len(graph.item)),
            "pmi_pairs": int(len(neighbours.item)),
            "query_tokens": len(token_model),
            "cold_items_mapped": n_mapped,
        },
        "seconds": {k: round(v, 3) for k, v in timings.items()},
        "newest_event": float(log.ts.max()),
        # where live counting (indexer.cf.live) picks up: events stored after these were not trained on
        "last_seq": int(log.seq.max()),
        "prior_mass": float(w_recent.sum() + PRIOR_FLOOR * max(float(w_recent.sum()), 1.0)),
    }
    params = params or BlendParams(fuzzy_min_score=settings.cf_fuzzy_min_score)
    return CFModel(
        item_ids=item_ids,
        vocab=vocab,
        graph=graph,
        neighbours=neighbours,
        query_factors=fac.rows[: len(vocab)],
        user_ids=user_ids,
        user_factors=fac.rows[len(vocab) :],
        item_factors=np.ascontiguousarray(item_factors, dtype=np.float32),
        item_counts=np.bincount(item, weights=base, minlength=len(item_ids)).astype(np.float32),
        params=params,
        manifest=manifest,
        mapper=mapper,
        tokens=token_model,
        item_trend=trend,
        item_activity=activity,
        history=UserHistory.build(user_row, item, base, len(user_ids), len(item_ids)),
    )


# ====================================================================== evaluation and tuning
def map_at_5(model: CFModel, log: EventLog, *, fallback: np.ndarray | None = None) -> float:
    """Mean AP@5 of the clicked item over events with a query (one relevant item: 1/rank)."""
    pairs: dict[tuple[str, str | None], list[str]] = {}
    for q, u, it in zip(log.query, log.user, log.item, strict=True):
        if q:
            pairs.setdefault((q, u), []).append(it)
    if not pairs:
        return 0.0
    total = 0.0
    n = 0
    index = model.item_index
    for (q, u), clicked in pairs.items():
        ranked = model.score_query(q, 5, user=u).items.tolist()
        if fallback is not None and len(ranked) < 5:
            ranked += [int(i) for i in fallback if int(i) not in ranked][: 5 - len(ranked)]
        pos = {it: r for r, it in enumerate(ranked[:5], 1)}
        for it in clicked:
            i = index.get(it)
            total += 1.0 / pos[i] if i is not None and i in pos else 0.0
            n += 1
    return total / max(n, 1)


def replay_ap(model: CFModel, log: EventLog, *, fallback: bool = False) -> np.ndarray:
    """AP@5 of each event of ``log`` (0 for events without a query), replayed in time order
    through a fresh :class:`~indexer.cf.live.LiveClicks`: an event is scored with every earlier
    one counted and its own click not yet, as the live server sees it. ``fallback`` fills a list
    shorter than 5 with the most popular items (the live prior)."""
    from indexer.cf.live import LiveClicks

    live = LiveClicks(model)
    out = np.zeros(len(log))
    for k in np.lexsort((log.seq, log.ts)):
        q = log.query[k]
        if q:
            i = live.index_of(log.item[k])  # None: an item nobody has clicked yet
            if i is not None:
                ranked = model.score_query(q, 5, user=log.user[k], live=live).items.tolist()
                if fallback and len(ranked) < 5:
                    top = np.argsort(-live.prior(), kind="stable")[:5].tolist()
                    ranked += [x for x in top if x not in ranked][: 5 - len(ranked)]
                out[k] = 1.0 / (ranked.index(i) + 1) if i in ranked else 0.0
        live.add(log.take(np.asarray([k])))
    return out


def replay_map_at_5(model: CFModel, log: EventLog) -> float:
    """Mean of :func:`replay_ap` over the events with a query."""
    has_q = np.asarray([bool(q) for q in log.query])
    return float(replay_ap(model, log)[has_q].mean()) if has_q.any() else 0.0


def time_split(log: EventLog, share: float) -> tuple[EventLog, EventLog]:
    """(older, newest ``share``) by timestamp; ties broken by storage order."""
    order = np.lexsort((log.seq, log.ts))
    cut = int(round(len(order) * (1 - share)))
    return log.take(order[:cut]), log.take(order[cut:])


def tune(
    model: CFModel,
    holdout: EventLog,
    *,
    progress: Callable[[str], None] | None = None,
    passes: int = 2,
    live: bool = False,
) -> tuple[BlendParams, dict[str, Any]]:
    """Coordinate ascent of the blend weights on MAP@5 of the hold-out; ``live``: replayed in time
    order with the earlier hold-out events counted live (how a server with live counting sees it)."""
    step = progress or (lambda _n: None)
    score_of = replay_map_at_5 if live else map_at_5
    best = model.params
    default = score_of(model, holdout)
    best_score = default
    has_users = any(u is not None and u in model.user_index for u in holdout.user)
    evaluated = 1
    for _ in range(passes):
        improved = False
        for name, values in GRID.items():
            # live, a user's earlier hold-out events are history too
            if (name == "w_user" and not has_users) or (name == "w_seen" and not (has_users or live)):
                continue
            for v in values:
                if getattr(best, name) == v:
                    continue
                cand = BlendParams(**{**best.to_dict(), name: v})
                score = score_of(model.with_params(cand), holdout)
                evaluated += 1
                if score > best_score + 1e-6:
                    best, best_score, improved = cand, score, True
            step(f"tuned {name}={getattr(best, name)} (MAP@5 {best_score:.4f})")
        if not improved:
            break
    report = {
        "events": int(sum(1 for q in holdout.query if q)),
        "map5_default": round(default, 4),
        "map5_tuned": round(best_score, 4),
        "configs_evaluated": evaluated,
        "protocol": "live replay" if live else "static",
    }
    return best, report


def fit_tuned(
    log: EventLog,
    settings: Settings,
    *,
    content: ContentVectors | None = None,
    cold_start: bool = True,
    mapping: str = "knn",
    model_kind: str | None = None,
    tune_weights: bool | None = None,
    progress: Callable[[str], None] | None = None,
    threads: int = 0,
    live: bool | None = None,
) -> tuple[CFModel, dict[str, Any]]:
    """Tune blend weights on the newest 10% (model fitted on the rest), then refit on all.
    ``live`` (default: the ``cf_live`` setting) tunes them the way a live server uses them: the
    hold-out replayed in time order with its earlier events counted live."""
    tune_weights = settings.cf_tune if tune_weights is None else tune_weights
    live = settings.cf_live if live is None else live
    report: dict[str, Any] = {}
    params = BlendParams(fuzzy_min_score=settings.cf_fuzzy_min_score)
    n_query = sum(1 for q in log.query if q)
    if tune_weights and n_query >= MIN_TUNE_EVENTS:
        head, tail = time_split(log, HOLDOUT_SHARE)
        if len(head) and any(tail.query):
            t = time.perf_counter()
            probe = fit_model(
                head,
                settings,
                params=params,
                content=content,
                cold_start=cold_start,
                mapping=mapping,
                model_kind=model_kind,
                progress=progress,
                threads=threads,
            )
            params, report = tune(probe, tail, progress=progress, live=live)
            report["seconds"] = round(time.perf_counter() - t, 2)
    model = fit_model(
        log,
        settings,
        params=params,
        content=content,
        cold_start=cold_start,
        mapping=mapping,
        model_kind=model_kind,
        progress=progress,
        threads=threads,
    )
    return model, report


# ====================================================================== content vectors
def content_vectors(live: Any) -> ContentVectors | None:
    """Text/image vectors of the live items of a LiveIndex (None when it has none)."""
    rows = live.table.live_rows()
    if len(rows) == 0:
        return None
    parts = []
    modalities = []
    for modality in ("text", "image"):
        index = live.vectors.get(modality)
        if index is None:
            continue
        has = index.contains(rows)
        if not has.any():
            continue
        block = np.zeros((len(rows), index.dim), dtype=np.float32)
        block[has] = index.vectors_for(rows[has])
        block[~has] = block[has].mean(axis=0)
        parts.append(block)
        modalities.append(modality)
    if not parts:
        return None
    ids = [live.table.product(int(r)).id for r in rows]
    return ContentVectors(ids=ids, matrix=np.concatenate(parts, axis=1), modalities=modalities)


# ====================================================================== publishing
def _train_lock(cf_dir: Path) -> contextlib.AbstractContextManager[None]:
    return file_lock(cf_dir / ".train.lock")


def current_cf(index_dir: Path) -> Path | None:
    """Folder of the live CF generation, or None when none was trained."""
    cf_dir = Path(index_dir) / CF_DIR
    try:
        name = (cf_dir / "CURRENT").read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    return cf_dir / name if name else None


def publish(model: CFModel, index_dir: Path) -> tuple[str, Path]:
    """Write a new CF generation and switch CURRENT to it atomically (kill -9 safe)."""
    cf_dir = Path(index_dir) / CF_DIR
    with _train_lock(cf_dir):
        numbers = [int(d.name.split("-")[1].split(".")[0]) for d in cf_dir.glob("cf-*")]
        name = f"cf-{1 + max(numbers, default=0):06d}"
        tmp = cf_dir / f"{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        model.manifest["generation"] = name
        model.save(tmp)
        fsync_tree(tmp)
        final = cf_dir / name
        os.rename(tmp, final)
        atomic_write_text(cf_dir / "CURRENT", name + "\n")
        complete = sorted(d for d in cf_dir.glob("cf-*") if not d.name.endswith(".tmp"))
        for d in [*complete[:-_KEEP], *cf_dir.glob("cf-*.tmp")]:
            if d.name != name:
                shutil.rmtree(d, ignore_errors=True)
    return name, final


def train_cf(
    index_dir: Path,
    settings: Settings,
    *,
    log: EventLog | None = None,
    progress: bool = False,
    tune_weights: bool | None = None,
    cold_start: bool = True,
) -> TrainReport:
    """Train on every event stored in the index (or on ``log``, whose seq numbers must be the
    store's: live counting picks up after the newest one) and publish a CF generation."""
    from indexer.interactions import EventStore
    from indexer.store import LiveIndex, current_generation

    t0 = time.perf_counter()
    index_dir = Path(index_dir)
    if log is None:
        with EventStore(index_dir, settings) as store:
            log = store.read()
    content = None
    if current_generation(index_dir) is not None:
        live = LiveIndex(index_dir, settings)
        try:
            content = content_vectors(live)
        finally:
            live.close()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(desc="train-cf", unit=" step", leave=False)

    def step(name: str) -> None:
        if bar is not None:
            bar.set_postfix_str(name[:60])
            bar.update(1)

    try:
        model, holdout = fit_tuned(
            log, settings, content=content, cold_start=cold_start, tune_weights=tune_weights, progress=step
        )
        model.manifest["holdout"] = holdout
        step("publishing")
        name, path = publish(model, index_dir)
    finally:
        if bar is not None:
            bar.close()
    seconds = dict(model.manifest["seconds"])
    seconds["total"] = round(time.perf_counter() - t0, 3)
    return TrainReport(
        generation=name,
        path=path,
        counts=dict(model.manifest["counts"]),
        seconds=seconds,
        peak_rss_mb=round(peak_rss_mb(), 1),
        params=model.params.to_dict(),
        holdout=holdout,
    )


def read_manifest(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
