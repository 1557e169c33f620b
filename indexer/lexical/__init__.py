"""Lexical (BM25) retrieval: the interface and its backends, opened through one factory."""

from __future__ import annotations

from pathlib import Path

from indexer.lexical.base import LexicalHit, LexicalIndex
from indexer.lexical.tantivy_index import TEXT_FIELDS, TantivyIndex, resolve_field_boosts
from shopsearch.errors import ConfigError

BACKENDS: tuple[str, ...] = ("tantivy",)

__all__ = [
    "BACKENDS",
    "TEXT_FIELDS",
    "LexicalHit",
    "LexicalIndex",
    "TantivyIndex",
    "open_lexical_index",
    "resolve_field_boosts",
]


def open_lexical_index(
    path: Path,
    *,
    backend: str = "tantivy",
    field_boosts: dict[str, float] | None = None,
    create: bool = False,
) -> LexicalIndex:
    """Open (or with ``create=True`` create) the lexical index stored at ``path``.

    Raises ConfigError for an unknown backend or bad boosts, IndexNotFoundError when there is no
    index and ``create`` is false, IndexCorruptError when the directory holds something unreadable.
    """
    if backend == "tantivy":
        return TantivyIndex(path, field_boosts=field_boosts, create=create)
    raise ConfigError(f"unknown lexical backend {backend!r} (available: {', '.join(BACKENDS)})")
