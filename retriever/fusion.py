"""Rank fusion: small pure functions, one per method (like bm25s's variants).

Each input is a ranked list of (key, score), best first. Output: key -> fused score.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

Ranked = Sequence[tuple[Hashable, float]]


def rrf(lists: Mapping[str, Ranked], weights: Mapping[str, float], k: int = 60) -> dict[Hashable, float]:
    """Reciprocal rank fusion (Cormack et al. 2009): robust to incomparable score scales."""
    fused: dict[Hashable, float] = {}
    for source, ranked in lists.items():
        w = weights.get(source, 1.0)
        if w == 0:
            continue
        for rank, (key, _score) in enumerate(ranked, 1):
            fused[key] = fused.get(key, 0.0) + w / (k + rank)
    return fused


def minmax(ranked: Ranked) -> list[tuple[Hashable, float]]:
    """Scale one source's scores to [0, 1]; a single or constant list maps to 1."""
    if not ranked:
        return []
    scores = [s for _, s in ranked]
    lo, hi = min(scores), max(scores)
    span = hi - lo
    return [(key, (s - lo) / span if span > 0 else 1.0) for key, s in ranked]


def weighted_sum(lists: Mapping[str, Ranked], weights: Mapping[str, float]) -> dict[Hashable, float]:
    """Convex combination of min-max normalised scores; a source that missed an item adds 0."""
    fused: dict[Hashable, float] = {}
    for source, ranked in lists.items():
        w = weights.get(source, 1.0)
        if w == 0:
            continue
        for key, s in minmax(ranked):
            fused[key] = fused.get(key, 0.0) + w * s
    return fused


def fusion_head(lists: Mapping[str, Ranked], n: int) -> dict[str, Ranked]:
    """The part of each source's list the fused score is computed from. BM25 hits past the first
    ``n`` (``bm25_candidates``) join the pool for the re-ranker only: they take no share of the
    fused score, so the fused order of the first ``n`` per source is what it is without them
    (min-max over a deeper list would shift every BM25 score), and they follow it in BM25 order."""
    return {s: ranked[:n] if s == "bm25" else ranked for s, ranked in lists.items()}


FUSERS = {"rrf": rrf, "weighted": weighted_sum}
