"""The index directory: immutable generations, an atomic switch, and a write-ahead log for
live upserts and deletes.

Layout::

    INDEX/
      CURRENT                      name of the live generation (replaced atomically)
      generations/gen-000007/      one complete, self-describing build
          manifest.json            format version, models, dimensions, counts
          items.jsonl              one product per row; row number = vector label
          text/ image/ video/      FAISS indexes + raw vectors (indexer.vector), or with
                                   vector_backend='opensearch' the raw vectors and a descriptor
                                   of the generation's k-NN index in the cluster
          lexical/                 tantivy BM25 index (or an OpenSearch descriptor)
          wal.jsonl                upserts/deletes since the build (fsync'd before they apply)
      embcache.sqlite              content-hash -> vector cache shared by all builds
      ingest_report.json           the last build's report

A build writes ``generations/gen-N.tmp`` and renames it when complete, then rewrites CURRENT;
``kill -9`` at any moment leaves the previous generation loadable; a build that fails with an
error deletes its ``.tmp`` directory and the cluster-side indexes it created. Upserts that arrive
while a build runs are carried over to the new generation before the switch, so nothing
acknowledged is lost.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from indexer.catalog import iter_catalogs
from indexer.durable import atomic_write_text, fsync_dir, fsync_tree
from indexer.embcache import EmbeddingCache
from indexer.encoders import load_image_encoder, load_text_encoder
from indexer.encoders.base import ImageEncoder, TextEncoder
from indexer.encoders.text import tokenizer_words
from indexer.encoding import Encoded, ItemEncoder
from indexer.items import ItemTable
from indexer.lexical import LexicalIndex, check_lexical_backend, drop_lexical_index, open_lexical_index
from indexer.locks import ReadWriteLock, file_lock, try_file_lock
from indexer.product import Product
from indexer.report import IngestReport
from indexer.spelling import Vocabulary, product_words
from indexer.vector import (
    check_vector_backend,
    create_opensearch_vector_index,
    drop_vector_index,
    make_vector_index,
    open_vector_index,
)
from indexer.vector.base import VectorIndex
from shopsearch.errors import (
    CatalogError,
    ClusterUnavailableError,
    ConfigError,
    IndexCorruptError,
    IndexNotFoundError,
    ItemNotFoundError,
    ShopSearchError,
)
from shopsearch.settings import Settings

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MODALITIES = ("text", "image", "video")
# Rows per add() when loading a k-NN index: bounds the JSON a build holds at once.
_KNN_LOAD_BATCH = 10_000
WRITE_LOCK = ".write.lock"


# ====================================================================== files
def write_lock(index_dir: Path) -> contextlib.AbstractContextManager[None]:
    """One writer process at a time per index (builds and upserts); readers never block."""
    return file_lock(index_dir / WRITE_LOCK)


def current_generation(index_dir: Path) -> str | None:
    try:
        name = (index_dir / "CURRENT").read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    return name or None


def require_generation(index_dir: Path) -> str:
    """The live generation's name, or IndexNotFoundError saying why there is none."""
    if not index_dir.is_dir():
        raise IndexNotFoundError(f"no index at {index_dir}: run 'shopsearch index CATALOG --index DIR'")
    name = current_generation(index_dir)
    if name is None:
        raise IndexNotFoundError(f"{index_dir} holds no complete index (no CURRENT file)")
    return name


def _encode_vec(v: np.ndarray | None) -> str | None:
    return None if v is None else base64.b64encode(np.asarray(v, dtype=np.float32).tobytes()).decode()


def _decode_vec(s: str | None) -> np.ndarray | None:
    return None if s is None else np.frombuffer(base64.b64decode(s), dtype=np.float32).copy()


def _settings_fingerprint(settings: Settings) -> dict[str, Any]:
    return {
        "text_model": settings.text_model,
        "image_model": settings.image_model,
        "image_pretrained": settings.image_pretrained,
        "video_frames": settings.video_frames,
        "vector_index": settings.vector_index,
        "vector_backend": settings.vector_backend,
        "lexical_backend": settings.lexical_backend,
        "field_boosts": settings.field_boosts,
    }


# ====================================================================== encoders
@dataclass
class Encoders:
    """Encoders are loaded lazily: a text-only catalog never pays for the image model."""

    settings: Settings
    _text: TextEncoder | None = None
    _image: ImageEncoder | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def text(self) -> TextEncoder:
        with self._lock:
            if self._text is None:
                backend = self.settings.query_encoder  # auto = int8 ONNX queries, torch fallback
                self._text = load_text_encoder(
                    self.settings.text_model,
                    query_backend="onnx" if backend == "onnx-int8" else backend,
                    quantized=backend in ("auto", "onnx-int8"),
                    query_cache_size=self.settings.query_cache_size,
                )
            return self._text

    @property
    def image(self) -> ImageEncoder:
        with self._lock:
            if self._image is None:
                self._image = load_image_encoder(
                    self.settings.image_model, pretrained=self.settings.image_pretrained
                )
            return self._image

    def item_encoder(self, cache: EmbeddingCache | None, need_image: bool) -> ItemEncoder:
        return ItemEncoder(
            self.text,
            self.image if need_image else None,
            cache,
            batch_size=self.settings.encode_batch_size,
            video_frames=self.settings.video_frames,
            max_image_pixels=self.settings.max_image_pixels,
        )


# ====================================================================== build
@dataclass
class BuildResult:
    generation: str
    path: Path
    report: IngestReport
    counts: dict[str, int]
    seconds: float
    encoded: dict[str, int]


def _vector_arrays(table: ItemTable, vecs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray] | None:
    labels = [table.id_to_row[i] for i in vecs if i in table.id_to_row]
    if not labels:
        return None
    rows = sorted(labels)
    matrix = np.stack([vecs[table.product(r).id] for r in rows]).astype(np.float32)
    return matrix, np.asarray(rows, dtype=np.int64)


def _build_vector_index(
    settings: Settings, matrix: np.ndarray, labels: np.ndarray, path: Path
) -> VectorIndex:
    """One modality's vectors in the configured backend. A k-NN index is created in the cluster
    (its descriptor written to ``path`` at once, so that a failed build can delete it), loaded in
    batches, and must answer a k-NN query before the build may go on."""
    if settings.vector_backend == "opensearch":
        knn = create_opensearch_vector_index(path, int(matrix.shape[1]), settings=settings)
        try:
            for start in range(0, len(labels), _KNN_LOAD_BATCH):
                stop = start + _KNN_LOAD_BATCH
                knn.add(matrix[start:stop], labels[start:stop])
            knn.check_search(matrix[0])
        except BaseException:
            knn.close()
            raise
        return knn
    index = make_vector_index(
        matrix.shape[1],
        len(labels),
        kind=settings.vector_index,
        device=settings.device,
        hnsw_threshold=settings.hnsw_threshold,
        ivfpq_threshold=settings.ivfpq_threshold,
        train_vectors=matrix,
    )
    index.add(matrix, labels)
    return index


def build_index(
    catalogs: Sequence[Path],
    index_dir: Path,
    settings: Settings,
    *,
    field_map: dict[str, str] | None = None,
    progress: bool = True,
    encoders: Encoders | None = None,
) -> BuildResult:
    """Ingest catalogs, encode, and publish a new generation atomically.

    A build that fails before its generation is renamed into place leaves nothing behind: its
    ``.tmp`` directory and the OpenSearch indexes it created are deleted (best effort), and the
    live generation is untouched. Catalogs that yield no item raise CatalogError before any
    generation is written: an empty index never replaces a live one."""
    # an unreachable cluster, refused credentials or no k-NN plugin: fail before encoding
    check_lexical_backend(settings)
    check_vector_backend(settings)
    started: list[Path] = []
    try:
        return _build_generation(catalogs, Path(index_dir), settings, field_map, progress, encoders, started)
    except BaseException:
        for tmp in started:  # gone once renamed: then this finds nothing to drop
            _drop_generation(tmp, settings)
        raise


def _nothing_to_index(paths: Sequence[Path], report: IngestReport) -> CatalogError:
    """An empty generation would replace the live index and, two builds later, delete the last
    good one: a catalog with no usable row (empty, all skipped, pretty-printed JSON in a .jsonl)
    is refused before anything is written."""
    files = ", ".join(str(p) for p in paths)
    rows = f"{report.rows_read:,} row{'' if report.rows_read == 1 else 's'} read"
    message = (
        f"no valid product rows in {files} ({rows}, {report.skipped:,} skipped): the live index is unchanged"
    )
    if report.issues:
        message += "; first issues: " + "; ".join(str(i)[:300] for i in report.issues[:3])
    return CatalogError(message)


def _build_generation(
    catalogs: Sequence[Path],
    index_dir: Path,
    settings: Settings,
    field_map: dict[str, str] | None,
    progress: bool,
    encoders: Encoders | None,
    started: list[Path],
) -> BuildResult:
    t0 = time.perf_counter()
    index_dir = Path(index_dir)
    index_dir.mkdir(parents=True, exist_ok=True)
    report = IngestReport()
    encoders = encoders or Encoders(settings)

    # The WAL of the live generation at build start: upserts appended later are carried over.
    base_gen = current_generation(index_dir)
    base_wal = index_dir / "generations" / base_gen / "wal.jsonl" if base_gen else None
    base_wal_size = base_wal.stat().st_size if base_wal and base_wal.exists() else 0

    roots = settings.media_roots or None
    paths = [Path(c) for c in catalogs]
    items = list(iter_catalogs(paths, field_map=field_map, media_roots=roots, report=report))
    if not items:  # before loading any model: nothing to encode
        raise _nothing_to_index(paths, report)
    need_image = any(p.images or p.video for p in items)

    cache = EmbeddingCache(index_dir / "embcache.sqlite")
    try:
        item_encoder = encoders.item_encoder(cache, need_image)
        encoded = item_encoder.encode(items, report, progress=progress)
    finally:
        cache.close()

    table = ItemTable()
    for p in items:
        has_vec = p.id in encoded.text or p.id in encoded.image or p.id in encoded.video
        if not has_vec and not p.has_text():
            report.accepted -= 1
            report.add(
                file=None,
                row=None,
                id=p.id,
                field=None,
                reason="no usable title, description, image or video",
                action="skipped",
            )
            continue
        table.append(p)
    if not len(table):
        raise _nothing_to_index(paths, report)

    gens = index_dir / "generations"
    gens.mkdir(exist_ok=True)
    number = 1 + max((int(d.name.split("-")[1].split(".")[0]) for d in gens.glob("gen-*")), default=0)
    name = f"gen-{number:06d}"
    tmp = gens / f"{name}.tmp"
    final = gens / name
    shutil.rmtree(tmp, ignore_errors=True)
    started.append(tmp)
    tmp.mkdir()

    # a media path under a folder whose name is not UTF-8 holds lone surrogates: written as JSON
    # "\udce9" escapes, which read back as the same path
    with open(tmp / "items.jsonl", "w", encoding="utf-8", errors="backslashreplace") as f:
        for r in range(table.n_rows):
            f.write(json.dumps(table.product(r).to_dict(), ensure_ascii=False) + "\n")
    # the words query spelling correction may offer (indexer.spelling)
    Vocabulary.build(
        (product_words(table.product(r)) for r in range(table.n_rows)),
        lexicon=tokenizer_words(settings.text_model),
    ).save(tmp)

    manifest_indexes: dict[str, Any] = {}
    for modality in MODALITIES:
        arrays = _vector_arrays(table, getattr(encoded, modality))
        if arrays is None:
            continue
        matrix, labels = arrays
        index = _build_vector_index(settings, matrix, labels, tmp / modality)
        try:
            index.save(tmp / modality)
            manifest_indexes[modality] = {
                "kind": index.kind,
                "count": int(len(labels)),
                "dim": int(matrix.shape[1]),
                "backend": settings.vector_backend,
            }
            if settings.vector_backend == "opensearch":  # an OpenSearchKnnIndex
                manifest_indexes[modality]["index"] = index.name
                # live settings (refresh, replicas) now: replicas can catch up before the switch,
                # and no server reads this index until CURRENT names its generation
                index.publish()
        finally:
            _close_vector_index(index)

    # --- fusion model (indexer.fusion): fused vectors when INDEX/models/fusion/ holds a model
    from indexer.fusion.sidecar import fuse_build

    fused_info = fuse_build(index_dir, tmp, table, encoded, settings, report)
    # --- end fusion model

    lexical = open_lexical_index(
        tmp / "lexical",
        backend=settings.lexical_backend,
        field_boosts=settings.field_boosts,
        create=True,
        settings=settings,
    )
    try:
        batch = 5000
        for start in range(0, table.n_rows, batch):
            lexical.upsert([table.product(r) for r in range(start, min(start + batch, table.n_rows))])
        lexical.commit()
        _report_rejected(lexical, report)
    finally:
        lexical.close()

    models: dict[str, Any] = {"text": {"name": encoders.text.name, "dim": encoders.text.dim}}
    if need_image:
        models["image"] = {"name": encoders.image.name, "dim": encoders.image.dim}
    counts = {
        "items": len(table),
        **{f"{m}_vectors": manifest_indexes.get(m, {}).get("count", 0) for m in MODALITIES},
    }
    manifest = {
        "format_version": FORMAT_VERSION,
        "generation": name,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "catalogs": [str(Path(c).resolve()) for c in catalogs],
        "models": models,
        "vector_backend": settings.vector_backend,
        "vector_indexes": manifest_indexes,
        "lexical": {"backend": settings.lexical_backend, "field_boosts": settings.field_boosts},
        "counts": counts,
        "settings": _settings_fingerprint(settings),
        "ingest": report.to_dict().get("counts", {}),
    }
    if fused_info:  # --- fusion model
        manifest["fused"] = fused_info
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    (tmp / "wal.jsonl").touch()
    fsync_tree(tmp)

    with write_lock(index_dir):
        # carry over upserts/deletes acknowledged on the old generation while we built
        if base_wal is not None and base_wal.exists() and base_wal.stat().st_size > base_wal_size:
            with open(base_wal, "rb") as src, open(tmp / "wal.jsonl", "ab") as dst:
                src.seek(base_wal_size)
                shutil.copyfileobj(src, dst)
                dst.flush()
                os.fsync(dst.fileno())
        os.rename(tmp, final)
        fsync_dir(gens)
        previous = current_generation(index_dir)
        # a server-side engine (OpenSearch) moves its alias here; a failure keeps the old generation
        # live, and this one, never live, goes (kept, it would count as the newest old generation)
        try:
            live = open_lexical_index(final / "lexical", backend=settings.lexical_backend, settings=settings)
            try:
                live.publish()
            finally:
                live.close()
        except BaseException:
            _drop_generation(final, settings)
            raise
        atomic_write_text(index_dir / "CURRENT", name + "\n")
    report.save(index_dir / "ingest_report.json")
    _cleanup_generations(index_dir, keep={name, previous}, settings=settings)
    return BuildResult(
        generation=name,
        path=final,
        report=report,
        counts=counts,
        seconds=time.perf_counter() - t0,
        encoded=dict(item_encoder.encoded_counts),
    )


def snapshot_live_generation(src: Path, dst: Path, *, fused: bool = False) -> None:
    """``dst``: the live generation of ``src`` (with its fused vectors and model only when
    ``fused``: a fusion training replaces them), its CURRENT, and a copy of the embedding cache
    (fusion training writes query encodings to it). Files are hard-linked where the filesystem
    allows: a generation's files are never modified in place, except the WAL, which is copied,
    and the lexical engine's lock files, which are made anew (a linked lock is one inode: a
    snapshot's writer and the live index's, or two snapshots' side by side, would lock each other
    out). Used to train models on a copy without touching the live index."""
    name = current_generation(src)
    if name is None:
        raise ConfigError(f"no index generation in {src}: build the index first")

    def link(a: str, b: str) -> None:
        if os.path.basename(a).endswith(".lock"):  # tantivy's writer/meta locks hold no data
            Path(b).touch()
            return
        try:
            os.link(a, b)
        except OSError:  # another filesystem, or links not allowed
            shutil.copy2(a, b)

    shutil.rmtree(dst, ignore_errors=True)
    (dst / "generations").mkdir(parents=True)
    shutil.copytree(
        src / "generations" / name,
        dst / "generations" / name,
        copy_function=link,
        ignore=shutil.ignore_patterns("wal.jsonl") if fused else shutil.ignore_patterns("fused", "wal.jsonl"),
    )
    wal = src / "generations" / name / "wal.jsonl"
    if wal.exists():  # appended to by the live index: a real copy, not a link
        shutil.copy2(wal, dst / "generations" / name / "wal.jsonl")
    if (src / "embcache.sqlite").exists():
        shutil.copy2(src / "embcache.sqlite", dst / "embcache.sqlite")
    (dst / "CURRENT").write_text(name + "\n", encoding="utf-8")


def _cleanup_generations(index_dir: Path, keep: set[str | None], settings: Settings | None = None) -> None:
    """Remove abandoned .tmp builds and every complete generation but ``keep``: the new live one
    and the one live before it (for a rollback). Choosing by name instead would keep a generation
    that was never live (a build killed between its rename and CURRENT) over the previous one."""
    gens = index_dir / "generations"
    complete = sorted(d for d in gens.glob("gen-*") if not d.name.endswith(".tmp"))
    doomed = [d for d in complete if d.name not in keep]
    doomed += [d for d in gens.glob("gen-*.tmp")]
    for d in doomed:
        _drop_generation(d, settings)


def _drop_generation(path: Path, settings: Settings | None) -> None:
    """Remove a generation directory and, first, the cluster-side indexes its descriptors name
    (OpenSearch lexical and k-NN; best effort)."""
    for modality in MODALITIES:
        drop_vector_index(path / modality, settings)
    drop_lexical_index(path / "lexical", settings)
    shutil.rmtree(path, ignore_errors=True)


def _close_vector_index(index: VectorIndex) -> None:
    """Cluster-backed indexes hold a connection pool; in-process FAISS has nothing to close."""
    close = getattr(index, "close", None)
    if callable(close):
        close()


def _report_rejected(lexical: LexicalIndex, report: IngestReport) -> None:
    """Documents a server-side engine refused are ingest issues, never silently dropped."""
    for item_id, reason in lexical.take_rejected():
        report.add(
            file=None,
            row=None,
            id=item_id,
            field=None,
            reason=f"keyword index refused it ({reason}); findable by vector search only",
            action="warning",
        )


# ====================================================================== live index
class LiveIndex:
    """A loaded generation plus its WAL: what the retriever searches and the API writes to."""

    def __init__(self, index_dir: Path, settings: Settings, encoders: Encoders | None = None) -> None:
        self.index_dir = Path(index_dir)
        self.settings = settings
        self.encoders = encoders or Encoders(settings)
        self._write_mutex = threading.RLock()
        # searches read under it; applying a write or swapping in a generation takes it alone
        self.state_lock = ReadWriteLock()
        self._load()

    # ----------------------------------------------------------------- loading
    def _load(self) -> None:
        name = require_generation(self.index_dir)
        path = self.index_dir / "generations" / name
        try:
            manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise IndexCorruptError(f"{path}/manifest.json is missing") from None
        except json.JSONDecodeError as exc:
            raise IndexCorruptError(f"{path}/manifest.json is not valid JSON: {exc}") from None
        if manifest.get("format_version") != FORMAT_VERSION:
            raise IndexCorruptError(
                f"{path} has format version {manifest.get('format_version')}, "
                f"this engine reads {FORMAT_VERSION}: rebuild the index"
            )
        table = ItemTable()
        n = 0
        try:
            with open(path / "items.jsonl", encoding="utf-8") as f:
                for n, line in enumerate(f, 1):  # noqa: B007 - n names the bad line
                    table.append(Product.from_dict(json.loads(line)))
        except FileNotFoundError:
            raise IndexCorruptError(f"{path}/items.jsonl is missing") from None
        except (OSError, json.JSONDecodeError, KeyError) as exc:
            raise IndexCorruptError(f"{path}/items.jsonl line {n}: {exc}") from None
        vectors: dict[str, VectorIndex] = {}
        try:
            # each directory reopens with the backend that built it (FAISS files or a k-NN descriptor)
            for modality in manifest.get("vector_indexes", {}):
                vectors[modality] = open_vector_index(
                    path / modality, device=self.settings.device, settings=self.settings
                )
            lexical = open_lexical_index(
                path / "lexical",
                backend=manifest["lexical"]["backend"],
                field_boosts=self.settings.field_boosts,
                settings=self.settings,
            )
        except BaseException:
            for index in vectors.values():
                _close_vector_index(index)
            raise
        # a generation built before spelling correction existed gets its vocabulary now
        vocabulary = Vocabulary.load(path) or Vocabulary.build(
            (product_words(p) if p is not None else set() for p in table.rows),
            lexicon=tokenizer_words(self.settings.text_model),
        )
        # --- fusion model: this generation's fused vectors (WAL rows get theirs as they replay)
        from indexer.fusion.sidecar import fused_stamp, open_fused

        fused_at = fused_stamp(path)
        fused = open_fused(path, name, device=self.settings.device)
        # --- end fusion model
        # everything above is opened while searches go on with the previous generation; they
        # wait only for the switch and the WAL replay
        with self.state_lock.writing():
            self.generation, self.path, self.manifest = name, path, manifest
            self.table, self.vectors, self.lexical = table, vectors, lexical
            self.vocabulary = vocabulary
            self._wal_path = path / "wal.jsonl"
            self._fused_stamp, self.fused = fused_at, fused
            self._replay_wal()
        self._current_mtime = self._current_stat()
        self._checked_at = time.monotonic()
        # the previous generation's engines are released by GC once in-flight searches finish

    def _current_stat(self) -> float:
        try:
            return (self.index_dir / "CURRENT").stat().st_mtime_ns
        except FileNotFoundError:
            return 0

    def reading(self) -> contextlib.AbstractContextManager[None]:
        """Hold for a whole search: no write or reload lands half-way through it."""
        return self.state_lock.reading()

    def maybe_reload(self, min_interval: float = 1.0) -> bool:
        """Pick up a generation published by another process (checked at most once a second).
        Inside a search (:meth:`reading`) it waits for the next call."""
        now = time.monotonic()
        if now - self._checked_at < min_interval or self.state_lock.reading_here():
            return False
        self._checked_at = now
        if (
            self._current_stat() == self._current_mtime
            and current_generation(self.index_dir) == self.generation
        ):
            return self._refresh_fused()
        with self._write_mutex:
            self._load()
        return True

    def _refresh_fused(self) -> bool:
        """--- fusion model: a retrained fused sidecar of this generation swaps in, no reload."""
        from indexer.fusion.sidecar import fused_stamp, refresh_fused

        if fused_stamp(self.path) == self._fused_stamp:
            return False
        with self._write_mutex:
            return refresh_fused(self)

    def reload(self) -> None:
        with self._write_mutex:
            self._load()

    # ----------------------------------------------------------------- WAL
    def _replay_wal(self) -> None:
        """Re-apply the WAL. A remote BM25 engine that is throttled or unreachable does not stop the
        load: the writes stand (the WAL has them), the engine keeps the unconfirmed operations
        pending, as after a live write whose BM25 half failed: the next write sends them, and so
        does a serving process's :class:`PendingSender` once the cluster answers again."""
        if not self._wal_path.exists():
            return
        changed = False
        failed: ClusterUnavailableError | None = None
        with open(self._wal_path, encoding="utf-8") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    break  # a torn last line from a crash: it was never acknowledged
                try:
                    self._apply(rec, commit=False)  # a big replay sends the engine's buffer early
                except ClusterUnavailableError as exc:
                    failed = exc  # applied in memory; the engine keeps what it could not send
                changed = True
        if changed and failed is None:
            try:
                self.lexical.commit()
            except ClusterUnavailableError as exc:
                failed = exc
        if failed is not None:
            log.warning(
                "keyword index not updated by the WAL replay of %s, its writes stay pending until "
                "the cluster takes them: %s",
                self.generation,
                failed.message,
            )

    def _append_wal(self, records: list[dict[str, Any]]) -> None:
        with open(self._wal_path, "a", encoding="utf-8") as f:
            for rec in records:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def _apply(self, rec: dict[str, Any], *, commit: bool) -> None:
        """Replay one WAL record (the caller holds the state lock's write side)."""
        self._write_keywords(rec, self._apply_in_memory(rec), commit=commit)

    def _apply_live(self, rec: dict[str, Any]) -> str | None:
        """Apply a write already in the WAL. The item table, vectors and vocabulary change under
        the state lock's write side (searches wait for it); the BM25 engine is written after it,
        so a remote cluster's retries never hold searches. A search in between sees the new rows
        with the old BM25 postings: ids the table no longer has are skipped, a replaced id maps to
        its new row. A BM25 engine that refuses or cannot be reached undoes nothing: the write
        stands, its reason is returned, and the engine keeps the operations pending: the next
        write sends them, and so does a serving process's :class:`PendingSender` once the cluster
        answers again (a restart replays the WAL into it)."""
        with self.state_lock.writing():
            products = self._apply_in_memory(rec)
        try:
            self._write_keywords(rec, products, commit=True)
        except ShopSearchError as exc:
            log.warning("keyword index not updated by a stored write: %s", exc.message)
            return exc.message
        return None

    def _apply_in_memory(self, rec: dict[str, Any]) -> list[Product]:
        """Item table, vectors, vocabulary and fused vectors; returns an upsert's products."""
        products: list[Product] = []
        if rec["op"] == "upsert":
            for entry in rec["items"]:
                p = Product.from_dict(entry["product"])
                row, _old = self.table.append(p)
                for modality in MODALITIES:
                    vec = _decode_vec(entry["vectors"].get(modality))
                    if vec is None:
                        continue
                    index = self.vectors.get(modality)
                    if index is None:
                        index = self._new_vector_index(modality, len(vec))
                        self.vectors[modality] = index
                    index.add(vec[None, :], np.asarray([row], dtype=np.int64))
                products.append(p)
            for p in products:  # their words are known from now on: never "corrected" away
                self.vocabulary.add(product_words(p), self.table.id_to_row[p.id])
            if getattr(self, "fused", None) is not None:  # --- fusion model
                rows = [self.table.id_to_row[p.id] for p in products]
                self.fused.embed_rows(rows, self.table, self.vectors)
        elif rec["op"] == "delete":
            for item_id in rec["ids"]:
                self.table.delete(item_id)
        return products

    def _write_keywords(self, rec: dict[str, Any], products: list[Product], *, commit: bool) -> None:
        if rec["op"] == "upsert":
            self.lexical.upsert(products)
        elif rec["op"] == "delete":
            self.lexical.delete(rec["ids"])
        if commit:
            self.lexical.commit()

    def _new_vector_index(self, modality: str, dim: int) -> VectorIndex:
        """A modality this generation was built without gains its first vector (a WAL upsert): in
        the generation's own vector backend, whatever the settings say now."""
        if self.manifest.get("vector_backend", "faiss") == "opensearch":
            # searchable at once; a restart's WAL replay reopens it and rewrites the same documents
            return create_opensearch_vector_index(
                self.path / modality, dim, settings=self.settings, live=True
            )
        return make_vector_index(
            dim,
            1,
            kind="flat" if self.settings.vector_index == "auto" else self.settings.vector_index,
            device=self.settings.device,
        )

    # ----------------------------------------------------------------- writes
    def upsert(self, products: Sequence[Product], *, report: IngestReport | None = None) -> IngestReport:
        """Encode and add/replace items; durable (fsync'd WAL) before this returns."""
        report = report or IngestReport()
        products = list(products)
        if not products:
            return report
        need_image = any(p.images or p.video for p in products)
        with write_lock(self.index_dir), self._write_mutex:
            self.maybe_reload(min_interval=0)
            cache = EmbeddingCache(self.index_dir / "embcache.sqlite")
            try:
                encoded: Encoded = self.encoders.item_encoder(cache, need_image).encode(products, report)
            finally:
                cache.close()
            self._check_dims(encoded)
            entries = []
            for p in products:
                vecs = {m: _encode_vec(getattr(encoded, m).get(p.id)) for m in MODALITIES}
                if not p.has_text() and not any(vecs.values()):
                    report.add(
                        file=None,
                        row=None,
                        id=p.id,
                        field=None,
                        reason="no usable title, description, image or video",
                        action="skipped",
                    )
                    continue
                entries.append({"product": p.to_dict(), "vectors": vecs})
            if entries:
                rec = {"op": "upsert", "items": entries, "ts": time.time()}
                self._append_wal([rec])
                failed = self._apply_live(rec)
                _report_rejected(self.lexical, report)
                if failed:
                    for entry in entries:
                        report.add(
                            file=None,
                            row=None,
                            id=entry["product"]["id"],
                            field=None,
                            reason=f"stored, but the keyword (BM25) index is not updated yet: {failed}",
                            action="warning",
                        )
        return report

    def _check_dims(self, encoded: Encoded) -> None:
        for modality in MODALITIES:
            index = self.vectors.get(modality)
            for v in getattr(encoded, modality).values():
                if index is not None and len(v) != index.dim:
                    raise IndexCorruptError(
                        f"{modality} vectors of the configured model have {len(v)} dims but the index has "
                        f"{index.dim}: rebuild the index with 'shopsearch index'"
                    )
                break

    def delete(self, ids: Sequence[str]) -> list[str]:
        """Delete items; returns the ids that existed. Unknown ids are ignored (idempotent)."""
        with write_lock(self.index_dir), self._write_mutex:
            self.maybe_reload(min_interval=0)
            existing = [i for i in ids if self.table.get(i) is not None]
            if existing:
                rec = {"op": "delete", "ids": existing, "ts": time.time()}
                self._append_wal([rec])
                self._apply_live(rec)  # a keyword index that fails is logged; the delete stands
        return existing

    def send_pending(self) -> int | None:
        """Send the BM25 operations the engine kept pending after a failed write or WAL replay
        (:class:`PendingSender` calls it), serialised with writes as a write would: under the
        index's write lock and this object's write mutex. Never waits for them: returns None when
        a write or a reload holds either (try again later), else how many operations were sent.
        Raises what the engine's commit raises; the operations then stay pending. Documents the
        engine refuses for good are logged (no write report is there to carry them)."""
        with try_file_lock(self.index_dir / WRITE_LOCK) as locked:
            if not locked or not self._write_mutex.acquire(blocking=False):
                return None
            try:
                lexical = self.lexical
                n = lexical.pending
                if n:
                    try:
                        lexical.commit()
                    finally:
                        for item_id, reason in lexical.take_rejected():
                            log.warning(
                                "keyword index refused item %s (%s); it is found by vector search only",
                                item_id,
                                reason,
                            )
                return n
            finally:
                self._write_mutex.release()

    # ----------------------------------------------------------------- reads
    def get(self, item_id: str) -> Product:
        p = self.table.get(item_id)
        if p is None:
            raise ItemNotFoundError(f"no item with id {item_id!r}")
        return p

    def info(self) -> dict[str, Any]:
        """Manifest and live counts. A remote BM25 engine that cannot count now gives
        ``lexical_docs: None`` and ``lexical_error``, not an error: the rest is still worth showing."""
        lexical: dict[str, Any] = {}
        # a remote engine is probed first (one short search, no retry): a count would wait out
        # five retries with backoff (8-16 s at the default settings) before saying the cluster is down
        probe = getattr(self.lexical, "health_check", None)
        problem = probe() if probe is not None else None
        try:
            if problem is not None:
                raise ShopSearchError(problem)
            lexical["lexical_docs"] = self.lexical.count()
        except ShopSearchError as exc:
            lexical = {"lexical_docs": None, "lexical_error": exc.message}
        lexical["lexical_pending"] = self.lexical.pending  # BM25 operations the engine has not confirmed
        return {
            "index_dir": str(self.index_dir),
            "generation": self.generation,
            "manifest": self.manifest,
            "live": {
                **self.table.catalog_stats(),
                **{f"{m}_vectors": int(v.ntotal) for m, v in self.vectors.items()},
                **({"fused_vectors": int(self.fused.index.ntotal)} if getattr(self, "fused", None) else {}),
                **lexical,
                "wal_bytes": self._wal_path.stat().st_size if self._wal_path.exists() else 0,
            },
        }

    def close(self) -> None:
        self.lexical.close()
        for index in self.vectors.values():
            _close_vector_index(index)


# ====================================================================== pending BM25 operations
class PendingSender:
    """Sends the BM25 operations a remote engine (OpenSearch) kept pending after a live write or
    a WAL replay it could not take, once the cluster answers again, instead of with the next
    write, which may never come. Started and stopped with the API app's lifespan.

    A daemon thread looks every ``interval_s`` whether operations are pending (a counter read;
    nothing is sent while none are). When some are, it probes the cluster (one short search, no
    retry) and, if it answers, sends them as a write would (:meth:`LiveIndex.send_pending`, never
    waiting for a write in progress). While the cluster does not take them, each failed try
    doubles the wait, up to ``max_delay_s``; the reason is logged once per change."""

    def __init__(
        self,
        index: LiveIndex,
        *,
        interval_s: float = 1.0,
        max_delay_s: float = 30.0,
        probe_timeout_s: float = 2.0,
    ) -> None:
        self.index = index
        self.interval_s = interval_s
        self.max_delay_s = max_delay_s
        self.probe_timeout_s = probe_timeout_s
        self.last_error: str | None = None  # why the last try failed; None after a success
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the thread (idempotent)."""
        if self.running:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="bm25-pending-sender", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the thread; a send in flight finishes first (up to ``timeout_s``)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def _loop(self) -> None:
        failures = 0
        delay = self.interval_s
        while not self._stop.wait(delay):
            try:
                outcome = self.try_send()
            except Exception:  # noqa: BLE001 - the thread must outlive anything one try meets
                log.exception("sending pending keyword (BM25) operations failed")
                outcome = False
            failures = failures + 1 if outcome is False else 0
            delay = min(self.max_delay_s, self.interval_s * 2**failures) if failures else self.interval_s

    def try_send(self) -> bool | None:
        """One try: None when nothing is pending or a write holds the locks (it comes back at the
        normal interval), True when every pending operation went out, False when the cluster
        did not take them (it backs off)."""
        lexical = self.index.lexical
        waiting = lexical.pending
        if not waiting:
            return None
        probe = getattr(lexical, "health_check", None)
        sent: int | None = 0
        try:
            problem = probe(self.probe_timeout_s) if probe is not None else None
            if problem is None:
                sent = self.index.send_pending()
                if sent is None:
                    return None
        except Exception as exc:  # noqa: BLE001 - whatever it is, the operations stay pending
            problem = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
        if problem is None:
            log.info("sent %d pending keyword (BM25) operations now that the cluster answers", sent)
            self.last_error = None
            return True
        if problem != self.last_error:
            log.warning(
                "%d keyword (BM25) operations are still pending, sent when the cluster takes them: %s",
                waiting,
                problem,
            )
        self.last_error = problem
        return False
