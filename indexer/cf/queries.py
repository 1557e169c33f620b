"""Query normalisation and the vocabulary of known queries, with a fuzzy match for misspellings.

Two spellings are the same query when their *keys* agree: case, accents, punctuation, spacing
and word order are ignored ("Call of Duty: Black-Ops" == "black ops call of duty"), and so is a
space inside a word ("xbox360" == "xbox 360", via the *compact* key: the letters and digits in
order). Everything else goes through a fuzzy match: character 3-gram TF-IDF finds candidate
known queries through an inverted index, and a Levenshtein ratio (rapidfuzz) on the compact
strings decides ("battlefeild 3" -> "battlefield 3").
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rapidfuzz.distance import Indel

_TOKEN = re.compile(r"[^\W_]+", re.UNICODE)
_JOINERS = re.compile(r"(?<=\w)['’.](?=\w)")  # "don't" -> "dont", "f.e.a.r" -> "fear"
NGRAM = 3
_FUZZY_CANDIDATES = 20


def tokens(text: str) -> list[str]:
    """Lower-case, accent-free word tokens."""
    folded = unicodedata.normalize("NFKD", text.casefold())
    folded = "".join(c for c in folded if not unicodedata.combining(c))
    return _TOKEN.findall(_JOINERS.sub("", folded))


def query_key(text: str) -> str:
    """Word-order-free key: sorted distinct tokens."""
    return " ".join(sorted(set(tokens(text))))


def compact_key(text: str) -> str:
    """Space-free key: tokens concatenated in order ('xbox 360' and 'xbox360' agree)."""
    return "".join(tokens(text))


def _grams(text: str) -> list[str]:
    s = f" {text} "
    return [s[i : i + NGRAM] for i in range(max(len(s) - NGRAM + 1, 1))]


@dataclass(frozen=True)
class QueryMatch:
    group: int
    how: str  # "exact" (normalised key or compact spelling) | "fuzzy"
    score: float  # 1.0 for exact/compact, the similarity ratio for fuzzy


class QueryVocab:
    """Known queries grouped by key; lookups map any text to a group (or None).

    Groups: queries whose ``query_key`` or ``compact_key`` agree are one group (union-find), so
    clicks on "xbox 360", "Xbox360" and "360 xbox" are pooled.
    """

    def __init__(
        self,
        keys: dict[str, int],
        compacts: dict[str, int],
        labels: list[str],
        counts: np.ndarray,
        gram_vocab: dict[str, int],
        idf: np.ndarray,
        post_ptr: np.ndarray,
        post_group: np.ndarray,
        post_weight: np.ndarray,
        fuzzy_strings: list[str],
    ) -> None:
        self.keys = keys
        self.compacts = compacts
        self.labels = labels  # one readable spelling per group (its most frequent key)
        self.counts = counts  # events per group (ties in fuzzy matching go to the popular one)
        self.gram_vocab = gram_vocab
        self.idf = idf
        self.post_ptr = post_ptr
        self.post_group = post_group
        self.post_weight = post_weight
        self.fuzzy_strings = fuzzy_strings  # per group: the spelling the fuzzy ratio compares

    def __len__(self) -> int:
        return len(self.labels)

    # ----------------------------------------------------------------- build
    @classmethod
    def build(cls, queries: Sequence[str | None]) -> tuple[QueryVocab, np.ndarray]:
        """Vocabulary over the queries of a log; returns it and each query's group (-1 for None)."""
        key_of: list[str | None] = []
        key_count: Counter[str] = Counter()
        key_compact: dict[str, str] = {}
        for q in queries:
            k = query_key(q) if q else ""
            if not k:
                key_of.append(None)
                continue
            key_of.append(k)
            key_count[k] += 1
            if k not in key_compact:
                key_compact[k] = compact_key(q or "")
        # union-find over keys linked by a shared compact spelling
        parent = {k: k for k in key_count}

        def find(x: str) -> str:
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        by_compact: dict[str, str] = {}
        for k in sorted(key_count):
            c = key_compact[k]
            other = by_compact.setdefault(c, k)
            if other != k:
                a, b = find(k), find(other)
                if a != b:
                    parent[max(a, b)] = min(a, b)
            nospace = k.replace(" ", "")
            other = by_compact.setdefault(nospace, k)
            if other != k:
                a, b = find(k), find(other)
                if a != b:
                    parent[max(a, b)] = min(a, b)
        roots = sorted({find(k) for k in key_count})
        root_id = {r: i for i, r in enumerate(roots)}
        keys = {k: root_id[find(k)] for k in key_count}
        compacts: dict[str, int] = {}
        for k, c in key_compact.items():
            compacts.setdefault(c, keys[k])
            compacts.setdefault(k.replace(" ", ""), keys[k])
        counts = np.zeros(len(roots), dtype=np.int64)
        best: dict[int, tuple[int, str]] = {}
        for k, n in key_count.items():
            g = keys[k]
            counts[g] += n
            if g not in best or (n, k) > best[g]:
                best[g] = (n, k)
        labels = [best[g][1] for g in range(len(roots))]
        group_of = np.asarray([keys[k] if k else -1 for k in key_of], dtype=np.int64)
        vocab = cls._with_fuzzy(keys, compacts, labels, counts)
        return vocab, group_of

    @classmethod
    def _with_fuzzy(
        cls, keys: dict[str, int], compacts: dict[str, int], labels: list[str], counts: np.ndarray
    ) -> QueryVocab:
        """Character 3-gram TF-IDF (sublinear tf, L2-normalised) inverted index over the groups."""
        strings = labels
        gram_vocab: dict[str, int] = {}
        doc_grams: list[Counter[int]] = []
        for s in strings:
            c: Counter[int] = Counter()
            for g in _grams(s):
                c[gram_vocab.setdefault(g, len(gram_vocab))] += 1
            doc_grams.append(c)
        n_docs = max(len(strings), 1)
        df = np.zeros(len(gram_vocab), dtype=np.float64)
        for c in doc_grams:
            for g in c:
                df[g] += 1
        idf = (np.log((1 + n_docs) / (1 + df)) + 1.0).astype(np.float32)
        postings: list[list[tuple[int, float]]] = [[] for _ in range(len(gram_vocab))]
        for doc, c in enumerate(doc_grams):
            w = {g: (1 + math.log(tf)) * idf[g] for g, tf in c.items()}
            norm = math.sqrt(sum(v * v for v in w.values())) or 1.0
            for g, v in w.items():
                postings[g].append((doc, v / norm))
        ptr = np.zeros(len(postings) + 1, dtype=np.int64)
        ptr[1:] = np.cumsum([len(p) for p in postings])
        post_group = np.fromiter((d for p in postings for d, _ in p), dtype=np.int32, count=int(ptr[-1]))
        post_weight = np.fromiter((v for p in postings for _, v in p), dtype=np.float32, count=int(ptr[-1]))
        return cls(keys, compacts, labels, counts, gram_vocab, idf, ptr, post_group, post_weight, strings)

    # ----------------------------------------------------------------- lookup
    def exact(self, text: str) -> int | None:
        k = query_key(text)
        if not k:
            return None
        g = self.keys.get(k)
        if g is None:
            g = self.compacts.get(compact_key(text))
        if g is None:
            g = self.compacts.get(k.replace(" ", ""))
        return g

    def fuzzy(self, text: str, min_score: float, limit: int = 3) -> list[QueryMatch]:
        """Known queries whose spelling is within ``min_score`` (Indel ratio, 0..1) of ``text``,
        best first; at most ``limit``."""
        key = " ".join(tokens(text))
        if not key or not len(self):
            return []
        ids = [self.gram_vocab.get(g) for g in _grams(key)]
        q: Counter[int] = Counter(i for i in ids if i is not None)
        if not q:
            return []
        cols = list(q)
        w = np.asarray([(1 + math.log(q[c])) * self.idf[c] for c in cols], dtype=np.float32)
        starts, ends = self.post_ptr[cols], self.post_ptr[np.asarray(cols) + 1]
        lens = ends - starts
        idx = np.concatenate([np.arange(s, e) for s, e in zip(starts, ends, strict=True)])
        docs = self.post_group[idx]
        weights = self.post_weight[idx] * np.repeat(w, lens)
        acc = np.bincount(docs, weights=weights, minlength=len(self))
        n_cand = min(_FUZZY_CANDIDATES, int(np.count_nonzero(acc)))
        if n_cand == 0:
            return []
        cand = np.argpartition(-acc, n_cand - 1)[:n_cand]
        scored = []
        for g in cand:
            g = int(g)
            label = self.fuzzy_strings[g]
            ratio = max(Indel.normalized_similarity(key, label), _sorted_ratio(key, label))
            if ratio >= min_score:
                scored.append((ratio, int(self.counts[g]), g))
        scored.sort(key=lambda t: (-t[0], -t[1], t[2]))
        return [QueryMatch(g, "fuzzy", float(r)) for r, _, g in scored[:limit]]

    def match(self, text: str, min_score: float) -> QueryMatch | None:
        g = self.exact(text)
        if g is not None:
            return QueryMatch(g, "exact", 1.0)
        found = self.fuzzy(text, min_score, limit=1)
        return found[0] if found else None

    # ----------------------------------------------------------------- files
    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "queries.json").write_text(
            json.dumps(
                {
                    "labels": self.labels,
                    "keys": self.keys,
                    "compacts": self.compacts,
                    "grams": self.gram_vocab,
                },
                ensure_ascii=False,
            ),
            encoding="utf-8",
        )
        np.savez(
            folder / "queries_fuzzy.npz",
            counts=self.counts,
            idf=self.idf,
            post_ptr=self.post_ptr,
            post_group=self.post_group,
            post_weight=self.post_weight,
        )

    @classmethod
    def load(cls, folder: Path) -> QueryVocab:
        meta = json.loads((folder / "queries.json").read_text(encoding="utf-8"))
        with np.load(folder / "queries_fuzzy.npz", allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        return cls(
            {k: int(v) for k, v in meta["keys"].items()},
            {k: int(v) for k, v in meta["compacts"].items()},
            list(meta["labels"]),
            arrays["counts"],
            {k: int(v) for k, v in meta["grams"].items()},
            arrays["idf"],
            arrays["post_ptr"],
            arrays["post_group"],
            arrays["post_weight"],
            list(meta["labels"]),
        )


def _sorted_ratio(a: str, b: str) -> float:
    """Ratio of the word-sorted strings: a misspelling plus a word swap still matches."""
    return Indel.normalized_similarity(" ".join(sorted(a.split())), " ".join(sorted(b.split())))
