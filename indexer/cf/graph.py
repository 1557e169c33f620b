"""Event weighting and the query -> item click graph.

Each event counts ``event_weight * decay * position_correction``:

* decay: ``0.5 ** (age / half_life)``, age measured back from the newest event in the log;
* position correction: a click at rank p counts ``p ** eta`` (inverse propensity of a
  position-based examination model, Joachims et al. 2017), capped, when the log has positions.

The graph keeps, per query group, two weighted click counts per item: ``all`` (whole history,
optionally decayed) and ``recent`` (short half-life), plus the group totals and a global prior
(recent popularity of every item). The serving side turns them into a smoothed distribution

    p(i | q) = (1 - g) * (A_qi + a * prior_i + k * t_i) / (A_q + a + k)
             +      g  * (R_qi + a * prior_i) / (R_q + a)

so the smoothing ``a`` and the blend ``g`` can be tuned without rebuilding anything. ``t`` is the
query's token-level distribution (see ``tokenmodel``) and ``k`` its pseudo-clicks: a query with
few clicks of its own leans on the clicks of queries sharing its words, a busy one hardly moves.
Only the whole-history part is smoothed that way: the recent part's total is often a fraction of
a click, which ``k`` would swamp even for busy queries.

The item *trend* compares each item's recent click count with what its whole-history share
predicts for the recent window, shrunk toward "no change" by Poisson-Gamma pseudo-counts:

    trend_i = log( (R_i + c) / (E_i + c) ),   E_i = R * A_i / A

(0 for items without events). It is dense across queries: an item that is taking off lifts every
query it is listed under, including busy broad queries whose own recent clicks are few.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from indexer.cf.tokenmodel import TokenDistribution

if TYPE_CHECKING:
    from indexer.cf.live import LiveEdges

DAY = 86_400.0
MAX_POSITION_WEIGHT = 20.0
PRIOR_FLOOR = 0.01  # share of one average item's popularity every item gets (cold items included)
TREND_PSEUDO = 3.0  # pseudo-clicks that shrink an item's recent/expected click ratio toward 1


def event_weights(
    kinds: Sequence[str],
    ts: np.ndarray,
    positions: np.ndarray,
    weights: Mapping[str, float],
    *,
    half_life_days: float = 0.0,
    eta: float = 1.0,
    now: float | None = None,
) -> np.ndarray:
    """One float per event: type weight x time decay x position-bias correction."""
    w = np.asarray([weights.get(k, 0.0) for k in kinds], dtype=np.float64)
    if len(w) == 0:
        return w
    if half_life_days > 0:
        ref = float(ts.max()) if now is None else now
        age = np.maximum(ref - ts, 0.0) / DAY
        w *= np.power(0.5, age / half_life_days)
    if eta > 0:
        pos = np.asarray(positions, dtype=np.float64)
        known = pos >= 1
        w[known] *= np.minimum(np.power(pos[known], eta), MAX_POSITION_WEIGHT)
    return w


def decay(ts: np.ndarray, half_life_days: float, now: float | None = None) -> np.ndarray:
    if len(ts) == 0:
        return np.zeros(0)
    ref = float(ts.max()) if now is None else now
    return np.power(0.5, np.maximum(ref - ts, 0.0) / DAY / half_life_days)


@dataclass
class QueryGraph:
    """CSR over query groups: ``ptr``/``item`` with ``all`` and ``recent`` weights per edge."""

    ptr: np.ndarray  # int64 (n_groups + 1)
    item: np.ndarray  # int32
    all: np.ndarray  # float32
    recent: np.ndarray  # float32
    total_all: np.ndarray  # float64 per group
    total_recent: np.ndarray  # float64 per group
    prior: np.ndarray  # float64 per item, sums to 1

    @property
    def n_groups(self) -> int:
        return len(self.ptr) - 1

    def edges(self, group: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        s, e = self.ptr[group], self.ptr[group + 1]
        return self.item[s:e], self.all[s:e], self.recent[s:e]

    def distribution(
        self,
        group: int,
        alpha: float,
        gamma: float,
        kappa: float = 0.0,
        tokens: TokenDistribution | None = None,
        live: LiveEdges | None = None,
        prior: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, float]:
        """(items, p(item|group) for the listed items, rest coefficient): an unlisted item i has
        p = rest * prior_i. With ``kappa`` > 0 and a token distribution, the whole-history part
        is smoothed toward it as well (its items join the listed ones). ``live`` adds the clicks
        stored since training (``indexer.cf.live``), ``prior`` replaces the trained prior."""
        items, a, r = self.edges(group)
        ta, tr = float(self.total_all[group]), float(self.total_recent[group])
        if live is not None:
            items, a, r, ta, tr = live.merged(items, a, r, ta, tr)
        if prior is None:
            prior = self.prior
        if kappa <= 0 or tokens is None:
            pa = (a + alpha * prior[items]) / (ta + alpha)
            pr = (r + alpha * prior[items]) / (tr + alpha)
            p = (1 - gamma) * pa + gamma * pr
            rest = (1 - gamma) * alpha / (ta + alpha) + gamma * alpha / (tr + alpha)
            return items, p, float(rest)
        u = np.union1d(items.astype(np.int64), tokens.items)
        a_u = np.zeros(len(u))
        r_u = np.zeros(len(u))
        t_u = np.zeros(len(u))
        a_u[np.searchsorted(u, items)] = a
        r_u[np.searchsorted(u, items)] = r
        t_u[np.searchsorted(u, tokens.items)] = tokens.p
        pu = prior[u]
        pa = (a_u + alpha * pu + kappa * (t_u + tokens.rest * pu)) / (ta + alpha + kappa)
        pr = (r_u + alpha * pu) / (tr + alpha)
        p = (1 - gamma) * pa + gamma * pr
        rest_all = (alpha + kappa * tokens.rest) / (ta + alpha + kappa)
        rest = (1 - gamma) * rest_all + gamma * alpha / (tr + alpha)
        return u, p, float(rest)

    def save(self, path: Path) -> None:
        np.savez(
            path,
            ptr=self.ptr,
            item=self.item,
            all=self.all,
            recent=self.recent,
            total_all=self.total_all,
            total_recent=self.total_recent,
            prior=self.prior,
        )

    @classmethod
    def load(cls, path: Path) -> QueryGraph:
        with np.load(path, allow_pickle=False) as z:
            return cls(**{k: z[k] for k in z.files})


def item_prior(item: np.ndarray, weight: np.ndarray, n_items: int) -> np.ndarray:
    """Popularity distribution with a floor, so that every item (cold ones too) has p > 0."""
    pop = np.bincount(item, weights=weight, minlength=n_items).astype(np.float64)
    floor = PRIOR_FLOOR * max(pop.sum(), 1.0) / max(n_items, 1)
    pop += floor
    return pop / pop.sum()


def item_activity(item: np.ndarray, w_all: np.ndarray, w_recent: np.ndarray, n_items: int) -> np.ndarray:
    """(2, n_items): weighted clicks per item, whole history and recent (the trend's inputs)."""
    return np.stack(
        [
            np.bincount(item, weights=w_all, minlength=n_items).astype(np.float64),
            np.bincount(item, weights=w_recent, minlength=n_items).astype(np.float64),
        ]
    )


def trend_from_totals(a: np.ndarray, r: np.ndarray, pseudo: float = TREND_PSEUDO) -> np.ndarray:
    """The trend of items whose whole-history and recent weighted clicks are ``a`` and ``r``
    (``item_activity``): log((recent clicks + c) / (clicks the whole-history share predicts + c))
    per item; 0 when an item has no events (cold items neither rise nor fall)."""
    if a.sum() <= 0:
        return np.zeros(len(a))
    expected = r.sum() * a / a.sum()
    return np.where(a > 0, np.log((r + pseudo) / (expected + pseudo)), 0.0)


def build_query_graph(
    group: np.ndarray,
    item: np.ndarray,
    w_all: np.ndarray,
    w_recent: np.ndarray,
    n_groups: int,
    n_items: int,
    *,
    max_items_per_query: int = 1000,
) -> QueryGraph:
    """Aggregate weighted events (group -1 = no query: counted in the prior only)."""
    prior = item_prior(item, w_recent, n_items)
    has_q = group >= 0
    key = group[has_q].astype(np.int64) * n_items + item[has_q]
    uniq, inv = np.unique(key, return_inverse=True)
    a = np.bincount(inv, weights=w_all[has_q], minlength=len(uniq))
    r = np.bincount(inv, weights=w_recent[has_q], minlength=len(uniq))
    g, i = uniq // n_items, uniq % n_items
    order = np.lexsort((i, -r, -a, g))  # per group: most clicked first
    g, i, a, r = g[order], i[order], a[order], r[order]
    counts = np.bincount(g, minlength=n_groups)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    keep = (np.arange(len(g)) - starts[g]) < max_items_per_query
    g, i, a, r = g[keep], i[keep], a[keep], r[keep]
    ptr = np.zeros(n_groups + 1, dtype=np.int64)
    ptr[1:] = np.cumsum(np.bincount(g, minlength=n_groups))
    return QueryGraph(
        ptr=ptr,
        item=i.astype(np.int32),
        all=a.astype(np.float32),
        recent=r.astype(np.float32),
        total_all=np.bincount(group[has_q], weights=w_all[has_q], minlength=n_groups).astype(np.float64),
        total_recent=np.bincount(group[has_q], weights=w_recent[has_q], minlength=n_groups).astype(
            np.float64
        ),
        prior=prior,
    )
