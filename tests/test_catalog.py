"""Catalog ingestion: every bad-input case with files written to tmp_path, plus the real data sets."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from indexer.catalog import iter_catalogs, read_catalog
from indexer.product import Product
from indexer.report import IngestIssue, IngestReport
from shopsearch.errors import CatalogError, ConfigError

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _jpeg(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16), (120, 40, 40)).save(path, "JPEG")
    return path


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _read(path: Path, **kw) -> tuple[list[Product], IngestReport]:
    report = IngestReport()
    items = list(read_catalog(path, report=report, **kw))
    return items, report


def _by_id(items: list[Product]) -> dict[str, Product]:
    return {p.id: p for p in items}


def _only(report: IngestReport, **match) -> IngestIssue:
    found = [i for i in report.issues if all(getattr(i, k) == v for k, v in match.items())]
    assert len(found) == 1, f"expected one issue matching {match}, got {report.issues}"
    return found[0]


def _balanced(report: IngestReport) -> bool:
    return report.rows_read == report.accepted + report.skipped + report.replaced


# --------------------------------------------------------------------------- JSON Lines


def test_jsonl_fields_are_parsed_and_images_resolved(tmp_path: Path) -> None:
    img = _jpeg(tmp_path / "img" / "a.jpg")
    cat = _jsonl(
        tmp_path / "c.jsonl",
        [
            {
                "id": " A1 ",
                "title": " Red Hoodie ",
                "description": "Warm.",
                "brand": "Luma",
                "category": "Men>Tops >  Hoodies",
                "categories": ["Men > Tops > Hoodies", "Sale"],
                "price": "$1,299.00",
                "attributes": {"color": "Red", "sizes": ["S", "M"], "dims": {"w": 3}, "eco": True, "n": 2},
                "image": "img/a.jpg",
                "image_url": "https://example.com/a.jpg",
                "material": "Wool",
            }
        ],
    )
    items, report = _read(cat)
    assert report.issues == []
    (p,) = items
    assert p.id == "A1" and p.title == "Red Hoodie" and p.brand == "Luma"
    assert p.category == "Men > Tops > Hoodies"
    assert p.categories == ["Men > Tops > Hoodies", "Sale"]
    assert p.price == 1299.0
    assert p.attributes == {
        "color": "Red",
        "sizes": "S|M",
        "dims": '{"w": 3}',
        "eco": True,
        "n": 2,
        "material": "Wool",  # unknown column
    }
    assert p.images == [str(img.resolve())] and Path(p.images[0]).is_absolute()
    assert report.rows_read == 1 and report.accepted == 1


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("19.99", 19.99), ("$1,299.00", 1299.0), (5, 5.0), ("EUR 7.5", 7.5), ("12 USD", 12.0), ("", None)],
)
def test_price_forms(tmp_path: Path, raw, expected) -> None:
    items, report = _read(_jsonl(tmp_path / "c.jsonl", [{"id": "1", "title": "t", "price": raw}]))
    assert items[0].price == expected and report.issues == []


@pytest.mark.parametrize("raw", ["abc", "1,2", "-3", True, [1], float("nan"), float("inf")])
def test_bad_price_keeps_item_without_price(tmp_path: Path, raw) -> None:
    items, report = _read(_jsonl(tmp_path / "c.jsonl", [{"id": "p1", "title": "t", "price": raw}]))
    assert [p.id for p in items] == ["p1"] and items[0].price is None
    issue = _only(report, field="price")
    assert issue.row == 1 and issue.id == "p1" and issue.action == "warning"
    assert "kept with no price" in issue.reason


def test_ids_are_coerced_and_missing_ids_skipped(tmp_path: Path) -> None:
    cat = _jsonl(
        tmp_path / "c.jsonl",
        [
            {"id": 12, "title": "int id"},
            {"id": 13.0, "title": "float id"},
            {"title": "no id at all"},
            {"id": "   ", "title": "blank id"},
            {"id": None, "title": "null id"},
            {"id": ["x"], "title": "list id"},
        ],
    )
    items, report = _read(cat)
    assert [p.id for p in items] == ["12", "13"]
    skipped = report.by_action("skipped")
    assert [(i.row, i.field) for i in skipped] == [(3, "id"), (4, "id"), (5, "id"), (6, "id")]
    assert "missing id" in skipped[0].reason and "string or a number" in skipped[3].reason
    assert _balanced(report)


def test_row_without_any_content_is_skipped(tmp_path: Path) -> None:
    cat = _jsonl(
        tmp_path / "c.jsonl",
        [
            {"id": "empty", "brand": "X", "price": 3},
            {"id": "desc", "description": "only a description"},
            {"id": "pic", "image": "a.jpg"},
        ],
    )
    _jpeg(tmp_path / "a.jpg")
    items, report = _read(cat)
    assert [p.id for p in items] == ["desc", "pic"]
    assert "no title, description, image or video" in _only(report, action="skipped", id="empty").reason
    # A description-only item is kept, but the missing title is reported; an image-only one is normal.
    assert _only(report, id="desc").field == "title"
    assert not [i for i in report.issues if i.id == "pic"]


def test_duplicate_id_last_wins(tmp_path: Path) -> None:
    cat = _jsonl(
        tmp_path / "c.jsonl",
        [{"id": "d", "title": "first"}, {"id": "e", "title": "other"}, {"id": "d", "title": "second"}],
    )
    items, report = _read(cat)
    assert {p.id: p.title for p in items} == {"d": "second", "e": "other"}
    issue = _only(report, action="replaced")
    assert issue.row == 1 and issue.id == "d" and issue.field == "id"
    assert "row 1 replaced by row 3" in issue.reason
    assert report.rows_read == 3 and report.accepted == 2 and _balanced(report)


def test_non_utf8_line_is_repaired_and_reported(tmp_path: Path) -> None:
    cat = tmp_path / "c.jsonl"
    cat.write_bytes(
        b'{"id": "ok", "title": "fine"}\n'
        b'{"id": "latin1", "title": "caf\xe9 cr\xe8me"}\n'
        b'{"id": "broken", "title": "x\xff\n'
    )
    items, report = _read(cat)
    by_id = _by_id(items)
    assert set(by_id) == {"ok", "latin1"}
    assert by_id["latin1"].title == "caf\ufffd cr\ufffdme"
    warn = _only(report, action="warning")
    assert warn.row == 2 and warn.id == "latin1" and "UTF-8" in warn.reason
    skip = _only(report, action="skipped")
    assert skip.row == 3 and "malformed JSON" in skip.reason and "UTF-8" in skip.reason


def test_malformed_and_non_object_lines_are_skipped_with_line_numbers(tmp_path: Path) -> None:
    cat = tmp_path / "c.jsonl"
    cat.write_text(
        '{"id": "a", "title": "A"}\n'
        "\n"  # blank lines are not rows, but they do count for line numbers
        '{"id": "b", "title": "B"\n'
        "[1, 2]\n"
        '"just a string"\n'
        "42\n"
        '{"id": "c", "title": "C"}\n',
        encoding="utf-8",
    )
    items, report = _read(cat)
    assert [p.id for p in items] == ["a", "c"]
    skipped = {i.row: i.reason for i in report.by_action("skipped")}
    assert set(skipped) == {3, 4, 5, 6}
    assert skipped[3] == "malformed JSON (Expecting ',' delimiter at column 25)"
    assert _only(report, row=3).id == "b"  # seen in the broken line, so the report can name it
    assert "JSON array, not an object" in skipped[4]
    assert "JSON string, not an object" in skipped[5]
    assert "JSON number, not an object" in skipped[6]
    assert report.rows_read == 6 and _balanced(report)


def test_lone_surrogate_escapes_become_u_fffd_with_a_warning(tmp_path: Path) -> None:
    # JSON may escape half of a UTF-16 pair; no tokenizer or UTF-8 writer takes it, so it used to
    # crash the build at encode time. The row is kept, repaired, and the field named.
    lines = [
        '{"id": "ok", "title": "Emoji \\ud83d\\ude00 pair"}',  # a valid pair: untouched
        '{"id": "s1", "title": "bad \\ud800 surrogate"}',
        '{"id": "s2", "title": "ok", "attributes": {"c\\udfff": "x"}}',
    ]
    (tmp_path / "c.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (tmp_path / "a.json").write_text("[" + ", ".join(lines) + "]", encoding="utf-8")
    for name in ("c.jsonl", "a.json"):
        items, report = _read(tmp_path / name)
        by_id = _by_id(items)
        assert set(by_id) == {"ok", "s1", "s2"}
        assert by_id["ok"].title == "Emoji \U0001f600 pair"
        assert by_id["s1"].title == "bad \ufffd surrogate" and by_id["s2"].attributes == {"c\ufffd": "x"}
        assert _only(report, id="s1").field == "title" and "U+FFFD" in _only(report, id="s1").reason
        assert _only(report, id="s2").field == "attributes"
        assert len(report) == 2 and _balanced(report)
        for p in items:
            json.dumps(p.to_dict(), ensure_ascii=False).encode("utf-8")  # what items.jsonl needs


def test_huge_numbers_are_reported_not_raised(tmp_path: Path) -> None:
    big = "9" * 400
    too_long = "1" * 5000  # over Python's 4300-digit limit for int(): json.loads raises ValueError
    cat = tmp_path / "c.jsonl"
    cat.write_text(
        '{"id": "a", "title": "ok"}\n'
        f'{{"id": "b", "title": "huge price", "price": {big}}}\n'
        f'{{"id": "c", "title": "unreadable", "price": {too_long}}}\n'
        '{"id": "d", "title": "after"}\n',
        encoding="utf-8",
    )
    items, report = _read(cat)
    assert [p.id for p in items] == ["a", "b", "d"] and _by_id(items)["b"].price is None
    price = _only(report, field="price")
    assert price.row == 2 and "kept with no price" in price.reason and len(price.reason) < 120
    skip = _only(report, action="skipped")
    assert skip.row == 3 and skip.id == "c" and "unreadable JSON" in skip.reason and "4300" in skip.reason
    assert _balanced(report)
    # the same number in a JSON array file cannot be skipped alone: the file is unreadable
    (tmp_path / "a.json").write_text(f'[{{"id": "a", "title": "t", "price": {too_long}}}]')
    with pytest.raises(CatalogError, match="a.json: unreadable JSON"):
        list(read_catalog(tmp_path / "a.json", report=IngestReport()))
    # and in a JSON string inside a CSV cell: the attributes are ignored, the row kept
    (tmp_path / "c.csv").write_text(f'id,title,attributes\nx,t,"{{""n"": {too_long}}}"\n')
    items, report = _read(tmp_path / "c.csv")
    assert [p.id for p in items] == ["x"] and _only(report, field="attributes").row == 2


def test_whole_file_json_in_a_jsonl_file_says_so(tmp_path: Path) -> None:
    rows = [{"id": "1", "title": "one"}, {"id": "2", "title": "two"}]
    (tmp_path / "pretty.jsonl").write_text(json.dumps(rows[0], indent=2))
    (tmp_path / "array.jsonl").write_text(json.dumps(rows))
    items, report = _read(tmp_path / "pretty.jsonl")
    assert items == [] and "pretty-printed JSON" in _only(report, row=1).reason
    items, report = _read(tmp_path / "array.jsonl")
    issue = _only(report, row=1)
    assert items == [] and issue.id is None
    assert issue.reason.startswith("row is a JSON array, not an object; ") and ".json file" in issue.reason


@pytest.mark.parametrize(
    ("name", "content"), [("e.jsonl", b""), ("w.jsonl", b"\n  \n"), ("h.csv", b"id,title\n")]
)
def test_empty_file_is_a_warning_not_a_crash(tmp_path: Path, name: str, content: bytes) -> None:
    (tmp_path / name).write_bytes(content)
    items, report = _read(tmp_path / name)
    assert items == []
    issue = _only(report, action="warning")
    assert issue.reason.startswith("catalog file is empty") and issue.row is None
    assert issue.file == str(tmp_path / name)


def test_unreadable_files_raise_catalog_error_at_call_time(tmp_path: Path) -> None:
    report = IngestReport()
    with pytest.raises(CatalogError, match="nope.jsonl: catalog file not found"):
        read_catalog(tmp_path / "nope.jsonl", report=report)  # no next(): raised eagerly
    (tmp_path / "c.xml").write_text("<x/>")
    with pytest.raises(CatalogError, match=r"c\.xml: unknown catalog format"):
        read_catalog(tmp_path / "c.xml", report=report)
    for folder in ("dir.jsonl", "products"):  # a folder, whatever its name
        (tmp_path / folder).mkdir()
        with pytest.raises(CatalogError, match=f"{folder}: is a folder"):
            read_catalog(tmp_path / folder, report=report)
    (tmp_path / "bad.parquet").write_bytes(b"this is not parquet at all")
    with pytest.raises(CatalogError, match="bad.parquet: not a readable Parquet file"):
        list(read_catalog(tmp_path / "bad.parquet", report=report))
    (tmp_path / "bad.json").write_text('[{"id": "1"}, {"id": ')
    with pytest.raises(CatalogError, match=r"bad.json: not valid JSON .* line 1"):
        list(read_catalog(tmp_path / "bad.json", report=report))
    (tmp_path / "wide.csv").write_bytes("id,title\n1,x\n".encode("utf-16"))
    with pytest.raises(CatalogError, match="wide.csv: file is UTF-16 encoded"):
        list(read_catalog(tmp_path / "wide.csv", report=report))
    (tmp_path / "bad.jsonl.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(CatalogError, match="bad.jsonl.gz: cannot read"):
        list(read_catalog(tmp_path / "bad.jsonl.gz", report=report))


def test_json_array_ndjson_and_gzip(tmp_path: Path) -> None:
    rows = [{"id": "1", "title": "one"}, 7, {"id": "2", "title": "two"}]
    (tmp_path / "a.json").write_text(json.dumps(rows, indent=2))
    items, report = _read(tmp_path / "a.json")
    assert [p.id for p in items] == ["1", "2"]
    assert _only(report, action="skipped").row == 2  # element number in the array
    # A .json file holding JSON Lines, an .ndjson file and a gzipped one read the same way.
    _jsonl(tmp_path / "lines.json", rows[::2])
    _jsonl(tmp_path / "b.ndjson", rows[::2])
    with gzip.open(tmp_path / "c.jsonl.gz", "wt", encoding="utf-8") as fh:
        fh.write("".join(json.dumps(r) + "\n" for r in rows[::2]))
    for name in ("lines.json", "b.ndjson", "c.jsonl.gz"):
        items, report = _read(tmp_path / name)
        assert [p.id for p in items] == ["1", "2"] and report.issues == []
    # A JSON array with a stray Latin-1 byte: repaired, with one file-level warning.
    (tmp_path / "latin.json").write_bytes(b'[{"id": "1", "title": "na\xefve"}]')
    items, report = _read(tmp_path / "latin.json")
    assert items[0].title == "na\ufffdve"
    assert _only(report, action="warning").row is None


def test_field_map_and_case_insensitive_columns(tmp_path: Path) -> None:
    cat = _jsonl(
        tmp_path / "c.jsonl",
        [{"sku": "S-1", "name": "Drill", "Brand": "Bosch", "Colour": "blue", "Price": "49"}],
    )
    items, report = _read(cat, field_map={"sku": "id", "name": "title", "Colour": "color", "ean": "id"})
    (p,) = items
    assert (p.id, p.title, p.brand, p.price) == ("S-1", "Drill", "Bosch", 49.0)
    assert p.attributes == {"color": "blue"}
    # A mapping for a column the file does not have is reported once, at file level.
    issue = _only(report, action="warning")
    assert issue.row is None and "ean" in issue.reason
    with pytest.raises(ConfigError):
        read_catalog(cat, report=IngestReport(), field_map={"sku": ""})


def test_attributes_object_string_and_bad_attributes(tmp_path: Path) -> None:
    cat = _jsonl(
        tmp_path / "c.jsonl",
        [
            {"id": "1", "title": "t", "attributes": '{"a": 1, "b": null, "c": ""}'},
            {"id": "2", "title": "t", "attributes": "{not json"},
            {"id": "3", "title": "t", "attributes": [1, 2]},
            {"id": "4", "title": "t", "attributes": {"x": "explicit"}, "x": "column"},
        ],
    )
    items, report = _read(cat)
    by_id = _by_id(items)
    assert by_id["1"].attributes == {"a": 1}
    assert by_id["2"].attributes == {} and by_id["3"].attributes == {}
    assert by_id["4"].attributes == {"x": "explicit"}
    assert {i.row for i in report.issues if i.field == "attributes"} == {2, 3}


# --------------------------------------------------------------------------- media


def test_media_escaping_missing_and_empty(tmp_path: Path) -> None:
    shop = tmp_path / "shop"
    good = _jpeg(shop / "img" / "ok.jpg")
    outside = _jpeg(tmp_path / "private" / "secret.jpg")
    (shop / "img" / "empty.jpg").write_bytes(b"")
    (shop / "img" / "link.jpg").symlink_to(outside)
    cat = _jsonl(
        shop / "c.jsonl",
        [
            {"id": "dotdot", "title": "t", "image": "../private/secret.jpg"},
            {"id": "abs", "title": "t", "image": str(outside)},
            {"id": "link", "title": "t", "image": "img/link.jpg"},
            {"id": "missing", "title": "t", "image": "img/none.jpg"},
            {"id": "empty", "title": "t", "image": "img/empty.jpg"},
            {"id": "many", "title": "t", "image": ["img/ok.jpg", "img/none.jpg", "img/ok.jpg"]},
            {"id": "pipe", "title": "t", "images": "img/ok.jpg|http://cdn.example/x.jpg"},
            {
                "id": "remote",
                "title": "t",
                "image": "https://cdn.example/x.jpg",
                "image_url": "http://x/y.jpg",
            },
        ],
    )
    items, report = _read(cat)
    by_id = _by_id(items)
    assert len(items) == 8  # media problems never drop an item that has text
    for pid in ("dotdot", "abs", "link", "missing", "empty", "remote"):
        assert by_id[pid].images == []
    assert by_id["many"].images == [str(good.resolve())]
    assert by_id["pipe"].images == [str(good.resolve())]
    reasons = {i.id: i.reason for i in report.issues}
    for pid in ("dotdot", "abs", "link"):
        assert "outside the allowed media folders" in reasons[pid]
    assert "not found" in reasons["missing"] and "empty" in reasons["empty"]
    assert "not found" in reasons["many"]
    assert all(i.field == "image" and i.action == "indexed without image" for i in report.issues)
    assert "remote" not in reasons and "pipe" not in reasons


def test_media_roots_allow_other_folders(tmp_path: Path) -> None:
    media = tmp_path / "media"
    img = _jpeg(media / "p.jpg")
    (tmp_path / "cat").mkdir()
    cat = _jsonl(tmp_path / "cat" / "c.jsonl", [{"id": "1", "title": "t", "image": str(img)}])
    items, report = _read(cat)
    assert items[0].images == [] and "outside" in report.issues[0].reason
    items, report = _read(cat, media_roots=[media])
    assert items[0].images == [str(img.resolve())] and report.issues == []
    with pytest.raises(ConfigError, match="media root"):
        read_catalog(cat, report=IngestReport(), media_roots=[tmp_path / "nope"])


def test_image_only_item_whose_image_is_unusable_is_skipped(tmp_path: Path) -> None:
    items, report = _read(_jsonl(tmp_path / "c.jsonl", [{"id": "x", "image": "gone.jpg"}]))
    assert items == []
    issue = _only(report, action="skipped")
    assert "no title, description, image or video" in issue.reason and "gone.jpg" in issue.reason


def test_video(tmp_path: Path) -> None:
    (tmp_path / "clip.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42")
    cat = _jsonl(
        tmp_path / "c.jsonl",
        [{"id": "v", "title": "t", "video": "clip.mp4"}, {"id": "w", "title": "t", "video": "none.mp4"}],
    )
    items, report = _read(cat)
    assert _by_id(items)["v"].video == str((tmp_path / "clip.mp4").resolve())
    assert _by_id(items)["w"].video is None
    issue = _only(report, id="w")
    assert issue.field == "video" and issue.action == "indexed without video"


# --------------------------------------------------------------------------- CSV / TSV


def test_csv(tmp_path: Path) -> None:
    _jpeg(tmp_path / "a.jpg")
    _jpeg(tmp_path / "b.jpg")
    cat = tmp_path / "c.csv"
    with open(cat, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(
            ["ID", "Title", "description", "category", "categories", "price", "attributes", "image", "fit"]
        )
        w.writerow(
            [
                "1",
                "Tee",
                "line one\nline two",
                "Men>Tops",
                "Sale|Men > Tops",
                "9.5",
                '{"size": "M"}',
                "a.jpg",
                "",
            ]
        )
        w.writerow([])
        w.writerow(["2", "Cap", "", "", '["Hats", "Sale"]', "abc", "", '["a.jpg", "b.jpg"]', "slim"])
        w.writerow(["", "No id", "", "", "", "", "", "", ""])
        w.writerow(["1", "Tee v2", "", "", "", "", "", "", ""])
    items, report = _read(cat)
    by_id = _by_id(items)
    assert set(by_id) == {"1", "2"} and [p.id for p in items] == ["2", "1"]
    assert by_id["1"].title == "Tee v2"
    cap = by_id["2"]
    assert cap.category == "Hats" and cap.categories == ["Hats", "Sale"]
    assert cap.attributes == {"fit": "slim"} and cap.price is None and len(cap.images) == 2
    # Line numbers are the file's: header is line 1, the quoted two-line description spans 2-3.
    assert _only(report, field="price").row == 5
    assert _only(report, action="skipped").row == 6
    replaced = _only(report, action="replaced")
    assert replaced.row == 2 and "row 2 replaced by row 7" in replaced.reason
    assert _balanced(report)

    # The first version of row "1" had the JSON attributes and '|' categories.
    with open(tmp_path / "one.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "title", "categories", "attributes"])
        w.writerow(["1", "Tee", "Sale|Men > Tops", '{"size": "M", "tags": ["a", "b"]}'])
    (p,) = _read(tmp_path / "one.csv")[0]
    assert p.categories == ["Sale", "Men > Tops"] and p.attributes == {"size": "M", "tags": "a|b"}


def test_csv_unclosed_quote_is_reported_where_it_opened(tmp_path: Path) -> None:
    # csv is lenient: a quote that never closes takes every later line into one field, so Q3 and
    # Q4 used to vanish into Q2's title with "no issues".
    (tmp_path / "m.csv").write_text('id,title\nQ1,a\nQ2,"bad\nQ3,c\nQ4,d\n', encoding="utf-8")
    items, report = _read(tmp_path / "m.csv")
    assert [(p.id, p.title) for p in items] == [("Q1", "a")]
    issue = _only(report, action="skipped")
    assert issue.file == str(tmp_path / "m.csv") and issue.row == 3 and issue.field == "title"
    assert "unclosed quote" in issue.reason and "line 3" in issue.reason and "line 5" in issue.reason
    (tmp_path / "nonl.csv").write_text('id,title,price\nQ1,first,1\nQ2,"bad,2\nQ3,c,3', encoding="utf-8")
    items, report = _read(tmp_path / "nonl.csv")
    assert [p.id for p in items] == ["Q1"] and _only(report, action="skipped").row == 3
    (tmp_path / "last.csv").write_text('id,title,price\nQ1,first,1\nQ2,"bad,2\n', encoding="utf-8")
    items, report = _read(tmp_path / "last.csv")  # its price would be lost inside the title
    assert [p.id for p in items] == ["Q1"] and "never closes" in _only(report, action="skipped").reason
    (tmp_path / "h.csv").write_text('id,"title\nQ1,a\n', encoding="utf-8")
    with pytest.raises(CatalogError, match="h.csv: a quote in the header never closes"):
        list(read_catalog(tmp_path / "h.csv", report=IngestReport()))


def test_csv_quoted_multiline_values_are_not_unclosed_quotes(tmp_path: Path) -> None:
    cat = tmp_path / "c.csv"
    with open(cat, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "title", "description"])
        w.writerow(["1", "Tee", 'line one\nsays "soft"\n'])
        w.writerow(["2", "Cap", "ends the file\non two lines\n"])  # the last record spans lines
    items, report = _read(cat)
    assert [(p.id, p.description) for p in items] == [
        ("1", 'line one\nsays "soft"'),
        ("2", "ends the file\non two lines"),
    ]
    assert report.issues == []
    cat.write_text('id,title\n1,"a\nb"', encoding="utf-8")  # closed at the very end, no newline
    items, report = _read(cat)
    assert [p.title for p in items] == ["a\nb"] and report.issues == []


def test_missing_id_column_hint_is_given_once(tmp_path: Path) -> None:
    (tmp_path / "c.csv").write_text("sku,title\nX1,one\nX2,two\nX3,three\n", encoding="utf-8")
    items, report = _read(tmp_path / "c.csv")
    assert items == [] and [i.row for i in report.by_action("skipped")] == [2, 3, 4]
    hints = [i for i in report.issues if "--map" in i.reason]
    assert len(hints) == 1 and hints[0].row == 2 and "sku, title" in hints[0].reason
    # an id column whose cell is blank is a missing id, not a missing column
    (tmp_path / "b.csv").write_text("id,title\n,one\n", encoding="utf-8")
    _, report = _read(tmp_path / "b.csv")
    assert _only(report, action="skipped").reason == "missing id"
    # and with the mapping the ids are found
    items, report = _read(tmp_path / "c.csv", field_map={"sku": "id"})
    assert [p.id for p in items] == ["X1", "X2", "X3"] and report.issues == []


def test_kinds_take_the_right_article(tmp_path: Path) -> None:
    rows = [{"id": "1", "title": "t", "attributes": [1, 2]}, {"id": ["x"], "title": "t"}]
    _, report = _read(_jsonl(tmp_path / "c.jsonl", rows))
    assert "attributes is an array, not an object" in _only(report, field="attributes").reason
    assert "got an array" in _only(report, field="id").reason


def test_csv_non_utf8_extra_values_semicolons_and_tsv(tmp_path: Path) -> None:
    (tmp_path / "c.csv").write_bytes(b"id,title\n1,caf\xe9\n2,ok,surplus\n")
    items, report = _read(tmp_path / "c.csv")
    assert _by_id(items)["1"].title == "caf\ufffd"
    assert _only(report, row=2).reason.startswith("invalid UTF-8")
    assert "beyond the header" in _only(report, row=3).reason

    (tmp_path / "s.csv").write_text("id;title;price\nA;Chair;12.5\n", encoding="utf-8")
    (tmp_path / "t.tsv").write_text("id\ttitle\tprice\nA\tChair\t12.5\n", encoding="utf-8")
    for name in ("s.csv", "t.tsv"):
        items, report = _read(tmp_path / name)
        assert [(p.id, p.title, p.price) for p in items] == [("A", "Chair", 12.5)] and not report.issues


# --------------------------------------------------------------------------- Parquet


def test_parquet(tmp_path: Path) -> None:
    _jpeg(tmp_path / "img.jpg")
    table = pa.table(
        {
            "product_id": pa.array([1, 2, 3, 1], pa.int64()),
            "title": ["Lamp", None, "Desk", "Lamp v2"],
            "price": [10.0, 5.0, None, 11.0],
            "attributes": pa.array(
                [{"color": "red", "watts": 40}, None, {"color": "oak", "watts": None}, None],
                pa.struct([("color", pa.string()), ("watts", pa.int64())]),
            ),
            "images": [["img.jpg"], [], ["img.jpg", "missing.jpg"], None],
            "room": ["office", "", "office", None],
        }
    )
    pq.write_table(table, tmp_path / "c.parquet", row_group_size=2)
    items, report = _read(tmp_path / "c.parquet", field_map={"product_id": "id"})
    by_id = _by_id(items)
    assert set(by_id) == {"1", "3"}
    assert by_id["1"].title == "Lamp v2" and by_id["1"].price == 11.0
    desk = by_id["3"]
    assert desk.attributes == {"color": "oak", "room": "office"} and desk.price is None
    assert desk.images == [str((tmp_path / "img.jpg").resolve())]
    assert _only(report, action="skipped").row == 2  # no title, no image
    assert _only(report, action="indexed without image").row == 3
    assert _only(report, action="replaced").row == 1
    assert report.rows_read == 4 and _balanced(report)


def test_empty_parquet(tmp_path: Path) -> None:
    pq.write_table(pa.table({"id": pa.array([], pa.string())}), tmp_path / "e.parquet")
    items, report = _read(tmp_path / "e.parquet")
    assert items == [] and _only(report, action="warning").reason == "catalog file is empty"


def test_parquet_nan_price_is_reported(tmp_path: Path) -> None:
    pq.write_table(
        pa.table({"id": ["a", "b"], "title": ["t", "t"], "price": [float("nan"), None]}),
        tmp_path / "n.parquet",
    )
    items, report = _read(tmp_path / "n.parquet")
    assert [p.price for p in items] == [None, None]
    assert _only(report, field="price").row == 1  # NaN was written; a null is just no price


# --------------------------------------------------------------------------- several files and the report


def test_iter_catalogs_resolves_duplicates_across_files(tmp_path: Path) -> None:
    a = _jsonl(tmp_path / "a.jsonl", [{"id": "1", "title": "old"}, {"id": "2", "title": "two"}])
    b = _jsonl(tmp_path / "b.jsonl", [{"id": "1", "title": "new"}])
    report = IngestReport()
    items = list(iter_catalogs([a, b], report=report))
    assert {p.id: p.title for p in items} == {"1": "new", "2": "two"}
    issue = _only(report, action="replaced")
    assert issue.file == str(a) and issue.row == 1 and str(b) in issue.reason
    assert report.files == [str(a), str(b)]


def test_report_summary_and_round_trip(tmp_path: Path) -> None:
    rows = [{"id": str(i), "title": "t", "price": "n/a"} for i in range(25)]
    items, report = _read(_jsonl(tmp_path / "c.jsonl", rows))
    assert len(items) == 25 and len(report) == 25
    text = report.summary()
    assert "25 rows read, 25 items accepted, 0 skipped, 0 replaced" in text
    assert "25 warning" in text and "... 5 more" in text
    assert text.count("kept with no price") == 20
    report.save(tmp_path / "report.json")
    loaded = IngestReport.load(tmp_path / "report.json")
    assert loaded.to_dict() == report.to_dict()
    counts = json.loads((tmp_path / "report.json").read_text())["counts"]
    assert counts == {
        "rows_read": 25,
        "accepted": 25,
        "issues": 25,
        "skipped": 0,
        "replaced": 0,
        "indexed without image": 0,
        "indexed without video": 0,
        "warning": 25,
    }
    with pytest.raises(ValueError, match="unknown ingest action"):
        report.add("f", 1, None, None, "why", "ignored")
    issue = report.add("f.jsonl", 3, "x", "image", "corrupt image", "indexed without image")
    assert str(issue) == "f.jsonl:3 id=x [image]: corrupt image (indexed without image)"
    assert report.counts()["indexed without image"] == 1
    # Issues found outside any file (API items, encode time) carry no file name.
    encode_time = report.add(file=None, id="y", field="image", reason="bad", action="indexed without image")
    assert encode_time.file is None and str(encode_time) == "- id=y [image]: bad (indexed without image)"


# --------------------------------------------------------------------------- real data


@pytest.mark.slow
def test_real_luma_catalog() -> None:
    path = DATA / "luma" / "catalog.jsonl"
    if not path.exists():
        pytest.skip(f"shared data not found at {path}")
    items, report = _read(path)
    assert len(items) == 461 and report.accepted == 461 and report.issues == []
    root = (DATA / "luma").resolve()
    assert all(len(p.images) == 1 and Path(p.images[0]).is_file() for p in items)
    assert all(Path(p.images[0]).is_relative_to(root) for p in items)
    assert all(p.title and p.category and p.price is not None for p in items)
    assert len({p.id for p in items}) == 461


@pytest.mark.slow
def test_real_homedepot_first_2000_rows(tmp_path: Path) -> None:
    path = DATA / "homedepot" / "catalog.jsonl"
    if not path.exists():
        pytest.skip(f"shared data not found at {path}")
    with open(path, "rb") as src:
        head = b"".join(line for _, line in zip(range(2000), src, strict=False))
    (tmp_path / "hd.jsonl").write_bytes(head)
    items, report = _read(tmp_path / "hd.jsonl")
    assert report.rows_read == 2000 and report.accepted == 2000 and report.issues == []
    assert len({p.id for p in items}) == 2000 and all(p.title for p in items)
    assert items[0].id == "100001" and items[0].title == "Simpson Strong-Tie 12-Gauge Angle"
