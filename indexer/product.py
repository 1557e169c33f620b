"""The product record every stage shares, and its text views."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

AttributeValue = str | int | float | bool


@dataclass
class Product:
    """One catalog item after validation.

    ``images`` and ``video`` are absolute, already-validated paths (a file that failed validation
    is dropped and reported by the ingest step). ``category`` is a path "A > B > C".
    """

    id: str
    title: str = ""
    description: str = ""
    brand: str = ""
    category: str = ""
    categories: list[str] = field(default_factory=list)
    price: float | None = None
    attributes: dict[str, AttributeValue] = field(default_factory=dict)
    images: list[str] = field(default_factory=list)
    video: str | None = None

    def all_categories(self) -> list[str]:
        """Primary category first, then the others, without duplicates."""
        seen: list[str] = []
        for c in [self.category, *self.categories]:
            c = normalize_category(c)
            if c and c not in seen:
                seen.append(c)
        return seen

    def attribute_text(self) -> str:
        return " ".join(f"{k.replace('_', ' ')} {v}" for k, v in self.attributes.items())

    def embedding_text(self) -> str:
        """The text the text encoder sees: the fields a shopper would read, most telling first.

        Short attribute values (colour, material...) go before the description so that a model
        with a 256-token window never truncates them away and a long description cannot drown
        them out.
        """
        attrs = ", ".join(
            f"{k.replace('_', ' ')} {v}" for k, v in self.attributes.items() if len(str(v)) <= 40
        )[:300]
        parts = [self.title, self.brand, self.category.replace(" > ", " "), attrs, self.description]
        return ". ".join(p.strip() for p in parts if p and p.strip())[:2000]

    def has_text(self) -> bool:
        return bool(self.title.strip() or self.description.strip())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Product:
        return cls(
            id=str(data["id"]),
            title=data.get("title") or "",
            description=data.get("description") or "",
            brand=data.get("brand") or "",
            category=data.get("category") or "",
            categories=list(data.get("categories") or []),
            price=data.get("price"),
            attributes=dict(data.get("attributes") or {}),
            images=list(data.get("images") or []),
            video=data.get("video"),
        )


def normalize_category(path: str) -> str:
    """'Men>Tops >  Hoodies' -> 'Men > Tops > Hoodies' so filters match however a catalog spells it."""
    return " > ".join(p.strip() for p in str(path).split(">") if p.strip())


def category_prefixes(path: str) -> list[str]:
    """'A > B > C' -> ['A', 'A > B', 'A > B > C']: a filter on a parent matches its children."""
    parts = [p for p in normalize_category(path).split(" > ") if p]
    return [" > ".join(parts[: i + 1]) for i in range(len(parts))]
