"""Integration on real catalogs nobody here wrote: all of Luma (461 items with photos) and a
deterministic 2,000-item slice of Home Depot."""

from __future__ import annotations

import math

import pytest
from conftest import shared_data

from indexer.filters import Filters
from indexer.store import build_index
from reranker.pipeline import SearchPipeline, SearchRequest
from shopsearch.settings import load_settings

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def luma(tmp_path_factory):
    catalog = shared_data("luma") / "catalog.jsonl"
    index_dir = tmp_path_factory.mktemp("luma") / "index"
    settings = load_settings(None, index_dir=index_dir)
    result = build_index([catalog], index_dir, settings, progress=False)
    return SearchPipeline.open(index_dir, settings), result


def test_luma_indexes_every_item_with_its_photo(luma):
    pipe, result = luma
    assert result.counts["items"] == 461
    assert result.counts["image_vectors"] >= 450
    assert not result.report.skipped


def test_luma_black_hoodie_returns_black_hoodies_in_top_5(luma):
    pipe, _ = luma
    resp = pipe.search(SearchRequest(text="black hoodie", k=5))
    assert len(resp.results) == 5
    for r in resp.results:
        p = r.product
        text = f"{p.title} {p.category}".lower()
        assert "hoodie" in text or "sweatshirt" in text, p.title
        assert str(p.attributes.get("color", "")).lower() == "black" or "black" in p.title.lower(), p.title


def test_luma_product_photo_finds_that_product_first(luma):
    pipe, _ = luma
    folder = shared_data("luma")
    checked = 0
    for pid in ("MH01-Black", "WS03-Blue", "24-MB01"):
        try:
            product = pipe.get(pid)
        except Exception:
            continue
        if not product.images:
            continue
        photo = open(product.images[0], "rb").read()
        resp = pipe.search(SearchRequest(image=photo, k=3))
        assert resp.results[0].id == pid
        checked += 1
    if checked == 0:  # ids changed: fall back to the first items that have photos
        items = [p for p in (pipe.index.table.rows) if p is not None and p.images][:3]
        for p in items:
            resp = pipe.search(SearchRequest(image=open(p.images[0], "rb").read(), k=3))
            assert resp.results[0].id == p.id
            checked += 1
    assert checked >= 3, folder


def test_luma_filters_facets_and_pagination(luma):
    pipe, _ = luma
    resp = pipe.search(SearchRequest(text="jacket", k=10, filters=Filters(category="Women", price_max=60)))
    assert resp.results
    for r in resp.results:
        assert any(c.startswith("Women") for c in r.product.all_categories())
        assert r.product.price is not None and r.product.price <= 60
    assert resp.facets["category"].get("Women", 0) == resp.total
    seen: list[str] = []
    for offset in range(0, 40, 10):
        page = pipe.search(SearchRequest(text="yoga", k=10, offset=offset))
        seen += [r.id for r in page.results]
    assert len(seen) == len(set(seen)) == 40


def _ndcg10(ranked: list[str], judged: dict[str, int]) -> float:
    dcg = sum(judged.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranked[:10]))
    ideal = sorted(judged.values(), reverse=True)[:10]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg else 0.0


def test_homedepot_slice_relevance(tmp_path):
    folder = shared_data("homedepot")
    catalog = tmp_path / "hd2000.jsonl"
    with open(folder / "catalog.jsonl", encoding="utf-8") as f:
        lines = [next(f) for _ in range(2000)]
    catalog.write_text("".join(lines), encoding="utf-8")
    index_dir = tmp_path / "index"
    settings = load_settings(None, index_dir=index_dir)
    result = build_index([catalog], index_dir, settings, progress=False)
    assert result.counts["items"] == 2000
    pipe = SearchPipeline.open(index_dir, settings)
    bm25 = pipe.retriever.retrieve("angle bracket", sources={"bm25"}).candidates
    assert "100001" in [c.id for c in bm25[:10]]
    # hybrid ranks a judged-relevant angle (grade 6 of 6) on the first two pages next to
    # unjudged angle brackets
    assert "100001" in [r.id for r in pipe.search(SearchRequest(text="angle bracket", k=20)).results]

    ids = {line.split('"id": "')[1].split('"')[0] for line in lines}
    queries = dict(
        line.rstrip("\n").split("\t", 1) for line in open(folder / "queries.tsv", encoding="utf-8")
    )
    qrels: dict[str, dict[str, int]] = {}
    for line in open(folder / "qrels.txt", encoding="utf-8"):
        qid, _, doc, grade = line.split()
        qrels.setdefault(qid, {})[doc] = int(grade)
    # queries whose judged products all lie inside the slice, so the metric is meaningful
    usable = [q for q, j in qrels.items() if set(j) <= ids and any(g > 0 for g in j.values())][:150]
    assert len(usable) >= 30
    scores = {"bm25": [], "hybrid": []}
    for qid in usable:
        for run, sources in (("bm25", {"bm25"}), ("hybrid", None)):
            got = pipe.retriever.retrieve(queries[qid], sources=sources).candidates
            ranked = [c.id for c in got if c.id in qrels[qid]]  # condensed: unjudged removed
            scores[run].append(_ndcg10(ranked, qrels[qid]))
    mean = {k: sum(v) / len(v) for k, v in scores.items()}
    # real judgments: hybrid must be good and must not lose to BM25 alone
    assert mean["hybrid"] >= 0.6, mean
    assert mean["hybrid"] >= mean["bm25"] - 0.01, mean
