"""Live CF counts (indexer.cf.live): events stored after training count at query time as a refit
would count them in the click graph, the prior and the trend; a shopper's fresh clicks feed the
seen-item term; a text no trained query knows gets its own live clicks; the serving source
follows the event log without a retrain; the replay protocol never scores an event with its own
click counted."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from indexer.cf import BlendParams, fit_model, publish
from indexer.cf.live import LiveClicks
from indexer.cf.train import replay_ap, replay_map_at_5
from indexer.interactions import Event, EventLog, EventStore
from indexer.items import ItemTable
from indexer.product import Product
from retriever.cf import CFSource
from shopsearch.settings import load_settings

DAY = 86_400.0
T0 = 1_700_000_000.0
PLAIN = BlendParams(w_als=0.0, w_pmi=0.0, w_user=0.0, kappa_tok=0.0, w_trend=0.0)
RECENT = BlendParams(**{**PLAIN.to_dict(), "gamma": 0.9})  # the newest clicks weigh most


def _old() -> list[Event]:
    """Two weeks of 'racing game' clicks, mostly on 'forza'; a 'lamp' query for another group."""
    ev = []
    for d in range(14):
        t = T0 + d * DAY
        ev += [Event("forza", "click", t + k, user_id=f"a{d}{k}", query="racing game") for k in range(4)]
        ev.append(Event("gran-turismo", "click", t + 60, user_id=f"b{d}", query="racing game"))
        ev.append(Event("lamp", "purchase", t + 90, user_id=f"c{d}", query="desk lamp"))
    ev.append(Event("crew", "click", T0, user_id="z", query="open world"))  # known item, one click
    return ev


def _new() -> list[Event]:
    """Two days later: a new release takes the 'racing game' clicks, one shopper clicks twice."""
    t = T0 + 15 * DAY
    ev = [Event("crew", "click", t + k * 600, user_id=f"n{k}", query="racing game") for k in range(12)]
    ev.append(Event("gran-turismo", "click", t + 9000, user_id="fan", query="Racing  Game"))
    ev.append(Event("crew", "add_to_cart", t + 9100, user_id="fan", query="racing game"))
    return ev


def _log(events: list[Event]) -> EventLog:
    return EventLog.from_events(events)


def test_live_counts_read_like_a_refit_of_the_click_graph_prior_and_trend():
    settings = load_settings(cf_position_bias_eta=0.0)
    model = fit_model(_log(_old()), settings, params=PLAIN, threads=1)
    refit = fit_model(_log(_old() + _new()), settings, params=PLAIN, threads=1)
    live = LiveClicks(model)
    assert live.add(_log(_new())) == len(_new()) and len(live) == len(_new())
    g, g2 = model.vocab.exact("racing game"), refit.vocab.exact("racing game")
    for alpha, gamma in ((0.0, 0.0), (0.0, 1.0), (1.0, 0.5)):
        items, p, rest = model.graph.distribution(g, alpha, gamma, live=live.group(g), prior=live.prior())
        items2, p2, rest2 = refit.graph.distribution(g2, alpha, gamma)
        mine = {model.item_ids[i]: v for i, v in zip(items, p, strict=True)}
        theirs = {refit.item_ids[i]: v for i, v in zip(items2, p2, strict=True)}
        assert mine.keys() == theirs.keys()
        np.testing.assert_allclose([mine[k] for k in theirs], list(theirs.values()), rtol=1e-3)
        assert rest == pytest.approx(rest2, rel=1e-3, abs=1e-12)
    # the token model pools the live clicks of each query word as the refit's does
    for text in ("racing game", "game lamp", "desk racing"):
        mine_t = model.tokens.distribution(text, live.token_rows(text), live.scales()[0])
        theirs_t = refit.tokens.distribution(text)
        got_t = {model.item_ids[i]: v for i, v in zip(mine_t.items, mine_t.p, strict=True)}
        want_t = {refit.item_ids[i]: v for i, v in zip(theirs_t.items, theirs_t.p, strict=True)}
        assert got_t.keys() == want_t.keys()
        np.testing.assert_allclose([got_t[k] for k in want_t], list(want_t.values()), rtol=1e-9)
        assert mine_t.rest == pytest.approx(theirs_t.rest, rel=1e-9)
    # prior (up to the floor every item gets) and trend: item order as the refit's
    order = [refit.item_index[x] for x in model.item_ids]
    np.testing.assert_allclose(live.prior(), refit.graph.prior[order], rtol=0.02)
    np.testing.assert_allclose(live.trend(), refit.item_trend[order], rtol=1e-6, atol=1e-9)
    # the served scores follow: with weight on recent clicks the new release leads 'racing game'
    # without a retrain, in the refit's order
    model, refit = model.with_params(RECENT), refit.with_params(RECENT)
    assert model.item_ids[model.score_query("racing game", 1).items[0]] == "forza"
    top = model.score_query("racing game", 3, live=live)
    assert model.item_ids[top.items[0]] == "crew"
    assert [model.item_ids[i] for i in top.items] == [
        refit.item_ids[i] for i in refit.score_query("racing game", 3).items
    ]
    info = live.info()
    assert info["events"] == len(_new()) and info["users"] == 13 and info["new_queries"] == 0


def test_live_seen_items_and_queries_no_trained_group_knows():
    settings = load_settings(cf_position_bias_eta=0.0)
    model = fit_model(_log(_old()), settings, params=RECENT, threads=1)
    live = LiveClicks(model)
    live.add(_log(_new()))
    seen = model.with_params(BlendParams(**{**RECENT.to_dict(), "w_seen": -5.0}))
    # 'fan' clicked gran-turismo and carted crew after training: both demoted for 'fan' alone
    mine = [seen.item_ids[i] for i in seen.score_query("racing game", 3, user="fan", live=live).items]
    theirs = [seen.item_ids[i] for i in seen.score_query("racing game", 3, user="other", live=live).items]
    assert mine[0] == "forza" and theirs[0] == "crew"
    items, weights = live.seen("fan")
    assert sorted(seen.item_ids[i] for i in items) == ["crew", "gran-turismo"] and weights.max() == 3.0
    # a query nobody typed before training: unknown to the model, then its own live clicks lead
    assert model.score_query("drift king", 3, live=live).items.tolist() == []
    t = T0 + 16 * DAY
    typed = [
        Event("gran-turismo", "click", t, query="Drift King"),
        Event("gran-turismo", "click", t + 5, query="king drift"),
    ]
    live.add(_log(typed))
    got = model.score_query("drift  KING", 3, live=live, explain=True)
    assert got.match == "live" and model.item_ids[got.items[0]] == "gran-turismo"
    assert live.info()["new_queries"] == 1
    # a misspelling (or word swap) of a text only live clicks know borrows them, as a misspelling
    # of a trained query borrows its clicks
    for typo in ("drfit king", "king drfit"):
        near = model.score_query(typo, 3, live=live, explain=True)
        assert near.match == "live" and 0.82 <= near.match_score < 1.0
        assert model.item_ids[near.items[0]] == "gran-turismo"
    assert model.score_query("garden hose", 3, live=live).items.tolist() == []  # nothing close
    # a new query sharing a word only live clicks know is answered by the token model
    words = model.with_params(BlendParams(**{**RECENT.to_dict(), "token_fallback": True}))
    got = words.score_query("drift cars", 3, live=live, explain=True)
    assert got.match == "tokens" and model.item_ids[got.items[0]] == "gran-turismo"
    assert words.score_query("drift cars", 3).items.tolist() == []  # without the live clicks
    # an item the model has never seen joins with its first click (next CF number, no factors);
    # a launch that takes a query's clicks leads it without a retrain
    new = model.n_items
    live.add(_log([Event("brand-new", "click", t + 10 + k, query="racing game") for k in range(30)]))
    assert live.info()["new_items"] == 1 and live.index_of("brand-new") == new
    assert live.item_id(new) == "brand-new" and live.n_items == model.n_items + 1
    got = model.score_query("racing game", 3, live=live, explain=True)
    assert got.items[0] == new and got.parts["interactions"][0] == 30.0 and got.parts["als"][0] == 0.0
    assert len(live.prior()) == len(live.trend()) == model.n_items + 1 and live.trend()[new] > 0
    masked = np.ones(model.n_items, dtype=bool)  # a mask read before the item joined allows none of it
    assert new not in model.score_query("racing game", 3, live=live, allowed=masked).items.tolist()
    # events of a kind the model's weights do not know weigh nothing: counted as skipped
    live.add(_log([Event("crew", "wishlist", t + 99, query="racing game")]))
    assert live.info()["skipped"] == 1


def test_replay_scores_each_event_before_its_own_click_is_counted():
    settings = load_settings(cf_position_bias_eta=0.0)
    model = fit_model(_log(_old()), settings, params=PLAIN, threads=1)
    t = T0 + 20 * DAY
    later = _log([Event("lamp", "click", t + k, user_id=f"q{k}", query="brand new words") for k in range(3)])
    ap = replay_ap(model, later)
    # the first event knows nothing of the query; the next ones have the earlier clicks
    assert ap.tolist() == [0.0, 1.0, 1.0]
    assert replay_map_at_5(model, later) == pytest.approx(2 / 3)
    # the model itself is untouched by a replay
    assert model.score_query("brand new words", 1).items.tolist() == []


def _served(folder: Path) -> tuple[Any, ItemTable, Any, str]:
    """An index folder whose event log holds the old clicks and whose CF generation was trained on
    them: (settings, item table, model, generation)."""
    settings = load_settings(cf_position_bias_eta=0.0, hash_user_ids=False)
    table = ItemTable()
    for pid in ("forza", "gran-turismo", "lamp", "crew"):
        table.append(Product(id=pid, title=pid))
    with EventStore(folder, settings) as store:
        store.append(_old())
        model = fit_model(store.read(), settings, params=RECENT, threads=1)
    generation, _ = publish(model, folder)
    return settings, table, model, generation


def test_cf_source_follows_the_event_log_without_a_retrain(tmp_path):
    settings, table, _, _ = _served(tmp_path)
    source = CFSource(tmp_path, settings, reload_interval=0.0)
    frozen = CFSource(tmp_path, settings.model_copy(update={"cf_live": False}), reload_interval=0.0)
    first = source.candidates("racing game", 3, table, table.mask())
    assert first is not None and table.rows[first.hits[0][0]].id == "forza"
    assert source.info()["live"]["events"] == 0  # the trained events are not counted twice
    with EventStore(tmp_path, settings) as store:
        store.append(_new())
    hits = source.candidates("racing game", 3, table, table.mask(), explain=True)
    assert hits is not None and table.rows[hits.hits[0][0]].id == "crew"
    assert source.info()["live"]["events"] == len(_new())
    assert table.rows[frozen.candidates("racing game", 3, table, table.mask()).hits[0][0]].id == "forza"
    assert frozen.info()["live"] is None
    # a new source (a restarted server) catches up from the log before its first answer
    again = CFSource(tmp_path, settings, reload_interval=0.0)
    assert table.rows[again.candidates("racing game", 1, table, table.mask()).hits[0][0]].id == "crew"
    # a catalog item first clicked after training is served from its live clicks alone
    table.append(Product(id="launch", title="launch"))
    with EventStore(tmp_path, settings) as store:
        store.append([Event("launch", "purchase", T0 + 16 * DAY + k, query="racing game") for k in range(20)])
    hits = source.candidates("racing game", 3, table, table.mask(), explain=True)
    assert hits is not None and table.rows[hits.hits[0][0]].id == "launch"
    assert hits.details[hits.hits[0][0]]["interactions"] == 100.0
    mask = table.mask()
    mask[table.id_to_row["launch"]] = False  # filters and deletions apply to it like to any item
    assert "launch" not in [
        table.rows[r].id for r, _ in source.candidates("racing game", 3, table, mask).hits
    ]
    # a broken log leaves the trained model serving
    (tmp_path / "events" / "events.sqlite").write_bytes(b"not a database")
    broken = CFSource(tmp_path, settings, reload_interval=0.0)
    assert table.rows[broken.candidates("racing game", 1, table, table.mask()).hits[0][0]].id == "forza"


def _until(check, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return True
        time.sleep(0.02)
    return False


def test_background_follower_counts_clicks_and_swaps_generations_off_the_query_path(tmp_path):
    settings, table, _, first_gen = _served(tmp_path)
    source = CFSource(tmp_path, settings, reload_interval=0.05)
    readers: list[str] = []
    read = source._tail.read

    def spy(*args, **kwargs):
        readers.append(threading.current_thread().name)
        return read(*args, **kwargs)

    source._tail.read = spy
    source.follow()
    try:
        hits = source.candidates("racing game", 1, table, table.mask())
        assert hits is not None and table.rows[hits.hits[0][0]].id == "forza"
        assert source.info()["generation"] == first_gen
        with EventStore(tmp_path, settings) as store:
            store.append(_new())
        # the clicks are counted with no query asking for them
        assert _until(lambda: source._loaded.live.events == len(_new()))
        top = source.candidates("racing game", 1, table, table.mask())
        assert table.rows[top.hits[0][0]].id == "crew"
        assert readers and set(readers) == {"cf-follower"}
        # a new generation is loaded and caught up in the background, then swapped in
        model2 = fit_model(_log(_old()), settings, params=PLAIN, threads=1)
        second_gen, _ = publish(model2, tmp_path)
        assert second_gen != first_gen
        assert _until(lambda: source.info()["generation"] == second_gen)
        assert source.info()["live"]["events"] == len(_new())  # every event since its training
        assert set(readers) == {"cf-follower"}
    finally:
        source.close()
    assert source._follower is None
    # closed: queries poll for themselves again
    n = len(readers)
    source.reload_interval = 0.0
    assert source.candidates("racing game", 1, table, table.mask()) is not None
    assert len(readers) > n and readers[-1] == threading.current_thread().name


def test_train_cf_tunes_weights_by_replaying_its_hold_out_live():
    from indexer.cf import fit_tuned
    from indexer.cf.train import TrainReport

    settings = load_settings(cf_position_bias_eta=0.0)
    events = []
    for d in range(50):  # the rising item takes over a query during the newest days
        t = T0 + d * DAY
        events += [Event("forza", "click", t + k, user_id=f"a{d}{k}", query="racing game") for k in range(4)]
        late = d >= 45
        events += [
            Event("crew" if late else "lamp", "click", t + 99 + k, user_id=f"b{d}{k}", query="racing game")
            for k in range(6 if late else 1)
        ]
    log = _log(events)
    model, report = fit_tuned(log, settings, threads=1)
    assert report["protocol"] == "live replay" and report["map5_tuned"] >= report["map5_default"]
    _, static = fit_tuned(log, settings.model_copy(update={"cf_live": False}), threads=1)
    assert static["protocol"] == "static"
    text = TrainReport(None, None, {**model.manifest["counts"]}, {}, 0.0, {}, report).summary()
    assert "replayed live" in text
