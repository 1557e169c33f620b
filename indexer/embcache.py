"""Content-addressed embedding cache, so that re-indexing a catalog only encodes what changed.

Keys are sha256 digests of (encoder name, kind, content bytes): the same text or the same image
file under the same encoder always maps to the same key, wherever it lives, and anything that
changes the content or the model (the encoder name carries a weights fingerprint for user models)
changes the key. Vectors are stored as float32 bytes in SQLite (WAL mode), which several processes
may open at once. The cache is disposable: a corrupt database file is replaced with a warning.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import threading
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # encoders import this module: no runtime import back
    from indexer.encoders.base import TextEncoder

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
_SQL_BATCH = 500  # keys per IN (...) query, well under SQLite's variable limit
_INSERT = "INSERT OR REPLACE INTO vectors (key, dim, vec) VALUES (?, ?, ?)"
_SCHEMA = "CREATE TABLE IF NOT EXISTS vectors (key TEXT PRIMARY KEY, dim INTEGER NOT NULL, vec BLOB NOT NULL)"


def _digest(encoder_name: str, kind: str) -> hashlib._Hash:
    h = hashlib.sha256()
    h.update(encoder_name.encode("utf-8"))
    h.update(b"\0")
    h.update(kind.encode("ascii"))
    h.update(b"\0")
    return h


def text_key(encoder_name: str, text: str) -> str:
    """Key of a text under an encoder."""
    h = _digest(encoder_name, "text")
    h.update(text.encode("utf-8", "surrogatepass"))
    return h.hexdigest()


def bytes_key(encoder_name: str, data: bytes) -> str:
    """Key of raw media bytes (an upload) under an encoder; equal to ``file_key`` of a file with
    the same bytes."""
    h = _digest(encoder_name, "file")
    h.update(data)
    return h.hexdigest()


def file_key(encoder_name: str, path: str | Path) -> str:
    """Key of a media file: a hash of its bytes, not of its path, so moved or renamed files hit
    the cache and edited files miss it. For video, put the sampling parameters into
    ``encoder_name`` (e.g. ``f"{encoder.name}:video8"``). An unreadable file raises OSError,
    which callers report against the item."""
    h = _digest(encoder_name, "file")
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def fingerprint_files(paths: Iterable[str | Path]) -> str:
    """Short, content-based fingerprint of model files (size plus the first and last MiB of
    each), cheap even for GB checkpoints. Used in encoder names so that cache keys change when
    a user swaps the weights behind the same path."""
    h = hashlib.sha256()
    for p in sorted(Path(x) for x in paths):
        size = p.stat().st_size
        h.update(f"{p.name}\0{size}\0".encode())
        with open(p, "rb") as f:
            h.update(f.read(_CHUNK))
            if size > 2 * _CHUNK:
                f.seek(size - _CHUNK)
                h.update(f.read(_CHUNK))
    return h.hexdigest()[:12]


def _is_corruption(exc: sqlite3.Error) -> bool:
    """Corrupt or foreign file (recreate) versus a busy, locked or read-only one (leave alone)."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    if name:
        return name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB"))
    return isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError)


class EmbeddingCache:
    """SQLite-backed map from key to float32 vector. Thread-safe within a process; several
    processes may share one file (WAL journal, busy timeout).

    A cache must never stop indexing: a corrupt file is recreated empty, and a file that cannot
    be opened or stays locked makes the cache a no-op for that call, each with a warning."""

    def __init__(self, path: str | Path, *, timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        self._timeout = timeout_s
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = self._connect()
        except sqlite3.Error as exc:
            if _is_corruption(exc):
                self._recreate(exc)
            else:
                self._warn(f"cannot open embedding cache {self.path} ({exc}); caching is off")
        except OSError as exc:
            self._warn(f"cannot create embedding cache {self.path} ({exc}); caching is off")

    # --- lifecycle
    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, timeout=self._timeout, check_same_thread=False, isolation_level=None
        )
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(_SCHEMA)
            conn.execute("SELECT key, dim, vec FROM vectors LIMIT 1").fetchall()
        except BaseException:
            conn.close()
            raise
        return conn

    @staticmethod
    def _warn(message: str) -> None:
        warnings.warn(message, RuntimeWarning, stacklevel=4)
        log.warning(message)

    def _recreate(self, exc: Exception) -> None:
        """Drop a damaged cache file and start empty: losing a cache costs time, never results."""
        self._warn(f"embedding cache {self.path} is corrupt ({exc}); recreating it empty")
        if self._conn is not None:
            try:
                self._conn.close()
            except sqlite3.Error:
                pass
            self._conn = None
        try:
            for suffix in ("", "-wal", "-shm", "-journal"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            self._conn = self._connect()
        except (OSError, sqlite3.Error) as again:
            self._warn(f"cannot recreate embedding cache {self.path} ({again}); caching is off")

    def _failed(self, exc: sqlite3.Error) -> None:
        if _is_corruption(exc):
            self._recreate(exc)
        else:
            self._warn(f"embedding cache {self.path} unavailable ({exc}); continuing without it")

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> EmbeddingCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def enabled(self) -> bool:
        """False when the file could not be opened (then every lookup misses)."""
        return self._conn is not None

    def _db(self) -> sqlite3.Connection | None:
        if self._closed:
            raise RuntimeError(f"embedding cache {self.path} is closed")
        return self._conn

    # --- data
    def __len__(self) -> int:
        with self._lock:
            db = self._db()
            if db is None:
                return 0
            try:
                return int(db.execute("SELECT COUNT(*) FROM vectors").fetchone()[0])
            except sqlite3.Error as exc:
                self._failed(exc)
                return 0

    def get_many(self, keys: Iterable[str]) -> dict[str, np.ndarray]:
        """Vectors for the keys that are present; absent keys are simply missing from the result."""
        wanted = list(dict.fromkeys(keys))
        found: dict[str, np.ndarray] = {}
        with self._lock:
            db = self._db()
            if db is None or not wanted:
                return found
            try:
                for i in range(0, len(wanted), _SQL_BATCH):
                    chunk = wanted[i : i + _SQL_BATCH]
                    marks = ",".join("?" * len(chunk))
                    rows = db.execute(f"SELECT key, dim, vec FROM vectors WHERE key IN ({marks})", chunk)
                    for key, dim, blob in rows:
                        vec = np.frombuffer(blob, dtype=np.float32).copy()
                        if vec.shape[0] == dim:  # skip rows a crashed writer may have mangled
                            found[key] = vec
            except sqlite3.Error as exc:
                self._failed(exc)
                return {}
        return found

    def put_many(self, items: Mapping[str, np.ndarray]) -> None:
        """Store vectors (any float dtype; saved as float32), replacing existing keys, in one
        transaction."""
        rows = []
        for key, vec in items.items():
            arr = np.ascontiguousarray(np.asarray(vec, dtype=np.float32).reshape(-1))
            rows.append((key, int(arr.shape[0]), arr.tobytes()))
        with self._lock:
            db = self._db()
            if db is None or not rows:
                return
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    db.executemany(_INSERT, rows)
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._failed(exc)


def encode_cached(
    keys: Sequence[str],
    encode_missing: Callable[[list[int]], np.ndarray],
    cache: EmbeddingCache | None,
    *,
    dim: int,
) -> np.ndarray:
    """``(len(keys), dim)`` float32 rows: cached ones from ``cache``, the others from
    ``encode_missing(indices)`` (one row per index, in order), which are then stored. Duplicate
    keys are encoded once; cached vectors of another size count as missing."""
    found = cache.get_many(keys) if cache is not None else {}
    found = {k: v for k, v in found.items() if v.shape[0] == dim}
    first_index: dict[str, int] = {}
    for i, key in enumerate(keys):
        if key not in found:
            first_index.setdefault(key, i)
    out = np.empty((len(keys), dim), dtype=np.float32)
    if first_index:
        idx = list(first_index.values())
        vecs = np.asarray(encode_missing(idx), dtype=np.float32)
        if vecs.shape != (len(idx), dim):
            raise ValueError(f"encoder returned shape {vecs.shape}, expected {(len(idx), dim)}")
        fresh = {keys[i]: vecs[j] for j, i in enumerate(idx)}
        found.update(fresh)
        if cache is not None:
            cache.put_many(fresh)
    for i, key in enumerate(keys):
        out[i] = found[key]
    return out


def encode_texts_cached(
    encoder: TextEncoder,
    texts: Sequence[str],
    cache: EmbeddingCache | None,
    *,
    batch_size: int = 64,
    progress: bool = False,
) -> np.ndarray:
    """``encoder.encode(texts)`` through the cache: only new or changed texts reach the model."""
    keys = [text_key(encoder.name, t) for t in texts]
    return encode_cached(
        keys,
        lambda idx: encoder.encode([texts[i] for i in idx], batch_size=batch_size, progress=progress),
        cache,
        dim=encoder.dim,
    )
