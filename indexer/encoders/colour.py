"""A product photo's colour as a fixed-size vector: a hue/saturation/value histogram.

Why: the image encoder's pooled features are trained to name objects, and average the colour
away (on Fashion, raw EfficientNet-Lite0 photo search finds the same article type 79% of the
time but the same type *and colour* only 24%). A plain histogram of the product's pixels keeps
exactly what the encoder loses, costs under a millisecond per photo and needs no model. The
fusion model feeds it through its own token (``indexer.fusion.model``), next to the photo vector.

Recipe: the photo shrunk to at most ``SIZE`` px, near-white pixels (the studio background of
catalog photos, and transparency, which decoding flattens onto white) dropped unless almost
nothing else is left, 8 hue x 4 saturation x 4 value bins, then Hellinger-mapped (square root of
the normalised counts). The result has unit L2 norm, so a dot product of two histograms is the
Bhattacharyya coefficient of the two colour distributions. Hue is circular and soft-binned: a
pixel splits its vote between the two nearest hue bins, so red (hue 0, where the circle closes)
and a shade of red just "below" it fall into the same bins. Measured on Fashion's training items
(raw photo vector + 0.7 x histogram, same type+colour precision@10): soft 0.337, hard bins 0.333;
collapsing the hue of dark and grey pixels lost (0.322): a navy and a black item differ there.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from indexer.embcache import EmbeddingCache, encode_cached, file_key
from indexer.media import load_image
from shopsearch.errors import MediaError

HUE_BINS, SAT_BINS, VAL_BINS = 8, 4, 4
COLOUR_DIM = HUE_BINS * SAT_BINS * VAL_BINS
SIZE = 64
WHITE = 235  # a pixel whose every channel is above this is background
MIN_FOREGROUND = 20  # fewer non-white pixels than this: a white product, histogram them all
# cache namespace: change it whenever the recipe above changes
COLOUR_NAME = f"colour-hsv{HUE_BINS}soft-x{SAT_BINS}x{VAL_BINS}-s{SIZE}-w{WHITE}"


def _rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return image.convert("RGB") if image.mode != "RGB" else image


def colour_histogram(
    image: Image.Image | str | os.PathLike[str], *, max_pixels: int = 64_000_000
) -> np.ndarray:
    """(COLOUR_DIM,) float32, unit L2 norm: the HSV histogram of a photo's product pixels.

    ``image`` is a PIL image (a query photo) or a path (a catalog photo, decoded like the image
    encoder decodes it). An undecodable file raises MediaError."""
    if not isinstance(image, Image.Image):
        image = load_image(image, max_pixels=max_pixels)
    img = _rgb(image)
    if max(img.size) > SIZE:
        img = img.copy()
        img.thumbnail((SIZE, SIZE))
    rgb = np.asarray(img, dtype=np.uint8).reshape(-1, 3)
    if not len(rgb):
        raise MediaError("image has no pixels")
    hsv = np.asarray(img.convert("HSV"), dtype=np.int32).reshape(-1, 3)  # each channel 0..255
    fg = rgb.min(axis=1) <= WHITE
    if fg.sum() < MIN_FOREGROUND:
        fg[:] = True
    h = hsv[fg]
    sv = (h[:, 1] * SAT_BINS >> 8) * VAL_BINS + (h[:, 2] * VAL_BINS >> 8)
    x = h[:, 0] * (HUE_BINS / 256.0) - 0.5  # position among hue bin centres
    lo = np.floor(x)
    frac = x - lo
    lo = lo.astype(np.int64) % HUE_BINS
    counts = np.bincount(lo * SAT_BINS * VAL_BINS + sv, weights=1.0 - frac, minlength=COLOUR_DIM)
    hi = (lo + 1) % HUE_BINS
    counts += np.bincount(hi * SAT_BINS * VAL_BINS + sv, weights=frac, minlength=COLOUR_DIM)
    return np.sqrt(counts / counts.sum()).astype(np.float32)


def colour_histograms(
    paths: Sequence[str | os.PathLike[str] | None],
    cache: EmbeddingCache | None = None,
    *,
    max_pixels: int = 64_000_000,
) -> tuple[np.ndarray, np.ndarray]:
    """Histograms of many photo files: ``(len(paths), COLOUR_DIM)`` and a present mask (False for
    None, a missing file or one that does not decode). With ``cache`` (the index's embedding
    cache) a photo is histogrammed once, keyed by its bytes."""
    out = np.zeros((len(paths), COLOUR_DIM), dtype=np.float32)
    keys: list[str] = []
    where: list[int] = []
    for i, p in enumerate(paths):
        if p is None:
            continue
        try:
            keys.append(file_key(COLOUR_NAME, Path(p)))
        except OSError:
            continue
        where.append(i)

    def compute(idx: list[int]) -> np.ndarray:
        vecs = np.zeros((len(idx), COLOUR_DIM), dtype=np.float32)
        for j, i in enumerate(idx):
            try:
                vecs[j] = colour_histogram(paths[where[i]], max_pixels=max_pixels)  # type: ignore[arg-type]
            except MediaError:
                pass  # zeros: absent (and cached so, for these bytes)
        return vecs

    if where:
        out[where] = encode_cached(keys, compute, cache, dim=COLOUR_DIM)
    present = out.any(axis=1)
    return out, present
