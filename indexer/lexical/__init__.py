"""Lexical (BM25) retrieval: the interface and its backends, opened through one factory."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from indexer.lexical.base import LexicalHit, LexicalIndex
from indexer.lexical.tantivy_index import TEXT_FIELDS, TantivyIndex, resolve_field_boosts
from shopsearch.errors import ConfigError

if TYPE_CHECKING:
    from shopsearch.settings import Settings

BACKENDS: tuple[str, ...] = ("tantivy", "opensearch")

__all__ = [
    "BACKENDS",
    "TEXT_FIELDS",
    "LexicalHit",
    "LexicalIndex",
    "TantivyIndex",
    "check_lexical_backend",
    "drop_lexical_index",
    "open_lexical_index",
    "resolve_field_boosts",
]


def open_lexical_index(
    path: Path,
    *,
    backend: str = "tantivy",
    field_boosts: dict[str, float] | None = None,
    create: bool = False,
    settings: Settings | None = None,
) -> LexicalIndex:
    """Open (or with ``create=True`` create) the lexical index stored at ``path``.

    For ``backend="opensearch"`` the directory holds only a descriptor naming the cluster-side index;
    the connection comes from ``settings`` (default: ``load_settings()``, i.e. the environment).

    Raises ConfigError for an unknown backend or bad boosts, IndexNotFoundError when there is no
    index and ``create`` is false, IndexCorruptError when the directory holds something unreadable.
    """
    if backend == "tantivy":
        return TantivyIndex(path, field_boosts=field_boosts, create=create)
    # --- OpenSearch (imported lazily: the client library is only needed by that backend)
    if backend == "opensearch":
        from indexer.lexical.opensearch_index import OpenSearchConfig, open_opensearch_index

        config = OpenSearchConfig.from_settings(settings or _default_settings())
        return open_opensearch_index(Path(path), config, field_boosts=field_boosts, create=create)
    raise ConfigError(f"unknown lexical backend {backend!r} (available: {', '.join(BACKENDS)})")


def check_lexical_backend(settings: Settings) -> None:
    """Before a build encodes anything: the configured lexical backend can be used (tantivy
    always; OpenSearch: the cluster answers and accepts our credentials). Found only at the end,
    an unreachable cluster cost the whole encoding (hours on a large catalog)."""
    if settings.lexical_backend != "opensearch":
        return
    from indexer.lexical.opensearch_index import Connection, OpenSearchConfig

    conn = Connection(OpenSearchConfig.from_settings(settings))
    try:
        conn.check_cluster()
    finally:
        conn.close()


def drop_lexical_index(path: Path, settings: Settings | None = None) -> None:
    """Free what a doomed generation's lexical index holds outside its directory (OpenSearch: its
    physical index). Best effort, never raises: the caller removes the directory either way."""
    if not (Path(path) / "opensearch.json").is_file():  # opensearch_index.DESCRIPTOR; tantivy: nothing
        return
    from indexer.lexical.opensearch_index import OpenSearchConfig, drop_opensearch_index

    drop_opensearch_index(Path(path), OpenSearchConfig.from_settings(settings or _default_settings()))


def _default_settings() -> Settings:
    from shopsearch.settings import load_settings

    return load_settings()
