"""Generate the bundled sample catalog: a small outdoor/apparel/home store we wrote ourselves.

Why generated instead of hand-written: the product texts, drawings, short videos, smoke queries and
their judgments all come from one table of models below, so they stay consistent with each other and
anyone can regenerate (or extend) them. The output is deterministic: every random choice comes from a
``random.Random`` seeded with a fixed string and the item id, so two runs write byte-identical files.

    python examples/make_sample_catalog.py            # writes examples/sample_catalog/
    python examples/make_sample_catalog.py --out DIR  # anywhere else

Everything here (texts, brands, drawings) is invented for this project and licensed Apache-2.0.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import random
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SEED = "shopsearch-sample-v1"
SIZE = 224
VIDEO_SIZE = 96
VIDEO_FPS = 12
VIDEO_FRAMES = 24  # 2 seconds
BACKGROUND = (244, 244, 240)
OUTLINE = (48, 48, 52)
PHOTO_ONLY_BACKDROP = (232, 237, 244)  # uploaded by another seller: a different studio backdrop
DEFAULT_OUT = Path(__file__).resolve().parent / "sample_catalog"

RGB = tuple[int, int, int]

COLOURS: dict[str, RGB] = {
    "Black": (38, 38, 42),
    "Gray": (140, 142, 146),
    "White": (228, 228, 224),
    "Navy": (36, 50, 96),
    "Blue": (44, 104, 196),
    "Teal": (28, 140, 140),
    "Green": (52, 128, 66),
    "Olive": (112, 116, 52),
    "Red": (196, 44, 44),
    "Pink": (228, 128, 162),
    "Purple": (118, 72, 164),
    "Yellow": (236, 198, 48),
    "Orange": (236, 128, 36),
    "Tan": (202, 168, 118),
    "Brown": (116, 74, 42),
}


# --------------------------------------------------------------------------- drawing


def _shade(rgb: RGB, factor: float) -> RGB:
    return tuple(max(0, min(255, round(c * factor))) for c in rgb)  # type: ignore[return-value]


def _detail(rgb: RGB) -> RGB:
    """A second tone for seams and pockets: darker on light colours, lighter on dark ones."""
    lum = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    if lum < 70:
        return tuple(min(255, c + 60) for c in rgb)  # type: ignore[return-value]
    return _shade(rgb, 0.72)


def _poly(d: ImageDraw.ImageDraw, pts: list[tuple[float, float]], fill: RGB, width: int = 3) -> None:
    d.polygon(pts, fill=fill, outline=OUTLINE, width=width)


def draw_hoodie(d: ImageDraw.ImageDraw, c: RGB, style: str) -> None:
    dt = _detail(c)
    # sleeves (behind the body)
    _poly(d, [(72, 62), (40, 84), (26, 184), (52, 188), (66, 110)], c)
    _poly(d, [(152, 62), (184, 84), (198, 184), (172, 188), (158, 110)], c)
    _poly(d, [(26, 176), (52, 180), (52, 190), (25, 187)], dt, 2)  # cuffs
    _poly(d, [(198, 176), (172, 180), (172, 190), (199, 187)], dt, 2)
    # body
    _poly(d, [(72, 62), (152, 62), (160, 110), (162, 200), (62, 200), (64, 110)], c)
    _poly(d, [(62, 188), (162, 188), (162, 200), (62, 200)], dt, 2)  # hem band
    # hood: a rounded cowl lying on the shoulders, with the dark opening for the face
    d.ellipse((74, 18, 150, 96), fill=c, outline=OUTLINE, width=3)
    d.ellipse((90, 32, 134, 84), fill=_shade(c, 0.45), outline=OUTLINE, width=2)
    d.polygon([(88, 70), (136, 70), (112, 100)], fill=c)
    d.line([(88, 70), (112, 100), (136, 70)], fill=OUTLINE, width=3)
    # drawstrings
    d.line([(104, 94), (101, 128)], fill=(240, 240, 236), width=3)
    d.line([(120, 94), (123, 128)], fill=(240, 240, 236), width=3)
    if style == "zip":
        d.line([(112, 100), (112, 188)], fill=dt, width=4)
        _poly(d, [(78, 146), (108, 146), (108, 182), (72, 182)], dt, 2)
        _poly(d, [(116, 146), (146, 146), (152, 182), (116, 182)], dt, 2)
    else:
        _poly(d, [(84, 144), (140, 144), (152, 182), (72, 182)], dt, 2)  # kangaroo pocket


def draw_tshirt(d: ImageDraw.ImageDraw, c: RGB, style: str) -> None:
    dt = _detail(c)
    _poly(
        d,
        [
            (88, 40),
            (60, 48),
            (22, 82),
            (44, 116),
            (66, 100),
            (66, 196),
            (158, 196),
            (158, 100),
            (180, 116),
            (202, 82),
            (164, 48),
            (136, 40),
        ],
        c,
    )
    # neckline
    d.chord((88, 26, 136, 64), 0, 180, fill=BACKGROUND, outline=OUTLINE, width=3)
    d.arc((86, 24, 138, 70), 0, 180, fill=dt, width=4)
    # sleeve hems
    d.line([(24, 86), (46, 112)], fill=dt, width=3)
    d.line([(200, 86), (178, 112)], fill=dt, width=3)
    if style == "logo":
        d.polygon([(112, 92), (98, 118), (126, 118)], fill=dt)
        d.polygon([(122, 100), (114, 118), (134, 118)], fill=_shade(dt, 0.8))
    elif style == "sport":
        d.line([(66, 120), (158, 120)], fill=dt, width=6)


def draw_jeans(d: ImageDraw.ImageDraw, c: RGB, style: str) -> None:
    dt = _detail(c)
    stitch = (214, 168, 64) if style != "slim" or sum(c) > 200 else (200, 200, 200)
    spread = 14 if style == "relaxed" else (0 if style != "slim" else -6)  # cut of the leg
    _poly(
        d,
        [(66, 24), (158, 24), (166 + spread, 206), (118, 206), (112, 86), (106, 206), (58 - spread, 206)],
        c,
    )
    _poly(d, [(66, 24), (158, 24), (158, 40), (66, 40)], dt, 2)  # waistband
    d.rectangle((106, 27, 118, 37), outline=stitch, width=2)  # button / fly
    d.line([(112, 40), (112, 84)], fill=dt, width=3)
    d.arc((62, 30, 104, 78), 0, 90, fill=stitch, width=3)  # front pockets
    d.arc((120, 30, 162, 78), 90, 180, fill=stitch, width=3)
    d.line([(62 - spread, 194), (104, 194)], fill=stitch, width=2)  # hems
    d.line([(120, 194), (162 + spread, 194)], fill=stitch, width=2)


def draw_cap(d: ImageDraw.ImageDraw, c: RGB, style: str) -> None:
    dt = _detail(c)
    # crown (a half dome, side view facing right), then the brim sticking out in front
    d.pieslice((28, 60, 172, 204), 180, 360, fill=c, outline=OUTLINE, width=3)
    d.line([(28, 132), (172, 132)], fill=OUTLINE, width=3)
    _poly(d, [(150, 122), (200, 128), (214, 140), (206, 146), (150, 134)], dt)
    d.rectangle((30, 120, 170, 131), fill=dt)
    d.arc((60, 60, 140, 204), 200, 340, fill=dt, width=2)  # panel seams
    d.line([(100, 60), (100, 120)], fill=dt, width=2)
    d.ellipse((92, 52, 108, 64), fill=dt, outline=OUTLINE, width=2)  # button
    if style == "run":
        for x in range(52, 150, 18):  # mesh vents
            d.ellipse((x, 96, x + 6, 102), fill=_shade(dt, 0.8))


def draw_running_shoe(d: ImageDraw.ImageDraw, c: RGB, style: str) -> None:
    dt = _detail(c)
    sole = (238, 238, 234) if sum(c) < 600 else (90, 90, 96)
    # upper: heel on the left, toe on the right
    _poly(
        d,
        [
            (24, 150),
            (26, 104),
            (40, 92),
            (66, 106),
            (96, 102),
            (126, 110),
            (170, 128),
            (198, 140),
            (204, 156),
            (24, 156),
        ],
        c,
    )
    _poly(d, [(18, 150), (206, 150), (210, 162), (196, 176), (28, 176), (16, 164)], sole)
    d.line([(22, 168), (204, 168)], fill=_shade(sole, 0.8), width=2)
    # swoosh-like stripe and laces
    d.line([(56, 142), (110, 128), (158, 136)], fill=dt, width=6)
    for i in range(4):
        x = 84 + i * 14
        d.line([(x, 104 + i * 3), (x + 10, 114 + i * 3)], fill=(250, 250, 250), width=3)
    d.polygon([(24, 104), (40, 92), (40, 124), (26, 124)], fill=dt)  # heel tab
    if style == "trail":
        for x in range(30, 200, 16):
            d.rectangle((x, 176, x + 8, 182), fill=OUTLINE)  # lugs


def draw_boot(d: ImageDraw.ImageDraw, c: RGB, style: str) -> None:
    dt = _detail(c)
    if style == "rain":
        _poly(d, [(58, 22), (124, 22), (126, 140), (190, 160), (196, 188), (50, 188)], c)
        _poly(d, [(54, 22), (128, 22), (128, 38), (54, 38)], dt, 2)
        _poly(d, [(44, 186), (200, 186), (200, 202), (44, 202)], _shade(c, 0.6), 2)
        d.ellipse((70, 50, 80, 60), fill=dt)
        return
    sole = (58, 46, 38)
    _poly(d, [(60, 40), (122, 40), (128, 128), (178, 144), (196, 168), (196, 184), (52, 184), (54, 120)], c)
    _poly(d, [(56, 40), (126, 40), (126, 56), (56, 56)], dt, 2)  # padded collar
    _poly(d, [(46, 180), (202, 180), (204, 198), (44, 198)], sole, 2)
    for x in range(52, 200, 14):
        d.rectangle((x, 198, x + 7, 204), fill=sole)  # lugs
    # lacing: hooks and crossing laces along the front of the shaft
    for i in range(6):
        y = 60 + i * 14
        d.ellipse((118, y, 126, y + 8), fill=(200, 200, 200), outline=OUTLINE)
        d.line([(122, y + 4), (100, y + 12)], fill=(224, 200, 150), width=3)
    d.line([(56, 150), (150, 150)], fill=dt, width=3)  # welt seam


def draw_backpack(d: ImageDraw.ImageDraw, c: RGB, style: str) -> None:
    dt = _detail(c)
    d.arc((86, 12, 138, 56), 180, 360, fill=OUTLINE, width=7)  # top handle
    d.rounded_rectangle((50, 30, 174, 206), radius=34, fill=c, outline=OUTLINE, width=3)
    d.arc((62, 42, 162, 120), 200, 340, fill=dt, width=4)  # main zipper
    d.rounded_rectangle((70, 120, 154, 194), radius=16, fill=dt, outline=OUTLINE, width=2)
    d.line([(78, 134), (146, 134)], fill=_shade(dt, 0.7), width=3)  # pocket zipper
    d.rectangle((106, 128, 118, 140), fill=(210, 210, 210), outline=OUTLINE)
    # side straps
    d.rectangle((40, 80, 52, 170), fill=dt, outline=OUTLINE, width=2)
    d.rectangle((172, 80, 184, 170), fill=dt, outline=OUTLINE, width=2)
    if style == "trek":
        d.line([(60, 100), (164, 100)], fill=OUTLINE, width=4)  # compression strap
        d.rectangle((104, 94, 120, 106), fill=(30, 30, 30))


def draw_mug(d: ImageDraw.ImageDraw, c: RGB, style: str) -> None:
    dt = _detail(c)
    if style == "travel":
        d.arc((140, 70, 194, 150), 270, 90, fill=OUTLINE, width=12)
        d.arc((140, 70, 194, 150), 270, 90, fill=c, width=6)
        _poly(d, [(66, 56), (158, 56), (150, 206), (74, 206)], c)
        _poly(d, [(60, 34), (164, 34), (166, 58), (58, 58)], (50, 50, 54))  # lid
        d.rectangle((126, 24, 146, 34), fill=(50, 50, 54))
        d.rectangle((70, 120, 154, 146), fill=dt)  # grip band
        return
    d.arc((136, 76, 206, 168), 270, 90, fill=OUTLINE, width=16)  # handle
    d.arc((138, 78, 204, 166), 270, 90, fill=c, width=10)
    d.rectangle((46, 58, 158, 190), fill=c)
    d.line([(46, 58), (46, 190)], fill=OUTLINE, width=3)
    d.line([(158, 58), (158, 190)], fill=OUTLINE, width=3)
    d.chord((46, 176, 158, 204), 0, 180, fill=c, outline=OUTLINE, width=3)
    d.rectangle((48, 176, 156, 190), fill=c)
    d.ellipse((46, 44, 158, 72), fill=_shade(c, 0.55), outline=OUTLINE, width=3)  # rim
    d.line([(50, 96), (154, 96)], fill=dt, width=3)  # glaze line
    # steam
    for x in (82, 102, 122):
        d.arc((x, 12, x + 14, 30), 90, 270, fill=(190, 190, 190), width=2)
        d.arc((x, 26, x + 14, 42), 270, 90, fill=(190, 190, 190), width=2)


def draw_lamp(d: ImageDraw.ImageDraw, c: RGB, style: str) -> None:
    dt = _detail(c)
    glow = (255, 236, 160)
    if style == "desk":
        d.polygon([(122, 132), (176, 100), (204, 204), (104, 204)], fill=glow)  # light cone
        d.ellipse((36, 190, 116, 208), fill=c, outline=OUTLINE, width=3)  # base
        for a, b in (((76, 196), (124, 116)), ((124, 116), (92, 52))):  # two-part arm
            d.line([a, b], fill=OUTLINE, width=9)
            d.line([a, b], fill=dt, width=5)
        d.ellipse((118, 110, 130, 122), fill=OUTLINE)
        _poly(d, [(84, 44), (104, 40), (178, 100), (122, 134)], c)  # conical head, opening down-right
        d.line([(122, 134), (178, 100)], fill=_shade(glow, 0.85), width=4)
        return
    d.polygon([(70, 104), (154, 104), (176, 150), (48, 150)], fill=glow)
    d.line([(112, 96), (112, 180)], fill=OUTLINE, width=7)
    d.line([(112, 96), (112, 180)], fill=(180, 160, 110), width=3)
    if style == "bedside":
        d.ellipse((68, 128, 156, 206), fill=c, outline=OUTLINE, width=3)  # round ceramic base
        d.ellipse((88, 142, 106, 160), fill=_shade(c, 1.15))
        _poly(d, [(72, 44), (152, 44), (164, 108), (60, 108)], (244, 236, 214))
        return
    d.ellipse((66, 176, 158, 202), fill=dt, outline=OUTLINE, width=3)
    _poly(d, [(78, 28), (146, 28), (178, 110), (46, 110)], c)  # shade
    d.line([(50, 102), (174, 102)], fill=dt, width=3)


def draw_yoga_mat(d: ImageDraw.ImageDraw, c: RGB, style: str) -> None:
    dt = _detail(c)
    r = 30 if style == "travel" else (48 if style == "thick" else 40)
    cy = 112
    # a rolled mat lying diagonally: the cylinder body, then the spiral end
    _poly(d, [(56, cy - r), (176, cy - r), (176, cy + r), (56, cy + r)], c)
    d.ellipse((156, cy - r, 196, cy + r), fill=c, outline=OUTLINE, width=3)
    d.ellipse((36, cy - r, 76, cy + r), fill=c, outline=OUTLINE, width=3)
    for i in range(1, 5):  # the spiral of the roll, seen end-on
        rx, ry = 20 * (5 - i) // 5, r * (5 - i) // 5
        d.ellipse((56 - rx, cy - ry, 56 + rx, cy + ry), outline=dt, width=2)
    # unrolled flap on the floor and a carry strap
    _poly(d, [(60, cy + r), (190, cy + r), (206, cy + r + 44), (44, cy + r + 44)], _shade(c, 0.9))
    d.line([(120, cy - r), (120, cy + r)], fill=(60, 60, 60), width=5)
    d.line([(100, cy - r - 2), (140, cy - r - 2)], fill=(60, 60, 60), width=4)
    d.line([(60, cy + r + 22), (196, cy + r + 22)], fill=dt, width=2)


def draw_bottle(d: ImageDraw.ImageDraw, c: RGB, style: str) -> None:
    dt = _detail(c)
    if style == "squeeze":
        _poly(d, [(80, 58), (144, 58), (152, 90), (146, 130), (152, 206), (72, 206), (78, 130), (72, 90)], c)
        _poly(d, [(88, 38), (136, 38), (140, 60), (84, 60)], (50, 50, 54))
        d.rectangle((106, 18, 118, 38), fill=(50, 50, 54))
        for y in (150, 166, 182):
            d.line([(80, y), (144, y)], fill=dt, width=2)
        return
    d.rounded_rectangle((76, 62, 148, 210), radius=22, fill=c, outline=OUTLINE, width=3)
    _poly(d, [(86, 34), (138, 34), (142, 66), (82, 66)], (60, 60, 64))  # cap
    d.arc((96, 14, 128, 46), 180, 360, fill=(60, 60, 64), width=6)  # carry loop
    d.rectangle((78, 110, 146, 150), fill=dt)  # label band
    d.line([(90, 74), (90, 196)], fill=_shade(c, 1.25) if sum(c) < 600 else (255, 255, 255), width=4)


def draw_tent(d: ImageDraw.ImageDraw, c: RGB, style: str) -> None:
    dt = _detail(c)
    d.line([(8, 190), (216, 190)], fill=(120, 150, 90), width=5)  # ground
    if style == "family":
        _poly(d, [(20, 188), (40, 86), (112, 40), (184, 86), (204, 188)], c)
        d.line([(40, 86), (112, 40), (184, 86)], fill=OUTLINE, width=4)
        _poly(d, [(80, 188), (112, 96), (144, 188)], _shade(c, 0.45))
        d.line([(112, 40), (112, 96)], fill=dt, width=3)
    else:
        _poly(d, [(30, 188), (112, 40), (194, 188)], c)
        _poly(d, [(84, 188), (112, 110), (140, 188)], _shade(c, 0.45))  # door
        d.line([(112, 40), (112, 110)], fill=dt, width=3)
    d.line([(112, 40), (112, 28)], fill=OUTLINE, width=3)  # pole tip
    d.line([(30, 188), (12, 198)], fill=(150, 150, 150), width=2)  # guy lines
    d.line([(194, 188), (212, 198)], fill=(150, 150, 150), width=2)


def draw_headphones(d: ImageDraw.ImageDraw, c: RGB, style: str) -> None:
    dt = _detail(c)
    band = 14 if style != "kids" else 18
    d.arc((40, 24, 184, 176), 180, 360, fill=OUTLINE, width=band + 6)
    d.arc((43, 27, 181, 173), 180, 360, fill=c, width=band)
    d.arc((50, 34, 174, 166), 200, 340, fill=dt, width=4)  # padding
    for x0 in (28, 150):
        d.rectangle((x0 + 16, 92, x0 + 30, 116), fill=(150, 150, 156), outline=OUTLINE, width=2)  # yokes
        d.rounded_rectangle((x0, 108, x0 + 46, 186), radius=20, fill=c, outline=OUTLINE, width=3)
        d.rounded_rectangle((x0 + 8, 118, x0 + 38, 176), radius=14, fill=dt)
    if style == "wired":
        d.line([(48, 186), (60, 214), (90, 220)], fill=OUTLINE, width=3)
    if style == "kids":
        d.ellipse((34, 132, 44, 142), fill=(255, 255, 255))
        d.ellipse((180, 132, 190, 142), fill=(255, 255, 255))


DRAWERS: dict[str, Callable[[ImageDraw.ImageDraw, RGB, str], None]] = {
    "Hoodies": draw_hoodie,
    "T-Shirts": draw_tshirt,
    "Jeans": draw_jeans,
    "Caps": draw_cap,
    "Running Shoes": draw_running_shoe,
    "Boots": draw_boot,
    "Backpacks": draw_backpack,
    "Mugs": draw_mug,
    "Lamps": draw_lamp,
    "Yoga Mats": draw_yoga_mat,
    "Water Bottles": draw_bottle,
    "Tents": draw_tent,
    "Headphones": draw_headphones,
}


def render(article_type: str, colour: str, style: str = "", backdrop: RGB = BACKGROUND) -> Image.Image:
    """The drawing of one product, RGB, SIZE x SIZE, on ``backdrop``."""
    img = Image.new("RGB", (SIZE, SIZE), BACKGROUND)
    DRAWERS[article_type](ImageDraw.Draw(img), COLOURS[colour], style)
    if backdrop != BACKGROUND:
        arr = np.asarray(img).copy()
        arr[(arr == BACKGROUND).all(axis=-1)] = backdrop
        img = Image.fromarray(arr)
    return img


def png_bytes(img: Image.Image) -> bytes:
    """A palette PNG: the drawings use a handful of flat colours, so this stays a few KB."""
    pal = img.quantize(colors=32, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    buf = io.BytesIO()
    pal.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def video_bytes(article_type: str, colour: str, style: str, motion: str) -> bytes:
    """A 2-second H.264 clip of the drawing turning around (``spin``) or pulsing (``zoom``).

    Encoded so that repeated runs give the same bytes (see the options below).
    """
    base = render(article_type, colour, style).resize((VIDEO_SIZE, VIDEO_SIZE), Image.Resampling.LANCZOS)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "clip.mp4"
        _encode_clip(base, motion, path)
        return path.read_bytes()


def _encode_clip(base: Image.Image, motion: str, path: Path) -> None:
    import av

    # +faststart puts the index first so browsers can play it while it downloads (needs a real file)
    with av.open(str(path), "w", format="mp4", options={"movflags": "+faststart"}) as out:
        stream = out.add_stream("libx264", rate=VIDEO_FPS)
        stream.width = VIDEO_SIZE
        stream.height = VIDEO_SIZE
        stream.pix_fmt = "yuv420p"
        stream.time_base = Fraction(1, VIDEO_FPS)
        stream.codec_context.thread_count = 1
        # x264's macroblock-tree rate control gave slightly different bytes on repeated runs in one
        # process; without it (and single-threaded) the output is stable
        stream.codec_context.options = {"crf": "30", "threads": "1", "x264-params": "mbtree=0"}
        for i in range(VIDEO_FRAMES):
            t = i / VIDEO_FRAMES
            frame_img = Image.new("RGB", (VIDEO_SIZE, VIDEO_SIZE), BACKGROUND)
            if motion == "spin":
                w = max(4, round(abs(math.cos(2 * math.pi * t)) * VIDEO_SIZE))
                part = base.resize((w, VIDEO_SIZE), Image.Resampling.BILINEAR)
                if math.cos(2 * math.pi * t) < 0:
                    part = part.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
                frame_img.paste(part, ((VIDEO_SIZE - w) // 2, 0))
            else:
                s = 0.8 + 0.2 * (0.5 - 0.5 * math.cos(2 * math.pi * t))
                side = round(VIDEO_SIZE * s)
                part = base.resize((side, side), Image.Resampling.BILINEAR)
                frame_img.paste(part, ((VIDEO_SIZE - side) // 2, (VIDEO_SIZE - side) // 2))
            frame = av.VideoFrame.from_image(frame_img)
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


# --------------------------------------------------------------------------- the store


@dataclass(frozen=True)
class Model:
    """One product model; the catalog has one item per colour, like real stores do."""

    code: str
    name: str
    article_type: str
    brand: str
    material: str
    price: float
    colours: tuple[str, ...]
    features: tuple[str, ...]
    gender: str | None = None
    style: str = ""
    extra: dict[str, str | int | float] = field(default_factory=dict)
    video: dict[str, str] = field(default_factory=dict)  # colour -> motion


@dataclass(frozen=True)
class TypeInfo:
    category: str
    nouns: tuple[str, ...]
    uses: tuple[str, ...]
    adjectives: tuple[str, ...]
    closers: tuple[str, ...]
    sizes: str | None = None
    plural: bool = False


TYPES: dict[str, TypeInfo] = {
    "Hoodies": TypeInfo(
        "Apparel > Tops > Hoodies",
        ("hoodie", "hooded sweatshirt", "hooded layer"),
        ("chilly trailhead mornings", "lazy weekends", "the commute", "evenings around the campfire"),
        ("cosy", "midweight", "soft", "relaxed"),
        (
            "Machine wash cold and tumble dry low.",
            "Size up for a roomier fit over layers.",
            "Pairs well with our jeans and caps.",
        ),
        "XS|S|M|L|XL",
    ),
    "T-Shirts": TypeInfo(
        "Apparel > Tops > T-Shirts",
        ("t-shirt", "tee", "short-sleeve shirt"),
        ("everyday wear", "warm days", "layering under a hoodie", "travel"),
        ("breathable", "lightweight", "classic", "easy-going"),
        (
            "Machine wash cold with like colours.",
            "Pre-shrunk, so the fit stays true wash after wash.",
            "Buy two and rotate them through the week.",
        ),
        "XS|S|M|L|XL|XXL",
    ),
    "Jeans": TypeInfo(
        "Apparel > Bottoms > Jeans",
        ("jeans", "denim trousers", "five-pocket jeans"),
        ("the office", "weekend errands", "workshop days", "nights out"),
        ("durable", "comfortable", "well-cut", "hard-wearing"),
        (
            "Wash inside out to keep the colour deep.",
            "Hemmed to a 32 inch inseam.",
            "The denim softens with every wear.",
        ),
        "28|30|32|34|36|38",
        plural=True,
    ),
    "Caps": TypeInfo(
        "Apparel > Accessories > Caps",
        ("cap", "baseball cap", "six-panel cap"),
        ("sunny hikes", "morning runs", "festival days", "everyday errands"),
        ("low-profile", "packable", "classic", "lightweight"),
        ("Adjustable strap fits most heads.", "Spot clean only.", "Folds flat into a pocket."),
        "One Size",
    ),
    "Running Shoes": TypeInfo(
        "Footwear > Running Shoes",
        ("running shoe", "trainer", "runner"),
        ("daily training runs", "long road miles", "tempo sessions", "race day"),
        ("responsive", "cushioned", "lightweight", "springy"),
        (
            "True to size; go half a size up for wide feet.",
            "Heel-to-toe drop of 8 mm.",
            "Removable insole fits custom orthotics.",
        ),
        "6|7|8|9|10|11|12",
    ),
    "Boots": TypeInfo(
        "Footwear > Boots",
        ("boot", "ankle boot", "lace-up boot"),
        ("rocky hikes", "wet city streets", "muddy fields", "winter walks"),
        ("rugged", "waterproof", "sturdy", "weather-ready"),
        (
            "Treat the upper once a season.",
            "Break them in over a few short walks.",
            "Resoleable by any good cobbler.",
        ),
        "6|7|8|9|10|11|12",
    ),
    "Backpacks": TypeInfo(
        "Bags > Backpacks",
        ("backpack", "pack", "rucksack"),
        ("day hikes", "the daily commute", "weekend trips", "school and campus"),
        ("roomy", "tough", "well-organised", "comfortable"),
        (
            "Covered by our lifetime repair promise.",
            "Wipe clean with a damp cloth.",
            "Fits under most airline seats.",
        ),
    ),
    "Mugs": TypeInfo(
        "Home > Kitchen > Mugs",
        ("mug", "coffee mug", "tea mug"),
        ("slow morning coffee", "afternoon tea", "the desk", "hot chocolate on cold nights"),
        ("sturdy", "generous", "hand-finished", "everyday"),
        (
            "Dishwasher safe.",
            "Each glaze varies slightly, so no two are identical.",
            "Stacks neatly in the cupboard.",
        ),
    ),
    "Lamps": TypeInfo(
        "Home > Lighting > Lamps",
        ("lamp", "table lamp", "light"),
        ("reading corners", "the bedside table", "a home office desk", "the living room"),
        ("warm", "soft-glow", "minimal", "elegant"),
        ("Dimmable with a compatible LED bulb.", "Comes with a 1.8 m fabric cable.", "Bulb not included."),
    ),
    "Yoga Mats": TypeInfo(
        "Sports > Yoga > Mats",
        ("yoga mat", "exercise mat", "practice mat"),
        ("hot yoga", "daily stretching", "pilates", "studio classes"),
        ("grippy", "non-slip", "supportive", "eco-minded"),
        (
            "Wipe down with mild soap and water.",
            "Carry strap included.",
            "Measures 183 x 61 cm when unrolled.",
        ),
    ),
    "Water Bottles": TypeInfo(
        "Sports > Hydration > Water Bottles",
        ("water bottle", "bottle", "drinks bottle"),
        ("the gym", "long rides", "hiking trips", "the office desk"),
        ("leak-proof", "durable", "easy-clean", "reusable"),
        ("Hand wash recommended.", "BPA-free lid and seals.", "Fits standard cup holders."),
    ),
    "Tents": TypeInfo(
        "Outdoor > Camping > Tents",
        ("tent", "camping tent", "shelter"),
        ("backpacking trips", "family campsites", "festival weekends", "three-season adventures"),
        ("storm-ready", "quick-pitch", "roomy", "lightweight"),
        (
            "Seams are taped at the factory.",
            "Packs into the included stuff sack.",
            "Footprint sold separately.",
        ),
    ),
    "Headphones": TypeInfo(
        "Electronics > Audio > Headphones",
        ("headphones", "over-ear headphones", "headset"),
        ("long flights", "focused work", "the daily commute", "music at home"),
        ("immersive", "comfortable", "balanced-sounding", "foldable"),
        ("Comes with a two-year warranty.", "Ear cushions are replaceable.", "Folds flat into the case."),
        plural=True,
    ),
}

# fmt: off
MODELS: tuple[Model, ...] = (
    Model("HD01", "Trailhead Zip Hoodie", "Hoodies", "Northpeak", "Cotton Blend", 59.0,
          ("Black", "Gray", "Navy"), ("a full-length zip", "a brushed fleece lining", "a drawstring hood"),
          "Unisex", "zip"),
    Model("HD02", "Campfire Pullover Hoodie", "Hoodies", "Urbanloom", "Organic Cotton", 48.0,
          ("Gray", "Green", "Red"), ("a kangaroo pocket", "ribbed cuffs", "a lined hood"), "Men"),
    Model("HD03", "Harbor Fleece Hoodie", "Hoodies", "Northpeak", "Recycled Polyester Fleece", 64.0,
          ("Black", "Pink", "Teal"), ("a plush fleece face", "thumbhole cuffs", "a scuba-style hood"),
          "Women"),
    Model("TS01", "Everyday Crew Tee", "T-Shirts", "Urbanloom", "Organic Cotton", 19.0,
          ("White", "Black", "Gray", "Navy"), ("a crew neck", "a tag-free collar", "side-seamed shaping"),
          "Unisex"),
    Model("TS02", "Summit Logo Tee", "T-Shirts", "Northpeak", "Cotton", 24.0,
          ("Red", "Blue", "Olive"), ("a printed mountain logo", "a ribbed collar", "a straight hem"),
          "Men", "logo"),
    Model("TS03", "Breeze Performance Tee", "T-Shirts", "Stridewell", "Recycled Polyester", 29.0,
          ("White", "Teal", "Pink"), ("quick-dry fabric", "flatlock seams", "a reflective chest band"),
          "Women", "sport"),
    Model("JN01", "Foundry Slim Jeans", "Jeans", "Urbanloom", "Stretch Denim", 69.0,
          ("Blue", "Black", "Gray"), ("a slim tapered leg", "a button fly", "copper rivets"), "Men", "slim",
          {"fit": "Slim"}),
    Model("JN02", "Prairie Straight Jeans", "Jeans", "Urbanloom", "Organic Denim", 74.0,
          ("Blue", "Black"), ("a high rise", "a straight leg", "deep back pockets"), "Women", "straight",
          {"fit": "Straight"}),
    Model("JN03", "Workshop Relaxed Jeans", "Jeans", "Northpeak", "Rigid Denim", 79.0,
          ("Navy", "Gray"), ("a roomy seat and thigh", "a hammer loop", "triple-stitched seams"), "Men",
          "relaxed", {"fit": "Relaxed"}),
    Model("JN04", "Coastline Skinny Jeans", "Jeans", "Urbanloom", "Stretch Denim", 65.0,
          ("Blue", "White"), ("a skinny leg", "a mid rise", "four-way stretch"), "Women", "slim",
          {"fit": "Skinny"}),
    Model("CP01", "Basecamp Baseball Cap", "Caps", "Northpeak", "Cotton Twill", 22.0,
          ("Green", "Black", "Tan"), ("an embroidered peak logo", "a curved brim", "a brass buckle"),
          "Unisex"),
    Model("CP02", "Sprint Running Cap", "Caps", "Stridewell", "Polyester Mesh", 25.0,
          ("White", "Red"), ("laser-cut vents", "a sweat-wicking band", "a soft flexible brim"), "Unisex",
          "run"),
    Model("RS01", "Tempo Road Runner", "Running Shoes", "Stridewell", "Engineered Mesh", 119.0,
          ("Blue", "Black", "Red"), ("a foam midsole", "a breathable mesh upper", "a padded heel collar"),
          "Men", "", {"drop_mm": 8}, {"Blue": "spin"}),
    Model("RS02", "Cloudline Trainer", "Running Shoes", "Stridewell", "Knit Mesh", 129.0,
          ("Pink", "White", "Teal"),
          ("a sock-like knit upper", "extra forefoot cushioning", "reflective details"),
          "Women", "", {"drop_mm": 6}),
    Model("RS03", "Trail Ridge Running Shoe", "Running Shoes", "Northpeak", "Ripstop Mesh", 139.0,
          ("Gray", "Green", "Yellow"), ("a grippy lugged outsole", "a rock plate", "a toe bumper"),
          "Unisex", "trail", {"drop_mm": 4}),
    Model("BT01", "Ridgeline Hiking Boot", "Boots", "Northpeak", "Leather", 159.0,
          ("Brown", "Black"), ("a waterproof membrane", "speed-lace hooks", "a Vibram-style lug sole"),
          "Men", "", {"waterproof": "Yes"}),
    Model("BT02", "Timberfall Lace-Up Boot", "Boots", "Northpeak", "Suede", 149.0,
          ("Tan", "Brown"), ("a padded collar", "a cushioned footbed", "a grippy rubber sole"), "Women", "",
          {"waterproof": "Yes"}),
    Model("BT03", "Puddle Rain Boot", "Boots", "Urbanloom", "Natural Rubber", 55.0,
          ("Yellow", "Green", "Navy"), ("a pull-on shaft", "a cotton lining", "a chunky tread"), "Unisex",
          "rain", {"waterproof": "Yes"}),
    Model("BP01", "Summit Daypack 22L", "Backpacks", "Northpeak", "Recycled Nylon", 79.0,
          ("Black", "Blue", "Red"),
          ("a hydration sleeve", "padded shoulder straps", "a stretch front pocket"),
          None, "", {"capacity_l": 22, "laptop_sleeve": "No"}),
    Model("BP02", "Commuter Laptop Backpack", "Backpacks", "Urbanloom", "Water-Resistant Polyester", 95.0,
          ("Gray", "Black", "Navy"),
          ("a padded 15 inch laptop sleeve", "a luggage pass-through", "hidden pockets"),
          None, "", {"capacity_l": 18, "laptop_sleeve": "Yes"}),
    Model("BP03", "Ridgeway Trek Pack 35", "Backpacks", "Ridgeway Supply", "Ripstop Nylon", 139.0,
          ("Green", "Orange"), ("a ventilated back panel", "a hip belt", "compression straps"), None, "trek",
          {"capacity_l": 35, "laptop_sleeve": "No"}),
    Model("MG01", "Stoneware Mug", "Mugs", "Clayhaus", "Ceramic", 18.0,
          ("White", "Blue", "Green"), ("a reactive glaze", "a thick wall that holds heat", "a wide handle"),
          None, "", {"capacity_ml": 350}),
    Model("MG02", "Morning Ritual Mug", "Mugs", "Lumina Home", "Ceramic", 14.0,
          ("Yellow", "Pink", "Black"), ("a glossy glaze", "a rounded lip", "a comfortable handle"), None, "",
          {"capacity_ml": 300}),
    Model("MG03", "Roamer Travel Mug", "Mugs", "Ridgeway Supply", "Stainless Steel", 29.0,
          ("Gray", "Black", "Red"), ("double-wall vacuum insulation", "a leak-proof slide lid",
                                     "a grippy band"),
          None, "travel", {"capacity_ml": 470}),
    Model("LP01", "Halo Table Lamp", "Lamps", "Lumina Home", "Linen and Oak", 89.0,
          ("White", "Tan", "Gray"), ("a tapered linen shade", "an oak stem", "an inline switch"), None, "",
          {"bulb": "E27"}),
    Model("LP02", "Studio Desk Lamp", "Lamps", "Lumina Home", "Aluminium", 65.0,
          ("Black", "White", "Teal"),
          ("an adjustable arm", "a weighted base", "a tilting head"), None, "desk",
          {"bulb": "E27"}, {"Teal": "zoom"}),
    Model("LP03", "Nook Bedside Lamp", "Lamps", "Lumina Home", "Ceramic", 49.0,
          ("Pink", "Blue"), ("a glazed ceramic base", "a cream fabric shade", "a touch dimmer"), None,
          "bedside", {"bulb": "E14"}),
    Model("YM01", "Grip Yoga Mat 6mm", "Yoga Mats", "Zenfold", "Natural Rubber", 68.0,
          ("Purple", "Teal", "Black"),
          ("a sticky top layer", "alignment lines", "a dense 6 mm core"), None, "",
          {"thickness_mm": 6}),
    Model("YM02", "Travel Yoga Mat 2mm", "Yoga Mats", "Zenfold", "TPE", 39.0,
          ("Pink", "Blue", "Gray"),
          ("a foldable 2 mm build", "a textured grip", "a featherweight feel"), None,
          "travel", {"thickness_mm": 2}),
    Model("YM03", "Cushion Yoga Mat 10mm", "Yoga Mats", "Zenfold", "NBR Foam", 35.0,
          ("Green", "Purple"), ("a thick 10 mm cushion", "knee-friendly padding", "a ribbed underside"), None,
          "thick", {"thickness_mm": 10}),
    Model("WB01", "Insulated Bottle 750ml", "Water Bottles", "Aquavia", "Stainless Steel", 34.0,
          ("Teal", "Black", "White", "Red"),
          ("double-wall insulation", "24 hours of cold", "a carry loop"), None,
          "", {"capacity_ml": 750}),
    Model("WB02", "Sport Squeeze Bottle 600ml", "Water Bottles", "Aquavia", "BPA-free Plastic", 12.0,
          ("Blue", "Yellow", "Green"),
          ("a squeeze body", "a one-hand valve", "a fitted grip"), None, "squeeze",
          {"capacity_ml": 600}),
    Model("TN01", "Ridge 2 Tent", "Tents", "Northpeak", "Polyester Ripstop", 249.0,
          ("Green", "Orange", "Gray"), ("two doors", "aluminium poles", "a full-coverage fly"), None, "",
          {"capacity_persons": 2, "season": "3-season"}),
    Model("TN02", "Basecamp 4 Tent", "Tents", "Northpeak", "Polyester Taffeta", 389.0,
          ("Tan", "Blue"),
          ("a standing-height dome", "a covered porch", "colour-coded poles"), None, "family",
          {"capacity_persons": 4, "season": "3-season"}),
    Model("HP01", "Aria Wireless Headphones", "Headphones", "Soundcrest", "Plastic and Memory Foam", 149.0,
          ("Black", "White", "Navy"),
          ("active noise cancelling", "30 hours of battery", "multipoint pairing"),
          None, "", {"connectivity": "Bluetooth", "battery_hours": 30}),
    Model("HP02", "Studio Wired Headphones", "Headphones", "Soundcrest", "Aluminium and Leatherette", 89.0,
          ("Black", "Gray"), ("40 mm drivers", "a detachable cable", "swivelling ear cups"), None, "wired",
          {"connectivity": "Wired"}),
    Model("HP03", "Mini Kids Headphones", "Headphones", "Soundcrest", "Plastic", 45.0,
          ("Pink", "Blue", "Green"),
          ("an 85 dB volume limit", "a bendy headband", "20 hours of battery"), None,
          "kids", {"connectivity": "Bluetooth", "battery_hours": 20}),
)
# fmt: on

# Photo-only listings: real catalogs have items uploaded with a picture and nothing else. Their
# type and colour are known here (for the smoke judgments) but not written to the catalog.
PHOTO_ONLY: tuple[tuple[str, str, str, str], ...] = (
    ("PX-0001", "Backpacks", "Orange", ""),
    ("PX-0002", "Mugs", "Red", ""),
    ("PX-0003", "Hoodies", "Black", ""),
    ("PX-0004", "Running Shoes", "Yellow", "trail"),
)

# Smoke queries: (qid, text, article type or None, constraints on attributes).
QUERIES: tuple[tuple[str, str, str, dict[str, str]], ...] = (
    ("q01", "black hoodie", "Hoodies", {"color": "Black"}),
    ("q02", "red t-shirt", "T-Shirts", {"color": "Red"}),
    ("q03", "white tee", "T-Shirts", {"color": "White"}),
    ("q04", "blue jeans", "Jeans", {"color": "Blue"}),
    ("q05", "black slim jeans", "Jeans", {"color": "Black", "fit": "Slim"}),
    ("q06", "running shoes", "Running Shoes", {}),
    ("q07", "women's running shoes", "Running Shoes", {"gender": "Women"}),
    ("q08", "brown leather boots", "Boots", {"color": "Brown", "material": "Leather"}),
    ("q09", "yellow rain boots", "Boots", {"color": "Yellow"}),
    ("q10", "laptop backpack", "Backpacks", {"laptop_sleeve": "Yes"}),
    ("q11", "orange backpack", "Backpacks", {"color": "Orange"}),
    ("q12", "ceramic mug", "Mugs", {"material": "Ceramic"}),
    ("q13", "insulated travel mug", "Mugs", {"material": "Stainless Steel"}),
    ("q14", "table lamp", "Lamps", {}),
    ("q15", "purple yoga mat", "Yoga Mats", {"color": "Purple"}),
    ("q16", "wireless headphones", "Headphones", {"connectivity": "Bluetooth"}),
    ("q17", "green baseball cap", "Caps", {"color": "Green"}),
    ("q18", "insulated water bottle", "Water Bottles", {"material": "Stainless Steel"}),
    ("q19", "2 person tent", "Tents", {"capacity_persons": "2"}),
    ("q20", "gray hoodie", "Hoodies", {"color": "Gray"}),
    ("q21", "navy headphones", "Headphones", {"color": "Navy"}),
)


@dataclass
class Item:
    id: str
    article_type: str
    colour: str
    style: str
    attributes: dict[str, str | int | float]  # what the judgments use (also for photo-only items)
    record: dict[str, object]
    video_motion: str | None = None
    backdrop: RGB = BACKGROUND


def _sentence(s: str) -> str:
    return s[0].upper() + s[1:]


def _a(phrase: str) -> str:
    """'a' or 'an' before a phrase (good enough for our vocabulary)."""
    return f"{'an' if phrase[0].lower() in 'aeiou' else 'a'} {phrase}"


def _description(m: Model, colour: str, rng: random.Random) -> str:
    t = TYPES[m.article_type]
    noun, use, adj = rng.choice(t.nouns), rng.choice(t.uses), rng.choice(t.adjectives)
    f = list(m.features)
    rng.shuffle(f)
    material = m.material.lower()
    # jeans and headphones are plural nouns: talk about "a pair of" them
    one = f"a pair of {adj} {noun}" if t.plural else _a(f"{adj} {noun}")
    this = f"this pair of {adj} {noun}" if t.plural else f"this {adj} {noun}"
    first = rng.choice(
        (
            f"The {m.name} is {one} made for {use}.",
            f"Made for {use}, {this} from {m.brand} is cut from {material}.",
            f"Meet the {m.name}: {one} in {material}, ready for {use}.",
            f"{_sentence(one)} for {use}, built by {m.brand} in {material}.",
        )
    )
    second = rng.choice(
        (
            f"It features {f[0]}, {f[1]} and {f[2]}.",
            f"Details include {f[0]} and {f[1]}, plus {f[2]}.",
            f"Expect {f[0]}, {f[1]} and {f[2]}, here in {colour.lower()}.",
            f"{_sentence(f[0])} and {f[1]} set it apart.",
        )
    )
    parts = [first, second]
    if rng.random() < 0.7:
        parts.append(rng.choice(t.closers))
    return " ".join(parts)


def build_items() -> list[Item]:
    """Every catalog item in file order, with its hidden judgment attributes."""
    items: list[Item] = []
    for m in MODELS:
        t = TYPES[m.article_type]
        for colour in m.colours:
            item_id = f"{m.code}-{colour}"
            rng = random.Random(f"{SEED}:{item_id}")
            attrs: dict[str, str | int | float] = {"color": colour, "material": m.material}
            if m.gender:
                attrs["gender"] = m.gender
            if t.sizes:
                attrs["sizes"] = t.sizes
            attrs.update(m.extra)
            attrs["article_type"] = m.article_type
            # a few colours are on sale, as in any store
            price = m.price if rng.random() > 0.15 else math.floor(m.price * 0.8) - 0.01
            record: dict[str, object] = {
                "id": item_id,
                "title": f"{m.name} ({colour})",
                "description": _description(m, colour, rng),
                "brand": m.brand,
                "category": t.category,
            }
            if m.material in {
                "Organic Cotton",
                "Recycled Polyester",
                "Recycled Polyester Fleece",
                "Recycled Nylon",
                "Organic Denim",
                "Natural Rubber",
            }:
                record["categories"] = [t.category, "Collections > Eco Friendly"]
            record["price"] = float(round(price, 2))
            record["attributes"] = attrs
            record["image"] = f"images/{item_id}.png"
            motion = m.video.get(colour)
            if motion:
                record["video"] = f"videos/{item_id}.mp4"
            items.append(Item(item_id, m.article_type, colour, m.style, attrs, record, motion))
    for item_id, article_type, colour, style in PHOTO_ONLY:
        attrs = {"color": colour, "article_type": article_type}
        if article_type == "Mugs":
            attrs["material"] = "Ceramic"
        record = {"id": item_id, "image": f"images/{item_id}.png"}
        items.append(Item(item_id, article_type, colour, style, attrs, record, None, PHOTO_ONLY_BACKDROP))
    return items


def judge(items: list[Item]) -> list[tuple[str, str, int]]:
    """Graded judgments from the generated attributes: type + every constraint = 2, type only = 1,
    and items of a sibling type (same parent category) or the asked colour = 0 (judged irrelevant)."""
    rows: list[tuple[str, str, int]] = []
    for qid, _text, article_type, constraints in QUERIES:
        parent = TYPES[article_type].category.rsplit(" > ", 1)[0]
        for it in items:
            matches = all(str(it.attributes.get(k)) == v for k, v in constraints.items())
            if it.article_type == article_type:
                rows.append((qid, it.id, 2 if matches else 1))
            elif TYPES[it.article_type].category.startswith(parent + " > ") or (
                "color" in constraints and it.colour == constraints["color"]
            ):
                rows.append((qid, it.id, 0))
    return rows


BAD_ROWS = [
    '{"id": "OK-0001", "title": "Trailhead Zip Hoodie (Black)", "price": 59.0, '
    '"image": "images/HD01-Black.png"}',
    '{"title": "Row without an id", "price": 10.0}',
    '{"id": "BAD-0003", "title": "Truncated line", "price": 12.5',
    '{"id": "BAD-0004", "title": "Price that is not a number", "price": "abc"}',
    '{"id": "OK-0001", "title": "Duplicate of the first row", "price": 61.0}',
    '{"id": "BAD-0006", "title": "Image path escaping the catalog folder", "image": "../../etc/passwd"}',
    '{"id": "BAD-0007", "title": "Image file that does not exist", "image": "images/does-not-exist.png"}',
    '{"id": "BAD-0008", "price": 9.99}',
]


def _write(path: Path, data: bytes, written: set[Path]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_bytes() != data:
        path.write_bytes(data)
    written.add(path)


def main(out_dir: str | Path | None = None) -> Path:
    """Write the whole sample catalog to ``out_dir`` (default: examples/sample_catalog) and return it.

    Generated media no longer produced (e.g. a renamed item) is removed from images/ and videos/.
    """
    out = Path(out_dir) if out_dir is not None else DEFAULT_OUT
    out.mkdir(parents=True, exist_ok=True)
    items = build_items()
    written: set[Path] = set()
    lines = [json.dumps(it.record, ensure_ascii=False) for it in items]
    _write(out / "catalog.jsonl", ("\n".join(lines) + "\n").encode("utf-8"), written)
    for it in items:
        _write(
            out / "images" / f"{it.id}.png",
            png_bytes(render(it.article_type, it.colour, it.style, it.backdrop)),
            written,
        )
        if it.video_motion:
            data = video_bytes(it.article_type, it.colour, it.style, it.video_motion)
            _write(out / "videos" / f"{it.id}.mp4", data, written)
    _write(out / "bad_rows.jsonl", ("\n".join(BAD_ROWS) + "\n").encode("utf-8"), written)
    queries = "".join(f"{qid}\t{text}\n" for qid, text, _, _ in QUERIES)
    _write(out / "queries.tsv", queries.encode("utf-8"), written)
    qrels = "".join(f"{qid} 0 {doc} {grade}\n" for qid, doc, grade in judge(items))
    _write(out / "qrels.txt", qrels.encode("utf-8"), written)
    for sub in ("images", "videos"):
        for stale in sorted((out / sub).glob("*")) if (out / sub).is_dir() else []:
            if stale.is_file() and stale not in written:
                stale.unlink()
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: %(default)s)")
    print(f"wrote {main(parser.parse_args().out)}")
