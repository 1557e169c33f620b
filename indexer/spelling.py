"""Query spelling correction against the catalog's own vocabulary ("did you mean").

A misspelled query word matches nothing in BM25 and lands the text encoders somewhere else, so
the product it names is not even a candidate: no re-ranker can bring it back. The corrector
replaces a query word that the catalog does not contain in any form with the catalog word the
shopper most likely meant (:class:`SpellCorrector` lists the passes). Words with digits (model
numbers, sizes) are never touched: an edit there names a different product, not a misspelling.
Units after numbers ("36 inch", '8\'', "16gb") are written the way most products write them,
joined to the number ("60w", one token) or apart ("60 watt"), both when the catalog uses both, and
two query words the catalog writes as one ("back splash") also search the one-word form.

Candidates one edit away come from a symmetric-delete index (SymSpell): every catalog word is
stored under itself and each of its one-letter deletions, as 64-bit hashes in a sorted array, so
a lookup is a few binary searches. The vocabulary is built once per index generation from the
products and saved beside it as arrays plus JSON (no pickle); products upserted later add their
words in memory, so a new brand name is never "corrected" away.
"""

from __future__ import annotations

import hashlib
import json
import re
from array import array
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rapidfuzz import process
from rapidfuzz.distance import OSA

from indexer.lexical.tantivy_index import stemmer
from indexer.product import Product
from shopsearch.errors import IndexCorruptError

__all__ = ["MAX_WORD_LEN", "Correction", "SpellCorrector", "Vocabulary", "product_words"]

VOCAB_DIR = "spelling"
_WORD = re.compile(r"[^\W_]+")
# scripts written without spaces: a "word" there is a phrase, and one character more or less is
# another product (红色连衣裙 / 蓝色连衣裙), not a typo
_UNSPACED = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\u0e00-\u0e7f]")
_FORMAT = 1
# Longer "words" (a pasted hash, a run of letters from a broken export) are no word a shopper
# types or misspells; real words and brand names are far shorter. They are left out of the
# vocabulary and never corrected: the delete index costs the square of a word's length.
MAX_WORD_LEN = 40


def _words(text: str) -> list[str]:
    return _WORD.findall(text.casefold())


# Units written after a number, each group's forms; the catalog's most used word form is searched.
UNIT_GROUPS: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    (("in", "inch", "inches"), ('"', "''", "\u201d", "\u2033")),
    (("ft", "foot", "feet"), ("'", "\u2019", "\u2032")),
    (("gal", "gallon", "gallons"), ()),
    (("lb", "lbs", "pound", "pounds"), ()),
    (("oz", "ounce", "ounces"), ()),
    (("mm", "millimeter", "millimeters", "millimetre", "millimetres"), ()),
    (("cm", "centimeter", "centimeters", "centimetre", "centimetres"), ()),
    (("v", "volt", "volts"), ()),
    (("w", "watt", "watts"), ()),
    (("kg", "kilogram", "kilograms"), ()),
    (("gb", "gigabyte", "gigabytes"), ()),
    (("tb", "terabyte", "terabytes"), ()),
    (("mb", "megabyte", "megabytes"), ()),
    (("ghz", "gigahertz"), ()),
    (("mhz", "megahertz"), ()),
    (("hz", "hertz"), ()),
    (("mah",), ()),
    (("mp", "megapixel", "megapixels"), ()),
)
_UNIT_FORM_SET = {f for forms, _ in UNIT_GROUPS for f in forms}
_UNIT_FORMS = sorted({f for forms, _ in UNIT_GROUPS for f in forms}, key=len, reverse=True)
# "2 in 1", "3-in-1": a count, not a unit
_NOT_A_COUNT = r"(?!\s*-?\s*\d)"
_NUMBER_UNIT = re.compile(
    r"(?<![^\W\d_])(\d+(?:[./]\d+)?)(?:\s*-\s*|\s*)(" + "|".join(_UNIT_FORMS) + r")\b" + _NOT_A_COUNT,
    re.IGNORECASE,
)
_DIMS_JOINED = re.compile(r"(?<!\w)\d+x\d+(?!\w)", re.IGNORECASE)
_DIMS_SPLIT = re.compile(r"\d\s*(?:[a-z]{1,2}\.?|[\"'])?\s+x\s+\d", re.IGNORECASE)
_KEEP_SHARE = 0.1  # a unit form used by this share of the usual form's products is searched too
_MARK = "#"  # unit usage markers share the word sets: '#in' = a product writes '<number> in'


def _unit_marks(text: str) -> set[str]:
    """'#gb' for a product writing a number then 'gb'; '#gb:joined' when written as one token
    ('16GB'), '#gb:spaced' when apart ('16 GB', '16-GB'): BM25 matches only the same form."""
    marks = set()
    for m in _NUMBER_UNIT.finditer(text):
        unit = _MARK + m.group(2).lower()
        marks.add(unit)
        marks.add(unit + (":joined" if m.end(1) == m.start(2) else ":spaced"))
    if _DIMS_JOINED.search(text):
        marks.add(_MARK + "dims:joined")
    if _DIMS_SPLIT.search(text):
        marks.add(_MARK + "dims:split")
    return marks


def product_words(p: Product) -> set[str]:
    """The distinct words of every searchable field of one product, plus markers of how it writes
    units after numbers ('#in', '#inch') and dimensions ('#dims:joined' for 2x4, '#dims:split'
    for 2 x 4)."""
    parts = [p.title, p.description, p.brand, p.category]
    for name, value in (p.attributes or {}).items():
        parts.append(str(name))
        parts.append(" ".join(map(str, value)) if isinstance(value, list | tuple) else str(value))
    out: set[str] = set()
    for part in parts:
        if part:
            out.update(w for w in _words(str(part)) if len(w) <= MAX_WORD_LEN)
            out.update(_unit_marks(str(part)))
    return out


def _key(s: str) -> int:
    return int.from_bytes(hashlib.blake2b(s.encode("utf-8"), digest_size=8).digest(), "little", signed=True)


def _variants(word: str) -> set[str]:
    """The word and its one-letter deletions: two words one edit apart share one of these."""
    return {word, *(word[:i] + word[i + 1 :] for i in range(len(word)))}


def damerau1(a: str, b: str) -> bool:
    """True when ``a`` and ``b`` differ by exactly one substitution, insertion, deletion or swap
    of neighbouring letters."""
    if a == b:
        return False
    la, lb = len(a), len(b)
    if abs(la - lb) > 1:
        return False
    if la == lb:
        diff = [i for i in range(la) if a[i] != b[i]]
        if len(diff) == 1:
            return True
        return (
            len(diff) == 2
            and diff[1] == diff[0] + 1
            and a[diff[0]] == b[diff[1]]
            and a[diff[1]] == b[diff[0]]
        )
    if la > lb:
        a, b = b, a
    i = 0
    while i < len(a) and a[i] == b[i]:
        i += 1
    return a[i:] == b[i + 1 :]


@dataclass
class Vocabulary:
    """Catalog words with their document frequencies, and the delete index over them."""

    words: list[str]
    df: np.ndarray  # int32, one per word
    keys: np.ndarray  # int64 hashes of each word and its deletions, sorted
    ids: np.ndarray  # int32 word index for each key
    extra: Counter[str] = field(default_factory=Counter)  # words of products upserted since the build
    units: dict[str, int] = field(default_factory=dict)  # unit usage marker -> products (no '#')
    # which products use each word (CSR: word i's products are rows[ptr[i]:ptr[i + 1]]), to see
    # whether a correction fits the rest of the query; None in vocabularies saved before it existed
    post_ptr: np.ndarray | None = None
    post_rows: np.ndarray | None = None
    lexicon: frozenset[str] = frozenset()  # words of the language the catalog lacks (tokenizer_words)

    def __post_init__(self) -> None:
        self.version = 0  # bumped by add(): correctors recompute what depends on the counts
        self._index = {w: i for i, w in enumerate(self.words)}
        self._stem = stemmer()
        self._stem_df: Counter[str] = Counter()
        for w, f in zip(self.words, self.df.tolist(), strict=True):
            self._stem_df[self._stem(w)] += f
        self._stems = set(self._stem_df) | {self._stem(w) for w in self.extra}
        self._by_initial: dict[str, list[int]] | None = None  # built on the first distance-2 lookup
        self._extra_rows: dict[str, set[int]] = {}  # products of upserts, by word

    @classmethod
    def build(
        cls, word_sets: Iterable[set[str]], *, min_len: int = 3, lexicon: Iterable[str] = ()
    ) -> Vocabulary:
        """``word_sets``: the distinct words of each product (:func:`product_words`), in row order.
        ``lexicon``: common words of the query language (``indexer.encoders.text.tokenizer_words``);
        only those the catalog lacks are kept."""
        rows_of: dict[str, array[int]] = {}  # word -> the rows using it, ascending (4 bytes each)
        for row, ws in enumerate(word_sets):
            for w in ws:
                found = rows_of.get(w)
                if found is None:
                    found = rows_of[w] = array("i")
                found.append(row)
        units = {w[1:]: len(r) for w, r in rows_of.items() if w.startswith(_MARK)}
        words = sorted(
            w
            for w in rows_of
            if len(w) >= min_len and not w.startswith(_MARK) and not any(c.isdigit() for c in w)
        )
        df = np.array([len(rows_of[w]) for w in words], dtype=np.int32)
        pairs = [(_key(v), i) for i, w in enumerate(words) for v in _variants(w)]
        arr = np.array(pairs, dtype=np.int64).reshape(-1, 2)
        order = np.argsort(arr[:, 0], kind="stable")
        ptr = np.zeros(len(words) + 1, dtype=np.int64)
        np.cumsum(df, out=ptr[1:])
        post = np.empty(int(ptr[-1]), dtype=np.int32)
        for i, w in enumerate(words):
            post[ptr[i] : ptr[i + 1]] = np.frombuffer(rows_of[w], dtype=np.int32)
        return cls(
            words,
            df,
            arr[order, 0].copy(),
            arr[order, 1].astype(np.int32),
            units=units,
            post_ptr=ptr,
            post_rows=post,
            lexicon=frozenset(w for w in lexicon if w not in rows_of and len(w) >= min_len and w.isalpha()),
        )

    def unit_use(self, mark: str) -> int:
        """Products that write a unit or dimension this way ('inch', 'dims:joined')."""
        return self.units.get(mark, 0) + self.extra.get(_MARK + mark, 0)

    def add(self, words: Iterable[str], row: int | None = None) -> None:
        """Words of a product upserted after the build: known from now on (never corrected).
        ``row``: its item row, so it counts in :meth:`together` too."""
        words = list(words)
        self.extra.update(words)
        if row is not None:
            for w in words:
                self._extra_rows.setdefault(w, set()).add(row)
        self._stems.update(self._stem(w) for w in words)
        self.version += 1

    @property
    def has_postings(self) -> bool:
        return self.post_ptr is not None and self.post_rows is not None

    def together(self, words: Iterable[str], at_least: int = 1) -> bool:
        """True when ``at_least`` products use every one of ``words`` (exact forms). Starts from the
        rarest word's products and looks each up in the next word's sorted list (binary search),
        so a common word's long list is never read whole."""
        if not self.has_postings:
            raise ValueError("this vocabulary was saved without its product lists")
        ordered = sorted(set(words), key=self.freq)
        if not ordered:
            return False
        common = self._rows(ordered[0])
        for w in ordered[1:]:
            if len(common) < at_least:
                return False
            common = common[self._uses(w, common)]
        return len(common) >= max(at_least, 1)

    def _rows(self, word: str) -> np.ndarray:
        i = self._index.get(word)
        base = np.asarray(self.post_rows[self.post_ptr[i] : self.post_ptr[i + 1]]) if i is not None else None
        extra = self._extra_rows.get(word)
        if extra:
            more = np.fromiter(extra, dtype=np.int32, count=len(extra))
            return more if base is None else np.union1d(base, more)
        return base if base is not None else np.zeros(0, dtype=np.int32)

    def _uses(self, word: str, rows: np.ndarray) -> np.ndarray:
        """Mask over ``rows``: the products among them that use ``word``."""
        mask = np.zeros(len(rows), dtype=bool)
        i = self._index.get(word)
        if i is not None:
            base = self.post_rows[self.post_ptr[i] : self.post_ptr[i + 1]]
            if len(base):
                pos = np.minimum(np.searchsorted(base, rows), len(base) - 1)
                mask |= np.asarray(base[pos]) == rows
        extra = self._extra_rows.get(word)
        if extra:
            mask |= np.isin(rows, np.fromiter(extra, dtype=np.int32, count=len(extra)))
        return mask

    def knows(self, word: str) -> bool:
        """True when the catalog has the word or another form of it (drill / drills)."""
        return word in self._index or word in self.extra or self._stem(word) in self._stems

    def freq(self, word: str) -> int:
        i = self._index.get(word)
        return (int(self.df[i]) if i is not None else 0) + self.extra.get(word, 0)

    def stem_freq(self, word: str) -> int:
        """Products using any form of the word (drill, drills, drilling)."""
        return self._stem_df.get(self._stem(word), 0)

    def near(self, word: str, max_dist: int) -> list[tuple[str, int, int]]:
        """Catalog words with the same first letter within ``max_dist`` edits (restricted
        Damerau-Levenshtein), as (word, edits, document frequency): the slow path, for words
        with no neighbour one edit away."""
        if self._by_initial is None:
            buckets: dict[str, list[int]] = {}
            for i, w in enumerate(self.words):
                buckets.setdefault(w[0], []).append(i)
            self._by_initial = buckets
        ids = [
            i for i in self._by_initial.get(word[:1], []) if abs(len(self.words[i]) - len(word)) <= max_dist
        ]
        if not ids:
            return []
        hits = process.extract(
            word, [self.words[i] for i in ids], scorer=OSA.distance, score_cutoff=max_dist, limit=None
        )
        return [(w, int(d), int(self.df[ids[j]])) for w, d, j in hits]

    def neighbours(self, word: str) -> list[tuple[str, int]]:
        """Catalog words exactly one edit from ``word``, with their document frequencies."""
        found: set[int] = set()
        for v in _variants(word):
            k = _key(v)
            lo = int(np.searchsorted(self.keys, k, "left"))
            hi = int(np.searchsorted(self.keys, k, "right"))
            found.update(int(i) for i in self.ids[lo:hi])
        out = [(self.words[i], int(self.df[i])) for i in found]
        return [(w, f) for w, f in out if damerau1(word, w)]

    # ------------------------------------------------------------------ files (no pickle)
    def save(self, directory: Path) -> None:
        d = Path(directory) / VOCAB_DIR
        d.mkdir(parents=True, exist_ok=True)
        np.save(d / "df.npy", self.df)
        np.save(d / "keys.npy", self.keys)
        np.save(d / "ids.npy", self.ids)
        if self.post_ptr is not None and self.post_rows is not None:
            np.save(d / "post_ptr.npy", self.post_ptr)
            np.save(d / "post_rows.npy", self.post_rows)
        meta = {"format": _FORMAT, "words": self.words, "units": self.units, "lexicon": sorted(self.lexicon)}
        (d / "words.json").write_text(json.dumps(meta), encoding="utf-8")

    @classmethod
    def load(cls, directory: Path) -> Vocabulary | None:
        """None when the generation has no vocabulary (built before spelling correction existed)."""
        d = Path(directory) / VOCAB_DIR
        if not (d / "words.json").exists():
            return None
        try:
            meta = json.loads((d / "words.json").read_text(encoding="utf-8"))
            words = meta["words"]
            df = np.load(d / "df.npy", mmap_mode="r")
            keys = np.load(d / "keys.npy", mmap_mode="r")
            ids = np.load(d / "ids.npy", mmap_mode="r")
            ptr = rows = None
            if (d / "post_ptr.npy").exists():  # vocabularies saved before product lists have none
                ptr = np.load(d / "post_ptr.npy", mmap_mode="r")
                rows = np.load(d / "post_rows.npy", mmap_mode="r")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise IndexCorruptError(f"spelling vocabulary in {d} is unreadable: {exc}") from exc
        units, lexicon = meta.get("units", {}), meta.get("lexicon", [])
        if (
            meta.get("format") != _FORMAT
            or len(df) != len(words)
            or len(keys) != len(ids)
            or not isinstance(units, dict)
            or not isinstance(lexicon, list)
            or (ptr is not None and (len(ptr) != len(words) + 1 or int(ptr[-1]) != len(rows)))
        ):
            raise IndexCorruptError(f"spelling vocabulary in {d} is inconsistent (rebuild the index)")
        return cls(
            list(words),
            df,
            keys,
            ids,
            units={str(k): int(v) for k, v in units.items()},
            post_ptr=ptr,
            post_rows=rows,
            lexicon=frozenset(map(str, lexicon)),
        )


@dataclass(frozen=True)
class Correction:
    text: str  # the query to search with
    original: str
    changes: tuple[tuple[str, str], ...] = ()  # (query word, catalog word)
    # common words kept as typed, spelled as the catalog's nearest words: offered ("did you
    # mean"), not searched
    suggestion: str | None = None

    @property
    def changed(self) -> bool:
        return bool(self.changes)


def _replace(
    text: str, matches: list[re.Match[str]], fixes: list[str | None]
) -> tuple[str, tuple[tuple[str, str], ...]]:
    """``text`` with each matched word that has a fix replaced, and the (word, fix) pairs."""
    out: list[str] = []
    changes: list[tuple[str, str]] = []
    last = 0
    for m, fix in zip(matches, fixes, strict=True):
        if fix is not None:
            out.append(text[last : m.start()])
            out.append(fix)
            last = m.end()
            changes.append((m.group(0), fix))
    out.append(text[last:])
    return "".join(out), tuple(changes)


class SpellCorrector:
    """Replaces query words the catalog lacks in every form ("drills" is known when "drill" is)
    with the catalog word(s) the shopper most likely meant.

    A word the catalog contains, however rarely, is never changed: a rare word is more often a
    real product term (a brand, a material) than a misspelling of a common one, and changing it
    would hide exactly the product asked for. For an unknown word, in this order:

    1. the most used catalog word one edit away (substitution, insertion, deletion, swap);
    2. a form of a catalog word one deletion away ("steqamers" -> "steamers": "steamer" is known);
    3. for words of ``far_len`` letters or more, the closest catalog word two edits away with the
       same first letter ("maintance" -> "maintenance");
    4. two catalog words run together ("cornershower" -> "corner shower").

    A common word of the language that the catalog lacks ("drill" in an electronics shop, "cheap",
    "vinegar": the vocabulary's ``lexicon``) is more often a request for something the shop does not
    sell than a typo, and turning it into another word shows unrelated products ("cordless drill"
    searched as "cordless grill"). Such a word is replaced only when a product uses the
    replacement together with another word of the query, in ``min_df`` products or more like any
    offered word ("epoxy concrete pain" -> "paint": products say "concrete paint"); alone in a
    query it is kept. The replacement is still offered as
    ``Correction.suggestion`` ("did you mean"). Vocabularies saved before product lists existed,
    or built without a word list (a text model with no tokenizer file here), skip this check.

    The other way round, two query words the catalog writes as one also search that word
    (:meth:`joins`), and units follow the catalog's style (:meth:`units`).

    ``min_len``: shorter words are left alone (one edit turns a 3-letter word into too many
    others); so are words longer than ``MAX_WORD_LEN``, which the vocabulary leaves out.
    ``min_df``: a catalog word used by fewer products is not offered (catalogs have typos too).
    """

    def __init__(self, vocab: Vocabulary, *, min_len: int = 4, min_df: int = 2, far_len: int = 7) -> None:
        self.vocab = vocab
        self.min_len = min_len
        self.min_df = min_df
        self.far_len = far_len
        self._rules: list[tuple[re.Pattern[str], Any]] | None = None
        self._rules_version = -1

    def suggest(self, word: str) -> str | None:
        """The catalog word(s) to search instead of ``word`` (lower-cased), or None to keep it."""
        v = self.vocab
        if (
            not self.min_len <= len(word) <= MAX_WORD_LEN
            or not word.isalpha()
            or _UNSPACED.search(word)
            or v.knows(word)
        ):
            return None
        cands = [(w, d) for w, d in v.neighbours(word) if d >= self.min_df]
        if cands:
            return max(cands, key=lambda wd: (wd[1], wd[0]))[0]
        forms = [(w, v.stem_freq(w)) for w in {word[:i] + word[i + 1 :] for i in range(len(word))}]
        forms = [(w, f) for w, f in forms if len(w) >= self.min_len and f >= self.min_df]
        if forms:
            return max(forms, key=lambda wf: (wf[1], wf[0]))[0]
        if len(word) >= self.far_len:
            far = [(w, d, f) for w, d, f in v.near(word, 2) if f >= self.min_df]
            if far:
                return min(far, key=lambda x: (x[1], -x[2], x[0]))[0]
        splits = []
        for i in range(3, len(word) - 2):
            a, b = word[:i], word[i:]
            fa, fb = v.freq(a), v.freq(b)
            if fa >= self.min_df and fb >= self.min_df:
                splits.append((f"{a} {b}", min(fa, fb)))
        if splits:
            return max(splits, key=lambda wf: (wf[1], wf[0]))[0]
        return None

    def _unit_rules(self) -> list[tuple[re.Pattern[str], Any]]:
        """The rewrites for this catalog, compiled once (again after upserts changed the counts)."""
        v = self.vocab
        if self._rules is not None and self._rules_version == v.version:
            return self._rules
        rules: list[tuple[re.Pattern[str], Any]] = []
        joined, split = v.unit_use("dims:joined"), v.unit_use("dims:split")
        if joined > split:
            rules.append((re.compile(r"(?<!\w)(\d+)\s+x\s+(\d+)(?!\w)", re.IGNORECASE), r"\1x\2"))
        elif split > joined:
            rules.append((re.compile(r"(?<!\w)(\d+)x(\d+)(?!\w)", re.IGNORECASE), r"\1 x \2"))
        for forms, symbols in UNIT_GROUPS:
            best = max((v.unit_use(f), -i, f) for i, f in enumerate(forms))
            if best[0] == 0:
                continue  # the catalog never writes this unit after a number: nothing to match
            canon = best[2]
            # a form many products use too is kept beside the usual one: both are searched
            kept = {f for f in forms if f != canon and v.unit_use(f) >= _KEEP_SHARE * best[0]}
            alts = "|".join(re.escape(f) for f in sorted((*forms, *symbols), key=len, reverse=True))
            pattern = (
                r"(?<![^\W\d_])(\d+(?:[./]\d+)?)(?:\s*-\s*|\s*)(" + alts + r")\.?(?![^\W_])" + _NOT_A_COUNT
            )

            def repl(m: re.Match[str], canon: str = canon, kept: set[str] = kept) -> str:
                typed = m.group(2).lower()
                return self._written(m.group(1), [typed, canon] if typed in kept else [canon])

            rules.append((re.compile(pattern, re.IGNORECASE), repl))
        self._rules, self._rules_version = rules, v.version
        return rules

    def _written(self, number: str, forms: list[str]) -> str:
        """The number with each unit form the way products write it: apart ("60 watt"), joined
        ("60w", one token to BM25), or both when each is used by at least ``_KEEP_SHARE`` of the
        products writing that form. Vocabularies saved before joined forms were counted say
        nothing about them: apart, as then."""
        apart: list[str] = []
        joined: list[str] = []
        for form in forms:
            j, s = self.vocab.unit_use(form + ":joined"), self.vocab.unit_use(form + ":spaced")
            top = max(j, s)
            if j and j >= _KEEP_SHARE * top:
                joined.append(number + form)
            if not top or s >= _KEEP_SHARE * top:
                apart.append(form)
        return " ".join([*joined, *([number, *apart] if apart else [])])

    def units(self, text: str) -> str:
        """Units after numbers and dimensions written the way the catalog writes them ("36 inch"
        -> "36 in", '8\'' -> "8 ft", "2x4" -> "2 x 4" when products say "2 in. x 4 in."). Not
        reported as a correction: the shopper's meaning is unchanged."""
        for pattern, repl in self._unit_rules():
            text = pattern.sub(repl, text)
        return text

    def correct(self, text: str) -> Correction:
        original = text
        text = self.units(text)
        matches = list(_WORD.finditer(text))
        offered = [self.suggest(m.group(0).casefold()) for m in matches]
        fixes = self._in_context(matches, offered)
        searched, changes = _replace(text, matches, fixes)
        suggestion = None
        if fixes != offered:
            suggestion = self.joins(_replace(text, matches, offered)[0])
        return Correction(self.joins(searched), original, changes, suggestion)

    def _in_context(self, matches: list[re.Match[str]], fixes: list[str | None]) -> list[str | None]:
        """Drops the fixes of common words whose replacement fewer than ``min_df`` products use
        with another word of the (corrected) query."""
        v = self.vocab
        common = [
            (i, fix)
            for i, (m, fix) in enumerate(zip(matches, fixes, strict=True))
            if fix is not None and m.group(0).casefold() in v.lexicon
        ]
        if not common or not v.has_postings:  # the usual query: no common word to check
            return fixes
        words = [(fix or m.group(0)).casefold().split() for m, fix in zip(matches, fixes, strict=True)]
        out = list(fixes)
        for i, fix in common:
            others = {w for j, ws in enumerate(words) if j != i for w in ws if v.freq(w)}
            if not any(v.together([*fix.split(), o], self.min_df) for o in others):
                out[i] = None
        return out

    def joins(self, text: str) -> str:
        """Adds the catalog's one-word spelling after two query words it writes as one ("back
        splash" -> "back splash backsplash"): both spellings are searched, so products written
        either way match. Not reported as a correction."""
        words = list(_WORD.finditer(text))
        extra: list[tuple[int, str]] = []
        for m1, m2 in zip(words, words[1:], strict=False):
            a, b = m1.group(0).casefold(), m2.group(0).casefold()
            if not (a.isalpha() and b.isalpha()) or len(a) + len(b) < 6 or text[m1.end() : m2.start()] != " ":
                continue
            if a in _UNIT_FORM_SET and text[: m1.start()].rstrip()[-1:].isdigit():
                continue  # "3 in to 2 in": a unit after a number, not half of a word
            if self.vocab.freq(a + b) >= self.min_df:
                extra.append((m2.end(), a + b))
        for pos, word in reversed(extra):
            text = f"{text[:pos]} {word}{text[pos:]}"
        return text
