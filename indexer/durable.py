"""Crash-safe publishing of files and directories: fsync'd contents, atomic renames, fsync'd
parent directories.

Why one module: index generations (indexer.store), fused-vector versions (indexer.fusion.sidecar)
and CF artefacts (indexer.cf.train) all write a directory, rename it into place and then switch a
pointer file. ``kill -9`` or a power cut between any two steps must leave the old pointer naming
a complete directory, which needs every one of these steps, in this order.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """Flush every file below ``root`` to disk before the directory is renamed into place."""
    for f in Path(root).rglob("*"):
        if f.is_file():
            with open(f, "rb+") as fh:
                os.fsync(fh.fileno())


def atomic_write_text(path: Path, data: str) -> None:
    """Replace ``path`` with ``data``: readers see the old or the new content, never a mix."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def digest(data: bytes) -> str:
    """sha256 of a published file's bytes. Model checkpoints list theirs in their config, so a
    reader can tell complete weights from a half-finished copy (``cp -r`` writes the config
    first) before a native loader meets them: LightGBM aborts the whole process on a truncated
    model file instead of raising."""
    return hashlib.sha256(data).hexdigest()


def file_digest(path: Path) -> str:
    """sha256 of a file, read in 1 MiB pieces (an event log may not fit in memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
