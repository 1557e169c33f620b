import numpy as np
import pytest

from indexer.filters import Filters
from indexer.items import ItemTable, price_buckets
from indexer.product import Product, category_prefixes, normalize_category
from shopsearch.errors import InvalidQueryError


def _table() -> ItemTable:
    t = ItemTable()
    t.append(
        Product(
            "h1",
            "Zip Hoodie",
            brand="Northpeak",
            category="Apparel > Tops > Hoodies",
            price=55.0,
            attributes={"color": "Black", "sizes": "S|M|L"},
        )
    )
    t.append(
        Product(
            "h2",
            "Pullover Hoodie",
            brand="Urbanloom",
            category="Apparel>Tops>Hoodies",
            price=40.0,
            attributes={"color": "Gray", "sizes": "M|XL"},
        )
    )
    t.append(
        Product(
            "t1",
            "Tee",
            brand="northpeak",
            category="Apparel > Tops > T-Shirts",
            price=15.0,
            attributes={"color": "Black"},
        )
    )
    t.append(
        Product(
            "m1",
            "Mug",
            brand="Lumina Home",
            category="Home > Kitchen > Mugs",
            categories=["Gifts > Under 25"],
        )
    )
    return t


def rows(t: ItemTable, mask: np.ndarray) -> list[str]:
    return [t.product(int(r)).id for r in np.flatnonzero(mask)]


def test_category_prefix_brand_attribute_and_price_filters():
    t = _table()
    assert rows(t, t.mask(Filters(category="Apparel > Tops"))) == ["h1", "h2", "t1"]
    assert rows(t, t.mask(Filters(category="apparel >tops> hoodies"))) == ["h1", "h2"]
    assert rows(t, t.mask(Filters(category="Gifts"))) == ["m1"]  # secondary categories count
    assert rows(t, t.mask(Filters(brands=("NORTHPEAK",)))) == ["h1", "t1"]
    assert rows(t, t.mask(Filters(brands=("Urbanloom", "Lumina Home")))) == ["h2", "m1"]
    assert rows(t, t.mask(Filters(attributes=(("sizes", "xl"),)))) == ["h2"]
    assert rows(t, t.mask(Filters(attributes=(("color", "black"),), price_max=20))) == ["t1"]
    # an item without a price never matches a price filter
    assert rows(t, t.mask(Filters(price_min=0))) == ["h1", "h2", "t1"]
    assert rows(t, t.mask(Filters(price_min=40, price_max=55))) == ["h1", "h2"]


def test_upsert_gets_new_row_and_old_row_dies():
    t = _table()
    new_row, old_row = t.append(Product("h1", "Zip Hoodie v2", brand="Other", price=60.0))
    assert old_row == 0 and new_row == 4
    assert not t.is_live(0) and t.is_live(4)
    assert rows(t, t.mask(Filters(brands=("Northpeak",)))) == ["t1"]
    assert t.get("h1").title == "Zip Hoodie v2"
    assert t.delete("h2") == 1
    assert t.delete("missing") is None
    assert len(t) == 3
    assert rows(t, t.mask()) == ["t1", "m1", "h1"]


def test_facets_count_every_category_level_and_price_buckets():
    t = _table()
    f = t.facets(range(t.n_rows))
    assert f["category"]["Apparel"] == 3
    assert f["category"]["Apparel > Tops > Hoodies"] == 2
    assert f["brand"] == {"Lumina Home": 1, "Northpeak": 1, "Urbanloom": 1, "northpeak": 1}
    assert sum(b["count"] for b in f["price"]) == 3


def test_price_buckets_are_contiguous_and_open_ended():
    b = price_buckets([5, 12, 30, 30, 700])
    assert [x["count"] for x in b] == [1, 1, 2, 1]
    assert b[-1]["max"] is None or b[-1]["max"] > 700
    assert price_buckets([]) == []


def test_category_helpers():
    assert normalize_category(" Men>Tops >  Hoodies ") == "Men > Tops > Hoodies"
    assert category_prefixes("A > B > C") == ["A", "A > B", "A > B > C"]


def test_filters_from_dict_validates():
    f = Filters.from_dict({"brand": "Luma", "price_min": "10", "attributes": {"color": "Red"}})
    assert f.brands == ("Luma",) and f.price_min == 10.0 and f.attributes == (("color", "Red"),)
    with pytest.raises(InvalidQueryError, match="price_max"):
        Filters.from_dict({"price_max": "cheap"})
    with pytest.raises(InvalidQueryError, match="unknown filter"):
        Filters.from_dict({"colour": "red"})
    with pytest.raises(InvalidQueryError, match="greater"):
        Filters.from_dict({"price_min": 10, "price_max": 5})
    assert Filters.from_dict(None).is_empty()
