"""Lexical (BM25) engine interface: tantivy embedded by default, OpenSearch when configured."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field

from indexer.filters import Filters
from indexer.product import Product


@dataclass(frozen=True)
class LexicalHit:
    id: str
    score: float
    # per-field BM25 contributions when asked for (explain); empty otherwise
    fields: dict[str, float] = field(default_factory=dict)


class LexicalIndex(ABC):
    """BM25 over title, description, brand, category and attribute values, with field boosts,
    English stemming and exact keyword filters (see indexer.filters.Filters).

    Writes (upsert/delete) become visible to search after ``commit()``.
    """

    @abstractmethod
    def upsert(self, products: Sequence[Product]) -> None:
        """Add or replace (by id) documents."""

    @abstractmethod
    def delete(self, ids: Sequence[str]) -> None: ...

    @abstractmethod
    def commit(self) -> None:
        """Persist and make pending writes searchable."""

    @abstractmethod
    def search(
        self, query: str, k: int, filters: Filters | None = None, *, explain: bool = False
    ) -> list[LexicalHit]:
        """Top-k by BM25, filters applied inside the engine (before the cut). Any user text is
        accepted: query-syntax characters are treated as plain text, never an error."""

    @abstractmethod
    def count(self) -> int:
        """Number of live documents."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release file handles/locks."""

    # --- hooks for server-backed engines (OpenSearch); embedded engines keep the no-op defaults

    def publish(self) -> None:  # noqa: B027 - optional hook
        """Called by the store right before this index's generation becomes CURRENT: an engine with
        its own pointer to the live index (OpenSearch's alias) moves it here, atomically."""

    def drop(self) -> None:  # noqa: B027 - optional hook
        """Free what this index holds outside its directory (OpenSearch: the physical index) when the
        store removes its generation."""

    @property
    def pending(self) -> int:
        """Operations written and committed here that the engine has not confirmed yet (a remote
        engine that could not be reached keeps them for a later commit); embedded engines: 0."""
        return 0

    def take_rejected(self) -> list[tuple[str, str]]:
        """(id, reason) of documents the engine refused for good since the last call, so the store
        can report them as ingest issues; they are never counted as indexed."""
        return []
