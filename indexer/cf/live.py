"""Clicks stored after a CF generation was trained, counted at query time.

Why: a CF generation is a snapshot that ``shopsearch train-cf`` refits now and then (factors, PMI,
tuned weights: seconds to minutes). Shoppers keep clicking in between, and on a catalog whose
click shares move (a launch week, a sale) a model even a day old still ranks yesterday's
favourites. The counts the click graph is made of are cheap to keep exact, so ``LiveClicks``
adds each newer event to them as soon as it is stored:

* per query: the weighted clicks on each item, pooled by the model's own query groups; a text no
  group knows starts a live group of its own, pooled by the same normalised keys and found by
  fuzzy matching as the trained queries are;
* per item: its recent clicks, which move the popularity prior;
* per user: the items engaged with, for the learned seen-item term (``w_seen``);
* per query word: the clicks the token model pools (for queries no known query matches).

Each event weighs what the trainer would give it (event type, position correction, time decay).
Counts are kept in the units of the model's newest training event and scaled at query time to
the newest event known, as a refit would measure them, so a query reads the click graph, prior,
trend and token model a refit on the same events would give it. Factors and PMI stay as trained
until the next ``train-cf``. An item the model has never seen (a product launched or first
clicked after training) joins with its first click: it takes the next CF item number
(``model.n_items + j``, see ``item_id``), with live counts and no factors.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from rapidfuzz import process
from rapidfuzz.distance import Indel

from indexer.cf.graph import DAY, PRIOR_FLOOR, event_weights, trend_from_totals
from indexer.cf.queries import compact_key, query_key, tokens

if TYPE_CHECKING:
    from indexer.cf.model import CFModel
    from indexer.interactions import EventLog

# pseudo-clicks of the model's own distribution (fuzzy match, token model or prior) in a query
# that only live events know: one or two real clicks on the exact text outweigh a guess
LIVE_QUERY_PSEUDO = 2.0
_MAX_EXP2 = 900.0  # counts are kept in training-time units; 2**900 is far from float64's limit


def _keys(text: str, key: str) -> tuple[str, str, str]:
    """The spellings a query group is known by (``QueryVocab.exact`` looks up the same three)."""
    return key, compact_key(text), key.replace(" ", "")


@dataclass(frozen=True)
class LiveEdges:
    """One query's live counts as sorted arrays (training-time units) and the query-time scales."""

    items: np.ndarray  # int64, sorted
    all: np.ndarray  # float64
    recent: np.ndarray  # float64
    total_all: float
    total_recent: float
    scale_all: float
    scale_recent: float

    def merged(
        self, items: np.ndarray, a: np.ndarray, r: np.ndarray, ta: float, tr: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, float]:
        """A trained group's edges with these counts added, both scaled to query time."""
        u = np.union1d(np.asarray(items, dtype=np.int64), self.items)
        a_u = np.zeros(len(u))
        r_u = np.zeros(len(u))
        at = np.searchsorted(u, items)
        a_u[at] = a
        r_u[at] = r
        at = np.searchsorted(u, self.items)
        a_u[at] += self.all
        r_u[at] += self.recent
        return (
            u,
            a_u * self.scale_all,
            r_u * self.scale_recent,
            (ta + self.total_all) * self.scale_all,
            (tr + self.total_recent) * self.scale_recent,
        )


class LiveClicks:
    """Events newer than a CF model, counted the model's way. Thread-safe: ``add`` may run while
    queries read (each read takes a consistent copy of what it needs under the lock)."""

    def __init__(self, model: CFModel) -> None:
        m = model.manifest
        self.model = model
        self.event_weights: dict[str, float] = dict(m.get("event_weights") or {"click": 1.0})
        self.eta = float(m.get("position_bias_eta", 1.0))
        self.half_life_all = float(m.get("half_life_days", 0.0))
        self.half_life_recent = float(m.get("recent_half_life_days", 2.0)) or 2.0
        self.t_ref = float(m.get("newest_event", 0.0))
        self.t_new = self.t_ref
        self.last_seq = int(m.get("last_seq", 0))
        prior_mass = m.get("prior_mass")
        if prior_mass is None:  # a generation trained before it was recorded: estimate it
            prior_mass = float(model.graph.total_recent.sum()) * (1.0 + PRIOR_FLOOR)
        self.prior_mass = max(float(prior_mass), 1e-12)
        self.events = 0
        self.skipped = 0  # events of kinds that weigh nothing
        self._lock = threading.Lock()
        self._groups: dict[int, dict[int, list[float]]] = {}  # group -> item -> [all, recent]
        self._own: dict[str, int] = {}  # query_key / compact key of a query no group knows -> live group
        self._own_groups: list[dict[int, list[float]]] = []
        self._own_labels: list[str] = []  # per live group: its words, for fuzzy matching
        self._own_sorted: list[str] = []  # the same words sorted (a word swap still matches)
        self._labels: tuple[tuple[str, ...], tuple[str, ...]] | None = None  # snapshot of both
        self._new_ids: list[str] = []  # items first seen live: CF numbers n_items, n_items + 1, ...
        self._new_index: dict[str, int] = {}
        self._item_all = np.zeros(model.n_items)
        self._item_recent = np.zeros(model.n_items)
        self._item_events = np.zeros(model.n_items)  # base weights (type x position), for explain
        self._users: dict[str, dict[int, float]] = {}
        self._tokens: dict[str, dict[int, float]] = {}  # query word -> item -> clicks (whole history)
        self._cache: dict[tuple[str, int], LiveEdges] = {}
        self._prior: np.ndarray | None = None
        self._trend: np.ndarray | None = None

    # ----------------------------------------------------------------- ingest
    def __len__(self) -> int:
        return self.events

    def add(self, log: EventLog) -> int:
        """Count the events of ``log`` (any order); returns how many were counted."""
        if len(log) == 0:
            return 0
        index = self.model.item_index
        base = event_weights(log.event, log.ts, log.position, self.event_weights, eta=self.eta)
        added = 0
        with self._lock:
            for k in range(len(log)):
                w = float(base[k])
                if w <= 0:
                    self.skipped += 1
                    continue
                i = index.get(log.item[k])
                if i is None:
                    i = self._new_item(log.item[k])
                t = float(log.ts[k])
                wa = w * self._grow(t, self.half_life_all)
                wr = w * self._grow(t, self.half_life_recent)
                q = log.query[k]
                if q:
                    for word in dict.fromkeys(tokens(q)):
                        row = self._tokens.setdefault(word, {})
                        row[i] = row.get(i, 0.0) + wa
                    edges = self._edges_for(q)
                    if edges is not None:
                        cell = edges.setdefault(i, [0.0, 0.0])
                        cell[0] += wa
                        cell[1] += wr
                self._item_all[i] += wa
                self._item_recent[i] += wr
                self._item_events[i] += w
                u = log.user[k]
                if u is not None:
                    seen = self._users.setdefault(u, {})
                    seen[i] = seen.get(i, 0.0) + w
                self.t_new = max(self.t_new, t)
                added += 1
            self.events += added
            self.last_seq = max(self.last_seq, int(log.seq.max()))
            self._cache.clear()
            self._prior = None
            self._trend = None
        return added

    def _new_item(self, item_id: str) -> int:
        i = self._new_index.get(item_id)
        if i is None:
            i = self.model.n_items + len(self._new_ids)
            self._new_ids.append(item_id)
            self._new_index[item_id] = i
            self._item_all = np.append(self._item_all, 0.0)
            self._item_recent = np.append(self._item_recent, 0.0)
            self._item_events = np.append(self._item_events, 0.0)
        return i

    @property
    def n_items(self) -> int:
        """Trained items plus the items first seen live."""
        return self.model.n_items + len(self._new_ids)

    def new_ids(self) -> list[str]:
        """Ids of the items first seen live, in CF-number order (from ``model.n_items``)."""
        with self._lock:
            return list(self._new_ids)

    def item_id(self, i: int) -> str:
        n = self.model.n_items
        return self.model.item_ids[i] if i < n else self._new_ids[i - n]

    def index_of(self, item_id: str) -> int | None:
        """CF number of an item, trained or first seen live (None: never seen)."""
        i = self.model.item_index.get(item_id)
        return i if i is not None else self._new_index.get(item_id)

    def item_events(self, ids: np.ndarray) -> np.ndarray:
        """Weighted events since training of the CF items ``ids`` (0 past the known ones): read per
        query for the items it returns, so no copy of the whole array."""
        ids = np.asarray(ids, dtype=np.int64)
        out = np.zeros(len(ids))
        with self._lock:
            known = ids < len(self._item_events)
            out[known] = self._item_events[ids[known]]
        return out

    def _grow(self, t: float, half_life: float) -> float:
        if half_life <= 0:
            return 1.0
        return 2.0 ** min((t - self.t_ref) / DAY / half_life, _MAX_EXP2)

    def _edges_for(self, text: str) -> dict[int, list[float]] | None:
        g = self.model.vocab.exact(text)
        if g is not None:
            return self._groups.setdefault(g, {})
        k = query_key(text)
        if not k:
            return None
        keys = _keys(text, k)
        own = next((self._own[x] for x in keys if x in self._own), None)
        if own is None:
            own = len(self._own_groups)
            self._own_groups.append({})
            words = tokens(text)
            self._own_labels.append(" ".join(words))
            self._own_sorted.append(" ".join(sorted(words)))
            self._labels = None
        for x in keys:
            self._own.setdefault(x, own)
        return self._own_groups[own]

    # ----------------------------------------------------------------- reads
    def scales(self) -> tuple[float, float]:
        """(all, recent): what turns training-time units into units of the newest event."""
        s_all = 1.0 if self.half_life_all <= 0 else 1.0 / self._grow(self.t_new, self.half_life_all)
        return s_all, 1.0 / self._grow(self.t_new, self.half_life_recent)

    def group(self, group: int) -> LiveEdges | None:
        """Live counts of a trained query group (None when it has none)."""
        return self._read(("g", group), lambda: self._groups.get(group))

    def own_group(self, text: str) -> LiveEdges | None:
        """Live counts of a query text no trained group knows (None when no live event has it)."""
        k = query_key(text)
        if not k:
            return None
        with self._lock:
            own = next((self._own[x] for x in _keys(text, k) if x in self._own), None)
        if own is None:
            return None
        return self._read(("o", own), lambda: self._own_groups[own])

    def fuzzy_group(self, text: str, min_score: float) -> tuple[LiveEdges, float] | None:
        """The live group whose words are spelled closest to ``text`` (Indel ratio, plain or
        word-sorted, as the trained vocabulary matches), with the ratio; None below ``min_score``."""
        key = " ".join(tokens(text))
        if not key:
            return None
        with self._lock:
            if self._labels is None:  # copied once per new live query, not once per search
                self._labels = (tuple(self._own_labels), tuple(self._own_sorted))
            labels, swapped_labels = self._labels
        if not labels:
            return None
        best = process.extractOne(key, labels, scorer=Indel.normalized_similarity, score_cutoff=min_score)
        swapped = process.extractOne(
            " ".join(sorted(key.split())),
            swapped_labels,
            scorer=Indel.normalized_similarity,
            score_cutoff=min_score,
        )
        found = max((x for x in (best, swapped) if x is not None), key=lambda x: (x[1], -x[2]), default=None)
        if found is None:
            return None
        edges = self._read(("o", found[2]), lambda: self._own_groups[found[2]])
        return (edges, float(found[1])) if edges is not None else None

    def _read(self, key: tuple[str, int], get: Any) -> LiveEdges | None:
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                return hit
            edges = get()
            if not edges:
                return None
            items = np.fromiter(edges.keys(), dtype=np.int64, count=len(edges))
            vals = np.asarray(list(edges.values()), dtype=np.float64).reshape(-1, 2)
            order = np.argsort(items)
            s_all, s_rec = self.scales()
            out = LiveEdges(
                items=items[order],
                all=vals[order, 0],
                recent=vals[order, 1],
                total_all=float(vals[:, 0].sum()),
                total_recent=float(vals[:, 1].sum()),
                scale_all=s_all,
                scale_recent=s_rec,
            )
            if len(self._cache) > 50_000:
                self._cache.clear()
            self._cache[key] = out
            return out

    def prior(self) -> np.ndarray:
        """The model's popularity prior with the live recent clicks added (sums to 1)."""
        with self._lock:
            if self._prior is None:
                p = self._item_recent.copy()
                p[: self.model.n_items] += self.model.graph.prior * self.prior_mass
                self._prior = p / p.sum()
            return self._prior

    def trend(self) -> np.ndarray | None:
        """The item trend with the live clicks counted (the trained one when the model lacks the
        per-item totals it needs)."""
        act, trained = self.model.item_activity, self.model.item_trend
        if act is None and trained is None:
            return None
        with self._lock:
            if self._trend is None:
                if act is None:  # frozen, widened to the items first seen live
                    self._trend = np.concatenate([trained, np.zeros(self.n_items - len(trained))])
                else:
                    s_all, s_rec = self.scales()
                    a, r = self._item_all.copy(), self._item_recent.copy()
                    a[: self.model.n_items] += act[0]
                    r[: self.model.n_items] += act[1]
                    self._trend = trend_from_totals(a * s_all, r * s_rec)
            return self._trend

    def token_rows(self, text: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Live clicks per word of ``text`` (items, whole-history weights in training-time units),
        for the token model (``TokenModel.distribution``)."""
        out = {}
        with self._lock:
            for word in dict.fromkeys(tokens(text)):
                row = self._tokens.get(word)
                if row:
                    out[word] = (
                        np.fromiter(row.keys(), dtype=np.int64, count=len(row)),
                        np.fromiter(row.values(), dtype=np.float64, count=len(row)),
                    )
        return out

    def seen(self, user: str) -> tuple[np.ndarray, np.ndarray] | None:
        """(items sorted, summed base weights) the user engaged with since training, or None."""
        with self._lock:
            got = self._users.get(user)
            if not got:
                return None
            items = np.fromiter(got.keys(), dtype=np.int64, count=len(got))
            w = np.fromiter(got.values(), dtype=np.float64, count=len(got))
        order = np.argsort(items)
        return items[order], w[order]

    def info(self) -> dict[str, Any]:
        with self._lock:
            return {
                "events": self.events,
                "skipped": self.skipped,
                "new_items": len(self._new_ids),
                "last_seq": self.last_seq,
                "queries": len(self._groups) + len(self._own_groups),
                "new_queries": len(self._own_groups),
                "users": len(self._users),
                "hours_since_training": round(max(self.t_new - self.t_ref, 0.0) / 3600.0, 2),
            }
