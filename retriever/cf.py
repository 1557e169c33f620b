"""Serving the collaborative-filtering model: the "cf" candidate source, personalisation and
similar items.

The model is loaded lazily from ``INDEX/cf/CURRENT`` on first use and swapped (no downtime) when
a new generation is published: checked at most once per ``reload_interval`` seconds, or at once
through :meth:`CFSource.reload` (``POST /admin/reload``). With ``cf_live`` (the default) the events
stored after the generation was trained are counted as they arrive (``indexer.cf.live``), polled
from the event log on the same schedule, so a click counts within a second, not at the next
``train-cf``. A serving process runs that polling on a background thread (:meth:`CFSource.follow`,
started by the API): reading new events, and loading and catching up a new generation (every
event since its training), then never holds up a query; without it, one query per interval does
the polling. CF items are ids; the live item table maps them to rows, so the same boolean row
mask as every other source (filters, deletions) applies, and an item deleted from the catalog
never comes back through CF.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from indexer.cf.live import LiveClicks
from indexer.cf.model import CFModel
from indexer.cf.train import CF_DIR
from indexer.interactions import EventTail, user_key_for
from indexer.items import ItemTable
from shopsearch.errors import IndexCorruptError, ItemNotFoundError
from shopsearch.settings import Settings

log = logging.getLogger(__name__)


# The per-item terms of a CF score that a hit carries (``CFHits.terms``, the re-ranker's
# ``cf:*`` features): log P(click | query) from the click graph, the query-factor score, the item's
# trend, log(1 + its weighted events), and how well the query matched a known one (1 exact, the
# similarity for a fuzzy match, the share of known words for the word model; 0 for none).
CF_TERMS: tuple[str, ...] = ("log_p_click", "factor", "trend", "log_interactions", "match_score")
_LOG_P_FLOOR = -30.0  # log P of an item the graph gives no mass (the raw term is log 1e-300)


@dataclass
class CFHits:
    hits: list[tuple[int, float]]  # (row, score), best first
    details: dict[int, dict[str, Any]]  # row -> explain detail (only when asked)
    match: str | None
    personalised: bool
    terms: dict[int, tuple[float, ...]] = field(default_factory=dict)  # row -> CF_TERMS values


@dataclass
class _Loaded:
    generation: str
    model: CFModel
    # (id(table), table.n_rows) -> CF item number -> row (-1 = not in the catalog)
    rows_key: tuple[int, int, int] | None = None
    rows: np.ndarray | None = None
    live: LiveClicks | None = None  # events stored since training (None: cf_live off)


class CFSource:
    """Thread-safe holder of the live CF model of one index."""

    def __init__(self, index_dir: Path, settings: Settings, reload_interval: float = 1.0) -> None:
        self.index_dir = Path(index_dir)
        self.settings = settings
        self.reload_interval = reload_interval
        self._lock = threading.Lock()
        self._loaded: _Loaded | None = None
        self._stamp: tuple[int, str] | None = None
        self._checked = -np.inf
        self._salted_users: dict[str, str] = {}
        self._tail = EventTail(self.index_dir)
        self._follower: threading.Thread | None = None
        self._stop = threading.Event()
        self._looked = threading.Event()  # some thread has finished one look
        self._follow_error: str | None = None
        self._refused: tuple[int, str] | None = None  # a broken generation, not retried every second
        self.last_error: str | None = None  # why the newest published generation is not served

    # ----------------------------------------------------------------- background follower
    def follow(self) -> None:
        """Poll for new generations and new events on a daemon thread every ``reload_interval``
        (idempotent). Queries then read whatever it has loaded and never do the polling."""
        if self._follower is not None and self._follower.is_alive():
            return
        self._stop.clear()
        self._follower = threading.Thread(target=self._follow_loop, name="cf-follower", daemon=True)
        self._follower.start()

    def _follow_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._refresh(force=True)
                self._follow_error = None
            except Exception as exc:  # noqa: BLE001 - the thread must outlive a bad generation
                if self._follow_error != str(exc):
                    log.warning("CF follower: %s", exc)
                self._follow_error = str(exc)
            self._stop.wait(max(self.reload_interval, 0.05))

    def _followed(self) -> bool:
        """Whether queries may take the loaded state as is: the follower is running, a look (its own
        or an earlier query's) has finished, and the follower's last look did not fail (a failure
        is left to the query path to report)."""
        f = self._follower
        return f is not None and f.is_alive() and self._looked.is_set() and self._follow_error is None

    def close(self) -> None:
        """Stop the follower and close the event log reader."""
        self._stop.set()
        if self._follower is not None:
            self._follower.join(timeout=10.0)
            self._follower = None
        self._tail.close()

    # ----------------------------------------------------------------- loading
    def _current(self) -> tuple[int, str] | None:
        path = self.index_dir / CF_DIR / "CURRENT"
        try:
            st = path.stat()
            name = path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, name) if name else None

    def _refresh(self, force: bool = False, retry: bool = False) -> _Loaded | None:
        if not force and self._followed():
            return self._loaded
        now = time.monotonic()
        if not force and self._recent(now):
            return self._loaded
        with self._lock:
            if not force and self._recent(now):  # another thread looked while this one waited
                return self._loaded
            try:
                return self._look(now, retry)
            finally:
                self._looked.set()

    def _recent(self, now: float) -> bool:
        """Whether a look has finished and the last one started less than an interval ago (before
        the first look finishes, a query waits for it rather than answer without the model)."""
        return self._looked.is_set() and now - self._checked < self.reload_interval

    def _look(self, now: float, retry: bool = False) -> _Loaded | None:
        """Check CURRENT, load a new generation or follow the event log (under the lock).
        ``retry``: load a generation refused before again (an explicit reload)."""
        self._checked = now
        stamp = self._current()
        if stamp is None:
            self._loaded, self._stamp = None, None
            return None
        kept = stamp == self._stamp or (stamp == self._refused and not retry)
        if kept and self._loaded is not None:
            self._follow(self._loaded)
            return self._loaded
        if stamp == self._refused and not retry:  # refused before and nothing older serves
            return None
        folder = self.index_dir / CF_DIR / stamp[1]
        try:
            model = CFModel.load(folder)
        except IndexCorruptError as exc:
            # keep serving the previous model, or search without CF when there is none (a
            # search must not fail for want of its click source); say why once
            self.last_error = str(exc)
            if stamp != self._refused:
                serving = self._loaded.generation if self._loaded is not None else "no CF model"
                log.error("CF generation %s not loaded, serving %s: %s", stamp[1], serving, exc)
            self._refused = stamp
            if self._loaded is not None:
                self._follow(self._loaded)
            return self._loaded
        self.last_error, self._refused = None, None
        loaded = _Loaded(stamp[1], model, live=LiveClicks(model) if self.settings.cf_live else None)
        self._follow(loaded)  # catch up before serving: no click since training is left out
        self._loaded = loaded
        self._stamp = stamp
        return self._loaded

    def _follow(self, loaded: _Loaded) -> None:
        """Count the events stored since the last look (a broken log leaves the counts as they were:
        the trained model still serves)."""
        if loaded.live is None:
            return
        while True:
            try:
                log = self._tail.read(loaded.live.last_seq)
            except IndexCorruptError:
                return
            if len(log) == 0:
                return
            loaded.live.add(log)

    def reload(self) -> str | None:
        """Load the newest published CF generation now; returns its name (None: no CF model)."""
        loaded = self._refresh(force=True, retry=True)
        return loaded.generation if loaded else None

    def available(self) -> bool:
        return self._refresh() is not None

    def info(self) -> dict[str, Any]:
        loaded = self._refresh()
        if loaded is None:
            return {"trained": False, "last_error": self.last_error}
        m = loaded.model.manifest
        return {
            "trained": True,
            "generation": loaded.generation,
            "last_error": self.last_error,
            "model": m.get("model"),
            "created": m.get("created"),
            "counts": m.get("counts", {}),
            "params": m.get("params", {}),
            "holdout": m.get("holdout", {}),
            "live": loaded.live.info() if loaded.live is not None else None,
        }

    # ----------------------------------------------------------------- mapping
    def _rows(self, loaded: _Loaded, table: ItemTable) -> np.ndarray:
        """Catalog row of each CF item number (-1: not in the catalog), items first seen live
        after the trained ones."""
        new = loaded.live.new_ids() if loaded.live is not None else []
        key = (id(table), table.n_rows, len(new))
        if loaded.rows_key != key or loaded.rows is None:
            get = table.id_to_row.get
            ids = [*loaded.model.item_ids, *new]
            loaded.rows = np.fromiter((get(i, -1) for i in ids), dtype=np.int64, count=len(ids))
            loaded.rows_key = key
        return loaded.rows

    @staticmethod
    def _allowed(rows: np.ndarray, mask: np.ndarray) -> np.ndarray:
        ok = (rows >= 0) & (rows < len(mask))
        allowed = np.zeros(len(rows), dtype=bool)
        allowed[ok] = mask[rows[ok]]
        return allowed

    def user_key(self, user_id: str) -> str:
        """The stored form of a user id (hashed with the index's salt when ids are hashed)."""
        if not self.settings.hash_user_ids:
            return user_id
        key = self._salted_users.get(user_id)
        if key is None:
            key = user_key_for(self.index_dir, self.settings, user_id)
            if len(self._salted_users) > 100_000:
                self._salted_users.clear()
            self._salted_users[user_id] = key
        return key

    # ----------------------------------------------------------------- queries
    def candidates(
        self,
        text: str | None,
        n: int,
        table: ItemTable,
        mask: np.ndarray,
        *,
        user_id: str | None = None,
        explain: bool = False,
    ) -> CFHits | None:
        """CF candidates for a query (and user) among the rows ``mask`` allows; None without a model."""
        loaded = self._refresh()
        if loaded is None:
            return None
        model = loaded.model
        rows = self._rows(loaded, table)
        allowed = self._allowed(rows, mask)
        user = self.user_key(user_id) if user_id else None
        scored = model.score_query(text, n, user=user, allowed=allowed, explain=True, live=loaded.live)
        # an item a concurrent live update added after ``rows`` was read is left for the next query
        keep = scored.items < len(rows)
        items, scores = scored.items[keep], scored.scores[keep]
        hits = [(int(rows[i]), float(s)) for i, s in zip(items, scores, strict=True)]
        terms = self._terms(scored, keep, [r for r, _ in hits])
        details: dict[int, dict[str, Any]] = {}
        if explain and len(scored.items):
            p = scored.parts
            bp = model.params
            # the token-level click model took part: as the whole click term of an unmatched query,
            # or as the smoothing prior of a matched one
            tokens_used = scored.match == "tokens" or (scored.match is not None and bp.kappa_tok > 0)
            for k, (row, _s) in zip(np.flatnonzero(keep).tolist(), hits, strict=True):
                details[row] = {
                    "match": scored.match,
                    "match_score": round(scored.match_score, 3),
                    "log_p_click": round(float(p["graph"][k]), 4),
                    "factor_score": round(float(p["als"][k]), 4),
                    "user_score": round(float(p["user"][k]), 4) if scored.personalised else None,
                    "token_p_click": round(float(p["tokens"][k]), 5) if tokens_used else None,
                    "trend": round(float(p["trend"][k]), 4),
                    "trend_boost": round(bp.w_trend * float(p["trend"][k]), 4),
                    # the user's own past engagement with the item, and what it added
                    "seen_boost": round(bp.w_seen * float(p["seen"][k]), 4) if bp.w_seen and user else None,
                    "interactions": round(float(p["interactions"][k]), 3),
                    "cold_start": bool(p["interactions"][k] == 0),
                }
        return CFHits(hits, details, scored.match, scored.personalised, terms)

    @staticmethod
    def _terms(scored: Any, keep: np.ndarray, rows: list[int]) -> dict[int, tuple[float, ...]]:
        p = scored.parts
        if not rows or not p:
            return {}
        cols = np.stack(
            [
                np.maximum(p["graph"][keep], _LOG_P_FLOOR),
                p["als"][keep],
                p["trend"][keep],
                np.log1p(np.maximum(p["interactions"][keep], 0.0)),
                np.full(int(keep.sum()), scored.match_score if scored.match is not None else 0.0),
            ],
            axis=1,
        )
        return {row: tuple(v) for row, v in zip(rows, cols.tolist(), strict=True)}

    def similar(
        self, item_id: str, n: int, table: ItemTable, mask: np.ndarray, vectors: dict[str, Any] | None = None
    ) -> list[tuple[int, float, str]]:
        """(row, score, 'pmi'|'factors'|'content') of items like ``item_id``; [] without a model."""
        row = table.id_to_row.get(item_id)
        if row is None:
            raise ItemNotFoundError(f"no item with id {item_id!r}")
        loaded = self._refresh()
        if loaded is None:
            return []
        model = loaded.model
        rows = self._rows(loaded, table)
        allowed = self._allowed(rows, mask)
        i = model.item_index.get(item_id)
        if i is not None:
            allowed[i] = False
            items, scores, how = model.similar(i, n, allowed)
        else:  # an item added after training: map its content vector into the CF space
            vec = self._content_vector(model, row, vectors or {})
            if vec is None:
                return []
            items, scores = model.nearest(vec, n, allowed)
            how = ["content"] * len(items)
        return [(int(rows[j]), float(s), h) for j, s, h in zip(items, scores, how, strict=True)]

    @staticmethod
    def _content_vector(model: CFModel, row: int, vectors: dict[str, Any]) -> np.ndarray | None:
        if model.mapper is None:
            return None
        parts = []
        for modality in model.manifest.get("content_modalities", []):
            index = vectors.get(modality)
            if index is None:
                return None
            if index.contains(np.asarray([row]))[0]:
                parts.append(index.vectors_for(np.asarray([row]))[0])
            else:
                return None
        if not parts:
            return None
        return model.map_content(np.concatenate(parts))
