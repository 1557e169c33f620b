"""Item vectors in OpenSearch k-NN (``vector_backend = "opensearch"``) through the whole engine.

osmem has no ``knn`` query, so by default these tests run against :class:`osmem.KnnShim`, a loopback
proxy in front of osmem that answers k-NN queries itself by exact inner product (a test stand-in for
the plugin, not HNSW). With ``OPENSEARCH_URL`` set they run against that cluster and its k-NN
plugin instead, where HNSW is approximate: comparisons with FAISS then allow for it.
"""

from __future__ import annotations

import base64
import json
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from osmem import Cluster, FaultProxy, KnnShim, cluster_url, free_port, knn_cluster_url, start_osmem
from test_opensearch import SAMPLE, auth_from_env, config_for, text_only_sample

from indexer.filters import Filters
from indexer.lexical.opensearch_index import ClusterUnavailableError, Connection
from indexer.product import Product
from indexer.vector import opensearch_knn, vector_backend_of
from indexer.vector.opensearch_knn import KNN_DESCRIPTOR, OpenSearchKnnIndex
from shopsearch.errors import ConfigError
from shopsearch.settings import Settings, load_settings

QUERIES = ["black hoodie", "running shoes", "ceramic mug", "table lamp", "laptop backpack", "rain boots"]


# ====================================================================== fixtures
@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with cluster_url() as c:
        yield c


@pytest.fixture(scope="module")
def knn(cluster: Cluster) -> Iterator[tuple[str, KnnShim | None]]:
    """(URL answering k-NN queries, the shim or None on a real cluster)."""
    with knn_cluster_url(cluster) as got:
        yield got


@pytest.fixture(scope="module")
def prefixes(cluster: Cluster) -> Iterator[list[str]]:
    """Prefixes handed out by :func:`new_prefix`; every index under them is deleted afterwards."""
    made: list[str] = []
    yield made
    conn = Connection(config_for(cluster.url, "cleanup"))
    try:
        for name in made:  # by name: a cluster may refuse wildcard deletes
            for index in sorted(
                conn.client.indices.get(index=f"{name}*", params={"expand_wildcards": "all"})
            ):
                conn.client.indices.delete(index=index, ignore_unavailable=True)
    except Exception:  # noqa: BLE001 - cleanup must not hide the test's own result
        pass
    finally:
        conn.close()


def new_prefix(made: list[str]) -> str:
    name = f"k{uuid.uuid4().hex[:12]}"
    made.append(name)
    return name


def engine_settings(url: str, prefix: str, index_dir: Path, **overrides: object) -> Settings:
    base: dict[str, object] = {
        "index_dir": index_dir,
        "lexical_backend": "opensearch",
        "vector_backend": "opensearch",
        "opensearch_urls": [url],
        "opensearch_index_prefix": prefix,
        "opensearch_replicas": 0,
        "opensearch_backoff_s": 0.02,
        **{f"opensearch_{k}": v for k, v in auth_from_env().items()},
    }
    base.update(overrides)
    return load_settings(None, **base)


def indexes(url: str, prefix: str) -> list[str]:
    conn = Connection(config_for(url, prefix))
    try:
        return sorted(conn.client.indices.get(index=f"{prefix}*", params={"expand_wildcards": "all"}))
    finally:
        conn.close()


def unit_rows(n: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def encoders():
    import torch

    from indexer.store import Encoders

    torch.set_num_threads(1)
    return Encoders(load_settings(None))


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not SAMPLE.is_file():
        pytest.skip(f"sample catalog not found at {SAMPLE}")
    return text_only_sample(tmp_path_factory.mktemp("knn-catalog"))


def tiny_catalog(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = [
        {"id": "t1", "title": "Trail Zip Hoodie", "brand": "Northpeak", "category": "Apparel > Tops"},
        {"id": "t2", "title": "Stoneware Coffee Mug", "brand": "Lumina", "category": "Home > Kitchen"},
        {"id": "t3", "title": "Brass Table Lamp", "brand": "Lumina", "category": "Home > Lighting"},
    ]
    path = folder / "tiny.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# ====================================================================== the index class on the shim
def test_knn_index_answers_like_exact_search(
    tmp_path: Path, knn: tuple[str, KnnShim | None], prefixes: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Search with and without masks (a terms filter for small allowed sets, widened post-filtering
    for large ones), overwriting a label, and the raw vectors saved with the descriptor."""
    url, shim = knn
    prefix = new_prefix(prefixes)
    config = config_for(url, prefix)
    n, dim, k = 300, 16, 10
    vectors, queries = unit_rows(n, dim, seed=5), unit_rows(8, dim, seed=6)
    exact = queries @ vectors.T
    path = tmp_path / "index" / "generations" / "gen-000004.tmp" / "text"
    index = opensearch_knn.create_knn_index(path, config, dim)
    try:
        assert index.name == f"{prefix}-gen-000004-text"
        assert json.loads((path / KNN_DESCRIPTOR).read_text())["index"] == index.name  # written at once
        index.add(vectors[:200], np.arange(200))
        index.add(vectors[200:], np.arange(200, n))
        assert index.ntotal == n  # refresh-off build: refreshed before the first read

        def check(allowed: np.ndarray | None) -> None:
            scores, labels = index.search(queries, k, allowed)
            masked = exact if allowed is None else np.where(allowed, exact, -np.inf)
            truth = np.argsort(-masked, axis=1, kind="stable")[:, :k]
            if allowed is not None:
                assert set(labels[labels >= 0].tolist()) <= set(np.flatnonzero(allowed).tolist())
            recall = np.mean([len(set(labels[i]) & set(truth[i])) / k for i in range(len(queries))])
            assert recall == 1.0 if shim is not None else recall >= 0.9
            got = np.take_along_axis(masked, labels, axis=1)
            assert np.allclose(scores, got, atol=1e-4)  # inner products again, not OpenSearch scores

        check(None)
        few = np.zeros(n, dtype=bool)
        few[::13] = True
        check(few)  # sent as a terms filter
        monkeypatch.setattr(opensearch_knn, "FILTER_MAX_LABELS", 5)
        many = np.ones(n, dtype=bool)
        many[::3] = False
        check(many)  # too many labels for a filter: post-filtered, widened until k are found
        monkeypatch.undo()
        _, labels = index.search(queries[:1], k, np.zeros(n, dtype=bool))
        assert (labels == -1).all()

        # writing a label again replaces its vector (the _id is the label): no duplicate document
        index.add(-vectors[:1], np.asarray([0]))
        assert index.ntotal == n
        assert np.allclose(index.vectors_for(np.asarray([0, 1])), [-vectors[0], vectors[1]])
        index.publish()
        index.save(path)
    finally:
        index.close()
    assert vector_backend_of(path) == "opensearch" and not (path / "index.faiss").exists()
    reopened = OpenSearchKnnIndex.load(path, config)
    try:
        assert reopened.ntotal == n
        assert reopened.contains(np.asarray([0, n - 1, n])).tolist() == [True, True, False]
        assert np.allclose(reopened.vectors_for(np.asarray([0, 7])), [-vectors[0], vectors[7]])
        _, labels = reopened.search(-vectors[:1], 1)
        assert labels[0, 0] == 0
    finally:
        reopened.close()
    if shim is not None:
        assert shim.knn_answered > 0 and len(shim.stored(f"{prefix}-gen-000004-text")) == n


# ====================================================================== the engine end to end
def vector_only(settings: Settings) -> Settings:
    return settings.model_copy(update={"source_weights": {"bm25": 0.0, "text": 1.0, "image": 0.0}})


@pytest.mark.slow
def test_engine_on_knn_vectors_matches_faiss(
    tmp_path: Path,
    knn: tuple[str, KnnShim | None],
    prefixes: list[str],
    encoders,
    catalog: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from indexer.store import LiveIndex, build_index, current_generation
    from indexer.vector.faiss_index import FaissIndexBase
    from reranker.base import PassThroughReranker
    from reranker.pipeline import SearchPipeline, SearchRequest
    from retriever.search import Retriever

    url, shim = knn
    exact = shim is not None  # the shim searches exactly; a real cluster's HNSW may differ slightly
    dir_f, dir_k = tmp_path / "faiss", tmp_path / "knn"
    prefix_f, prefix_k = new_prefix(prefixes), new_prefix(prefixes)
    set_f = engine_settings(url, prefix_f, dir_f, vector_backend="faiss")
    set_k = engine_settings(url, prefix_k, dir_k)
    built_f = build_index([catalog], dir_f, set_f, progress=False, encoders=encoders)
    built_k = build_index([catalog], dir_k, set_k, progress=False, encoders=encoders)
    assert built_k.counts == built_f.counts and built_k.counts["text_vectors"] == 103

    manifest = json.loads((built_k.path / "manifest.json").read_text())
    knn_name = f"{prefix_k}-{built_k.generation}-text"
    assert manifest["vector_backend"] == "opensearch"
    assert manifest["vector_indexes"]["text"]["backend"] == "opensearch"
    assert manifest["vector_indexes"]["text"]["index"] == knn_name
    assert vector_backend_of(built_k.path / "text") == "opensearch"
    assert not (built_k.path / "text" / "index.faiss").exists()
    assert indexes(url, prefix_k) == sorted([f"{prefix_k}-{built_k.generation}", knn_name])
    conn = Connection(config_for(url, prefix_k))
    try:
        live_settings = conn.client.indices.get_settings(index=knn_name)[knn_name]["settings"]["index"]
        assert live_settings.get("refresh_interval", "1s") != "-1"  # published with the generation
    finally:
        conn.close()

    faiss_live = LiveIndex(dir_f, set_f, encoders=encoders)
    knn_live = LiveIndex(dir_k, set_k, encoders=encoders)
    pipes = {
        name: (
            SearchPipeline(live, Retriever(live, s), PassThroughReranker()),
            SearchPipeline(live, Retriever(live, vector_only(s)), PassThroughReranker()),
        )
        for name, live, s in (("faiss", faiss_live, set_f), ("knn", knn_live, set_k))
    }
    try:
        assert isinstance(faiss_live.vectors["text"], FaissIndexBase)
        assert isinstance(knn_live.vectors["text"], OpenSearchKnnIndex)
        assert knn_live.vectors["text"].name == knn_name

        # the vector source alone: the same rows in the same order, the same inner products
        for text in QUERIES:
            q = encoders.text.encode_query(text)
            s_f, l_f = faiss_live.vectors["text"].search(q, 10)
            s_k, l_k = knn_live.vectors["text"].search(q, 10)
            assert np.allclose(s_f, s_k, atol=1e-4), text
            if exact:  # equal, except where two items have the same score (either order is right)
                untied = np.asarray([np.isclose(s_f[0], x, atol=1e-6).sum() == 1 for x in s_f[0]])
                assert (l_f[0] == l_k[0])[untied].all(), text
            else:
                assert len(set(l_f[0]) & set(l_k[0])) >= 9, text

        def ids(kind: str, text: str, k: int = 5, filters: Filters | None = None, vectors: bool = False):
            pipe = pipes[kind][1 if vectors else 0]
            return [r.id for r in pipe.search(SearchRequest(text=text, k=k, filters=filters)).results]

        for text in QUERIES:  # hybrid (BM25 + vectors) and the vector source alone
            assert ids("knn", text) == ids("faiss", text), text
            if exact:
                assert ids("knn", text, 10, vectors=True) == ids("faiss", text, 10, vectors=True), text

        # filters reach the k-NN query (a terms filter), and then post-filtering for large sets
        apparel, cheap = Filters(category="Apparel"), Filters(price_max=40.0)
        for filters, ok in (
            (apparel, lambda p: p.category.startswith("Apparel")),
            (cheap, lambda p: p.price <= 40),
        ):
            for text in ("warm hoodie", "coffee mug", "leather boots"):
                got = ids("knn", text, 10, filters, vectors=True)
                assert got and all(ok(knn_live.get(i)) for i in got), (text, got)
                assert ids("knn", text, 5, filters) == ids("faiss", text, 5, filters)
                if exact:
                    assert got == ids("faiss", text, 10, filters, vectors=True)
                    monkeypatch.setattr(opensearch_knn, "FILTER_MAX_LABELS", 3)
                    assert ids("knn", text, 10, filters, vectors=True) == got
                    monkeypatch.undo()

        # live writes: an upsert is found by the vector source, a replaced item keeps one row, a
        # delete hides it (the k-NN document stays, masked like a FAISS row)
        kettle = Product(
            id="NEW-1",
            title="Zorbulating Copper Kettle",
            description="A whistling stovetop kettle made of copper.",
            brand="Acme",
            category="Home > Kitchen",
        )
        parka = Product(id="HD01-Black", title="Midnight Down Parka", brand="Northpeak", category="Apparel")
        for kind in ("knn", "faiss"):
            pipes[kind][0].upsert([kettle, parka])
        assert ids("knn", "whistling copper stovetop kettle", 3, vectors=True)[0] == "NEW-1"
        for text in ("whistling copper stovetop kettle", "down parka for winter", "black hoodie"):
            assert ids("knn", text, 10, vectors=True) == ids("faiss", text, 10, vectors=True) or not exact
            assert ids("knn", text) == ids("faiss", text)
        got = ids("knn", "midnight down parka", 20, vectors=True)
        assert got[0] == "HD01-Black" and got.count("HD01-Black") == 1
        rows = [knn_live.table.id_to_row[i] for i in ("NEW-1", "HD01-Black")]
        text_index = knn_live.vectors["text"]
        assert text_index.ntotal == 105 and text_index.contains(np.asarray(rows)).all()
        assert np.allclose(
            text_index.vectors_for(np.asarray(rows)), faiss_live.vectors["text"].vectors_for(rows)
        )
        assert pipes["knn"][0].delete(["NEW-1"]) == ["NEW-1"]
        assert "NEW-1" not in ids("knn", "whistling copper stovetop kettle", 10, vectors=True)
        assert text_index.ntotal == 105

        # a restart replays the WAL into the same k-NN index: nothing duplicated, nothing revived
        restarted = LiveIndex(dir_k, set_k, encoders=encoders)
        try:
            again = restarted.vectors["text"]
            assert again.name == knn_name and again.ntotal == 105
            if shim is not None:
                assert len(shim.stored(knn_name)) == 105
            assert np.allclose(again.vectors_for(np.asarray(rows)), text_index.vectors_for(np.asarray(rows)))
            pipe = SearchPipeline(restarted, Retriever(restarted, vector_only(set_k)), PassThroughReranker())
            found = [
                r.id
                for r in pipe.search(SearchRequest(text="whistling copper stovetop kettle", k=10)).results
            ]
            assert "NEW-1" not in found
            assert [r.id for r in pipe.search(SearchRequest(text="midnight down parka", k=1)).results] == [
                "HD01-Black"
            ]
        finally:
            restarted.close()

        # an index built with FAISS keeps FAISS when vector_backend='opensearch' is set
        switched = engine_settings(url, prefix_f, dir_f)
        old = LiveIndex(dir_f, switched, encoders=encoders)
        try:
            assert isinstance(old.vectors["text"], FaissIndexBase)
            old.upsert([Product(id="NEW-2", title="Enamel Camping Mug", category="Home > Kitchen")])
            assert isinstance(old.vectors["text"], FaissIndexBase)
            assert indexes(url, prefix_f) == [f"{prefix_f}-{built_f.generation}"]  # no k-NN index appeared
        finally:
            old.close()

        # rebuilds switch generations; the k-NN index of the generation before the previous one goes
        second = build_index([catalog], dir_k, set_k, progress=False, encoders=encoders)
        assert knn_live.maybe_reload(min_interval=0) and knn_live.generation == second.generation
        assert knn_live.vectors["text"].name == f"{prefix_k}-{second.generation}-text"
        assert "NEW-1" not in ids("knn", "whistling copper stovetop kettle", 10, vectors=True)
        assert knn_name in indexes(url, prefix_k)  # kept for servers still on that generation
        third = build_index([catalog], dir_k, set_k, progress=False, encoders=encoders)
        assert current_generation(dir_k) == third.generation
        assert indexes(url, prefix_k) == sorted(
            f"{prefix_k}-{g}{suffix}"
            for g in (second.generation, third.generation)
            for suffix in ("", "-text")
        )
        assert not (dir_k / "generations" / built_k.generation).exists()
    finally:
        for pair in pipes.values():
            pair[0].close()


# ====================================================================== a modality born in the WAL
def wal_upsert(product: Product, vectors: dict[str, np.ndarray]) -> str:
    encoded = {m: base64.b64encode(v.astype(np.float32).tobytes()).decode() for m, v in vectors.items()}
    return json.dumps(
        {"op": "upsert", "items": [{"product": product.to_dict(), "vectors": encoded}], "ts": 0}
    )


@pytest.mark.slow
def test_a_modality_added_live_gets_its_own_knn_index(
    tmp_path: Path, knn: tuple[str, KnnShim | None], prefixes: list[str], encoders
) -> None:
    """A text-only generation whose WAL brings the first image vector: the image k-NN index is
    created live (searchable at once, descriptor in the generation), reopened, not duplicated, on
    every restart, and dropped with its generation."""
    from indexer.store import LiveIndex, build_index

    url, shim = knn
    prefix = new_prefix(prefixes)
    index_dir = tmp_path / "index"
    settings = engine_settings(url, prefix, index_dir, lexical_backend="tantivy")
    catalog = tiny_catalog(tmp_path / "catalog")
    first = build_index([catalog], index_dir, settings, progress=False, encoders=encoders)
    assert indexes(url, prefix) == [f"{prefix}-{first.generation}-text"]

    photo = unit_rows(1, 512, seed=9)[0]
    with open(first.path / "wal.jsonl", "a", encoding="utf-8") as f:  # as LiveIndex.upsert writes it
        f.write(wal_upsert(Product(id="p1", title="Photo Frame", category="Home"), {"image": photo}) + "\n")
    image_name = f"{prefix}-{first.generation}-image"
    for _ in range(2):  # a first load, then a restart
        live = LiveIndex(index_dir, settings, encoders=encoders)
        try:
            image = live.vectors["image"]
            assert isinstance(image, OpenSearchKnnIndex) and image.name == image_name
            assert image.ntotal == 1
            _, labels = image.search(photo, 3)
            assert labels[0].tolist() == [live.table.id_to_row["p1"], -1, -1]
            assert json.loads((first.path / "image" / KNN_DESCRIPTOR).read_text())["index"] == image_name
        finally:
            live.close()
    if shim is not None:
        assert len(shim.stored(image_name)) == 1
    for _ in range(2):
        build_index([catalog], index_dir, settings, progress=False, encoders=encoders)
    assert not any(first.generation in name for name in indexes(url, prefix))  # text and image dropped


# ====================================================================== failures
@pytest.mark.slow
def test_failed_builds_leave_the_live_generation_and_no_indexes(tmp_path: Path, encoders) -> None:
    """On plain osmem (no k-NN plugin) a build with vector_backend='opensearch' fails before
    encoding; one that only finds out at its k-NN query, and one that fails after loading its
    vectors, delete what they created; an unreachable cluster fails fast. The live generation
    keeps serving throughout."""
    from indexer.store import LiveIndex, build_index, current_generation

    catalog = tiny_catalog(tmp_path / "catalog")
    index_dir = tmp_path / "index"
    faiss_settings = load_settings(None, index_dir=index_dir)
    live_gen = build_index([catalog], index_dir, faiss_settings, progress=False, encoders=encoders).generation

    def intact() -> None:
        assert current_generation(index_dir) == live_gen
        assert not list((index_dir / "generations").glob("*.tmp"))
        live = LiveIndex(index_dir, faiss_settings, encoders=encoders)
        try:
            assert live.generation == live_gen and len(live.table) == 3
            assert isinstance(
                live.vectors["text"].search(encoders.text.encode_query("mug"), 1)[1], np.ndarray
            )
        finally:
            live.close()

    server = start_osmem()
    try:
        settings = engine_settings(server.url, "plain", index_dir)
        with pytest.raises(
            ConfigError, match="no k-NN plugin.*install opensearch-knn or use vector_backend='faiss'"
        ):
            build_index([catalog], index_dir, settings, progress=False, encoders=encoders)
        intact()

        # a cluster that hides its plugin list: the k-NN query before going live catches it
        def hide_plugins(method: str, path: str, n: int):
            return (
                (403, '{"error": {"type": "security_exception", "reason": "no"}}')
                if "_cat" in path
                else "pass"
            )

        with FaultProxy(server.url, hide_plugins) as proxy:
            hidden = engine_settings(proxy.url, "hidden", index_dir)
            with pytest.raises(ConfigError, match="cannot run a k-NN query.*k-NN plugin installed"):
                build_index([catalog], index_dir, hidden, progress=False, encoders=encoders)
            assert proxy.count(path_part="-text") > 0  # it got as far as loading the k-NN index
        assert indexes(server.url, "hidden") == []
        intact()

        # vectors loaded, then the keyword index cannot be created: the k-NN index goes too
        def refuse_lexical(method: str, path: str, n: int):
            if method == "PUT" and re.fullmatch(r"/midway-gen-\d+", path):  # the keyword index
                return (400, '{"error": {"type": "illegal_argument_exception", "reason": "refused"}}')
            return "pass"

        with KnnShim(server.url, refuse_lexical) as shim:
            midway = engine_settings(shim.url, "midway", index_dir)
            with pytest.raises(ConfigError, match="cannot create OpenSearch index midway-gen-"):
                build_index([catalog], index_dir, midway, progress=False, encoders=encoders)
            assert shim.knn_answered == 1  # the k-NN index was loaded and answered its check
        assert indexes(server.url, "midway") == []
        intact()
    finally:
        server.close(grace=2.0)

    dead = engine_settings(f"http://127.0.0.1:{free_port()}", "dead", index_dir)
    t0 = time.perf_counter()
    with pytest.raises(ClusterUnavailableError, match="cannot reach OpenSearch"):
        build_index([catalog], index_dir, dead, progress=False, encoders=encoders)
    assert time.perf_counter() - t0 < 5
    intact()


def test_descriptor_dispatch_and_best_effort_drop(tmp_path: Path) -> None:
    """The directory decides the backend; dropping a descriptor-less or unreachable one is a no-op."""
    from indexer.vector import drop_vector_index, make_vector_index, open_vector_index

    faiss_dir = tmp_path / "faiss"
    index = make_vector_index(4, 3, kind="flat", device="cpu")
    index.add(unit_rows(3, 4, seed=1), np.arange(3))
    index.save(faiss_dir)
    settings = load_settings(
        None, vector_backend="opensearch", opensearch_urls=[f"http://127.0.0.1:{free_port()}"]
    )
    assert vector_backend_of(faiss_dir) == "faiss"
    assert open_vector_index(faiss_dir, device="cpu", settings=settings).ntotal == 3
    drop_vector_index(faiss_dir, settings)  # FAISS: nothing outside the directory
    knn_dir = tmp_path / "knn"
    knn_dir.mkdir()
    (knn_dir / KNN_DESCRIPTOR).write_text(json.dumps({"index": "gone-gen-000001-text", "dim": 4}))
    assert vector_backend_of(knn_dir) == "opensearch"
    with pytest.raises(ClusterUnavailableError):
        open_vector_index(knn_dir, settings=settings.model_copy(update={"opensearch_max_retries": 0}))
    drop_vector_index(knn_dir, settings.model_copy(update={"opensearch_max_retries": 0}))  # logs, no raise
    assert (knn_dir / KNN_DESCRIPTOR).is_file()  # the caller removes the directory


# ====================================================================== the CLI
@pytest.mark.slow
def test_cli_builds_on_opensearch_with_both_backend_flags(
    tmp_path: Path, knn: tuple[str, KnnShim | None], prefixes: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from api.cli import app

    url, _shim = knn
    prefix = new_prefix(prefixes)
    monkeypatch.setenv("SHOPSEARCH_OPENSEARCH_URLS", json.dumps([url]))
    monkeypatch.setenv("SHOPSEARCH_OPENSEARCH_INDEX_PREFIX", prefix)
    monkeypatch.setenv("SHOPSEARCH_OPENSEARCH_REPLICAS", "0")
    for key, value in auth_from_env().items():
        monkeypatch.setenv(f"SHOPSEARCH_OPENSEARCH_{key.upper()}", str(value))
    index_dir = tmp_path / "index"
    runner = CliRunner()
    args = ["index", str(tiny_catalog(tmp_path)), "--index", str(index_dir), "-q"]
    bad = runner.invoke(app, [*args, "--vector-backend", "lucene"])
    # main() prints a ShopSearchError as one line; CliRunner hands the exception back instead
    assert isinstance(bad.exception, ConfigError) and "vector_backend" in str(bad.exception)
    ok = runner.invoke(app, [*args, "--lexical-backend", "opensearch", "--vector-backend", "opensearch"])
    assert ok.exit_code == 0, ok.output
    gen = (index_dir / "CURRENT").read_text().strip()
    assert vector_backend_of(index_dir / "generations" / gen / "text") == "opensearch"
    assert f"{prefix}-{gen}-text" in indexes(url, prefix)
    found = runner.invoke(app, ["search", "coffee mug", "--index", str(index_dir)])
    assert found.exit_code == 0 and "t2" in found.output.split("\n", 3)[1], found.output
