"""Deterministic train/test splits of the shared evaluation sets.

Anything tuned on Home Depot queries (fusion weights, re-ranker training, thresholds) must be
tuned on the train half and reported on the test half; hashing the query text keeps the split
stable across runs, machines and file orderings, and puts repeated queries on the same side.
"""

from __future__ import annotations

import hashlib
from typing import Literal


def homedepot_split(text: str) -> Literal["train", "test"]:
    """'test' when sha1 of the stripped, lower-cased query text is odd, else 'train'."""
    digest = hashlib.sha1(text.strip().lower().encode("utf-8")).hexdigest()
    return "test" if int(digest, 16) % 2 == 1 else "train"
