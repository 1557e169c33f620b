"""Fused vectors on disk and at serving time.

Layout::

    INDEX/models/fusion/             the trained model (model.safetensors + config.json): builds use it
    INDEX/generations/gen-N/fused/
        CURRENT                      name of the live version, replaced atomically
        v-000003/model/              the model that made these vectors (a copy: a generation is
                                     self-consistent even if INDEX/models/fusion is retrained)
        v-000003/index/              FAISS index + vectors.npy + labels.npy (indexer.vector)
        v-000003/meta.json

A version is written as ``v-K.tmp`` and renamed when complete; then CURRENT is replaced, so a
reader sees the old version or the new one, never a mix. The sidecar covers the generation's
built rows; rows added through the write-ahead log are embedded when the index loads or applies
them (a forward pass per item, no encoder involved). ``refresh_fused`` swaps in a retrained
version without reloading the generation: the API changes models without downtime.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import warnings
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from indexer.durable import atomic_write_text, fsync_tree
from indexer.vector import load_vector_index, make_vector_index
from indexer.vector.base import VectorIndex
from shopsearch.errors import IndexCorruptError, InvalidQueryError, ShopSearchError

log = logging.getLogger(__name__)

MODEL_SUBDIR = Path("models") / "fusion"
FUSED_DIR = "fused"
POINTER = "CURRENT"
_KEEP_VERSIONS = 2


def model_dir(index_dir: Path) -> Path:
    return Path(index_dir) / MODEL_SUBDIR


def has_model(index_dir: Path) -> bool:
    return (model_dir(index_dir) / "config.json").is_file()


def fused_stamp(gen_path: Path) -> tuple[int, str] | None:
    """Changes whenever a new fused version is published for this generation."""
    pointer = Path(gen_path) / FUSED_DIR / POINTER
    try:
        return pointer.stat().st_mtime_ns, pointer.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None


def fingerprint(folder: Path) -> str:
    h = hashlib.sha256()
    for name in ("config.json", "model.safetensors"):
        h.update((Path(folder) / name).read_bytes())
    return h.hexdigest()[:16]


# ====================================================================== serving
class FusedIndex:
    """A generation's fused item vectors and the model that made them.

    Thread-safe for searches (inference only); ``embed_rows`` is called under the index's write
    mutex."""

    def __init__(
        self, model: Any, doc: dict[str, Any], index: VectorIndex, version: str, generation: str
    ) -> None:
        self.model = model
        self.doc = doc
        self.index = index
        self.version = version
        self.generation = generation

    @property
    def config(self) -> Any:
        return self.model.config

    def query_vector(
        self,
        text_vec: np.ndarray | None,
        image_vec: np.ndarray | None,
        text: str | None = None,
        colour: np.ndarray | None = None,
    ) -> np.ndarray:
        """The fused-space query: the text (its encoder vector and its words) through the query
        tower, a photo through the item tower as a photo-only item, both -> the normalised sum.
        ``colour`` is the query photo's histogram (``indexer.encoders.colour``): a model with the
        colour token reads it next to the photo vector; a model without one ignores it."""
        from indexer.fusion.features import query_grams
        from indexer.fusion.model import ItemArrays, embed_items, embed_queries

        parts = []
        if text_vec is not None:
            grams = query_grams([text], self.config) if text and self.config.n_gram_buckets else None
            vec = np.asarray(text_vec, dtype=np.float32)[None, :]
            parts.append(embed_queries(self.model, vec, grams)[0])
        if image_vec is not None and self.config.image_dim == len(image_vec):
            items = ItemArrays.empty(1, self.config)
            items.image[0] = image_vec
            items.image_mask[0] = True
            if colour is not None and self.config.colour_dim == len(colour):
                items.colour[0] = colour
                items.colour_mask[0] = True
            parts.append(embed_items(self.model, items)[0][0])
        if not parts:
            raise InvalidQueryError(
                "the fused source needs a text query or a photo (this model has no photo tower)"
            )
        v = np.sum(parts, axis=0)
        return (v / max(float(np.linalg.norm(v)), 1e-12)).astype(np.float32)

    def search(self, query: np.ndarray, n: int, mask: np.ndarray) -> list[tuple[int, float]]:
        scores, labels = self.index.search(query[None, :].astype(np.float32), n, allowed=mask)
        return [(int(lab), float(s)) for s, lab in zip(scores[0], labels[0], strict=True) if lab >= 0]

    def attention(
        self, rows: list[int], table: Any, vectors: Mapping[str, VectorIndex]
    ) -> dict[int, dict[str, float]]:
        """Per row: the share of the pooled (CLS) output's attention that goes to each modality
        token present, in the last layer (heads averaged; CLS's attention to itself left out, the
        rest renormalised to 1). The explain view of the fused source."""
        from indexer.fusion.features import rows_arrays
        from indexer.fusion.model import TOKEN_TYPES, embed_items

        rows = [r for r in rows if table.is_live(r)]
        if not rows:
            return {}
        items = rows_arrays(np.asarray(rows), table, vectors, self.config)
        _, attn = embed_items(self.model, items, return_attention=True)
        present = items.present()
        out = {}
        for i, r in enumerate(rows):
            share = {name: float(attn[i, j]) for j, name in enumerate(TOKEN_TYPES) if present[i, j] and j > 0}
            total = sum(share.values()) or 1.0
            out[r] = {name: round(v / total, 4) for name, v in share.items()}
        return out

    def embed_rows(self, rows: Any, table: Any, vectors: Mapping[str, VectorIndex]) -> int:
        """Add fused vectors for live rows that have none yet (WAL upserts); returns how many."""
        from indexer.fusion.features import rows_arrays
        from indexer.fusion.model import embed_items

        rows = np.asarray([r for r in rows if table.is_live(int(r))], dtype=np.int64)
        if len(rows):
            rows = rows[~self.index.contains(rows)]
        if not len(rows):
            return 0
        vecs, _ = embed_items(self.model, rows_arrays(rows, table, vectors, self.config))
        self.index.add(vecs, rows)
        return len(rows)


def load_fused(gen_path: Path, generation: str, *, device: str = "auto") -> FusedIndex | None:
    """The generation's live fused version, or None when it has none."""
    base = Path(gen_path) / FUSED_DIR
    stamp = fused_stamp(gen_path)
    if stamp is None:
        return None
    # imported only now: torch costs ~2 s and ~570 MB, which an index without a fusion model skips
    from indexer.fusion.model import load_checkpoint

    version = stamp[1]
    folder = base / version
    if not version or not folder.is_dir():
        raise IndexCorruptError(f"{base / POINTER} names {version!r}, which is not a folder in {base}")
    model, doc = load_checkpoint(folder / "model")
    index = load_vector_index(folder / "index", device=device)
    if index.dim != model.config.out_dim:
        raise IndexCorruptError(
            f"{folder}: fused vectors have {index.dim} dims but the model makes {model.config.out_dim}"
        )
    return FusedIndex(model, doc, index, version, generation)


def open_fused(gen_path: Path, generation: str, *, device: str = "auto") -> FusedIndex | None:
    """``load_fused`` for serving: a damaged or incompatible sidecar must not take the whole
    index down, so it is reported (logged and warned) and the index serves without the fused
    source until 'shopsearch train-fusion' publishes a good version."""
    try:
        return load_fused(gen_path, generation, device=device)
    except ShopSearchError as exc:
        message = f"fused vectors of {gen_path} not loaded: {exc.message}"
        log.warning(message)
        warnings.warn(message, RuntimeWarning, stacklevel=2)
        return None


def refresh_fused(live: Any) -> bool:
    """Swap in a newly published fused version of the loaded generation (LiveIndex calls this
    under its write mutex, so no write changes the table meanwhile); WAL rows are embedded before
    the swap, and searches wait only for the swap itself. Returns True if swapped."""
    stamp = fused_stamp(live.path)
    if stamp == getattr(live, "_fused_stamp", None):
        return False
    fused = open_fused(live.path, live.generation, device=live.settings.device)
    if fused is not None:
        fused.embed_rows(live.table.live_rows(), live.table, live.vectors)
    with live.state_lock.writing():
        live.fused, live._fused_stamp = fused, stamp
    return True


# ====================================================================== writing
def write_version(
    gen_path: Path,
    model_folder: Path,
    vectors: np.ndarray,
    labels: np.ndarray,
    settings: Any,
    meta: dict[str, Any],
) -> str:
    """Publish a new fused version for a generation folder (complete or still ``.tmp``)."""
    base = Path(gen_path) / FUSED_DIR
    base.mkdir(parents=True, exist_ok=True)
    numbers = [
        int(d.name.split("-")[1].split(".")[0])
        for d in base.glob("v-*")
        if d.name[2:].split(".")[0].isdigit()
    ]
    name = f"v-{1 + max(numbers, default=0):06d}"
    tmp = base / f"{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    shutil.copytree(model_folder, tmp / "model")
    index = make_vector_index(
        vectors.shape[1],
        len(labels),
        kind=settings.vector_index,
        device="cpu",
        hnsw_threshold=settings.hnsw_threshold,
        ivfpq_threshold=settings.ivfpq_threshold,
        train_vectors=vectors if len(labels) else None,
    )
    if len(labels):
        index.add(vectors.astype(np.float32), labels.astype(np.int64))
        index.save(tmp / "index")
    else:
        raise IndexCorruptError(f"no item of {gen_path} could be given a fused vector")
    doc = {
        **meta,
        "version": name,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "count": int(len(labels)),
        "dim": int(vectors.shape[1]),
        "model_fingerprint": fingerprint(model_folder),
    }
    (tmp / "meta.json").write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    fsync_tree(tmp)
    os.rename(tmp, base / name)
    atomic_write_text(base / POINTER, name + "\n")
    _cleanup_versions(base, keep=name)
    return name


def _cleanup_versions(base: Path, keep: str) -> None:
    """Old versions go after a grace period (a reader may still be loading one)."""
    done = sorted(d for d in base.glob("v-*") if not d.name.endswith(".tmp"))
    for d in done[:-_KEEP_VERSIONS]:
        if d.name != keep:
            shutil.rmtree(d, ignore_errors=True)
    for d in base.glob("v-*.tmp"):
        if d.stat().st_mtime < time.time() - 3600:
            shutil.rmtree(d, ignore_errors=True)


def fuse_build(
    index_dir: Path,
    gen_path: Path,
    table: Any,
    encoded: Any,
    settings: Any,
    report: Any,
) -> dict[str, Any] | None:
    """build_index hook: when INDEX/models/fusion holds a model, give every built row a fused
    vector (from the vectors just encoded) and publish it as the generation's first version.
    A model made for other encoders is skipped with a warning in the ingest report."""
    from indexer.embcache import EmbeddingCache
    from indexer.fusion.features import item_arrays
    from indexer.fusion.model import embed_items, load_checkpoint

    folder = model_dir(index_dir)
    if not has_model(index_dir):
        return None
    model, doc = load_checkpoint(folder)
    c = model.config
    dims = {m: next((len(v) for v in getattr(encoded, m).values()), None) for m in ("text", "image", "video")}
    wrong = [
        f"{m} {dims[m]} (model: {want})"
        for m, want in (("text", c.text_dim), ("image", c.image_dim), ("video", c.video_dim))
        if dims[m] is not None and want and dims[m] != want
    ]
    if wrong:
        report.add(
            file=str(folder),
            reason=f"fusion model expects other vector sizes ({', '.join(wrong)}): "
            "retrain it with 'shopsearch train-fusion'; no fused vectors in this build",
            action="warning",
        )
        return None
    rows = np.arange(table.n_rows, dtype=np.int64)
    products = [table.product(int(r)) for r in rows]
    vecs = {
        m: {i: getattr(encoded, m)[p.id] for i, p in enumerate(products) if p.id in getattr(encoded, m)}
        for m in ("text", "image", "video")
    }
    cache = EmbeddingCache(Path(index_dir) / "embcache.sqlite") if c.colour_dim else None
    try:  # the cache spares recomputing the photos' colour histograms
        arrays = item_arrays(products, vecs, c, colour_cache=cache, max_pixels=settings.max_image_pixels)
    finally:
        if cache is not None:
            cache.close()
    fused, _ = embed_items(model, arrays)
    version = write_version(
        gen_path, folder, fused, rows, settings, {"source": "build", "model": doc.get("train", {})}
    )
    return {"version": version, "count": int(len(rows)), "dim": int(c.out_dim)}


def publish_current(index_dir: Path, settings: Any, *, progress: bool = False) -> dict[str, Any]:
    """Fused vectors for the live generation from its stored vectors (nothing re-encoded), with
    the model in INDEX/models/fusion, published as a new sidecar version."""
    from indexer.embcache import EmbeddingCache
    from indexer.fusion.features import rows_arrays
    from indexer.fusion.model import embed_items, load_checkpoint
    from indexer.store import LiveIndex, write_lock

    folder = model_dir(index_dir)
    model, _doc = load_checkpoint(folder)
    with write_lock(Path(index_dir)):
        live = LiveIndex(Path(index_dir), settings)
        try:
            n_built = _count_lines(live.path / "items.jsonl")
            rows = np.asarray([r for r in range(n_built) if live.table.is_live(r)], dtype=np.int64)
            t0 = time.perf_counter()
            cache = EmbeddingCache(Path(index_dir) / "embcache.sqlite") if model.config.colour_dim else None
            try:  # the cache spares recomputing the photos' colour histograms
                arrays = rows_arrays(
                    rows,
                    live.table,
                    live.vectors,
                    model.config,
                    colour_cache=cache,
                    max_pixels=settings.max_image_pixels,
                )
            finally:
                if cache is not None:
                    cache.close()
            vecs, _ = embed_items(model, arrays)
            version = write_version(live.path, folder, vecs, rows, settings, {"source": "train-fusion"})
            return {
                "generation": live.generation,
                "version": version,
                "count": int(len(rows)),
                "seconds": round(time.perf_counter() - t0, 2),
            }
        finally:
            live.close()


def _count_lines(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(1 for _ in f)
