"""Image decoding and media-path checks against real files written to tmp_path."""

from __future__ import annotations

import io
import os
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from indexer.media import (
    IMAGE_EXTENSIONS,
    VIDEO_EXTENSIONS,
    check_media_file,
    is_within_roots,
    load_image,
    unsupported_format,
)
from shopsearch.errors import MediaError


def _jpeg(path: Path, size: tuple[int, int] = (64, 48), color=(200, 30, 30), **save_kw) -> Path:
    Image.new("RGB", size, color).save(path, "JPEG", quality=90, **save_kw)
    return path


def _png_chunk(tag: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))


def _bilevel_png(width: int, height: int) -> bytes:
    """A valid, all-black 1-bit PNG: tiny on disk, ``width * height`` pixels when decoded."""
    comp = zlib.compressobj(9)
    row = b"\x00" * (1 + (width + 7) // 8)
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


# --------------------------------------------------------------------------- good images


def test_loads_jpeg_as_rgb_from_path_and_bytes(tmp_path: Path) -> None:
    p = _jpeg(tmp_path / "a.jpg")
    for source in (p, str(p), p.read_bytes()):
        img = load_image(source)
        assert img.mode == "RGB" and img.size == (64, 48)
        r, g, b = img.getpixel((10, 10))
        assert r > 180 and g < 60 and b < 60
    # The file handle is closed, yet the image stays usable.
    assert load_image(p).resize((8, 8)).tobytes()


def test_transparent_png_is_flattened_on_white(tmp_path: Path) -> None:
    img = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    img.putpixel((0, 0), (0, 0, 255, 255))
    img.save(tmp_path / "t.png")
    out = load_image(tmp_path / "t.png")
    assert out.mode == "RGB"
    assert out.getpixel((5, 5)) == (255, 255, 255)
    assert out.getpixel((0, 0)) == (0, 0, 255)


def test_colour_key_transparency_is_flattened_on_white(tmp_path: Path) -> None:
    # PNG optimisers store a cut-out's background as one transparent colour (tRNS), not as an alpha
    # channel: that background must turn white like an alpha one, not stay black.
    rgb = Image.new("RGB", (10, 10), (0, 0, 0))
    rgb.putpixel((0, 0), (200, 30, 30))
    rgb.save(tmp_path / "key.png", transparency=(0, 0, 0))
    with Image.open(tmp_path / "key.png") as raw:
        assert raw.mode == "RGB" and raw.info["transparency"] == (0, 0, 0)
    out = load_image(tmp_path / "key.png")
    assert out.getpixel((5, 5)) == (255, 255, 255)
    assert out.getpixel((0, 0)) == (200, 30, 30)
    deep = np.zeros((10, 10), dtype=np.uint16)
    deep[0, 0] = 40000
    Image.fromarray(deep).save(tmp_path / "key16.png", transparency=0)
    out16 = load_image(tmp_path / "key16.png")
    assert out16.getpixel((5, 5)) == (255, 255, 255)
    assert out16.getpixel((0, 0)) == (155, 155, 155)  # 40000 / 65535 of 255


def test_palette_and_greyscale_images_convert(tmp_path: Path) -> None:
    Image.new("L", (8, 8), 128).save(tmp_path / "g.png")
    Image.new("RGB", (8, 8), (10, 200, 10)).convert("P").save(tmp_path / "p.gif")
    assert load_image(tmp_path / "g.png").getpixel((1, 1)) == (128, 128, 128)
    r, g, b = load_image(tmp_path / "p.gif").getpixel((1, 1))
    assert g > 150 and r < 60


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    ramp = np.linspace(0, 65535, 256, dtype=np.uint16).reshape(16, 16)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    out = np.asarray(load_image(tmp_path / "deep.png"))[..., 0]
    assert out.min() == 0 and out.max() == 255
    # Clipping would make almost everything 255; scaling keeps the ramp.
    assert 100 < out.mean() < 155


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    p = _jpeg(tmp_path / "rot.jpg", size=(40, 20), exif=exif.tobytes())
    with Image.open(p) as raw:
        assert raw.size == (40, 20)
    assert load_image(p).size == (20, 40)


def test_max_pixels_parameter(tmp_path: Path) -> None:
    p = _jpeg(tmp_path / "a.jpg", size=(20, 20))
    assert load_image(p, max_pixels=400).size == (20, 20)
    with pytest.raises(MediaError, match="over the limit"):
        load_image(p, max_pixels=399)


# --------------------------------------------------------------------------- bad images


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(MediaError, match="not found") as e:
        load_image(tmp_path / "nope.jpg")
    assert "nope.jpg" in str(e.value)


def test_empty_file_and_empty_bytes(tmp_path: Path) -> None:
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(MediaError, match="empty"):
        load_image(tmp_path / "empty.jpg")
    with pytest.raises(MediaError, match="empty"):
        load_image(b"")


def test_text_file_named_jpg(tmp_path: Path) -> None:
    (tmp_path / "fake.jpg").write_text("this is not a picture\n" * 20)
    with pytest.raises(MediaError, match="not an image") as e:
        load_image(tmp_path / "fake.jpg")
    assert "fake.jpg" in str(e.value)


def test_heic_svg_and_jpeg_xl_are_named_when_refused(tmp_path: Path) -> None:
    brands = b"mif1" + b"\0\0\0\0" + b"mif1heicmiaf"  # major brand, version, compatible brands
    heic = (8 + len(brands)).to_bytes(4, "big") + b"ftyp" + brands + b"\0" * 64
    svg = b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"/>'
    jxl = b"\xff\x0a" + b"\0" * 64
    for name, data, kind in (("a.heic", heic, "HEIC"), ("b.svg", svg, "SVG"), ("c.jxl", jxl, "JPEG XL")):
        (tmp_path / name).write_bytes(data)
        assert unsupported_format(data) is not None
        with pytest.raises(MediaError, match=f"{kind}.* not supported") as e:
            load_image(tmp_path / name)
        assert name in str(e.value)
    assert unsupported_format(b"<html><body>404</body></html>") is None
    assert unsupported_format(b"\0\0\0\x1cftypavif\0\0\0\0avifmif1miaf") is None  # AVIF is read


def test_bytes_are_named_as_the_caller_says(tmp_path: Path) -> None:
    with pytest.raises(MediaError, match=r"^uploaded image 'x\.jpg' is empty$"):
        load_image(b"", name="uploaded image 'x.jpg'")
    with pytest.raises(MediaError, match=r"^--image /a b\.jpg: not an image"):
        load_image(b"<html></html>", name="--image /a b.jpg")
    with pytest.raises(MediaError, match=r"^image data: not an image"):
        load_image(b"<html></html>")


@pytest.mark.parametrize("size", [(100_000, 1), (1, 100_000), (30_000, 200)])
def test_extremely_elongated_images_are_refused_before_decoding(
    tmp_path: Path, size: tuple[int, int]
) -> None:
    # A few hundred bytes on disk, but the encoders pad to a square or scale the short side up:
    # a 100000x1 image would cost them gigabytes.
    Image.new("RGB", size, (9, 9, 9)).save(tmp_path / "thin.png")
    t = time.perf_counter()
    with pytest.raises(MediaError, match="elongated") as e:
        load_image(tmp_path / "thin.png")
    assert time.perf_counter() - t < 1.0
    assert f"{size[0]}x{size[1]}" in str(e.value)


def test_tiny_and_long_but_plausible_images_load(tmp_path: Path) -> None:
    Image.new("RGB", (1, 1), (9, 9, 9)).save(tmp_path / "dot.png")
    Image.new("RGB", (1000, 10), (9, 9, 9)).save(tmp_path / "strip.png")  # 100:1, e.g. a tape measure
    assert load_image(tmp_path / "dot.png").size == (1, 1)
    assert load_image(tmp_path / "strip.png").size == (1000, 10)


def test_format_outside_the_allowed_decoders_is_refused(tmp_path: Path) -> None:
    # Pillow can read PPM, but a shop photo never is one: only the listed decoders run.
    Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / "x.ppm")
    with pytest.raises(MediaError, match="supported format"):
        load_image(tmp_path / "x.ppm")


def test_truncated_jpeg(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8))
    buf = io.BytesIO()
    noise.save(buf, "JPEG", quality=95)
    data = buf.getvalue()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(MediaError, match="truncated or corrupt") as e:
        load_image(tmp_path / "cut.jpg")
    assert "cut.jpg" in str(e.value)
    with pytest.raises(MediaError, match="truncated or corrupt"):
        load_image(data[: len(data) // 2])


def test_corrupt_png_data(tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (9, 9, 9)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    idat = data.index(b"IDAT")
    for i in range(idat + 6, idat + 16):
        data[i] ^= 0xFF
    (tmp_path / "bad.png").write_bytes(bytes(data))
    with pytest.raises(MediaError, match="bad.png"):
        load_image(tmp_path / "bad.png")


def test_decompression_bomb_20000x20000_is_refused_quickly(tmp_path: Path) -> None:
    p = tmp_path / "bomb.png"
    p.write_bytes(_bilevel_png(20_000, 20_000))
    assert p.stat().st_size < 200_000
    t0 = time.perf_counter()
    with pytest.raises(MediaError, match="bomb|megapixels") as e:
        load_image(p)
    assert time.perf_counter() - t0 < 1.0
    assert "bomb.png" in str(e.value)


def test_image_over_our_limit_but_under_pillows_is_refused_from_the_header(tmp_path: Path) -> None:
    # 9000 x 9000 = 81 MP: Pillow's own guard (89 MP) lets it through, our 64 MP default must not.
    p = tmp_path / "big.png"
    p.write_bytes(_bilevel_png(9_000, 9_000))
    t0 = time.perf_counter()
    with pytest.raises(
        MediaError, match="81.0 megapixels is over the limit of 64.0; refused before decoding"
    ):
        load_image(p)
    assert time.perf_counter() - t0 < 0.5


def test_no_global_pillow_setting_changes(tmp_path: Path) -> None:
    before = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)
    p = tmp_path / "big.png"
    p.write_bytes(_bilevel_png(9_000, 9_000))
    with pytest.raises(MediaError):
        load_image(p)
    load_image(_jpeg(tmp_path / "ok.jpg"))
    assert (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES) == before


def test_directory_and_remote_url_are_refused(tmp_path: Path) -> None:
    with pytest.raises(MediaError, match="not a regular file"):
        load_image(tmp_path)
    with pytest.raises(MediaError, match="remote"):
        load_image("https://example.com/a.jpg")


# --------------------------------------------------------------------------- paths and roots


def test_extensions() -> None:
    assert {".jpg", ".jpeg", ".png", ".webp"} <= IMAGE_EXTENSIONS
    assert ".mp4" in VIDEO_EXTENSIONS and not IMAGE_EXTENSIONS & VIDEO_EXTENSIONS


def test_is_within_roots(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (tmp_path / "outside.jpg").write_bytes(b"x")
    assert is_within_roots(root / "sub" / "a.jpg", [root])
    assert is_within_roots(root, [root])
    assert not is_within_roots(root / ".." / "outside.jpg", [root])
    assert not is_within_roots(tmp_path / "rootx" / "a.jpg", [root])  # a prefix is not a parent
    assert is_within_roots(tmp_path / "outside.jpg", [root, tmp_path])
    assert not is_within_roots(root / "a.jpg", [])


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symlinks on this platform")
def test_symlink_escaping_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    secret = _jpeg(tmp_path / "secret.jpg")
    (root / "link.jpg").symlink_to(secret)
    assert not is_within_roots(root / "link.jpg", [root])
    with pytest.raises(MediaError, match="outside the allowed media folders"):
        check_media_file("link.jpg", base_dir=root, roots=[root])
    # A symlink that stays inside the root is fine.
    inside = _jpeg(root / "real.jpg")
    (root / "alias.jpg").symlink_to(inside)
    assert check_media_file("alias.jpg", base_dir=root, roots=[root]) == inside.resolve()


def test_check_media_file(tmp_path: Path) -> None:
    root = tmp_path / "cat"
    root.mkdir()
    good = _jpeg(root / "a.jpg")
    (root / "empty.jpg").write_bytes(b"")
    assert check_media_file("a.jpg", base_dir=root, roots=[root]) == good.resolve()
    assert check_media_file(str(good), base_dir=tmp_path, roots=[root]) == good.resolve()
    # Outside the root: refused before any existence check (this target does not even exist).
    with pytest.raises(MediaError, match="outside the allowed media folders"):
        check_media_file("../nowhere/x.jpg", base_dir=root, roots=[root])
    with pytest.raises(MediaError, match="not found"):
        check_media_file("missing.jpg", base_dir=root, roots=[root])
    with pytest.raises(MediaError, match="empty"):
        check_media_file("empty.jpg", base_dir=root, roots=[root])
    with pytest.raises(MediaError, match="not a regular file"):
        check_media_file(".", base_dir=root, roots=[root])
    with pytest.raises(MediaError, match="video file not found"):
        check_media_file("clip.mp4", base_dir=root, roots=[root], kind="video")


def test_file_uris_are_percent_decoded(tmp_path: Path) -> None:
    root = tmp_path / "cat"
    root.mkdir()
    spaced = _jpeg(root / "my photo é.jpg")
    assert check_media_file(spaced.as_uri(), base_dir=root, roots=[root]) == spaced.resolve()
    assert "%20" in spaced.as_uri()
    local = "file://localhost" + spaced.as_uri()[len("file://") :]
    assert check_media_file(local, base_dir=root, roots=[root]) == spaced.resolve()
    # a name with a literal '%' written into a file URI unencoded, as earlier catalogs did, still works
    literal = _jpeg(root / "50%25 off.jpg")
    assert check_media_file(f"file://{literal}", base_dir=root, roots=[root]) == literal.resolve()


def test_nul_byte_in_a_media_path_is_a_media_error(tmp_path: Path) -> None:
    for ref in ("a\x00b.jpg", "file:///tmp/a%00b.jpg"):
        with pytest.raises(MediaError, match="cannot be resolved"):
            check_media_file(ref, base_dir=tmp_path, roots=[tmp_path])
    assert not is_within_roots("a\x00b.jpg", [tmp_path])
