"""Locks: inter-process exclusive locks on a file (fcntl.flock: one writer per index, one CF
trainer), and the in-process read/write lock between searches and the writes they must not see
half-applied."""

from __future__ import annotations

import contextlib
import fcntl
import threading
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if needed) for the block; released on exit or
    when the process dies, so a killed writer never leaves a stale lock."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def try_file_lock(path: Path) -> Iterator[bool]:
    """:func:`file_lock` without waiting: yields True holding the lock, or False (holding nothing)
    when someone else holds it, for background work that can come back later."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


class ReadWriteLock:
    """Many readers at once, or one writer. A search reads the item table, vectors and BM25 index
    several times; an upsert or delete that changed them in between (a row killed, a row added)
    made searches fail. A waiting writer holds new readers back, so writes are never starved;
    both sides are reentrant in one thread, and a thread that reads may not start writing."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer: int | None = None  # the writing thread's ident
        self._writers_waiting = 0
        self._local = threading.local()

    def _depth(self, side: str) -> int:
        return int(getattr(self._local, side, 0))

    def reading_here(self) -> bool:
        """True when this thread holds the read side."""
        return self._depth("reads") > 0

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        depth = self._depth("reads")
        if depth == 0 and self._depth("writes") == 0:  # a writer may read what it writes
            with self._cond:
                while self._writer is not None or self._writers_waiting:
                    self._cond.wait()
                self._readers += 1
        self._local.reads = depth + 1
        try:
            yield
        finally:
            self._local.reads = depth
            if depth == 0 and self._depth("writes") == 0:
                with self._cond:
                    self._readers -= 1
                    if self._readers == 0:
                        self._cond.notify_all()

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        if self._depth("reads"):
            raise RuntimeError("a thread holding the read side cannot start writing (it would wait forever)")
        depth = self._depth("writes")
        if depth == 0:
            with self._cond:
                self._writers_waiting += 1
                try:
                    while self._writer is not None or self._readers:
                        self._cond.wait()
                finally:
                    self._writers_waiting -= 1
                self._writer = threading.get_ident()
        self._local.writes = depth + 1
        try:
            yield
        finally:
            self._local.writes = depth
            if depth == 0:
                with self._cond:
                    self._writer = None
                    self._cond.notify_all()
