"""Turn products into per-modality vectors, through the embedding cache.

Shared by a full build and by single-item upserts so both produce identical vectors. Media that
cannot be decoded is reported (the item keeps its other modalities) instead of failing the run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from indexer.embcache import EmbeddingCache, file_key, text_key
from indexer.encoders.base import ImageEncoder, TextEncoder
from indexer.encoders.video import encode_video
from indexer.media import load_image
from indexer.product import Product
from indexer.report import IngestReport
from shopsearch.errors import MediaError


@dataclass
class Encoded:
    """Vectors per modality, keyed by item id (an item may lack any of them)."""

    text: dict[str, np.ndarray] = field(default_factory=dict)
    image: dict[str, np.ndarray] = field(default_factory=dict)
    video: dict[str, np.ndarray] = field(default_factory=dict)


def _normalize(v: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(v))
    return (v / n).astype(np.float32) if n > 0 else v.astype(np.float32)


class ItemEncoder:
    """Encodes items with a text and an image encoder (the image encoder also serves video)."""

    def __init__(
        self,
        text: TextEncoder,
        image: ImageEncoder | None,
        cache: EmbeddingCache | None,
        *,
        batch_size: int = 64,
        video_frames: int = 8,
        max_image_pixels: int = 64_000_000,
    ) -> None:
        self.text = text
        self.image = image
        self.cache = cache
        self.batch_size = batch_size
        self.video_frames = video_frames
        self.max_image_pixels = max_image_pixels
        self.encoded_counts = {"text": 0, "image": 0, "video": 0}

    def encode(self, products: Sequence[Product], report: IngestReport, *, progress: bool = False) -> Encoded:
        out = Encoded()
        self._encode_text(products, out, progress)
        if self.image is not None:
            self._encode_images(products, out, report, progress)
            self._encode_videos(products, out, report, progress)
        return out

    # ----------------------------------------------------------------- text
    def _encode_text(self, products: Sequence[Product], out: Encoded, progress: bool) -> None:
        items = [(p.id, p.embedding_text()) for p in products if p.has_text() or p.brand or p.category]
        items = [(i, t) for i, t in items if t]
        keys = [text_key(self.text.name, t) for _, t in items]
        cached = self.cache.get_many(keys) if self.cache is not None else {}
        todo = [(i, t, k) for (i, t), k in zip(items, keys, strict=True) if k not in cached]
        for (item_id, _), key in zip(items, keys, strict=True):
            if key in cached:
                out.text[item_id] = cached[key]
        if not todo:
            return
        vecs = self.text.encode([t for _, t, _ in todo], batch_size=self.batch_size, progress=progress)
        self.encoded_counts["text"] += len(todo)
        new = {}
        for (item_id, _, key), v in zip(todo, vecs, strict=True):
            out.text[item_id] = v
            new[key] = v
        if self.cache is not None:
            self.cache.put_many(new)

    # ----------------------------------------------------------------- images
    def _encode_images(
        self, products: Sequence[Product], out: Encoded, report: IngestReport, progress: bool
    ) -> None:
        assert self.image is not None
        refs: list[tuple[Product, str, str]] = []  # (product, path, cache key)
        for p in products:
            for path in p.images:
                try:
                    key = file_key(self.image.name, Path(path))
                except OSError as exc:
                    report.add(
                        file=path,
                        row=None,
                        id=p.id,
                        field="image",
                        reason=f"cannot read image: {exc}",
                        action="indexed without image",
                    )
                    continue
                refs.append((p, path, key))
        cached = self.cache.get_many([k for _, _, k in refs]) if self.cache is not None else {}
        per_item: dict[str, list[np.ndarray]] = {}
        todo = []
        for p, path, key in refs:
            if key in cached:
                per_item.setdefault(p.id, []).append(cached[key])
            else:
                todo.append((p, path, key))
        bar = tqdm(total=len(todo), desc="images", unit="img", disable=not progress or not todo)
        bad: dict[str, list[str]] = {}
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start : start + self.batch_size]
            imgs, ok = [], []
            for p, path, key in chunk:
                try:
                    imgs.append(load_image(path, max_pixels=self.max_image_pixels))
                    ok.append((p, path, key))
                except MediaError as exc:
                    report.add(
                        file=path,
                        row=None,
                        id=p.id,
                        field="image",
                        reason=exc.message,
                        action="indexed without image",
                    )
                    bad.setdefault(p.id, []).append(path)
            if imgs:
                vecs = self.image.encode(imgs, batch_size=self.batch_size)
                self.encoded_counts["image"] += len(imgs)
                new = {}
                for (p, _, key), v in zip(ok, vecs, strict=True):
                    per_item.setdefault(p.id, []).append(v)
                    new[key] = v
                if self.cache is not None:
                    self.cache.put_many(new)
            bar.update(len(chunk))
        bar.close()
        for p in products:
            if p.id in bad:  # keep only the photos that really decode
                p.images = [x for x in p.images if x not in bad[p.id]]
            vs = per_item.get(p.id)
            if vs:
                out.image[p.id] = _normalize(np.mean(np.stack(vs), axis=0))

    # ----------------------------------------------------------------- video
    def _encode_videos(
        self, products: Sequence[Product], out: Encoded, report: IngestReport, progress: bool
    ) -> None:
        assert self.image is not None
        todo = [p for p in products if p.video]
        for p in tqdm(todo, desc="videos", unit="video", disable=not progress or not todo):
            assert p.video is not None
            try:
                # "upright": frames are turned by the display rotation (vectors cached before that
                # fix may be of sideways frames)
                key = file_key(f"{self.image.name}:video{self.video_frames}:upright", Path(p.video))
                hit = self.cache.get_many([key]) if self.cache is not None else {}
                if key in hit:
                    out.video[p.id] = hit[key]
                    continue
                vec = encode_video(p.video, self.image, n_frames=self.video_frames)
                self.encoded_counts["video"] += 1
                out.video[p.id] = vec
                if self.cache is not None:
                    self.cache.put_many({key: vec})
            except (MediaError, OSError) as exc:
                reason = exc.message if isinstance(exc, MediaError) else str(exc)
                report.add(
                    file=p.video,
                    row=None,
                    id=p.id,
                    field="video",
                    reason=reason,
                    action="indexed without video",
                )
                p.video = None
