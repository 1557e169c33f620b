"""Re-ranker checkpoint files: the weights, then ``config.json`` naming each weights file with its
sha256 (``"files"``).

Why: the serving side swaps a checkpoint in as soon as its config changes, and an operator may
copy a model folder into place with ``cp -r``, which can write the config before the weights. A
reader that loads half-copied weights gets an exception at best; LightGBM aborts the whole
process on a truncated model file. So the weights are read once, checked against their digest,
and only then given to the native loader (from memory, so the file cannot change in between).
Checkpoints written before digests existed carry none and are read as they are.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from indexer.durable import digest, file_digest
from shopsearch.errors import IndexCorruptError

CONFIG_FILE = "config.json"


def publish(folder: Path, doc: dict[str, Any], weights: dict[str, Path]) -> None:
    """Move each written ``weights`` file (name -> temporary path in ``folder``) into place, then
    write ``doc`` with their digests as the config, last, so a reader never sees a config whose
    weights are not complete."""
    folder = Path(folder)
    files = {}
    for name, tmp in weights.items():
        files[name] = file_digest(Path(tmp))
        Path(tmp).replace(folder / name)
    tmp_c = folder / (CONFIG_FILE + ".tmp")
    tmp_c.write_text(json.dumps({**doc, "files": files}, indent=1), encoding="utf-8")
    tmp_c.replace(folder / CONFIG_FILE)


def read_weights(folder: Path, doc: dict[str, Any], name: str) -> bytes:
    """The bytes of weights file ``name``, checked against the digest ``doc`` (the config) lists."""
    path = Path(folder) / name
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise IndexCorruptError(f"re-ranker checkpoint {folder} has no {name}") from None
    except OSError as exc:
        raise IndexCorruptError(f"re-ranker weights {path} are unreadable: {exc}") from None
    expected = (doc.get("files") or {}).get(name)
    if expected is not None and digest(data) != expected:
        raise IndexCorruptError(
            f"re-ranker weights {path} do not match the digest in {CONFIG_FILE}: the checkpoint is "
            "still being copied, or was altered (copy the whole folder again)"
        )
    return data
