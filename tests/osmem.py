"""Loopback test infrastructure for the OpenSearch backend.

* :func:`cluster_url` gives the cluster the tests run against: ``OPENSEARCH_URL`` when set (a real
  cluster), else an ``osmem-server`` (an in-memory server speaking the OpenSearch REST API, shipped
  as a PyPI wheel) started on a free 127.0.0.1 port and stopped when the context exits. The server
  also exits by itself when the test process dies (``--parent-pid`` and a watched stdin).
* :class:`FaultProxy` sits between the client and the cluster on another loopback port and
  answers chosen requests itself (a 429 storm, a 401), or cuts the connection before or after
  forwarding them, to test retries and partial failures against a real server.
* :class:`KnnShim` is such a proxy that stands in for the k-NN plugin osmem lacks: it answers
  ``knn`` queries itself by exact (brute-force) inner product over the vectors it saw written.
  A test stand-in only: the real k-NN path (HNSW in the faiss engine) runs when ``OPENSEARCH_URL``
  names a cluster with the plugin.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import numpy as np
import pytest

REAL_URL_ENV = "OPENSEARCH_URL"


@dataclass
class Cluster:
    url: str
    kind: str  # "osmem" or "real"
    server: object | None = None  # the OsmemServer when kind == "osmem"

    @property
    def is_osmem(self) -> bool:
        return self.kind == "osmem"


def start_osmem() -> object:
    """A fresh osmem-server on 127.0.0.1 (port chosen by the OS); skips when it is not installed."""
    osmem_server = pytest.importorskip(
        "osmem_server", reason="osmem-server is not installed (pip install osmem-server)"
    )
    return osmem_server.OsmemServer.start(japanese=False, addr="127.0.0.1:0", startup_timeout=30.0)


@contextlib.contextmanager
def cluster_url() -> Iterator[Cluster]:
    """The real cluster named by OPENSEARCH_URL, else a private osmem-server stopped afterwards."""
    url = os.environ.get(REAL_URL_ENV)
    if url:
        yield Cluster(url=url.rstrip("/"), kind="real")
        return
    server = start_osmem()
    try:
        yield Cluster(url=server.url, kind="osmem", server=server)
    finally:
        server.close(grace=5.0)


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ====================================================================== fault proxy
#: What the proxy does with one request: "pass" (forward), "cut_before" (close without forwarding),
#: "cut_after" (forward, then close without relaying the answer), or (status, json_body) to answer.
Action = str | tuple[int, str]


@dataclass
class Seen:
    method: str
    path: str
    action: str


@dataclass
class FaultProxy:
    """HTTP proxy on 127.0.0.1 in front of ``upstream``; ``plan(method, path, n)`` picks the action for
    the n-th request (0-based, counted over all requests) and can be swapped at any time."""

    upstream: str
    plan: Callable[[str, str, int], Action] = lambda method, path, n: "pass"
    seen: list[Seen] = field(default_factory=list)

    def __post_init__(self) -> None:
        parts = urlsplit(self.upstream)
        self._up_host, self._up_port = parts.hostname or "127.0.0.1", parts.port or 80
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # quiet
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with proxy._lock:
                    n = len(proxy.seen)
                    action = proxy.plan(self.command, self.path, n)
                    label = action if isinstance(action, str) else f"answer {action[0]}"
                    proxy.seen.append(Seen(self.command, self.path, label))
                if action == "cut_before":
                    self._cut()
                    return
                if isinstance(action, tuple):
                    status, text = action
                    self._send(status, [("Content-Type", "application/json")], text.encode())
                    return
                status, headers, payload = proxy.handle(self.command, self.path, dict(self.headers), body)
                if action == "cut_after":
                    self._cut()
                    return
                self._send(status, headers, payload)

            def _send(self, status: int, headers: list[tuple[str, str]], payload: bytes) -> None:
                self.send_response(status)
                for key, value in headers:
                    if key.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def _cut(self) -> None:
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle  # noqa: N815

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fault-proxy", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, list, bytes]:
        """What a request that is not cut or answered by the plan gets: the upstream's answer."""
        return self._forward(method, path, headers, body)

    def _forward(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, list, bytes]:
        conn = http.client.HTTPConnection(self._up_host, self._up_port, timeout=30)
        try:
            keep = {k: v for k, v in headers.items() if k.lower() not in ("host", "connection")}
            conn.request(method, path, body=body or None, headers=keep)
            resp = conn.getresponse()
            return resp.status, resp.getheaders(), resp.read()
        finally:
            conn.close()

    def count(self, action: str | None = None, path_part: str = "") -> int:
        with self._lock:
            return sum(1 for s in self.seen if path_part in s.path and (action is None or s.action == action))

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def answer(status: int, error_type: str, reason: str) -> tuple[int, str]:
    """An OpenSearch-shaped error body."""
    err = {"type": error_type, "reason": reason}
    return status, json.dumps({"error": {**err, "root_cause": [err]}, "status": status})


# ====================================================================== k-NN stand-in
def _error_body(status: int, error_type: str, reason: str) -> dict[str, Any]:
    err = {"type": error_type, "reason": reason}
    return {"error": {**err, "root_cause": [err]}, "status": status}


@dataclass
class KnnShim(FaultProxy):
    """A loopback proxy that plays the k-NN plugin in front of osmem, for tests only.

    It watches what goes through to osmem: index creations (which fields are ``knn_vector``, their
    dimension and space type), ``_bulk`` writes the cluster confirmed (``index``/``create`` with
    ``_id`` -> the document's ``label`` and vector, ``delete``) and index deletions. Searches whose
    query is ``{"knn": {FIELD: {"vector", "k", optional "filter": {"terms"|"term": {"label": ...}}}}}``,
    in ``_search`` or ``_msearch`` bodies, it answers itself: exact inner product over every stored
    vector (not HNSW), filter applied before the top k, scores transformed the way the faiss engine
    does (``ip + 1`` when ip > 0, else ``1 / (1 - ip)``). ``_cat/plugins`` gains an
    ``opensearch-knn`` entry. Everything else, and the rest of a mixed ``_msearch``, goes to osmem.

    What it does not model: approximate search, per-segment/shard k, refresh (osmem shows writes at
    once, and so does this), ``_doc``/``_update`` writes, other spaces than inner product, and other
    filters (refused with HTTP 400). Like every FaultProxy it can also inject faults via ``plan``.
    """

    knn_answered: int = 0

    def __post_init__(self) -> None:
        self._state = threading.Lock()
        self._fields: dict[str, dict[str, tuple[int, str]]] = {}  # index -> field -> (dim, space)
        self._docs: dict[str, dict[str, tuple[int | None, dict[str, np.ndarray]]]] = {}
        super().__post_init__()

    # ----------------------------------------------------------------- routing
    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, list, bytes]:
        parts = urlsplit(path)
        segs = [unquote(s) for s in parts.path.split("/") if s]
        if method in ("GET", "POST") and segs and segs[-1] == "_msearch":
            default = segs[0] if len(segs) == 2 else None
            return self._msearch(method, path, headers, body, default)
        if method in ("GET", "POST") and len(segs) == 2 and segs[1] == "_search":
            query = json.loads(body or b"{}")
            if "knn" in (query.get("query") or {}):
                status, payload = self._knn(segs[0], query)
                return self._json(status, payload)
        status, out_headers, payload = self._forward(method, path, headers, body)
        if 200 <= status < 300:
            if segs[:2] == ["_cat", "plugins"]:
                return self._with_knn_plugin(parts.query, status, out_headers, payload)
            self._observe(method, segs, body, payload)
        return status, out_headers, payload

    @staticmethod
    def _json(status: int, payload: dict[str, Any]) -> tuple[int, list, bytes]:
        return status, [("Content-Type", "application/json")], json.dumps(payload).encode()

    def _with_knn_plugin(
        self, query: str, status: int, headers: list, payload: bytes
    ) -> tuple[int, list, bytes]:
        entry = {"name": "osmem-node", "component": "opensearch-knn", "version": "knn-shim"}
        if parse_qs(query).get("format") == ["json"]:
            plugins = json.loads(payload or b"[]")
            return self._json(status, [*plugins, entry])
        line = f"{entry['name']} {entry['component']} {entry['version']}\n".encode()
        return status, headers, payload + line

    # ----------------------------------------------------------------- watching writes
    def _observe(self, method: str, segs: list[str], body: bytes, payload: bytes) -> None:
        if method == "PUT" and len(segs) == 1 and not segs[0].startswith("_"):
            props = ((json.loads(body or b"{}").get("mappings") or {}).get("properties")) or {}
            knn = {
                name: (int(spec["dimension"]), str((spec.get("method") or {}).get("space_type", "l2")))
                for name, spec in props.items()
                if isinstance(spec, dict) and spec.get("type") == "knn_vector"
            }
            with self._state:
                self._fields[segs[0]] = knn
                self._docs[segs[0]] = {}
        elif method == "DELETE" and len(segs) == 1 and not segs[0].startswith("_"):
            with self._state:
                for name in segs[0].split(","):
                    self._fields.pop(name, None)
                    self._docs.pop(name, None)
        elif method in ("POST", "PUT") and segs and segs[-1] == "_bulk":
            self._observe_bulk(segs[0] if len(segs) == 2 else None, body, payload)

    def _observe_bulk(self, default: str | None, body: bytes, payload: bytes) -> None:
        lines = [line for line in body.decode("utf-8", "replace").split("\n") if line.strip()]
        items = json.loads(payload).get("items") or []
        ops: list[tuple[str, dict[str, Any], dict[str, Any] | None]] = []
        i = 0
        while i < len(lines):
            ((action, meta),) = json.loads(lines[i]).items()
            source = json.loads(lines[i + 1]) if action in ("index", "create", "update") else None
            i += 2 if source is not None else 1
            ops.append((action, meta, source))
        with self._state:
            for (action, meta, source), item in zip(ops, items, strict=False):
                ((_, result),) = item.items()
                index = meta.get("_index") or default
                if index not in self._fields or not 200 <= int(result.get("status", 0)) < 300:
                    continue
                doc_id = str(meta.get("_id") or result.get("_id"))
                if action == "delete":
                    self._docs[index].pop(doc_id, None)
                elif action in ("index", "create") and source is not None:
                    vectors = {
                        name: np.asarray(source[name], dtype=np.float32)
                        for name in self._fields[index]
                        if name in source
                    }
                    label = source.get("label")
                    self._docs[index][doc_id] = (None if label is None else int(label), vectors)

    # ----------------------------------------------------------------- answering k-NN queries
    def _knn(self, index: str | None, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        ((name, clause),) = body["query"]["knn"].items()
        with self._state:
            fields = self._fields.get(index or "")
            if fields is None or name not in fields:
                return 400, _error_body(
                    400, "illegal_argument_exception", f"no knn_vector field {name} in {index}"
                )
            dim, space = fields[name]
            if space != "innerproduct":
                return 400, _error_body(
                    400, "shim_limitation", f"the k-NN shim supports innerproduct, not {space}"
                )
            docs = [
                (doc_id, label, vecs[name])
                for doc_id, (label, vecs) in self._docs[index].items()
                if name in vecs
            ]
            self.knn_answered += 1
        q = np.asarray(clause["vector"], dtype=np.float32)
        if q.shape != (dim,):
            return 400, _error_body(
                400, "illegal_argument_exception", f"query vector has {q.size} dims, not {dim}"
            )
        allowed: set[int] | None = None
        if clause.get("filter") is not None:
            filt = clause["filter"]
            ((kind, spec),) = filt.items()
            if kind not in ("terms", "term") or list(spec) != ["label"]:
                return 400, _error_body(
                    400, "shim_limitation", f"the k-NN shim filters on label only: {filt}"
                )
            values = spec["label"] if kind == "terms" else [spec["label"]]
            allowed = {int(v) for v in values}
            docs = [d for d in docs if d[1] in allowed]
        k = min(int(clause["k"]), int(body.get("size", 10)))
        hits: list[dict[str, Any]] = []
        if docs:
            ips = np.stack([v for _, _, v in docs]) @ q
            order = np.argsort(-ips, kind="stable")[:k]
            for j in order:
                ip = float(ips[j])
                score = ip + 1.0 if ip > 0 else 1.0 / (1.0 - ip)
                hits.append({"_index": index, "_id": docs[j][0], "_score": score})
        response = {
            "took": 0,
            "timed_out": False,
            "hits": {
                "total": {"value": len(hits), "relation": "eq"},
                "max_score": hits[0]["_score"] if hits else None,
                "hits": hits,
            },
        }
        return 200, response

    def _msearch(
        self, method: str, path: str, headers: dict[str, str], body: bytes, default: str | None
    ) -> tuple[int, list, bytes]:
        lines = [json.loads(line) for line in body.decode("utf-8").split("\n") if line.strip()]
        pairs = list(zip(lines[0::2], lines[1::2], strict=True))
        is_knn = ["knn" in (b.get("query") or {}) for _, b in pairs]
        if not any(is_knn):
            return self._forward(method, path, headers, body)
        responses: list[dict[str, Any] | None] = [None] * len(pairs)
        for i, (head, query) in enumerate(pairs):
            if is_knn[i]:
                index = head.get("index", default)
                status, resp = self._knn(index if isinstance(index, str) else None, query)
                responses[i] = {**resp, "status": status}
        rest = [p for p, knn in zip(pairs, is_knn, strict=True) if not knn]
        if rest:
            ndjson = "".join(json.dumps(h) + "\n" + json.dumps(b) + "\n" for h, b in rest).encode()
            status, out_headers, payload = self._forward(method, path, headers, ndjson)
            if status != 200:
                return status, out_headers, payload
            forwarded = iter(json.loads(payload)["responses"])
            responses = [r if r is not None else next(forwarded) for r in responses]
        return self._json(200, {"took": 0, "responses": responses})

    def stored(self, index: str) -> dict[str, int | None]:
        """_id -> label of the vectors the shim holds for ``index`` (what the cluster confirmed)."""
        with self._state:
            return {doc_id: label for doc_id, (label, _) in self._docs.get(index, {}).items()}


@contextlib.contextmanager
def knn_cluster_url(cluster: Cluster) -> Iterator[tuple[str, KnnShim | None]]:
    """A URL that answers k-NN queries: the real cluster itself, or a :class:`KnnShim` in front of
    osmem (yielded too, so tests can check it really answered)."""
    if not cluster.is_osmem:
        yield cluster.url, None
        return
    with KnnShim(cluster.url) as shim:
        yield shim.url, shim
