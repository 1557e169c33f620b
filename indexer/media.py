"""Safe image decoding and media-path checks.

Catalog images are untrusted input: a path may point outside the folders the operator allowed, a
file may be a text file named ``.jpg``, cut short, or a tiny file that claims 20,000 x 20,000 pixels.
Every such case becomes a :class:`MediaError` with a reason; nothing here changes Pillow's global
settings (``Image.MAX_IMAGE_PIXELS`` and ``ImageFile.LOAD_TRUNCATED_IMAGES`` stay as they are).
"""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from shopsearch.errors import MediaError

#: File name endings treated as photos (lower case, with the dot).
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".avif"}
)
#: File name endings treated as videos (lower case, with the dot).
VIDEO_EXTENSIONS: frozenset[str] = frozenset({".mp4", ".m4v", ".mov", ".webm", ".mkv", ".avi"})

# Only decoders for formats a shop photo comes in: the rest of Pillow's plugins (EPS runs
# Ghostscript, exotic scientific formats) are attack surface with no benefit here.
Image.init()
_FORMATS: tuple[str, ...] = tuple(
    f for f in ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "AVIF") if f in Image.OPEN
)

_REMOTE_SCHEMES = ("http://", "https://", "ftp://", "s3://", "gs://", "data:")

_EXIF_ORIENTATION = 0x0112


def is_remote(ref: str) -> bool:
    """True for URLs that the offline indexer never fetches."""
    return ref.strip().lower().startswith(_REMOTE_SCHEMES)


def is_within_roots(path: str | os.PathLike[str], roots: Iterable[str | os.PathLike[str]]) -> bool:
    """True when ``path``, after resolving symlinks and ``..``, lies inside one of ``roots``.

    Relative paths resolve against the current directory: pass absolute paths. A path that cannot
    be resolved (symlink loop) is outside every root.
    """
    try:
        resolved = Path(path).resolve()
    except (OSError, RuntimeError):
        return False
    for root in roots:
        try:
            r = Path(root).resolve()
        except (OSError, RuntimeError):
            continue
        if resolved == r or resolved.is_relative_to(r):
            return True
    return False


def check_media_file(
    ref: str | os.PathLike[str],
    *,
    base_dir: str | os.PathLike[str],
    roots: Iterable[str | os.PathLike[str]],
    kind: str = "image",
) -> Path:
    """Resolve a catalog media reference and check it cheaply (no decoding).

    Returns the absolute resolved path; raises MediaError when the path escapes every root (the
    file is then never touched), is missing, is not a regular file, or is empty. Relative
    references are relative to ``base_dir`` (the catalog file's folder).
    """
    raw = os.fspath(ref)
    if raw.lower().startswith("file://"):
        raw = raw[len("file://") :]
    p = Path(raw).expanduser()
    if not p.is_absolute():
        p = Path(base_dir) / p
    try:
        resolved = p.resolve()
    except (OSError, RuntimeError) as exc:
        raise MediaError(f"{kind} path {os.fspath(ref)!r} cannot be resolved: {exc}") from None
    if not is_within_roots(resolved, roots):
        raise MediaError(f"{kind} path {os.fspath(ref)!r} is outside the allowed media folders; refused")
    try:
        st = resolved.stat()
    except FileNotFoundError:
        raise MediaError(f"{kind} file not found: {resolved}") from None
    except OSError as exc:
        raise MediaError(f"{kind} file cannot be read: {resolved} ({exc.strerror or exc})") from None
    if not stat.S_ISREG(st.st_mode):
        raise MediaError(f"{kind} path is not a regular file: {resolved}")
    if st.st_size == 0:
        raise MediaError(f"{kind} file is empty: {resolved}")
    return resolved


def load_image(source: str | os.PathLike[str] | bytes, *, max_pixels: int = 64_000_000) -> Image.Image:
    """Decode an image fully into RGB, or raise MediaError saying why it cannot be used.

    The pixel count is checked from the header before any pixel is decoded, so a decompression
    bomb costs a few hundred bytes of reading. The image is decoded here (``load()``), so a
    truncated file fails here rather than inside an encoder. EXIF orientation is applied, and
    transparency is flattened onto white (product photos on a transparent background would turn
    black otherwise). Multi-frame files (GIF, TIFF) give their first frame. Pillow's own guard
    (refusing over 2 x ``Image.MAX_IMAGE_PIXELS``, ~179 MP by default) still applies above
    ``max_pixels``.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        name = "image data"
        if len(source) == 0:
            raise MediaError("image data is empty")
        fh: io.BufferedIOBase = io.BytesIO(bytes(source))
    else:
        name = f"image {os.fspath(source)}"
        if is_remote(os.fspath(source)):
            raise MediaError(f"{name}: remote URLs are not fetched (the indexer works offline)")
        fh = _open_file(Path(source), name)
    with fh:
        try:
            img = Image.open(fh, formats=_FORMATS)
        except Image.DecompressionBombError as exc:
            raise MediaError(
                f"{name}: refused before decoding as a possible decompression bomb ({exc})"
            ) from None
        except UnidentifiedImageError:
            raise MediaError(
                f"{name}: not an image or not a supported format (supported: {', '.join(_FORMATS)})"
            ) from None
        except Exception as exc:  # any header parse failure is bad input
            raise MediaError(f"{name}: corrupt image header ({type(exc).__name__}: {exc})") from None
        width, height = img.size
        if width <= 0 or height <= 0:
            raise MediaError(f"{name}: image has no pixels ({width}x{height})")
        if width * height > max_pixels:
            raise MediaError(
                f"{name}: {width}x{height} = {width * height / 1e6:.1f} megapixels is over the limit of "
                f"{max_pixels / 1e6:.1f}; refused before decoding"
            )
        try:
            img.load()
        except Exception as exc:  # decoders raise OSError, SyntaxError, ValueError...
            raise MediaError(
                f"{name}: truncated or corrupt image data ({type(exc).__name__}: {exc})"
            ) from None
    img = _apply_orientation(img)
    try:
        return _to_rgb(img)
    except Exception as exc:
        raise MediaError(f"{name}: cannot convert {img.mode} image to RGB ({exc})") from None


def _open_file(path: Path, name: str) -> io.BufferedIOBase:
    # Check the kind before opening: opening a FIFO for reading would block forever.
    try:
        st = path.stat()
    except FileNotFoundError:
        raise MediaError(f"{name}: file not found") from None
    except OSError as exc:
        raise MediaError(f"{name}: cannot be read ({exc.strerror or exc})") from None
    if not stat.S_ISREG(st.st_mode):
        raise MediaError(f"{name}: not a regular file")
    if st.st_size == 0:
        raise MediaError(f"{name}: file is empty")
    try:
        return open(path, "rb")  # closed by the caller's with-block
    except OSError as exc:
        raise MediaError(f"{name}: cannot be opened ({exc.strerror or exc})") from None


def _apply_orientation(img: Image.Image) -> Image.Image:
    # A broken EXIF block should not cost the photo: keep it unrotated rather than refuse it.
    try:
        if img.getexif().get(_EXIF_ORIENTATION, 1) in (None, 1):
            return img
        return ImageOps.exif_transpose(img) or img
    except Exception:
        return img


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I;16") or mode == "I":
        # Pillow clips 16-bit values to 0..255 when converting; scale instead.
        arr = np.asarray(img).astype(np.float32)
        peak = 65535.0 if arr.size and arr.max() > 255 else 255.0
        grey = np.clip(arr * (255.0 / peak), 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info
    if has_alpha:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        background.alpha_composite(rgba)
        return background.convert("RGB")
    return img.convert("RGB")
