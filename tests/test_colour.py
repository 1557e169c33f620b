"""The photo colour histogram (indexer.encoders.colour): colours separate, the white studio
background and the product's position do not matter, files and PIL images agree, bad files are
absent rather than fatal, and the embedding cache spares recomputing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from indexer.embcache import EmbeddingCache
from indexer.encoders import colour as colour_mod
from indexer.encoders.colour import COLOUR_DIM, colour_histogram, colour_histograms
from shopsearch.errors import MediaError

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fashion"


def _photo(rgb: tuple[int, int, int], *, box=(20, 30, 70, 90), size=(96, 120), shape="rect") -> Image.Image:
    """A product of one colour (with a darker shade, as folds give) on a white studio background."""
    img = Image.new("RGB", size, (250, 250, 250))
    d = ImageDraw.Draw(img)
    (d.rectangle if shape == "rect" else d.ellipse)(box, fill=rgb)
    x0, y0, x1, y1 = box
    d.rectangle((x0 + 5, y0 + 5, x0 + 12, y1 - 5), fill=tuple(int(c * 0.7) for c in rgb))
    return img


# OTHER_RED's hue is just "below" 0, where the hue circle closes (PIL hue 252 vs 0)
RED, OTHER_RED, BLUE, GREEN = (200, 30, 30), (215, 25, 40), (30, 60, 200), (40, 150, 60)


def test_histogram_is_unit_norm_and_separates_colours():
    red, blue, green = (colour_histogram(_photo(c)) for c in (RED, BLUE, GREEN))
    for h in (red, blue, green):
        assert h.shape == (COLOUR_DIM,) and h.dtype == np.float32
        assert np.linalg.norm(h) == pytest.approx(1.0, abs=1e-5)
        assert (h >= 0).all()
    # another red product: other shape, size and place, a bluish red -> still close to red
    other_red = colour_histogram(_photo(OTHER_RED, box=(40, 10, 90, 60), size=(128, 128), shape="ellipse"))
    assert red @ other_red > 0.6
    assert red @ other_red > 2 * max(red @ blue, red @ green, other_red @ blue)
    assert red @ blue < 0.2 and blue @ green < 0.2


def test_white_background_is_ignored_but_a_white_product_is_not():
    tight = colour_histogram(_photo(BLUE, size=(90, 100)))
    roomy = colour_histogram(_photo(BLUE, size=(300, 260)))  # the same product, much more background
    assert tight @ roomy > 0.95  # the background share does not change the histogram
    white = colour_histogram(Image.new("RGB", (50, 50), (252, 252, 252)))
    assert np.linalg.norm(white) == pytest.approx(1.0, abs=1e-5)  # all background: histogram it all
    assert white @ colour_histogram(_photo(BLUE)) < 0.1


def test_paths_pil_images_and_transparency_agree(tmp_path):
    img = _photo(GREEN)
    img.save(tmp_path / "g.png")
    assert np.allclose(colour_histogram(tmp_path / "g.png"), colour_histogram(img))
    rgba = Image.new("RGBA", (96, 120), (0, 0, 0, 0))  # transparent background, as on product pages
    rgba.paste(img.crop((20, 30, 71, 91)), (20, 30))
    assert colour_histogram(rgba) @ colour_histogram(img) > 0.99
    (tmp_path / "bad.jpg").write_bytes(b"not an image at all")
    with pytest.raises(MediaError, match="bad.jpg"):
        colour_histogram(tmp_path / "bad.jpg")


def test_batch_marks_missing_and_broken_files_absent_and_uses_the_cache(tmp_path, monkeypatch):
    _photo(RED).save(tmp_path / "r.png")
    _photo(BLUE).save(tmp_path / "b.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG broken")
    paths = [tmp_path / "r.png", None, tmp_path / "missing.png", tmp_path / "bad.png", tmp_path / "b.png"]
    cache = EmbeddingCache(tmp_path / "cache.sqlite")
    try:
        hists, present = colour_histograms(paths, cache)
        assert present.tolist() == [True, False, False, False, True]
        assert not hists[~present].any()
        assert np.allclose(hists[0], colour_histogram(tmp_path / "r.png"))

        def fail(*_a, **_k):
            raise AssertionError("recomputed a cached histogram")

        monkeypatch.setattr(colour_mod, "colour_histogram", fail)
        again, present2 = colour_histograms(paths, cache)  # every readable file is cached now
        assert np.array_equal(again, hists) and np.array_equal(present2, present)
    finally:
        cache.close()


@pytest.mark.slow
def test_fashion_photos_of_one_colour_are_closer_than_of_others():
    """On the real catalog (a sample): the histogram's nearest photo has the query's colour far
    more often than chance."""
    import json

    if not (DATA / "catalog.jsonl").exists():
        pytest.skip(f"Fashion data not found at {DATA}")
    rows = [json.loads(line) for line in (DATA / "catalog.jsonl").open(encoding="utf-8")][:600]
    hists, present = colour_histograms([DATA / r["image"] for r in rows])
    assert present.all()
    colours = np.asarray([r["attributes"]["colour"] for r in rows])
    sims = hists @ hists.T
    np.fill_diagonal(sims, -1)
    nearest_same = np.mean(colours[sims.argmax(axis=1)] == colours)
    chance = sum((colours == c).mean() ** 2 for c in set(colours))
    assert nearest_same > 0.4 and nearest_same > 2.5 * chance, (nearest_same, chance)
