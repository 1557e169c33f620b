"""Token-level click model: P(item | query tokens) pooled from every query that shares a token.

The click graph only knows whole queries. A query nobody typed before ("batman asylum",
"rocksmith authentic guitar") or one seen once or twice has no usable click distribution of its
own, but its words have been clicked on in other queries. For each token t of the known queries,
``C[t, i]`` is the weighted clicks on item i of queries containing t; a query with known tokens T
gets the idf-weighted mixture

    p_tok(i | q) = sum_t w_t * (C[t, i] + beta * prior_i) / (C_t + beta),   w_t = idf_t / sum idf

where idf is measured over items (a token clicked on few items, like "rocksmith", says more than
"xbox"). A mixture rather than a product of the token distributions: on the Best Buy tuning split
it ranked unseen queries as well or better, and it never collapses to nothing when one word is
off-topic. The result has the graph's "listed items + rest * prior" form, so it serves both as the
whole graph term of an unmatched query and as a smoothing prior of a matched one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from indexer.cf.queries import tokens

BETA = 1.0  # pseudo-clicks of the popularity prior in each token's distribution


def sum_by_id(ids: Sequence[np.ndarray], weights: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(sorted unique ids, summed weights) of sparse vectors given as parallel (ids, weights) parts:
    how every sparse item distribution of the CF models is pooled."""
    uniq, inv = np.unique(np.concatenate(ids).astype(np.int64, copy=False), return_inverse=True)
    return uniq, np.bincount(inv, weights=np.concatenate(weights), minlength=len(uniq))


@dataclass
class TokenDistribution:
    items: np.ndarray  # int64 items clicked under at least one of the query's tokens
    p: np.ndarray  # float64 listed part of p_tok(i | q) (add rest * prior_i for the full value)
    rest: float  # coefficient of the prior: an unlisted item has p_tok = rest * prior_i
    coverage: float  # share of the query's tokens the model knows (0..1)


@dataclass
class TokenModel:
    """CSR over tokens: ``ptr``/``item``/``weight`` (clicks per token and item), token totals, idf."""

    tokens: list[str]
    ptr: np.ndarray  # int64 (n_tokens + 1)
    item: np.ndarray  # int32
    weight: np.ndarray  # float32
    total: np.ndarray  # float64 per token
    idf: np.ndarray  # float64 per token
    _index: dict[str, int] | None = None
    _n_clicked: int | None = None  # items with a token click (the idf's numerator), when needed

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def index(self) -> dict[str, int]:
        if self._index is None:
            self._index = {t: k for k, t in enumerate(self.tokens)}
        return self._index

    def distribution(
        self,
        text: str,
        live: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
        scale: float = 1.0,
        extra_items: int = 0,
    ) -> TokenDistribution | None:
        """p_tok(i | text); None when no token of ``text`` was ever clicked on. ``live``: clicks
        stored since training per token (items, weights; ``indexer.cf.live``), ``scale`` the factor
        that brings all counts to the newest event's units, ``extra_items`` the items first clicked
        since (they widen the idf)."""
        words = list(dict.fromkeys(tokens(text)))
        if not words:
            return None
        if live is not None and any(w in live for w in words):
            return self._with_live(words, live, scale, extra_items)
        return self._plain(words, scale)

    def _plain(self, words: list[str], scale: float = 1.0) -> TokenDistribution | None:
        """The trained counts alone, times ``scale`` (BETA stays one click)."""
        index = self.index
        known = np.asarray([index[w] for w in words if w in index], dtype=np.int64)
        if len(known) == 0:
            return None
        share = self.idf[known] / self.idf[known].sum()
        denom = self.total[known] * scale + BETA
        starts, ends = self.ptr[known], self.ptr[known + 1]
        lens = ends - starts
        idx = np.arange(int(lens.sum())) - np.repeat(np.cumsum(lens) - lens, lens) + np.repeat(starts, lens)
        items = self.item[idx].astype(np.int64)
        contrib = self.weight[idx].astype(np.float64) * np.repeat(scale * share / denom, lens)
        uniq, p = sum_by_id([items], [contrib])
        rest = float((share * BETA / denom).sum())
        return TokenDistribution(uniq, p, rest, len(known) / len(words))

    def _with_live(
        self, words: list[str], live: Mapping[str, tuple[np.ndarray, np.ndarray]], scale: float, extra: int
    ) -> TokenDistribution | None:
        """The mixture with each token's trained and live clicks pooled, as a refit would count
        them (a token only live events know joins it; the idf sees the pooled item counts)."""
        index = self.index
        if self._n_clicked is None:
            self._n_clicked = max(len(np.unique(self.item)), 1)
        n_clicked = self._n_clicked + extra
        rows = []
        for w in words:
            k = index.get(w)
            parts_i, parts_w = [], []
            if k is not None:
                parts_i.append(self.item[self.ptr[k] : self.ptr[k + 1]].astype(np.int64))
                parts_w.append(self.weight[self.ptr[k] : self.ptr[k + 1]].astype(np.float64))
            if w in live:
                parts_i.append(live[w][0])
                parts_w.append(live[w][1])
            if not parts_i:
                continue
            items, weights = sum_by_id(parts_i, parts_w)
            weights *= scale
            rows.append((items, weights, math.log(n_clicked / (1.0 + len(items))) + 1.0))
        if not rows:
            return None
        idf = np.asarray([r[2] for r in rows])
        share = idf / idf.sum()
        denom = np.asarray([r[1].sum() for r in rows]) + BETA
        items, p = sum_by_id(
            [r[0] for r in rows], [r[1] * (sh / d) for r, sh, d in zip(rows, share, denom, strict=True)]
        )
        return TokenDistribution(items, p, float((share * BETA / denom).sum()), len(rows) / len(words))

    # ----------------------------------------------------------------- files
    def save(self, folder: Path) -> None:
        (folder / "tokens.json").write_text(json.dumps(self.tokens, ensure_ascii=False), encoding="utf-8")
        np.savez(
            folder / "tokens.npz",
            ptr=self.ptr,
            item=self.item,
            weight=self.weight,
            total=self.total,
            idf=self.idf,
        )

    @classmethod
    def load(cls, folder: Path) -> TokenModel:
        words = json.loads((folder / "tokens.json").read_text(encoding="utf-8"))
        with np.load(folder / "tokens.npz", allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        if len(arrays["ptr"]) != len(words) + 1:
            raise ValueError("tokens.json and tokens.npz disagree on the number of tokens")
        return cls(tokens=list(words), **arrays)


def build_token_model(
    queries: Sequence[str | None], item: np.ndarray, weight: np.ndarray, n_items: int
) -> TokenModel:
    """Aggregate weighted events by the distinct tokens of their query (events without one are skipped)."""
    vocab: dict[str, int] = {}
    rows: list[int] = []
    cols: list[int] = []
    vals: list[float] = []
    cache: dict[str, list[int]] = {}
    for q, i, w in zip(queries, item.tolist(), weight.tolist(), strict=True):
        if not q or w <= 0:
            continue
        ids = cache.get(q)
        if ids is None:
            ids = cache[q] = [vocab.setdefault(t, len(vocab)) for t in dict.fromkeys(tokens(q))]
        rows += ids
        cols += [i] * len(ids)
        vals += [w] * len(ids)
    n_tokens = len(vocab)
    if rows:
        key = np.asarray(rows, dtype=np.int64) * n_items + np.asarray(cols, dtype=np.int64)
        uniq, inv = np.unique(key, return_inverse=True)
        c = np.bincount(inv, weights=np.asarray(vals), minlength=len(uniq))
        t, i = uniq // n_items, uniq % n_items
    else:
        c, t, i = np.zeros(0), np.zeros(0, np.int64), np.zeros(0, np.int64)
    counts = np.bincount(t, minlength=n_tokens)
    ptr = np.zeros(n_tokens + 1, dtype=np.int64)
    ptr[1:] = np.cumsum(counts)
    total = np.bincount(t, weights=c, minlength=n_tokens).astype(np.float64)
    n_clicked = max(int(np.count_nonzero(np.bincount(i, minlength=n_items))), 1)
    idf = np.log(n_clicked / (1.0 + counts)) + 1.0  # over items: broad tokens weigh less (always > 0)
    return TokenModel(
        tokens=sorted(vocab, key=vocab.__getitem__),
        ptr=ptr,
        item=i.astype(np.int32),
        weight=c.astype(np.float32),
        total=total,
        idf=idf,
    )
