"""Paired significance tests between two runs' per-query scores.

Both tests are two-sided, paired over the same queries, and deterministic for a given seed.
p-values use the (count + 1) / (n + 1) estimate, so they are never exactly 0 and identical runs
get p = 1.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

_CHUNK = 1000
_REL_TOL = 1e-9


def _diffs(a: Sequence[float], b: Sequence[float]) -> np.ndarray:
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"paired tests need two equal-length score lists, got {x.shape} and {y.shape}")
    return x - y


def _at_least(stats: np.ndarray, observed: float) -> int:
    # float noise in the resampled means must not turn "as extreme" into "less extreme"
    return int(np.count_nonzero(stats >= observed - _REL_TOL * max(observed, 1e-12)))


def randomization_test(
    a: Sequence[float], b: Sequence[float], *, n_resamples: int = 10_000, seed: int = 0
) -> float:
    """Fisher's paired randomisation test: under the null the sign of each per-query difference is
    arbitrary; p = share of sign flips whose |mean difference| reaches the observed one."""
    d = _diffs(a, b)
    if len(d) == 0:
        return 1.0
    observed = abs(float(d.mean()))
    rng = np.random.default_rng(seed)
    extreme = 0
    for start in range(0, n_resamples, _CHUNK):
        m = min(_CHUNK, n_resamples - start)
        signs = rng.integers(0, 2, size=(m, len(d)), dtype=np.int8) * 2 - 1
        extreme += _at_least(np.abs(signs @ d) / len(d), observed)
    return (extreme + 1) / (n_resamples + 1)


@dataclass(frozen=True)
class BootstrapResult:
    delta: float  # mean(a - b)
    ci_low: float
    ci_high: float
    p: float


def bootstrap_test(
    a: Sequence[float],
    b: Sequence[float],
    *,
    n_resamples: int = 10_000,
    seed: int = 0,
    confidence: float = 0.95,
) -> BootstrapResult:
    """Paired bootstrap over queries: a percentile confidence interval of the mean difference and
    the p-value of the shifted (null-centred) bootstrap distribution (Sakai 2006)."""
    d = _diffs(a, b)
    if len(d) == 0:
        return BootstrapResult(0.0, 0.0, 0.0, 1.0)
    mean = float(d.mean())
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)
    for start in range(0, n_resamples, _CHUNK):
        m = min(_CHUNK, n_resamples - start)
        idx = rng.integers(0, len(d), size=(m, len(d)))
        means[start : start + m] = d[idx].mean(axis=1)
    extreme = _at_least(np.abs(means - mean), abs(mean))
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return BootstrapResult(mean, float(low), float(high), (extreme + 1) / (n_resamples + 1))


def compare_to_baseline(
    per_query: Mapping[str, Mapping[str, Mapping[str, float]]],
    baseline: str,
    qids: Sequence[str],
    *,
    metric: str = "ndcg@10",
    n_resamples: int = 10_000,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Each run against ``baseline`` on ``metric``: delta, 95% CI, both p-values, and the number
    of queries it wins, ties and loses. ``per_query`` is run -> qid -> metric -> value."""
    base = [per_query[baseline][q][metric] for q in qids]
    out: dict[str, dict[str, float]] = {}
    for name, values in per_query.items():
        if name == baseline:
            continue
        run = [values[q][metric] for q in qids]
        boot = bootstrap_test(run, base, n_resamples=n_resamples, seed=seed)
        d = _diffs(run, base)
        out[name] = {
            **asdict(boot),
            "p_randomization": randomization_test(run, base, n_resamples=n_resamples, seed=seed),
            "p_bootstrap": boot.p,
            "wins": int(np.count_nonzero(d > 1e-12)),
            "ties": int(np.count_nonzero(np.abs(d) <= 1e-12)),
            "losses": int(np.count_nonzero(d < -1e-12)),
        }
        del out[name]["p"]
    return out
