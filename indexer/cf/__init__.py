"""Collaborative filtering from interaction logs: query normalisation and fuzzy matching
(``queries``), the query -> item click graph (``graph``), item co-engagement PMI (``pmi``),
learned factors (``factors``: implicit ALS or torch GMF), the cold-start content mapping
(``coldstart``), the served model (``model``) and training/publishing (``train``)."""

from indexer.cf.model import BlendParams, CFModel, ScoredItems
from indexer.cf.queries import QueryVocab, compact_key, query_key, tokens
from indexer.cf.train import (
    CF_DIR,
    ContentVectors,
    TrainReport,
    content_vectors,
    current_cf,
    fit_model,
    fit_tuned,
    map_at_5,
    publish,
    time_split,
    train_cf,
)

__all__ = [
    "CF_DIR",
    "BlendParams",
    "CFModel",
    "ContentVectors",
    "QueryVocab",
    "ScoredItems",
    "TrainReport",
    "compact_key",
    "content_vectors",
    "current_cf",
    "fit_model",
    "fit_tuned",
    "map_at_5",
    "publish",
    "query_key",
    "time_split",
    "tokens",
    "train_cf",
]
