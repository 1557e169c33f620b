"""shopsearch: multimodal e-commerce search.

The root layer holds only what every stage shares: settings and the error hierarchy.
Pipeline stages live in the sibling packages ``indexer``, ``retriever``, ``reranker``, ``api``.
"""

from shopsearch.errors import (
    CatalogError,
    ConfigError,
    EncoderError,
    IndexCorruptError,
    IndexNotFoundError,
    InvalidQueryError,
    ItemNotFoundError,
    MediaError,
    ShopSearchError,
)
from shopsearch.settings import Settings, load_settings

__version__ = "0.1.0"

__all__ = [
    "CatalogError",
    "ConfigError",
    "EncoderError",
    "IndexCorruptError",
    "IndexNotFoundError",
    "InvalidQueryError",
    "ItemNotFoundError",
    "MediaError",
    "Settings",
    "ShopSearchError",
    "__version__",
    "load_settings",
]
