"""Collaborative filtering: query normalisation and fuzzy matching, the click graph, PMI on a
hand-computed case, ALS/GMF on a planted structure, the cold-start mapping, the served model
(save/load, masks, hot reload), and the whole loop over the API: POST /events -> train-cf ->
/admin/reload -> search with a "cf" source -> /items/{id}/similar."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from indexer.cf import BlendParams, CFModel, QueryVocab, compact_key, fit_model, publish, query_key
from indexer.cf.coldstart import KnnMapper, RidgeMapper, cosine_rows
from indexer.cf.factors import interaction_matrix, train_als, train_gmf
from indexer.cf.graph import build_query_graph, item_activity, trend_from_totals
from indexer.cf.pmi import basket_ids, cooccurrence_pmi
from indexer.cf.tokenmodel import BETA, build_token_model
from indexer.interactions import Event, EventLog
from indexer.items import ItemTable
from indexer.product import Product
from retriever.cf import CFSource
from shopsearch.errors import IndexCorruptError
from shopsearch.settings import load_settings

ROOT = Path(__file__).resolve().parents[1]


# ====================================================================== queries
def test_normalisation_ignores_case_punctuation_spacing_and_order():
    assert query_key("Call of Duty: Black-Ops") == query_key("black ops  CALL of duty")
    assert query_key("Pokémon") == query_key("pokemon")
    assert query_key("F.E.A.R. 3") == query_key("fear 3")
    assert compact_key("Xbox 360") == compact_key("xbox360")
    assert query_key("red mug") != query_key("blue mug")
    assert query_key("!!! ???") == ""


def test_vocab_groups_variants_and_fuzzy_matches_misspellings():
    queries = [
        "Xbox 360",
        "xbox360",
        "360 xbox",
        "battlefield 3",
        "Battlefield 3",
        "gears of war 3",
        "minecraft",
        None,
        "skyrim",
    ]
    vocab, group = QueryVocab.build(queries)
    assert group[0] == group[1] == group[2]  # case, spacing, order
    assert group[3] == group[4] and group[3] != group[0]
    assert group[7] == -1
    assert len(vocab) == 5
    assert vocab.counts[group[0]] == 3
    assert vocab.exact("XBOX-360") == group[0]
    assert vocab.exact("war of gears 3") == group[5]
    assert vocab.exact("battlefeild 3") is None
    m = vocab.match("battlefeild 3", min_score=0.8)
    assert m is not None and m.how == "fuzzy" and m.group == group[3] and 0.8 <= m.score < 1
    assert vocab.match("minecrft", 0.8).group == group[6]
    assert vocab.match("gears war 3 of", 0.8).how == "exact"
    assert vocab.match("garden hose", 0.8) is None  # nothing close: no borrowed clicks
    assert vocab.match("skyrim", 0.8).how == "exact"


# ====================================================================== graph and PMI
def test_query_graph_smoothing_and_recency():
    # group 0: item 0 clicked 3x long ago, item 1 clicked 2x recently
    group = np.asarray([0, 0, 0, 0, 0, -1])
    item = np.asarray([0, 0, 0, 1, 1, 2])
    w_all = np.ones(6)
    w_recent = np.asarray([0.01, 0.01, 0.01, 1.0, 1.0, 1.0])
    g = build_query_graph(group, item, w_all, w_recent, n_groups=1, n_items=3)
    assert g.prior.sum() == pytest.approx(1.0) and (g.prior > 0).all()
    items, p, rest = g.distribution(0, alpha=0.0, gamma=0.0)
    assert items.tolist() == [0, 1] and p.tolist() == pytest.approx([0.6, 0.4])
    assert rest == 0.0
    items, p, rest = g.distribution(0, alpha=0.0, gamma=1.0)  # recent clicks only
    assert p[1] > p[0]
    items, p, rest = g.distribution(0, alpha=2.0, gamma=0.3)
    total = p.sum() + rest * g.prior[2]  # the unlisted item gets the smoothing mass
    assert total == pytest.approx(1.0)


def test_pmi_matches_hand_computation():
    # baskets: {A,B,F} {A,B,F} {A,C,F} {C,F} {B,F} {D,E,F} {D,E}; N = 7
    A, B, C, D, E, F = range(6)
    baskets = [
        (0, A),
        (0, B),
        (1, A),
        (1, B),
        (1, A),
        (2, A),
        (2, C),
        (3, C),
        (4, B),
        (5, D),
        (5, E),
        (6, D),
        (6, E),
    ] + [(k, F) for k in range(6)]
    b = np.asarray([x for x, _ in baskets])
    i = np.asarray([y for _, y in baskets])
    nb = cooccurrence_pmi(b, i, 6, min_count=2)
    # n_A = 3, n_B = 3, n_AB = 2: PMI = log(2 * 7 / 9); n_D = n_E = n_DE = 2: log(2 * 7 / 4)
    items, pmi = nb.of(D)
    assert items.tolist() == [E] and pmi[0] == pytest.approx(math.log(14 / 4), rel=1e-6)
    # A: B (2 * 7 / (3 * 3)) and F (3 * 7 / (3 * 6)); A-C co-occur once (< min_count)
    items, pmi = nb.of(A)
    assert items.tolist() == [B, F]
    assert pmi.tolist() == pytest.approx([math.log(14 / 9), math.log(21 / 18)], rel=1e-6)
    nb1 = cooccurrence_pmi(b, i, 6, min_count=1)
    items, pmi = nb1.of(A)  # now A-C counts: log(1 * 7 / (3 * 2)) > 0
    assert items.tolist() == [B, F, C]
    assert pmi[2] == pytest.approx(math.log(7 / 6), rel=1e-6)
    # D-F: log(1 * 7 / (2 * 6)) < 0 is dropped (only positive association is kept)
    assert nb1.of(D)[0].tolist() == [E]
    assert basket_ids(["s1", None, "s1", None], [None, "u", "u", None]).tolist() == [0, 1, 0, -1]
    # the random-walk step the scorer takes: sum_i mass_i * PMI(i, j) per neighbour j
    to, mass = nb.step(np.asarray([A, D]), np.asarray([1.0, 2.0]))
    assert to.tolist() == [B, E, F]
    assert mass.tolist() == pytest.approx([math.log(14 / 9), 2 * math.log(14 / 4), math.log(21 / 18)])
    to, mass = nb.step(np.asarray([C]), np.asarray([0.5]))  # C-F: twice together, log(2 * 7 / (2 * 6))
    assert to.tolist() == [F] and mass.tolist() == pytest.approx([0.5 * math.log(14 / 12)])
    assert nb.step(np.zeros(0, np.int64), np.zeros(0))[0].tolist() == []


# ====================================================================== learned factors
def _planted(n_rows: int = 60, n_items: int = 30, blocks: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    rows, cols, held = [], [], []
    per = n_items // blocks
    for r in range(n_rows):
        blk = r % blocks
        items = rng.permutation(np.arange(blk * per, (blk + 1) * per))
        held.append((r, int(items[0]), blk))
        for it in items[1:6]:
            rows.append(r)
            cols.append(int(it))
    m = interaction_matrix(np.asarray(rows), np.asarray(cols), np.ones(len(rows)) * 3, n_rows, n_items)
    return m, held, per


@pytest.mark.parametrize("kind", ["als", "gmf"])
def test_factors_learn_a_planted_block_structure(kind):
    m, held, per = _planted()
    if kind == "als":
        f = train_als(m, factors=8, iterations=10, threads=1)
    else:
        f = train_gmf(m, factors=8, epochs=40)
    wins = 0
    total = 0
    for r, item, blk in held:  # a held-out same-block item beats every other-block item
        s = f.rows[r] @ f.items.T
        other = np.r_[0 : blk * per, (blk + 1) * per : m.shape[1]]
        wins += int((s[item] > s[other]).sum())
        total += len(other)
    assert wins / total > 0.9, (kind, wins / total)


@pytest.mark.parametrize("mapper", [RidgeMapper, KnnMapper])
def test_cold_start_mapping_beats_random_on_held_out_warm_items(mapper):
    m, _held, _per = _planted(n_rows=90, n_items=60, blocks=3, seed=1)
    y = train_als(m, factors=8, iterations=10, threads=1).items
    rng = np.random.default_rng(0)
    # content vectors: a fixed random linear view of the behaviour, plus noise (like text that
    # describes what the item is, without being the clicks)
    x = y @ rng.normal(size=(8, 48)) + 0.3 * rng.normal(size=(60, 48))
    perm = rng.permutation(60)
    train, test = perm[:45], perm[45:]
    pred = mapper.fit(x[train], y[train]).predict(x[test])
    cos = cosine_rows(pred, y[test]).mean()
    shuffled = cosine_rows(pred, y[test][rng.permutation(len(test))]).mean()
    assert cos > 0.5 and cos > shuffled + 0.3, (cos, shuffled)
    # retrieval: the true factor of each held-out item is its prediction's nearest neighbour more
    # often than chance (1/15)
    sims = (pred / np.linalg.norm(pred, axis=1, keepdims=True)) @ (
        y[test] / np.linalg.norm(y[test], axis=1, keepdims=True)
    ).T
    top1 = (sims.argmax(axis=1) == np.arange(len(test))).mean()
    assert top1 > 3 / len(test), top1


# ====================================================================== the served model
def _log() -> EventLog:
    events = []
    t = 1_700_000_000.0
    for n in range(30):
        events.append(
            Event(
                "mug-red",
                "click",
                t + n,
                user_id=f"u{n % 5}",
                session_id=f"s{n}",
                query="red mug",
                position=1,
            )
        )
        if n % 3 == 0:
            events.append(
                Event(
                    "mug-blue",
                    "click",
                    t + n,
                    user_id=f"u{n % 5}",
                    session_id=f"s{n}",
                    query="red mug",
                    position=2,
                )
            )
        events.append(
            Event("lamp", "purchase", t + n, user_id=f"v{n % 4}", session_id=f"z{n}", query="desk lamp")
        )
        events.append(
            Event("bulb", "add_to_cart", t + n, user_id=f"v{n % 4}", session_id=f"z{n}", query="desk lamp")
        )
    return EventLog.from_events(events)


def test_model_scores_masks_and_round_trips(tmp_path):
    settings = load_settings()
    model = fit_model(_log(), settings, params=BlendParams(), threads=1)
    top = model.score_query("Red Mug", 3)
    assert model.item_ids[top.items[0]] == "mug-red" and top.match == "exact"
    fuzzy = model.score_query("red mgu", 3)  # a typo borrows the known query's clicks
    assert fuzzy.match == "fuzzy" and model.item_ids[fuzzy.items[0]] == "mug-red"
    assert model.score_query("garden hose", 3).items.tolist() == []
    allowed = np.ones(model.n_items, dtype=bool)
    allowed[model.item_index["mug-red"]] = False
    masked = model.score_query("red mug", 3, allowed=allowed)
    assert model.item_index["mug-red"] not in masked.items.tolist()
    assert model.item_ids[masked.items[0]] == "mug-blue"
    sim_items, _scores, how = model.similar(model.item_index["lamp"], 2)
    assert model.item_ids[sim_items[0]] == "bulb" and how[0] == "pmi"
    name, folder = publish(model, tmp_path)
    loaded = CFModel.load(folder)
    a = model.score_query("red mug", 4, user="u1")
    b = loaded.score_query("red mug", 4, user="u1")
    assert a.items.tolist() == b.items.tolist() and np.allclose(a.scores, b.scores)
    assert a.personalised
    assert not any(p.suffix == ".pkl" for p in folder.rglob("*"))
    for f in folder.rglob("*"):  # arrays and JSON only: everything loads with pickle disabled
        if f.suffix in (".npy", ".npz"):
            data = np.load(f, allow_pickle=False)
            arrays = [data[k] for k in data.files] if f.suffix == ".npz" else [data]
            assert all(a.dtype != object for a in arrays), f
        elif f.suffix == ".json":
            json.loads(f.read_text())
        elif f.is_file():
            assert f.name == "index.faiss", f


def test_cf_source_maps_rows_applies_mask_and_hot_reloads(tmp_path):
    settings = load_settings()
    table = ItemTable()
    for pid in ("mug-red", "mug-blue", "lamp", "bulb"):
        table.append(Product(id=pid, title=pid))
    source = CFSource(tmp_path, settings, reload_interval=0.0)
    assert source.candidates("red mug", 10, table, table.mask()) is None  # nothing trained yet
    publish(fit_model(_log(), settings, threads=1), tmp_path)
    hits = source.candidates("red mug", 10, table, table.mask(), explain=True)
    assert hits is not None and table.rows[hits.hits[0][0]].id == "mug-red"
    assert hits.details[hits.hits[0][0]]["match"] == "exact"
    mask = table.mask()
    mask[table.id_to_row["mug-red"]] = False
    assert table.id_to_row["mug-red"] not in [
        r for r, _ in source.candidates("red mug", 10, table, mask).hits
    ]
    table.delete("mug-blue")
    assert table.id_to_row.get("mug-blue") is None
    rows = [table.rows[r].id for r, _ in source.candidates("red mug", 10, table, table.mask()).hits]
    assert "mug-blue" not in rows
    first = source.info()["generation"]
    log = _log()
    extra = EventLog.from_events([Event("lamp", "click", 1_800_000_000.0, query="red mug")] * 80)
    both = EventLog.from_events(log.to_events() + extra.to_events())
    publish(fit_model(both, settings, threads=1), tmp_path)
    hits = source.candidates("red mug", 10, table, table.mask())  # picked up without a reload call
    assert source.info()["generation"] != first
    assert table.rows[hits.hits[0][0]].id == "lamp"


# ====================================================================== signals for a shifting log
DAY = 86_400.0
T0 = 1_700_000_000.0


def test_token_model_matches_hand_computation_and_pools_queries_sharing_words():
    # items: 0 arkham city, 1 arkham asylum, 2 a console; one click per event, weight 1
    queries = ["batman arkham city"] * 3 + ["batman asylum"] + ["xbox"] * 2 + [None]
    item = np.asarray([0, 0, 0, 1, 2, 2, 1])
    tm = build_token_model(queries, item, np.ones(len(item)), n_items=3)
    assert sorted(tm.tokens) == ["arkham", "asylum", "batman", "city", "xbox"]
    d = tm.distribution("Asylum BATMAN!")  # case, punctuation and word order do not matter
    assert d is not None and d.coverage == 1.0
    # C[batman] = {0: 3, 1: 1}, C[asylum] = {1: 1}; idf over the 3 clicked items: log(3 / (1 + df)) + 1
    idf_b, idf_a = math.log(3 / 3) + 1, math.log(3 / 2) + 1
    wb, wa = idf_b / (idf_b + idf_a), idf_a / (idf_b + idf_a)
    listed = dict(zip(d.items.tolist(), d.p.tolist(), strict=True))
    assert listed[0] == pytest.approx(wb * 3 / (4 + BETA))
    assert listed[1] == pytest.approx(wb * 1 / (4 + BETA) + wa * 1 / (1 + BETA))
    assert 2 not in listed
    assert d.rest == pytest.approx(wb * BETA / (4 + BETA) + wa * BETA / (1 + BETA))
    prior = np.asarray([0.5, 0.3, 0.2])  # listed + rest * prior is a distribution over all items
    full = d.rest * prior
    full[d.items] += d.p
    assert full.sum() == pytest.approx(1.0)
    assert listed[1] > listed[0]  # the rarer word decides between the two batman games
    half = tm.distribution("batman garden")
    assert half is not None and half.coverage == 0.5
    assert tm.distribution("garden hose") is None and tm.distribution("!!!") is None


def _shift_log() -> EventLog:
    """'console' clicked on item old-console for weeks and on new-bundle a little less; in the
    last two days new-bundle takes off under other queries (never under 'console' itself).
    'batman arkham asylum' / 'batman arkham city' teach the words of an unseen query."""
    events = []
    for n in range(30):
        events.append(Event("old-console", "click", T0 + n * DAY / 2, query="console", position=1))
    for n in range(24):
        events.append(Event("new-bundle", "click", T0 + n * DAY / 2, query="console", position=1))
    end = T0 + 30 * DAY
    for n in range(40):
        events.append(Event("new-bundle", "click", end - n * 3600, query="bundle deal", position=1))
    for n in range(10):
        events.append(Event("asylum", "click", T0 + n * DAY, query="batman arkham asylum", position=1))
        events.append(Event("city", "click", T0 + n * DAY, query="batman arkham city", position=1))
        events.append(Event("city", "click", T0 + n * DAY + 60, query="batman arkham city", position=1))
    return EventLog.from_events(events)


def test_item_trend_ranks_a_rising_item_higher_than_plain_counts():
    settings = load_settings(cf_position_bias_eta=0.0)
    plain = BlendParams(gamma=0.0, w_als=0.0, w_pmi=0.0, w_user=0.0)
    model = fit_model(_shift_log(), settings, params=plain, threads=1)
    old, new = model.item_index["old-console"], model.item_index["new-bundle"]
    assert model.item_trend is not None
    assert model.item_trend[new] > 0 > model.item_trend[old]
    before = model.score_query("console", 2)
    assert before.items.tolist() == [old, new]  # 30 clicks beat 24
    after = model.with_params(BlendParams(gamma=0.0, w_als=0.0, w_pmi=0.0, w_user=0.0, w_trend=0.5))
    lifted = after.score_query("console", 2, explain=True)
    assert lifted.items.tolist() == [new, old]
    assert lifted.parts["trend"][0] == pytest.approx(model.item_trend[new])
    # the formula: log((recent + c) / (recent total * long-run share + c)), 0 without events
    item = np.asarray([0, 0, 0, 1])
    w_all = np.ones(4)
    w_recent = np.asarray([0.0, 0.0, 0.0, 1.0])
    t = trend_from_totals(*item_activity(item, w_all, w_recent, 3), pseudo=1.0)
    assert t[0] == pytest.approx(math.log((0 + 1) / (1 * 3 / 4 + 1)))
    assert t[1] == pytest.approx(math.log((1 + 1) / (1 * 1 / 4 + 1)))
    assert t[2] == 0.0


def test_token_fallback_answers_an_unseen_query_and_kappa_smooths_rare_ones():
    settings = load_settings(cf_position_bias_eta=0.0)
    model = fit_model(_shift_log(), settings, params=BlendParams(w_als=0.0, w_user=0.0), threads=1)
    assert model.vocab.match("asylum batman", 0.82) is None  # not a known query, not a misspelling
    got = model.score_query("asylum batman", 3, explain=True)
    assert got.match == "tokens" and got.match_score == 1.0
    assert model.item_ids[got.items[0]] == "asylum"
    assert got.parts["tokens"][0] > got.parts["tokens"][1] > 0
    off = model.with_params(BlendParams(w_als=0.0, w_user=0.0, token_fallback=False))
    assert off.score_query("asylum batman", 3).items.tolist() == []
    assert model.score_query("garden hose", 3).items.tolist() == []  # no known word: still nothing
    # kappa: the token distribution smooths a matched query's history (and adds its items)
    g = model.vocab.exact("batman arkham asylum")
    tok = model.tokens.distribution("batman arkham asylum") if model.tokens else None
    assert tok is not None
    items0, p0, _ = model.graph.distribution(g, 1.0, 0.3)
    items1, p1, rest1 = model.graph.distribution(g, 1.0, 0.3, kappa=5.0, tokens=tok)
    city = model.item_index["city"]
    assert city not in items0.tolist() and city in items1.tolist()
    unlisted = np.setdiff1d(np.arange(model.n_items), items1)
    assert p1.sum() + rest1 * model.graph.prior[unlisted].sum() == pytest.approx(1.0)
    assert dict(zip(items1.tolist(), p1.tolist(), strict=True))[model.item_index["asylum"]] < p0.max()


def test_new_knobs_at_zero_reproduce_the_old_scores_and_old_generations_load(tmp_path):
    settings = load_settings(cf_position_bias_eta=0.0)
    log = _shift_log()
    legacy = BlendParams(token_fallback=False, kappa_tok=0.0, w_trend=0.0)
    model = fit_model(log, settings, params=legacy, threads=1)
    # a model without the new parts scores the way the engine did before they existed
    bare = CFModel(**{**model.__dict__, "tokens": None, "item_trend": None, "_ann": None})
    for q in ("console", "bundle deal", "batman arkham city", "batman arkam city", "asylum batman"):
        a, b = model.score_query(q, 10), bare.score_query(q, 10)
        assert a.items.tolist() == b.items.tolist() and np.array_equal(a.scores, b.scores), q
    # with the knobs on, the same queries do change (the comparison above is not vacuous)
    on = model.with_params(BlendParams(kappa_tok=3.0, w_trend=0.5))
    assert not np.allclose(on.score_query("console", 2).scores, model.score_query("console", 2).scores)
    assert len(on.score_query("asylum batman", 3).items) and not len(
        model.score_query("asylum batman", 3).items
    )
    # round trip with every knob on; then a generation written before the token model and trend
    _, folder = publish(on, tmp_path)
    loaded = CFModel.load(folder)
    for q in ("console", "asylum batman", "batman arkham asylum"):
        x, y = on.score_query(q, 5), loaded.score_query(q, 5)
        assert x.items.tolist() == y.items.tolist() and np.allclose(x.scores, y.scores), q
    for name in ("tokens.json", "tokens.npz", "item_trend.npy"):
        (folder / name).unlink()
    old = CFModel.load(folder)
    assert old.tokens is None and old.item_trend is None
    assert old.score_query("asylum batman", 3).items.tolist() == []
    x, y = old.with_params(legacy).score_query("console", 5), model.score_query("console", 5)
    assert x.items.tolist() == y.items.tolist() and np.allclose(x.scores, y.scores)


def _returning_log(days: int = 40) -> EventLog:
    """'rocksmith' has three SKUs clicked 5:4:3 by one-time shoppers; returning shoppers come
    back to the query the next day and click a SKU they did not click before (the Best Buy
    pattern: 2% of returning users' clicks are on an item they already clicked)."""
    events = []
    skus = ("game", "bundle", "cable")
    for d in range(days):
        t = T0 + d * DAY
        for k, n in enumerate((5, 4, 3)):
            events += [
                Event(skus[k], "click", t + k * 60 + j, user_id=f"once-{d}-{k}-{j}", query="rocksmith")
                for j in range(n)
            ]
        events.append(Event("game", "click", t + 3600, user_id=f"back-{d}", query="rocksmith"))
        events.append(Event(skus[1 + d % 2], "click", t + DAY + 7200, user_id=f"back-{d}", query="rocksmith"))
    return EventLog.from_events(events)


def test_seen_items_term_is_learned_and_round_trips(tmp_path):
    from indexer.cf import fit_tuned

    settings = load_settings(cf_position_bias_eta=0.0)
    log = _returning_log()
    plain = BlendParams(gamma=0.0, w_als=0.0, w_pmi=0.0, w_user=0.0, w_trend=0.0, kappa_tok=0.0)
    model = fit_model(log, settings, params=plain, threads=1)
    assert model.history is not None
    back = "back-3"
    assert model.score_query("rocksmith", 1, user=back).items.tolist() == [model.item_index["game"]]
    demoted = model.with_params(BlendParams(**{**plain.to_dict(), "w_seen": -3.0}))
    top = demoted.score_query("rocksmith", 3, user=back, explain=True)
    # the returning shopper's SKUs are demoted; a stranger sees the unchanged order
    assert model.item_ids[top.items[0]] not in {"game", "cable"} and top.parts["seen"][-1] > 0
    assert demoted.score_query("rocksmith", 3, user="someone-new").items.tolist() == (
        model.score_query("rocksmith", 3).items.tolist()
    )
    # the tuner finds the sign from the log's newest 10% (returning shoppers never re-click)
    tuned, report = fit_tuned(log, settings, threads=1)
    assert tuned.params.w_seen < 0 and report["map5_tuned"] > report["map5_default"]
    _, folder = publish(demoted, tmp_path)
    loaded = CFModel.load(folder)
    a, b = demoted.score_query("rocksmith", 3, user=back), loaded.score_query("rocksmith", 3, user=back)
    assert a.items.tolist() == b.items.tolist() and np.allclose(a.scores, b.scores)
    # a generation written before the term existed loads and scores without it
    (folder / "user_items.npz").unlink()
    old = CFModel.load(folder)
    assert old.history is None
    assert old.score_query("rocksmith", 1, user=back).items.tolist() == [model.item_index["game"]]
    # a history that names unknown items is reported, not served
    np.savez(folder / "user_items.npz", ptr=np.asarray([0, 1]), item=np.asarray([99]), weight=np.ones(1))
    with pytest.raises(IndexCorruptError, match="user_items"):
        CFModel.load(folder)


def test_damaged_token_files_are_reported(tmp_path):
    model = fit_model(_shift_log(), load_settings(), threads=1)
    _, folder = publish(model, tmp_path)
    (folder / "tokens.json").write_text(json.dumps(["only-one"]), encoding="utf-8")
    with pytest.raises(IndexCorruptError, match="tokens"):
        CFModel.load(folder)


def test_cf_source_explains_token_matches_and_trend(tmp_path):
    settings = load_settings(cf_position_bias_eta=0.0)
    table = ItemTable()
    for pid in ("old-console", "new-bundle", "asylum", "city"):
        table.append(Product(id=pid, title=pid))
    model = fit_model(_shift_log(), settings, params=BlendParams(kappa_tok=3.0, w_trend=0.5), threads=1)
    publish(model, tmp_path)
    source = CFSource(tmp_path, settings, reload_interval=0.0)
    hits = source.candidates("asylum batman", 5, table, table.mask(), explain=True)
    assert hits is not None and hits.match == "tokens"
    top = hits.details[hits.hits[0][0]]
    assert table.rows[hits.hits[0][0]].id == "asylum"
    assert top["match"] == "tokens" and top["token_p_click"] > 0
    hits = source.candidates("console", 5, table, table.mask(), explain=True)
    assert hits is not None and table.rows[hits.hits[0][0]].id == "new-bundle"
    top = hits.details[hits.hits[0][0]]
    assert top["trend"] > 0 and top["trend_boost"] == pytest.approx(0.5 * top["trend"], abs=1e-3)


# ====================================================================== end to end over the API
CATALOG = [
    ("mug-red", "Red Stoneware Coffee Mug", "Home > Kitchen > Mugs", 12.0),
    ("mug-blue", "Blue Stoneware Coffee Mug", "Home > Kitchen > Mugs", 12.0),
    ("mug-green", "Green Ceramic Tea Mug", "Home > Kitchen > Mugs", 10.0),
    ("mug-white", "White Porcelain Espresso Mug", "Home > Kitchen > Mugs", 9.0),
    ("mug-cold", "Yellow Stoneware Coffee Mug", "Home > Kitchen > Mugs", 12.0),  # never clicked
    ("lamp-desk", "Adjustable LED Desk Lamp", "Home > Lighting > Lamps", 39.0),
    ("lamp-floor", "Arc Floor Lamp with Linen Shade", "Home > Lighting > Lamps", 89.0),
    ("lamp-clip", "Clip-on Reading Lamp", "Home > Lighting > Lamps", 19.0),
    ("lamp-bulb", "LED Light Bulb Warm White", "Home > Lighting > Bulbs", 5.0),
    ("hoodie-black", "Black Zip Fleece Hoodie", "Apparel > Tops > Hoodies", 55.0),
    ("hoodie-grey", "Grey Pullover Cotton Hoodie", "Apparel > Tops > Hoodies", 45.0),
    ("hoodie-navy", "Navy Hooded Sweatshirt", "Apparel > Tops > Hoodies", 50.0),
    ("tee-white", "White Cotton T-Shirt", "Apparel > Tops > Tees", 15.0),
]
QUERIES = {
    "mug": ["coffee mug", "tea cup", "mug"],
    "lamp": ["desk lamp", "reading light", "lamp"],
    "hoodie": ["hoodie", "warm sweatshirt", "fleece top"],
}


@pytest.fixture(scope="module")
def api_index(tmp_path_factory):
    from indexer.store import build_index

    folder = tmp_path_factory.mktemp("cfapi")
    catalog = folder / "catalog.jsonl"
    catalog.write_text(
        "".join(
            json.dumps({"id": i, "title": t, "category": c, "price": p, "brand": "Acme"}) + "\n"
            for i, t, c, p in CATALOG
        )
    )
    settings = load_settings(index_dir=folder / "index")
    build_index([catalog], settings.index_dir, settings, progress=False)
    return settings


def _kind(item_id: str) -> str:
    return {"mug": "mug", "lam": "lamp", "hoo": "hoodie", "tee": "hoodie"}[item_id[:3]]


@pytest.mark.slow
def test_events_train_reload_search_and_similar_end_to_end(api_index):
    from fastapi.testclient import TestClient

    from api.app import create_app

    settings = api_index
    rng = np.random.default_rng(7)
    warm = [i for i, *_ in CATALOG if i != "mug-cold"]
    events = []
    t = 1_714_557_600
    for n in range(600):  # simulated sessions: a query, then clicks on items of its kind
        kind = ["mug", "lamp", "hoodie"][n % 3]
        query = QUERIES[kind][int(rng.integers(3))]
        pool = [i for i in warm if _kind(i) == kind]
        for pos, item in enumerate(rng.choice(pool, size=2, replace=False), 1):
            events.append(
                {
                    "user_id": f"user{n % 50}",
                    "session_id": f"s{n}",
                    "query": query,
                    "item_id": str(item),
                    "event": "click",
                    "timestamp": t + n * 60,
                    "position": pos,
                }
            )
    events.append({"item_id": "no-such-item", "event": "click", "query": "mug", "timestamp": t})
    with TestClient(create_app(settings=settings, index_dir=settings.index_dir)) as client:
        before = client.post("/search", json={"query": "coffee mug", "explain": True}).json()
        assert all("cf" not in r["explain"] for r in before["results"])  # nothing trained yet
        accepted = 0
        for start in range(0, len(events), 500):
            r = client.post("/events", json={"events": events[start : start + 500]})
            assert r.status_code == 200, r.text
            accepted += r.json()["accepted"]
        assert accepted == len(events) - 1
        assert r.json()["issues"] == [
            {"field": "events.200.item_id", "reason": "unknown item 'no-such-item'"}
        ]
        assert client.post("/events", json={"events": []}).status_code == 422
        # numbers past float or storage range are their event's issue, not a 500 for the batch
        odd = [{**events[0], "position": float("inf")}, {**events[0], "timestamp": 10**400}]
        body = json.dumps({"events": odd})  # Infinity: valid for Python's parser, not for httpx's
        r = client.post("/events", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 200 and r.json()["accepted"] == 0
        assert [i["field"] for i in r.json()["issues"]] == ["events.0.position", "events.1.timestamp"]

        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "api.cli",
                "train-cf",
                "--index",
                str(settings.index_dir),
                "--quiet",
                "--no-tune",
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
        assert "trained CF on 1200 events" in proc.stdout and "1 cold items mapped" in proc.stdout

        r = client.post("/admin/reload").json()
        assert r["cf_generation"] == "cf-000001"
        res = client.post(
            "/search", json={"query": "Coffee  MUG", "explain": True, "user_id": "user3"}
        ).json()
        cf_hits = [x for x in res["results"] if "cf" in x["explain"]]
        assert cf_hits, res
        assert all(_kind(x["id"]) == "mug" for x in cf_hits if x["explain"]["cf"]["rank"] <= 3)
        detail = cf_hits[0]["explain"]["cf_detail"]
        assert detail["match"] == "exact" and detail["user_score"] is not None
        # a query text never clicked on, but close to one that was
        res = client.post("/search", json={"query": "coffe mugg", "explain": True}).json()
        assert any(x["explain"].get("cf_detail", {}).get("match") == "fuzzy" for x in res["results"])
        # filters apply to the cf source like to the others
        res = client.post(
            "/search",
            json={
                "query": "coffee mug",
                "explain": True,
                "k": 20,
                "filters": {"category": "Home > Lighting"},
            },
        ).json()
        assert res["results"] and all(x["category"].startswith("Home > Lighting") for x in res["results"])
        # similar items: co-clicked first; the cold item is placed by its mapped content vector
        sim = client.get("/items/lamp-desk/similar", params={"k": 3}).json()["results"]
        assert sim and all(_kind(x["id"]) == "lamp" for x in sim[:2])
        cold = client.get("/items/mug-cold/similar", params={"k": 3}).json()["results"]
        assert cold and sum(_kind(x["id"]) == "mug" for x in cold) >= 2, cold
        assert client.get("/items/nope/similar").status_code == 404
        # clicks stored after training count without a retrain (cf_live): a query nobody typed
        # before training ranks the item its new clicks went to, once the source has followed the
        # log (it looks at most once a second)
        late = [
            {"user_id": f"late{k}", "query": "Espresso Cup", "item_id": "mug-white", "event": "click"}
            for k in range(3)
        ]
        assert client.post("/events", json={"events": late}).json()["accepted"] == 3
        live_top = None
        for _ in range(50):
            res = client.post("/search", json={"query": "espresso cup", "explain": True}).json()
            live = [x for x in res["results"] if x["explain"].get("cf_detail", {}).get("match") == "live"]
            if live:
                live_top = min(live, key=lambda x: x["explain"]["cf"]["rank"])["id"]
                break
            time.sleep(0.1)
        assert live_top == "mug-white"
        assert client.get("/info").json()["cf"]["live"]["events"] == 3


def _cut_short_and_count_loads(folder: Path, monkeypatch) -> tuple[bytes, list]:
    """Cut the generation's pmi.npz short (a half-copied file); returns its bytes, to repair it,
    and the list every CFModel.load call is appended to."""
    data = (folder / "pmi.npz").read_bytes()
    (folder / "pmi.npz").write_bytes(data[:100])
    loads: list = []
    real_load = CFModel.load

    def counted(f):
        loads.append(f)
        return real_load(f)

    monkeypatch.setattr(CFModel, "load", staticmethod(counted))
    return data, loads


def test_a_broken_only_generation_leaves_search_without_cf_not_failing(tmp_path, monkeypatch):
    """With no older model to fall back on, an unreadable generation used to raise out of every
    search (a 503 for all queries, /info included). Now the searches go on without the CF source,
    the reason is kept for /info, and the generation is not loaded again every second."""
    settings = load_settings()
    model = fit_model(_shift_log(), settings, threads=1)
    name, folder = publish(model, tmp_path)
    data, loads = _cut_short_and_count_loads(folder, monkeypatch)
    source = CFSource(tmp_path, settings, reload_interval=0.0)
    table = ItemTable()
    table.append(Product(id="asylum", title="asylum"))
    for _ in range(3):
        assert source.candidates("asylum", 5, table, table.mask()) is None
    assert len(loads) == 1 and "unreadable" in source.last_error
    assert source.info() == {"trained": False, "last_error": source.last_error}
    assert source.similar("asylum", 5, table, table.mask()) == []
    (folder / "pmi.npz").write_bytes(data)  # repaired: an explicit reload serves it
    assert source.reload() == name and source.last_error is None and len(loads) == 2


def test_a_broken_newer_generation_is_refused_once_and_reported(tmp_path, monkeypatch):
    """A cut-short .npz (np.load sees a bad zip) used to escape as BadZipFile: a 500 from
    /admin/reload. Now the previous model keeps serving, the reason is kept for /info and the
    reload answer, and the same broken generation is not loaded again every second."""
    settings = load_settings()
    model = fit_model(_shift_log(), settings, threads=1)
    first, _ = publish(model, tmp_path)
    source = CFSource(tmp_path, settings, reload_interval=0.0)
    assert source.reload() == first and source.last_error is None
    second, folder = publish(model, tmp_path)
    real_load = CFModel.load
    data, loads = _cut_short_and_count_loads(folder, monkeypatch)
    table = ItemTable()
    table.append(Product(id="asylum", title="asylum"))
    for _ in range(3):  # searches go on with the first generation
        source.candidates("asylum", 5, table, table.mask())
    assert len(loads) == 1 and "unreadable" in source.last_error
    assert source.info()["generation"] == first and source.info()["last_error"] == source.last_error
    assert source.reload() == first and len(loads) == 2  # an explicit reload tries again
    (folder / "pmi.npz").write_bytes(data)  # repaired: the next explicit reload serves it
    assert source.reload() == second and source.last_error is None
    (folder / "items.json").write_text(json.dumps({"not": "a list"}), encoding="utf-8")
    with pytest.raises(IndexCorruptError, match="items.json is not a list"):
        real_load(folder)
