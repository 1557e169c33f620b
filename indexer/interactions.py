"""Shopper interactions (views, clicks, carts, purchases): validation, ingestion and a durable,
append-only store inside the index directory.

Layout::

    INDEX/events/events.sqlite     SQLite in WAL mode with synchronous=FULL: a batch is on disk
                                   (fsync'd) before ``append`` returns, so an acknowledged event
                                   survives ``kill -9`` and power loss
    INDEX/events/salt              random salt for hashed ids when none is configured (mode 0600)

Events are only ever appended; the CF trainer reads them all (``EventStore.read``). Event weights
are applied at training time, so changing ``event_weights`` re-weights the whole history.

Privacy: with ``hash_user_ids`` the user and session ids are replaced by HMAC-SHA256(salt, id)
before they are stored, and query text is never written to a log or a report (reports name the
file, row and field only).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import hmac
import json
import math
import os
import secrets
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from indexer.durable import file_digest
from shopsearch.errors import CatalogError, ConfigError, IndexCorruptError
from shopsearch.settings import Settings
from shopsearch.text import is_utf8

EVENTS_DIR = "events"
DB_NAME = "events.sqlite"
SALT_NAME = "salt"
FORMAT_VERSION = 1
MAX_ID_CHARS = 512
MAX_QUERY_CHARS = 1000
MAX_POSITION = 1_000_000  # result positions past this are not a position (and overflow storage)
MAX_ISSUES = 1000  # issues kept in a report; the counts are always complete
_BATCH = 5000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    ts       REAL    NOT NULL,
    item     TEXT    NOT NULL,
    event    TEXT    NOT NULL,
    user     TEXT,
    session  TEXT,
    query    TEXT,
    position INTEGER,
    ingested REAL    NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS imports (
    digest   TEXT    PRIMARY KEY,
    name     TEXT    NOT NULL,
    rows     INTEGER NOT NULL,
    events   INTEGER NOT NULL,
    complete INTEGER NOT NULL,
    ts       REAL    NOT NULL
);
"""


# ====================================================================== values
@dataclass(frozen=True)
class Event:
    """One validated interaction. ``timestamp`` is seconds since the epoch (UTC); ``position`` is
    the 1-based rank the item was shown at, when the log knows it."""

    item_id: str
    event: str
    timestamp: float
    user_id: str | None = None
    session_id: str | None = None
    query: str | None = None
    position: int | None = None


@dataclass(frozen=True)
class EventIssue:
    """A rejected event: where it came from and why. Never carries the query text."""

    source: str  # file name or "request"
    row: int | None  # 1-based line/row in the file, or the index in the request batch (0-based)
    field: str | None
    reason: str

    def __str__(self) -> str:
        where = self.source if self.row is None else f"{self.source}:{self.row}"
        what = f" [{self.field}]" if self.field else ""
        return f"{where}{what}: {self.reason}"


@dataclass
class EventReport:
    """Counts and (the first ``MAX_ISSUES``) issues of one ingestion; bad events are never fatal."""

    received: int = 0
    accepted: int = 0
    rejected: int = 0
    by_reason: Counter[str] = field(default_factory=Counter)
    by_event: Counter[str] = field(default_factory=Counter)
    issues: list[EventIssue] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # per file: skipped as imported, or resumed

    def reject(self, source: str, row: int | None, field_name: str | None, reason: str, kind: str) -> None:
        self.rejected += 1
        self.by_reason[kind] += 1
        if len(self.issues) < MAX_ISSUES:
            self.issues.append(EventIssue(source, row, field_name, reason))

    def merge(self, other: EventReport) -> None:
        self.received += other.received
        self.accepted += other.accepted
        self.rejected += other.rejected
        self.by_reason.update(other.by_reason)
        self.by_event.update(other.by_event)
        room = MAX_ISSUES - len(self.issues)
        self.issues.extend(other.issues[: max(room, 0)])
        self.files.extend(f for f in other.files if f not in self.files)
        self.notes.extend(other.notes)

    def summary(self) -> str:
        head = f"{self.received} events read, {self.accepted} stored, {self.rejected} rejected"
        if self.by_reason:
            head += " (" + ", ".join(f"{k}: {v}" for k, v in self.by_reason.most_common()) + ")"
        lines = [*self.notes, head]
        lines += [f"  {i}" for i in self.issues[:20]]
        if self.rejected > 20:
            lines.append(f"  ... {self.rejected - 20} more")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "accepted": self.accepted,
            "rejected": self.rejected,
            "by_reason": dict(self.by_reason),
            "by_event": dict(self.by_event),
            "issues": [asdict(i) for i in self.issues],
            "issues_truncated": self.rejected > len(self.issues),
            "files": list(self.files),
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class _FileProgress:
    """How far the imports of one event file (known by its sha256) got."""

    digest: str
    name: str
    rows: int = 0  # the last file row (line) that a stored batch covered
    complete: bool = False
    events: int = 0
    ts: float = 0.0


@dataclass
class EventLog:
    """All stored events as columns, in storage order (what the CF trainer reads)."""

    seq: np.ndarray  # int64
    ts: np.ndarray  # float64 seconds
    item: list[str]
    event: list[str]
    user: list[str | None]
    session: list[str | None]
    query: list[str | None]
    position: np.ndarray  # int64, 0 = unknown

    def __len__(self) -> int:
        return len(self.seq)

    def take(self, index: np.ndarray) -> EventLog:
        """Rows at ``index`` (a boolean mask or positions): e.g. a time-based training split."""
        idx = np.flatnonzero(index) if np.asarray(index).dtype == bool else np.asarray(index, dtype=np.int64)
        return EventLog(
            seq=self.seq[idx],
            ts=self.ts[idx],
            item=[self.item[i] for i in idx],
            event=[self.event[i] for i in idx],
            user=[self.user[i] for i in idx],
            session=[self.session[i] for i in idx],
            query=[self.query[i] for i in idx],
            position=self.position[idx],
        )

    def to_events(self) -> list[Event]:
        """The rows as events again (e.g. to store a log read from a file)."""
        return [
            Event(i, e, float(t), u, s, q, int(p) or None)
            for i, e, t, u, s, q, p in zip(
                self.item,
                self.event,
                self.ts,
                self.user,
                self.session,
                self.query,
                self.position,
                strict=True,
            )
        ]

    @classmethod
    def from_events(cls, events: Sequence[Event]) -> EventLog:
        return cls(
            seq=np.arange(1, len(events) + 1, dtype=np.int64),
            ts=np.asarray([e.timestamp for e in events], dtype=np.float64),
            item=[e.item_id for e in events],
            event=[e.event for e in events],
            user=[e.user_id for e in events],
            session=[e.session_id for e in events],
            query=[e.query for e in events],
            position=np.asarray([e.position or 0 for e in events], dtype=np.int64),
        )


# ====================================================================== parsing
class _Bad(Exception):
    def __init__(self, field_name: str | None, reason: str, kind: str) -> None:
        super().__init__(reason)
        self.field = field_name
        self.reason = reason
        self.kind = kind


def parse_timestamp(value: Any) -> float:
    """ISO 8601 text (naive = UTC) or epoch seconds/milliseconds -> epoch seconds.

    Raises ValueError with a short reason when the value cannot be a time.
    """
    if isinstance(value, bool):
        raise ValueError("a boolean is not a timestamp")
    if isinstance(value, int | float):
        try:
            t = float(value)
        except OverflowError:  # an integer past float range (JSON allows 1 followed by 400 zeros)
            raise ValueError("timestamp is not a finite number") from None
    elif isinstance(value, datetime):
        t = (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
    elif isinstance(value, str) and value.strip():
        s = value.strip()
        try:
            t = float(s)
        except ValueError:
            try:
                dt = datetime.fromisoformat(s.replace("Z", "+00:00") if s.endswith("Z") else s)
            except ValueError:
                raise ValueError(f"cannot parse {s[:40]!r} as ISO 8601 or epoch seconds") from None
            t = (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()
    else:
        raise ValueError("empty or non-scalar timestamp")
    if not math.isfinite(t):
        raise ValueError("timestamp is not a finite number")
    if t > 1e11:  # epoch milliseconds (1e11 s is the year 5138)
        t /= 1000.0
    if t < 0 or t > 4.1e9:  # before 1970 or after 2099
        raise ValueError("timestamp is outside 1970..2099")
    return t


def _id_field(raw: Mapping[str, Any], name: str, required: bool) -> str | None:
    value = raw.get(name)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        if required:
            raise _Bad(name, f"{name} is missing", "missing field")
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise _Bad(name, f"{name} must be a string or a number", "bad value")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    if not text:
        if required:
            raise _Bad(name, f"{name} is empty", "missing field")
        return None
    if len(text) > MAX_ID_CHARS:
        raise _Bad(name, f"{name} is longer than {MAX_ID_CHARS} characters", "bad value")
    return text


def hash_id(value: str, salt: bytes) -> str:
    """Keyed hash of a user/session id: stable for one salt, useless without it."""
    return hmac.new(salt, value.encode("utf-8"), hashlib.sha256).hexdigest()[:32]


class EventParser:
    """Turns raw mappings (a file row, an API object) into :class:`Event` or a reported rejection.

    ``known_item`` decides whether an item id exists (None: accept any id, for logs ingested
    before their catalog). ``salt`` set: user and session ids are hashed.
    """

    def __init__(
        self,
        weights: Mapping[str, float],
        *,
        known_item: Callable[[str], bool] | None = None,
        salt: bytes | None = None,
        default_time: float | None = None,
    ) -> None:
        self.weights = dict(weights)
        self.known_item = known_item
        self.salt = salt
        self.default_time = default_time

    def parse(self, raw: Any) -> Event:
        """Raises ``_Bad`` (internal) with the field and reason."""
        if not isinstance(raw, Mapping):
            raise _Bad(None, "an event must be a JSON object", "not an object")
        # JSON may carry lone surrogates ("\ud800"), CSV undecodable bytes: neither can be stored
        for key, value in raw.items():
            if isinstance(value, str) and not is_utf8(value):
                raise _Bad(str(key), f"{key} is not valid UTF-8 text", "bad value")
        item = _id_field(raw, "item_id", True)
        assert item is not None
        kind_raw = raw.get("event")
        if kind_raw is None or (isinstance(kind_raw, str) and not kind_raw.strip()):
            raise _Bad("event", "event is missing", "missing field")
        kind = str(kind_raw).strip().lower()
        if kind not in self.weights:
            known = ", ".join(sorted(self.weights))
            raise _Bad(
                "event", f"unknown event type {str(kind_raw)[:40]!r} (known: {known})", "unknown event"
            )
        ts_raw = raw.get("timestamp")
        if ts_raw is None or (isinstance(ts_raw, str) and not ts_raw.strip()):
            if self.default_time is None:
                raise _Bad("timestamp", "timestamp is missing", "missing field")
            ts = self.default_time
        else:
            try:
                ts = parse_timestamp(ts_raw)
            except ValueError as exc:
                raise _Bad("timestamp", str(exc), "bad timestamp") from None
        user = _id_field(raw, "user_id", False)
        session = _id_field(raw, "session_id", False)
        query_raw = raw.get("query")
        query: str | None = None
        if query_raw is not None and not (isinstance(query_raw, float) and math.isnan(query_raw)):
            if not isinstance(query_raw, str | int | float) or isinstance(query_raw, bool):
                raise _Bad("query", "query must be text", "bad value")
            query = " ".join(str(query_raw).split())[:MAX_QUERY_CHARS] or None
        if user is None and session is None and query is None:
            raise _Bad("user_id", "an event needs a user_id, a session_id or a query", "missing field")
        pos_raw = raw.get("position")
        position: int | None = None
        if pos_raw is not None and pos_raw != "" and not (isinstance(pos_raw, float) and math.isnan(pos_raw)):
            try:
                position = int(float(pos_raw))
            except (TypeError, ValueError, OverflowError):  # OverflowError: infinity, 1e400
                position = None
            if (
                position is None
                or not 1 <= position <= MAX_POSITION
                or isinstance(pos_raw, bool)
                or float(pos_raw) != position
            ):
                raise _Bad(
                    "position", f"position must be an integer from 1 (top) to {MAX_POSITION:,}", "bad value"
                )
        if self.known_item is not None and not self.known_item(item):
            raise _Bad("item_id", f"unknown item {item[:80]!r}", "unknown item")
        if self.salt is not None:
            user = hash_id(user, self.salt) if user is not None else None
            session = hash_id(session, self.salt) if session is not None else None
        return Event(item, kind, ts, user, session, query, position)

    def parse_many(
        self, rows: Iterable[tuple[int | None, Any]], source: str, report: EventReport
    ) -> Iterator[Event]:
        """Good events out, bad ones counted in ``report``."""
        for row, raw in rows:
            report.received += 1
            if isinstance(raw, _Bad):  # unreadable line, from the file reader
                report.reject(source, row, raw.field, raw.reason, raw.kind)
                continue
            try:
                ev = self.parse(raw)
            except _Bad as bad:
                report.reject(source, row, bad.field, bad.reason, bad.kind)
                continue
            report.by_event[ev.event] += 1
            yield ev


# ====================================================================== files
def _file_format(path: Path) -> str:
    name = path.name.lower()
    for suffix, fmt in ((".jsonl", "jsonl"), (".ndjson", "jsonl"), (".json", "jsonl"), (".csv", "csv")):
        if name.endswith(suffix):
            return fmt
    if name.endswith(".tsv"):
        return "tsv"
    if name.endswith(".parquet"):
        return "parquet"
    raise CatalogError(f"{path}: unknown event file type (expected .jsonl, .csv, .tsv or .parquet)")


def read_event_rows(path: Path, field_map: Mapping[str, str] | None = None) -> Iterator[tuple[int, Any]]:
    """(1-based row, mapping or _Bad) for every data row of a JSONL/CSV/TSV/Parquet event file.

    ``field_map`` renames the file's columns to ours ({"sku": "item_id"}). A file that cannot be
    opened at all raises CatalogError; a bad row is yielded as a rejection, never raised.
    """
    path = Path(path)
    fmt = _file_format(path)
    if not path.is_file():
        raise CatalogError(f"event file not found: {path}")
    rename = dict(field_map or {})

    def mapped(raw: Any) -> Any:
        if rename and isinstance(raw, dict):
            return {rename.get(k, k): v for k, v in raw.items()}
        return raw

    try:
        if fmt == "jsonl":
            # bytes, decoded line by line: a text stream decodes whole chunks, so one bad byte
            # used to cost every line around it
            with open(path, "rb") as fb:
                for n, data in enumerate(fb, 1):
                    try:
                        line = data.decode("utf-8-sig" if n == 1 else "utf-8")  # -sig: a byte-order mark
                    except UnicodeDecodeError:
                        yield n, _Bad(None, "line is not valid UTF-8", "unreadable row")
                        continue
                    if not line.strip():
                        continue
                    try:
                        yield n, mapped(json.loads(line))
                    except json.JSONDecodeError as exc:
                        yield n, _Bad(None, f"not valid JSON ({exc.msg})", "unreadable row")
                    except ValueError as exc:  # e.g. an integer of more than 4,300 digits
                        yield n, _Bad(None, f"not readable JSON ({exc})", "unreadable row")
        elif fmt in ("csv", "tsv"):
            with open(path, "rb") as fb:
                # undecodable bytes stay in their row (as surrogates) and reject only that row
                lines = (
                    b.decode("utf-8-sig" if i == 0 else "utf-8", "surrogateescape") for i, b in enumerate(fb)
                )
                reader = csv.DictReader(lines, delimiter="\t" if fmt == "tsv" else ",")
                for n, raw in enumerate(reader, 2):  # the header is line 1
                    if None in raw:
                        yield n, _Bad(None, "row has more cells than the header", "unreadable row")
                        continue
                    yield n, mapped({k: (v if v != "" else None) for k, v in raw.items()})
        else:
            import pyarrow.parquet as pq

            try:
                pf = pq.ParquetFile(path)
            except Exception as exc:  # pyarrow raises several unrelated types here
                raise CatalogError(f"{path} is not a readable Parquet file: {exc}") from None
            n = 0
            for batch in pf.iter_batches(batch_size=_BATCH):
                for raw in batch.to_pylist():
                    n += 1
                    yield n, mapped(raw)
    except UnicodeDecodeError:
        raise CatalogError(f"{path} is not UTF-8 text") from None
    except OSError as exc:
        raise CatalogError(f"cannot read event file {path}: {exc.strerror or exc}") from None


# ====================================================================== store
def _salt_for(events_dir: Path, settings: Settings) -> bytes | None:
    if not settings.hash_user_ids:
        return None
    if settings.user_id_salt:
        return settings.user_id_salt.encode("utf-8")
    path = events_dir / SALT_NAME
    try:
        return bytes.fromhex(path.read_text(encoding="ascii").strip())
    except FileNotFoundError:
        pass
    except ValueError:
        raise IndexCorruptError(f"{path} is not a hex salt") from None
    events_dir.mkdir(parents=True, exist_ok=True)
    salt = secrets.token_bytes(32)
    tmp = path.with_name(SALT_NAME + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(salt.hex())
        f.flush()
        os.fsync(f.fileno())
    try:
        os.link(tmp, path)  # first writer wins; a concurrent one reads the winner's salt
    except FileExistsError:
        os.unlink(tmp)
        return bytes.fromhex(path.read_text(encoding="ascii").strip())
    os.unlink(tmp)
    return salt


class EventStore:
    """The append-only event log of one index. Thread-safe; several processes may append."""

    def __init__(self, index_dir: Path, settings: Settings) -> None:
        self.index_dir = Path(index_dir)
        self.settings = settings
        self.dir = self.index_dir / EVENTS_DIR
        self.path = self.dir / DB_NAME
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise IndexCorruptError(f"event store {self.path} is unreadable: {exc}") from None
        self.salt = _salt_for(self.dir, settings)
        self._check_id_mode()

    def _check_id_mode(self) -> None:
        """Hashed and raw ids must not mix in one log (a user would become two)."""
        mode = "raw" if self.salt is None else "hmac-sha256:" + hashlib.sha256(self.salt).hexdigest()[:12]
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key='id_mode'").fetchone()
            if row is None:
                self._db.execute("INSERT OR IGNORE INTO meta VALUES ('id_mode', ?)", (mode,))
                self._db.execute(
                    "INSERT OR IGNORE INTO meta VALUES ('format_version', ?)", (str(FORMAT_VERSION),)
                )
                row = (mode,)
        if row[0] != mode:
            stored = "hashed" if row[0].startswith("hmac") else "raw"
            raise ConfigError(
                f"the events in {self.path} were stored with {stored} user ids ({row[0]}); this run would "
                f"store {mode}: keep hash_user_ids and user_id_salt as they were when the log started"
            )

    # ----------------------------------------------------------------- writes
    def parser(
        self, *, known_item: Callable[[str], bool] | None = None, default_time: float | None = None
    ) -> EventParser:
        return EventParser(
            self.settings.event_weights, known_item=known_item, salt=self.salt, default_time=default_time
        )

    def append(self, events: Sequence[Event], progress: _FileProgress | None = None) -> int:
        """Store events in one transaction; durable (fsync'd) when this returns. Returns the count.
        ``progress``: the file import they come from, recorded in the same transaction, so a
        retry after a crash resumes exactly after them."""
        if not events and progress is None:
            return 0
        now = time.time()
        rows = [
            (e.timestamp, e.item_id, e.event, e.user_id, e.session_id, e.query, e.position, now)
            for e in events
        ]
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.executemany(
                    "INSERT INTO events (ts, item, event, user, session, query, position, ingested) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
                if progress is not None:
                    self._db.execute(
                        "INSERT INTO imports (digest, name, rows, events, complete, ts) "
                        "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(digest) DO UPDATE SET "
                        "rows = excluded.rows, events = events + excluded.events, "
                        "complete = excluded.complete, ts = excluded.ts",
                        (progress.digest, progress.name, progress.rows, len(rows), progress.complete, now),
                    )
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
                raise IndexCorruptError(f"cannot write to the event store {self.path}: {exc}") from None
        return len(rows)

    def ingest(
        self,
        rows: Iterable[tuple[int | None, Any]],
        source: str,
        *,
        known_item: Callable[[str], bool] | None = None,
        default_time: float | None = None,
        report: EventReport | None = None,
        on_batch: Callable[[int], None] | None = None,
        file: _FileProgress | None = None,
    ) -> EventReport:
        """Validate and append raw rows in batches; bad rows are reported, never fatal.
        ``file``: rows come from that file import; each batch records how far it got."""
        report = report or EventReport()
        parser = self.parser(known_item=known_item, default_time=default_time)
        last_row = [file.rows if file else 0]

        def tracked() -> Iterator[tuple[int | None, Any]]:
            for row, raw in rows:
                last_row[0] = row or last_row[0]
                yield row, raw

        def progress(complete: bool) -> _FileProgress | None:
            return None if file is None else replace(file, rows=last_row[0], complete=complete)

        batch: list[Event] = []
        for ev in parser.parse_many(tracked(), source, report):
            batch.append(ev)
            if len(batch) >= _BATCH:
                report.accepted += self.append(batch, progress(False))
                batch = []
                if on_batch:
                    on_batch(report.received)
        report.accepted += self.append(batch, progress(True))
        if on_batch:
            on_batch(report.received)
        return report

    def import_files(
        self,
        paths: Sequence[Path],
        *,
        known_item: Callable[[str], bool] | None = None,
        field_map: Mapping[str, str] | None = None,
        progress: bool = False,
        again: bool = False,
    ) -> EventReport:
        """Ingest JSONL/CSV/TSV/Parquet event files (each file's rows validated and stored).

        A file is known by its sha256: importing the same file again is refused (a retry would
        count every click twice) unless ``again``, and an import cut short (a crash, Ctrl-C)
        resumes after the last stored batch when the same file is imported again."""
        total = EventReport()
        for path in paths:
            path = Path(path)
            report = EventReport(files=[str(path)])
            file = self._file_progress(path)
            if file.complete and not again:
                when = datetime.fromtimestamp(file.ts, UTC).strftime("%Y-%m-%d %H:%M UTC")
                report.notes.append(
                    f"{path.name}: skipped, this file was imported on {when} ({file.events} events "
                    "stored); importing it again would count them twice (--again does that)"
                )
                total.merge(report)
                continue
            rows = read_event_rows(path, field_map)
            if file.rows and not again:  # resume after the rows a cut-short import stored
                done = file.rows
                rows = ((n, raw) for n, raw in rows if n is None or n > done)
                report.notes.append(
                    f"{path.name}: resumed after row {done:,} (an earlier import stored {file.events} "
                    "events before it was cut short)"
                )
            bar = None
            if progress:
                from tqdm import tqdm

                bar = tqdm(desc=f"events {path.name}", unit=" ev", leave=False)

            def tick(n: int, bar: Any = bar) -> None:
                if bar is not None:
                    bar.update(n - bar.n)

            try:
                self.ingest(
                    rows,
                    path.name,
                    known_item=known_item,
                    report=report,
                    on_batch=tick,
                    file=file if not again else None,
                )
            finally:
                if bar is not None:
                    bar.close()
            total.merge(report)
        return total

    def _file_progress(self, path: Path) -> _FileProgress:
        """What earlier imports of this file (by content) stored."""
        _file_format(path)  # an unknown kind of file, or none at all, is said first
        if not path.is_file():
            raise CatalogError(f"event file not found: {path}")
        try:
            digest = file_digest(path)
        except OSError as exc:
            raise CatalogError(f"cannot read event file {path}: {exc.strerror or exc}") from None
        with self._lock:
            row = self._db.execute(
                "SELECT rows, events, complete, ts FROM imports WHERE digest = ?", (digest,)
            ).fetchone()
        if row is None:
            return _FileProgress(digest, path.name)
        return _FileProgress(digest, path.name, int(row[0]), bool(row[2]), int(row[1]), float(row[3]))

    # ----------------------------------------------------------------- reads
    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM events").fetchone()[0])

    def last_seq(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT MAX(seq) FROM events").fetchone()
        return int(row[0] or 0)

    def read(self, since_seq: int = 0) -> EventLog:
        """Every event with seq > since_seq, oldest first (storage order)."""
        with self._lock:
            return _read_since(self._db, since_seq)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            n, t0, t1 = self._db.execute("SELECT COUNT(*), MIN(ts), MAX(ts) FROM events").fetchone()
            kinds = dict(self._db.execute("SELECT event, COUNT(*) FROM events GROUP BY event").fetchall())
        return {
            "events": int(n),
            "by_event": kinds,
            "first": datetime.fromtimestamp(t0, UTC).isoformat() if t0 is not None else None,
            "last": datetime.fromtimestamp(t1, UTC).isoformat() if t1 is not None else None,
            "hashed_ids": self.salt is not None,
        }

    def user_key(self, user_id: str) -> str:
        """The id as stored: hashed when the store hashes ids (for personalised lookups)."""
        return hash_id(user_id, self.salt) if self.salt is not None else user_id

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> EventStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read_since(db: sqlite3.Connection, since_seq: int, limit: int = -1) -> EventLog:
    rows = db.execute(
        "SELECT seq, ts, item, event, user, session, query, position FROM events "
        "WHERE seq > ? ORDER BY seq LIMIT ?",
        (since_seq, limit),
    ).fetchall()
    return EventLog(
        seq=np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows)),
        ts=np.fromiter((r[1] for r in rows), dtype=np.float64, count=len(rows)),
        item=[r[2] for r in rows],
        event=[r[3] for r in rows],
        user=[r[4] for r in rows],
        session=[r[5] for r in rows],
        query=[r[6] for r in rows],
        position=np.fromiter((r[7] or 0 for r in rows), dtype=np.int64, count=len(rows)),
    )


class EventTail:
    """Read-only follower of an index's event log: the events stored after a given seq, for the
    live CF counts of a serving process. Creates nothing: no log yet reads as no events."""

    def __init__(self, index_dir: Path) -> None:
        self.path = Path(index_dir) / EVENTS_DIR / DB_NAME
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def read(self, since_seq: int, limit: int = 200_000) -> EventLog:
        """Up to ``limit`` events with seq > since_seq, oldest first."""
        with self._lock:
            if self._db is None:
                if not self.path.exists():
                    return EventLog.from_events([])
                try:
                    uri = f"{self.path.resolve().as_uri()}?mode=ro"
                    self._db = sqlite3.connect(uri, uri=True, timeout=5.0, check_same_thread=False)
                except sqlite3.Error as exc:
                    raise IndexCorruptError(f"event store {self.path} is unreadable: {exc}") from None
            try:
                return _read_since(self._db, since_seq, limit)
            except sqlite3.Error as exc:
                raise IndexCorruptError(f"cannot read the event store {self.path}: {exc}") from None

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


def user_key_for(index_dir: Path, settings: Settings, user_id: str) -> str:
    """How ``user_id`` is stored in this index's log, without opening the database."""
    salt = _salt_for(Path(index_dir) / EVENTS_DIR, settings)
    return hash_id(user_id, salt) if salt is not None else user_id
