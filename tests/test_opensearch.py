"""The OpenSearch backend: the lexical backend contract, generations behind an alias, failure
handling (unreachable cluster, dropped connections, 429 storms) and the engine end to end.

Runs against ``osmem-server`` (in-memory, started on a free loopback port, see tests/osmem.py), or
against a real cluster when ``OPENSEARCH_URL`` is set, where the k-NN tests run too. Where osmem
differs from OpenSearch the test says so with the reason (docs/opensearch.md lists the gaps).
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from osmem import Cluster, FaultProxy, answer, cluster_url, free_port, start_osmem
from test_lexical import CATALOG, LexicalBackendContract, MakeIndex, ids

from indexer.filters import Filters
from indexer.items import ItemTable
from indexer.lexical import LexicalIndex, drop_lexical_index, open_lexical_index, opensearch_index
from indexer.lexical.opensearch_index import (
    DESCRIPTOR,
    ClusterUnavailableError,
    Connection,
    OpenSearchConfig,
    OpenSearchIndex,
    document,
    mapping,
    query_runs,
)
from indexer.product import Product
from shopsearch.errors import (
    CatalogError,
    ConfigError,
    IndexCorruptError,
    IndexNotFoundError,
    ShopSearchError,
)
from shopsearch.settings import load_settings

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "examples" / "sample_catalog" / "catalog.jsonl"


# ====================================================================== fixtures
@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with cluster_url() as c:
        yield c


def auth_from_env() -> dict[str, object]:
    """Credentials/TLS for a real cluster, from the environment (never needed for osmem)."""
    out: dict[str, object] = {}
    if os.environ.get("OPENSEARCH_USER"):
        out["user"] = os.environ["OPENSEARCH_USER"]
        out["password"] = os.environ.get("OPENSEARCH_PASSWORD", "")
    if os.environ.get("OPENSEARCH_VERIFY_TLS", "true").lower() in ("0", "false", "no"):
        out["verify_tls"] = False
    return out


def config_for(url: str, prefix: str, **overrides: object) -> OpenSearchConfig:
    base: dict[str, object] = {
        "urls": (url,),
        "index_prefix": prefix,
        "backoff_s": 0.02,
        "max_retries": 3,
        "timeout_s": 10.0,
        "replicas": 0,
        **auth_from_env(),
    }
    base.update(overrides)
    return OpenSearchConfig(**base)  # type: ignore[arg-type]


@pytest.fixture
def prefix(cluster: Cluster) -> Iterator[str]:
    """A prefix of this test's own; every index under it is deleted afterwards."""
    name = f"t{uuid.uuid4().hex[:12]}"
    yield name
    conn = Connection(config_for(cluster.url, name))
    try:
        # by name: a cluster may refuse wildcard deletes (action.destructive_requires_name)
        for index in sorted(conn.client.indices.get(index=f"{name}*", params={"expand_wildcards": "all"})):
            conn.client.indices.delete(index=index, ignore_unavailable=True)
    except Exception:  # noqa: BLE001 - cleanup must not hide the test's own result
        pass
    finally:
        conn.close()


@pytest.fixture
def config(cluster: Cluster, prefix: str) -> OpenSearchConfig:
    return config_for(cluster.url, prefix)


def raw(config: OpenSearchConfig) -> Connection:
    """A direct connection for checking what the cluster really holds."""
    return Connection(config)


# ====================================================================== the contract
class TestOpenSearch(LexicalBackendContract):
    @pytest.fixture
    def make_index(self, config: OpenSearchConfig) -> Iterator[MakeIndex]:
        opened: list[LexicalIndex] = []

        def build(products: Sequence[Product], field_boosts: dict[str, float] | None = None) -> LexicalIndex:
            index = OpenSearchIndex(
                config,
                f"{config.index_prefix}-{len(opened)}",
                owner="tests",
                field_boosts=field_boosts,
                create=True,
            )
            opened.append(index)
            index.upsert(products)
            index.commit()
            return index

        yield build
        for index in opened:
            index.close()


# ====================================================================== query text
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Trail running shoe", ["Trail", "running", "shoe"]),
        ("shoe SHOE shoe", ["shoe"]),
        ("c++ 3/4 in. (MDF)", ["c", "3", "4", "in", "MDF"]),
        ("don't 3.5 U.S.A", ["don't", "3.5", "U.S.A"]),
        ('title:"hoodie^3 ~2 *', ["title", "hoodie", "3", "2"]),
        ("中文 ✓ 中", ["中", "文"]),
        ("x" * 41 + " ok", ["ok"]),  # runs over 40 bytes are dropped, like tantivy's remove_long(40)
        ("!!! () ...", []),
    ],
)
def test_query_runs(text: str, expected: list[str]) -> None:
    assert query_runs(text) == expected


def test_query_runs_are_bounded() -> None:
    words = " ".join(f"w{i}" for i in range(500))
    assert len(query_runs(words)) == 64
    assert len(query_runs("中" * 1000 + "".join(chr(0x4E00 + i) for i in range(200)))) == 64


def test_documents_carry_the_tantivy_keyword_terms() -> None:
    doc = document(CATALOG[0])
    assert doc["brand_kw"] == "nike"
    assert doc["category_kw"] == ["men", "men > tops", "men > tops > hoodies"]
    assert set(doc["attr_kw"]) == {"color=red|blue", "color=red", "color=blue", "size=m"}
    assert doc["category_facet"] == ["Men", "Men > Tops", "Men > Tops > Hoodies"]
    assert doc["price"] == 49.99
    assert set(mapping("o", "n")["properties"]) >= set(doc)


# ====================================================================== pagination and facets
def test_pages_are_prefixes_and_ties_break_by_id(config: OpenSearchConfig) -> None:
    twins = [Product(id=f"t{i:02d}", title="Plain Mug", description="a mug") for i in (5, 3, 9, 1, 7)]
    with OpenSearchIndex(config, f"{config.index_prefix}-p", owner="tests", create=True) as index:
        index.upsert([*twins, *CATALOG])
        index.commit()
        full = index.search("mug", 20)
        assert ids(full) == ["t01", "t03", "t05", "t07", "t09"]  # equal scores: id order
        for k in range(1, 6):
            assert ids(index.search("mug", k)) == ids(full)[:k]


def test_big_batches_are_sent_early_and_all_searchable_after_commit(config: OpenSearchConfig) -> None:
    cfg = config_for(config.urls[0], config.index_prefix, bulk_chunk=2)  # sent early from 16 pending
    products = [
        Product(id=f"b{i:02d}", title=f"Batch Lamp {i}", description="bad \ud800 text") for i in range(40)
    ]
    with OpenSearchIndex(cfg, f"{config.index_prefix}-b", owner="tests", create=True) as index:
        index.upsert(products)
        assert index.pending == 0 and index.confirmed == 40  # sent by upsert itself
        index.commit()  # nothing pending, but the early writes still need their refresh
        assert index.count() == 40 and len(index.search("lamp", 50)) == 40
        assert index.search("bad \ud800", 5)  # a lone surrogate is no error, in documents or queries


def test_facets_match_the_item_table(config: OpenSearchConfig) -> None:
    products = [
        *CATALOG,
        Product(id="x1", title="Cheap Hoodie", brand="Nike", category="Men > Tops", price=5.0),
        Product(id="x2", title="Gold Hoodie", brand="Luxe", category="Men > Tops > Hoodies", price=2600.0),
    ]
    table = ItemTable()
    for p in products:
        table.append(p)
    with OpenSearchIndex(config, f"{config.index_prefix}-f", owner="tests", create=True) as index:
        index.upsert(products)
        index.commit()
        for filters in (
            Filters(),
            Filters(category="Men"),
            Filters(brands=("nike",)),
            Filters(price_min=20.0),
        ):
            rows = np.flatnonzero(table.mask(filters))
            assert index.facets(None, filters) == table.facets(rows), filters
        hoodies = index.facets("hoodie")
        assert hoodies["category"]["Men > Tops"] == 3 and hoodies["brand"] == {
            "Nike": 2,
            "Adidas": 1,
            "Luxe": 1,
        }
        assert index.facets("nothing-matches-this") == {"category": {}, "brand": {}, "price": []}


# ====================================================================== parity with tantivy
def sample_products() -> list[Product]:
    rows = [json.loads(line) for line in SAMPLE.read_text(encoding="utf-8").splitlines() if line.strip()]
    fields = ("id", "title", "description", "brand", "category", "price", "attributes")
    return [Product.from_dict({k: r[k] for k in fields if k in r}) for r in rows]


def test_backends_agree_on_the_sample_catalog(tmp_path: Path, config: OpenSearchConfig) -> None:
    """The same catalog, queries and filters on both backends: the same items match (the only
    difference is the documented analyzer one: tantivy splits "women's" into "women" + "s" where
    OpenSearch's english analyzer drops the possessive), the top results overlap, and upserts and
    deletes change both alike."""
    if not SAMPLE.is_file():
        pytest.skip(f"sample catalog not found at {SAMPLE}")
    products = sample_products()
    queries = [line.split("\t")[1] for line in (SAMPLE.parent / "queries.tsv").read_text().splitlines()]
    filters = [
        Filters(),
        Filters(category="Apparel > Tops"),
        Filters(brands=("northpeak", "LUMINA HOME")),
        Filters(price_min=20.0, price_max=60.0),
        Filters(attributes=(("color", "black"),)),
    ]
    tantivy = open_lexical_index(tmp_path / "lex", create=True)
    opensearch = OpenSearchIndex(config, f"{config.index_prefix}-parity", owner="tests", create=True)
    try:

        def compare() -> int:
            checked = 0
            for q in queries:
                for f in filters:
                    a = ids(tantivy.search(q, 200, f))
                    b = ids(opensearch.search(q, 200, f))
                    if "'" in q:
                        assert set(b) <= set(a), (q, f)
                        continue
                    assert set(a) == set(b), (q, f, sorted(set(a) ^ set(b)))
                    if f.is_empty() and len(a) >= 3:
                        assert len(set(a[:3]) & set(b[:3])) >= 2, (q, a[:3], b[:3])
                    checked += bool(a)
            return checked

        for index in (tantivy, opensearch):
            index.upsert(products)
            index.commit()
        assert compare() > 60
        changed = [
            Product(
                id="HD01-Black", title="Midnight Parka", brand="Northpeak", category="Apparel > Outerwear"
            )
        ]
        for index in (tantivy, opensearch):
            index.upsert(changed)
            index.delete(["MG01-Blue", "RS03-Gray", "nope"])
            index.commit()
            assert index.count() == len(products) - 2
        assert compare() > 60
        assert ids(opensearch.search("parka", 5)) == ids(tantivy.search("parka", 5)) == ["HD01-Black"]
    finally:
        tantivy.close()
        opensearch.close()


# ====================================================================== opening, mapping, ownership
def test_missing_and_incompatible_indexes(config: OpenSearchConfig) -> None:
    with pytest.raises(IndexNotFoundError, match=f"{config.index_prefix}-nope does not exist"):
        OpenSearchIndex(config, f"{config.index_prefix}-nope")
    conn = raw(config)
    try:
        conn.client.indices.create(
            index=f"{config.index_prefix}-alien",
            body={"mappings": {"properties": {"title": {"type": "keyword"}}}},
        )
        with pytest.raises(IndexCorruptError, match="not created by shopsearch"):
            OpenSearchIndex(config, f"{config.index_prefix}-alien")
        body = mapping("tests", "x")
        body["properties"]["title"] = {"type": "text", "analyzer": "standard"}
        conn.client.indices.create(index=f"{config.index_prefix}-old", body={"mappings": body})
        with pytest.raises(IndexCorruptError, match="'title' analyzer is 'standard', expected 'english'"):
            OpenSearchIndex(config, f"{config.index_prefix}-old")
        body = mapping("tests", "x")
        body["_meta"]["shopsearch"]["mapping_version"] = 0
        conn.client.indices.create(index=f"{config.index_prefix}-v0", body={"mappings": body})
        with pytest.raises(IndexCorruptError, match="mapping version 0"):
            OpenSearchIndex(config, f"{config.index_prefix}-v0")
    finally:
        conn.close()


def test_leftovers_are_replaced_but_foreign_and_live_indexes_are_refused(config: OpenSearchConfig) -> None:
    name = f"{config.index_prefix}-gen-000001"
    with OpenSearchIndex(config, name, alias=config.index_prefix, owner="/idx/a", create=True) as index:
        index.upsert([Product(id="stale", title="Stale Item")])
        index.commit()
    with OpenSearchIndex(config, name, alias=config.index_prefix, owner="/idx/a", create=True) as index:
        assert index.count() == 0  # the abandoned build's index was replaced, not reused
        index.publish()
    with pytest.raises(ConfigError, match="live behind alias"):
        OpenSearchIndex(config, name, alias=config.index_prefix, owner="/idx/a", create=True)
    other = f"{config.index_prefix}-gen-000002"
    OpenSearchIndex(config, other, alias=config.index_prefix, owner="/idx/a", create=True).close()
    with pytest.raises(ConfigError, match="belongs to index directory /idx/a.*own opensearch_index_prefix"):
        OpenSearchIndex(config, other, alias=config.index_prefix, owner="/idx/b", create=True)
    # a new generation name of another directory: it would take the alias that /idx/a serves
    with pytest.raises(ConfigError, match="serves .*built for index directory /idx/a"):
        OpenSearchIndex(
            config,
            f"{config.index_prefix}-gen-000009",
            alias=config.index_prefix,
            owner="/idx/b",
            create=True,
        )


# ====================================================================== generations and the alias
def aliases(config: OpenSearchConfig) -> list[str]:
    conn = raw(config)
    try:
        if not conn.client.indices.exists_alias(name=config.index_prefix):
            return []
        return sorted(conn.client.indices.get_alias(name=config.index_prefix))
    finally:
        conn.close()


def test_a_live_write_never_re_creates_an_index_the_cluster_lost(config: OpenSearchConfig) -> None:
    """A cluster restarted empty: a bulk write used to auto-create the index with a guessed mapping
    (every matching BM25 query then failed) while the write reported success."""
    alias = config.index_prefix
    index = OpenSearchIndex(config, f"{alias}-gen-000001", alias=alias, owner="o", create=True)
    conn = raw(config)
    try:
        index.upsert(CATALOG[:2])
        index.commit()
        index.publish()
        conn.client.indices.delete(index=f"{alias}-gen-000001")  # what a wiped cluster looks like
        index.upsert(CATALOG[2:3])
        with pytest.raises(IndexNotFoundError, match="no longer has index.*rebuild") as err:
            index.commit()
        assert err.value.http_status == 503
        assert not conn.client.indices.exists(index=f"{alias}-gen-000001")
    finally:
        conn.close()
        index.close()


def test_publish_moves_the_alias_atomically_and_drop_spares_the_live_index(config: OpenSearchConfig) -> None:
    alias = config.index_prefix
    first = OpenSearchIndex(config, f"{alias}-gen-000001", alias=alias, owner="o", create=True)
    first.upsert(CATALOG[:2])
    first.commit()
    first.publish()
    assert aliases(config) == [f"{alias}-gen-000001"]
    conn = raw(config)
    try:
        settings = conn.client.indices.get_settings(index=f"{alias}-gen-000001")[f"{alias}-gen-000001"]
        assert settings["settings"]["index"].get("refresh_interval", "1s") != "-1"  # live again
        second = OpenSearchIndex(config, f"{alias}-gen-000002", alias=alias, owner="o", create=True)
        second.upsert(CATALOG)
        second.commit()
        # searching through the alias sees the old generation until the switch, then the new one
        assert conn.client.count(index=alias)["count"] == 2
        second.publish()
        assert aliases(config) == [f"{alias}-gen-000002"]
        assert conn.client.count(index=alias)["count"] == len(CATALOG)
        with pytest.raises(ShopSearchError, match="serves it"):
            second.drop()
        first.drop()
        assert not conn.client.indices.exists(index=f"{alias}-gen-000001")
        first.drop()  # twice is harmless
    finally:
        conn.close()
        first.close()
        second.close()


def test_factory_descriptor_and_drop(tmp_path: Path, cluster: Cluster, prefix: str) -> None:
    settings = load_settings(
        None,
        opensearch_urls=[cluster.url],
        opensearch_index_prefix=prefix,
        opensearch_replicas=0,
        **{f"opensearch_{k}": v for k, v in auth_from_env().items()},
    )
    path = tmp_path / "index" / "generations" / "gen-000003.tmp" / "lexical"
    index = open_lexical_index(path, backend="opensearch", create=True, settings=settings)
    index.upsert(CATALOG)
    index.commit()
    index.close()
    meta = json.loads((path / DESCRIPTOR).read_text())
    assert meta["index"] == f"{prefix}-gen-000003" and meta["alias"] == prefix
    final = path.parent.with_name("gen-000003") / "lexical"
    path.parent.rename(final.parent)
    reopened = open_lexical_index(final, backend="opensearch", settings=settings)
    assert reopened.count() == len(CATALOG)
    assert set(ids(reopened.search("hoodies", 10))) == {"h1", "h2"}
    reopened.close()
    with pytest.raises(IndexNotFoundError, match="no lexical index"):
        open_lexical_index(tmp_path / "none", backend="opensearch", settings=settings)
    (tmp_path / "tantivy").mkdir()
    (tmp_path / "tantivy" / "meta.json").write_text("{}")
    with pytest.raises(IndexCorruptError, match="another lexical backend"):
        open_lexical_index(tmp_path / "tantivy", backend="opensearch", settings=settings)
    drop_lexical_index(final, settings)
    with pytest.raises(IndexNotFoundError, match="does not exist"):
        open_lexical_index(final, backend="opensearch", settings=settings)
    drop_lexical_index(final, settings)  # already gone: no error
    drop_lexical_index(tmp_path / "tantivy", settings)  # not an OpenSearch generation: nothing to do


# ====================================================================== failures
def test_unreachable_cluster_is_a_clear_error(prefix: str) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    t0 = time.perf_counter()
    with pytest.raises(ClusterUnavailableError, match=f"cannot reach OpenSearch at {url}") as err:
        OpenSearchIndex(config_for(url, prefix), f"{prefix}-x", create=True)
    assert time.perf_counter() - t0 < 5
    assert err.value.http_status == 503 and "Traceback" not in err.value.message
    secret = f"http://admin:s3cret@127.0.0.1:{free_port()}"
    with pytest.raises(ClusterUnavailableError) as err:
        OpenSearchIndex(config_for(secret, prefix), f"{prefix}-x", create=True)
    assert "s3cret" not in err.value.message and "http://127.0.0.1:" in err.value.message


def test_a_build_against_an_unreachable_cluster_fails_before_encoding(
    tmp_path: Path, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It used to encode the whole catalog first and fail at the end (26 s for 106 items)."""
    import indexer.store as store
    from indexer.store import build_index

    def no_reading(*args: object, **kwargs: object) -> None:
        raise AssertionError("the catalog was read before the cluster was checked")

    monkeypatch.setattr(store, "iter_catalogs", no_reading)
    url = f"http://127.0.0.1:{free_port()}"
    settings = load_settings(
        None,
        index_dir=tmp_path / "idx",
        lexical_backend="opensearch",
        opensearch_urls=[url],
        opensearch_index_prefix=prefix,
    )
    catalog = tmp_path / "c.jsonl"
    catalog.write_text('{"id": "a", "title": "Blue shoe"}\n')
    with pytest.raises(ClusterUnavailableError, match="cannot reach OpenSearch"):
        build_index([catalog], tmp_path / "idx", settings, progress=False)


@pytest.fixture
def listed_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """The client's pool keeps the nodes in the order listed (it shuffles them by default), so
    the dead nodes listed first really are tried first: no luck involved."""
    from opensearchpy import connection_pool

    monkeypatch.setattr(connection_pool.random, "shuffle", lambda seq: None)


def test_dead_nodes_listed_first_are_skipped_by_every_request(
    cluster: Cluster, prefix: str, listed_order: None, caplog: pytest.LogCaptureFixture
) -> None:
    """Three dead nodes listed before the live one. The connection check used to retry once
    (``min(1, max_retries)``) and failed whenever the live node came third or later; now an
    unreachable node is skipped at once for the next one, in the check and in every request."""
    dead = [f"http://127.0.0.1:{free_port()}" for _ in range(3)]
    for max_retries in (0, 1):
        cfg = config_for(dead[0], prefix, urls=(*dead, cluster.url), max_retries=max_retries, backoff_s=0.01)
        conn = Connection(cfg)
        try:
            assert conn.check_cluster()["version"]["number"]
        finally:
            conn.close()
    cfg = config_for(dead[0], prefix, urls=(*dead, cluster.url), max_retries=1, backoff_s=0.01)
    with caplog.at_level("WARNING", logger="indexer.lexical.opensearch_index"):
        with OpenSearchIndex(cfg, f"{prefix}-n", owner="tests", create=True) as index:
            pool = index._conn.client.transport.connection_pool
            for i in range(4):
                # the dead nodes come back to the pool (as they do after its dead_timeout) before
                # every request, so each request meets them again
                for _ in range(3):
                    pool.resurrect(force=True)
                index.upsert([Product(id=f"n{i}", title=f"Node Test {i}")])
                index.commit()
                for _ in range(3):
                    pool.resurrect(force=True)
                assert index.count() == i + 1
                for _ in range(3):
                    pool.resurrect(force=True)
                assert len(index.search("node test", 10)) == i + 1
    skipped = [r.getMessage() for r in caplog.records if "trying the next node" in r.getMessage()]
    assert {url for url in dead if any(url in m for m in skipped)} == set(dead), skipped
    assert all("\n" not in m for m in skipped)


def test_bad_connection_settings(prefix: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="together"):
        Connection(config_for("http://127.0.0.1:9", prefix, user="u"))
    with pytest.raises(ConfigError, match="not both"):
        Connection(config_for("http://127.0.0.1:9", prefix, user="u", password="p", api_key="k"))
    with pytest.raises(ConfigError, match="no file"):
        Connection(config_for("https://127.0.0.1:9", prefix, ca_certs=str(tmp_path / "missing.pem")))
    with pytest.raises(ConfigError, match="opensearch_index_prefix"):
        load_settings(None, opensearch_index_prefix="Has Spaces")


def test_rejected_credentials_are_a_config_error(cluster: Cluster, prefix: str) -> None:
    def plan(method: str, path: str, n: int):
        return answer(401, "security_exception", "missing authentication credentials for REST request")

    with FaultProxy(cluster.url, plan) as proxy:
        with pytest.raises(ConfigError, match="rejected the credentials.*opensearch_user") as err:
            OpenSearchIndex(
                config_for(proxy.url, prefix, user="u", password="wrong"), f"{prefix}-x", create=True
            )
    # the operator's mistake, not the API client's: a storefront gets 503, not 400
    assert err.value.http_status == 503


def test_429_storm_retries_with_backoff_then_fails_clearly(
    cluster: Cluster, config: OpenSearchConfig
) -> None:
    storm = answer(429, "es_rejected_execution_exception", "rejected execution of bulk (queue capacity 200)")

    def plan(method: str, path: str, n: int):
        return storm if "_bulk" in path else "pass"

    with FaultProxy(cluster.url, plan) as proxy:
        cfg = config_for(proxy.url, config.index_prefix, max_retries=4, backoff_s=0.05, bulk_chunk=2)
        with OpenSearchIndex(cfg, f"{config.index_prefix}-s", owner="tests", create=True) as index:
            index.upsert(CATALOG)
            t0 = time.perf_counter()
            with pytest.raises(
                ClusterUnavailableError, match="overloaded.*429.*gave up after 5 attempts"
            ) as err:
                index.commit()
            waited = time.perf_counter() - t0
            assert "0 of 6 operations" in err.value.message
            assert proxy.count(path_part="_bulk") == 5  # the first try and 4 retries of the first chunk
            assert waited >= 0.05 * (1 + 2 + 4 + 8) / 2  # exponential backoff, at least half of each step
            assert index.confirmed == 0 and index.pending == len(CATALOG)
            # the storm passes: the same pending writes go through on the next commit
            calm_from = len(proxy.seen) + 2
            proxy.plan = lambda method, path, n: storm if "_bulk" in path and n < calm_from else "pass"
            index.commit()
            assert index.confirmed == len(CATALOG) and index.pending == 0
            assert proxy.count(action="answer 429", path_part="_bulk") == 7
    check = raw(config)
    try:
        assert check.client.count(index=f"{config.index_prefix}-s")["count"] == len(CATALOG)
    finally:
        check.close()


def test_retries_log_one_short_line_each_and_the_final_error_is_one_line(
    cluster: Cluster, config: OpenSearchConfig, caplog: pytest.LogCaptureFixture
) -> None:
    """Each retry used to log the whole error message (URL, request, the cluster's full reason),
    and a proxy's HTML error page made the final error several lines long. Now a retry logs one
    short line and the final error is one line naming the cluster URL(s)."""
    storm = answer(429, "es_rejected_execution_exception", "rejected execution of bulk (queue capacity 200)")
    html = "<html>\n<head><title>502 Bad Gateway</title></head>\n<body>\n<h1>nginx</h1>\n</body></html>\n"

    def plan(method: str, path: str, n: int):
        if "_bulk" in path:
            return storm
        if "_search" in path:
            return (502, html)
        return "pass"

    logger = "indexer.lexical.opensearch_index"
    with FaultProxy(cluster.url, plan) as proxy:
        cfg = config_for(proxy.url, config.index_prefix, max_retries=3, backoff_s=0.01)
        with OpenSearchIndex(cfg, f"{config.index_prefix}-l", owner="tests", create=True) as index:
            index.upsert(CATALOG[:2])
            caplog.clear()
            with caplog.at_level("WARNING", logger=logger), pytest.raises(ClusterUnavailableError) as err:
                index.commit()
            lines = [r.getMessage() for r in caplog.records if r.name == logger]
            assert len(lines) == 3 and all("retry" in line for line in lines), lines
            for line in lines:
                assert "\n" not in line and len(line) < 160, line
                assert "queue capacity" not in line and "HTTP 429" in line  # the cause, not the whole story
            message = err.value.message
            assert "\n" not in message and proxy.url in message
            assert "HTTP 429" in message and "gave up after 4 attempts" in message
            assert "0 of 2 operations" in message
            with pytest.raises(ClusterUnavailableError) as err:
                index.search("hoodie", 5)
            message = err.value.message
            assert "\n" not in message and len(message) < 600 and proxy.url in message
            assert "HTTP 502" in message and "gave up after 2 attempts" in message
    dead = [f"http://127.0.0.1:{free_port()}" for _ in range(2)]
    with pytest.raises(ClusterUnavailableError) as err:
        OpenSearchIndex(config_for(dead[0], config.index_prefix, urls=tuple(dead)), "x", create=True)
    message = err.value.message
    assert "\n" not in message and all(url in message for url in dead), message
    assert message.startswith("cannot reach OpenSearch at ")


@pytest.mark.parametrize("cut", ["cut_before", "cut_after"])
def test_connection_dropped_mid_bulk_reports_only_confirmed_writes(
    cluster: Cluster, config: OpenSearchConfig, cut: str
) -> None:
    """After 3 bulk requests the connection drops (before the cluster sees the 4th, or after it
    has written it but before the answer arrives). The commit fails after its retries, nothing
    is counted as written that the cluster did not confirm, and a later commit completes it."""
    products = [Product(id=f"p{i:03d}", title=f"Item {i}", brand="Acme") for i in range(50)]
    bulks = {"n": 0}

    def plan(method: str, path: str, n: int):
        if "_bulk" not in path:
            return "pass"
        bulks["n"] += 1
        return "pass" if bulks["n"] <= 3 else cut

    with FaultProxy(cluster.url, plan) as proxy:
        cfg = config_for(proxy.url, config.index_prefix, max_retries=2, backoff_s=0.01, bulk_chunk=10)
        name = f"{config.index_prefix}-d"
        with OpenSearchIndex(cfg, name, owner="tests", create=True) as index:
            index.upsert(products)
            with pytest.raises(ClusterUnavailableError, match="30 of 50 operations .* were confirmed") as err:
                index.commit()
            assert "cannot reach OpenSearch" in err.value.message
            assert index.confirmed == 30 and index.pending == 20
            check = raw(config)
            try:
                check.client.indices.refresh(index=name)
                really = check.client.count(index=name)["count"]
            finally:
                check.close()
            # never more reported than written; 'cut_after' wrote a chunk nobody confirmed
            assert really == (30 if cut == "cut_before" else 40)
            assert index.confirmed <= really
            proxy.plan = lambda method, path, n: "pass"
            index.commit()
            assert index.pending == 0 and index.count() == 50


def test_killed_cluster_mid_load_fails_clearly() -> None:
    """The server process dies while a load of 5000 documents (chunks of 10) is under way."""
    server = start_osmem()
    try:
        cfg = config_for(server.url, "killed", max_retries=1, backoff_s=0.01, bulk_chunk=10)
        index = OpenSearchIndex(cfg, "killed-0", owner="tests", create=True)
        products = [Product(id=f"k{i}", title=f"Thing {i}") for i in range(5000)]
        done: dict[str, object] = {}

        def load() -> None:
            try:
                index.upsert(products)  # past 8 chunks the buffer is sent at once
                index.commit()
            except ShopSearchError as exc:
                done["error"] = exc

        worker = threading.Thread(target=load)
        worker.start()
        deadline = time.monotonic() + 20
        while index.confirmed < 500 and time.monotonic() < deadline:
            time.sleep(0.001)
        server.process.kill()
        worker.join(timeout=30)
        assert not worker.is_alive()
        error = done.get("error")
        assert isinstance(error, ClusterUnavailableError), done
        assert "cannot reach OpenSearch" in error.message and "were confirmed" in error.message
        assert 500 <= index.confirmed < 5000
        assert index.confirmed + index.pending == 5000  # every document is either confirmed or pending
        index.close()
    finally:
        server.close(grace=1.0)


def test_refused_documents_are_reported_not_counted(
    config: OpenSearchConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A document the cluster refuses (here: a price that is not a number, which our own document
    builder never produces) is reported with the cluster's reason; the others are written."""
    real_document = opensearch_index.document

    def document_with_a_bad_price(product: Product) -> dict:
        doc = real_document(product)
        if product.id == "h2":
            doc["price"] = "thirty"
        return doc

    monkeypatch.setattr(opensearch_index, "document", document_with_a_bad_price)
    with OpenSearchIndex(config, f"{config.index_prefix}-r", owner="tests", create=True) as index:
        index.upsert([*CATALOG[:3], Product(id="x" * 600, title="Id Too Long For OpenSearch")])
        index.commit()
        rejected = dict(index.take_rejected())
        assert set(rejected) == {"h2", "x" * 600}
        assert "400" in rejected["h2"] and "price" in rejected["h2"]
        assert "longer than 512 bytes" in rejected["x" * 600]
        assert index.confirmed == 2 and index.count() == 2
        assert set(ids(index.search("hoodie shoe", 10))) == {"h1", "s1"}
        assert index.take_rejected() == []
        index.delete(["x" * 600])  # cannot exist: dropped instead of failing the whole bulk
        index.commit()
        with pytest.raises(CatalogError, match="p9.*price"):
            index.upsert([Product(id="p9", title="Thing", price="cheap")])  # type: ignore[arg-type]


# ====================================================================== osmem's documented gaps
def test_osmem_gaps_are_as_documented(cluster: Cluster, config: OpenSearchConfig) -> None:
    """docs/opensearch.md says osmem shows writes without a refresh and has no k-NN query. If that
    changes, this fails and the document must be updated."""
    if not cluster.is_osmem:
        pytest.skip("checks osmem itself; a real cluster is running")
    conn = raw(config)
    try:
        name = f"{config.index_prefix}-gap"
        conn.client.indices.create(index=name, body={"settings": {"index": {"refresh_interval": "-1"}}})
        conn.client.index(index=name, id="1", body={"t": "x"})
        assert conn.client.count(index=name)["count"] == 1  # a real cluster would say 0 until a refresh
        with pytest.raises(Exception, match="not supported by osmem"):
            conn.client.search(index=name, body={"query": {"knn": {"v": {"vector": [1.0], "k": 1}}}})
    finally:
        conn.close()


# ====================================================================== the engine end to end
def text_only_sample(folder: Path) -> Path:
    """The sample catalog's rows with text, without their media: this test is about BM25 in
    OpenSearch, and skipping the image model keeps three builds within a few seconds."""
    rows = [json.loads(line) for line in SAMPLE.read_text(encoding="utf-8").splitlines() if line.strip()]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "catalog.jsonl"
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            if not (row.get("title") or row.get("description")):
                continue  # the photo-only items
            row = {k: v for k, v in row.items() if k not in ("image", "images", "video")}
            fh.write(json.dumps(row) + "\n")
        # OpenSearch refuses ids over 512 bytes: the build must report it, not drop it silently
        fh.write(json.dumps({"id": LONG_ID, "title": "Overlong Identifier Lamp", "brand": "Acme"}) + "\n")
    return path


LONG_ID = "L" * 600


@pytest.mark.slow
def test_engine_end_to_end_on_the_sample_catalog(tmp_path: Path, cluster: Cluster, prefix: str) -> None:
    if not SAMPLE.is_file():
        pytest.skip(f"sample catalog not found at {SAMPLE}")
    import torch

    from indexer.store import Encoders, LiveIndex, build_index, current_generation
    from reranker.base import PassThroughReranker
    from reranker.pipeline import SearchPipeline, SearchRequest
    from retriever.search import Retriever

    torch.set_num_threads(1)
    catalog = text_only_sample(tmp_path / "catalog")
    index_dir = tmp_path / "index"
    settings = load_settings(
        None,
        index_dir=index_dir,
        lexical_backend="opensearch",
        opensearch_urls=[cluster.url],
        opensearch_index_prefix=prefix,
        opensearch_replicas=0,
        # BM25 alone, so every hit below comes from OpenSearch
        source_weights={"bm25": 1.0, "text": 0.0, "image": 0.0},
        **{f"opensearch_{k}": v for k, v in auth_from_env().items()},
    )
    encoders = Encoders(settings)
    first = build_index([catalog], index_dir, settings, progress=False, encoders=encoders)
    assert first.counts["items"] == 103
    [issue] = first.report.issues
    assert issue.id == LONG_ID and issue.action == "warning" and "keyword index refused it" in issue.reason
    assert "longer than 512 bytes" in issue.reason
    saved = json.loads((index_dir / "ingest_report.json").read_text())
    assert LONG_ID in json.dumps(saved)
    assert aliases(OpenSearchConfig.from_settings(settings)) == [f"{prefix}-{first.generation}"]

    live = LiveIndex(index_dir, settings, encoders=encoders)
    pipe = SearchPipeline(live, Retriever(live, settings), PassThroughReranker())
    try:
        resp = pipe.search(SearchRequest(text="black hoodie", k=5, explain=True))
        top = resp.results[0].product
        assert "Hoodie" in top.title and top.attributes["color"] == "Black"
        assert set(resp.results[0].explain["bm25_fields"]) >= {"title", "category"}
        boots = pipe.search(SearchRequest(text="boots", k=20, filters=Filters(price_max=100.0)))
        assert boots.results and all(r.product.price <= 100.0 for r in boots.results)
        mugs = pipe.search(SearchRequest(text="mug", k=20, filters=Filters(category="Home")))
        assert mugs.results and all(r.product.category.startswith("Home") for r in mugs.results)

        # live writes: visible to BM25 within a second of the call returning (refresh=wait_for)
        def seconds_until(check: Callable[[], bool]) -> float:
            t0 = time.perf_counter()
            while not check() and time.perf_counter() - t0 < 3.0:
                time.sleep(0.02)
            return time.perf_counter() - t0

        def kettle_ids() -> list[str]:
            return [r.id for r in pipe.search(SearchRequest(text="zorbulating", k=5)).results]

        pipe.upsert(
            [Product(id="NEW-1", title="Zorbulating Kettle", brand="Acme", category="Home > Kitchen")]
        )
        assert seconds_until(lambda: kettle_ids() == ["NEW-1"]) < 1.0
        assert pipe.search(SearchRequest(text="zorbulating", k=5, filters=Filters(brands=("acme",)))).results
        assert pipe.delete(["NEW-1"]) == ["NEW-1"]
        assert seconds_until(lambda: kettle_ids() == []) < 1.0

        # a rebuild while searches run: the alias moves, no search fails or comes back empty
        failures: list[BaseException] = []
        answers: list[str] = []
        stop = threading.Event()

        def searcher() -> None:
            while not stop.is_set():
                try:
                    top = pipe.search(SearchRequest(text="running shoes", k=3)).results
                    answers.append(top[0].id if top else "")
                except BaseException as exc:  # noqa: BLE001 - collected and asserted below
                    failures.append(exc)

        worker = threading.Thread(target=searcher)
        worker.start()
        try:
            second = build_index([catalog], index_dir, settings, progress=False, encoders=encoders)
            deadline = time.monotonic() + 10
            while live.generation != second.generation and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.2)
        finally:
            stop.set()
            worker.join(timeout=30)
        assert not failures, failures[:3]
        assert len(answers) > 10 and all(answers), answers[:20]
        assert live.generation == second.generation == current_generation(index_dir)
        config = OpenSearchConfig.from_settings(settings)
        assert aliases(config) == [f"{prefix}-{second.generation}"]

        # the previous generation stays for readers that have not switched yet; older ones go
        conn = raw(config)
        try:
            assert conn.client.indices.exists(index=f"{prefix}-{first.generation}")
            third = build_index([catalog], index_dir, settings, progress=False, encoders=encoders)
            assert aliases(config) == [f"{prefix}-{third.generation}"]
            assert not conn.client.indices.exists(index=f"{prefix}-{first.generation}")
            assert conn.client.indices.exists(index=f"{prefix}-{second.generation}")
            assert not (index_dir / "generations" / first.generation).exists()
        finally:
            conn.close()
    finally:
        pipe.close()


# ====================================================================== vectors in OpenSearch (k-NN)
def unit_rows(n: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_knn_score_transform_round_trips() -> None:
    from indexer.vector.opensearch_knn import score_to_ip

    for ip in (-0.9, -0.2, 0.0, 0.3, 0.99):
        score = ip + 1 if ip > 0 else 1 / (1 - ip)  # the faiss engine's innerproduct score
        assert score_to_ip(score) == pytest.approx(ip, abs=1e-9)


def test_knn_index_storage_and_descriptor(tmp_path: Path, cluster: Cluster, config: OpenSearchConfig) -> None:
    """What works without the k-NN query: mapping, bulk loading, counting, the descriptor, the dimension
    check. On osmem the query itself is refused, with the reason in the error."""
    from indexer.vector.opensearch_knn import OpenSearchKnnIndex

    vectors = unit_rows(50, 8, seed=1)
    index = OpenSearchKnnIndex(config, f"{config.index_prefix}-gen-000001-text", 8, create=True, owner="o")
    try:
        index.add(vectors, np.arange(50))
        assert index.ntotal == 50
        with pytest.raises(ConfigError, match=r"shape \(n, 8\)"):
            index.add(vectors[:, :4], np.arange(2))
        with pytest.raises(ConfigError, match="NaN"):
            index.add(np.full((1, 8), np.nan, dtype=np.float32), np.array([99]))
        index.publish()
        index.save(tmp_path / "text")
    finally:
        index.close()
    reopened = OpenSearchKnnIndex.load(tmp_path / "text", config)
    try:
        assert reopened.ntotal == 50 and reopened.dim == 8
        if cluster.is_osmem:
            with pytest.raises(ShopSearchError, match="k-NN search .* failed: .*not supported by osmem"):
                reopened.search(vectors[:1], 5)
    finally:
        reopened.close()
    with pytest.raises(IndexCorruptError, match="no 16-dimensional knn_vector field.*'dimension': 8"):
        OpenSearchKnnIndex(config, f"{config.index_prefix}-gen-000001-text", 16).close()
    with pytest.raises(IndexNotFoundError):
        OpenSearchKnnIndex.load(tmp_path / "nothing", config)


def test_knn_search_matches_exact_inner_product(cluster: Cluster, config: OpenSearchConfig) -> None:
    if cluster.is_osmem:
        pytest.skip("osmem has no k-NN query: set OPENSEARCH_URL to a cluster with the k-NN plugin")
    from indexer.vector.opensearch_knn import OpenSearchKnnIndex

    n, dim, k = 2000, 32, 10
    vectors = unit_rows(n, dim, seed=2)
    queries = unit_rows(20, dim, seed=3)
    exact = queries @ vectors.T
    with OpenSearchKnnIndex(config, f"{config.index_prefix}-knn", dim, create=True) as index:
        index.add(vectors, np.arange(n))
        index.publish()
        scores, labels = index.search(queries, k)
        truth = np.argsort(-exact, axis=1)[:, :k]
        recall = np.mean([len(set(labels[i]) & set(truth[i])) / k for i in range(len(queries))])
        assert recall >= 0.9
        got = np.take_along_axis(exact, labels, axis=1)
        assert np.allclose(scores, got, atol=1e-3)  # scores are inner products again
        # a small allowed set: filtered inside the k-NN query, exact
        allowed = np.zeros(n, dtype=bool)
        allowed[::97] = True
        s, lab = index.search(queries, k, allowed)
        assert set(lab[lab >= 0].tolist()) <= set(np.flatnonzero(allowed).tolist())
        masked = np.where(allowed, exact, -np.inf)
        assert lab[0][0] == int(np.argmax(masked[0]))
        # nothing allowed: nothing returned
        s, lab = index.search(queries[:1], k, np.zeros(n, dtype=bool))
        assert (lab == -1).all() and np.isneginf(s).all()


# ====================================================================== docs
def test_scale_out_tables_are_the_sizing_script_output() -> None:
    """docs/scale-out.md pastes the output of docs/sizing.py: the two must not drift apart."""
    import contextlib
    import importlib.util
    import io

    spec = importlib.util.spec_from_file_location("sizing", REPO / "docs" / "sizing.py")
    assert spec and spec.loader
    sizing = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sizing)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        sizing.main()
    doc = (REPO / "docs" / "scale-out.md").read_text(encoding="utf-8")
    assert out.getvalue().strip() in doc
    assert sizing.hnsw_bytes(384) == pytest.approx(4 * 384 + 272, abs=0.2)
    assert sizing.ivfpq_bytes(64) == 72 and sizing.flat_bytes(1280) == 5120


def test_a_stored_write_whose_keyword_update_fails_is_a_warning_not_an_error(
    tmp_path: Path, cluster: Cluster, prefix: str
) -> None:
    """The write is in the WAL, the item table and the vectors before BM25 is written. A failing
    cluster used to turn that into a 503 for an item GET then found, and a retried DELETE
    answered 404. Now the write stands with a warning, and the engine sends the kept operations
    with the next write."""
    from indexer.store import LiveIndex, build_index

    storm = answer(503, "unavailable", "node is restarting")
    with FaultProxy(cluster.url, lambda method, path, n: "pass") as proxy:
        settings = load_settings(
            None,
            index_dir=tmp_path / "index",
            lexical_backend="opensearch",
            opensearch_urls=[proxy.url],
            opensearch_index_prefix=prefix,
            opensearch_replicas=0,
            opensearch_max_retries=1,
            opensearch_backoff_s=0.01,
            **{f"opensearch_{k}": v for k, v in auth_from_env().items()},
        )
        catalog = tmp_path / "c.jsonl"
        catalog.write_text(
            '{"id": "a", "title": "Blue running shoe"}\n{"id": "b", "title": "Red wool hat"}\n'
        )
        build_index([catalog], settings.index_dir, settings, progress=False)
        live = LiveIndex(settings.index_dir, settings)
        try:
            proxy.plan = lambda method, path, n: storm if "_bulk" in path else "pass"
            report = live.upsert([Product(id="k1", title="Zorbulating Kettle")])
            [issue] = report.issues
            assert issue.id == "k1" and issue.action == "warning" and "not updated yet" in issue.reason
            assert live.get("k1").title == "Zorbulating Kettle"  # stored
            assert [h.id for h in live.lexical.search("zorbulating", 5)] == []
            proxy.plan = lambda method, path, n: "pass"
            assert not live.upsert([Product(id="k2", title="Zorbulating Teapot")]).issues
            assert sorted(h.id for h in live.lexical.search("zorbulating", 5)) == ["k1", "k2"]
        finally:
            live.close()


def build_small_index(tmp_path: Path, url: str, prefix: str, **overrides: object):
    """Two items indexed through ``url`` (BM25 in OpenSearch); returns their settings."""
    from indexer.store import build_index

    settings = load_settings(
        None,
        index_dir=tmp_path / "index",
        lexical_backend="opensearch",
        opensearch_urls=[url],
        opensearch_index_prefix=prefix,
        opensearch_replicas=0,
        opensearch_max_retries=1,
        opensearch_backoff_s=0.01,
        **{f"opensearch_{k}": v for k, v in auth_from_env().items()},
        **overrides,
    )
    catalog = tmp_path / "c.jsonl"
    catalog.write_text('{"id": "a", "title": "Blue running shoe"}\n{"id": "b", "title": "Red wool hat"}\n')
    build_index([catalog], settings.index_dir, settings, progress=False)
    return settings


def test_a_throttled_wal_replay_does_not_stop_the_server(
    tmp_path: Path, cluster: Cluster, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Opening the index replays the WAL into OpenSearch. A cluster that throttles (HTTP 429) used
    to make the open fail, so 'serve' did not start. Now it starts with a warning, the replayed
    writes stay pending in the engine and go out with the next write."""
    from indexer.store import LiveIndex

    storm = answer(429, "es_rejected_execution_exception", "rejected execution of bulk (queue capacity 200)")
    with FaultProxy(cluster.url, lambda method, path, n: "pass") as proxy:
        settings = build_small_index(tmp_path, proxy.url, prefix)
        live = LiveIndex(settings.index_dir, settings)
        try:
            assert not live.upsert([Product(id="k1", title="Zorbulating Kettle")]).issues  # in the WAL
        finally:
            live.close()
        # the cluster loses the write (as after a restore from a snapshot): only the WAL has it
        conn = raw(OpenSearchConfig.from_settings(settings))
        try:
            name = live.lexical.name
            conn.client.delete(index=name, id="k1", params={"refresh": "true"})
        finally:
            conn.close()
        proxy.plan = lambda method, path, n: storm if "_bulk" in path else "pass"
        with caplog.at_level("WARNING", logger="indexer.store"):
            live = LiveIndex(settings.index_dir, settings)  # used to raise ClusterUnavailableError
        try:
            assert proxy.count(action="answer 429", path_part="_bulk") >= 1  # the replay was throttled
            [warning] = [r.getMessage() for r in caplog.records if r.name == "indexer.store"]
            assert "WAL replay" in warning and "pending" in warning and "429" in warning
            assert live.get("k1").title == "Zorbulating Kettle"
            assert live.lexical.pending == 1
            assert [h.id for h in live.lexical.search("zorbulating", 5)] == []
            proxy.plan = lambda method, path, n: "pass"
            assert not live.upsert([Product(id="k2", title="Zorbulating Teapot")]).issues
            assert live.lexical.pending == 0
            assert sorted(h.id for h in live.lexical.search("zorbulating", 5)) == ["k1", "k2"]
        finally:
            live.close()


def test_health_tells_whether_searches_would_fail(tmp_path: Path, cluster: Cluster, prefix: str) -> None:
    """/health used to answer 200 "ok" while the OpenSearch cluster was down and every text search
    failed with 503. Now it probes BM25 (short timeout, no retry, cached a few seconds): 503 with
    the backend and the reason when searches need it, 200 "degraded" when they do not."""
    from fastapi.testclient import TestClient

    from api.app import create_app
    from indexer.store import LiveIndex
    from reranker.base import PassThroughReranker
    from reranker.pipeline import SearchPipeline
    from retriever.search import Retriever

    slow = {"s": 0.0}

    def plan(method: str, path: str, n: int):
        time.sleep(slow["s"] if "_search" in path else 0.0)
        return "pass"

    with FaultProxy(cluster.url, plan) as proxy:
        settings = build_small_index(tmp_path, proxy.url, prefix, opensearch_timeout_s=10.0)
        live = LiveIndex(settings.index_dir, settings)
        pipe = SearchPipeline(live, Retriever(live, settings), PassThroughReranker())
        no_bm25 = settings.model_copy(update={"source_weights": {**settings.source_weights, "bm25": 0.0}})
        vector_only = SearchPipeline(live, Retriever(live, no_bm25), PassThroughReranker())
        try:
            app = create_app(pipe)
            client = TestClient(app)
            h = client.get("/health")
            assert h.status_code == 200, h.text
            assert h.json()["status"] == "ok"
            assert h.json()["lexical"] == {"backend": "opensearch", "status": "ok", "pending": 0}
            assert client.post("/search", json={"query": "running shoe"}).status_code == 200

            proxy.plan = lambda method, path, n: "cut_before"  # the cluster is gone
            app.state.lexical_health.clear()
            t0 = time.perf_counter()
            h = client.get("/health")
            assert time.perf_counter() - t0 < 3
            assert h.status_code == 503, h.text
            body = h.json()
            assert body["status"] == "unavailable" and body["lexical"]["backend"] == "opensearch"
            assert body["lexical"]["status"] == "unavailable"
            assert "cannot reach OpenSearch" in body["lexical"]["reason"]
            assert "retry" not in body["lexical"]["reason"]
            assert client.post("/search", json={"query": "running shoe"}).status_code == 503  # the truth
            sent = len(proxy.seen)
            for _ in range(5):  # load balancers poll often: answered from the cache
                assert client.get("/health").status_code == 503
                head = client.head("/health")
                assert head.status_code == 503 and head.content == b""
            assert len(proxy.seen) == sent

            # searches that do not use BM25 go on: degraded, not down
            degraded = TestClient(create_app(vector_only)).get("/health")
            assert degraded.status_code == 200, degraded.text
            assert degraded.json()["status"] == "degraded"
            assert "cannot reach OpenSearch" in degraded.json()["lexical"]["reason"]

            # a cluster that hangs: the probe gives up after its own short timeout, not the 10 s
            proxy.plan = plan
            slow["s"] = 4.0
            app.state.lexical_health.clear()
            t0 = time.perf_counter()
            h = client.get("/health")
            assert time.perf_counter() - t0 < 3.5
            assert h.status_code == 503 and "within 2 s" in h.json()["lexical"]["reason"]
            slow["s"] = 0.0

            app.state.lexical_health.clear()  # (else within a few seconds)
            h = client.get("/health")
            assert h.status_code == 200 and h.json()["status"] == "ok", h.text
        finally:
            pipe.close()


def test_pending_keyword_writes_go_out_once_the_cluster_answers_again(
    tmp_path: Path, cluster: Cluster, prefix: str
) -> None:
    """A live write whose BM25 half the cluster could not take stayed pending until the next write,
    which may never come: the item was not found by keyword search however long the cluster had
    been back. Now a serving app sends pending operations in the background once the cluster
    answers again (backing off while it does not), and /health and /info say how many wait."""
    from fastapi.testclient import TestClient

    from api.app import create_app
    from indexer.store import LiveIndex
    from reranker.base import PassThroughReranker
    from reranker.pipeline import SearchPipeline
    from retriever.search import Retriever

    with FaultProxy(cluster.url, lambda method, path, n: "pass") as proxy:
        settings = build_small_index(tmp_path, proxy.url, prefix)
        live = LiveIndex(settings.index_dir, settings)
        pipe = SearchPipeline(live, Retriever(live, settings), PassThroughReranker())
        try:
            app = create_app(pipe)
            with TestClient(app) as client:
                h = client.get("/health").json()
                assert h["lexical"] == {"backend": "opensearch", "status": "ok", "pending": 0}, h
                assert client.get("/info").json()["live"]["lexical_pending"] == 0

                proxy.plan = lambda method, path, n: "cut_before"  # the cluster is gone
                put = client.put("/items/k1", json={"title": "Zorbulating Kettle"})
                assert put.status_code == 201, put.text
                [issue] = put.json()["issues"]
                assert issue["action"] == "warning" and "not updated yet" in issue["reason"]
                assert live.lexical.pending == 1
                app.state.lexical_health.clear()
                h = client.get("/health")
                assert h.status_code == 503 and h.json()["lexical"]["pending"] == 1, h.text
                counts = proxy.count(path_part="_count")
                info = client.get("/info").json()["live"]  # answers without the cluster
                assert info["lexical_pending"] == 1 and info["lexical_docs"] is None
                assert "cannot reach OpenSearch" in info["lexical_error"]
                assert proxy.count(path_part="_count") == counts  # probed; no count waiting out retries
                sent = len(proxy.seen)
                time.sleep(2.5)  # still down: a few probes, backing off, and no write attempt
                later = proxy.seen[sent:]
                assert len(later) <= 3 and not [s for s in later if "_bulk" in s.path], later
                assert live.lexical.pending == 1

                proxy.plan = lambda method, path, n: "pass"  # back, and no further write comes
                deadline = time.monotonic() + 20
                while live.lexical.pending and time.monotonic() < deadline:
                    time.sleep(0.1)
                assert live.lexical.pending == 0
                assert [h.id for h in live.lexical.search("zorbulating", 5)] == ["k1"]
                app.state.lexical_health.clear()
                h = client.get("/health")
                assert h.status_code == 200 and h.json()["lexical"]["pending"] == 0, h.text
                assert client.get("/info").json()["live"]["lexical_pending"] == 0
            sender = app.state.pending_sender
            assert not sender.running  # stopped with the app
        finally:
            pipe.close()
