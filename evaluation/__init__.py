"""Offline evaluation: graded-relevance metrics, significance tests, perturbations, reports.

The metric, file and test modules are pure (no engine import), so benchmarks can score any run
file; ``runner`` drives the engine and ``report`` draws the plots.
"""

from evaluation.metrics import (
    CURVE_KS,
    average_precision,
    condense,
    evaluate_query,
    evaluate_run,
    mean_metrics,
    metric_names,
    ndcg,
    no_relevant,
    recall,
    recall_curve,
    reciprocal_rank,
    unjudged_share,
)
from evaluation.perturb import PERTURBATIONS, perturb
from evaluation.qrels import read_image_queries, read_qrels, read_queries, read_run, write_run
from evaluation.report import write_report
from evaluation.runner import (
    RUN_NAMES,
    EvalConfig,
    EvalResult,
    QuerySet,
    Ranker,
    evaluate,
    load_query_set,
    save,
)
from evaluation.significance import BootstrapResult, bootstrap_test, compare_to_baseline, randomization_test

__all__ = [
    "CURVE_KS",
    "PERTURBATIONS",
    "RUN_NAMES",
    "BootstrapResult",
    "EvalConfig",
    "EvalResult",
    "QuerySet",
    "Ranker",
    "average_precision",
    "bootstrap_test",
    "compare_to_baseline",
    "condense",
    "evaluate",
    "evaluate_query",
    "evaluate_run",
    "load_query_set",
    "mean_metrics",
    "metric_names",
    "ndcg",
    "no_relevant",
    "perturb",
    "randomization_test",
    "read_image_queries",
    "read_qrels",
    "read_queries",
    "read_run",
    "recall",
    "recall_curve",
    "reciprocal_rank",
    "save",
    "unjudged_share",
    "write_report",
    "write_run",
]
