"""A trained CF model: artefacts on disk (arrays + JSON, no pickle) and the scoring that both the
trainer's tuning and the retriever use, so what is tuned is exactly what is served.

Score of item i for a query q (matched to known query groups) and an optional user u:

    s(i) = log p~(i | q) + w_als * <x_q, y_i> + w_user * <x_u, y_i>

where p~ is the smoothed click distribution of the graph (see ``graph``), mixed with one PMI
random-walk step ``(1 - w_pmi) * p + w_pmi * sum_j p(j) * P(i | j)`` over co-engaged items, and
x, y are the learned factors (cold items carry their content-mapped vector). Candidates are the
query's clicked items, their PMI neighbours and a FAISS inner-product search over the item factors
(which is how items nobody has clicked yet can be found at all).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from indexer.cf.coldstart import ContentMapper, load_mapper, save_mapper
from indexer.cf.graph import QueryGraph
from indexer.cf.pmi import ItemNeighbours
from indexer.cf.queries import QueryMatch, QueryVocab
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

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass
class ScoredItems:
    items: np.ndarray  # int64 CF item indices, best first
    scores: np.ndarray  # float64
    match: str | None  # "exact" (after normalisation) | "fuzzy" | None
    match_score: float
    personalised: bool
    parts: dict[str, np.ndarray] = field(default_factory=dict)  # per-item terms, for explain


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
    ) -> ScoredItems:
        """Top-n CF items for a query (and/or a user); ``allowed`` is a boolean mask over CF items."""
        p = self.params
        matches = self.match(text) if text else []
        u = self.user_index.get(user) if user is not None else None
        personal = u is not None and p.w_user > 0
        if not matches and not personal:
            return ScoredItems(np.zeros(0, np.int64), np.zeros(0), None, 0.0, False)

        listed: dict[int, float] = {}
        rest = 0.0
        qf = None
        if matches:
            for m, w in matches:
                items, probs, r = self.graph.distribution(m.group, p.alpha, p.gamma)
                for i, pr in zip(items.tolist(), probs.tolist(), strict=True):
                    listed[i] = listed.get(i, 0.0) + w * pr
                rest += w * r
            qf = sum(w * self.query_factors[m.group] for m, w in matches)

        cand: dict[int, None] = dict.fromkeys(listed)
        expanded: dict[int, float] = {}
        if p.w_pmi > 0 and listed:
            rownorm = self._pmi_norms()
            for i, pr in listed.items():
                nb, val = self.neighbours.of(i)
                if len(nb) == 0:
                    continue
                share = pr / rownorm[i]
                for j, v in zip(nb.tolist(), val.tolist(), strict=True):
                    expanded[j] = expanded.get(j, 0.0) + share * v
            cand.update(dict.fromkeys(expanded))
        k_ann = min(p.ann_candidates, self.n_items)
        if qf is not None and p.w_als > 0 and k_ann > 0:
            cand.update(dict.fromkeys(self._ann_ids(qf, k_ann, allowed)))
        uf = self.user_factors[u] if personal else None
        if uf is not None and k_ann > 0:
            cand.update(dict.fromkeys(self._ann_ids(uf, k_ann, allowed)))

        ids = np.fromiter(cand, dtype=np.int64, count=len(cand))
        if allowed is not None and len(ids):
            ids = ids[allowed[ids]]
        if len(ids) == 0:
            return ScoredItems(
                ids,
                np.zeros(0),
                matches[0][0].how if matches else None,
                matches[0][0].score if matches else 0.0,
                personal,
            )
        prior = self.graph.prior[ids]
        if matches:
            pl = np.fromiter((listed.get(i, 0.0) for i in ids.tolist()), dtype=np.float64, count=len(ids))
            if expanded:
                pe = np.fromiter(
                    (expanded.get(i, 0.0) for i in ids.tolist()), dtype=np.float64, count=len(ids)
                )
                pl = (1 - p.w_pmi) * pl + p.w_pmi * pe
            graph_term = np.log(np.maximum(np.maximum(pl, rest * prior), 1e-300))
        else:
            graph_term = np.log(prior)
        score = graph_term.copy()
        vecs = self.item_factors[ids]
        als_term = vecs @ qf if qf is not None else np.zeros(len(ids))
        if qf is not None and p.w_als > 0:
            score += p.w_als * als_term
        user_term = vecs @ uf if uf is not None else np.zeros(len(ids))
        if uf is not None:
            score += p.w_user * user_term
        order = np.lexsort((ids, -score))[:n]
        parts = {}
        if explain:
            parts = {
                "graph": graph_term[order],
                "als": als_term[order],
                "user": user_term[order],
                "interactions": self.item_counts[ids[order]],
            }
        first = matches[0][0] if matches else None
        return ScoredItems(
            ids[order],
            score[order],
            first.how if first else None,
            first.score if first else 0.0,
            personal,
            parts,
        )

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
            factors = np.load(folder / "item_factors.npy", allow_pickle=False)
            if factors.shape[0] != len(item_ids) or ann.ntotal != len(item_ids):
                raise IndexCorruptError(f"{folder}: items.json, item_factors.npy and item_ann disagree")
            mapper = load_mapper(folder / "coldstart.npz") if (folder / "coldstart.npz").exists() else None
            known = set(BlendParams.__dataclass_fields__)
            params = BlendParams(**{k: v for k, v in manifest.get("params", {}).items() if k in known})
            return cls(
                item_ids=item_ids,
                vocab=QueryVocab.load(folder),
                graph=QueryGraph.load(folder / "graph.npz"),
                neighbours=ItemNeighbours.load(folder / "pmi.npz"),
                query_factors=np.load(folder / "query_factors.npy", allow_pickle=False),
                user_ids=json.loads((folder / "users.json").read_text(encoding="utf-8")),
                user_factors=np.load(folder / "user_factors.npy", allow_pickle=False),
                item_factors=factors,
                item_counts=np.load(folder / "item_counts.npy", allow_pickle=False),
                params=params,
                manifest=manifest,
                mapper=mapper,
                _ann=ann,
            )
        except IndexCorruptError:
            raise
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise IndexCorruptError(f"CF artefacts in {folder} are unreadable: {exc}") from None


def _normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)).astype(np.float32)
