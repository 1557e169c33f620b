"""A trained CF model: artefacts on disk (arrays + JSON, no pickle) and the scoring that both the
trainer's tuning and the retriever use, so what is tuned is exactly what is served.

Score of item i for a query q (matched to known query groups) and an optional user u:

    s(i) = log p~(i | q) + w_als * <x_q, y_i> + w_user * <x_u, y_i> + w_trend * trend_i
           + w_seen * log(1 + h_ui)

where p~ is the smoothed click distribution of the graph (see ``graph``; optionally smoothed
toward the token-level distribution of the query text with ``kappa_tok`` pseudo-clicks), mixed
with one PMI random-walk step ``(1 - w_pmi) * p + w_pmi * sum_j p(j) * P(i | j)`` over co-engaged
items, x, y are the learned factors (cold items carry their content-mapped vector) and trend_i
the item's recent click rate against its long-run share (``graph.item_trend``), h_ui the user's
own weighted events on the item in the training log (the sign of ``w_seen`` is learned: on the
Best Buy log a shopper seldom clicks the same SKU twice). A query with no
exact or fuzzy match takes the token-level distribution (``tokenmodel``) as p~ when
``token_fallback`` is on. Candidates are the query's clicked items, their PMI neighbours and a
FAISS inner-product search over the item factors (which is how items nobody has clicked yet can
be found at all). With ``live`` (``indexer.cf.live``) the clicks stored since training join p~,
the prior, the trend and h_ui, and a text only those clicks know ranks by them (match "live").
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any
from zipfile import BadZipFile

import numpy as np

from indexer.cf.coldstart import ContentMapper, load_mapper, save_mapper
from indexer.cf.graph import QueryGraph
from indexer.cf.live import LIVE_QUERY_PSEUDO, LiveClicks, LiveEdges
from indexer.cf.pmi import ItemNeighbours
from indexer.cf.queries import QueryMatch, QueryVocab
from indexer.cf.tokenmodel import TokenDistribution, TokenModel, sum_by_id
from indexer.vector import load_vector_index, make_vector_index
from indexer.vector.base import VectorIndex
from shopsearch.errors import IndexCorruptError

FORMAT_VERSION = 1


@dataclass(frozen=True)
class BlendParams:
    """Serving-time knobs (tuned by the trainer on a time-based hold-out of the log)."""

    alpha: float = 1.0  # graph smoothing toward the popularity prior (pseudo-clicks)
    gamma: float = 0.3  # share of the recent-clicks distribution
    w_als: float = 0.5  # weight of the learned query-item score
    w_user: float = 0.5  # weight of the learned user-item score (personalisation)
    w_pmi: float = 0.05  # PMI random-walk share
    fuzzy_min_score: float = 0.82
    ann_candidates: int = 100  # factor-space candidates added per query (tail and cold items)
    token_fallback: bool = True  # an unmatched query scores by the clicks of queries sharing its words
    kappa_tok: float = 0.0  # pseudo-clicks of the token-level distribution in a matched query's history
    w_trend: float = 0.0  # weight of the item trend (recent click rate vs long-run share)
    # weight of log(1 + the user's own weighted events on the item): negative when shoppers of
    # this log rarely come back to an item they already engaged with, positive when they do
    w_seen: float = 0.0

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass
class ScoredItems:
    items: np.ndarray  # int64 CF item indices, best first
    scores: np.ndarray  # float64
    match: str | None  # "exact" (after normalisation) | "fuzzy" | "tokens" | None
    match_score: float  # 1 exact, the similarity for fuzzy, the share of known words for tokens
    personalised: bool
    parts: dict[str, np.ndarray] = field(default_factory=dict)  # per-item terms (explain, re-ranker)


@dataclass
class UserHistory:
    """CSR over users: the items each user engaged with and the summed event weights."""

    ptr: np.ndarray  # int64 (n_users + 1)
    item: np.ndarray  # int32, sorted within a user
    weight: np.ndarray  # float32

    @classmethod
    def build(
        cls, user_row: np.ndarray, item: np.ndarray, weight: np.ndarray, n_users: int, n_items: int
    ) -> UserHistory:
        keep = user_row >= 0
        key = user_row[keep].astype(np.int64) * n_items + item[keep]
        uniq, inv = np.unique(key, return_inverse=True)
        w = np.bincount(inv, weights=weight[keep], minlength=len(uniq))
        ptr = np.zeros(n_users + 1, dtype=np.int64)
        ptr[1:] = np.cumsum(np.bincount(uniq // n_items, minlength=n_users))
        return cls(ptr, (uniq % n_items).astype(np.int32), w.astype(np.float32))

    def of(self, user: int) -> tuple[np.ndarray, np.ndarray]:
        s, e = self.ptr[user], self.ptr[user + 1]
        return self.item[s:e].astype(np.int64), self.weight[s:e].astype(np.float64)

    def save(self, path: Path) -> None:
        np.savez(path, ptr=self.ptr, item=self.item, weight=self.weight)

    @classmethod
    def load(cls, path: Path, n_users: int, n_items: int) -> UserHistory:
        with np.load(path, allow_pickle=False) as z:
            h = cls(z["ptr"], z["item"], z["weight"])
        if (
            h.ptr.shape != (n_users + 1,)
            or int(h.ptr[-1]) != len(h.item)
            or len(h.weight) != len(h.item)
            or (len(h.item) and int(h.item.max()) >= n_items)
        ):
            raise IndexCorruptError(f"{path} does not match users.json / items.json")
        return h


@dataclass
class CFModel:
    item_ids: list[str]
    vocab: QueryVocab
    graph: QueryGraph
    neighbours: ItemNeighbours
    query_factors: np.ndarray  # (n_groups, d)
    user_ids: list[str]
    user_factors: np.ndarray  # (n_users, d)
    item_factors: np.ndarray  # (n_items, d), cold items mapped from content
    item_counts: np.ndarray  # weighted interactions per item (0 = cold)
    params: BlendParams
    manifest: dict[str, Any] = field(default_factory=dict)
    mapper: ContentMapper | None = None
    tokens: TokenModel | None = None  # None: a model trained before the token model existed
    item_trend: np.ndarray | None = None  # float per item; None reads as all zeros
    # (2, n_items) weighted clicks per item, whole history and recent (the trend's inputs), in the
    # units of the newest training event; None: trained before it existed (live trend then frozen)
    item_activity: np.ndarray | None = None
    history: UserHistory | None = None  # each user's engaged items; None: trained before it existed
    _item_index: dict[str, int] | None = None
    _user_index: dict[str, int] | None = None
    _ann: VectorIndex | None = None
    _pmi_rownorm: np.ndarray | None = None

    # ----------------------------------------------------------------- lookups
    @property
    def item_index(self) -> dict[str, int]:
        if self._item_index is None:
            self._item_index = {x: i for i, x in enumerate(self.item_ids)}
        return self._item_index

    @property
    def user_index(self) -> dict[str, int]:
        if self._user_index is None:
            self._user_index = {x: i for i, x in enumerate(self.user_ids)}
        return self._user_index

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def ann(self) -> VectorIndex:
        """FAISS index over the L2-normalised item factors (labels = CF item numbers): candidate
        generation by cosine, which does not favour the long vectors of popular items the way a
        raw inner product does, so tail and cold items can surface."""
        if self._ann is None:
            index = make_vector_index(self.item_factors.shape[1], self.n_items, kind="auto", device="cpu")
            index.add(_normalise(self.item_factors), np.arange(self.n_items, dtype=np.int64))
            self._ann = index
        return self._ann

    def nearest(
        self, vec: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(items, cosine) of the k items whose factors point most like ``vec``."""
        q = _normalise(np.asarray(vec, dtype=np.float32)[None, :])
        scores, labels = self.ann().search(q, max(1, min(k, self.n_items)), allowed=allowed)
        keep = labels[0] >= 0
        return labels[0][keep].astype(np.int64), scores[0][keep].astype(np.float64)

    def with_params(self, params: BlendParams) -> CFModel:
        return replace(self, params=params)

    def match(self, text: str) -> list[tuple[QueryMatch, float]]:
        """Known query groups for ``text`` with mixture weights (one for an exact match)."""
        g = self.vocab.exact(text)
        if g is not None:
            return [(QueryMatch(g, "exact", 1.0), 1.0)]
        found = self.vocab.fuzzy(text, self.params.fuzzy_min_score, limit=3)
        if not found:
            return []
        raw = np.asarray([m.score**10 * math.sqrt(1 + self.vocab.counts[m.group]) for m in found])
        w = raw / raw.sum()
        return list(zip(found, w.tolist(), strict=True))

    # ----------------------------------------------------------------- scoring
    def score_query(
        self,
        text: str | None,
        n: int,
        *,
        user: str | None = None,
        allowed: np.ndarray | None = None,
        explain: bool = False,
        live: LiveClicks | None = None,
    ) -> ScoredItems:
        """Top-n CF items for a query (and/or a user); ``allowed`` is a boolean mask over CF items.
        ``live``: clicks stored since training (``indexer.cf.live``), counted as if refit.
        ``explain``: also each item's score terms (``ScoredItems.parts``)."""
        p = self.params
        matches = self.match(text) if text else []
        tok = self._token_distribution(text, bool(matches), live)
        fallback = not matches and tok is not None
        how, how_score = (matches[0][0].how, matches[0][0].score) if matches else (None, 0.0)
        if fallback and tok is not None:
            how, how_score = "tokens", tok.coverage
        # a text no trained group knows exactly, but that live events have: its own clicks
        own = live.own_group(text) if live is not None and text and how != "exact" else None
        if own is not None:
            how, how_score = "live", 1.0
        elif live is not None and text and how != "exact":  # a misspelling of such a text
            near = live.fuzzy_group(text, p.fuzzy_min_score)
            if near is not None and (how != "fuzzy" or near[1] > how_score):
                own, how, how_score = near[0], "live", near[1]
        gprior = live.prior() if live is not None else self.graph.prior
        u = self.user_index.get(user) if user is not None else None
        personal = u is not None and p.w_user > 0
        seen_ids, seen_w = self._seen(u, user, live) if p.w_seen else (None, None)
        if not matches and not fallback and not personal and own is None:
            return ScoredItems(np.zeros(0, np.int64), np.zeros(0), None, 0.0, False)

        # p~ of the listed items as sorted (ids, values): sparse, so a query costs what it touches,
        # not the size of the catalog
        listed_ids = np.zeros(0, np.int64)
        listed_p = np.zeros(0)
        rest = 0.0
        qf = None
        if matches:
            parts_i, parts_p = [], []
            for m, w in matches:
                items, probs, r = self.graph.distribution(
                    m.group,
                    p.alpha,
                    p.gamma,
                    p.kappa_tok,
                    tok,
                    live=live.group(m.group) if live is not None else None,
                    prior=gprior,
                )
                parts_i.append(items)
                parts_p.append(w * probs)
                rest += w * r
            listed_ids, listed_p = sum_by_id(parts_i, parts_p)
            qf = sum(w * self.query_factors[m.group] for m, w in matches)
        elif fallback and tok is not None:
            listed_ids, listed_p, rest = tok.items, tok.p, tok.rest
        elif own is not None:  # nothing to lean on but the popularity prior
            rest = 1.0
        if own is not None:
            listed_ids, listed_p, rest = _with_own_clicks(listed_ids, listed_p, rest, own, p.gamma, gprior)

        cand = [listed_ids]
        expanded: tuple[np.ndarray, np.ndarray] | None = None
        trained = listed_ids < self.n_items  # items first seen live have no PMI neighbours yet
        if p.w_pmi > 0 and trained.any():
            t_ids = listed_ids[trained]
            expanded = self.neighbours.step(t_ids, listed_p[trained] / self._pmi_norms()[t_ids])
            cand.append(expanded[0])
        k_ann = min(p.ann_candidates, self.n_items)
        ann_allowed = allowed[: self.n_items] if allowed is not None else None
        if qf is not None and p.w_als > 0 and k_ann > 0:
            cand.append(np.asarray(self._ann_ids(qf, k_ann, ann_allowed), dtype=np.int64))
        uf = self.user_factors[u] if personal else None
        if uf is not None and k_ann > 0:
            cand.append(np.asarray(self._ann_ids(uf, k_ann, ann_allowed), dtype=np.int64))
        if seen_ids is not None and p.w_seen > 0:
            cand.append(seen_ids)

        ids = np.unique(np.concatenate(cand))
        ids = ids[ids < len(gprior)]  # an item a concurrent live update added after the prior was read
        if allowed is not None and len(ids):
            # a mask shorter than the items (read before newer live items joined) allows none of them
            ids = ids[_padded(allowed, len(gprior), False)[ids]]
        if len(ids) == 0:
            return ScoredItems(ids, np.zeros(0), how, how_score, personal)
        prior = gprior[ids]
        if matches or fallback or own is not None:
            pl = _lookup(listed_ids, listed_p, ids)
            if expanded is not None and len(expanded[0]):
                pl = (1 - p.w_pmi) * pl + p.w_pmi * _lookup(expanded[0], expanded[1], ids)
            graph_term = np.log(np.maximum(np.maximum(pl, rest * prior), 1e-300))
        else:
            graph_term = np.log(prior)
        score = graph_term.copy()
        vecs = _take(self.item_factors, ids)
        als_term = vecs @ qf if qf is not None else np.zeros(len(ids))
        if qf is not None and p.w_als > 0:
            score += p.w_als * als_term
        user_term = vecs @ uf if uf is not None else np.zeros(len(ids))
        if uf is not None:
            score += p.w_user * user_term
        trend = live.trend() if live is not None else self.item_trend
        trend_term = trend[ids] if trend is not None else np.zeros(len(ids))
        if p.w_trend:
            score += p.w_trend * trend_term
        seen_term = np.log1p(_lookup(seen_ids, seen_w, ids)) if seen_ids is not None else np.zeros(len(ids))
        if seen_ids is not None:
            score += p.w_seen * seen_term
        order = np.lexsort((ids, -score))[:n]
        parts = {}
        if explain:
            top = ids[order]
            tok_p = np.zeros(len(top))
            if tok is not None:
                tok_p = _lookup(tok.items, tok.p, top) + gprior[top] * tok.rest
            parts = {
                "graph": graph_term[order],
                "als": als_term[order],
                "user": user_term[order],
                "trend": trend_term[order],
                "seen": seen_term[order],
                "tokens": tok_p,
                "interactions": _take(self.item_counts, top)
                + (live.item_events(top) if live is not None else 0.0),
            }
        return ScoredItems(ids[order], score[order], how, how_score, personal, parts)

    def _seen(
        self, u: int | None, user: str | None, live: LiveClicks | None
    ) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(items sorted, weights) the user engaged with: in training and since (live)."""
        parts = []
        if u is not None and self.history is not None:
            parts.append(self.history.of(u))
        if live is not None and user is not None:
            fresh = live.seen(user)
            if fresh is not None:
                parts.append(fresh)
        if not parts:
            return None, None
        if len(parts) == 1:
            return parts[0]
        return sum_by_id([x[0] for x in parts], [x[1] for x in parts])

    def _token_distribution(
        self, text: str | None, matched: bool, live: LiveClicks | None = None
    ) -> TokenDistribution | None:
        """The token-level distribution when it is used: as the whole graph term of an unmatched
        query (``token_fallback``) or as the smoothing prior of a matched one (``kappa_tok``)."""
        p = self.params
        if not text or self.tokens is None:
            return None
        if (matched and p.kappa_tok > 0) or (not matched and p.token_fallback):
            if live is None:
                return self.tokens.distribution(text)
            return self.tokens.distribution(
                text, live.token_rows(text), live.scales()[0], extra_items=live.n_items - self.n_items
            )
        return None

    def _ann_ids(self, vec: np.ndarray, k: int, allowed: np.ndarray | None) -> list[int]:
        if not np.any(vec):
            return []
        return self.nearest(vec, k, allowed)[0].tolist()

    def _pmi_norms(self) -> np.ndarray:
        """Sum of each item's PMI weights: the walk step's normaliser."""
        if self._pmi_rownorm is None:
            owner = np.repeat(np.arange(self.n_items), np.diff(self.neighbours.ptr))
            sums = np.bincount(owner, weights=self.neighbours.pmi.astype(np.float64), minlength=self.n_items)
            self._pmi_rownorm = np.maximum(sums, 1e-12)
        return self._pmi_rownorm

    def user_items(self, user: str, n: int, allowed: np.ndarray | None = None) -> ScoredItems:
        """Recommendations for a user from the learned factors alone (no query)."""
        u = self.user_index.get(user)
        if u is None or not np.any(self.user_factors[u]):
            return ScoredItems(np.zeros(0, np.int64), np.zeros(0), None, 0.0, False)
        items, scores = self.nearest(self.user_factors[u], n, allowed)
        return ScoredItems(items, scores, None, 0.0, True)

    def similar(
        self, item: int, n: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Items co-engaged with ``item`` (PMI, best first), then nearest by factor cosine.
        Returns (items, scores, source per item)."""
        out: list[int] = []
        scores: list[float] = []
        how: list[str] = []
        nb, val = self.neighbours.of(item)
        for j, v in zip(nb.tolist(), val.tolist(), strict=True):
            if allowed is not None and not allowed[j]:
                continue
            out.append(j)
            scores.append(float(v))
            how.append("pmi")
            if len(out) >= n:
                break
        if len(out) < n and np.any(self.item_factors[item]):
            mask = np.ones(self.n_items, dtype=bool) if allowed is None else allowed.copy()
            mask[item] = False
            if out:
                mask[np.asarray(out)] = False
            items, sims = self.nearest(self.item_factors[item], n - len(out), mask)
            out += items.tolist()
            scores += sims.tolist()
            how += ["factors"] * len(items)
        return np.asarray(out, dtype=np.int64), np.asarray(scores), how

    def map_content(self, vector: np.ndarray) -> np.ndarray | None:
        """CF vector for an item the model never saw, from its content vector (cold start)."""
        if self.mapper is None or vector.shape[-1] != self.mapper.dim:
            return None
        return self.mapper.predict(vector[None, :])[0]

    # ----------------------------------------------------------------- files
    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "items.json").write_text(json.dumps(self.item_ids, ensure_ascii=False), encoding="utf-8")
        (folder / "users.json").write_text(json.dumps(self.user_ids, ensure_ascii=False), encoding="utf-8")
        self.vocab.save(folder)
        self.graph.save(folder / "graph.npz")
        self.neighbours.save(folder / "pmi.npz")
        np.save(folder / "query_factors.npy", self.query_factors.astype(np.float32))
        np.save(folder / "user_factors.npy", self.user_factors.astype(np.float32))
        np.save(folder / "item_counts.npy", self.item_counts.astype(np.float32))
        np.save(folder / "item_factors.npy", self.item_factors.astype(np.float32))
        if self.tokens is not None:
            self.tokens.save(folder)
        if self.item_trend is not None:
            np.save(folder / "item_trend.npy", self.item_trend.astype(np.float32))
        if self.item_activity is not None:
            np.save(folder / "item_activity.npy", self.item_activity.astype(np.float64))
        if self.history is not None:
            self.history.save(folder / "user_items.npz")
        if self.mapper is not None:
            save_mapper(self.mapper, folder / "coldstart.npz")
        self.ann().save(folder / "item_ann")  # FAISS over the normalised factors
        manifest = {**self.manifest, "format_version": FORMAT_VERSION, "params": self.params.to_dict()}
        (folder / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")

    @classmethod
    def load(cls, folder: Path) -> CFModel:
        folder = Path(folder)
        try:
            manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
            if manifest.get("format_version") != FORMAT_VERSION:
                raise IndexCorruptError(
                    f"{folder} holds CF format {manifest.get('format_version')}, this engine reads "
                    f"{FORMAT_VERSION}: run 'shopsearch train-cf' again"
                )
            ann = load_vector_index(folder / "item_ann", device="cpu")
            item_ids = json.loads((folder / "items.json").read_text(encoding="utf-8"))
            if not isinstance(item_ids, list) or not all(isinstance(i, str) for i in item_ids):
                raise IndexCorruptError(f"{folder}/items.json is not a list of item ids")
            factors = np.load(folder / "item_factors.npy", allow_pickle=False)
            if factors.shape[0] != len(item_ids) or ann.ntotal != len(item_ids):
                raise IndexCorruptError(f"{folder}: items.json, item_factors.npy and item_ann disagree")
            mapper = load_mapper(folder / "coldstart.npz") if (folder / "coldstart.npz").exists() else None
            # optional parts: generations trained before them load without (no token model, no trend)
            tokens = TokenModel.load(folder) if (folder / "tokens.json").exists() else None
            if tokens is not None and len(tokens.item) and int(tokens.item.max()) >= len(item_ids):
                raise IndexCorruptError(f"{folder}: tokens.npz names items that items.json lacks")
            trend = None
            if (folder / "item_trend.npy").exists():
                trend = np.load(folder / "item_trend.npy", allow_pickle=False).astype(np.float64)
                if trend.shape != (len(item_ids),):
                    raise IndexCorruptError(f"{folder}: item_trend.npy does not match items.json")
            activity = None
            if (folder / "item_activity.npy").exists():
                activity = np.load(folder / "item_activity.npy", allow_pickle=False).astype(np.float64)
                if activity.shape != (2, len(item_ids)):
                    raise IndexCorruptError(f"{folder}: item_activity.npy does not match items.json")
            user_ids = json.loads((folder / "users.json").read_text(encoding="utf-8"))
            history = (
                UserHistory.load(folder / "user_items.npz", len(user_ids), len(item_ids))
                if (folder / "user_items.npz").exists()
                else None
            )
            known = set(BlendParams.__dataclass_fields__)
            params = BlendParams(**{k: v for k, v in manifest.get("params", {}).items() if k in known})
            return cls(
                item_ids=item_ids,
                vocab=QueryVocab.load(folder),
                graph=QueryGraph.load(folder / "graph.npz"),
                neighbours=ItemNeighbours.load(folder / "pmi.npz"),
                query_factors=np.load(folder / "query_factors.npy", allow_pickle=False),
                user_ids=user_ids,
                user_factors=np.load(folder / "user_factors.npy", allow_pickle=False),
                item_factors=factors,
                item_counts=np.load(folder / "item_counts.npy", allow_pickle=False),
                params=params,
                manifest=manifest,
                mapper=mapper,
                tokens=tokens,
                item_trend=trend,
                item_activity=activity,
                history=history,
                _ann=ann,
            )
        except IndexCorruptError:
            raise
        # BadZipFile / EOFError: a cut-short .npz (np.load reads it as a zip archive)
        except (OSError, ValueError, KeyError, TypeError, AttributeError, BadZipFile, EOFError) as exc:
            raise IndexCorruptError(f"CF artefacts in {folder} are unreadable: {exc}") from None


def _with_own_clicks(
    ids: np.ndarray, p: np.ndarray, rest: float, own: LiveEdges, gamma: float, prior: np.ndarray
) -> tuple[np.ndarray, np.ndarray, float]:
    """A query's distribution (listed items + rest * prior) smoothed into the live clicks of its
    exact text, the way the graph smooths a group's clicks toward the prior: the model's guess
    counts ``LIVE_QUERY_PSEUDO`` clicks, in the whole-history and the recent part alike."""
    m = LIVE_QUERY_PSEUDO
    u = np.union1d(ids, own.items)
    base = _lookup(ids, p, u)
    unlisted = ~np.isin(u, ids)
    base[unlisted] = rest * prior[u[unlisted]]
    clicks_a = _lookup(own.items, own.all, u) * own.scale_all
    clicks_r = _lookup(own.items, own.recent, u) * own.scale_recent
    den_a = own.total_all * own.scale_all + m
    den_r = own.total_recent * own.scale_recent + m
    out = (1 - gamma) * (clicks_a + m * base) / den_a + gamma * (clicks_r + m * base) / den_r
    return u, out, rest * ((1 - gamma) * m / den_a + gamma * m / den_r)


def _padded(x: np.ndarray, n: int, fill: float | bool) -> np.ndarray:
    """``x`` extended along its first axis to ``n`` rows with ``fill`` (items first seen live)."""
    if len(x) >= n:
        return x[:n]
    pad = np.full((n - len(x), *x.shape[1:]), fill, dtype=x.dtype)
    return np.concatenate([x, pad])


def _take(x: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Rows ``ids`` of ``x``; zeros for ids past its end (items first seen live: no factors)."""
    if len(ids) == 0 or int(ids.max()) < len(x):
        return x[ids]
    out = np.zeros((len(ids), *x.shape[1:]), dtype=x.dtype)
    known = ids < len(x)
    out[known] = x[ids[known]]
    return out


def _lookup(keys: np.ndarray, values: np.ndarray, query: np.ndarray) -> np.ndarray:
    """values[k] where keys[k] == q for each q of ``query`` (0 where absent); ``keys`` sorted."""
    out = np.zeros(len(query))
    if len(keys) == 0:
        return out
    at = np.minimum(np.searchsorted(keys, query), len(keys) - 1)
    hit = keys[at] == query
    out[hit] = values[at[hit]]
    return out


def _normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)).astype(np.float32)
