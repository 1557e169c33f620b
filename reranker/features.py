"""Query-candidate features for the learned re-rankers.

One :class:`FeatureExtractor` serves training, evaluation and serving, so a model sees exactly the
features at serve time that it was trained on. For a retrieval it returns a :class:`ListFeatures`:
a (candidates x features) float32 matrix whose columns are named by :data:`FEATURE_NAMES`, the
stored item vectors per modality, and the query's own vectors and word-piece tokens.

Feature groups (a group missing for an index or a query is all zeros, with a presence flag, so
models trained without a source still run when it appears, and vice versa):

- ``src:<source>:*`` for every retriever source (bm25, text, text_image, image, cf, fused): was
  the item returned by it, its score, its score relative to the source's best, and 1/log2(1+rank).
  ``cf`` is the slot for the collaborative-filtering source, ``fused`` for the learned multimodal
  fusion model's source. They read ``Candidate.sources`` by name, so a model trained before a
  source existed sees zeros there (as in training), and one trained with it uses it.
- ``cf:*``: the terms of the CF source's score for the items it returned (``retriever.cf.CF_TERMS``:
  click-graph log probability, query-factor score, trend, log interactions, query match quality),
  so a model trained on clicks can weigh them otherwise than the CF source's own blend.
- ``cos:<modality>``: cosine of the query vector with the stored item vector, computed for every
  candidate (not only those the vector source returned); ``cos:fused`` is the fusion model's
  query vector against its fused item vectors.
- ``bm25f:<field>``: BM25 of the query in one field alone (title, description, brand, category,
  attributes), with the same analyzer as the lexical index and statistics of this catalog.
- overlap, lengths, exact matches of tokens with digits (model numbers, sizes), brand in query,
  price, and ``wp:*``: max-sim of the query's word pieces against the title's word pieces in the
  text model's static embedding table (fine-grained matching that survives typos and plurals).
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from indexer.filters import fold
from indexer.product import Product
from retriever.cf import CF_TERMS
from retriever.search import Candidate, Retrieval
from shopsearch.errors import ConfigError, EncoderError, ItemNotFoundError
from shopsearch.settings import SOURCES  # one list: the sources settings may weigh are those read here

SOURCE_FEATURES: tuple[str, ...] = ("present", "score", "score_rel", "inv_log_rank")
# query vector key in Retrieval.query_vectors -> item modalities it is compared with
COSINES: dict[str, tuple[str, tuple[str, ...]]] = {
    "text": ("text", ("text",)),
    "text_image": ("text_image", ("image",)),
    "image": ("image", ("image", "video")),
    # the fusion model's query vs its fused item vector, for every candidate (the fused source's
    # own score exists only for the items it returned: about half of a pool)
    "fused": ("fused", ("fused",)),
}
FIELDS: tuple[str, ...] = ("title", "description", "brand", "category", "attributes")
MAX_QUERY_PIECES = 16  # word pieces of the query the models read
MAX_TITLE_PIECES = 32
_K1, _B = 1.2, 0.75  # tantivy's BM25 constants
_WORD = re.compile(r"\S+")
_EDGE_PUNCT = ".,;:!?()[]{}\"'"


def _names() -> tuple[str, ...]:
    names: list[str] = []
    for s in SOURCES:
        names += [f"src:{s}:{f}" for f in SOURCE_FEATURES]
    names += [f"cf:{t}" for t in CF_TERMS]
    names += ["fused_inv_log_pos"]
    for key in COSINES:
        names += [f"cos:{key}", f"cos:{key}:rel", f"cos:{key}:present"]
    names += [f"bm25f:{f}" for f in FIELDS]
    names += [
        "bm25f:sum",
        "q_terms",
        "cover_any",
        "cover_title",
        "cover_idf",
        "all_terms",
        "title_len",
        "desc_len",
        "attr_count",
        "q_has_code",
        "code_match",
        "brand_in_query",
        "title_head_in_query",
        "has_price",
        "log_price",
        "log_price_rel",
        "wp:maxsim_mean",
        "wp:maxsim_min",
        "wp:exact_frac",
    ]
    return tuple(names)


FEATURE_NAMES: tuple[str, ...] = _names()
FEATURE_INDEX: dict[str, int] = {n: i for i, n in enumerate(FEATURE_NAMES)}
CF_COLUMNS = np.asarray([FEATURE_INDEX[f"cf:{t}"] for t in CF_TERMS])

# The LambdaMART baseline's "simple features": BM25, cosine, lengths, term overlap.
SIMPLE_FEATURES: tuple[str, ...] = (
    "src:bm25:present",
    "src:bm25:score",
    "cos:text",
    "bm25f:title",
    "q_terms",
    "title_len",
    "desc_len",
    "cover_any",
    "cover_title",
    "cover_idf",
)


_BLAS_LIMITED = False


def limit_numpy_blas_threads() -> None:
    """Run numpy's BLAS on one thread in this process (other libraries' pools are left alone).

    The features are small matrix products (a few hundred rows); a threaded BLAS spends more on
    waking threads than on arithmetic, and on a loaded two-core machine the wake-ups stall for
    tens of milliseconds (measured: p90 32 ms vs 5 ms for one candidate list)."""
    global _BLAS_LIMITED
    if _BLAS_LIMITED:
        return
    _BLAS_LIMITED = True
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return
    numpy_dir = str(Path(np.__file__).resolve().parent)
    for lib in ThreadpoolController().lib_controllers:
        path = str(Path(lib.filepath).resolve())
        if lib.user_api == "blas" and (path.startswith(numpy_dir) or "numpy.libs" in path):
            lib.set_num_threads(1)


# ====================================================================== text helpers
def _analyzer() -> Any:
    """The lexical index's analyzer chain ("en_stem"), so terms match what BM25 matched."""
    import tantivy

    return (
        tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple())
        .filter(tantivy.Filter.remove_long(40))
        .filter(tantivy.Filter.lowercase())
        .filter(tantivy.Filter.stemmer("english"))
        .build()
    )


def code_tokens(text: str) -> set[str]:
    """Tokens that carry a digit (model numbers, sizes: 'SC-141', '3/4', '12-gauge'), folded to
    their letters and digits so '#SC-141' and 'sc141' are the same code."""
    out: set[str] = set()
    for raw in _WORD.findall(text.lower()):
        tok = raw.strip(_EDGE_PUNCT)
        if any(ch.isdigit() for ch in tok):
            compact = "".join(ch for ch in tok if ch.isalnum())
            if compact:
                out.add(compact)
            for part in re.split(r"[-/_.,#]+", tok):
                if len(part) >= 2 and any(ch.isdigit() for ch in part):
                    out.add(part)
    return out


def field_texts(p: Product) -> dict[str, str]:
    """The texts the lexical index holds per field, built the same way."""
    return {
        "title": p.title or "",
        "description": p.description or "",
        "brand": p.brand or "",
        "category": " . ".join(c.replace(" > ", " ") for c in p.all_categories()),
        "attributes": p.attribute_text(),
    }


class WordPieces:
    """The text model's tokenizer and static (input) word-piece embeddings, L2-normalised.

    Static embeddings need no model forward pass, so matching query pieces against title pieces
    costs one small matrix product per candidate list."""

    def __init__(self, model_dir: Path) -> None:
        from safetensors import safe_open
        from tokenizers import Tokenizer

        tok_file = Path(model_dir) / "tokenizer.json"
        weights = Path(model_dir) / "model.safetensors"
        if not tok_file.is_file() or not weights.is_file():
            raise EncoderError(f"{model_dir} has no tokenizer.json and model.safetensors for word pieces")
        self.tokenizer = Tokenizer.from_file(str(tok_file))
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        with safe_open(str(weights), "np") as f:
            keys = [k for k in f.keys() if k.endswith("word_embeddings.weight")]
            if not keys:
                raise EncoderError(f"{weights} has no word_embeddings.weight tensor")
            table = np.asarray(f.get_tensor(keys[0]), dtype=np.float32)
        table /= np.maximum(np.linalg.norm(table, axis=1, keepdims=True), 1e-6)
        self.table = table
        self.dim = int(table.shape[1])
        specials = {
            self.tokenizer.token_to_id(t)
            for t in ("[CLS]", "[SEP]", "[PAD]", "[UNK]", "<s>", "</s>", "<pad>")
        }
        self._skip = {i for i in specials if i is not None}
        self.fingerprint = f"{table.shape[0]}x{table.shape[1]}:{float(table[:64].sum()):.6f}"

    def ids(self, text: str, limit: int) -> np.ndarray:
        """Distinct piece ids of ``text`` in order (punctuation pieces dropped), at most ``limit``."""
        enc = self.tokenizer.encode(text, add_special_tokens=False)
        out: list[int] = []
        for i, tok in zip(enc.ids, enc.tokens, strict=True):
            if i in self._skip or i in out or not any(ch.isalnum() for ch in tok):
                continue
            out.append(i)
            if len(out) == limit:
                break
        return np.asarray(out, dtype=np.int64)

    @classmethod
    def for_text_model(cls, text_model: str) -> WordPieces | None:
        """Word pieces of the configured text model, or None when it has none on disk (a hub name
        that is not cached, or a model without a word-piece table): the wp:* features are then 0."""
        from indexer.encoders.text import resolve_text_model

        try:
            ref = resolve_text_model(text_model)
            if ref.local_dir is None:
                return None
            return cls(ref.local_dir)
        except (EncoderError, ConfigError, OSError):
            return None


# ====================================================================== per-item store
class _Postings:
    """Compressed rows of term counts (CSR in plain numpy): row -> (term id, count) pairs."""

    def __init__(self) -> None:
        self.indptr = np.zeros(1, dtype=np.int64)
        self.indices = np.zeros(0, dtype=np.int64)
        self.counts = np.zeros(0, dtype=np.float32)

    def extend(self, rows: list[dict[int, int]]) -> None:
        lens = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
        idx = np.fromiter((t for r in rows for t in r), dtype=np.int64, count=int(lens.sum()))
        cnt = np.fromiter((c for r in rows for c in r.values()), dtype=np.float32, count=int(lens.sum()))
        self.indptr = np.concatenate([self.indptr, self.indptr[-1] + np.cumsum(lens)])
        self.indices = np.concatenate([self.indices, idx])
        self.counts = np.concatenate([self.counts, cnt])

    def matrix(self, rows: np.ndarray, terms: np.ndarray) -> np.ndarray:
        """(len(rows), len(terms)) counts of each term in each row, fully vectorised."""
        out = np.zeros((len(rows), len(terms)), dtype=np.float32)
        if len(terms) == 0 or len(rows) == 0:
            return out
        starts, ends = self.indptr[rows], self.indptr[rows + 1]
        lens = ends - starts
        total = int(lens.sum())
        if total == 0:
            return out
        which = np.repeat(np.arange(len(rows)), lens)
        flat = np.arange(total) - np.repeat(np.cumsum(lens) - lens, lens) + np.repeat(starts, lens)
        order = np.argsort(terms)
        sorted_terms = terms[order]
        ids = self.indices[flat]
        j = np.searchsorted(sorted_terms, ids)
        j[j == len(terms)] = 0
        hit = sorted_terms[j] == ids
        out[which[hit], order[j[hit]]] = self.counts[flat[hit]]
        return out

    def doc_freq(self, n_terms: int) -> np.ndarray:
        return np.bincount(self.indices, minlength=n_terms)


class ItemStore:
    """Every item's analysed fields, codes, title word pieces and price as flat arrays, built
    once per index generation (about 3 s per 50,000 titles) and extended in place for items the
    WAL adds. Query-time features are then a few vectorised gathers per candidate list."""

    def __init__(self, table: Any, analyzer: Any, pieces: WordPieces | None) -> None:
        self.table = table
        self._analyzer = analyzer
        self._pieces = pieces
        self.vocab: dict[str, int] = {}
        self.code_vocab: dict[str, int] = {}
        self.fields = {name: _Postings() for name in FIELDS}
        self.codes = _Postings()
        self.lengths = np.zeros((0, len(FIELDS)), dtype=np.float32)
        self.title_pieces = np.zeros((0, MAX_TITLE_PIECES), dtype=np.int64)
        self.price = np.zeros(0, dtype=np.float64)
        self.n_attrs = np.zeros(0, dtype=np.float32)
        self.brand: list[str] = []
        self.title_head: list[str] = []
        self.live = np.zeros(0, dtype=bool)
        self.n_rows = 0
        self.df = np.zeros((len(FIELDS), 0), dtype=np.float64)
        self.term_df = np.zeros(0, dtype=np.float64)
        self.avg_len = np.ones(len(FIELDS), dtype=np.float64)
        self.n_docs = 0

    def _ids(self, vocab: dict[str, int], terms: Sequence[str]) -> dict[int, int]:
        out: dict[int, int] = {}
        for t in terms:
            i = vocab.get(t)
            if i is None:
                i = vocab[t] = len(vocab)
            out[i] = out.get(i, 0) + 1
        return out

    def sync(self, progress: bool = False) -> None:
        """Add the table's rows that are not in the store yet."""
        table = self.table
        start, stop = self.n_rows, table.n_rows
        if stop <= start:
            return
        rng: Any = range(start, stop)
        if progress:
            from tqdm import tqdm

            rng = tqdm(rng, desc="re-ranker item store", unit="item", mininterval=1.0)
        per_field: dict[str, list[dict[int, int]]] = {name: [] for name in FIELDS}
        codes: list[dict[int, int]] = []
        lengths = np.zeros((stop - start, len(FIELDS)), dtype=np.float32)
        price = np.full(stop - start, np.nan)
        n_attrs = np.zeros(stop - start, dtype=np.float32)
        live = np.zeros(stop - start, dtype=bool)
        titles: list[str] = []
        for k, row in enumerate(rng):
            p = table.rows[row]
            if p is None:
                for name in FIELDS:
                    per_field[name].append({})
                codes.append({})
                self.brand.append("")
                self.title_head.append("")
                titles.append("")
                continue
            live[k] = True
            texts = field_texts(p)
            for j, name in enumerate(FIELDS):
                toks = self._analyzer.analyze(texts[name]) if texts[name] else []
                lengths[k, j] = len(toks)
                per_field[name].append(self._ids(self.vocab, toks))
            codes.append(
                self._ids(
                    self.code_vocab,
                    sorted(
                        code_tokens(" ".join([p.title, p.brand, p.attribute_text(), p.description[:500]]))
                    ),
                )
            )
            head = fold(p.title.split()[0]) if p.title.split() else ""
            self.brand.append(fold(p.brand) if p.brand else "")
            self.title_head.append(head if len(head) > 2 else "")
            titles.append(p.title or "")
            n_attrs[k] = len(p.attributes)
            try:
                v = float(p.price) if p.price is not None else math.nan
            except (TypeError, ValueError):
                v = math.nan
            price[k] = v if math.isfinite(v) and v >= 0 else math.nan
        for name in FIELDS:
            self.fields[name].extend(per_field[name])
        self.codes.extend(codes)
        pieces = np.full((stop - start, MAX_TITLE_PIECES), -1, dtype=np.int64)
        if self._pieces is not None:
            for k, t in enumerate(titles):
                if t:
                    ids = self._pieces.ids(t, MAX_TITLE_PIECES)
                    pieces[k, : len(ids)] = ids
        self.lengths = np.concatenate([self.lengths, lengths])
        self.title_pieces = np.concatenate([self.title_pieces, pieces])
        self.price = np.concatenate([self.price, price])
        self.n_attrs = np.concatenate([self.n_attrs, n_attrs])
        self.live = np.concatenate([self.live, live])
        self.n_rows = stop
        # statistics over live items (a row replaced later still counts until the next build)
        self.n_docs = max(1, int(self.live.sum()))
        self.df = np.stack([self.fields[name].doc_freq(len(self.vocab)) for name in FIELDS]).astype(
            np.float64
        )
        self.term_df = self.df.max(axis=0) if len(self.vocab) else np.zeros(0)
        self.avg_len = np.maximum(self.lengths[self.live].mean(axis=0) if self.live.any() else 1.0, 1.0)

    def idf(self, df: np.ndarray) -> np.ndarray:
        return np.log1p((self.n_docs - df + 0.5) / (df + 0.5))


# ====================================================================== output
@dataclass
class QueryInfo:
    """What the models read about the query itself."""

    text: str
    vectors: dict[str, np.ndarray]
    pieces: np.ndarray  # word-piece ids, at most MAX_QUERY_PIECES


@dataclass
class ListFeatures:
    """Features of one candidate list, rows in the order of ``candidates``."""

    candidates: list[Candidate]
    features: np.ndarray  # (n, len(FEATURE_NAMES)) float32
    rows: np.ndarray  # (n,) int64 item rows
    item_vectors: dict[str, np.ndarray]  # modality -> (n, dim) float32, zeros where missing
    query: QueryInfo
    timings_ms: dict[str, float] = field(default_factory=dict)


# ====================================================================== extractor
class FeatureExtractor:
    """Computes :data:`FEATURE_NAMES` for a retrieval over one live index. Thread-safe: the
    item store is rebuilt when the index loads another generation and extended, under a lock,
    when the WAL adds rows."""

    def __init__(self, index: Any, *, pieces: WordPieces | None | bool = True) -> None:
        limit_numpy_blas_threads()
        self.index = index
        if pieces is True:
            pieces = WordPieces.for_text_model(index.settings.text_model)
        self.pieces: WordPieces | None = pieces or None
        self._analyzer = _analyzer()
        self._lock = threading.Lock()
        self._store: ItemStore | None = None

    def store(self, table: Any | None = None, progress: bool = False) -> ItemStore:
        """The item store of ``table`` (default: the index's current one), synced to its rows."""
        table = table if table is not None else self.index.table
        store = self._store
        if store is not None and store.table is table and store.n_rows == table.n_rows:
            return store
        with self._lock:
            store = self._store
            if store is None or store.table is not table:
                store = ItemStore(table, self._analyzer, self.pieces)
            store.sync(progress=progress)
            self._store = store
            return store

    def warm(self, progress: bool = False) -> None:
        """Build the item store now, so that no query pays for it."""
        self.store(progress=progress)

    # ----------------------------------------------------------------- query
    def query_info(self, retrieval: Retrieval) -> QueryInfo:
        text = retrieval.text or ""
        pieces = (
            self.pieces.ids(text, MAX_QUERY_PIECES) if self.pieces and text else np.zeros(0, dtype=np.int64)
        )
        return QueryInfo(text=text, vectors=dict(retrieval.query_vectors), pieces=pieces)

    # ----------------------------------------------------------------- features
    def extract(self, retrieval: Retrieval, candidates: Sequence[Candidate] | None = None) -> ListFeatures:
        """Features of ``candidates`` (default: all of the retrieval's, in its order)."""
        t0 = time.perf_counter()
        cands = list(retrieval.candidates if candidates is None else candidates)
        table, vectors = self.index.table, self.index.vectors
        store = self.store(table)
        n = len(cands)
        X = np.zeros((n, len(FEATURE_NAMES)), dtype=np.float32)
        rows = np.fromiter((c.row for c in cands), dtype=np.int64, count=n)
        qinfo = self.query_info(retrieval)
        if n == 0:
            return ListFeatures(cands, X, rows, {}, qinfo)
        if rows.max() >= store.n_rows or rows.min() < 0:
            raise ItemNotFoundError(
                f"candidate row {int(rows.max())} is not in the index the re-ranker reads"
            )
        col = FEATURE_INDEX
        self._source_features(X, retrieval, cands)
        fused = getattr(self.index, "fused", None)
        if fused is not None and "fused" in qinfo.vectors:
            vectors = {**vectors, "fused": fused.index}
        item_vectors = self._cosines(X, rows, vectors, qinfo)
        item_vectors.pop("fused", None)  # read for the cosine only: no model takes it as a channel
        item_vectors.pop("fused:present", None)
        t_vec = time.perf_counter()
        self._lexical_features(X, rows, store, qinfo)
        t_end = time.perf_counter()
        X[:, col["q_terms"]] = X[0, col["q_terms"]]
        timings = {"vectors": (t_vec - t0) * 1000, "lexical": (t_end - t_vec) * 1000}
        return ListFeatures(cands, X, rows, item_vectors, qinfo, timings)

    @staticmethod
    def _source_features(X: np.ndarray, retrieval: Retrieval, cands: list[Candidate]) -> None:
        col = FEATURE_INDEX
        n = len(cands)
        for s in SOURCES:
            hits = [(i, c.sources[s]) for i, c in enumerate(cands) if s in c.sources]
            if not hits:
                continue
            idx = np.asarray([i for i, _ in hits])
            raw = np.asarray([h.score for _, h in hits], dtype=np.float64)
            score = np.log1p(np.maximum(raw, 0.0)) if s == "bm25" else raw
            ranks = np.asarray([h.rank for _, h in hits], dtype=np.float64)
            X[idx, col[f"src:{s}:present"]] = 1.0
            X[idx, col[f"src:{s}:score"]] = score
            X[idx, col[f"src:{s}:score_rel"]] = score - score.max()
            X[idx, col[f"src:{s}:inv_log_rank"]] = 1.0 / np.log2(1.0 + np.maximum(ranks, 1.0))
        cf = [(i, c.sources["cf"].terms) for i, c in enumerate(cands) if "cf" in c.sources]
        cf = [(i, t) for i, t in cf if t is not None and len(t) == len(CF_TERMS)]
        if cf:
            X[np.asarray([i for i, _ in cf])[:, None], CF_COLUMNS[None, :]] = np.asarray([t for _, t in cf])
        pos = {c.row: i for i, c in enumerate(retrieval.candidates)}
        X[:, col["fused_inv_log_pos"]] = 1.0 / np.log2(
            2.0 + np.fromiter((pos.get(c.row, n) for c in cands), dtype=np.float64, count=n)
        )

    @staticmethod
    def _cosines(
        X: np.ndarray, rows: np.ndarray, vectors: dict[str, Any], qinfo: QueryInfo
    ) -> dict[str, np.ndarray]:
        col = FEATURE_INDEX
        n = len(rows)
        item_vectors: dict[str, np.ndarray] = {}
        for modality, index in vectors.items():
            have = index.contains(rows)
            mat = np.zeros((n, index.dim), dtype=np.float32)
            if have.any():
                mat[have] = index.vectors_for(rows[have])
            item_vectors[modality] = mat
            item_vectors[f"{modality}:present"] = have.astype(np.float32)
        for key, (qkey, modalities) in COSINES.items():
            q = qinfo.vectors.get(qkey)
            if q is None:
                continue
            best = np.full(n, -np.inf)
            for m in modalities:
                if m in item_vectors and item_vectors[m].shape[1] == len(q):
                    sims = item_vectors[m] @ np.asarray(q, dtype=np.float32)
                    best = np.where(item_vectors[f"{m}:present"] > 0, np.maximum(best, sims), best)
            present = np.isfinite(best)
            if not present.any():
                continue
            vals = np.where(present, best, 0.0)
            X[:, col[f"cos:{key}"]] = vals
            X[:, col[f"cos:{key}:rel"]] = np.where(present, vals - vals[present].max(), -1.0)
            X[:, col[f"cos:{key}:present"]] = present
        return item_vectors

    def _lexical_features(self, X: np.ndarray, rows: np.ndarray, store: ItemStore, qinfo: QueryInfo) -> None:
        col = FEATURE_INDEX
        text = qinfo.text
        X[:, col["title_len"]] = np.log1p(store.lengths[rows, FIELDS.index("title")])
        X[:, col["desc_len"]] = np.log1p(store.lengths[rows, FIELDS.index("description")])
        X[:, col["attr_count"]] = np.log1p(store.n_attrs[rows])
        logp = np.log1p(store.price[rows])
        has = np.isfinite(logp)
        if has.any():
            X[:, col["has_price"]] = has
            X[has, col["log_price"]] = logp[has]
            X[has, col["log_price_rel"]] = logp[has] - np.median(logp[has])
        qfold = f" {fold(text)} "
        for i, r in enumerate(rows.tolist()):
            if store.brand[r] and f" {store.brand[r]} " in qfold:
                X[i, col["brand_in_query"]] = 1.0
            if store.title_head[r] and f" {store.title_head[r]} " in qfold:
                X[i, col["title_head_in_query"]] = 1.0
        qterms = list(dict.fromkeys(self._analyzer.analyze(text)))[:64] if text else []
        X[:, col["q_terms"]] = math.log1p(len(qterms))
        known = [store.vocab[t] for t in qterms if t in store.vocab]
        if qterms:
            tids = np.asarray(known, dtype=np.int64)
            # unknown terms: df 0 (highest idf), matched by nobody
            df = np.zeros((len(FIELDS), len(qterms)))
            tdf = np.zeros(len(qterms))
            k = len(known)
            if k:
                df[:, :k] = store.df[:, tids]
                tdf[:k] = store.term_df[tids]
            idf = store.idf(df)  # (fields, terms)
            tidf = store.idf(tdf)
            any_tf = np.zeros((len(rows), len(qterms)), dtype=np.float32)
            total = np.zeros(len(rows), dtype=np.float64)
            for j, name in enumerate(FIELDS):
                tf = np.zeros((len(rows), len(qterms)), dtype=np.float32)
                if k:
                    tf[:, :k] = store.fields[name].matrix(rows, tids)
                if not tf.any():
                    continue
                norm = _K1 * (1 - _B + _B * store.lengths[rows, j] / store.avg_len[j])
                s = (idf[j] * tf * (_K1 + 1) / (tf + norm[:, None])).sum(axis=1)
                X[:, col[f"bm25f:{name}"]] = s
                total += s
                any_tf += tf
                if name == "title":
                    X[:, col["cover_title"]] = (tf > 0).mean(axis=1)
            matched = any_tf > 0
            X[:, col["bm25f:sum"]] = total
            X[:, col["cover_any"]] = matched.mean(axis=1)
            X[:, col["cover_idf"]] = (matched * tidf).sum(axis=1) / max(tidf.sum(), 1e-6)
            X[:, col["all_terms"]] = matched.all(axis=1)
        qcodes = sorted(code_tokens(text)) if text else []
        if qcodes:
            X[:, col["q_has_code"]] = 1.0
            cids = np.asarray([store.code_vocab[c] for c in qcodes if c in store.code_vocab], dtype=np.int64)
            if len(cids):
                X[:, col["code_match"]] = (store.codes.matrix(rows, cids) > 0).sum(axis=1) / len(qcodes)
        qp = qinfo.pieces
        if self.pieces is not None and len(qp):
            tp = store.title_pieces[rows]  # (n, T), -1 padded
            valid = tp >= 0
            if valid.any():
                uniq, inv = np.unique(tp[valid], return_inverse=True)
                sims = self.pieces.table[qp] @ self.pieces.table[uniq].T  # (q, U)
                full = np.full((len(qp), *tp.shape), -1.0, dtype=np.float32)
                full[:, valid] = sims[:, inv]
                best = full.max(axis=2)  # (q, n)
                has_t = valid.any(axis=1)
                X[has_t, col["wp:maxsim_mean"]] = best.mean(axis=0)[has_t]
                X[has_t, col["wp:maxsim_min"]] = best.min(axis=0)[has_t]
                exact = (tp[None, :, :] == qp[:, None, None]).any(axis=2)  # (q, n)
                X[has_t, col["wp:exact_frac"]] = exact.mean(axis=0)[has_t]
