"""Catalog ingestion: JSON Lines, JSON arrays, CSV/TSV and Parquet files into validated Products.

Real catalogs are messy, so a bad row never stops a run: it is dropped or repaired and recorded in
the :class:`~indexer.report.IngestReport` with its file, row, id and field. Only a file that cannot
be read at all (missing, unknown format, not Parquet, a JSON array that does not parse) raises
:class:`~shopsearch.errors.CatalogError`, and that is checked when ``read_catalog`` is called, not at
the first ``next()``.

Row rules (why each exists):

- ``id`` is required (coerced to str, stripped); a row without one is skipped. When an id repeats,
  the last row wins (a later export corrects an earlier one); the earlier row is reported as
  ``"replaced"`` naming both rows. Catalogs are therefore buffered before anything is yielded
  (fine up to ~1M rows); items come out in the order of their winning row.
- An item needs something to search by: a title, a description, an image or a video. A row with
  none of these is skipped. A row with a description but no title is kept with a warning.
- ``category`` ("A > B > C") and ``categories`` (list, JSON list string or ``"a|b"``) are
  normalised; an item without ``category`` takes the first of its ``categories``.
- ``price`` accepts numbers and strings such as ``"19.99"``, ``"$1,299.00"``, ``"EUR 5"``; anything
  else (or a negative price) keeps the item with ``price=None`` and a warning on field ``price``.
- ``attributes`` is an object (or, in CSV, a JSON object string); values keep str/int/float/bool
  and flatten lists to ``"a|b|c"`` and objects to JSON text. Columns that are not ours go into
  ``attributes`` too (an explicit ``attributes`` entry wins over a column of the same name).
- ``image``/``images`` (one path, a list, a JSON list string or ``"a.jpg|b.jpg"``) and ``video``
  are relative to the catalog file's folder unless absolute. Remote URLs (``image_url`` or an
  ``http://`` image) are ignored without complaint: the indexer works offline. A local path that
  resolves outside every media root, is missing, is not a regular file or is empty is reported
  (``"indexed without image"``/``"indexed without video"``) and never opened. Images are not
  decoded here: :func:`indexer.media.load_image` does that at encode time.
- Text that is not valid UTF-8: the line is decoded with ``errors="replace"`` (U+FFFD) and a
  warning names the row; if the repaired line still does not parse it is skipped as malformed.
  (For a JSON array file the whole file is decoded that way, with one file-level warning.)
  JSON may escape a lone surrogate (``"\\ud800"``), which no encoder can take: it becomes U+FFFD
  too, with a warning naming the row and field.
- A CSV quote that never closes would swallow the rest of the file into one field: that row is
  skipped with the line it opened on, the rows before it are kept.
- Column names are matched case-insensitively to our field names after ``field_map`` (the user's
  column -> our field, e.g. ``{"sku": "id", "name": "title"}``) has been applied.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import json
import math
import os
import re
import stat
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal
from pathlib import Path
from typing import Any, BinaryIO

from indexer.media import check_media_file, is_remote
from indexer.product import AttributeValue, Product, normalize_category
from indexer.report import IngestReport
from shopsearch.errors import CatalogError, ConfigError, MediaError

#: File endings we read, and the reader each one uses (".gz" may follow the text formats).
CATALOG_FORMATS: dict[str, str] = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
}

#: Our field names; any other column becomes an attribute.
KNOWN_FIELDS: frozenset[str] = frozenset(
    {
        "id",
        "title",
        "description",
        "brand",
        "category",
        "categories",
        "price",
        "attributes",
        "image",
        "images",
        "video",
        "videos",
        "image_url",
        "image_urls",
        "video_url",
    }
)
_REMOTE_ONLY_FIELDS = frozenset({"image_url", "image_urls", "video_url"})

_PARQUET_BATCH_ROWS = 4096
_CSV_FIELD_LIMIT = 64 * 1024 * 1024

# A JSON escape of a UTF-16 surrogate (cheap test before looking for lone ones), and a lone one
# in a str: json.loads pairs up the valid ones, so any left are unpaired.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")

_PRICE_RE = re.compile(
    r"""^(?:[A-Za-z]{1,3}\s*)?[$€£¥₹]?\s*
        (?P<num>[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[+-]?\.\d+)
        \s*[$€£¥₹]?\s*(?:[A-Za-z]{3})?$""",
    re.VERBOSE,
)


def catalog_format(path: str | os.PathLike[str]) -> str:
    """'jsonl', 'json', 'csv', 'tsv' or 'parquet' from the file name; CatalogError otherwise."""
    name = Path(path).name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
        if name.endswith(".parquet"):
            raise CatalogError(f"{path}: compressed Parquet is not supported (Parquet compresses itself)")
    for ext, fmt in CATALOG_FORMATS.items():
        if name.endswith(ext):
            return fmt
    supported = ", ".join(CATALOG_FORMATS)
    raise CatalogError(f"{path}: unknown catalog format (supported: {supported}, optionally .gz)")


def read_catalog(
    path: str | os.PathLike[str],
    *,
    field_map: Mapping[str, str] | None = None,
    media_roots: Sequence[str | os.PathLike[str]] | None = None,
    report: IngestReport,
) -> Iterator[Product]:
    """Validated Products from one catalog file; problems go to ``report`` (see module docstring).

    ``media_roots``: folders media may come from; default the catalog file's folder.
    Raises CatalogError (unreadable file) or ConfigError (bad field_map / media root) right away.
    """
    return iter_catalogs([path], field_map=field_map, media_roots=media_roots, report=report)


def iter_catalogs(
    paths: Iterable[str | os.PathLike[str]],
    *,
    field_map: Mapping[str, str] | None = None,
    media_roots: Sequence[str | os.PathLike[str]] | None = None,
    report: IngestReport,
) -> Iterator[Product]:
    """Like :func:`read_catalog` over several files; an id repeated across files also resolves to
    the last row read. Without ``media_roots`` each file's own folder is its only root."""
    files = [Path(p) for p in paths]
    if not files:
        raise CatalogError("no catalog file given")
    for f in files:
        _check_readable(f)
    fmap = _check_field_map(field_map)
    roots = _check_roots(media_roots) if media_roots else None
    return _generate(files, fmap, roots, report)


# --------------------------------------------------------------------------- driving


@dataclass
class _Entry:
    product: Product
    file: str
    row: int


def _generate(
    files: list[Path], fmap: dict[str, str], roots: tuple[Path, ...] | None, report: IngestReport
) -> Iterator[Product]:
    items: dict[str, _Entry] = {}
    for f in files:
        _FileIngest(f, fmap, roots, report, items).run()
    for entry in items.values():
        report.count_accepted()
        yield entry.product


def _check_readable(path: Path) -> None:
    if path.is_dir():  # before the format check: a folder "products" is not an unknown format
        raise CatalogError(f"{path}: is a folder, not a catalog file")
    catalog_format(path)
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            raise CatalogError(f"{path}: is not a regular file")
        with open(path, "rb"):
            pass
    except FileNotFoundError:
        raise CatalogError(f"{path}: catalog file not found") from None
    except OSError as exc:
        raise CatalogError(f"{path}: cannot read catalog file ({exc.strerror or exc})") from None


def _check_field_map(field_map: Mapping[str, str] | None) -> dict[str, str]:
    if not field_map:
        return {}
    out: dict[str, str] = {}
    for src, dst in field_map.items():
        if not isinstance(src, str) or not isinstance(dst, str) or not src.strip() or not dst.strip():
            raise ConfigError(
                f"field_map entries must map a column name to a field name, got {src!r}: {dst!r}"
            )
        out[src.strip()] = dst.strip().lower() if dst.strip().lower() in KNOWN_FIELDS else dst.strip()
    return out


def _check_roots(media_roots: Sequence[str | os.PathLike[str]]) -> tuple[Path, ...]:
    roots = []
    for r in media_roots:
        p = Path(r).expanduser()
        if not p.is_dir():
            raise ConfigError(f"media root {os.fspath(r)!r} is not an existing folder")
        roots.append(p.resolve())
    return tuple(roots)


class _Skip(Exception):
    """A row that cannot become a product; the message is the report's reason."""

    def __init__(self, reason: str, field: str | None = None, *, id: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.field = field
        self.id = id


@dataclass
class _Note:
    field: str | None
    reason: str
    action: str = "warning"


class _FileIngest:
    """Reads one file into the shared ``items`` dict."""

    def __init__(
        self,
        path: Path,
        fmap: dict[str, str],
        roots: tuple[Path, ...] | None,
        report: IngestReport,
        items: dict[str, _Entry],
    ) -> None:
        self.path = path
        self.name = str(path)
        self.fmt = catalog_format(path)
        self.fmap = fmap
        self.base_dir = path.resolve().parent
        self.roots = roots if roots is not None else (self.base_dir,)
        self.report = report
        self.items = items
        self.rows = 0
        self.mapped_seen: set[str] = set()
        self.id_column_seen = False  # until a row has one, a row without an id column gets a hint

    def run(self) -> None:
        self.report.add_file(self.name)
        try:
            size = self.path.stat().st_size
        except OSError as exc:  # gone since read_catalog() checked it
            raise CatalogError(f"{self.name}: cannot read catalog file ({exc.strerror or exc})") from None
        if size == 0:
            self.warn_file("catalog file is empty")
            return
        readers = {
            "jsonl": self._jsonl_rows,
            "json": self._json_rows,
            "csv": self._csv_rows,
            "tsv": self._csv_rows,
            "parquet": self._parquet_rows,
        }
        for row, raw, notes in readers[self.fmt]():
            self.rows += 1
            self.report.count_row()
            self._ingest_row(row, raw, notes)
        if self.rows == 0:
            self.warn_file("catalog file is empty")
        missing = sorted(set(self.fmap) - self.mapped_seen)
        if self.rows and missing:
            self.warn_file(f"field_map column(s) not found in this file: {', '.join(missing)}")

    def warn_file(self, reason: str) -> None:
        self.report.add(self.name, None, None, None, reason, "warning")

    # --- one row

    def _ingest_row(self, row: int, raw: Any, notes: list[_Note]) -> None:
        row_id: str | None = None
        try:
            if isinstance(raw, _Skip):
                raise raw
            if not isinstance(raw, dict):
                raise _Skip(f"row is a JSON {_json_kind(raw)}, not an object")
            product, more = self._build(raw)
            row_id = product.id
        except _Skip as skip:
            row_id = _peek_id(raw, self.fmap) if isinstance(raw, dict) else skip.id
            reason = skip.reason
            for n in notes:  # e.g. invalid UTF-8: say so, it is probably why the row broke
                reason += f"; {n.reason}"
            self.report.add(self.name, row, row_id, skip.field, reason, "skipped")
            return
        for n in [*notes, *more]:
            self.report.add(self.name, row, row_id, n.field, n.reason, n.action)
        previous = self.items.pop(product.id, None)
        if previous is not None:
            where = f"row {row}" if previous.file == self.name else f"{self.name} row {row}"
            self.report.add(
                previous.file,
                previous.row,
                product.id,
                "id",
                f"duplicate id {product.id!r}: row {previous.row} replaced by {where} (last wins)",
                "replaced",
            )
        self.items[product.id] = _Entry(product, self.name, row)

    def _split_fields(self, raw: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """(our fields, other columns) after field_map; a mapped column beats an unmapped one."""
        fields: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        mapped: list[tuple[str, Any]] = []
        for key, value in raw.items():
            k = str(key).strip()
            if not k:
                continue
            if k in self.fmap:
                self.mapped_seen.add(k)
                mapped.append((self.fmap[k], value))
            elif k.lower() in KNOWN_FIELDS:
                fields[k.lower()] = value
            else:
                extra[k] = value
        for target, value in mapped:
            if target in KNOWN_FIELDS:
                fields[target] = value
            else:
                extra[target] = value
        return fields, extra

    def _build(self, raw: dict[str, Any]) -> tuple[Product, list[_Note]]:
        fields, extra = self._split_fields(raw)
        notes: list[_Note] = []
        if "id" in fields:
            self.id_column_seen = True
        elif not self.id_column_seen:
            # said once: every row of a file whose ids are under another name would repeat it
            self.id_column_seen = True
            columns = ", ".join(_clip(str(k).strip(), 30) for k in list(raw)[:8])
            columns += ", ..." if len(raw) > 8 else ""
            raise _Skip(
                f"missing id: this row has no 'id' column (it has: {columns}); "
                "if another column holds the ids, map it: --map COLUMN=id",
                "id",
            )
        pid = _coerce_id(fields.get("id"))

        def text(name: str) -> str:
            value, note = _text(fields.get(name), name)
            if note:
                notes.append(note)
            return value

        title, description, brand = text("title"), text("description"), text("brand")

        category = ""
        categories: list[str] = []
        cat = fields.get("category")
        if isinstance(cat, (list, tuple)):
            cats = [c for c in (normalize_category(x) for x in _string_list(cat)) if c]
            category, categories = (cats[0], cats[1:]) if cats else ("", [])
        elif not _missing(cat):
            category = normalize_category(_text(cat, "category")[0])
        for c in _string_list(fields.get("categories")):
            c = normalize_category(c)
            if c and c not in categories:
                categories.append(c)
        if not category and categories:
            category = categories[0]

        price, price_note = _parse_price(fields.get("price"))
        if price_note:
            notes.append(price_note)

        attributes = self._attributes(fields.get("attributes"), extra, notes)

        media_problems: list[_Note] = []
        images = self._media(fields, ("image", "images"), "image", media_problems)
        videos = self._media(fields, ("video", "videos"), "video", media_problems)
        video = videos[0] if videos else None
        if len(videos) > 1:
            notes.append(_Note("video", f"{len(videos) - 1} extra video(s) ignored; an item keeps one video"))

        if not (title or description or images or video):
            reason = "no title, description, image or video"
            if media_problems:
                reason += " (" + "; ".join(p.reason for p in media_problems) + ")"
            raise _Skip(reason)
        if not title and not (images or video):
            notes.append(_Note("title", "no title; item is searchable by its description only"))
        notes.extend(media_problems)
        product = Product(
            id=pid,
            title=title,
            description=description,
            brand=brand,
            category=category,
            categories=categories,
            price=price,
            attributes=attributes,
            images=images,
            video=video,
        )
        return product, notes

    def _attributes(self, value: Any, extra: dict[str, Any], notes: list[_Note]) -> dict[str, AttributeValue]:
        out: dict[str, AttributeValue] = {}
        for k, v in extra.items():
            av = _attr_value(v)
            if av is not None:
                out[k] = av
        if _missing(value):
            return out
        obj = value
        if isinstance(obj, str):
            s = obj.strip()
            try:
                obj = json.loads(s) if s else {}
            except json.JSONDecodeError as exc:
                notes.append(_Note("attributes", f"attributes is not valid JSON ({exc.msg}); ignored"))
                return out
            except (ValueError, RecursionError) as exc:
                notes.append(_Note("attributes", f"attributes is {_json_error(exc)}; ignored"))
                return out
        if isinstance(obj, list) and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in obj):
            obj = dict(obj)  # Parquet map<string, *> columns arrive as (key, value) pairs
        if not isinstance(obj, dict):
            notes.append(_Note("attributes", f"attributes is {_a(_json_kind(obj))}, not an object; ignored"))
            return out
        for k, v in obj.items():
            key = str(k).strip()
            av = _attr_value(v)
            if key and av is not None:
                out[key] = av
        return out

    def _media(
        self, fields: dict[str, Any], names: tuple[str, ...], kind: str, problems: list[_Note]
    ) -> list[str]:
        found: list[str] = []
        for name in names:
            for ref in _string_list(fields.get(name)):
                if is_remote(ref):
                    continue
                try:
                    resolved = str(check_media_file(ref, base_dir=self.base_dir, roots=self.roots, kind=kind))
                except MediaError as exc:
                    problems.append(_Note(kind, exc.message, f"indexed without {kind}"))
                    continue
                if resolved not in found:
                    found.append(resolved)
        return found

    # --- readers: yield (1-based row, parsed row or _Skip, notes)

    def _open(self) -> BinaryIO:
        try:
            if self.name.lower().endswith(".gz"):
                return gzip.open(self.path, "rb")  # type: ignore[return-value]
            return open(self.path, "rb")
        except OSError as exc:
            raise CatalogError(f"{self.name}: cannot read catalog file ({exc.strerror or exc})") from None

    def _lines(self, fh: BinaryIO) -> Iterator[tuple[int, str, bool]]:
        """(line number, text, had invalid UTF-8) for each physical line."""
        try:
            for n, raw in enumerate(fh, 1):
                if n == 1:
                    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
                        raise CatalogError(f"{self.name}: file is UTF-16 encoded; save it as UTF-8")
                    if raw.startswith(codecs.BOM_UTF8):
                        raw = raw[len(codecs.BOM_UTF8) :]
                try:
                    yield n, raw.decode("utf-8"), False
                except UnicodeDecodeError:
                    yield n, raw.decode("utf-8", errors="replace"), True
        except (OSError, EOFError, zlib.error) as exc:  # e.g. a corrupt .gz
            raise CatalogError(f"{self.name}: cannot read catalog file ({exc})") from None

    def _jsonl_rows(self) -> Iterator[tuple[int, Any, list[_Note]]]:
        with self._open() as fh:
            yield from self._parse_jsonl(self._lines(fh))

    def _parse_jsonl(self, lines: Iterable[tuple[int, str, bool]]) -> Iterator[tuple[int, Any, list[_Note]]]:
        first = True
        for n, text, bad in lines:
            if not text.strip():
                continue
            notes = [_Note(None, "invalid UTF-8 bytes replaced with U+FFFD")] if bad else []
            text = text.rstrip("\r\n")
            try:
                obj: Any = json.loads(text)
            except (ValueError, RecursionError) as exc:  # ValueError: a number over 4300 digits
                obj = _Skip(_json_error(exc), id=self._guess_id(text))
            else:
                if _SURROGATE_ESCAPE.search(text):
                    obj = _scrub_surrogates(obj, notes)
            if first:  # a whole-file JSON document in a JSON Lines file: say what it looks like
                first = False
                hint = _jsonl_hint(text)
                if hint and isinstance(obj, (_Skip, list)):
                    reason = obj.reason if isinstance(obj, _Skip) else "row is a JSON array, not an object"
                    obj = _Skip(f"{reason}; {hint}", id=obj.id if isinstance(obj, _Skip) else None)
            yield n, obj, notes

    def _guess_id(self, text: str) -> str | None:
        """The id of a line that does not parse, when it can be seen, so the report can name it."""
        keys = ["id", *(src for src, dst in self.fmap.items() if dst == "id")]
        for key in keys:
            m = re.search(r'"' + re.escape(key) + r'"\s*:\s*(?:"((?:[^"\\]|\\.)*)"|(-?\d+))', text)
            if m:
                value = (m.group(1) if m.group(1) is not None else m.group(2)).strip()
                return value or None
        return None

    def _json_rows(self) -> Iterator[tuple[int, Any, list[_Note]]]:
        with self._open() as fh:
            try:
                data = fh.read()
            except (OSError, EOFError, zlib.error) as exc:
                raise CatalogError(f"{self.name}: cannot read catalog file ({exc})") from None
        if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            raise CatalogError(f"{self.name}: file is UTF-16 encoded; save it as UTF-8")
        if data.startswith(codecs.BOM_UTF8):
            data = data[len(codecs.BOM_UTF8) :]
        if not data.lstrip().startswith(b"["):
            yield from self._parse_jsonl(self._lines(io.BytesIO(data)))
            return
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = data.decode("utf-8", errors="replace")
            self.warn_file("file is not valid UTF-8; invalid bytes replaced with U+FFFD")
        try:
            array = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CatalogError(
                f"{self.name}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); "
                "a .json catalog is either one JSON array or JSON Lines"
            ) from None
        except (ValueError, RecursionError) as exc:
            raise CatalogError(f"{self.name}: {_json_error(exc)}") from None
        if not isinstance(array, list):
            raise CatalogError(f"{self.name}: expected a JSON array of products")
        surrogates = bool(_SURROGATE_ESCAPE.search(text))
        for i, obj in enumerate(array, 1):
            notes: list[_Note] = []
            yield i, _scrub_surrogates(obj, notes) if surrogates else obj, notes

    def _csv_rows(self) -> Iterator[tuple[int, Any, list[_Note]]]:
        bad_lines: set[int] = set()
        pending: list[str] = []  # the lines of the record being read (csv reads no further ahead)

        def feed(lines: Iterator[tuple[int, str, bool]]) -> Iterator[str]:
            for n, text, bad in lines:
                if bad:
                    bad_lines.add(n)
                pending.append(text)
                yield text

        old_limit = csv.field_size_limit()
        csv.field_size_limit(max(old_limit, _CSV_FIELD_LIMIT))  # long descriptions; restored below
        try:
            with self._open() as fh:
                lines = self._lines(fh)
                first = next(lines, None)
                if first is None:
                    return
                delimiter = "\t" if self.fmt == "tsv" else _guess_delimiter(first[1])

                def all_lines() -> Iterator[tuple[int, str, bool]]:
                    yield first
                    yield from lines

                reader = csv.reader(feed(all_lines()), delimiter=delimiter)
                header = self._csv_header(reader)
                if header is None:
                    return
                if _open_quote_at_end(pending, delimiter):
                    raise CatalogError(
                        f"{self.name}: a quote in the header never closes, so the whole file reads as "
                        "the header; close the quote"
                    )
                if any(self.fmap.get(h, h.lower()) == "id" for h in header):
                    self.id_column_seen = True  # a blank id cell is a missing id, not a missing column
                end = reader.line_num
                while True:
                    start = end + 1
                    pending.clear()
                    try:
                        record = next(reader)
                    except StopIteration:
                        break
                    except csv.Error as exc:
                        end = reader.line_num
                        yield start, _Skip(f"CSV parse error: {exc}"), []
                        continue
                    end = reader.line_num
                    if not any(cell.strip() for cell in record):
                        continue
                    # A quote that never closes swallows every later line into this row's last
                    # field (csv is lenient); only a record spanning lines can have done that.
                    if (end > start or record[-1].endswith(("\n", "\r"))) and _open_quote_at_end(
                        pending, delimiter
                    ):
                        column = header[len(record) - 1] if len(record) <= len(header) else None
                        lost = (
                            f"runs to the end of the file (line {end}): this row and the {end - start} "
                            "line(s) after it were not read"
                            if end > start
                            else "never closes: row not read"
                        )
                        reason = (
                            f"unclosed quote: the {column or 'last'} value opened on line {start} {lost}; "
                            'close the quote (a quote inside a quoted value is written "")'
                        )
                        yield start, _Skip(reason, column), []
                        break
                    notes = []
                    if bad_lines.intersection(range(start, end + 1)):
                        notes.append(_Note(None, "invalid UTF-8 bytes replaced with U+FFFD"))
                    if len(record) > len(header):
                        notes.append(
                            _Note(
                                None,
                                f"{len(record) - len(header)} value(s) beyond the header's columns ignored",
                            )
                        )
                    row = {}
                    for name, cell in zip(header, record, strict=False):
                        if name and cell.strip():
                            row[name] = cell
                    yield start, row, notes
        finally:
            csv.field_size_limit(old_limit)

    def _csv_header(self, reader: Any) -> list[str] | None:
        for record in reader:
            if not any(cell.strip() for cell in record):
                continue
            header = [cell.strip() for cell in record]
            if any(not h for h in header):
                self.warn_file("header has column(s) without a name; their values are ignored")
            dupes = sorted({h for h in header if h and header.count(h) > 1})
            if dupes:
                self.warn_file(f"header repeats column(s) {', '.join(dupes)}; the last one wins")
            return header
        return None

    def _parquet_rows(self) -> Iterator[tuple[int, Any, list[_Note]]]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(self.path)
        except (pa.ArrowException, OSError) as exc:
            raise CatalogError(f"{self.name}: not a readable Parquet file ({exc})") from None
        row = 0
        try:
            for batch in pf.iter_batches(batch_size=_PARQUET_BATCH_ROWS):
                for record in batch.to_pylist():
                    row += 1
                    yield row, record, []
        except (pa.ArrowException, OSError) as exc:
            raise CatalogError(f"{self.name}: Parquet data unreadable after row {row} ({exc})") from None


# --------------------------------------------------------------------------- value coercion


def _missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if value is None:
        return "null"
    return type(value).__name__


def _coerce_id(value: Any) -> str:
    if _missing(value):
        raise _Skip("missing id", "id")
    if isinstance(value, bool) or not isinstance(value, (str, int, float, Decimal, bytes)):
        raise _Skip(f"id must be a string or a number, got {_a(_json_kind(value))}", "id")
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _Skip(f"id must be a string or a number, got {value!r}", "id")
        value = int(value) if value.is_integer() else value
    pid = str(value).replace("\x00", "").strip()
    if not pid:
        raise _Skip("missing id", "id")
    return pid


def _peek_id(raw: dict[str, Any], fmap: dict[str, str]) -> str | None:
    """Best-effort id of a skipped row, for the report."""
    for key, value in raw.items():
        k = str(key).strip()
        if fmap.get(k, k.lower()) == "id":
            try:
                return _coerce_id(value)
            except _Skip:
                return None
    return None


def _scalar_str(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _text(value: Any, name: str) -> tuple[str, _Note | None]:
    """A text field as str; lists/objects are joined/serialised with a warning."""
    if _missing(value):
        return "", None
    note = None
    if isinstance(value, (list, tuple)):
        value = ", ".join(
            _scalar_str(v) for v in value if not _missing(v) and not isinstance(v, (dict, list))
        )
        note = _Note(name, f"{name} was a list; its items were joined")
    elif isinstance(value, dict):
        value = json.dumps(value, ensure_ascii=False, default=str)
        note = _Note(name, f"{name} was an object; kept as JSON text")
    else:
        value = _scalar_str(value)
    return value.replace("\x00", "").strip(), note


def _string_list(value: Any) -> list[str]:
    """One value or many: a list, a JSON list in a string, or 'a|b|c'."""
    if _missing(value):
        return []
    if isinstance(value, (list, tuple)):
        items: list[Any] = list(value)
    elif isinstance(value, str):
        s = value.strip()
        items = [s]
        if s.startswith("["):
            try:
                parsed = json.loads(s)
            except (ValueError, RecursionError):  # not JSON after all: one value
                parsed = None
            if isinstance(parsed, list):
                items = parsed
        elif "|" in s:
            items = s.split("|")
    else:
        items = [value]
    out = []
    for item in items:
        if _missing(item) or isinstance(item, (dict, list, tuple)):
            continue
        s = _scalar_str(item).strip()
        if s:
            out.append(s)
    return out


def _parse_price(value: Any) -> tuple[float | None, _Note | None]:
    # NaN is a value someone wrote (JSON NaN, a float column), not a blank: say it was dropped
    if _missing(value) and not (isinstance(value, float) and math.isnan(value)):
        return None, None
    number: float | None = None
    if isinstance(value, bool):
        number = None
    elif isinstance(value, (int, float, Decimal)):
        try:
            number = float(value)
        except OverflowError:  # an int too large for a float (JSON allows any number of digits)
            number = None
    elif isinstance(value, str):
        m = _PRICE_RE.match(value.strip())
        if m:
            number = float(m.group("num").replace(",", ""))
    if number is None or not math.isfinite(number):
        shown = repr(value) if isinstance(value, (str, int, float)) else repr(_json_kind(value))
        shown = _clip(shown)
        return None, _Note("price", f"price {shown} is not a number; item kept with no price")
    if number < 0:
        return None, _Note("price", f"price {_clip(repr(value))} is negative; item kept with no price")
    return number, None


def _clip(text: str, limit: int = 40) -> str:
    """Keeps a report line readable when the bad value is a 400-digit number or a whole page."""
    return text if len(text) <= limit else f"{text[: limit - 1]}… ({len(text):,} characters)"


def _a(word: str) -> str:
    return f"an {word}" if word[:1] in "aeiou" else f"a {word}"


def _jsonl_hint(first_line: str) -> str | None:
    s = first_line.strip()
    if s.startswith("["):
        return "a JSON array of products is read from a .json file, JSON Lines has one object per line"
    if s == "{":
        return "pretty-printed JSON? JSON Lines needs each product on one line"
    return None


def _json_error(exc: ValueError | RecursionError) -> str:
    """Why a JSON text did not parse, for the report."""
    if isinstance(exc, json.JSONDecodeError):
        return f"malformed JSON ({exc.msg} at column {exc.colno})"
    if isinstance(exc, RecursionError):
        return "malformed JSON (nested too deeply)"
    # int() refuses numbers of more than sys.get_int_max_str_digits() (4300) digits
    return f"unreadable JSON ({str(exc).split(';')[0]})"


def _scrub_surrogates(obj: Any, notes: list[_Note]) -> Any:
    """``obj`` with each lone surrogate (JSON ``"\\ud800"``) replaced by U+FFFD, and a note per
    top-level field that had one: no tokenizer or UTF-8 writer accepts them."""
    fields: list[str | None] = []
    try:
        if isinstance(obj, dict):
            out = {}
            for key, value in obj.items():
                k, bad_key = _scrub(key)
                v, bad_value = _scrub(value)
                out[k] = v
                if bad_key or bad_value:
                    fields.append(str(k))
            obj = out
        else:
            obj, bad = _scrub(obj)
            if bad:
                fields.append(None)
    except RecursionError:
        return _Skip("malformed JSON (nested too deeply)")
    notes.extend(_Note(f, "invalid \\u escape (lone surrogate) replaced with U+FFFD") for f in fields)
    return obj


def _scrub(value: Any) -> tuple[Any, bool]:
    if isinstance(value, str):
        fixed = _LONE_SURROGATE.sub("\ufffd", value)
        return fixed, fixed != value
    if isinstance(value, list):
        pairs = [_scrub(v) for v in value]
        return [v for v, _ in pairs], any(bad for _, bad in pairs)
    if isinstance(value, dict):
        out, any_bad = {}, False
        for key, v in value.items():
            k, bad_key = _scrub(key)
            out[k], bad_value = _scrub(v)
            any_bad = any_bad or bad_key or bad_value
        return out, any_bad
    return value, False


def _attr_value(value: Any) -> AttributeValue | None:
    if _missing(value):
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, str):
        return value.replace("\x00", "").strip()
    if isinstance(value, (list, tuple, set)):
        parts = [v for v in value if not _missing(v)]
        if all(not isinstance(v, (dict, list, tuple, set)) for v in parts):
            joined = "|".join(_scalar_str(v).strip() for v in parts)
            return joined or None
        return json.dumps(parts, ensure_ascii=False, default=str)
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False, default=str) if value else None
    return _scalar_str(value)


def _open_quote_at_end(lines: list[str], delimiter: str) -> bool:
    """True when a quoted field in ``lines`` is still open at their end. The strict parser says
    so ("unexpected end of data") where the lenient one we read with takes the rest as text."""
    try:
        for _ in csv.reader(lines, delimiter=delimiter, strict=True):
            pass
    except csv.Error as exc:
        return "unexpected end of data" in str(exc)
    return False


def _guess_delimiter(header_line: str) -> str:
    """Comma unless the header clearly uses ';' or a tab (spreadsheet exports in many locales)."""
    if "," in header_line:
        return ","
    counts = {d: header_line.count(d) for d in (";", "\t")}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] else ","
