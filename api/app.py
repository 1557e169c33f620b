"""The HTTP API and the web page.

Every error leaves as JSON ``{"error": {"type": ..., "message": ...}}``: user errors with the
status their :class:`ShopSearchError` subclass names, unexpected ones as a logged 500 without a
stack trace. Search and write endpoints are plain ``def`` functions, so FastAPI runs them in its
thread pool and concurrent clients are served in parallel (the index serialises writes itself).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import mimetypes
import re
import secrets
import threading
import time
import unicodedata
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Depends, FastAPI, File, Form, Header, Query, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from swagger_ui_bundle import swagger_ui_path

from indexer.filters import Filters
from indexer.media import check_media_file, is_remote, is_within_roots, unsupported_format
from indexer.product import Product
from indexer.report import IngestReport
from indexer.store import PendingSender
from reranker.pipeline import MAX_OFFSET, MAX_PAGE, SearchPipeline, SearchRequest, SearchResponse
from retriever.search import MAX_QUERY_CHARS
from shopsearch.errors import ItemNotFoundError, MediaError, ShopSearchError
from shopsearch.settings import Settings, load_settings

log = logging.getLogger("shopsearch.api")

STATIC_DIR = Path(__file__).resolve().parent / "static"
DOCS_ASSETS = "/docs-assets"  # the Swagger UI files of the swagger-ui-bundle package
MAX_BATCH = 1000  # items per POST /items: bounds the time one request holds the write lock
_MULTIPART_SLACK = 64 * 1024  # boundary lines and form fields around an uploaded photo
_READ_CHUNK = 256 * 1024

# Magic numbers of the photo formats the decoder accepts: a quick, cheap refusal of text files
# and other non-images before anything reaches Pillow.
_IMAGE_SIGNATURES: tuple[bytes, ...] = (
    b"\xff\xd8\xff",  # JPEG
    b"\x89PNG\r\n\x1a\n",
    b"GIF87a",
    b"GIF89a",
    b"BM",
    b"II*\x00",  # TIFF little endian
    b"MM\x00*",  # TIFF big endian
)

_ERROR_TYPES = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    406: "NotAcceptable",
    413: "PayloadTooLarge",
    415: "UnsupportedMediaType",
    422: "ValidationError",
    429: "TooManyRequests",
    500: "InternalError",
}

# A Content-Security-Policy for the page: everything from this server, nothing from elsewhere.
_PAGE_CSP = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


# ====================================================================== request / response models
_SUB_RESOURCE = re.compile(r"/(?:image(?:/\d+)?|similar)$")  # GET /items/{id}/... routes
ItemId = Annotated[str, PathParam(min_length=1, max_length=512, pattern=r"\S", description="The product id.")]


class FiltersIn(BaseModel):
    """Structured filters; ``brand`` and ``brands`` both accept one name or a list."""

    model_config = ConfigDict(extra="forbid")

    category: str | None = Field(None, max_length=1000)
    brand: str | list[str] | None = None
    brands: str | list[str] | None = None
    price_min: float | None = Field(None, ge=0, allow_inf_nan=False)
    price_max: float | None = Field(None, ge=0, allow_inf_nan=False)
    attributes: dict[str, str | int | float | bool] | None = None

    def to_filters(self) -> Filters:
        brands: list[str] = []
        for value in (self.brand, self.brands):
            if isinstance(value, str):
                brands.append(value)
            elif value:
                brands.extend(value)
        data: dict[str, Any] = {
            "category": self.category,
            "brands": [b for b in brands if b.strip()],
            "price_min": self.price_min,
            "price_max": self.price_max,
            "attributes": self.attributes,
        }
        return Filters.from_dict({k: v for k, v in data.items() if v not in (None, [], {})})


class SearchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str | None = Field(
        None, max_length=MAX_QUERY_CHARS, description="Free text; empty or missing = browse."
    )
    k: int = Field(10, ge=1, le=MAX_PAGE, description="Page size.")
    offset: int = Field(0, ge=0, le=MAX_OFFSET, description="Results to skip (pagination).")
    filters: FiltersIn | None = None
    explain: bool = Field(False, description="Add per-source ranks and scores to every result.")
    spell_correction: bool | None = Field(
        None,
        description="Search misspelled words and units as the catalog spells them (default: the "
        "server's setting); false searches the query exactly as typed.",
    )
    # --- collaborative filtering
    user_id: str | None = Field(
        None, min_length=1, max_length=512, description="Shopper id: personalises the 'cf' source."
    )


class SearchResultOut(BaseModel):
    id: str
    score: float
    title: str
    brand: str
    category: str
    price: float | None
    image_url: str | None
    attributes: dict[str, Any]
    explain: dict[str, Any] | None = None


class SearchOut(BaseModel):
    results: list[SearchResultOut]
    total: int
    offset: int
    k: int
    facets: dict[str, Any]
    took_ms: float
    corrected_query: str | None = Field(
        None, description="The query searched instead of the one sent, when spelling correction changed it."
    )
    corrections: list[dict[str, str]] = Field(
        default_factory=list, description="Each changed word: {'from': typed, 'to': catalog word}."
    )
    did_you_mean: str | None = Field(
        None,
        description="A query the catalog spells differently, offered but not searched: common words "
        "no product uses (e.g. 'drill' in an electronics shop) are searched as typed.",
    )


class ProductIn(BaseModel):
    """A product as clients send it. ``image`` may be one path or a list (``images`` is accepted
    too, so the output of ``GET /items/{id}`` can be sent back unchanged)."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(None, min_length=1, max_length=512)
    title: str = Field("", max_length=2000)
    description: str = Field("", max_length=100_000)
    brand: str = Field("", max_length=500)
    category: str = Field("", max_length=1000)
    categories: list[str] = Field(default_factory=list, max_length=100)
    price: float | None = Field(None, ge=0, allow_inf_nan=False)
    attributes: dict[str, str | int | float | bool] = Field(default_factory=dict, max_length=500)
    image: str | list[str] | None = None
    images: list[str] | None = None
    video: str | None = Field(None, max_length=4096)
    image_urls: list[str] | None = Field(None, description="Read-only (GET output); ignored on input.")

    @model_validator(mode="after")
    def _has_content(self) -> ProductIn:
        if self.id is not None and not self.id.strip():
            raise ValueError("id must not be blank")
        if not (self.title.strip() or self.description.strip() or self.image or self.images or self.video):
            raise ValueError("a product needs a title, a description, an image or a video")
        return self

    def media_refs(self) -> list[tuple[str, str]]:
        """(field, path) of every image given, the field as the client wrote it ("images.1")."""
        refs: list[tuple[str, str]] = []
        for name, value in (("image", self.image), ("images", self.images)):
            if isinstance(value, str):
                refs.append((name, value))
            elif value:
                refs.extend((f"{name}.{n}", v) for n, v in enumerate(value))
        return [(f, r) for f, r in refs if r.strip()]


# --- collaborative filtering
class EventsIn(BaseModel):
    """Interaction events; each one is validated on its own (bad ones are reported, not fatal)."""

    model_config = ConfigDict(extra="forbid")

    events: list[dict[str, Any]] = Field(..., min_length=1, max_length=MAX_BATCH)


# --- end collaborative filtering


class BatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[ProductIn] = Field(..., min_length=1, max_length=MAX_BATCH)


# ====================================================================== JSON
def _json_default(value: Any) -> Any:
    # numpy scalars and arrays from the engines; anything else is a bug worth a clear message
    if hasattr(value, "item") and callable(value.item):
        return value.item() if getattr(value, "ndim", 0) == 0 else value.tolist()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


class _JSON(JSONResponse):
    """Compact JSON that also accepts numpy values (scores, counts) from the engines."""

    def render(self, content: Any) -> bytes:
        return json.dumps(
            content, ensure_ascii=False, allow_nan=False, separators=(",", ":"), default=_json_default
        ).encode("utf-8")


# ====================================================================== errors
def _error(status: int, message: str, type_: str | None = None, **extra: Any) -> JSONResponse:
    body: dict[str, Any] = {"type": type_ or _ERROR_TYPES.get(status, "Error"), "message": message}
    body.update(extra)
    return _JSON({"error": body}, status_code=status)


def _field_name(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header", "form"):
        parts = parts[1:]
    return ".".join(parts)


_UNION_TAG = re.compile(r"^(str|int|float|bool|list\[.*\]|dict\[.*\]|tuple\[.*\]|[a-z_]+\[.*\])$")


def _collapse_unions(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """pydantic reports a failed ``str | list[str]`` once per member ('image.str', 'image.list[str].0');
    one line per field, naming the accepted types, reads better."""
    out: list[dict[str, Any]] = []
    merged: dict[tuple[Any, ...], dict[str, Any]] = {}
    for err in errors:
        loc = tuple(err.get("loc", ()))
        cut = next((i for i, p in enumerate(loc) if isinstance(p, str) and _UNION_TAG.match(p)), None)
        if cut is None:
            out.append(err)
            continue
        base, tag = loc[:cut], loc[cut]
        entry = merged.get(base)
        if entry is None:
            entry = merged[base] = {"loc": base, "type": "union", "tags": []}
            out.append(entry)
        if tag not in entry["tags"]:
            entry["tags"].append(tag)
    for entry in merged.values():
        tags = entry.pop("tags")
        entry["msg"] = "must be " + (
            " or ".join(tags) if len(tags) < 3 else ", ".join(tags[:-1]) + " or " + tags[-1]
        )
    return out


def _describe_validation(errors: list[dict[str, Any]]) -> list[dict[str, str]]:
    fields = []
    for err in _collapse_unions(errors):
        loc = tuple(err.get("loc", ()))
        msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        kind = err.get("type", "")
        if kind == "json_invalid":
            detail = (err.get("ctx") or {}).get("error", "")
            name, msg = "body", f"request body is not valid JSON ({detail})" if detail else "not valid JSON"
        elif kind == "extra_forbidden":
            name, msg = _field_name(loc), "unknown field"
        else:
            name = _field_name(loc) or "body"
            if msg.startswith("Expected UploadFile"):  # a form field sent as text, not as a file
                msg = "must be a file part of a multipart/form-data body (with a filename), not text"
            elif name == "body" and kind == "missing":
                msg = "a request body is required"
            elif name == "body" and kind in ("model_attributes_type", "dict_type"):
                msg = "the request body must be a JSON object"
        fields.append({"field": name, "message": msg})
    return fields


def _validation_error(field: str, message: str) -> RequestValidationError:
    """A 422 raised by endpoint code, formatted like FastAPI's own."""
    return RequestValidationError(
        [{"loc": ("body", *field.split(".")), "msg": message, "type": "value_error"}]
    )


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        fields = _describe_validation(list(exc.errors()))
        message = (
            "; ".join(
                f["message"] if f["field"] == "body" else f"{f['field']}: {f['message']}" for f in fields
            )
            or "invalid request"
        )
        return _error(422, message, fields=fields)

    @app.exception_handler(StarletteHTTPException)
    async def _on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"no route {request.method} {request.url.path}"
        elif exc.status_code == 413:
            message = f"request body too large: {message}" if "limit" not in message else message
        response = _error(exc.status_code, message)
        for name, value in (exc.headers or {}).items():
            response.headers[name] = value
        return response

    @app.exception_handler(ShopSearchError)
    async def _on_shopsearch(request: Request, exc: ShopSearchError) -> JSONResponse:
        if exc.http_status >= 500:
            log.error(
                "%s %s failed: %s: %s", request.method, request.url.path, type(exc).__name__, exc.message
            )
        extra = {"fields": [{"field": exc.field, "message": exc.message}]} if exc.field else {}
        return _error(exc.http_status, exc.message, type(exc).__name__, **extra)


class _CatchAll:
    """Last line: any exception nobody handled becomes a logged, trace-free JSON 500."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_tracking(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_tracking)
        except Exception:
            log.exception("unhandled error in %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise
            await _error(500, "internal error; the server log has the details")(scope, receive, send)


class _BodyLimit:
    """Refuse request bodies over the limit without buffering them: by Content-Length before
    reading anything, and by counting chunks for streamed (chunked) bodies.

    ``max_bytes`` is the hard cap (the upload limit plus room for the multipart envelope);
    messages quote ``nominal``, the limit the operator configured."""

    def __init__(self, app: ASGIApp, max_bytes: int, nominal: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.nominal = nominal

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    await _error(400, "invalid Content-Length header")(scope, receive, send)
                    return
                if length > limit:
                    await _error(413, self._message(f"{length:,} bytes"))(scope, receive, send)
                    return
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise StarletteHTTPException(
                        413, self._message(f"more than {self.nominal:,} bytes were sent")
                    )
            return message

        async def send_tracking(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, send_tracking)
        except StarletteHTTPException as exc:  # raised where no exception handler was in reach
            if started or exc.status_code != 413:
                raise
            await _error(413, str(exc.detail))(scope, receive, send)

    def _message(self, what: str) -> str:
        return f"request body too large ({what}); the limit is {self.nominal:,} bytes"


# ====================================================================== metrics
class _Metrics:
    """One registry per app, so several apps (tests) never share counters."""

    def __init__(self, pipeline: SearchPipeline) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "shopsearch_http_requests",
            "HTTP requests by route and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "shopsearch_http_request_duration_seconds",
            "HTTP request latency by route.",
            ["method", "route"],
            registry=self.registry,
        )
        self.search_latency = Histogram(
            "shopsearch_search_duration_seconds",
            "Search pipeline latency by query kind.",
            ["kind"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
        )
        self.searches = Counter(
            "shopsearch_searches", "Searches served by query kind.", ["kind"], registry=self.registry
        )
        self.zero_results = Counter(
            "shopsearch_zero_result_searches",
            "Searches that found nothing.",
            ["kind"],
            registry=self.registry,
        )
        items = Gauge("shopsearch_index_items", "Live items in the index.", registry=self.registry)
        items.set_function(lambda: len(pipeline.index.table))


class _MetricsMiddleware:
    def __init__(self, app: ASGIApp, metrics: _Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        t0 = time.perf_counter()

        async def send_tracking(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_tracking)
        finally:
            route = scope.get("route")
            # route templates, never raw paths: item ids must not explode the label set
            if route is not None and hasattr(route, "path"):
                label = route.path
            elif scope.get("path", "").startswith(("/static/", f"{DOCS_ASSETS}/")):
                label = "/" + scope["path"].split("/")[1]
            else:
                label = "unmatched"
            method = scope.get("method", "")
            self.metrics.requests.labels(method, label, str(status)).inc()
            self.metrics.latency.labels(method, label).observe(time.perf_counter() - t0)


class _SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                if b"x-content-type-options" not in names:
                    headers.append((b"x-content-type-options", b"nosniff"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


# ====================================================================== health
class _LexicalHealth:
    """Whether a remote BM25 engine (OpenSearch) can answer, for /health: one cheap probe (an empty
    search, ``timeout_s`` per node, no retry, no backoff) at most every ``ttl_s`` seconds, whatever
    the polling rate; concurrent polls wait for the probe in flight instead of sending their own.
    Embedded engines (tantivy) have no probe and are not checked."""

    def __init__(self, ttl_s: float = 5.0, timeout_s: float = 2.0) -> None:
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._cached: tuple[object, float, str | None] | None = None  # (engine, checked at, problem)

    def problem(self, lexical: object) -> str | None:
        """Why the engine cannot serve searches now (None: it can, or it is embedded)."""
        probe = getattr(lexical, "health_check", None)
        if probe is None:
            return None
        with self._lock:
            cached = self._cached
            # a reload swaps the engine (another generation, another index): probe that one
            if cached is not None and cached[0] is lexical and time.monotonic() - cached[1] < self.ttl_s:
                return cached[2]
            try:
                problem = probe(self.timeout_s)
            except Exception as exc:  # noqa: BLE001 - a probe that breaks is an unhealthy engine
                problem = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
            self._cached = (lexical, time.monotonic(), problem)
            return problem

    def clear(self) -> None:
        with self._lock:
            self._cached = None


# ====================================================================== helpers
def _item_base(request: Request) -> str:
    return request.scope.get("root_path", "").rstrip("/") + "/items/"


def _image_url(request: Request, product: Product) -> str | None:
    return f"{_item_base(request)}{quote(product.id, safe='')}/image" if product.images else None


def _finite(value: float | None) -> float | None:
    return value if value is None or math.isfinite(value) else None


def _product_out(request: Request, product: Product) -> dict[str, Any]:
    out = product.to_dict()
    out["price"] = _finite(product.price)
    base = f"{_item_base(request)}{quote(product.id, safe='')}/image"
    out["image_urls"] = [base if n == 0 else f"{base}/{n}" for n in range(len(product.images))]
    return out


def _response_out(request: Request, resp: SearchResponse) -> dict[str, Any]:
    results = []
    for r in resp.results:
        p = r.product
        item: dict[str, Any] = {
            "id": r.id,
            "score": r.score,
            "title": p.title,
            "brand": p.brand,
            "category": p.category,
            "price": _finite(p.price),
            "image_url": _image_url(request, p),
            "attributes": p.attributes,
        }
        if r.explain is not None:
            item["explain"] = r.explain
        results.append(item)
    return {
        "results": results,
        "total": resp.total,
        "offset": resp.offset,
        "k": resp.k,
        "facets": resp.facets,
        "took_ms": resp.took_ms,
        **resp.spelling_fields(),
    }


def _read_upload(upload: UploadFile, limit: int) -> bytes:
    """Read at most ``limit`` bytes; one byte more means the file is too large (413)."""
    if upload.size is not None and upload.size > limit:
        raise StarletteHTTPException(413, f"image is {upload.size:,} bytes; the limit is {limit:,} bytes")
    upload.file.seek(0)
    chunks: list[bytes] = []
    total = 0
    while True:
        chunk = upload.file.read(min(_READ_CHUNK, limit + 1 - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
        if total > limit:
            raise StarletteHTTPException(413, f"image is larger than the limit of {limit:,} bytes")
    return b"".join(chunks)


def _looks_like_image(data: bytes) -> bool:
    if data.startswith(_IMAGE_SIGNATURES):
        return True
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return True
    return data[4:8] == b"ftyp" and data[8:12] in (b"avif", b"avis", b"mif1", b"msf1")


# ====================================================================== the app
def create_app(
    pipeline: SearchPipeline | None = None,
    *,
    settings: Settings | None = None,
    index_dir: Path | None = None,
) -> FastAPI:
    """Build the API over a pipeline (opened from ``index_dir`` when none is given).

    A pipeline passed in stays the caller's to close; one opened here is closed at shutdown.
    ``settings`` supplies the API options (key, CORS, upload limit, media roots); it defaults to
    the pipeline's.
    """
    owned = pipeline is None
    if pipeline is None:
        settings = settings or load_settings()
        pipeline = SearchPipeline.open(Path(index_dir or settings.index_dir), settings)
    settings = settings or pipeline.settings
    metrics = _Metrics(pipeline)
    # BM25 operations a remote engine could not take go out once it answers again, not with the
    # next write (which may never come)
    pending_sender = PendingSender(pipeline.index)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # --- collaborative filtering: new clicks and generations are read off the query path
        pipeline.retriever.cf.follow()
        pending_sender.start()
        yield
        pending_sender.stop()
        pipeline.retriever.cf.close()
        if event_store:  # --- collaborative filtering
            event_store.pop().close()
        if owned:
            pipeline.close()

    event_store: list[Any] = []  # --- collaborative filtering: opened on the first POST /events

    app = FastAPI(
        default_response_class=_JSON,
        title="shopsearch",
        version="0.1.0",
        summary="Multimodal product search: hybrid BM25 + vector retrieval over text and photos.",
        lifespan=lifespan,
        docs_url=None,  # served below from the packaged Swagger UI: no CDN, works offline
        redoc_url=None,
    )
    app.state.pipeline = pipeline
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.pending_sender = pending_sender
    _install_error_handlers(app)

    # outermost last: CORS -> security headers -> metrics -> catch-all -> body limit -> app
    app.add_middleware(
        _BodyLimit, max_bytes=settings.max_upload_bytes + _MULTIPART_SLACK, nominal=settings.max_upload_bytes
    )
    app.add_middleware(_CatchAll)
    app.add_middleware(_MetricsMiddleware, metrics=metrics)
    app.add_middleware(_SecurityHeaders)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=[str(o) for o in settings.cors_origins],
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=["Content-Type", "X-API-Key"],
        )

    def require_key(
        x_api_key: str | None = Header(None, description="Required when an API key is set."),
    ) -> None:
        expected = settings.api_key
        if not expected:
            return
        if x_api_key is None or not secrets.compare_digest(x_api_key.encode(), expected.encode()):
            raise StarletteHTTPException(
                401, "missing or wrong X-API-Key header", headers={"WWW-Authenticate": "X-API-Key"}
            )

    def run_search(request: Request, req: SearchRequest) -> dict[str, Any]:
        kind = "image" if req.image is not None else ("text" if req.text and req.text.strip() else "browse")
        resp = pipeline.search(req)
        metrics.search_latency.labels(kind).observe(resp.took_ms / 1000)
        metrics.searches.labels(kind).inc()
        if resp.total == 0:
            metrics.zero_results.labels(kind).inc()
        return _response_out(request, resp)

    # ------------------------------------------------------------------ search
    @app.post("/search", response_model=SearchOut, tags=["search"])
    def search(request: Request, body: SearchIn) -> JSONResponse:
        """Text search (or browse, without a query) with filters, pagination and facets."""
        filters = body.filters.to_filters() if body.filters else Filters()
        req = SearchRequest(
            text=body.query,
            k=body.k,
            offset=body.offset,
            filters=filters,
            explain=body.explain,
            user_id=body.user_id,
            spell_correction=body.spell_correction,
        )
        return _JSON(run_search(request, req))

    @app.post("/search/image", response_model=SearchOut, tags=["search"])
    def search_image(
        request: Request,
        image: UploadFile = File(..., description="A photo (JPEG, PNG, WebP, GIF, BMP, TIFF)."),
        query: str | None = Form(None, max_length=MAX_QUERY_CHARS),
        k: int = Form(10, ge=1, le=MAX_PAGE),
        offset: int = Form(0, ge=0, le=MAX_OFFSET),
        filters: str | None = Form(None, description="Filters as a JSON object, as in POST /search."),
        explain: bool = Form(False),
        spell_correction: bool | None = Form(None, description="As in POST /search."),
        user_id: str | None = Form(None, max_length=512, description="As in POST /search."),
    ) -> JSONResponse:
        """Search by photo, optionally combined with text."""
        parsed = _parse_filters_field(filters)
        data = _read_upload(image, settings.max_upload_bytes)
        if not data:
            raise _validation_error("image", "the uploaded file is empty")
        name = f"uploaded image {image.filename!r}" if image.filename else "uploaded image"
        if not _looks_like_image(data):
            known = unsupported_format(data[:1024])
            what = f"is in {known} format, which is not supported" if known else "is not an image"
            raise MediaError(f"{name} {what} (expected JPEG, PNG, WebP, GIF, BMP, TIFF or AVIF)")
        req = SearchRequest(
            text=query,
            image=data,
            image_name=name,
            k=k,
            offset=offset,
            filters=parsed,
            explain=explain,
            spell_correction=spell_correction,
            user_id=user_id,
        )
        return _JSON(run_search(request, req))

    # ------------------------------------------------------------------ items
    @app.get("/items/{item_id:path}/image/{n}", tags=["items"], response_class=FileResponse)
    def item_image_n(item_id: ItemId, n: int) -> FileResponse:
        """The item's n-th stored photo (0 = the main one)."""
        return _serve_image(item_id, n)

    @app.get("/items/{item_id:path}/image", tags=["items"], response_class=FileResponse)
    def item_image(item_id: ItemId) -> FileResponse:
        """The item's main stored photo; result cards' ``image_url`` points here."""
        return _serve_image(item_id, 0)

    def _serve_image(item_id: str, n: int) -> FileResponse:
        product = pipeline.get(item_id)
        if n < 0 or n >= len(product.images):
            raise StarletteHTTPException(404, f"item {item_id!r} has no image #{n}")
        path = Path(product.images[n])
        if not is_within_roots(path, _serving_roots()) or not path.is_file():
            raise StarletteHTTPException(404, f"the image of item {item_id!r} is not available")
        media_type, _ = mimetypes.guess_type(path.name)
        if not media_type or not media_type.startswith("image/"):
            media_type = "application/octet-stream"
        return FileResponse(path, media_type=media_type, headers={"Cache-Control": "public, max-age=3600"})

    def _serving_roots() -> list[Path]:
        # every folder the operator allowed media from: the API's and the index's media roots, and
        # the folders of the indexed catalogs (the default root when a build had none)
        roots = [Path(r) for r in (*settings.media_roots, *pipeline.settings.media_roots)]
        return roots + [Path(c).parent for c in pipeline.index.manifest.get("catalogs", [])]

    # --- collaborative filtering
    @app.get("/items/{item_id:path}/similar", tags=["items"])
    def similar_items(
        request: Request, item_id: ItemId, k: int = Query(10, ge=1, le=MAX_PAGE)
    ) -> dict[str, Any]:
        """Items shoppers engaged with together (PMI), then nearest in the CF space; items added
        after the last training are placed by their content vectors (cold start)."""
        index = pipeline.index
        index.maybe_reload()
        with index.reading():
            table = index.table
            hits = pipeline.retriever.cf.similar(item_id, k, table, table.mask(), index.vectors)
            results = [
                {**_product_out(request, product), "score": round(score, 6), "source": source}
                for row, score, source in hits
                if (product := table.rows[row]) is not None
            ]
        return {"id": item_id, "results": results, "cf": pipeline.retriever.cf.info().get("generation")}

    @app.post("/events", tags=["events"], dependencies=[Depends(require_key)])
    def post_events(body: EventsIn) -> dict[str, Any]:
        """Record up to 1000 interactions (view, click, add_to_cart, purchase); durable on return.
        Events without a timestamp get the server's time."""
        from indexer.interactions import EventStore

        if not event_store:
            event_store.append(EventStore(pipeline.index.index_dir, pipeline.settings))
        store = event_store[0]
        table = pipeline.index.table
        report = store.ingest(
            enumerate(body.events),
            "request",
            known_item=lambda i: table.get(i) is not None,
            default_time=time.time(),
        )
        out = report.to_dict()
        out.pop("files", None)
        for issue in out["issues"]:
            issue["field"] = f"events.{issue.pop('row')}" + (f".{issue['field']}" if issue["field"] else "")
            issue.pop("source", None)
        return out

    # --- end collaborative filtering

    @app.get("/items/{item_id:path}", tags=["items"])
    def get_item(request: Request, item_id: ItemId) -> dict[str, Any]:
        """One product as stored (404 when unknown)."""
        return _product_out(request, pipeline.get(item_id))

    @app.put("/items/{item_id:path}", tags=["items"], dependencies=[Depends(require_key)])
    def put_item(request: Request, item_id: ItemId, body: ProductIn) -> JSONResponse:
        """Create or replace one product; visible to the next search."""
        if body.id is not None and body.id != item_id:
            raise _validation_error(
                "id", f"body id {body.id!r} does not match the id in the path {item_id!r}"
            )
        _check_id(item_id, "id")
        product = _to_product(body, item_id, "")
        created = pipeline.index.table.get(item_id) is None
        report = pipeline.upsert([product])
        issues = _issues(report)
        if any(i["action"] == "skipped" for i in issues):
            reasons = "; ".join(i["reason"] for i in issues if i["action"] == "skipped")
            return _error(422, f"item {item_id!r} was not indexed: {reasons}", issues=issues)
        stored = pipeline.get(item_id)
        return _JSON(
            {"id": item_id, "created": created, "issues": issues, "item": _product_out(request, stored)},
            status_code=201 if created else 200,
        )

    @app.post("/items", tags=["items"], dependencies=[Depends(require_key)])
    def upsert_items(body: BatchIn) -> dict[str, Any]:
        """Create or replace up to 1000 products in one write; visible to the next search."""
        report = IngestReport()
        batch: dict[str, Product] = {}
        for n, item in enumerate(body.items):
            if item.id is None:
                raise _validation_error(f"items.{n}.id", "Field required")
            _check_id(item.id, f"items.{n}.id")
            if item.id in batch:
                report.add(
                    "request",
                    id=item.id,
                    field=f"items.{n}.id",
                    reason="the same id appears earlier in this batch; the later item wins",
                    action="replaced",
                )
            batch[item.id] = _to_product(item, item.id, f"items.{n}.")
        existing = {i for i in batch if pipeline.index.table.get(i) is not None}
        report = pipeline.index.upsert(list(batch.values()), report=report)
        issues = _issues(report)
        skipped = {i["id"] for i in issues if i["action"] == "skipped"}
        stored = [i for i in batch if i not in skipped]
        return {
            "received": len(body.items),
            "upserted": len(stored),
            "created": sum(1 for i in stored if i not in existing),
            "updated": sum(1 for i in stored if i in existing),
            "skipped": len(skipped),
            "issues": issues,
        }

    @app.delete("/items/{item_id:path}", tags=["items"], dependencies=[Depends(require_key)])
    def delete_item(item_id: ItemId) -> dict[str, Any]:
        """Delete one product (404 when unknown)."""
        if not pipeline.delete([item_id]):
            raise ItemNotFoundError(f"no item with id {item_id!r}")
        return {"id": item_id, "deleted": True}

    def _check_id(item_id: str, field: str) -> None:
        """An id the item routes could not address again is refused before it is stored."""
        if any(unicodedata.category(c) == "Cc" for c in item_id):
            raise _validation_error(field, "id must not contain control characters (newlines, tabs)")
        if _SUB_RESOURCE.search(item_id):
            raise _validation_error(
                field,
                "id must not end in /image, /image/N or /similar: GET /items/{id}/image would mean "
                "the photo of another item",
            )

    def _to_product(body: ProductIn, item_id: str, prefix: str) -> Product:
        # the item's own stored files may come back as GET gave them (a catalog's folder may lie
        # outside the media roots): no new file is reached through them
        stored = pipeline.index.table.get(item_id)
        own = {*stored.images, stored.video} - {None} if stored is not None else set()
        images = [_check_media(ref, f"{prefix}{field}", "image", own) for field, ref in body.media_refs()]
        video = _check_media(body.video, f"{prefix}video", "video", own) if body.video else None
        return Product(
            id=item_id,
            title=body.title.strip(),
            description=body.description.strip(),
            brand=body.brand.strip(),
            category=body.category,
            categories=list(body.categories),
            price=body.price,
            attributes=dict(body.attributes),
            images=images,
            video=video,
        )

    def _check_media(ref: str, field: str, kind: str, own: set[str | None]) -> str:
        if ref in own:
            return ref
        roots = [Path(r) for r in settings.media_roots]
        if not roots:
            raise _validation_error(
                field,
                f"{kind} paths are refused: the server has no media_roots configured "
                "(set SHOPSEARCH_MEDIA_ROOTS to the folders clients may reference)",
            )
        if is_remote(ref):
            raise _validation_error(
                field, f"{kind} {ref!r}: remote URLs are not fetched; give a path inside the media roots"
            )
        try:
            return str(check_media_file(ref, base_dir=roots[0], roots=roots, kind=kind))
        except MediaError as exc:
            raise _validation_error(field, exc.message) from None

    # ------------------------------------------------------------------ operations
    lexical_health = _LexicalHealth()
    app.state.lexical_health = lexical_health

    @app.get("/health", tags=["operations"])
    def health(response: Response) -> dict[str, Any]:
        """200 "ok" when searches work. With a remote BM25 engine (OpenSearch) that cannot answer:
        503 "unavailable" when text searches need it, 200 "degraded" when they do not (its source
        weight is 0); ``lexical`` names the backend, the reason, and how many written operations
        it has not confirmed yet (``pending``: sent in the background once it answers again).
        Checked at most every few seconds, with a short timeout; HEAD gives the same status
        without a body."""
        index = pipeline.index
        body: dict[str, Any] = {"status": "ok", "generation": index.generation, "items": len(index.table)}
        lexical = index.lexical
        if not hasattr(lexical, "health_check"):
            return body  # embedded (tantivy): nothing remote to check
        backend = str((index.manifest.get("lexical") or {}).get("backend", type(lexical).__name__))
        problem = lexical_health.problem(lexical)
        if problem is None:
            body["lexical"] = {"backend": backend, "status": "ok", "pending": lexical.pending}
            return body
        body["lexical"] = {
            "backend": backend,
            "status": "unavailable",
            "reason": problem,
            "pending": lexical.pending,
        }
        if pipeline.retriever.settings.source_weights.get("bm25", 1.0) > 0:
            body["status"] = "unavailable"  # every text search queries BM25 and would fail with 503
            response.status_code = 503
        else:
            body["status"] = "degraded"  # searches do without BM25; writes keep its half pending
        return body

    app.add_api_route("/health", health, methods=["HEAD"], include_in_schema=False)  # load balancers

    @app.get("/metrics", tags=["operations"], response_class=Response)
    def prometheus_metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/info", tags=["operations"])
    def info() -> dict[str, Any]:
        return pipeline.info()

    @app.post("/admin/reload", tags=["operations"], dependencies=[Depends(require_key)])
    def reload() -> dict[str, Any]:
        """Load the newest published generation now (otherwise picked up within a second)."""
        pipeline.index.reload()
        cf = pipeline.retriever.cf
        return {
            "status": "reloaded",
            "generation": pipeline.index.generation,
            "items": len(pipeline.index.table),
            "cf_generation": cf.reload(),  # --- collaborative filtering
            "cf_error": cf.last_error,  # why a newer published CF generation was refused
        }

    # ------------------------------------------------------------------ web page
    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(
            STATIC_DIR / "index.html",
            media_type="text/html",
            headers={"Content-Security-Policy": _PAGE_CSP, "Cache-Control": "no-cache"},
        )

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title="shopsearch API",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon-32x32.png",
        )

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.mount(DOCS_ASSETS, StaticFiles(directory=swagger_ui_path), name="docs-assets")
    return app


def _parse_filters_field(raw: str | None) -> Filters:
    if raw is None or not raw.strip():
        return Filters()
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise _validation_error("filters", f"not valid JSON ({exc.msg} at char {exc.pos})") from None
    if not isinstance(data, dict):
        raise _validation_error("filters", "must be a JSON object")
    try:
        return FiltersIn.model_validate(data).to_filters()
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", "filters", *e["loc"])} for e in exc.errors()]
        raise RequestValidationError(errors) from None


def _issues(report: IngestReport) -> list[dict[str, Any]]:
    return [{"id": i.id, "field": i.field, "reason": i.reason, "action": i.action} for i in report.issues]


__all__ = ["create_app"]
