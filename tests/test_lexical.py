"""Lexical (BM25) backends: a contract every backend must pass, run here against tantivy."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from indexer.filters import Filters
from indexer.lexical import LexicalIndex, TantivyIndex, open_lexical_index
from indexer.product import Product
from shopsearch.errors import (
    CatalogError,
    ConfigError,
    IndexCorruptError,
    IndexNotFoundError,
    InvalidQueryError,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

MakeIndex = Callable[..., LexicalIndex]


def ids(hits: Sequence) -> list[str]:
    return [h.id for h in hits]


CATALOG = [
    Product(
        id="h1",
        title="Zip Hoodie",
        description="Warm cotton fleece for cold days",
        brand="Nike",
        category="Men > Tops > Hoodies",
        price=49.99,
        attributes={"color": "Red|Blue", "size": "M"},
    ),
    Product(
        id="h2",
        title="Pullover Hoodie",
        description="Soft brushed fleece",
        brand="Adidas",
        category="Women > Tops > Hoodies",
        categories=["Sale > Tops"],
        price=30.0,
        attributes={"color": "Black", "size": "L"},
    ),
    Product(
        id="s1",
        title="Trail Running Shoe",
        description="Grippy sole for muddy trails",
        brand="Salomon",
        category="Men > Shoes",
        price=120.0,
        attributes={"color": "Green", "waterproof": True},
    ),
    Product(
        id="s2",
        title="Leather Boot",
        description="A boot that also works as a running shoe in a pinch",
        brand="nike",
        category="Men > Shoes > Boots",
        price=None,
        attributes={"color": "Brown"},
    ),
    Product(
        id="m1",
        title="House of Fara 3/4 in. x 3 in. x 8 ft. MDF Fluted Casing",
        brand="House of Fara",
        category="Home > Millwork",
        price=12.5,
        attributes={"material": "MDF", "length_ft": 8.0},
    ),
    Product(
        id="c1",
        title="C++ Programming Book",
        description="Learn templates and the standard library",
        brand="Acme Press",
        category="Books",
        price=0.0,
    ),
]


class LexicalBackendContract:
    """Behaviour any LexicalIndex backend must show. A concrete subclass supplies the fixture
    ``make_index`` returning ``build(products, field_boosts=None) -> LexicalIndex`` whose writes
    are already committed."""

    @pytest.fixture
    def catalog_index(self, make_index: MakeIndex) -> LexicalIndex:
        return make_index(CATALOG)

    # --- analysis and ranking

    def test_stemming_plural_finds_singular(self, catalog_index: LexicalIndex) -> None:
        hits = catalog_index.search("hoodies", 10)
        assert set(ids(hits)) == {"h1", "h2"}
        assert set(ids(catalog_index.search("runs", 10))) == {"s1", "s2"}

    def test_title_match_outranks_description_match(self, make_index: MakeIndex) -> None:
        products = [
            Product(id="desc", title="Leather Boot", description="waterproof lantern for camping"),
            Product(id="title", title="Camping Lantern", description="leather strap and waterproof case"),
        ]
        index = make_index(products)
        assert ids(index.search("lantern", 10)) == ["title", "desc"]

    def test_field_boosts_change_the_order(self, make_index: MakeIndex) -> None:
        products = [
            Product(id="desc", title="Leather Boot", description="waterproof lantern for camping"),
            Product(id="title", title="Camping Lantern", description="leather strap and waterproof case"),
        ]
        index = make_index(products, field_boosts={"title": 1.0, "description": 20.0})
        assert ids(index.search("lantern", 10)) == ["desc", "title"]

    def test_more_matching_terms_rank_higher_and_terms_are_ored(self, catalog_index: LexicalIndex) -> None:
        hits = catalog_index.search("trail running shoe", 10)
        assert ids(hits)[0] == "s1"
        assert "s2" in ids(hits)  # matches only some of the terms: still recalled
        assert hits[0].score > hits[1].score > 0

    def test_brand_category_and_attribute_text_are_searchable(self, catalog_index: LexicalIndex) -> None:
        assert ids(catalog_index.search("salomon", 10)) == ["s1"]
        assert ids(catalog_index.search("millwork", 10)) == ["m1"]
        assert ids(catalog_index.search("brown", 10)) == ["s2"]

    def test_k_limits_and_must_be_positive(self, catalog_index: LexicalIndex) -> None:
        assert len(catalog_index.search("hoodie shoe", 1)) == 1
        with pytest.raises(InvalidQueryError):
            catalog_index.search("hoodie", 0)

    def test_explain_splits_score_by_field(self, catalog_index: LexicalIndex) -> None:
        plain = catalog_index.search("nike hoodie", 10)
        hits = catalog_index.search("nike hoodie", 10, explain=True)
        assert ids(hits) == ids(plain)
        assert all(not h.fields for h in plain)
        top = hits[0]
        assert top.id == "h1"
        assert set(top.fields) == {"title", "brand", "category"}
        for h in hits:
            assert sum(h.fields.values()) == pytest.approx(h.score, rel=1e-4)

    def test_filters_do_not_change_scores(self, catalog_index: LexicalIndex) -> None:
        plain = {h.id: h.score for h in catalog_index.search("hoodie shoe", 10)}
        f = Filters(category="Men", brands=("nike", "salomon"), price_min=1.0, attributes=(("color", "red"),))
        filtered = catalog_index.search("hoodie shoe", 10, f, explain=True)
        assert ids(filtered) == ["h1"]
        assert filtered[0].score == pytest.approx(plain["h1"], rel=1e-5)
        assert sum(filtered[0].fields.values()) == pytest.approx(filtered[0].score, rel=1e-4)

    # --- hostile and empty input

    @pytest.mark.parametrize(
        "text",
        [
            "3/4 in. x 8 ft. (MDF)",
            "AND OR NOT",
            "c++",
            '"',
            'title:"hoodie',
            "hoodie^3 ~2 *",
            "-hoodie +shoe",
            "[1 TO 5] {a} IN",
            "\\ / ! ? & | <>",
            "ünïcödé ✓ 中文",
            "x" * 500,
        ],
    )
    def test_query_syntax_is_plain_text(self, catalog_index: LexicalIndex, text: str) -> None:
        catalog_index.search(text, 10)
        catalog_index.search(text, 10, Filters(category="Men"), explain=True)

    def test_special_characters_still_match_words(self, catalog_index: LexicalIndex) -> None:
        assert ids(catalog_index.search("3/4 in. x 8 ft. (MDF)", 10))[0] == "m1"
        assert ids(catalog_index.search("c++", 10)) == ["c1"]
        assert {"h1", "h2", "s1", "s2"} <= set(ids(catalog_index.search("-hoodie +shoe", 10)))

    @pytest.mark.parametrize("text", ["", "   ", "\t\n", "!!! () ...", '"'])
    def test_empty_query_returns_nothing(self, catalog_index: LexicalIndex, text: str) -> None:
        assert catalog_index.search(text, 10) == []

    # --- filters

    @pytest.mark.parametrize(
        ("category", "expected"),
        [
            ("Men", {"h1", "s1", "s2"}),
            ("Men > Shoes", {"s1", "s2"}),
            ("men>shoes >  BOOTS", {"s2"}),
            ("Sale", {"h2"}),  # secondary category
            ("Men > Sho", set()),  # prefix of a word is not a parent
            ("Shoes", set()),  # a child name alone is not a path
        ],
    )
    def test_category_filter_matches_path_and_children(
        self, catalog_index: LexicalIndex, category: str, expected: set[str]
    ) -> None:
        hits = catalog_index.search("hoodie shoe boot", 10, Filters(category=category))
        assert set(ids(hits)) == expected

    def test_brand_filter_is_case_insensitive_and_any_of(self, catalog_index: LexicalIndex) -> None:
        query = "hoodie shoe boot"
        assert set(ids(catalog_index.search(query, 10, Filters(brands=("NIKE",))))) == {"h1", "s2"}
        both = Filters(brands=(" nike ", "adidas"))
        assert set(ids(catalog_index.search(query, 10, both))) == {"h1", "h2", "s2"}
        assert catalog_index.search(query, 10, Filters(brands=("Nik",))) == []

    def test_attribute_filter_single_and_multi_valued(self, catalog_index: LexicalIndex) -> None:
        query = "hoodie shoe boot casing"
        cases = {
            (("color", "blue"),): {"h1"},
            (("color", "RED"),): {"h1"},
            (("color", "Black"),): {"h2"},
            (("Color", "black"), ("size", "L")): {"h2"},
            (("color", "black"), ("size", "M")): set(),
            (("waterproof", "true"),): {"s1"},
            (("length_ft", "8"),): {"m1"},
            (("color", "purple"),): set(),
        }
        for attrs, expected in cases.items():
            hits = catalog_index.search(query, 10, Filters(attributes=attrs))
            assert set(ids(hits)) == expected, attrs

    def test_price_range_edges_and_missing_price(self, catalog_index: LexicalIndex) -> None:
        query = "hoodie shoe boot casing book"

        def found(lo: float | None, hi: float | None) -> set[str]:
            return set(ids(catalog_index.search(query, 10, Filters(price_min=lo, price_max=hi))))

        assert found(30.0, 49.99) == {"h1", "h2"}  # both bounds inclusive
        assert found(30.01, 49.98) == set()
        assert found(None, 12.5) == {"m1", "c1"}
        assert found(0.0, 0.0) == {"c1"}
        assert found(100.0, None) == {"s1"}
        assert "s2" not in found(None, 1e12)  # no price never matches a price filter
        assert "s2" in set(ids(catalog_index.search(query, 10)))

    def test_filters_combine_with_and(self, catalog_index: LexicalIndex) -> None:
        f = Filters(category="Men", brands=("nike",), price_max=100.0)
        assert ids(catalog_index.search("hoodie shoe boot", 10, f)) == ["h1"]

    def test_filter_applies_before_top_k_cut(self, make_index: MakeIndex) -> None:
        strong = [
            Product(
                id=f"lamp{i}",
                title=f"Desk Lamp model {i}",
                description="LED lamp with dimmer",
                brand="Lumo",
                category="Home > Lighting",
            )
            for i in range(40)
        ]
        weak = Product(
            id="weak",
            title="Bookshelf",
            description="oak bookshelf with room for a lamp and many books beside it",
            brand="Oakly",
            category="Home > Furniture",
        )
        index = make_index([*strong, weak])
        assert "weak" not in ids(index.search("lamp", 10))
        assert "weak" in ids(index.search("lamp", 50))
        assert ids(index.search("lamp", 10, Filters(brands=("oakly",)))) == ["weak"]
        assert ids(index.search("lamp", 10, Filters(category="Home > Furniture"))) == ["weak"]

    # --- writes

    def test_upsert_replaces_by_id(self, make_index: MakeIndex) -> None:
        index = make_index(CATALOG)
        before = index.count()
        index.upsert([Product(id="h1", title="Wool Scarf", brand="Acme", category="Accessories")])
        index.commit()
        assert index.count() == before
        assert "h1" not in ids(index.search("hoodie", 10))
        assert index.search("scarf", 10, Filters(category="Accessories"))[0].id == "h1"
        assert index.search("hoodie", 10, Filters(brands=("nike",)))[:1] == []

    def test_writes_are_invisible_until_commit(self, make_index: MakeIndex) -> None:
        index = make_index(CATALOG)
        index.upsert([Product(id="n1", title="Snow Globe")])
        assert index.search("globe", 10) == []
        index.commit()
        assert ids(index.search("globe", 10)) == ["n1"]

    def test_duplicate_ids_in_one_batch_keep_the_last(self, make_index: MakeIndex) -> None:
        index = make_index([Product(id="d", title="Old Kettle"), Product(id="d", title="New Teapot")])
        assert index.count() == 1
        assert index.search("kettle", 10) == []
        assert ids(index.search("teapot", 10)) == ["d"]

    def test_delete(self, make_index: MakeIndex) -> None:
        index = make_index(CATALOG)
        index.delete(["h1", "does-not-exist"])
        index.commit()
        assert index.count() == len(CATALOG) - 1
        assert ids(index.search("hoodie", 10)) == ["h2"]
        index.delete(["h1"])  # twice is harmless
        index.commit()
        assert index.count() == len(CATALOG) - 1


class TestTantivy(LexicalBackendContract):
    @pytest.fixture
    def make_index(self, tmp_path: Path) -> Iterator[MakeIndex]:
        opened: list[LexicalIndex] = []

        def build(products: Sequence[Product], field_boosts: dict[str, float] | None = None) -> LexicalIndex:
            index = open_lexical_index(tmp_path / f"lex{len(opened)}", field_boosts=field_boosts, create=True)
            opened.append(index)
            index.upsert(products)
            index.commit()
            return index

        yield build
        for index in opened:
            index.close()

    def test_reopen_after_close_persists(self, tmp_path: Path) -> None:
        path = tmp_path / "lex"
        with TantivyIndex(path, create=True) as index:
            index.upsert(CATALOG)
            index.commit()
            index.upsert([Product(id="lost", title="Uncommitted Umbrella")])
        reopened = open_lexical_index(path)
        assert reopened.count() == len(CATALOG)
        assert set(ids(reopened.search("hoodies", 10))) == {"h1", "h2"}
        assert reopened.search("umbrella", 10) == []  # close discards uncommitted writes
        reopened.close()

    def test_reader_sees_commits_of_another_writer_after_commit(self, tmp_path: Path) -> None:
        path = tmp_path / "lex"
        writer = TantivyIndex(path, create=True)
        reader = TantivyIndex(path)
        writer.upsert(CATALOG[:2])
        writer.commit()
        assert reader.count() == 0
        reader.commit()  # refresh
        assert reader.count() == 2
        # the writer lock is released by commit, so the other object can write now
        reader.upsert([Product(id="r", title="Rain Jacket")])
        reader.commit()
        writer.commit()
        assert ids(writer.search("jacket", 10)) == ["r"]
        writer.close()
        reader.close()

    def test_missing_index(self, tmp_path: Path) -> None:
        with pytest.raises(IndexNotFoundError, match="no lexical index"):
            open_lexical_index(tmp_path / "nope")
        (tmp_path / "empty").mkdir()
        with pytest.raises(IndexNotFoundError):
            open_lexical_index(tmp_path / "empty")

    def test_garbage_directory_is_corrupt(self, tmp_path: Path) -> None:
        junk = tmp_path / "junk"
        junk.mkdir()
        (junk / "notes.txt").write_text("hello")
        with pytest.raises(IndexCorruptError, match=str(junk)):
            open_lexical_index(junk)
        with pytest.raises(IndexCorruptError):
            open_lexical_index(junk, create=True)
        bad_meta = tmp_path / "bad"
        bad_meta.mkdir()
        (bad_meta / "meta.json").write_text("garbage")
        with pytest.raises(IndexCorruptError, match=str(bad_meta)):
            open_lexical_index(bad_meta)
        a_file = tmp_path / "file"
        a_file.write_text("x")
        with pytest.raises(IndexCorruptError, match=str(a_file)):
            open_lexical_index(a_file)

    def test_bad_configuration(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match="unknown lexical backend"):
            open_lexical_index(tmp_path, backend="solr")
        with pytest.raises(ConfigError, match="colour"):
            open_lexical_index(tmp_path / "a", field_boosts={"colour": 1.0}, create=True)
        with pytest.raises(ConfigError, match="title"):
            open_lexical_index(tmp_path / "b", field_boosts={"title": -1}, create=True)

    def test_bad_product_names_the_item(self, tmp_path: Path) -> None:
        with TantivyIndex(tmp_path / "lex", create=True) as index:
            with pytest.raises(CatalogError, match="p9.*price"):
                index.upsert([Product(id="p9", title="Thing", price="cheap")])  # type: ignore[arg-type]
            with pytest.raises(CatalogError, match="id"):
                index.upsert([Product(id="  ", title="Nameless")])


@pytest.mark.slow
def test_home_depot_angle_bracket(tmp_path: Path) -> None:
    catalog = DATA / "homedepot" / "catalog.jsonl"
    if not catalog.is_file():
        pytest.skip(f"shared Home Depot data not found at {catalog}")
    products = []
    with catalog.open(encoding="utf-8") as fh:
        for line, _ in zip(fh, range(2000), strict=False):
            row = json.loads(line)
            products.append(Product(id=str(row["id"]), title=row["title"]))
    with TantivyIndex(tmp_path / "hd", create=True) as index:
        index.upsert(products)
        index.commit()
        assert index.count() == 2000
        assert "100001" in ids(index.search("angle bracket", 10))
