"""Structured filters: one value object understood by every source (lexical, vector, CF)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from indexer.product import normalize_category
from shopsearch.errors import InvalidQueryError


def fold(value: Any) -> str:
    """Case- and space-insensitive key used for keyword matching on every backend."""
    return " ".join(str(value).split()).casefold()


@dataclass(frozen=True)
class Filters:
    """All conditions must hold. ``category`` matches the path or any child of it;
    ``brands`` matches any of them; ``attributes`` are equality on the attribute value
    (for multi-valued attributes written 'a|b|c', any value matches)."""

    category: str | None = None
    brands: tuple[str, ...] = ()
    price_min: float | None = None
    price_max: float | None = None
    attributes: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        # every backend then sees one spelling of the category path
        if self.category is not None:
            object.__setattr__(self, "category", normalize_category(self.category) or None)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Filters:
        """Build from the API/CLI form; raises InvalidQueryError naming the bad field."""
        if not data:
            return cls()
        unknown = set(data) - {"category", "brand", "brands", "price_min", "price_max", "attributes"}
        if unknown:
            raise InvalidQueryError(f"unknown filter field(s): {', '.join(sorted(unknown))}", "filters")
        brands = data.get("brands", data.get("brand")) or ()
        if isinstance(brands, str):
            brands = (brands,)
        prices = {}
        for key in ("price_min", "price_max"):
            v = data.get(key)
            if v is None or v == "":
                prices[key] = None
                continue
            try:
                prices[key] = float(v)
            except (TypeError, ValueError):
                message = f"filter {key} must be a number, got {v!r}"
                raise InvalidQueryError(message, f"filters.{key}") from None
        if prices["price_min"] is not None and prices["price_max"] is not None:
            if prices["price_min"] > prices["price_max"]:
                raise InvalidQueryError("filter price_min is greater than price_max", "filters.price_min")
        attrs = data.get("attributes") or {}
        if not isinstance(attrs, dict):
            message = "filter attributes must be an object of name -> value"
            raise InvalidQueryError(message, "filters.attributes")
        category = data.get("category")
        return cls(
            category=normalize_category(category) if category else None,
            brands=tuple(str(b) for b in brands),
            price_min=prices["price_min"],
            price_max=prices["price_max"],
            attributes=tuple(sorted((str(k), str(v)) for k, v in attrs.items())),
        )

    def is_empty(self) -> bool:
        return not (
            self.category
            or self.brands
            or self.attributes
            or self.price_min is not None
            or self.price_max is not None
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.category:
            out["category"] = self.category
        if self.brands:
            out["brands"] = list(self.brands)
        if self.price_min is not None:
            out["price_min"] = self.price_min
        if self.price_max is not None:
            out["price_max"] = self.price_max
        if self.attributes:
            out["attributes"] = dict(self.attributes)
        return out
