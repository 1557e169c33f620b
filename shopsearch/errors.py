"""The whole error hierarchy, in one place.

Every error a user can cause derives from :class:`ShopSearchError` and carries a message that
names the file, row, field or item involved, so the CLI and the API can show it as-is
(no stack traces). The API maps each class to an HTTP status through ``http_status``.

    ShopSearchError
    ├── ConfigError            bad setting or unknown backend/model name       (400)
    ├── CatalogError           a catalog file cannot be read at all            (422)
    ├── MediaError             an image/video cannot be decoded or is refused  (415)
    ├── EncoderError           a model cannot be loaded or run                 (500, not user input)
    ├── IndexNotFoundError     no index at the given directory                 (404)
    ├── IndexCorruptError      index files are unreadable / incompatible       (500)
    ├── ItemNotFoundError      unknown item id                                 (404)
    ├── InvalidQueryError      query/filter values that cannot be served       (422)
    └── ClusterUnavailableError  a remote engine (OpenSearch) cannot be reached,
                               times out or keeps answering 429/5xx            (503)
"""

from __future__ import annotations


class ShopSearchError(Exception):
    """Base class: a user-facing error with a clear message."""

    http_status: int = 400

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field  # the request field at fault, when one is (API: the error's "fields")


class ConfigError(ShopSearchError):
    http_status = 400


class CatalogError(ShopSearchError):
    http_status = 422


class MediaError(ShopSearchError):
    http_status = 415


class EncoderError(ShopSearchError):
    http_status = 500


class IndexNotFoundError(ShopSearchError):
    http_status = 404


class IndexCorruptError(ShopSearchError):
    http_status = 500


class ItemNotFoundError(ShopSearchError):
    http_status = 404


class InvalidQueryError(ShopSearchError):
    http_status = 422


class ClusterUnavailableError(ShopSearchError):
    """The cluster cannot be reached, times out, or keeps answering 429/5xx after the retries."""

    http_status = 503
