"""The index directory end to end: build, search, live upserts/deletes, WAL replay, atomic
generations under a real kill -9, and upserts carried over a concurrent rebuild."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import draw, shared_data, write_small_catalog

from indexer.filters import Filters
from indexer.product import Product
from indexer.store import LiveIndex, build_index, current_generation
from reranker.pipeline import SearchPipeline, SearchRequest
from shopsearch.errors import CatalogError, IndexNotFoundError, InvalidQueryError, ItemNotFoundError
from shopsearch.settings import load_settings

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    folder = tmp_path_factory.mktemp("small")
    catalog = write_small_catalog(folder)
    index_dir = folder / "index"
    settings = load_settings(None, index_dir=index_dir)
    result = build_index([catalog], index_dir, settings, progress=False)
    return folder, catalog, index_dir, settings, result


def ids(resp) -> list[str]:
    return [r.id for r in resp.results]


def test_build_writes_manifest_and_counts(built):
    folder, catalog, index_dir, settings, result = built
    assert current_generation(index_dir) == result.generation
    manifest = json.loads((result.path / "manifest.json").read_text())
    assert manifest["format_version"] == 1
    assert manifest["models"]["text"]["dim"] == 384
    assert manifest["models"]["image"]["dim"] > 0
    assert manifest["counts"]["items"] == 8
    assert manifest["counts"]["text_vectors"] == 8  # the photo-only item is embedded by its category
    assert manifest["counts"]["image_vectors"] == 8
    assert (index_dir / "ingest_report.json").exists()


def test_text_search_filters_facets_pagination(built):
    _, _, index_dir, settings, _ = built
    pipe = SearchPipeline.open(index_dir, settings)
    resp = pipe.search(SearchRequest(text="black hoodie", k=3, explain=True))
    assert ids(resp)[0] == "h-black"
    assert set(resp.results[0].explain) >= {"bm25", "text", "fused"}
    assert resp.facets["category"]["Apparel > Tops > Hoodies"] >= 3

    f = Filters(category="Home > Kitchen")
    resp = pipe.search(SearchRequest(text="black hoodie", k=5, filters=f))
    assert resp.results, "a filter must not empty a page that has matches"
    assert all(r.product.category.startswith("Home > Kitchen") for r in resp.results)
    assert set(resp.facets["category"]) <= {"Home", "Home > Kitchen", "Home > Kitchen > Mugs"}

    full = ids(pipe.search(SearchRequest(text="hoodie lamp mug", k=6)))
    page1 = ids(pipe.search(SearchRequest(text="hoodie lamp mug", k=3)))
    page2 = ids(pipe.search(SearchRequest(text="hoodie lamp mug", k=3, offset=3)))
    assert page1 + page2 == full and len(set(full)) == len(full)

    browse = pipe.search(SearchRequest(filters=Filters(brands=("lumina home",)), k=10))
    assert sorted(ids(browse)) == ["l-blue", "l-red", "m-black", "m-green"]
    with pytest.raises(InvalidQueryError):
        pipe.search(SearchRequest(text="x", k=0))


def test_photo_query_returns_the_product_first(built):
    folder, _, index_dir, settings, _ = built
    pipe = SearchPipeline.open(index_dir, settings)
    photo = (folder / "images" / "l-blue.png").read_bytes()
    resp = pipe.search(SearchRequest(image=photo, k=3, explain=True))
    assert ids(resp)[0] == "l-blue"
    assert "image" in resp.results[0].explain
    # photo-only items are found by photo
    resp = pipe.search(SearchRequest(image=(folder / "images" / "photo-only.png").read_bytes(), k=1))
    assert ids(resp) == ["photo-only"]


def test_upsert_delete_visible_at_once_and_replayed_on_reopen(tmp_path, built):
    folder, catalog, _, settings, _ = built
    index_dir = tmp_path / "idx"
    settings = load_settings(None, index_dir=index_dir)
    build_index([catalog], index_dir, settings, progress=False)
    pipe = SearchPipeline.open(index_dir, settings)

    t0 = time.perf_counter()
    pipe.upsert(
        [
            Product(
                "kettle-1",
                "Gooseneck Electric Kettle",
                "Pour-over kettle, 1 litre.",
                brand="Lumina Home",
                category="Home > Kitchen > Kettles",
                price=49.0,
            )
        ]
    )
    assert ids(pipe.search(SearchRequest(text="gooseneck kettle", k=1))) == ["kettle-1"]
    assert time.perf_counter() - t0 < 5  # includes encoding; visibility itself is immediate

    pipe.upsert(
        [
            Product(
                "h-red",
                "Trail Zip Hoodie (Crimson)",
                brand="Northpeak",
                price=60.0,
                category="Apparel > Tops > Hoodies",
            )
        ]
    )
    assert pipe.get("h-red").title == "Trail Zip Hoodie (Crimson)"
    resp = pipe.search(SearchRequest(text="crimson", k=5))
    assert ids(resp)[0] == "h-red"
    assert pipe.delete(["m-green", "nope"]) == ["m-green"]
    assert "m-green" not in ids(pipe.search(SearchRequest(text="stoneware mug green", k=10)))
    with pytest.raises(ItemNotFoundError):
        pipe.get("m-green")
    pipe.close()

    again = SearchPipeline.open(index_dir, settings)  # WAL replay
    assert again.get("kettle-1").price == 49.0
    assert again.get("h-red").price == 60.0
    with pytest.raises(ItemNotFoundError):
        again.get("m-green")
    resp = again.search(SearchRequest(text="hoodie", k=10))
    assert ids(resp).count("h-red") == 1  # the replaced row is gone from every source


def test_upserts_during_a_rebuild_are_carried_over(tmp_path, built, monkeypatch):
    _, catalog, _, _, _ = built
    index_dir = tmp_path / "idx"
    settings = load_settings(None, index_dir=index_dir)
    build_index([catalog], index_dir, settings, progress=False)
    live = LiveIndex(index_dir, settings)

    import indexer.store as store

    real_read = store.iter_catalogs

    def read_then_upsert(*args, **kwargs):
        yield from real_read(*args, **kwargs)
        live.upsert([Product("late-1", "Late Arrival Lantern", category="Home > Lighting")])

    monkeypatch.setattr(store, "iter_catalogs", read_then_upsert)
    result = build_index([catalog], index_dir, settings, progress=False)
    fresh = LiveIndex(index_dir, settings)
    assert fresh.generation == result.generation
    assert fresh.get("late-1").title == "Late Arrival Lantern"


def test_catalog_without_valid_rows_never_replaces_the_live_index(tmp_path):
    # Only two generations are kept: two empty builds in a row used to delete the last good one.
    good = tmp_path / "good.jsonl"
    good.write_text('{"id": "a", "title": "Blue running shoe"}\n{"id": "b", "title": "Red wool hat"}\n')
    index_dir = tmp_path / "idx"
    settings = load_settings(None, index_dir=index_dir)
    first = build_index([good], index_dir, settings, progress=False).generation
    rows = [{"id": "x", "title": "t"}]
    bad = {
        "empty.jsonl": "",
        "header.csv": "id,title\n",
        "pretty.jsonl": json.dumps(rows[0], indent=2),
        "array.jsonl": json.dumps(rows),
        "unencodable.jsonl": '{"id": "p", "image": "broken.jpg"}\n',  # dropped at encode time
        "skipped.jsonl": '{"title": "no id"}\n{"id": "y"}\n',
    }
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg at all")
    for name, text in bad.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(CatalogError, match="no valid product rows") as err:
            build_index([tmp_path / name], index_dir, settings, progress=False)
        assert str(tmp_path / name) in err.value.message and "live index is unchanged" in err.value.message
        assert current_generation(index_dir) == first
    assert "2 rows read, 2 skipped" in err.value.message and "missing id" in err.value.message
    assert sorted(p.name for p in (index_dir / "generations").iterdir()) == [first]  # no .tmp left
    live = LiveIndex(index_dir, settings)
    assert sorted(live.table.id_to_row) == ["a", "b"]


def test_a_generation_that_never_went_live_is_not_kept_over_the_previous_one(tmp_path, monkeypatch):
    """A failed publish (an OpenSearch alias switch refused) left its complete generation behind,
    and the next build kept it as 'the previous generation' and deleted the one really live."""
    from indexer.lexical.tantivy_index import TantivyIndex
    from shopsearch.errors import ShopSearchError

    catalog = tmp_path / "c.jsonl"
    catalog.write_text('{"id": "a", "title": "Blue running shoe"}\n{"id": "b", "title": "Red wool hat"}\n')
    index_dir = tmp_path / "idx"
    settings = load_settings(None, index_dir=index_dir)
    first = build_index([catalog], index_dir, settings, progress=False).generation

    def refuse(self):
        raise ShopSearchError("alias switch refused")

    monkeypatch.setattr(TantivyIndex, "publish", refuse, raising=False)
    with pytest.raises(ShopSearchError, match="alias switch refused"):
        build_index([catalog], index_dir, settings, progress=False)
    assert current_generation(index_dir) == first
    assert sorted(p.name for p in (index_dir / "generations").iterdir()) == [first]
    monkeypatch.undo()
    second = build_index([catalog], index_dir, settings, progress=False).generation
    assert sorted(p.name for p in (index_dir / "generations").iterdir()) == [first, second]
    third = build_index([catalog], index_dir, settings, progress=False).generation
    assert sorted(p.name for p in (index_dir / "generations").iterdir()) == [second, third]


def test_media_under_a_folder_name_that_is_not_utf8(tmp_path):
    # Such a name reaches Python as lone surrogates, which no UTF-8 writer takes: the build used
    # to die writing items.jsonl (and the CLI writing ingest_report.json) after encoding.
    folder = Path(os.fsdecode(os.fsencode(tmp_path) + b"/caf\xe9"))
    try:
        folder.mkdir()
    except OSError:
        pytest.skip("this filesystem only takes UTF-8 file names")
    draw("mug", "red", folder / "a.png")
    catalog = folder / "c.jsonl"
    catalog.write_text('{"id": "1", "title": "Red mug", "image": "a.png"}\n')
    index_dir = tmp_path / "idx"
    settings = load_settings(None, index_dir=index_dir)
    result = build_index([catalog], index_dir, settings, progress=False)
    assert result.counts["image_vectors"] == 1
    live = LiveIndex(index_dir, settings)
    assert live.get("1").images == [str((folder / "a.png").resolve())]
    saved = json.loads((index_dir / "ingest_report.json").read_text(encoding="utf-8"))
    assert saved["files"] == [str(catalog)]


def test_queries_encoded_by_another_text_model_than_the_index_are_warned_about(built, caplog):
    from retriever.search import Retriever

    _folder, _catalog, index_dir, settings, _result = built
    live = LiveIndex(index_dir, settings)
    retriever = Retriever(live, settings)
    with caplog.at_level("WARNING", logger="retriever.search"):
        retriever.retrieve("hoodie")
        assert "built with text model" not in caplog.text  # the same model: nothing to say
        live.manifest = {**live.manifest, "models": {"text": {"name": "someone/other-384-model", "dim": 384}}}
        retriever.retrieve("hoodie")
        retriever.retrieve("red mug")
    warnings = [
        r for r in caplog.records if "built with text model someone/other-384-model" in r.getMessage()
    ]
    assert len(warnings) == 1  # once per pair of models, not once per query
    live.close()


def test_missing_index_is_a_clear_error(tmp_path):
    with pytest.raises(IndexNotFoundError, match="no index"):
        LiveIndex(tmp_path / "nothing", load_settings(None))
    (tmp_path / "empty").mkdir()
    with pytest.raises(IndexNotFoundError, match="CURRENT"):
        LiveIndex(tmp_path / "empty", load_settings(None))


def _homedepot_slice(folder: Path, n: int, offset: int = 0) -> Path:
    src = shared_data("homedepot") / "catalog.jsonl"
    out = folder / f"hd-{offset}-{n}.jsonl"
    with open(src, encoding="utf-8") as f, open(out, "w", encoding="utf-8") as g:
        for i, line in enumerate(f):
            if i >= offset + n:
                break
            if i >= offset:
                g.write(line)
    return out


def test_kill_9_during_indexing_leaves_previous_generation_complete(tmp_path):
    index_dir = tmp_path / "idx"
    small = _homedepot_slice(tmp_path, 300)
    big = _homedepot_slice(tmp_path, 3000)
    settings = load_settings(None, index_dir=index_dir)
    build_index([small], index_dir, settings, progress=False)
    first = current_generation(index_dir)

    killed_mid_write = False
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = [sys.executable, "-m", "api.cli", "index", str(big), "--index", str(index_dir), "--quiet"]
    for attempt in range(3):
        for stale in (index_dir / "generations").glob("*.tmp"):
            shutil.rmtree(stale)
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 240
        if attempt == 0:
            time.sleep(3)  # first: kill while it is still reading/encoding
        else:
            while time.time() < deadline and not list((index_dir / "generations").glob("*.tmp")):
                if proc.poll() is not None:
                    break
                time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        gen = current_generation(index_dir)
        live = LiveIndex(index_dir, settings)  # always loadable and complete
        if gen == first:
            assert len(live.table) == 300
            assert live.lexical.count() == 300
            killed_mid_write |= attempt > 0
        else:
            assert len(live.table) == 3000
        assert live.vectors["text"].ntotal == len(live.table)
        if killed_mid_write:
            break
    assert killed_mid_write, "the kill never landed between the start of writing and the switch"
    # the next build cleans the abandoned .tmp generation and succeeds
    build_index([small], index_dir, settings, progress=False)
    assert not list((index_dir / "generations").glob("*.tmp"))


def test_rebuild_of_unchanged_catalog_encodes_nothing(tmp_path, built):
    _, catalog, _, _, _ = built
    index_dir = tmp_path / "idx"
    settings = load_settings(None, index_dir=index_dir)
    first = build_index([catalog], index_dir, settings, progress=False)
    assert first.encoded["text"] == 8 and first.encoded["image"] == 8
    again = build_index([catalog], index_dir, settings, progress=False)
    assert again.encoded == {"text": 0, "image": 0, "video": 0}


def test_snapshot_links_the_live_generation_and_keeps_fused_only_when_asked(tmp_path):
    from indexer.store import snapshot_live_generation

    src = tmp_path / "index"
    gen = src / "generations" / "gen-000002"
    (gen / "fused").mkdir(parents=True)
    (gen / "vectors.bin").write_bytes(b"v" * 64)
    (gen / "fused" / "model.safetensors").write_bytes(b"m")
    (gen / "wal.jsonl").write_text('{"op": "upsert"}\n')
    (gen / "lexical").mkdir()
    (gen / "lexical" / ".tantivy-writer.lock").touch()
    (src / "generations" / "gen-000001").mkdir()  # an older generation: not copied
    (src / "CURRENT").write_text("gen-000002\n")
    (src / "embcache.sqlite").write_bytes(b"cache")

    plain, with_fused = tmp_path / "plain", tmp_path / "with-fused"
    snapshot_live_generation(src, plain)
    snapshot_live_generation(src, with_fused, fused=True)
    for dst in (plain, with_fused):
        copy = dst / "generations" / "gen-000002"
        assert (dst / "CURRENT").read_text().strip() == "gen-000002"
        assert sorted(p.name for p in (dst / "generations").iterdir()) == ["gen-000002"]
        assert (copy / "vectors.bin").read_bytes() == b"v" * 64
        # the WAL is appended to in place by the live index: a real copy, never a link
        assert (copy / "wal.jsonl").stat().st_ino != (gen / "wal.jsonl").stat().st_ino
        # a linked lock file is one lock: two snapshots (or one and the live index) could not
        # both open a writer (seen when the fold models of --fusion-folds trained side by side)
        lock, live = (g / "lexical" / ".tantivy-writer.lock" for g in (copy, gen))
        assert lock.exists() and lock.stat().st_ino != live.stat().st_ino
        assert (dst / "embcache.sqlite").read_bytes() == b"cache"
    assert not (plain / "generations" / "gen-000002" / "fused").exists()  # a fusion training replaces it
    assert (with_fused / "generations" / "gen-000002" / "fused" / "model.safetensors").read_bytes() == b"m"
