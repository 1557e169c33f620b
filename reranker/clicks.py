"""Graded training labels from the index's interaction log (clicks, carts, purchases).

Why: a storefront with a click log has far more labelled queries than any team can judge by hand,
and its labels describe what its own shoppers pick. A (query, item) pair's grade is the weighted
count of its events (``Settings.event_weights``: a purchase counts more than a click; a click at a
low position more than one at the top, ``cf_position_bias_eta``, the CF trainer's own correction),
so the listwise loss's target ``grade / sum(grade)`` is each item's share of the query's weighted
events: the click model of that query.

Spellings of one query that share a CF query key (case, accents, punctuation and word order
ignored) are one query; it is searched in its most used spelling.

Leakage: the CF source's scores are re-ranker features, and a CF model that has seen the label
events would make them look better on the training lists than on any future query (the same trap
as the fused source, see ``reranker.crossfit``). So :func:`label_split` cuts the log by time: the
CF model behind the training lists is fitted on the older events only, and the labels come from
the newest ones, the way a served model's CF features (past clicks) meet its queries (future
clicks).
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from indexer.cf.graph import event_weights
from indexer.cf.queries import query_key
from indexer.cf.train import time_split
from indexer.interactions import EventLog
from shopsearch.errors import ConfigError

MIN_LABEL_QUERIES = 10


@dataclass
class EventJudgments:
    """Queries and graded labels in the shapes the trainer takes from a queries file and qrels."""

    queries: dict[str, str]  # qid -> the query's most used spelling
    qrels: dict[str, dict[str, float]]  # qid -> item id -> weighted events
    counts: dict[str, int] = field(default_factory=dict)


def query_id(key: str) -> str:
    """A stable id per query key (qrels ids must not contain spaces)."""
    return "ev-" + hashlib.sha1(key.encode("utf-8")).hexdigest()[:16]


def judgments_from_events(
    log: EventLog,
    weights: Mapping[str, float],
    *,
    eta: float = 1.0,
    known_items: Collection[str] | None = None,
    min_weight: float = 0.0,
) -> EventJudgments:
    """Group the events that carry a query by query key and item; grade = summed event weight.

    Events without a query, of a type with no weight, or on an item the catalog does not hold
    (``known_items``) are counted and left out; so is a query whose total weight is not above
    ``min_weight``."""
    w = event_weights(log.event, log.ts, log.position, weights, eta=eta)
    grades: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    spellings: dict[str, Counter[str]] = defaultdict(Counter)
    counts = Counter(events=len(log))
    for text, item, weight in zip(log.query, log.item, w.tolist(), strict=True):
        if not text or not text.strip():
            counts["without_query"] += 1
            continue
        if weight <= 0:
            counts["without_weight"] += 1
            continue
        if known_items is not None and item not in known_items:
            counts["unknown_item"] += 1
            continue
        key = query_key(text)
        if not key:
            counts["without_query"] += 1
            continue
        grades[key][item] += weight
        spellings[key][" ".join(text.split())] += 1
        counts["used"] += 1
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, float]] = {}
    for key, items in grades.items():
        if sum(items.values()) <= min_weight:
            counts["light_queries"] += 1
            continue
        qid = query_id(key)
        # the most used spelling; ties go to the alphabetically first, so runs agree
        queries[qid] = min(spellings[key].items(), key=lambda kv: (-kv[1], kv[0]))[0]
        qrels[qid] = {item: float(g) for item, g in items.items()}
    counts["queries"] = len(queries)
    return EventJudgments(queries, qrels, dict(counts))


def label_split(log: EventLog, share: float) -> tuple[EventLog, EventLog]:
    """(events the CF features may use, events the labels come from): the newest ``share`` of the
    log by time are the labels'."""
    if not 0 < share < 1:
        raise ConfigError(f"the label share must be between 0 and 1, got {share}")
    older, newer = time_split(log, share)
    if len(older) == 0 or len(newer) == 0:
        raise ConfigError(
            f"{len(log)} stored events are too few to split into CF history and labels (share {share})"
        )
    return older, newer
