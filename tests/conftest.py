"""Shared fixtures: a small catalog with drawn photos, and paths to the shared real data."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_data(name: str) -> Path:
    path = DATA / name
    if not path.exists():
        pytest.skip(f"shared data set {path} is not present")
    return path


COLORS = {"black": (20, 20, 20), "red": (200, 30, 30), "blue": (30, 60, 200), "green": (30, 160, 60)}


def draw(kind: str, color: str, path: Path) -> None:
    img = Image.new("RGB", (96, 96), (245, 245, 240))
    d = ImageDraw.Draw(img)
    c = COLORS[color]
    if kind == "hoodie":
        d.polygon([(20, 30), (48, 15), (76, 30), (70, 85), (26, 85)], fill=c)
        d.ellipse((38, 8, 58, 28), fill=c)
    elif kind == "mug":
        d.rectangle((25, 30, 65, 80), fill=c)
        d.ellipse((60, 40, 80, 65), outline=c, width=6)
    else:  # lamp
        d.polygon([(30, 20), (66, 20), (76, 50), (20, 50)], fill=c)
        d.rectangle((45, 50, 51, 85), fill=c)
    img.save(path)


SMALL = [
    (
        "h-black",
        "Trail Zip Hoodie (Black)",
        "Warm fleece hoodie with a zip.",
        "Northpeak",
        "Apparel > Tops > Hoodies",
        55.0,
        "hoodie",
        "black",
    ),
    (
        "h-red",
        "Trail Zip Hoodie (Red)",
        "Warm fleece hoodie with a zip.",
        "Northpeak",
        "Apparel > Tops > Hoodies",
        55.0,
        "hoodie",
        "red",
    ),
    (
        "h-blue",
        "City Pullover Hoodie (Blue)",
        "Soft cotton pullover with kangaroo pocket.",
        "Urbanloom",
        "Apparel > Tops > Hoodies",
        42.0,
        "hoodie",
        "blue",
    ),
    (
        "m-black",
        "Stoneware Coffee Mug (Black)",
        "A 350 ml ceramic mug for coffee or tea.",
        "Lumina Home",
        "Home > Kitchen > Mugs",
        12.5,
        "mug",
        "black",
    ),
    (
        "m-green",
        "Stoneware Coffee Mug (Green)",
        "A 350 ml ceramic mug for coffee or tea.",
        "Lumina Home",
        "Home > Kitchen > Mugs",
        12.5,
        "mug",
        "green",
    ),
    (
        "l-red",
        "Desk Lamp (Red)",
        "Adjustable LED desk lamp with warm light.",
        "Lumina Home",
        "Home > Lighting > Lamps",
        39.0,
        "lamp",
        "red",
    ),
    (
        "l-blue",
        "Desk Lamp (Blue)",
        "Adjustable LED desk lamp with warm light.",
        "Lumina Home",
        "Home > Lighting > Lamps",
        39.0,
        "lamp",
        "blue",
    ),
]


def write_small_catalog(folder: Path) -> Path:
    """Seven products with drawn photos, plus one photo-only item."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for pid, title, desc, brand, cat, price, kind, color in SMALL:
        draw(kind, color, folder / "images" / f"{pid}.png")
        rows.append(
            {
                "id": pid,
                "title": title,
                "description": desc,
                "brand": brand,
                "category": cat,
                "price": price,
                "attributes": {"color": color.title()},
                "image": f"images/{pid}.png",
            }
        )
    draw("mug", "red", folder / "images" / "photo-only.png")
    rows.append({"id": "photo-only", "image": "images/photo-only.png", "category": "Home > Kitchen > Mugs"})
    path = folder / "catalog.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
