"""Re-ranker labels from stored interactions (``train-reranker --from-events``).

The end-to-end test trains on the bundled sample catalog (real MiniLM vectors, real tantivy) with
clicks written here from the sample judgments: a known click model, so the labels can be checked.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from indexer.interactions import Event, EventLog, EventStore
from reranker.clicks import judgments_from_events, label_split, query_id
from reranker.features import FEATURE_INDEX
from retriever.cf import CF_TERMS
from shopsearch.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "examples" / "sample_catalog"
WEIGHTS = {"view": 0.2, "click": 1.0, "add_to_cart": 3.0, "purchase": 5.0}
DAY = 86_400.0


def test_grades_are_weighted_events_per_query_key_and_skips_are_counted():
    t = 1_700_000_000.0
    log = EventLog.from_events(
        [
            Event("mug", "click", t, query="Red Mug"),
            Event("mug", "click", t + 1, query="mug  red"),  # same key: word order, case, spaces
            Event("mug", "purchase", t + 2, query="red mug"),
            Event("cup", "click", t + 3, query="red mug", position=4),  # low position counts more
            Event("mug", "view", t + 4, query="red mug"),
            Event("mug", "click", t + 5),  # no query: not a label
            Event("ghost", "click", t + 6, query="red mug"),  # not in the catalog
            Event("lamp", "view", t + 7, query="desk lamp"),  # a query with too little weight
        ]
    )
    got = judgments_from_events(log, WEIGHTS, eta=1.0, known_items={"mug", "cup", "lamp"}, min_weight=0.5)
    qid = query_id("mug red")
    assert list(got.queries) == [qid]
    assert got.queries[qid] == "red mug"  # the most used spelling
    assert got.qrels[qid] == pytest.approx({"mug": 1 + 1 + 5 + 0.2, "cup": 4.0})
    assert got.counts == {
        "events": 8,
        "used": 6,
        "without_query": 1,
        "unknown_item": 1,
        "light_queries": 1,
        "queries": 1,
    }
    no_bias = judgments_from_events(log, WEIGHTS, eta=0.0)
    assert no_bias.qrels[qid]["cup"] == pytest.approx(1.0) and "ghost" in no_bias.qrels[qid]
    assert query_id("mug red") != query_id("desk lamp") and " " not in qid


def test_label_split_takes_the_newest_share_by_time():
    t = 1_700_000_000.0
    # stored out of time order: the split is by timestamp, not by storage order
    log = EventLog.from_events([Event(f"i{k}", "click", t + (k * 7) % 10, query="q") for k in range(10)])
    older, newer = label_split(log, 0.3)
    assert len(older) == 7 and len(newer) == 3
    assert older.ts.max() < newer.ts.min()
    for share in (0.0, 1.0):
        with pytest.raises(ConfigError, match="between 0 and 1"):
            label_split(log, share)
    with pytest.raises(ConfigError, match="too few"):
        label_split(EventLog.from_events(log.to_events()[:1]), 0.3)


def sample_clicks() -> list[Event]:
    """Ten days of clicks on the sample judgments: each judged product is clicked grade times a
    day, the first click in the query's own spelling, the others upper-cased (same query key)."""
    from evaluation.qrels import read_qrels, read_queries

    queries = read_queries(SAMPLE / "queries.tsv")
    qrels = read_qrels(SAMPLE / "qrels.txt")
    t0 = 1_700_000_000.0
    events = []
    for d in range(10):
        for i, (q, text) in enumerate(sorted(queries.items())):
            for item, grade in sorted(qrels[q].items()):
                for k in range(int(grade)):
                    events.append(
                        Event(
                            item,
                            "click",
                            t0 + d * DAY + i * 60 + k,
                            user_id=f"u{d}-{i}-{k}",
                            query=text.upper() if k else text,
                        )
                    )
    return events


@pytest.mark.slow
def test_train_from_events_fits_the_lists_cf_on_older_events_and_serves(tmp_path, monkeypatch):
    import indexer.cf.train as cf_train
    from indexer.store import build_index
    from reranker.pipeline import SearchPipeline, SearchRequest
    from reranker.train import EVENT_SNAPSHOT, TrainConfig, train_reranker
    from shopsearch.settings import load_settings

    folder = tmp_path / "index"
    settings = load_settings(index_dir=folder, media_roots=[SAMPLE])
    build_index([SAMPLE / "catalog.jsonl"], folder, settings, progress=False)
    cfg = TrainConfig(epochs=2, batch_size=4, d_model=16, heads=2, ff=32, val_fraction=0.3, patience=2)
    with pytest.raises(ConfigError, match="events import"):
        train_reranker(folder, settings=settings, cfg=cfg, from_events=True, progress=False)
    events = sample_clicks()
    with EventStore(folder, settings) as store:
        store.append(events[:40])  # the newest 8 name fewer than 10 queries
    with pytest.raises(ConfigError, match="need at least 10"):
        train_reranker(folder, settings=settings, cfg=cfg, from_events=True, progress=False)
    assert not list(folder.glob(f"{EVENT_SNAPSHOT}*"))  # the snapshot is removed on failure too
    with EventStore(folder, settings) as store:
        store.append(events[40:])

    seen: list[EventLog] = []
    real = cf_train.train_cf

    def spy(index_dir: Path, s, **kw):
        seen.append(kw["log"])
        assert s.cf_live is False  # live counting would read the label events from the store
        return real(index_dir, s, **kw)

    monkeypatch.setattr(cf_train, "train_cf", spy)
    run = train_reranker(
        folder, settings=settings, cfg=cfg, from_events=True, label_share=0.2, progress=False
    )
    newest = sorted(e.timestamp for e in events)[-run.queries["label_events"]]
    assert len(seen) == 1
    assert len(seen[0]) == run.queries["cf_events"] == len(events) - run.queries["label_events"]
    assert seen[0].ts.max() < newest  # the lists' CF model never saw a label event
    assert run.queries["label_queries"] == 21 and run.queries["validation"] > 0
    # the live index is untouched: no snapshot left, no CF generation published into it
    assert not list(folder.glob(f"{EVENT_SNAPSHOT}*")) and not (folder / "cf").exists()
    saved = json.loads((run.model_dir / "config.json").read_text())["meta"]["train"]
    assert saved["select"] == "plain"  # clicks: epochs and head mix chosen on plain NDCG

    real(folder, settings)  # the serving CF model, on every stored event
    pipe = SearchPipeline.open(folder, settings)
    try:
        assert pipe.reranker.name.startswith("listwise-transformer")
        assert pipe.search(SearchRequest(text="black hoodie", k=5)).results
        # the cf:* features are the CF source's own score terms, as its explain view reports them
        retrieval = pipe.retriever.retrieve("BLACK hoodie", None, depth=50, explain=True)
        lf = pipe.reranker.extractor.extract(retrieval)
        checked = 0
        for i, c in enumerate(retrieval.candidates):
            d = c.detail.get("cf_detail")
            if d is None:
                assert not lf.features[i, FEATURE_INDEX["cf:match_score"]]
                continue
            got = {t: float(lf.features[i, FEATURE_INDEX[f"cf:{t}"]]) for t in CF_TERMS}
            assert got["log_p_click"] == pytest.approx(max(d["log_p_click"], -30.0), abs=1e-3)
            assert got["factor"] == pytest.approx(d["factor_score"], abs=1e-3)
            assert got["trend"] == pytest.approx(d["trend"], abs=1e-3)
            assert got["log_interactions"] == pytest.approx(math.log1p(d["interactions"]), abs=1e-3)
            assert got["match_score"] == pytest.approx(d["match_score"], abs=1e-3) and d["match"] == "exact"
            checked += 1
        assert checked >= 3
    finally:
        pipe.close()


def test_cli_from_events_refuses_mixed_or_missing_labels(tmp_path):
    from typer.testing import CliRunner

    from api.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["train-reranker", "--help"], env={"COLUMNS": "200"})
    assert "--from-events" in res.output and "--label-share" in res.output
    (tmp_path / "q.tsv").write_text("q1\tred mug\n")
    res = runner.invoke(
        app,
        ["train-reranker", "--from-events", "--queries", str(tmp_path / "q.tsv"), "--index", str(tmp_path)],
    )
    assert isinstance(res.exception, ConfigError) and "not both" in str(res.exception)
    res = runner.invoke(app, ["train-reranker", "--index", str(tmp_path)])
    assert isinstance(res.exception, ConfigError) and "--from-events" in str(res.exception)
    res = runner.invoke(
        app, ["train-reranker", "--from-events", "--fusion-folds", "2", "--index", str(tmp_path)]
    )
    assert isinstance(res.exception, ConfigError) and "event labels need none" in str(res.exception)
    res = runner.invoke(app, ["train-reranker", "--index", str(tmp_path), "--label-share", "0.3"])
    assert res.exit_code == 2 and "applies to --from-events only" in res.output


def test_plain_selection_picks_the_head_mix_by_plain_ndcg():
    """Head 0 ranks the clicked items a (grade 1) and b (grade 3) at 8 and 9, in the wrong order;
    head 1 at 9 and 10, in the right order. Plain NDCG prefers head 0 by less than the 0.01
    tolerance, condensed NDCG (unclicked items removed) head 1: ``select`` decides."""
    import numpy as np

    from reranker.train import UNJUDGED, QueryList, TrainConfig, choose_mix

    ids = ["a", "b"] + [f"u{i}" for i in range(1, 10)]
    order0 = [f"u{i}" for i in range(1, 8)] + ["a", "b", "u8", "u9"]
    order1 = [f"u{i}" for i in range(1, 9)] + ["b", "a", "u9"]
    head0 = np.asarray([-order0.index(d) for d in ids], dtype=np.float64)
    head1 = np.asarray([-order1.index(d) for d in ids], dtype=np.float64)
    x = QueryList(
        qid="q",
        text="q",
        variant="clean",
        features=np.zeros((len(ids), 1), np.float32),
        rows=np.arange(len(ids)),
        labels=np.asarray([1.0, 3.0] + [UNJUDGED] * 9, dtype=np.float32),
        doc_ids=ids,
        qvec=np.zeros(1, np.float32),
        pieces=np.zeros(0, np.int64),
    )
    heads = [np.stack([head0, head1], axis=1)]
    qrels = {"q": {"a": 1.0, "b": 3.0}}
    grid = (0.0, 100.0)  # head 0 alone; head 1's order
    plain_mix, _, results = choose_mix(heads, [x], qrels, 10, 100, grid=grid, select="plain")
    cond_mix, _, _ = choose_mix(heads, [x], qrels, 10, 100, grid=grid, select="condensed")
    assert 0 < results[0.0]["ndcg@10"] - results[100.0]["ndcg@10"] < 0.01
    assert results[100.0]["ndcg@10_condensed"] == pytest.approx(1.0)
    assert results[0.0]["ndcg@10_condensed"] < 0.9
    assert plain_mix == 0.0 and cond_mix == 100.0
    with pytest.raises(ConfigError, match="select must be"):
        TrainConfig(select="mrr")  # type: ignore[arg-type]
