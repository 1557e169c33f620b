"""The event store: durability under kill -9, validation with reported (never fatal) bad events,
file formats, id hashing, and that query text never reaches a report."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from indexer.cf.graph import event_weights
from indexer.interactions import (
    EventParser,
    EventReport,
    EventStore,
    parse_timestamp,
    read_event_rows,
)
from shopsearch.errors import CatalogError, ConfigError
from shopsearch.settings import load_settings

ROOT = Path(__file__).resolve().parents[1]
SECRET_QUERY = "very private query text 4711"

GOOD = [
    {
        "user_id": "u1",
        "session_id": "s1",
        "query": "red mug",
        "item_id": "a",
        "event": "click",
        "timestamp": "2024-05-01T10:00:00Z",
        "position": 2,
    },
    {
        "user_id": "u1",
        "session_id": "s1",
        "query": "red mug",
        "item_id": "b",
        "event": "add_to_cart",
        "timestamp": 1714557700,
    },
    {"user_id": "u2", "query": "Lamp", "item_id": "c", "event": "purchase", "timestamp": 1714557800123},
    {"session_id": "s9", "item_id": "a", "event": "view", "timestamp": "2024-05-01 10:05:00.5"},
]
BAD = [
    ({"query": SECRET_QUERY, "event": "click", "timestamp": 1714557700}, "item_id", "missing field"),
    (
        {"query": SECRET_QUERY, "item_id": "zzz", "event": "click", "timestamp": 1714557700},
        "item_id",
        "unknown item",
    ),
    (
        {"query": SECRET_QUERY, "item_id": "a", "event": "click", "timestamp": "last tuesday"},
        "timestamp",
        "bad timestamp",
    ),
    ({"query": SECRET_QUERY, "item_id": "a", "event": "click"}, "timestamp", "missing field"),
    (
        {"query": SECRET_QUERY, "item_id": "a", "event": "teleport", "timestamp": 1714557700},
        "event",
        "unknown event",
    ),
    (
        {"query": SECRET_QUERY, "item_id": "a", "event": "click", "timestamp": 1714557700, "position": 0},
        "position",
        "bad value",
    ),
    # past float or SQLite integer range: reported like any bad value, not an OverflowError
    *[
        (
            {"query": "q", "item_id": "a", "event": "click", "timestamp": 1714557700, "position": p},
            "position",
            "bad value",
        )
        for p in (float("inf"), 10**400, 2**70)
    ],
    ({"query": "q", "item_id": "a", "event": "click", "timestamp": 10**400}, "timestamp", "bad timestamp"),
    ({"item_id": "a", "event": "click", "timestamp": 1714557700}, "user_id", "missing field"),
    (
        {"query": SECRET_QUERY, "item_id": "a", "event": "click", "timestamp": float("nan")},
        "timestamp",
        "bad timestamp",
    ),
]
KNOWN = {"a", "b", "c"}


def write_jsonl(path: Path, rows: list, extra_lines: tuple[str, ...] = ()) -> Path:
    lines = [json.dumps(r) for r in rows] + list(extra_lines)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_timestamps_parse_every_common_form():
    t = 1714557600.0  # 2024-05-01T10:00:00Z
    assert parse_timestamp("2024-05-01T10:00:00Z") == t
    assert parse_timestamp("2024-05-01 10:00:00") == t  # naive = UTC
    assert parse_timestamp("2024-05-01T12:00:00+02:00") == t
    assert parse_timestamp(t) == t
    assert parse_timestamp(str(int(t))) == t
    assert parse_timestamp(int(t * 1000)) == t  # epoch milliseconds
    for bad in ("yesterday", "", float("inf"), True, -5, [1], 10**400):
        with pytest.raises(ValueError):
            parse_timestamp(bad)


def test_good_and_bad_events_are_counted_and_reported_without_query_text(tmp_path):
    settings = load_settings()
    store = EventStore(tmp_path, settings)
    rows = GOOD + [b for b, _, _ in BAD]
    path = write_jsonl(tmp_path / "ev.jsonl", rows, extra_lines=("{not json", "[1, 2]"))
    report = store.import_files([path], known_item=KNOWN.__contains__)
    assert report.received == len(rows) + 2
    assert report.accepted == len(GOOD) == store.count()
    assert report.rejected == len(BAD) + 2
    # every bad row is named by line and field, with its reason
    by_line = {i.row: i for i in report.issues}
    for n, (_raw, field, _kind) in enumerate(BAD, start=len(GOOD) + 1):
        assert by_line[n].field == field, (n, by_line[n])
        assert by_line[n].source == "ev.jsonl"
    expected = Counter(kind for _, _, kind in BAD) + Counter({"unreadable row": 1, "not an object": 1})
    assert report.by_reason == expected
    assert by_line[len(rows) + 1].reason.startswith("not valid JSON")
    assert "must be a JSON object" in by_line[len(rows) + 2].reason
    assert report.by_reason["unknown item"] == 1
    assert report.by_reason["bad timestamp"] == 3
    assert report.by_reason["unreadable row"] == 1
    # privacy: the raw query never appears in what is printed or returned
    assert SECRET_QUERY not in report.summary()
    assert SECRET_QUERY not in json.dumps(report.to_dict())
    log = store.read()
    assert log.item == ["a", "b", "c", "a"]
    assert log.event == ["click", "add_to_cart", "purchase", "view"]
    assert log.position.tolist() == [2, 0, 0, 0]
    assert log.ts[2] == pytest.approx(1714557800.123)
    store.close()


def test_csv_tsv_and_parquet_match_jsonl(tmp_path):
    settings = load_settings()
    cols = ["user_id", "session_id", "query", "item_id", "event", "timestamp", "position"]
    csv_path = tmp_path / "ev.csv"
    lines = [",".join(cols)]
    for r in GOOD:
        lines.append(",".join(str(r.get(c, "")) for c in cols))
    csv_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tsv_path = tmp_path / "ev.tsv"
    tsv_path.write_text(csv_path.read_text().replace(",", "\t"), encoding="utf-8")
    pq_path = tmp_path / "ev.parquet"
    table = pa.table({c: [None if r.get(c) is None else str(r[c]) for r in GOOD] for c in cols})
    pq.write_table(table, pq_path)
    jsonl = write_jsonl(tmp_path / "ev.jsonl", GOOD)
    logs = []
    for i, path in enumerate((jsonl, csv_path, tsv_path, pq_path)):
        with EventStore(tmp_path / f"idx{i}", settings) as store:
            report = store.import_files([path], known_item=KNOWN.__contains__)
            assert (report.accepted, report.rejected) == (4, 0), (path, report.summary())
            logs.append(store.read())
    for other in logs[1:]:
        assert other.item == logs[0].item and other.event == logs[0].event
        assert other.query == logs[0].query and other.user == logs[0].user
        np.testing.assert_allclose(other.ts, logs[0].ts)
        assert other.position.tolist() == logs[0].position.tolist()


def test_field_map_and_unreadable_files(tmp_path):
    path = write_jsonl(tmp_path / "ev.jsonl", [{"sku": "a", "kind": "click", "q": "x", "t": 1714557700}])
    rows = list(read_event_rows(path, {"sku": "item_id", "kind": "event", "q": "query", "t": "timestamp"}))
    parser = EventParser(load_settings().event_weights)
    report = EventReport()
    events = list(parser.parse_many(rows, "ev.jsonl", report))
    assert [e.item_id for e in events] == ["a"] and report.rejected == 0
    with pytest.raises(CatalogError, match="not found"):
        list(read_event_rows(tmp_path / "missing.jsonl"))
    with pytest.raises(CatalogError, match="unknown event file type"):
        list(read_event_rows(tmp_path / "ev.xml"))
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(CatalogError, match="not a readable Parquet"):
        list(read_event_rows(tmp_path / "bad.parquet"))


def test_event_weights_are_configurable(tmp_path):
    settings = load_settings(event_weights={"click": 2.0, "wishlist": 4.0})
    with EventStore(tmp_path, settings) as store:
        rows = [
            (1, {"item_id": "a", "event": "wishlist", "user_id": "u", "timestamp": 1714557700}),
            (2, {"item_id": "a", "event": "purchase", "user_id": "u", "timestamp": 1714557700}),
        ]
        report = store.ingest(rows, "request")
        assert report.accepted == 1 and report.by_reason["unknown event"] == 1
        log = store.read()
    w = event_weights(log.event, log.ts, log.position, settings.event_weights)
    assert w.tolist() == [4.0]
    # position-bias correction: a click at rank 4 counts 4 ** eta
    w = event_weights(["click", "click"], np.zeros(2), np.asarray([1, 4]), {"click": 1.0}, eta=1.0)
    assert w.tolist() == [1.0, 4.0]
    with pytest.raises(ConfigError):
        load_settings(event_weights={"click": -1.0})


def test_user_ids_hashed_with_salt_and_modes_cannot_mix(tmp_path):
    settings = load_settings(hash_user_ids=True)
    row = [
        (
            1,
            {
                "item_id": "a",
                "event": "click",
                "user_id": "alice@example.com",
                "session_id": "s-1",
                "timestamp": 1714557700,
            },
        )
    ]
    with EventStore(tmp_path, settings) as store:
        store.ingest(row, "request")
        stored = store.read().user[0]
        assert stored != "alice@example.com" and len(stored) == 32
        assert store.user_key("alice@example.com") == stored
        assert store.read().session[0] != "s-1"
    salt_file = tmp_path / "events" / "salt"
    assert stat.S_IMODE(salt_file.stat().st_mode) == 0o600
    with EventStore(tmp_path, settings) as store:  # same salt on reopen: same hash
        store.ingest(row, "request")
        users = store.read().user
        assert users[0] == users[1]
    with pytest.raises(ConfigError, match="hashed user ids"):
        EventStore(tmp_path, load_settings())
    # a configured salt gives a different, still stable, hash
    with EventStore(tmp_path / "other", load_settings(hash_user_ids=True, user_id_salt="pepper")) as store:
        store.ingest(row, "request")
        assert store.read().user[0] not in (stored, "alice@example.com")


_WRITER = """
import sys, time
sys.path.insert(0, {root!r})
from indexer.interactions import Event, EventStore
from shopsearch.settings import load_settings
store = EventStore({index!r}, load_settings())
n = 0
while True:
    batch = [Event(item_id=f"i{{n + k}}", event="click", timestamp=1714557700.0 + n + k, user_id="u")
             for k in range(50)]
    store.append(batch)
    n += len(batch)
    print(n, flush=True)  # acknowledged: append returned
"""


def test_acknowledged_events_survive_kill_9(tmp_path):
    index = tmp_path / "index"
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER.format(root=str(ROOT), index=str(index))],
        stdout=subprocess.PIPE,
        text=True,
    )
    acked = 0
    try:
        deadline = time.monotonic() + 30
        while acked < 2000 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            acked = int(line)
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # mid-write, no cleanup
        proc.wait()
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    assert acked >= 2000, "writer did not get far enough"
    with EventStore(index, load_settings()) as store:
        count = store.count()
        log = store.read()
    assert count >= acked
    assert count % 50 == 0  # whole batches only: a transaction is all or nothing
    assert log.item[:acked] == [f"i{k}" for k in range(acked)]


@pytest.mark.slow
def test_cli_events_import_reports_bad_rows_and_stats(tmp_path):
    path = write_jsonl(tmp_path / "ev.jsonl", GOOD + [BAD[2][0]], extra_lines=("{oops",))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    index = tmp_path / "index"
    EventStore(index, load_settings()).close()  # 'events import' refuses a folder without index or store

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "api.cli", *args], capture_output=True, text=True, env=env, timeout=120
        )

    proc = cli("events", "import", str(path), "--index", str(index), "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "6 events read, 4 stored, 2 rejected" in proc.stdout
    assert "ev.jsonl:5 [timestamp]" in proc.stdout and "ev.jsonl:6" in proc.stdout
    assert SECRET_QUERY not in proc.stdout + proc.stderr
    stats = json.loads(cli("events", "stats", "--index", str(index)).stdout)
    assert stats["events"] == 4 and stats["by_event"]["click"] == 1
    # a retry of the same file stores nothing twice unless asked to
    proc = cli("events", "import", str(path), "--index", str(index), "--quiet")
    assert (
        proc.returncode == 0 and "skipped, this file was imported" in proc.stdout and "holds 4" in proc.stdout
    )
    proc = cli("events", "import", str(path), "--index", str(index), "--quiet", "--again")
    assert proc.returncode == 0 and "holds 8 events" in proc.stdout
    proc = cli("events", "import", str(tmp_path / "nope.jsonl"), "--index", str(index))
    assert proc.returncode == 2 and "event file not found" in proc.stderr and "Traceback" not in proc.stderr


def test_undecodable_bytes_and_lone_surrogates_reject_only_their_row(tmp_path):
    """A text stream decodes whole chunks, so one bad byte used to cost every line of a JSONL file;
    a lone surrogate ("\\ud800" is valid JSON) reached the store and raised there."""
    settings = load_settings()
    good = [json.dumps(r).encode() for r in GOOD]
    jsonl = tmp_path / "ev.jsonl"
    bad_line = b'{"user_id": "caf\xe9", "item_id": "a", "event": "click", "timestamp": 1714557700}'
    surrogate = b'{"user_id": "\\ud800", "item_id": "a", "event": "click", "timestamp": 1714557700}'
    jsonl.write_bytes(b"\xef\xbb\xbf" + b"\n".join([good[0], bad_line, surrogate, *good[1:]]) + b"\n")
    csv_path = tmp_path / "ev.csv"
    csv_path.write_bytes(
        b"user_id,item_id,event,timestamp\nu1,a,click,1714557700\ncaf\xe9,a,click,1714557701\n"
        b"u2,b,view,1714557702\n"
    )
    with EventStore(tmp_path / "idx", settings) as store:
        report = store.import_files([jsonl], known_item=KNOWN.__contains__)
        assert (report.accepted, report.rejected) == (len(GOOD), 2)
        by_line = {i.row: i for i in report.issues}
        assert by_line[2].reason == "line is not valid UTF-8"
        assert by_line[3].field == "user_id" and "not valid UTF-8" in by_line[3].reason
        report = store.import_files([csv_path], known_item=KNOWN.__contains__)
        assert (report.accepted, report.rejected) == (2, 1)
        assert report.issues[0].row == 3 and report.issues[0].field == "user_id"
        assert store.count() == len(GOOD) + 2


def test_a_file_is_imported_once_and_a_cut_short_import_resumes(tmp_path, monkeypatch):
    """A retried import used to store every event again (clicks counted twice in CF), and an
    import cut short kept its first batches, so a retry could not tell where to go on."""
    import indexer.interactions as interactions

    rows = [
        {"user_id": f"u{n}", "item_id": "abc"[n % 3], "event": "click", "timestamp": 1714557700 + n}
        for n in range(10)
    ]
    path = write_jsonl(tmp_path / "ev.jsonl", rows)
    monkeypatch.setattr(interactions, "_BATCH", 3)
    real_rows = interactions.read_event_rows

    def interrupted(*args, **kwargs):
        for n, (row, raw) in enumerate(real_rows(*args, **kwargs)):
            if n == 7:
                raise KeyboardInterrupt  # Ctrl-C while the third batch is being read
            yield row, raw

    with EventStore(tmp_path / "idx", load_settings()) as store:
        monkeypatch.setattr(interactions, "read_event_rows", interrupted)
        with pytest.raises(KeyboardInterrupt):
            store.import_files([path])
        assert store.count() == 6  # two whole batches
        monkeypatch.setattr(interactions, "read_event_rows", real_rows)
        report = store.import_files([path])
        assert report.accepted == 4 and "resumed after row 6" in report.summary()
        assert sorted(store.read().user) == sorted(r["user_id"] for r in rows)  # each once
        report = store.import_files([path])
        assert report.accepted == 0 and "skipped, this file was imported" in report.summary()
        assert store.count() == 10
        report = store.import_files([path], again=True)  # asked for: a second copy
        assert report.accepted == 10 and store.count() == 20
        other = write_jsonl(tmp_path / "more.jsonl", rows[:2])  # other content: a new file
        assert store.import_files([other]).accepted == 2
