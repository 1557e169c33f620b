"""Embedded BM25 engine on tantivy: one directory on disk, no server to run.

User text never reaches tantivy's query parser. It is split and stemmed by the same analyzer the
indexed fields use ("en_stem": simple tokenizer, drop tokens over 40 bytes, lowercase, English
Snowball stemmer) and the query is assembled from term queries, so query-syntax characters
(quotes, colons, brackets, +/-, ^, ~, *, AND/OR/NOT) are plain text by construction and cannot
raise. Filters are extra Must clauses of the same boolean query (scored 0), so they apply before
the top-k cut.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import tantivy

from indexer.filters import Filters, fold
from indexer.lexical.base import LexicalHit, LexicalIndex
from indexer.product import AttributeValue, Product, category_prefixes, normalize_category
from shopsearch.errors import (
    CatalogError,
    ConfigError,
    IndexCorruptError,
    IndexNotFoundError,
    InvalidQueryError,
    ShopSearchError,
)
from shopsearch.settings import DEFAULT_FIELD_BOOSTS

TEXT_FIELDS: tuple[str, ...] = ("title", "description", "brand", "category", "attributes")
_TOKENIZER = "en_stem"
# More distinct query terms than this add nothing to ranking but cost time (pasted paragraphs).
_MAX_QUERY_TERMS = 64
# Writer memory: tantivy needs >= 15 MB per thread; one thread because the host has 2 cores.
_WRITER_HEAP = 128_000_000
_WRITER_THREADS = 1

Occur = tantivy.Occur
Query = tantivy.Query


def _build_schema() -> tantivy.Schema:
    sb = tantivy.SchemaBuilder()
    sb.add_text_field("id", stored=True, tokenizer_name="raw", index_option="basic")
    for name in TEXT_FIELDS:
        # 'freq' is all BM25 needs; positions would only serve phrase queries, which we never build.
        sb.add_text_field(name, tokenizer_name=_TOKENIZER, index_option="freq")
    for name in ("brand_kw", "category_kw", "attr_kw"):
        sb.add_text_field(name, tokenizer_name="raw", index_option="basic")
    sb.add_float_field("price", indexed=True, fast=True)
    return sb.build()


def _build_analyzer() -> tantivy.TextAnalyzer:
    """The query-side twin of tantivy's built-in "en_stem" tokenizer (same chain, same order)."""
    return (
        tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple())
        .filter(tantivy.Filter.remove_long(40))
        .filter(tantivy.Filter.lowercase())
        .filter(tantivy.Filter.stemmer("english"))
        .build()
    )


def stemmer() -> Callable[[str], str]:
    """The stem of one lower-cased word, as the indexed fields store it."""
    analyzer = _build_analyzer()

    def stem(word: str) -> str:
        out = analyzer.analyze(word)
        return out[0] if len(out) == 1 else word

    return stem


def resolve_field_boosts(field_boosts: dict[str, float] | None) -> dict[str, float]:
    """Defaults overlaid with the caller's values, so a partial override keeps the other fields.
    A boost of 0 switches the field off; unknown fields or negative/non-finite boosts are errors."""
    boosts = dict(DEFAULT_FIELD_BOOSTS)
    for name, value in (field_boosts or {}).items():
        if name not in TEXT_FIELDS:
            raise ConfigError(
                f"field_boosts: unknown field {name!r} (expected one of: {', '.join(TEXT_FIELDS)})"
            )
        try:
            boost = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"field_boosts: boost for {name!r} must be a number, got {value!r}") from None
        if not math.isfinite(boost) or boost < 0:
            raise ConfigError(f"field_boosts: boost for {name!r} must be finite and >= 0, got {value!r}")
        boosts[name] = boost
    return {name: boosts.get(name, 0.0) for name in TEXT_FIELDS}


def attribute_terms(name: str, value: AttributeValue) -> list[str]:
    """Keyword terms 'name=value' for one attribute: multi-valued 'a|b|c' gives one per value, and an
    integral number is also indexed without '.0' so a filter '2' matches the value 2.0."""
    key = fold(name)
    if isinstance(value, bool):
        values = ["true" if value else "false"]
    elif isinstance(value, (int, float)):
        values = [fold(value)]
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            values.append(str(int(value)))
    else:
        text = str(value)
        values = [fold(text), *(fold(part) for part in text.split("|"))]
    out: list[str] = []
    for v in values:
        term = f"{key}={v}"
        if v and term not in out:
            out.append(term)
    return out


def _price(product: Product) -> float | None:
    if product.price is None or product.price == "":
        return None
    try:
        price = float(product.price)
    except (TypeError, ValueError):
        msg = f"product {product.id!r}: field 'price' is not a number: {product.price!r}"
        raise CatalogError(msg) from None
    return price if math.isfinite(price) else None


class TantivyIndex(LexicalIndex):
    """BM25 over title, description, brand, category and attributes with per-field boosts.

    ``create=True`` creates the index when the directory is missing or empty and opens it when it
    already holds one; ``create=False`` requires an existing index. The writer (and its lock on the
    directory) is held only between the first write and ``commit()``, so a searching process never
    blocks a building one. ``close()`` discards writes that were not committed.
    """

    def __init__(
        self, path: Path | str, field_boosts: dict[str, float] | None = None, create: bool = False
    ) -> None:
        self.path = Path(path)
        self.field_boosts = resolve_field_boosts(field_boosts)
        self._schema = _build_schema()
        self._analyzer = _build_analyzer()
        self._index = self._open(create)
        self._writer: tantivy.IndexWriter | None = None
        self._closed = False
        try:
            self._index.reload()
            self._searcher = self._index.searcher()
        except (ValueError, OSError) as exc:
            raise IndexCorruptError(f"lexical index at {self.path} cannot be read: {exc}") from None

    # --- opening -------------------------------------------------------------------------------

    def _open(self, create: bool) -> tantivy.Index:
        path = self.path
        if path.exists() and not path.is_dir():
            raise IndexCorruptError(f"lexical index path {path} is a file, not a directory")
        has_meta = (path / "meta.json").is_file()
        if not has_meta:
            if path.is_dir() and any(path.iterdir()):
                raise IndexCorruptError(
                    f"{path} is not empty but holds no lexical index (no meta.json); "
                    "remove it or choose another directory"
                )
            if not create:
                raise IndexNotFoundError(f"no lexical index at {path}")
            try:
                path.mkdir(parents=True, exist_ok=True)
                return tantivy.Index(self._schema, path=str(path), reuse=False)
            except (ValueError, OSError) as exc:
                raise ShopSearchError(f"cannot create lexical index at {path}: {exc}") from None
        try:
            if not tantivy.Index.is_compatible(str(path)):
                raise IndexCorruptError(
                    f"lexical index at {path} was written by an incompatible tantivy version; rebuild it"
                )
            index = tantivy.Index.open(str(path))
        except (ValueError, OSError) as exc:
            raise IndexCorruptError(f"lexical index at {path} is unreadable: {exc}") from None
        if index.schema != self._schema:
            raise IndexCorruptError(
                f"lexical index at {path} has a different schema (built by another version); rebuild it"
            )
        return index

    def _check_open(self) -> None:
        if self._closed:
            raise ShopSearchError(f"lexical index at {self.path} is closed")

    def _get_writer(self) -> tantivy.IndexWriter:
        self._check_open()
        if self._writer is None:
            try:
                self._writer = self._index.writer(heap_size=_WRITER_HEAP, num_threads=_WRITER_THREADS)
            except ValueError as exc:
                if "lock" in str(exc).lower():
                    raise ShopSearchError(
                        f"lexical index at {self.path} is being written by another process or object"
                    ) from None
                msg = f"lexical index at {self.path}: cannot open a writer: {exc}"
                raise IndexCorruptError(msg) from None
        return self._writer

    # --- writes --------------------------------------------------------------------------------

    def _document(self, pid: str, product: Product) -> tantivy.Document:
        doc = tantivy.Document()
        doc.add_text("id", pid)
        for name in ("title", "description", "brand"):
            text = getattr(product, name) or ""
            if str(text).strip():
                doc.add_text(name, str(text))
        categories = product.all_categories()
        if categories:
            doc.add_text("category", " . ".join(c.replace(" > ", " ") for c in categories))
        if product.attributes:
            doc.add_text("attributes", product.attribute_text())
            for name, value in product.attributes.items():
                for term in attribute_terms(name, value):
                    doc.add_text("attr_kw", term)
        if product.brand and str(product.brand).strip():
            doc.add_text("brand_kw", fold(product.brand))
        prefixes: list[str] = []
        for category in categories:
            for prefix in category_prefixes(category):
                key = fold(prefix)
                if key not in prefixes:
                    prefixes.append(key)
        for key in prefixes:
            doc.add_text("category_kw", key)
        price = _price(product)
        if price is not None:
            doc.add_float("price", price)
        return doc

    def upsert(self, products: Sequence[Product]) -> None:
        """Delete-then-add per id; later copies of an id in the same batch win."""
        docs = []
        for product in products:
            pid = "" if product.id is None else str(product.id)
            if not pid.strip():
                raise CatalogError(f"product with title {str(product.title)[:60]!r}: field 'id' is empty")
            docs.append((pid, self._document(pid, product)))
        writer = self._get_writer()
        for pid, doc in docs:
            writer.delete_documents_by_term("id", pid)
            writer.add_document(doc)

    def delete(self, ids: Sequence[str]) -> None:
        """Unknown ids are ignored, so deleting twice is harmless."""
        writer = self._get_writer()
        for pid in ids:
            writer.delete_documents_by_term("id", str(pid))

    def commit(self) -> None:
        """Persist pending writes, release the writer lock and swap in a fresh searcher. Also picks
        up commits made by another process, so a reader can call it to refresh."""
        self._check_open()
        if self._writer is not None:
            writer, self._writer = self._writer, None
            try:
                writer.commit()
                writer.wait_merging_threads()
            except (ValueError, OSError) as exc:
                raise IndexCorruptError(f"lexical index at {self.path}: commit failed: {exc}") from None
        self._index.reload()
        self._searcher = self._index.searcher()

    def count(self) -> int:
        self._check_open()
        return int(self._searcher.num_docs)

    def close(self) -> None:
        if self._closed:
            return
        if self._writer is not None:
            writer, self._writer = self._writer, None
            writer.rollback()
            writer.wait_merging_threads()
        self._closed = True

    def __enter__(self) -> TantivyIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- search --------------------------------------------------------------------------------

    def query_terms(self, text: str) -> list[str]:
        """Analysed, de-duplicated query terms (first occurrence order), at most 64."""
        terms: list[str] = []
        for token in self._analyzer.analyze(text or ""):
            if token not in terms:
                terms.append(token)
                if len(terms) == _MAX_QUERY_TERMS:
                    break
        return terms

    def _field_query(self, name: str, terms: Iterable[str]) -> tantivy.Query | None:
        boost = self.field_boosts[name]
        if boost <= 0:
            return None
        clauses = []
        for term in terms:
            q = Query.term_query(self._schema, name, term, "freq")
            clauses.append((Occur.Should, q if boost == 1.0 else Query.boost_query(q, boost)))
        return Query.boolean_query(clauses) if clauses else None

    def _filter_queries(self, filters: Filters | None) -> list[tantivy.Query]:
        if filters is None or filters.is_empty():
            return []
        out: list[tantivy.Query] = []
        if filters.category:
            key = fold(normalize_category(filters.category))
            out.append(Query.term_query(self._schema, "category_kw", key, "basic"))
        if filters.brands:
            keys = sorted({fold(b) for b in filters.brands})
            out.append(Query.term_set_query(self._schema, "brand_kw", keys))
        for name, value in filters.attributes:
            term = f"{fold(name)}={fold(value)}"
            out.append(Query.term_query(self._schema, "attr_kw", term, "basic"))
        lo, hi = filters.price_min, filters.price_max
        if lo is not None or hi is not None:
            for label, bound in (("price_min", lo), ("price_max", hi)):
                if bound is not None and math.isnan(float(bound)):
                    raise InvalidQueryError(f"filter {label} must be a number, got NaN")
            out.append(
                Query.range_query(
                    self._schema,
                    "price",
                    tantivy.FieldType.Float,
                    None if lo is None else float(lo),
                    None if hi is None else float(hi),
                )
            )
        # Filters select, they do not rank: a 0 score keeps BM25 the only signal.
        return [Query.const_score_query(q, 0.0) for q in out]

    def search(
        self, query: str, k: int, filters: Filters | None = None, *, explain: bool = False
    ) -> list[LexicalHit]:
        """Terms are OR-ed across all boosted fields (score = sum of per-field BM25); every filter is
        a Must clause. With ``explain`` each hit's ``fields`` holds the BM25 of that field alone,
        computed by re-running each field's sub-query restricted to the hit ids; those are exactly
        the summands of the full score (they add up to ``score`` up to float rounding)."""
        self._check_open()
        if k <= 0:
            raise InvalidQueryError(f"k must be a positive number of results, got {k}")
        terms = self.query_terms(query)
        if not terms:
            return []
        text_clauses = []
        for name in TEXT_FIELDS:
            fq = self._field_query(name, terms)
            if fq is not None:
                text_clauses.append((Occur.Should, fq))
        if not text_clauses:
            return []
        clauses = [(Occur.Must, Query.boolean_query(text_clauses))]
        filter_queries = self._filter_queries(filters)
        clauses.extend((Occur.Must, fq) for fq in filter_queries)
        searcher = self._searcher
        result = searcher.search(Query.boolean_query(clauses), k, count=False)
        hits = [
            LexicalHit(id=searcher.doc(addr).get_first("id"), score=float(score))
            for score, addr in result.hits
        ]
        if explain and hits:
            hits = self._explain(searcher, terms, hits)
        return hits

    def _explain(
        self, searcher: tantivy.Searcher, terms: list[str], hits: list[LexicalHit]
    ) -> list[LexicalHit]:
        ids = [h.id for h in hits]
        only_hits = Query.const_score_query(Query.term_set_query(self._schema, "id", ids), 0.0)
        per_field: dict[str, dict[str, float]] = {h.id: {} for h in hits}
        for name in TEXT_FIELDS:
            fq = self._field_query(name, terms)
            if fq is None:
                continue
            q = Query.boolean_query([(Occur.Must, fq), (Occur.Must, only_hits)])
            for score, addr in searcher.search(q, len(ids), count=False).hits:
                per_field[searcher.doc(addr).get_first("id")][name] = float(score)
        return [LexicalHit(id=h.id, score=h.score, fields=per_field[h.id]) for h in hits]
