"""CF serving under a live click stream: polling on the query path vs the background follower.

    python benchmarks/bench_cf_follow.py [--work .bench/cf-follow] [--seconds 20] [--rate 400]

Best Buy: one model is fitted on the time split's training part (default blend, no tuning: this
measures latency, not relevance) and published into ``WORK/<mode>``. A writer thread appends the
test part's events to that index's event log in time order, ``--rate`` events a second in 50 ms
batches (what ``POST /events`` does), while the main thread runs the distinct test queries through
``CFSource.candidates`` back to back. Halfway through, the writer publishes the same model again
as a new generation (what ``train-cf`` does): the source must load it and count every event
stored since its training before serving it.

Modes, side by side in one run, same queries, same events:

- ``query path``: no follower; one query per ``reload_interval`` (1 s, the default) reads the
  events stored since the last look, and one query loads and catches up the new generation;
- ``follower``: ``CFSource.follow()`` (what the API starts): a background thread does both.

Prints per-query latency (p50, p99, p99.9, max, queries over 5 ms), how long after its
publication the new generation was first served, the slowest queries (with their time relative to
that publication) and the full (generation-2) garbage collections of the run: a 50-150 ms pause
of the whole process that lands on whichever thread allocates, whatever the mode.
Results: WORK/results.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.bench_cf import TEST_SHARE, load_bestbuy  # noqa: E402
from indexer.cf import CFModel, fit_model, publish, time_split  # noqa: E402
from indexer.interactions import Event, EventStore  # noqa: E402
from indexer.items import ItemTable  # noqa: E402
from indexer.product import Product  # noqa: E402
from retriever.cf import CFSource  # noqa: E402
from shopsearch.settings import Settings, load_settings  # noqa: E402


def run_mode(
    mode: str,
    model: CFModel,
    events: list[Event],
    queries: list[str],
    folder: Path,
    settings: Settings,
    seconds: float,
    rate: float,
) -> dict[str, Any]:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    model.manifest["last_seq"] = 0  # this index's log holds only the streamed events: all newer
    publish(model, folder)
    table = ItemTable()
    for sku in model.item_ids:
        table.append(Product(id=sku, title=f"SKU {sku}"))
    mask = table.mask()
    source = CFSource(folder, settings, reload_interval=1.0)
    if mode == "follower":
        source.follow()
    for q in queries[:50]:  # warm-up: load the model, build the row map
        source.candidates(q, settings.cf_candidates, table, mask)
    first_gen = source.info()["generation"]
    stop = threading.Event()
    published: dict[str, float] = {}
    written = [0]

    def writer() -> None:
        batch = max(1, int(rate * 0.05))
        start = time.perf_counter()
        with EventStore(folder, settings) as store:
            i = 0
            while not stop.is_set() and i < len(events):
                store.append(events[i : i + batch])
                i += batch
                written[0] = min(i, len(events))
                if not published and time.perf_counter() - start >= seconds / 2:
                    published["at"] = time.perf_counter()
                    published["generation"] = publish(model, folder)[0]
                stop.wait(0.05)

    pauses: list[tuple[float, str]] = []
    gc_start = [0.0]

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            gc_start[0] = time.perf_counter()
        else:
            ms = round((time.perf_counter() - gc_start[0]) * 1000, 1)
            pauses.append((ms, threading.current_thread().name))

    thread = threading.Thread(target=writer, name="writer")
    times: list[float] = []
    ends: list[float] = []
    served_at = None
    t_end = time.perf_counter() + seconds
    gc.callbacks.append(on_gc)
    thread.start()
    try:
        j = 50
        while time.perf_counter() < t_end:
            q = queries[j % len(queries)]
            j += 1
            t = time.perf_counter()
            source.candidates(q, settings.cf_candidates, table, mask)
            done = time.perf_counter()
            times.append((done - t) * 1000)
            ends.append(done)
            loaded = source._loaded
            if served_at is None and published and loaded is not None and loaded.generation != first_gen:
                served_at = done
    finally:
        stop.set()
        thread.join()
        gc.callbacks.remove(on_gc)
    # let the source see the last batch, then check that nothing was lost
    source.reload()
    counted = (source.info().get("live") or {}).get("events", 0)
    source.close()
    a = np.asarray(times)
    slow = np.argsort(-a)[:5]
    return {
        "queries": len(a),
        "events_written": written[0],
        "events_counted": counted,
        "p50_ms": float(np.percentile(a, 50)),
        "p99_ms": float(np.percentile(a, 99)),
        "p999_ms": float(np.percentile(a, 99.9)),
        "max_ms": float(a.max()),
        "over_5ms": int((a > 5).sum()),
        "new_generation_served_after_s": (
            round(served_at - published["at"], 3) if served_at and published else None
        ),
        # the slowest queries: (ms, seconds after the new generation's publication)
        "slowest": [(round(float(a[i]), 2), round(ends[i] - published.get("at", 0.0), 3)) for i in slow],
        "full_gc_pauses_ms_thread": pauses,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=REPO / ".bench" / "cf-follow")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--rate", type=float, default=400.0, help="Events appended per second.")
    args = ap.parse_args()
    settings = load_settings(hash_user_ids=False)
    log, _ = load_bestbuy(settings)
    train, test = time_split(log, TEST_SHARE)
    t = time.perf_counter()
    model = fit_model(train, settings, threads=1)
    print(f"fitted on {len(train)} training events in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    events = test.to_events()
    queries = list(dict.fromkeys(q for q in test.query if q))
    results: dict[str, Any] = {"seconds": args.seconds, "rate": args.rate, "test_events": len(events)}
    for mode in ("query path", "follower"):
        folder = args.work / mode.replace(" ", "-")
        results[mode] = run_mode(mode, model, events, queries, folder, settings, args.seconds, args.rate)
        print(mode, results[mode], file=sys.stderr)
    args.work.mkdir(parents=True, exist_ok=True)
    (args.work / "results.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    cols = ["p50_ms", "p99_ms", "p999_ms", "max_ms", "over_5ms", "queries", "new_generation_served_after_s"]
    print("| mode | " + " | ".join(cols) + " |")
    print("| --- " * (len(cols) + 1) + "|")
    for mode in ("query path", "follower"):
        r = results[mode]
        cells = [f"{r[c]:.2f}" if isinstance(r[c], float) else str(r[c]) for c in cols]
        print(f"| {mode} | " + " | ".join(cells) + " |")
    for mode in ("query path", "follower"):
        r = results[mode]
        gcs = r["full_gc_pauses_ms_thread"]
        print(f"{mode}: slowest (ms, s after publication) {r['slowest']}; full GCs (ms, thread) {gcs}")


if __name__ == "__main__":
    main()
