"""The bundled sample catalog: reproducible from its generator, complete and small."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType

import av
import numpy as np
import pytest
from PIL import Image

from indexer.product import Product

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "examples" / "sample_catalog"
GENERATOR = REPO / "examples" / "make_sample_catalog.py"
TEXT_FILES = ("catalog.jsonl", "bad_rows.jsonl", "queries.tsv", "qrels.txt")


@pytest.fixture(scope="module")
def gen() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_sample_catalog", GENERATOR)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve string annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def fresh(gen: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return gen.main(tmp_path_factory.mktemp("fresh"))


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return [json.loads(line) for line in (SAMPLE / "catalog.jsonl").read_text(encoding="utf-8").splitlines()]


def _files(root: Path) -> dict[str, Path]:
    return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}


def test_generator_is_deterministic(gen: ModuleType, fresh: Path, tmp_path: Path) -> None:
    again = _files(gen.main(tmp_path / "again"))
    first = _files(fresh)
    assert again.keys() == first.keys()
    for name, path in first.items():
        assert path.read_bytes() == again[name].read_bytes(), f"{name} differs between two runs"


def test_committed_files_match_a_fresh_generation(fresh: Path) -> None:
    committed = _files(SAMPLE)
    generated = _files(fresh)
    assert committed.keys() - {"README.md"} == generated.keys(), "regenerate: examples/make_sample_catalog.py"
    for name in TEXT_FILES:
        assert committed[name].read_bytes() == generated[name].read_bytes(), f"{name} is stale"
    # media: compare decoded content, so another Pillow/zlib or FFmpeg build does not fail the check
    for name, path in generated.items():
        if name.endswith(".png"):
            with Image.open(path) as a, Image.open(committed[name]) as b:
                assert np.array_equal(np.asarray(a.convert("RGB")), np.asarray(b.convert("RGB"))), name
        elif name.endswith(".mp4"):
            assert _frame_count(path) == _frame_count(committed[name]), name


def test_the_generator_removes_stale_media(gen: ModuleType, tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    stale = tmp_path / "images" / "GONE-1.png"
    stale.write_bytes(b"old")
    gen.main(tmp_path)
    assert not stale.exists()


def test_counts_and_fields(rows: list[dict]) -> None:
    assert 100 <= len(rows) <= 130
    ids = [r["id"] for r in rows]
    assert len(set(ids)) == len(ids)
    photo_only = [r for r in rows if not r.get("title") and not r.get("description")]
    assert 3 <= len(photo_only) <= 5
    assert all(set(r) == {"id", "image"} for r in photo_only)
    assert sum("video" in r for r in rows) == 2
    categories = Counter(r["category"] for r in rows if "category" in r)
    assert len(categories) >= 10 and min(categories.values()) >= 4
    assert len({r["brand"] for r in rows if "brand" in r}) >= 5
    texts = [r for r in rows if r.get("title")]
    assert len({r["description"] for r in texts}) >= 0.9 * len(texts), "descriptions should vary"
    for r in texts:
        assert isinstance(r["price"], float) and r["price"] > 0
        assert r["attributes"]["color"] in r["title"]
        assert 2 <= r["description"].count(". ") + 1 <= 4
    # several colour variants of one model, as in real stores
    models = Counter(r["id"].split("-")[0] for r in texts)
    assert max(models.values()) >= 3
    for r in rows:
        Product.from_dict(r)  # the shared record accepts every row


def test_every_image_is_a_small_224px_drawing(rows: list[dict]) -> None:
    for r in rows:
        path = (SAMPLE / r["image"]).resolve()
        assert path.parent == SAMPLE / "images", r["image"]
        assert path.stat().st_size < 4096, f"{path.name} is {path.stat().st_size} bytes"
        with Image.open(path) as img:
            img.load()
            assert img.size == (224, 224)
            rgb = np.asarray(img.convert("RGB")).astype(int)
        # the product is drawn, not a blank canvas: a good share of pixels differ from the backdrop
        corner = rgb[0, 0]
        assert (np.abs(rgb - corner).sum(axis=-1) > 20).mean() > 0.15, path.name


def test_drawings_are_filled_in_the_item_colour(gen: ModuleType, rows: list[dict]) -> None:
    for r in rows:
        if "attributes" not in r:
            continue
        target = np.array(gen.COLOURS[r["attributes"]["color"]])
        with Image.open(SAMPLE / r["image"]) as img:
            rgb = np.asarray(img.convert("RGB")).astype(int)
        share = (np.abs(rgb - target).sum(axis=-1) < 12).mean()
        assert share > 0.05, f"{r['id']}: only {share:.1%} of pixels in {r['attributes']['color']}"


def _frame_count(path: Path) -> int:
    with av.open(str(path)) as container:
        frames = list(container.decode(video=0))
    assert frames and frames[0].width == 96 and frames[0].height == 96
    return len(frames)


def test_videos_decode(rows: list[dict]) -> None:
    videos = [SAMPLE / r["video"] for r in rows if "video" in r]
    for path in videos:
        assert path.stat().st_size < 50_000
        assert _frame_count(path) >= 10


def test_queries_and_qrels_are_consistent(rows: list[dict]) -> None:
    ids = {r["id"] for r in rows}
    queries = dict(
        line.split("\t") for line in (SAMPLE / "queries.tsv").read_text(encoding="utf-8").splitlines()
    )
    assert 15 <= len(queries) <= 30
    best: Counter[str] = Counter()
    for line in (SAMPLE / "qrels.txt").read_text(encoding="utf-8").splitlines():
        qid, zero, doc, grade = line.split(" ")
        assert qid in queries and zero == "0" and doc in ids and grade in {"0", "1", "2"}
        best[qid] += grade == "2"
    assert set(best) == set(queries)
    assert all(best[q] >= 1 for q in queries), "every query needs a fully relevant item"
    by_id = {r["id"]: r for r in rows}
    # spot-check the derivation: a black hoodie is grade 2 for "black hoodie", a gray one grade 1
    q = next(k for k, v in queries.items() if v == "black hoodie")
    grades = {
        line.split(" ")[2]: int(line.split(" ")[3])
        for line in (SAMPLE / "qrels.txt").read_text(encoding="utf-8").splitlines()
        if line.startswith(q + " ")
    }
    for doc, grade in grades.items():
        attrs = by_id[doc].get("attributes")
        if attrs and attrs["article_type"] == "Hoodies":
            assert grade == (2 if attrs["color"] == "Black" else 1), doc
    assert grades.get("PX-0003") == 2, "the photo-only black hoodie is judged too"


def test_bad_rows_show_each_problem() -> None:
    lines = (SAMPLE / "bad_rows.jsonl").read_text(encoding="utf-8").splitlines()
    parsed: list[dict | None] = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError:
            parsed.append(None)
    assert parsed.count(None) == 1
    good = [p for p in parsed if p is not None]
    assert any("id" not in p for p in good)
    assert any(p.get("price") == "abc" for p in good)
    assert max(Counter(p["id"] for p in good if "id" in p).values()) == 2
    images = [p["image"] for p in good if "image" in p]
    assert "../../etc/passwd" in images
    assert any(not (SAMPLE / i).exists() and ".." not in i for i in images)
    assert (SAMPLE / "images/HD01-Black.png").exists()  # the one good row's image is real
    assert any(set(p) <= {"id", "price"} and "id" in p for p in good), "an item with nothing to index"


def test_folder_is_small() -> None:
    total = sum(p.stat().st_size for p in SAMPLE.rglob("*") if p.is_file())
    assert total < 1.5 * 1024 * 1024, f"sample catalog is {total} bytes"


def test_the_catalog_loader_accepts_every_sample_row() -> None:
    catalog = pytest.importorskip("indexer.catalog", reason="catalog loader not written yet")
    from indexer.report import IngestReport

    report = IngestReport()
    products = list(catalog.read_catalog(SAMPLE / "catalog.jsonl", report=report))
    assert report.issues == []
    assert len(products) == len((SAMPLE / "catalog.jsonl").read_text(encoding="utf-8").splitlines())
    assert all(len(p.images) == 1 and Path(p.images[0]).is_file() for p in products)
    assert sum(p.video is not None for p in products) == 2


def test_the_catalog_loader_reports_every_bad_row() -> None:
    catalog = pytest.importorskip("indexer.catalog", reason="catalog loader not written yet")
    from indexer.report import IngestReport

    report = IngestReport()
    products = list(catalog.read_catalog(SAMPLE / "bad_rows.jsonl", report=report))
    rows = {issue.row for issue in report.issues}
    assert {2, 3, 4, 6, 7, 8} <= rows, [str(i) for i in report.issues]
    assert any("duplicate" in issue.reason for issue in report.issues)
    assert not any(p.images for p in products), "no bad image path may get through"
    assert {p.id for p in products} <= {"OK-0001", "BAD-0004", "BAD-0006", "BAD-0007"}
