"""Ranking metrics over graded judgments, defined as trec_eval defines them.

A ranking is a sequence of document ids, best first; judgments map document id -> grade. Gains are
the grades themselves (linear), unjudged documents count as grade 0, and a document is *relevant*
(for MRR, recall, MAP and the no-relevant share) when its grade is above ``rel_threshold``. NDCG
uses every positive grade as gain, whatever the threshold, as trec_eval's ``ndcg_cut`` does.

The *condensed* form (Sakai 2007) first removes unjudged documents from the ranking: it tells how
a system would score if its unjudged results had been judged like the ones around them, which
matters when judgments only cover what an older system showed (Home Depot, ESCI).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

Judgments = Mapping[str, float]
Qrels = Mapping[str, Judgments]

DEPTH = 100
# k for the recall@k curves in the report
CURVE_KS: tuple[int, ...] = (1, 2, 3, 5, 10, 20, 30, 50, 75, 100)


def metric_names(k: int = 10, depth: int = DEPTH) -> list[str]:
    """Metric keys in report order; every one but unjudged@k also exists as ``<name>_condensed``."""
    return [
        f"ndcg@{k}",
        f"ndcg@{depth}",
        f"mrr@{k}",
        f"recall@{depth}",
        f"map@{depth}",
        f"no_rel@{k}",
        f"unjudged@{k}",
    ]


def _dedupe(ranking: Iterable[str]) -> list[str]:
    seen: set[str] = set()
    out = []
    for doc in ranking:
        if doc not in seen:
            seen.add(doc)
            out.append(doc)
    return out


def condense(ranking: Sequence[str], judgments: Judgments) -> list[str]:
    """The ranking with unjudged documents removed (order kept)."""
    return [d for d in ranking if d in judgments]


def dcg(gains: Sequence[float], k: int) -> float:
    return float(sum(g / math.log2(i + 2) for i, g in enumerate(gains[:k]) if g > 0))


def ndcg(ranking: Sequence[str], judgments: Judgments, k: int) -> float:
    """Linear gain, log2(rank + 1) discount, ideal ranking of all judged documents; 0 when no
    document has a positive grade."""
    ideal = dcg(sorted((g for g in judgments.values() if g > 0), reverse=True), k)
    if ideal <= 0:
        return 0.0
    return dcg([judgments.get(d, 0.0) for d in ranking[:k]], k) / ideal


def _relevant(judgments: Judgments, rel_threshold: float) -> set[str]:
    return {d for d, g in judgments.items() if g > rel_threshold}


def reciprocal_rank(
    ranking: Sequence[str], judgments: Judgments, k: int, rel_threshold: float = 0.0
) -> float:
    rel = _relevant(judgments, rel_threshold)
    for i, d in enumerate(ranking[:k], 1):
        if d in rel:
            return 1.0 / i
    return 0.0


def recall(ranking: Sequence[str], judgments: Judgments, k: int, rel_threshold: float = 0.0) -> float:
    rel = _relevant(judgments, rel_threshold)
    if not rel:
        return 0.0
    return sum(1 for d in ranking[:k] if d in rel) / len(rel)


def average_precision(
    ranking: Sequence[str], judgments: Judgments, k: int, rel_threshold: float = 0.0
) -> float:
    """trec_eval's map_cut: precision summed at each relevant document in the top k, divided by
    the number of relevant documents (all of them, not only those within k)."""
    rel = _relevant(judgments, rel_threshold)
    if not rel:
        return 0.0
    hits = 0
    total = 0.0
    for i, d in enumerate(ranking[:k], 1):
        if d in rel:
            hits += 1
            total += hits / i
    return total / len(rel)


def no_relevant(ranking: Sequence[str], judgments: Judgments, k: int, rel_threshold: float = 0.0) -> float:
    """1.0 when none of the top k is relevant (the query 'failed'), else 0.0."""
    rel = _relevant(judgments, rel_threshold)
    return 0.0 if any(d in rel for d in ranking[:k]) else 1.0


def unjudged_share(ranking: Sequence[str], judgments: Judgments, k: int) -> float:
    """Share of the returned top-k results that carry no judgment (0 for an empty ranking)."""
    top = ranking[:k]
    if not top:
        return 0.0
    return sum(1 for d in top if d not in judgments) / len(top)


def evaluate_query(
    ranking: Sequence[str],
    judgments: Judgments,
    *,
    k: int = 10,
    depth: int = DEPTH,
    rel_threshold: float = 0.0,
    condensed: bool = True,
) -> dict[str, float]:
    """Every metric of :func:`metric_names` for one query (and their ``_condensed`` forms).

    Repeated document ids count once, at their first position."""
    ranking = _dedupe(ranking)
    forms = [("", ranking)]
    if condensed:
        forms.append(("_condensed", condense(ranking, judgments)))
    out: dict[str, float] = {}
    for suffix, r in forms:
        out[f"ndcg@{k}{suffix}"] = ndcg(r, judgments, k)
        out[f"ndcg@{depth}{suffix}"] = ndcg(r, judgments, depth)
        out[f"mrr@{k}{suffix}"] = reciprocal_rank(r, judgments, k, rel_threshold)
        out[f"recall@{depth}{suffix}"] = recall(r, judgments, depth, rel_threshold)
        out[f"map@{depth}{suffix}"] = average_precision(r, judgments, depth, rel_threshold)
        out[f"no_rel@{k}{suffix}"] = no_relevant(r, judgments, k, rel_threshold)
        if not suffix:
            out[f"unjudged@{k}"] = unjudged_share(r, judgments, k)
    return out


def recall_curve(
    ranking: Sequence[str], judgments: Judgments, ks: Sequence[int] = CURVE_KS, rel_threshold: float = 0.0
) -> list[float]:
    """Recall at each k of ``ks`` (one pass)."""
    rel = _relevant(judgments, rel_threshold)
    if not rel:
        return [0.0] * len(ks)
    hits = np.cumsum([d in rel for d in _dedupe(ranking)[: max(ks)]])
    return [float(hits[min(k, len(hits)) - 1]) / len(rel) if len(hits) else 0.0 for k in ks]


def evaluate_run(
    run: Mapping[str, Sequence[str]],
    qrels: Qrels,
    qids: Sequence[str],
    *,
    k: int = 10,
    depth: int = DEPTH,
    rel_threshold: float = 0.0,
    condensed: bool = True,
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """(mean of each metric over ``qids``, per-query values). A query the run did not answer
    scores as an empty ranking, so every run is averaged over the same queries."""
    per_query = {
        q: evaluate_query(
            run.get(q, ()), qrels[q], k=k, depth=depth, rel_threshold=rel_threshold, condensed=condensed
        )
        for q in qids
    }
    return mean_metrics(per_query), per_query


def mean_metrics(per_query: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    if not per_query:
        return {}
    keys = next(iter(per_query.values())).keys()
    return {m: float(np.mean([v[m] for v in per_query.values()])) for m in keys}
