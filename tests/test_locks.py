"""The in-process read/write lock between searches and index writes."""

from __future__ import annotations

import threading
import time

import pytest

from indexer.locks import ReadWriteLock


def test_readers_share_and_a_writer_waits_for_them() -> None:
    lock = ReadWriteLock()
    events: list[str] = []
    inside = threading.Barrier(3)

    def reader(name: str) -> None:
        with lock.reading():
            inside.wait(5)  # both readers are in at once
            time.sleep(0.05)
            events.append(f"{name} out")

    def writer() -> None:
        inside.wait(5)
        with lock.writing():
            events.append("write")

    threads = [threading.Thread(target=reader, args=(n,)) for n in ("a", "b")] + [
        threading.Thread(target=writer)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert sorted(events[:2]) == ["a out", "b out"] and events[2] == "write"


def test_a_waiting_writer_holds_new_readers_back() -> None:
    lock = ReadWriteLock()
    order: list[str] = []
    first_in = threading.Event()
    release = threading.Event()

    def long_reader() -> None:
        with lock.reading():
            first_in.set()
            release.wait(5)
            order.append("long reader out")

    def writer() -> None:
        with lock.writing():
            order.append("write")

    def late_reader() -> None:
        with lock.reading():
            order.append("late reader")

    r1 = threading.Thread(target=long_reader)
    r1.start()
    first_in.wait(5)
    w = threading.Thread(target=writer)
    w.start()
    while not lock._writers_waiting:  # the writer is queued behind the long reader
        time.sleep(0.001)
    r2 = threading.Thread(target=late_reader)
    r2.start()
    time.sleep(0.05)
    assert order == []  # the late reader did not slip in ahead of the waiting writer
    release.set()
    for t in (r1, w, r2):
        t.join(5)
    assert order == ["long reader out", "write", "late reader"]


def test_reentrant_in_one_thread_and_no_upgrade() -> None:
    lock = ReadWriteLock()
    with lock.reading():
        with lock.reading():
            assert lock.reading_here()
        assert lock.reading_here()
        with pytest.raises(RuntimeError, match="cannot start writing"):
            with lock.writing():
                pass
    assert not lock.reading_here()
    with lock.writing(), lock.writing(), lock.reading():  # a writer may read what it writes
        pass
    with lock.writing():  # and the lock is free again
        pass
