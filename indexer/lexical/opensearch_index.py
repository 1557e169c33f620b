"""BM25 on an OpenSearch cluster, behind the same interface as the embedded tantivy index.

Documents carry the same fields and keyword terms as tantivy's (brand_kw, category_kw prefixes,
attr_kw "name=value", all folded by :func:`indexer.filters.fold` through the helpers of
:mod:`indexer.lexical.tantivy_index`), so a filter selects the same items on both backends.

Query side: user text never reaches a query parser. It is cut into word runs here (at most 64
distinct runs, runs over 40 bytes dropped, as tantivy's ``remove_long(40)``), and each boosted field
gets a ``match`` query (OR of its analysed terms) inside one ``bool``; the score is the sum of the
per-field BM25 scores, exactly like tantivy's query, and bounding the runs bounds the clause count
far below ``indices.query.bool.max_clause_count``. Filters are ``bool.filter`` clauses: they select
before the top-k cut and add nothing to the score. Ties are broken by id, so a page of k is always
the prefix of a page of k + n.

Writes: ``upsert``/``delete`` buffer operations by id (later ones win) and ``commit`` sends them in
``_bulk`` chunks. A chunk that fails as a whole (connection error, timeout, 429, 5xx) is resent with
exponential backoff; inside a 200 response, items that failed with 429/5xx are resent, items refused
for good (mapping errors...) are *rejected*: kept for :meth:`OpenSearchIndex.take_rejected` so the
store reports them, never counted as written. When the retries run out, ``commit`` raises
:class:`ClusterUnavailableError` saying how many operations were confirmed; the rest stay pending.

Nodes: a request whose node refuses the connection is resent at once to the next listed node (the
client's pool has marked that one dead), so every request tries each listed node before it backs
off. A retry logs one short line; the final error is one line naming the URLs.

Generations: a build creates the physical index ``PREFIX-gen-NNNNNN`` (no replicas, refresh off:
fast bulk loading) and :meth:`OpenSearchIndex.publish` turns refresh and replicas back on, then
moves the alias ``PREFIX`` to it with one atomic ``_aliases`` call. Each engine object searches the
physical index of its own generation, so a server that still holds the previous generation keeps
answering from it until it reloads (the store keeps that generation; older ones are dropped).
"""

from __future__ import annotations

import json
import logging
import math
import random
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opensearchpy import OpenSearch
from opensearchpy import exceptions as os_exc

from indexer.filters import Filters, fold
from indexer.items import _PRICE_EDGES
from indexer.lexical.base import LexicalHit, LexicalIndex
from indexer.lexical.tantivy_index import TEXT_FIELDS, _price, attribute_terms, resolve_field_boosts
from indexer.product import Product, category_prefixes, normalize_category
from shopsearch.errors import (
    CatalogError,
    ClusterUnavailableError,
    ConfigError,
    IndexCorruptError,
    IndexNotFoundError,
    InvalidQueryError,
    ShopSearchError,
)

if TYPE_CHECKING:
    from shopsearch.settings import Settings

log = logging.getLogger(__name__)

#: File in a generation's ``lexical/`` directory naming the physical index it stands for.
DESCRIPTOR = "opensearch.json"
#: Bumped whenever the mapping changes; an index with another version must be rebuilt.
MAPPING_VERSION = 1
ANALYZER = "english"
# Same bounds as tantivy's query side (indexer.lexical.tantivy_index).
_MAX_QUERY_TERMS = 64
_MAX_TERM_BYTES = 40
# Deepest result the engine asks for: above the API's offset + page and the candidates setting.
MAX_RESULT_WINDOW = 20_000
# Keyword values longer than this are not indexed as filter terms (Lucene refuses terms > 32 KB).
_KEYWORD_IGNORE_ABOVE = 4096
# upsert() sends the buffer early (without refresh) once it holds this many chunks.
_AUTO_FLUSH_CHUNKS = 8
# OpenSearch's limit on _id.
_MAX_ID_BYTES = 512
_MAX_BACKOFF_S = 30.0
# Word runs as the standard tokenizer sees them: letters/digits/underscore, joined by inner
# apostrophes or dots ("don't", "3.5"); every CJK ideograph or kana is a token of its own.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_RUN = re.compile(rf"[{_CJK}]|(?:(?![{_CJK}])\w)+(?:['’.](?:(?![{_CJK}])\w)+)*")


# ====================================================================== configuration
@dataclass(frozen=True)
class OpenSearchConfig:
    """Connection and write settings; built from :class:`Settings` by :meth:`from_settings`."""

    urls: tuple[str, ...] = ("http://127.0.0.1:9200",)
    user: str | None = None
    password: str | None = None
    api_key: str | None = None
    verify_tls: bool = True
    ca_certs: str | None = None
    timeout_s: float = 10.0
    index_prefix: str = "shopsearch"
    refresh: str = "wait_for"
    bulk_chunk: int = 1000
    max_retries: int = 5
    backoff_s: float = 0.5
    shards: int = 1
    replicas: int = 1

    @classmethod
    def from_settings(cls, settings: Settings) -> OpenSearchConfig:
        return cls(
            urls=tuple(settings.opensearch_urls),
            user=settings.opensearch_user,
            password=settings.opensearch_password,
            api_key=settings.opensearch_api_key,
            verify_tls=settings.opensearch_verify_tls,
            ca_certs=str(settings.opensearch_ca_certs) if settings.opensearch_ca_certs else None,
            timeout_s=settings.opensearch_timeout_s,
            index_prefix=settings.opensearch_index_prefix,
            refresh=settings.opensearch_refresh,
            bulk_chunk=settings.opensearch_bulk_chunk,
            max_retries=settings.opensearch_max_retries,
            backoff_s=settings.opensearch_backoff_s,
            shards=settings.opensearch_shards,
            replicas=settings.opensearch_replicas,
        )

    def where(self) -> str:
        """The URLs for messages, without any user:password@ part."""
        return ", ".join(re.sub(r"//[^/@]*@", "//", url) for url in self.urls)


# ====================================================================== connection
class Connection:
    """One client plus the error policy both OpenSearch engines share: every failure becomes a
    ShopSearchError with a one-line message, and transient ones are retried with backoff."""

    def __init__(self, config: OpenSearchConfig) -> None:
        if config.user is not None and config.api_key is not None:
            raise ConfigError(
                "set either opensearch_user/opensearch_password or opensearch_api_key, not both"
            )
        if (config.user is None) != (config.password is None):
            raise ConfigError("opensearch_user and opensearch_password must be set together")
        self.config = config
        self._unreachable: set[str] = set()  # nodes already reported as skipped
        kwargs: dict[str, Any] = {
            "hosts": list(config.urls),
            "timeout": config.timeout_s,
            # retries are ours (with backoff); the client's own would multiply them
            "max_retries": 0,
            "retry_on_timeout": False,
            "verify_certs": config.verify_tls,
            "ssl_show_warn": config.verify_tls,
        }
        if config.ca_certs:
            if not Path(config.ca_certs).is_file():
                raise ConfigError(f"opensearch_ca_certs: no file at {config.ca_certs}")
            kwargs["ca_certs"] = config.ca_certs
        if config.user is not None:
            kwargs["http_auth"] = (config.user, config.password)
        if config.api_key is not None:
            kwargs["headers"] = {"Authorization": f"ApiKey {config.api_key}"}
        try:
            self.client = OpenSearch(**kwargs)
        except (os_exc.ImproperlyConfigured, ValueError) as exc:
            raise ConfigError(f"opensearch_urls {list(config.urls)}: {exc}") from None

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:  # noqa: BLE001 - closing a pool must never mask the real outcome
            pass

    # ----------------------------------------------------------------- errors
    def classify(
        self, exc: BaseException, what: str, *, timeout_s: float | None = None
    ) -> tuple[bool, ShopSearchError]:
        """(worth retrying, the error to raise if not or if retries run out). Whatever the cluster
        answers is the service's problem, never the API client's: the error carries HTTP 503 (a
        storefront retries or shows its fallback) whatever its class says for the CLI."""
        timeout = self.config.timeout_s if timeout_s is None else timeout_s
        retryable, error = self._classify(exc, what, timeout)
        return retryable, _service_side(error)

    def _classify(self, exc: BaseException, what: str, timeout_s: float) -> tuple[bool, ShopSearchError]:
        where = self.config.where()
        if isinstance(exc, os_exc.SSLError):
            return False, ConfigError(
                f"TLS with OpenSearch at {where} failed during {what}: {_short(exc)}; "
                "set opensearch_ca_certs to the cluster's CA "
                "(or opensearch_verify_tls=false for a test cluster)"
            )
        if isinstance(exc, os_exc.ConnectionTimeout):
            msg = f"OpenSearch at {where} did not answer {what} within {timeout_s:g} s"
            return True, ClusterUnavailableError(msg)
        if isinstance(exc, os_exc.ConnectionError):
            return True, ClusterUnavailableError(
                f"cannot reach OpenSearch at {where} ({what}): {_short(exc)}; "
                "is the cluster running and is opensearch_urls right?"
            )
        if isinstance(exc, os_exc.TransportError):
            status = exc.status_code if isinstance(exc.status_code, int) else 0
            kind, reason = _error_detail(exc.info, exc.error)
            if status == 401:
                return False, ConfigError(
                    f"OpenSearch at {where} rejected the credentials (HTTP 401) during {what}: "
                    "check opensearch_user/opensearch_password or opensearch_api_key"
                )
            if status == 403 and "cluster_block" in kind:
                return False, ShopSearchError(
                    f"OpenSearch refuses writes ({what}): {reason} (a full disk makes indexes read-only)"
                )
            if status == 403:
                return False, ConfigError(
                    f"OpenSearch at {where} denied {what} (HTTP 403: {reason}): "
                    "the user needs read/write/manage rights on the indexes named by opensearch_index_prefix"
                )
            if status == 429 or status >= 500:
                return True, ClusterUnavailableError(
                    f"OpenSearch at {where} is overloaded or failing during {what}: "
                    f"HTTP {status} {kind} {reason}"
                )
            if status == 404:
                return False, IndexNotFoundError(
                    f"OpenSearch: {what}: {reason or kind}; if the index was deleted or the cluster lost "
                    "its data, rebuild it with 'shopsearch index'"
                )
            if status == 413:
                return False, ConfigError(
                    f"OpenSearch refused {what} as too large (HTTP 413): lower opensearch_bulk_chunk"
                )
            return False, ShopSearchError(f"OpenSearch refused {what}: HTTP {status} {kind}: {reason}")
        if isinstance(exc, os_exc.OpenSearchException):
            return False, ShopSearchError(f"OpenSearch client error during {what}: {_short(exc)}")
        return False, ShopSearchError(f"unexpected error talking to OpenSearch during {what}: {_short(exc)}")

    def backoff(self, attempt: int) -> float:
        """Exponential with 'equal jitter': between half and all of base * 2**(attempt-1)."""
        full = min(_MAX_BACKOFF_S, self.config.backoff_s * 2 ** (attempt - 1))
        return full / 2 + random.uniform(0, full / 2)

    def fails_over(self, exc: BaseException, failovers: int) -> bool:
        """Whether to resend a request at once, without backoff, because the node it went to could
        not be reached (refused, reset, unknown host; not a timeout, not TLS): the client's pool
        has put that node on its dead list, so the resend goes to another listed node. At most
        len(urls) - 1 times in a row, so one attempt tries every listed node once."""
        if failovers >= len(self.config.urls) - 1:
            return False
        if not isinstance(exc, os_exc.ConnectionError) or isinstance(
            exc, (os_exc.ConnectionTimeout, os_exc.SSLError)
        ):
            return False
        node = self._node(exc)
        # warned once per node: a node that stays down is skipped quietly afterwards
        level = logging.DEBUG if node in self._unreachable else logging.WARNING
        self._unreachable.add(node)
        log.log(level, "OpenSearch node %s is unreachable (%s); trying the next node", node, _cause(exc))
        return True

    def _node(self, exc: BaseException) -> str:
        """The configured URL (without credentials) of the node a connection error came from."""
        m = re.search(r"host='([^']*)', port=(\d+)", str(exc))
        if not m:
            return "(one of several)"
        host, port = m.groups()
        for url in self.config.urls:
            bare = re.sub(r"//[^/@]*@", "//", url).rstrip("/")
            netloc = bare.split("//", 1)[-1].split("/", 1)[0]
            if netloc in (f"{host}:{port}", f"[{host}]:{port}", host):
                return bare
        return f"{host}:{port}"

    def retry_note(self, what: str, cause: str, attempt: int, retries: int, delay: float) -> None:
        """The one warning line a retry logs; the full message comes once, with the final error."""
        log.warning("OpenSearch: %s failed (%s); retry %d/%d in %.2f s", what, cause, attempt, retries, delay)

    def call(
        self,
        what: str,
        fn: Callable[..., Any],
        *,
        retries: int | None = None,
        timeout_s: float | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run one request; transient failures are retried (``retries`` times, default the setting)
        with backoff, and an unreachable node is skipped at once for the next listed one.
        ``timeout_s`` overrides the configured request timeout for this call."""
        retries = self.config.max_retries if retries is None else retries
        if timeout_s is not None:
            kwargs["request_timeout"] = timeout_s
        attempt = failovers = 0
        while True:
            try:
                return fn(**kwargs)
            except Exception as exc:  # noqa: BLE001 - every failure is classified below
                retryable, error = self.classify(exc, what, timeout_s=timeout_s)
                if not retryable:
                    raise error from None
                if self.fails_over(exc, failovers):
                    failovers += 1
                    continue
                if attempt >= retries:
                    raise _gave_up(error, attempt + 1) from None
                attempt += 1
                failovers = 0  # every retry tries each listed node again
                delay = self.backoff(attempt)
                cause = _cause(exc, timeout_s or self.config.timeout_s)
                self.retry_note(what, cause, attempt, retries, delay)
                time.sleep(delay)

    def check_cluster(self) -> dict[str, Any]:
        """Fail fast, with a clear message, when the cluster is unreachable or refuses us. A node
        that refuses connections is skipped at once; one that times out is not marked dead by the
        client, so every listed node gets an attempt of its own."""
        retries = max(min(1, self.config.max_retries), len(self.config.urls) - 1)
        info = self.call("the connection check", self.client.info, retries=retries)
        version = str(info.get("version", {}).get("number", "?"))
        distribution = info.get("version", {}).get("distribution", "elasticsearch")
        if distribution != "opensearch":
            log.warning("%s answers as %s %s, not OpenSearch", self.config.where(), distribution, version)
        return info

    # ----------------------------------------------------------------- bulk
    def bulk(
        self,
        index: str,
        ops: Sequence[tuple[str, dict[str, Any] | None]],
        *,
        refresh: str | None,
        on_done: Callable[[str, bool, str | None], None],
    ) -> None:
        """Send (id, source-or-None-for-delete) operations in chunks; ``on_done(id, ok, reason)`` is
        called exactly once per operation the cluster confirmed (ok) or refused for good (reason).
        Operations still unconfirmed when the retries run out get no call; the error raised says
        how many were confirmed. ``refresh`` applies to the last chunk only."""
        chunk_size = max(1, self.config.bulk_chunk)
        chunks = [ops[i : i + chunk_size] for i in range(0, len(ops), chunk_size)]
        confirmed = 0

        def count(doc_id: str, ok: bool, reason: str | None) -> None:
            nonlocal confirmed
            confirmed += ok
            on_done(doc_id, ok, reason)

        for n, chunk in enumerate(chunks):
            try:
                self._bulk_chunk(index, chunk, refresh if n == len(chunks) - 1 else None, count)
            except ClusterUnavailableError as exc:
                raise ClusterUnavailableError(
                    f"{exc.message}; {confirmed} of {len(ops)} operations on {index} were confirmed "
                    "before giving up, the others were not written and stay pending"
                ) from None

    def _bulk_chunk(
        self,
        index: str,
        chunk: Sequence[tuple[str, dict[str, Any] | None]],
        refresh: str | None,
        on_done: Callable[[str, bool, str | None], None],
    ) -> None:
        todo = list(chunk)
        attempt = failovers = 0
        while True:
            lines = []
            for doc_id, source in todo:
                action = "index" if source is not None else "delete"
                lines.append(json.dumps({action: {"_index": index, "_id": doc_id}}))
                if source is not None:
                    lines.append(json.dumps(source, ensure_ascii=False))
            # a lone surrogate (accepted by json.loads) is not UTF-8: '?' rather than a refused request
            body = ("\n".join(lines) + "\n").encode("utf-8", "replace")
            params: dict[str, Any] = {}
            if refresh is not None:
                params["refresh"] = refresh
            failure: ShopSearchError | None = None
            try:
                resp = self.client.bulk(body=body, params=params)
            except Exception as exc:  # noqa: BLE001 - classified
                retryable, error = self.classify(exc, f"a bulk write of {len(todo)} operations to {index}")
                if not retryable:
                    raise error from None
                if self.fails_over(exc, failovers):
                    failovers += 1
                    continue
                failure, cause = error, _cause(exc, self.config.timeout_s)
            else:
                items = resp.get("items") or []
                if len(items) != len(todo):
                    raise ShopSearchError(
                        f"OpenSearch answered a bulk request of {len(todo)} operations "
                        f"with {len(items)} results"
                    )
                retry: list[tuple[str, dict[str, Any] | None]] = []
                last_reason = last_kind = ""
                for op, item in zip(todo, items, strict=True):
                    ((action, result),) = item.items()
                    status = int(result.get("status", 0))
                    if 200 <= status < 300 or (action == "delete" and status == 404):
                        on_done(op[0], True, None)
                        continue
                    kind, reason = _error_detail({"error": result.get("error")}, "")
                    if status == 429 or status >= 500:
                        retry.append(op)
                        last_reason, last_kind = f"HTTP {status} {kind} {reason}", f"HTTP {status} {kind}"
                    elif status == 403 and "cluster_block" in kind:
                        raise _service_side(
                            ShopSearchError(
                                f"OpenSearch refuses writes to {index}: {reason} "
                                "(a full disk makes indexes read-only)"
                            )
                        )
                    elif status == 404 and "index_not_found" in kind:
                        raise _service_side(
                            IndexNotFoundError(
                                f"OpenSearch index {index} was deleted during a bulk write; rebuild it "
                                "with 'shopsearch index'"
                            )
                        )
                    else:
                        on_done(op[0], False, f"HTTP {status} {kind}: {reason}")
                if not retry:
                    return
                todo = retry
                failure = ClusterUnavailableError(
                    f"OpenSearch at {self.config.where()} kept refusing {len(todo)} bulk items for {index}: "
                    f"{last_reason}"
                )
                cause = f"{last_kind.strip()} for {len(todo)} items"
            if attempt >= self.config.max_retries:
                raise _gave_up(failure, attempt + 1, always=True) from None
            attempt += 1
            failovers = 0
            delay = self.backoff(attempt)
            self.retry_note(f"bulk write to {index}", cause, attempt, self.config.max_retries, delay)
            time.sleep(delay)


def _service_side(error: ShopSearchError) -> ShopSearchError:
    """What the cluster answered is the service's problem, not the API client's: HTTP 503."""
    error.http_status = 503
    return error


def _gave_up(error: ShopSearchError, attempts: int, *, always: bool = False) -> ShopSearchError:
    """The final error of a retried request: its one-line message, plus how many attempts it took."""
    if attempts > 1 or always:
        error.message = f"{error.message} (gave up after {attempts} attempts)"
        error.args = (error.message,)
    return error


def _cause(exc: BaseException, timeout_s: float | None = None) -> str:
    """A few words on why a request failed, for the retry and failover log lines."""
    if isinstance(exc, os_exc.ConnectionTimeout):
        return f"no answer within {timeout_s:g} s" if timeout_s else "timed out"
    if isinstance(exc, os_exc.ConnectionError):
        detail = _short(exc).rsplit(": ", 1)[-1]
        return f"connection failed: {detail[:80]}"
    if isinstance(exc, os_exc.TransportError):
        kind, _ = _error_detail(exc.info, exc.error)
        return f"HTTP {exc.status_code} {kind[:60]}".strip()
    return type(exc).__name__


def _short(exc: BaseException) -> str:
    """The interesting part of a client exception, without urllib3's repr soup."""
    args = getattr(exc, "args", ())
    text = str(args[1]) if len(args) > 1 and args[1] else str(exc)
    text = re.sub(r"<urllib3\.[^>]*>", "", text)
    text = re.sub(r"HTTPS?Connection\(host='([^']*)', port=(\d+)\)", r"\1:\2", text)
    return " ".join(text.split())[:300]


def _error_detail(info: Any, fallback: Any) -> tuple[str, str]:
    """(type, reason) from an OpenSearch error body."""
    err = info.get("error") if isinstance(info, dict) else None
    if isinstance(err, dict):
        cause = err.get("caused_by") if isinstance(err.get("caused_by"), dict) else {}
        reason = str(err.get("reason") or "")
        if cause.get("reason"):
            reason = f"{reason} ({cause.get('type')}: {cause['reason']})"
        return _one_line(err.get("type") or fallback or ""), _one_line(reason)[:500]
    if isinstance(err, str):
        return _one_line(fallback or ""), _one_line(err)[:500]
    # not an OpenSearch body (a proxy's HTML error page, a stack trace...): the start of it, on one line
    return _one_line(fallback or "")[:200], _one_line(info or "")[:500]


def _one_line(value: Any) -> str:
    return " ".join(str(value).split())


# ====================================================================== documents and queries
def _text(value: Any) -> str:
    return "" if value is None else str(value)


def document(product: Product) -> dict[str, Any]:
    """The indexed form of a product: the text fields tantivy indexes, the same keyword terms, and
    display-spelling facet fields that match :meth:`indexer.items.ItemTable.facets`."""
    doc: dict[str, Any] = {"id": str(product.id)}
    for name in ("title", "description", "brand"):
        text = _text(getattr(product, name))
        if text.strip():
            doc[name] = text
    categories = product.all_categories()
    if categories:
        doc["category"] = " . ".join(c.replace(" > ", " ") for c in categories)
    if product.attributes:
        doc["attributes"] = product.attribute_text()
        terms: list[str] = []
        for name, value in product.attributes.items():
            terms.extend(t for t in attribute_terms(name, value) if t not in terms)
        doc["attr_kw"] = terms
    if _text(product.brand).strip():
        doc["brand_kw"] = fold(product.brand)
    if product.brand:
        doc["brand_facet"] = _text(product.brand)
    prefixes: list[str] = []
    for category in categories:
        for prefix in category_prefixes(category):
            key = fold(prefix)
            if key not in prefixes:
                prefixes.append(key)
    if prefixes:
        doc["category_kw"] = prefixes
    if product.category:
        doc["category_facet"] = category_prefixes(product.category)
    price = _price(product)
    if price is not None:
        doc["price"] = price
    return doc


def mapping(owner: str, name: str) -> dict[str, Any]:
    """Explicit, strict mapping: a document with an unexpected field is refused, not guessed."""
    text = {"type": "text", "analyzer": ANALYZER, "index_options": "freqs"}
    keyword = {"type": "keyword", "ignore_above": _KEYWORD_IGNORE_ABOVE, "doc_values": False}
    facet = {"type": "keyword", "ignore_above": 1024}
    properties: dict[str, Any] = {"id": {"type": "keyword"}}
    properties.update({name: dict(text) for name in TEXT_FIELDS})
    properties.update({name: dict(keyword) for name in ("brand_kw", "category_kw", "attr_kw")})
    properties.update({name: dict(facet) for name in ("brand_facet", "category_facet")})
    properties["price"] = {"type": "double"}
    return {
        "dynamic": "strict",
        "_meta": {"shopsearch": {"mapping_version": MAPPING_VERSION, "owner": owner, "index": name}},
        "properties": properties,
    }


def query_runs(text: str) -> list[str]:
    """Distinct word runs of the user's text (first occurrence order), at most 64, runs over 40 bytes
    dropped: what reaches the cluster is plain words, however hostile the input."""
    runs: list[str] = []
    seen: set[str] = set()
    for m in _RUN.finditer(text or ""):
        run = m.group(0)
        key = run.casefold()
        if key in seen or len(run.encode("utf-8")) > _MAX_TERM_BYTES:
            continue
        seen.add(key)
        runs.append(run)
        if len(runs) == _MAX_QUERY_TERMS:
            break
    return runs


def filter_clauses(filters: Filters | None) -> list[dict[str, Any]]:
    """The same keyword terms tantivy filters on, as bool.filter clauses (no score)."""
    if filters is None or filters.is_empty():
        return []
    out: list[dict[str, Any]] = []
    if filters.category:
        out.append({"term": {"category_kw": fold(normalize_category(filters.category))}})
    if filters.brands:
        out.append({"terms": {"brand_kw": sorted({fold(b) for b in filters.brands})}})
    for name, value in filters.attributes:
        out.append({"term": {"attr_kw": f"{fold(name)}={fold(value)}"}})
    lo, hi = filters.price_min, filters.price_max
    if lo is not None or hi is not None:
        bounds: dict[str, float] = {}
        for label, key, bound in (("price_min", "gte", lo), ("price_max", "lte", hi)):
            if bound is None:
                continue
            value = float(bound)
            if math.isnan(value):
                raise InvalidQueryError(f"filter {label} must be a number, got NaN")
            if (key == "gte" and value == math.inf) or (key == "lte" and value == -math.inf):
                return [{"match_none": {}}]  # JSON has no infinity; nothing is priced above it
            if math.isfinite(value):
                bounds[key] = value
        # a price filter never matches an item without a price, even when it bounds nothing
        out.append({"range": {"price": bounds}} if bounds else {"exists": {"field": "price"}})
    return out


# ====================================================================== the engine
@dataclass
class _State:
    pending: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    rejected: list[tuple[str, str]] = field(default_factory=list)
    confirmed: int = 0
    # the last send failed with the cluster unavailable: upsert() stops sending early (every call
    # would wait out the retries again) and the operations wait for the next commit()
    stalled: bool = False


class OpenSearchIndex(LexicalIndex):
    """BM25 over one physical OpenSearch index (one generation), with the tantivy backend's fields,
    boosts, filters and explain semantics.

    ``create=True`` creates the physical index ``name`` for a new build (bulk-load settings until
    :meth:`publish`); an index of that name left over by an abandoned build of the same ``owner``
    is replaced, one of another owner is refused. ``create=False`` opens an existing one and checks
    its mapping. ``alias`` is the name :meth:`publish` moves to this index.
    """

    def __init__(
        self,
        config: OpenSearchConfig,
        name: str,
        *,
        alias: str | None = None,
        owner: str = "",
        field_boosts: dict[str, float] | None = None,
        create: bool = False,
    ) -> None:
        self.config = config
        self.name = name
        self.alias = alias
        self.owner = owner
        self.field_boosts = resolve_field_boosts(field_boosts)
        self._state = _State()
        self._closed = False
        self._building = False
        # writes sent without a refresh that covers them (early flushes, refresh=false)
        self._unrefreshed = False
        self._conn = Connection(config)
        try:
            self._conn.check_cluster()
            if create:
                self._create()
            else:
                self._open()
        except BaseException:
            self._conn.close()
            raise

    # --- opening -------------------------------------------------------------------------------

    def _call(self, what: str, fn: Callable[..., Any], **kwargs: Any) -> Any:
        return self._conn.call(what, fn, **kwargs)

    def _owner_of(self, index: str) -> str | None:
        got = self._call(
            f"reading the mapping of {index}", self._conn.client.indices.get_mapping, index=index
        )
        for body in got.values():
            meta = (body.get("mappings") or {}).get("_meta") or {}
            return str((meta.get("shopsearch") or {}).get("owner", ""))
        return None

    def _alias_targets(self) -> list[str]:
        if not self.alias:
            return []
        indices = self._conn.client.indices
        if not self._call(f"checking alias {self.alias}", indices.exists_alias, name=self.alias):
            return []
        return sorted(self._call(f"reading alias {self.alias}", indices.get_alias, name=self.alias))

    def _create(self) -> None:
        indices = self._conn.client.indices
        if self._call(f"checking whether {self.name} exists", indices.exists, index=self.name):
            owner = self._owner_of(self.name)
            if self.name in self._alias_targets():
                raise ConfigError(
                    f"OpenSearch index {self.name} already exists and is live behind alias {self.alias}; "
                    "give each index directory its own opensearch_index_prefix"
                )
            if owner != self.owner:
                who = f"index directory {owner}" if owner else "something other than this engine"
                raise ConfigError(
                    f"OpenSearch index {self.name} already exists and belongs to {who}; "
                    "give each index directory its own opensearch_index_prefix, or delete that index"
                )
            log.warning("replacing %s, left over by an abandoned build", self.name)
            self._call(f"deleting the leftover index {self.name}", indices.delete, index=self.name)
        for live in self._alias_targets():  # publishing would take the alias from another directory
            owner = self._owner_of(live)
            if owner and owner != self.owner:
                raise ConfigError(
                    f"alias {self.alias} serves {live}, built for index directory {owner}; "
                    "give each index directory its own opensearch_index_prefix"
                )
        body = {
            "settings": {
                "index": {
                    "number_of_shards": self.config.shards,
                    # bulk-load settings until publish(): no replicas to feed, no refreshes
                    "number_of_replicas": 0,
                    "refresh_interval": "-1",
                    "max_result_window": MAX_RESULT_WINDOW,
                }
            },
            "mappings": mapping(self.owner, self.name),
        }
        try:
            self._call(f"creating index {self.name}", indices.create, index=self.name, body=body)
        except ShopSearchError as exc:
            if isinstance(exc, ClusterUnavailableError):
                raise
            raise ConfigError(f"cannot create OpenSearch index {self.name}: {exc.message}") from None
        self._building = True

    def _open(self) -> None:
        indices = self._conn.client.indices
        try:
            got = self._call(f"reading the mapping of {self.name}", indices.get_mapping, index=self.name)
        except IndexNotFoundError:
            raise IndexNotFoundError(
                f"OpenSearch index {self.name} does not exist on {self.config.where()}: "
                "rebuild the index ('shopsearch index CATALOG --index DIR')"
            ) from None
        if len(got) != 1:
            raise IndexCorruptError(
                f"OpenSearch name {self.name} resolves to {len(got)} indexes: {sorted(got)}"
            )
        ((physical, body),) = got.items()
        check_mapping(physical, body.get("mappings") or {})
        settings = self._call(f"reading the settings of {physical}", indices.get_settings, index=physical)
        index_settings = (settings.get(physical) or {}).get("settings", {}).get("index", {})
        # never published (a build that stopped between commit and publish): refresh stays manual
        self._building = str(index_settings.get("refresh_interval", "")) == "-1"

    def _check_open(self) -> None:
        if self._closed:
            raise ShopSearchError(f"OpenSearch index {self.name} is closed")

    # --- writes --------------------------------------------------------------------------------

    def upsert(self, products: Sequence[Product]) -> None:
        """Buffered until commit(); later copies of an id win. A large buffer is sent early
        (still without refresh), so memory stays bounded during a build."""
        self._check_open()
        docs = []
        for product in products:
            pid = "" if product.id is None else str(product.id)
            if not pid.strip():
                raise CatalogError(f"product with title {str(product.title)[:60]!r}: field 'id' is empty")
            docs.append((pid, document(product)))
        for pid, doc in docs:
            if len(pid.encode("utf-8")) > _MAX_ID_BYTES:
                # OpenSearch fails a whole _bulk request over one such id: refuse it here instead
                self._state.rejected.append((pid, f"id is longer than {_MAX_ID_BYTES} bytes"))
                continue
            self._state.pending.pop(pid, None)  # re-insert: the latest operation goes last
            self._state.pending[pid] = doc
        full = len(self._state.pending) >= _AUTO_FLUSH_CHUNKS * self.config.bulk_chunk
        if full and not self._state.stalled:
            self._flush(refresh=None)

    def delete(self, ids: Sequence[str]) -> None:
        """Unknown ids are ignored, so deleting twice is harmless."""
        self._check_open()
        for pid in map(str, ids):
            self._state.pending.pop(pid, None)
            if len(pid.encode("utf-8")) <= _MAX_ID_BYTES:  # a longer one cannot exist
                self._state.pending[pid] = None

    def _flush(self, refresh: str | None) -> None:
        state = self._state
        ops = list(state.pending.items())
        if not ops:
            return

        def done(pid: str, ok: bool, reason: str | None) -> None:
            op = state.pending.pop(pid, None)
            if ok:
                state.confirmed += 1
            elif op is not None:  # refusing a delete leaves nothing behind to report
                state.rejected.append((pid, reason or "refused"))
            else:
                log.warning("OpenSearch refused to delete %s from %s: %s", pid, self.name, reason)

        # a refresh on the last chunk covers every write when they all went to the one shard, or
        # when this flush is a single chunk and nothing earlier is waiting for a refresh
        one_shard = self.config.shards == 1
        single = len(ops) <= max(1, self.config.bulk_chunk) and not self._unrefreshed
        covered = refresh in ("wait_for", "true") and (one_shard or single)
        try:
            self._send(ops, refresh, done)
        except ClusterUnavailableError:
            state.stalled = True
            raise
        state.stalled = False
        self._unrefreshed = not covered

    def _send(
        self,
        ops: list[tuple[str, dict[str, Any] | None]],
        refresh: str | None,
        done: Callable[[str, bool, str | None], None],
    ) -> None:
        if not self._building and not self._call(
            f"checking that {self.name} still exists", self._conn.client.indices.exists, index=self.name
        ):
            # a bulk write would re-create it with a mapping the cluster guesses, and BM25 would
            # then fail on every matching query
            raise _service_side(
                IndexNotFoundError(
                    f"OpenSearch no longer has index {self.name} (deleted, or the cluster lost its data): "
                    "the write was not sent; rebuild the index with 'shopsearch index'"
                )
            )
        self._unrefreshed = True  # until the bulk below returns with a covering refresh
        self._conn.bulk(self.name, ops, refresh=refresh, on_done=done)

    def commit(self) -> None:
        """Send pending writes and make them searchable: an unpublished build is refreshed
        explicitly, a live index uses the configured refresh policy ('wait_for' by default) and
        is refreshed explicitly only when earlier writes went out without one."""
        self._check_open()
        self._flush(refresh=None if self._building else self.config.refresh)
        if self._unrefreshed and (self._building or self.config.refresh != "false"):
            self.refresh()

    def refresh(self) -> None:
        self._call(f"refreshing {self.name}", self._conn.client.indices.refresh, index=self.name)
        self._unrefreshed = False

    def health_check(self, timeout_s: float = 2.0) -> str | None:
        """None when a search of this index works now, else why not (one line). Cheap enough for a
        load balancer's probe: one empty search, ``timeout_s`` per node, no retry and no backoff
        (a node that refuses connections is skipped for the next listed one)."""
        if self._closed:
            return f"OpenSearch index {self.name} is closed"
        body = {"size": 0, "track_total_hits": False, "query": {"match_all": {}}}
        try:
            self._call(
                f"a health check of {self.name}",
                self._conn.client.search,
                index=self.name,
                body=body,
                retries=0,
                timeout_s=min(timeout_s, self.config.timeout_s),
            )
        except ShopSearchError as exc:
            return exc.message
        return None

    def take_rejected(self) -> list[tuple[str, str]]:
        """(id, reason) of documents the cluster refused for good since the last call."""
        out, self._state.rejected = self._state.rejected, []
        return out

    @property
    def confirmed(self) -> int:
        """Operations (index or delete) the cluster has acknowledged through this object."""
        return self._state.confirmed

    @property
    def pending(self) -> int:
        """Operations (index or delete) not confirmed yet: buffered before a commit, or kept after
        a commit the cluster could not take (the next commit sends them again)."""
        return len(self._state.pending)

    def count(self) -> int:
        self._check_open()
        got = self._call(f"counting {self.name}", self._conn.client.count, index=self.name)
        return int(got["count"])

    # --- generations ---------------------------------------------------------------------------

    def publish(self) -> None:
        """Go live: normal refresh and the configured replicas, then move the alias here in one
        atomic ``_aliases`` request (every other index loses it in the same request)."""
        self._check_open()
        indices = self._conn.client.indices
        live = {"index": {"refresh_interval": None, "number_of_replicas": self.config.replicas}}
        self._call(
            f"switching {self.name} to live settings", indices.put_settings, index=self.name, body=live
        )
        self._building = False
        if not self.alias:
            return
        actions: list[dict[str, Any]] = [
            {"remove": {"index": other, "alias": self.alias}}
            for other in self._alias_targets()
            if other != self.name
        ]
        actions.append({"add": {"index": self.name, "alias": self.alias}})
        try:
            self._call(
                f"moving alias {self.alias} to {self.name}", indices.update_aliases, body={"actions": actions}
            )
        except ShopSearchError as exc:
            if isinstance(exc, ClusterUnavailableError):
                raise
            raise ConfigError(f"cannot point alias {self.alias} at {self.name}: {exc.message}") from None

    def drop(self) -> None:
        """Delete this generation's physical index (never the one the alias serves)."""
        self._check_open()
        if self.name in self._alias_targets():
            raise ShopSearchError(
                f"refusing to delete OpenSearch index {self.name}: alias {self.alias} serves it"
            )
        try:
            self._call(f"deleting {self.name}", self._conn.client.indices.delete, index=self.name)
        except IndexNotFoundError:
            pass

    def close(self) -> None:
        """Pending (uncommitted) writes are discarded, as with tantivy."""
        if not self._closed:
            self._closed = True
            self._state.pending.clear()
            self._conn.close()

    def __enter__(self) -> OpenSearchIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- search --------------------------------------------------------------------------------

    def _field_query(self, name: str, text: str) -> dict[str, Any] | None:
        boost = self.field_boosts[name]
        if boost <= 0:
            return None
        return {"match": {name: {"query": text, "boost": boost}}}

    def _text_query(self, text: str) -> dict[str, Any] | None:
        should = [q for name in TEXT_FIELDS if (q := self._field_query(name, text)) is not None]
        return {"bool": {"should": should}} if should else None

    def search(
        self, query: str, k: int, filters: Filters | None = None, *, explain: bool = False
    ) -> list[LexicalHit]:
        """Terms are OR-ed across all boosted fields (score = sum of per-field BM25); filters are
        bool.filter clauses. With ``explain`` each hit's ``fields`` holds the BM25 of each field
        alone: every field's sub-query is re-run restricted to the hit ids (one ``_msearch``), and
        those are exactly the summands of the full score."""
        self._check_open()
        if k <= 0:
            raise InvalidQueryError(f"k must be a positive number of results, got {k}")
        text = " ".join(query_runs(query))
        text_query = self._text_query(text) if text else None
        if text_query is None:
            return []
        body = {
            "query": {"bool": {"must": [text_query], "filter": filter_clauses(filters)}},
            "size": min(k, MAX_RESULT_WINDOW),
            "sort": [{"_score": "desc"}, {"id": "asc"}],
            "_source": False,
            "track_total_hits": False,
        }
        got = self._call(
            f"searching {self.name}", self._conn.client.search, index=self.name, body=body, retries=1
        )
        hits = [LexicalHit(id=h["_id"], score=float(h["sort"][0])) for h in got["hits"]["hits"]]
        if explain and hits:
            hits = self._explain(text, hits)
        return hits

    def _explain(self, text: str, hits: list[LexicalHit]) -> list[LexicalHit]:
        ids = [h.id for h in hits]
        names = [name for name in TEXT_FIELDS if self.field_boosts[name] > 0]
        body: list[dict[str, Any]] = []
        for name in names:
            body.append({"index": self.name})
            body.append(
                {
                    "query": {
                        "bool": {
                            "must": [self._field_query(name, text)],
                            "filter": [{"ids": {"values": ids}}],
                        }
                    },
                    "size": len(ids),
                    "_source": False,
                    "track_total_hits": False,
                }
            )
        got = self._call(
            f"explaining a search on {self.name}", self._conn.client.msearch, body=body, retries=1
        )
        per_field: dict[str, dict[str, float]] = {h.id: {} for h in hits}
        for name, resp in zip(names, got["responses"], strict=True):
            if "error" in resp:
                kind, reason = _error_detail(resp, "")
                raise ShopSearchError(f"OpenSearch failed to explain field {name}: {kind}: {reason}")
            for h in resp["hits"]["hits"]:
                per_field[h["_id"]][name] = float(h["_score"])
        return [LexicalHit(id=h.id, score=h.score, fields=per_field[h.id]) for h in hits]

    def facets(
        self, query: str | None = None, filters: Filters | None = None, max_values: int = 20
    ) -> dict[str, Any]:
        """Facet counts over *every* document matching the query (all of them when ``query`` is
        None) and filters, computed by aggregations in the cluster, in the shape of
        :meth:`indexer.items.ItemTable.facets` (categories by level, brands, price buckets)."""
        self._check_open()
        if query is None:
            must: list[dict[str, Any]] = [{"match_all": {}}]
        else:
            text_query = self._text_query(" ".join(query_runs(query)))
            must = [text_query] if text_query is not None else [{"match_none": {}}]
        edges = _PRICE_EDGES
        ranges = [{"to": edges[0]}]
        ranges += [{"from": lo, "to": hi} for lo, hi in zip(edges, edges[1:], strict=False)]
        ranges.append({"from": edges[-1]})
        order = [{"_count": "desc"}, {"_key": "asc"}]
        body = {
            "size": 0,
            "track_total_hits": False,
            "query": {"bool": {"must": must, "filter": filter_clauses(filters)}},
            "aggs": {
                "category": {"terms": {"field": "category_facet", "size": max_values, "order": order}},
                "brand": {"terms": {"field": "brand_facet", "size": max_values, "order": order}},
                "price_ranges": {"range": {"field": "price", "ranges": ranges}},
                "price_stats": {"stats": {"field": "price"}},
            },
        }
        got = self._call(
            f"computing facets on {self.name}", self._conn.client.search, index=self.name, body=body
        )
        aggs = got["aggregations"]
        return {
            "category": {b["key"]: int(b["doc_count"]) for b in aggs["category"]["buckets"]},
            "brand": {b["key"]: int(b["doc_count"]) for b in aggs["brand"]["buckets"]},
            "price": _price_facet(aggs["price_ranges"]["buckets"], aggs["price_stats"]),
        }


def _price_facet(buckets: Iterable[dict[str, Any]], stats: dict[str, Any]) -> list[dict[str, Any]]:
    """Regroup fixed-edge range counts into the buckets :func:`indexer.items.price_buckets` makes
    (edges chosen from the minimum and maximum price); each is a union of consecutive ranges."""
    if not stats.get("count"):
        return []
    lo, hi = float(stats["min"]), float(stats["max"])
    edges = [e for e in _PRICE_EDGES if e <= hi]
    if not edges:
        return []
    start = max((i for i, e in enumerate(edges) if e <= lo), default=0)
    edges = edges[start:]
    fine = [(b.get("from", float("-inf")), b.get("to", float("inf")), int(b["doc_count"])) for b in buckets]
    out = []
    for i, e in enumerate(edges):
        upper = edges[i + 1] if i + 1 < len(edges) else None
        count = sum(c for f, t, c in fine if f >= e and (upper is None or t <= upper))
        if i == 0:
            count += sum(c for _, t, c in fine if t <= e)  # below the first edge
        if count:
            out.append({"min": e, "max": upper, "count": count})
    return out


def check_mapping(index: str, mappings: dict[str, Any]) -> None:
    """An index built by another version (or by hand) is refused with the difference named."""
    meta = (mappings.get("_meta") or {}).get("shopsearch")
    if not isinstance(meta, dict):
        raise IndexCorruptError(
            f"OpenSearch index {index} was not created by shopsearch (no _meta.shopsearch)"
        )
    if meta.get("mapping_version") != MAPPING_VERSION:
        raise IndexCorruptError(
            f"OpenSearch index {index} has mapping version {meta.get('mapping_version')}, this engine "
            f"writes {MAPPING_VERSION}: rebuild the index"
        )
    have = mappings.get("properties") or {}
    for name, want in mapping("", index)["properties"].items():
        got = have.get(name) or {}
        for key in ("type", "analyzer"):
            if got.get(key) != want.get(key):
                raise IndexCorruptError(
                    f"OpenSearch index {index} has an incompatible mapping: field {name!r} {key} is "
                    f"{got.get(key)!r}, expected {want.get(key)!r}; rebuild the index"
                )


# ====================================================================== the index directory
def generation_of(path: Path) -> str:
    """'INDEX/generations/gen-000007.tmp/lexical' -> 'gen-000007' (the name survives the rename)."""
    name = path.resolve().parent.name.removesuffix(".tmp")
    if re.fullmatch(r"gen-\d+", name):
        return name
    raw = re.sub(r"[^a-z0-9_-]+", "-", f"{path.resolve().parent.name}-{path.name}".lower()).strip("-_")
    return raw[:120] or "lexical"


def owner_of(path: Path) -> str:
    """The index directory a generation's lexical directory belongs to."""
    resolved = path.resolve()
    if resolved.parent.parent.name == "generations":
        return str(resolved.parent.parent.parent)
    return str(resolved.parent)


def open_opensearch_index(
    path: Path,
    config: OpenSearchConfig,
    *,
    field_boosts: dict[str, float] | None = None,
    create: bool = False,
) -> OpenSearchIndex:
    """Open the OpenSearch index a generation's ``lexical/`` directory names (``opensearch.json``),
    or with ``create=True`` create ``PREFIX-gen-N`` and write that descriptor."""
    path = Path(path)
    descriptor = path / DESCRIPTOR
    if path.exists() and not path.is_dir():
        raise IndexCorruptError(f"lexical index path {path} is a file, not a directory")
    if descriptor.is_file():
        try:
            meta = json.loads(descriptor.read_text(encoding="utf-8"))
            name, alias = str(meta["index"]), meta.get("alias")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise IndexCorruptError(f"{descriptor} is unreadable: {exc}") from None
        return OpenSearchIndex(config, name, alias=alias, owner=owner_of(path), field_boosts=field_boosts)
    if path.is_dir() and any(path.iterdir()):
        raise IndexCorruptError(
            f"{path} holds no OpenSearch descriptor ({DESCRIPTOR}); it was built with another lexical backend"
        )
    if not create:
        raise IndexNotFoundError(f"no lexical index at {path}")
    name = f"{config.index_prefix}-{generation_of(path)}"
    index = OpenSearchIndex(
        config,
        name,
        alias=config.index_prefix,
        owner=owner_of(path),
        field_boosts=field_boosts,
        create=True,
    )
    try:
        path.mkdir(parents=True, exist_ok=True)
        body = {
            "backend": "opensearch",
            "index": name,
            "alias": config.index_prefix,
            "mapping_version": MAPPING_VERSION,
        }
        descriptor.write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")
    except OSError as exc:
        index.close()
        raise ShopSearchError(f"cannot write {descriptor}: {exc}") from None
    return index


def drop_opensearch_index(path: Path, config: OpenSearchConfig) -> bool:
    """Delete the physical index a (doomed) generation's descriptor names. Best effort: returns
    False and logs why when it cannot (the directory is removed by the caller either way)."""
    if not (Path(path) / DESCRIPTOR).is_file():
        return False
    try:
        with open_opensearch_index(path, config) as index:
            index.drop()
    except IndexNotFoundError:
        return True
    except ShopSearchError as exc:
        log.warning("could not delete the OpenSearch index of %s: %s", path, exc.message)
        return False
    return True
