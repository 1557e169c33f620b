"""Loopback test infrastructure for the OpenSearch backend.

* :func:`cluster_url` gives the cluster the tests run against: ``OPENSEARCH_URL`` when set (a real
  cluster), else an ``osmem-server`` (an in-memory server speaking the OpenSearch REST API, shipped
  as a PyPI wheel) started on a free 127.0.0.1 port and stopped when the context exits. The server
  also exits by itself when the test process dies (``--parent-pid`` and a watched stdin).
* :class:`FaultProxy` sits between the client and the cluster on another loopback port and
  answers chosen requests itself (a 429 storm, a 401), or cuts the connection before or after
  forwarding them, to test retries and partial failures against a real server.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

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
                status, headers, payload = proxy._forward(self.command, self.path, dict(self.headers), body)
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
    import json

    err = {"type": error_type, "reason": reason}
    return status, json.dumps({"error": {**err, "root_cause": [err]}, "status": status})
