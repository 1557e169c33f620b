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
from urllib.parse import unquote

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

#: Longest side / shortest side above which a file is refused: no product photo is 100 times longer
#: than it is wide, and encoders scale the short side up (open_clip) or pad to a square, so a
#: 100000x1 "photo" of a few hundred bytes would cost them gigabytes.
MAX_ASPECT_RATIO = 100

# ISO-BMFF brands of HEIF still images (iPhone photos): Pillow has no decoder for them.
_HEIF_BRANDS = frozenset(
    {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs", b"mif1", b"msf1"}
)


def unsupported_format(head: bytes) -> str | None:
    """The name of a well-known image format this decoder cannot read (HEIC, SVG, JPEG XL), from
    the first bytes of a file, so the refusal can say what the file is; None otherwise."""
    if head[4:8] == b"ftyp":
        size = int.from_bytes(head[:4], "big")
        box = head[8 : min(max(size, 16), len(head))]
        brands = {box[i : i + 4] for i in range(0, len(box) - 3, 4)}
        if brands & _HEIF_BRANDS and not brands & {b"avif", b"avis"}:
            return "HEIC/HEIF"
    if head.startswith((b"\xff\x0a", b"\x00\x00\x00\x0cJXL \r\n\x87\n")):
        return "JPEG XL"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith(b"<svg") or (text.startswith((b"<?xml", b"<!doctype svg")) and b"<svg" in text):
        return "SVG"
    return None


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
    except (OSError, RuntimeError, ValueError):
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
    roots = tuple(roots)
    p = _local_path(raw, base_dir)
    if raw.lower().startswith("file://"):
        # a file URI is percent-encoded (Path.as_uri() writes "my%20photo.jpg"); a name with a
        # literal '%' that earlier catalogs relied on still finds its file (inside the roots only)
        rest = raw[len("file://") :]
        rest = rest[len("localhost") :] if rest.lower().startswith("localhost/") else rest
        p, literal = _local_path(unquote(rest), base_dir), _local_path(rest, base_dir)
        if literal != p and is_within_roots(literal, roots) and _exists(literal):
            if not (is_within_roots(p, roots) and _exists(p)):
                p = literal
    try:
        resolved = p.resolve()
    except (OSError, RuntimeError, ValueError) as exc:  # ValueError: a NUL byte in the name
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


def _local_path(raw: str, base_dir: str | os.PathLike[str]) -> Path:
    p = Path(raw).expanduser()
    return p if p.is_absolute() else Path(base_dir) / p


def _exists(p: Path) -> bool:
    try:
        return p.exists()
    except (OSError, ValueError):  # a name too long, a NUL byte
        return False


def load_image(
    source: str | os.PathLike[str] | bytes, *, max_pixels: int = 64_000_000, name: str | None = None
) -> Image.Image:
    """Decode an image fully into RGB, or raise MediaError saying why it cannot be used.

    Error messages start with ``name`` (default: ``image PATH``, or ``image data`` for bytes), so
    a caller holding bytes can say where they came from ("uploaded image 'x.jpg'").

    The pixel count is checked from the header before any pixel is decoded, so a decompression
    bomb costs a few hundred bytes of reading. The image is decoded here (``load()``), so a
    truncated file fails here rather than inside an encoder. EXIF orientation is applied, and
    transparency is flattened onto white (product photos on a transparent background would turn
    black otherwise). Multi-frame files (GIF, TIFF) give their first frame. Pillow's own guard
    (refusing over 2 x ``Image.MAX_IMAGE_PIXELS``, ~179 MP by default) still applies above
    ``max_pixels``. Images more than ``MAX_ASPECT_RATIO`` times longer than wide are refused.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        name = name or "image data"
        if len(source) == 0:
            raise MediaError(f"{name} is empty")
        fh: io.BufferedIOBase = io.BytesIO(bytes(source))
    else:
        name = name or f"image {os.fspath(source)}"
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
            fh.seek(0)
            known = unsupported_format(fh.read(1024))
            what = f"{known} images are not supported" if known else "not an image or not a supported format"
            raise MediaError(f"{name}: {what} (supported: {', '.join(_FORMATS)})") from None
        except Exception as exc:  # any header parse failure is bad input
            raise MediaError(f"{name}: corrupt image header ({type(exc).__name__}: {exc})") from None
        width, height = img.size
        if width <= 0 or height <= 0:
            raise MediaError(f"{name}: image has no pixels ({width}x{height})")
        if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
            raise MediaError(
                f"{name}: {width}x{height} is too elongated for a product photo "
                f"(more than {MAX_ASPECT_RATIO}:1); refused before decoding"
            )
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
    # A colour key (PNG tRNS) makes one colour transparent in RGB, L, 16-bit and palette images:
    # tools that shrink PNGs store a cut-out product's background this way instead of as alpha.
    key = img.info.get("transparency")
    if mode == "RGB" and key is None:
        return img
    if mode.startswith("I;16") or mode == "I":
        # Pillow clips 16-bit values to 0..255 when converting; scale instead.
        raw = np.asarray(img)
        arr = raw.astype(np.float32)
        peak = 65535.0 if arr.size and arr.max() > 255 else 255.0
        grey = np.clip(arr * (255.0 / peak), 0, 255).astype(np.uint8)
        out = Image.fromarray(grey).convert("RGB")
        if isinstance(key, int):
            out.paste((255, 255, 255), mask=Image.fromarray(((raw == key) * 255).astype(np.uint8)))
        return out
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or key is not None
    if has_alpha:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        background.alpha_composite(rgba)
        return background.convert("RGB")
    return img.convert("RGB")
