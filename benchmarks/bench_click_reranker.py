"""The re-ranker trained on clicks (``train-reranker --from-events``), on Best Buy's real click log.

    python benchmarks/bench_click_reranker.py [--work .bench/clicks] [--label-share 0.2] [--seed 0]

Protocol (the CF benchmark's time split, ``bench_cf.py``): the 33,892 clicks of
``../shared/data/bestbuy/clicks_train.jsonl`` sorted by time; the first 80% are the store's
history, the last 20% (6,778 clicks) the test. Nothing from the test part is used for training,
tuning or a choice.

- Catalog: Best Buy's log names SKUs only (no titles), so each SKU of the log becomes one row
  titled ``SKU <id>`` with its category code. The text sources therefore carry no product
  information: this measures what the re-ranker learns from the CF signals and the list.
- History: the training part is stored in the index's event store.
- ``train_reranker(from_events=True)``: the product path. Labels are the newest ``--label-share``
  of the stored events (the CF source of those lists is a model fitted on the older ones);
  validation is carved from the label queries by the usual hash.
- Serving CF: ``train_cf`` on all stored events (tuned, as ``shopsearch train-cf`` does). Live
  counting is off for the static table.
- Test: every test click's query is searched (no user: the lists carry no personalisation) and
  the clicked SKU's AP@5 is taken in each ranking: the fused order of the sources, the CF
  source's own order (its candidates first, in its order), and the re-ranker's order. Also
  NDCG@10 against each test query's weighted clicks.
- Ablation: a second model trained on the same cached lists with the ``cf:*`` score terms
  zeroed (the CF source's score, rank and presence stay), scored on the same test lists.
- Live replay (the serving default, ``cf_live``): the test clicks in time order on a copy of the
  index, each query searched with every earlier test click stored and counted live, then its
  own click stored. The re-ranker was trained on static CF features; this shows whether it holds
  up when the CF features are fresher than any it saw in training.

Results: WORK/results.json and a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.bench_cf import BESTBUY, TEST_SHARE, ap5, load_bestbuy  # noqa: E402
from benchmarks.bench_reranker import score_lists_with  # noqa: E402

DEPTH = 100


def write_catalog(log: Any, path: Path) -> int:
    """One row per SKU of the log (all of it: an item may first be clicked in the test weeks)."""
    cats: dict[str, Counter[str]] = {}
    raw = [json.loads(line) for line in BESTBUY.read_text(encoding="utf-8").splitlines() if line.strip()]
    for r in raw:
        cats.setdefault(str(r["item_id"]), Counter())[str(r.get("category") or "")] += 1
    with path.open("w", encoding="utf-8") as f:
        for sku in sorted(set(log.item)):
            cat = cats.get(sku, Counter()).most_common(1)
            f.write(
                json.dumps({"id": sku, "title": f"SKU {sku}", "category": cat[0][0] if cat else ""}) + "\n"
            )
    return len(set(log.item))


def cf_scores(features: np.ndarray) -> np.ndarray:
    """The CF source's own order first, then the rest in fused order."""
    from reranker.features import FEATURE_INDEX

    cf = FEATURE_INDEX["src:cf:inv_log_rank"]
    pos = FEATURE_INDEX["fused_inv_log_pos"]
    return features[:, cf].astype(np.float64) * 10.0 + features[:, pos]


def without_cf_terms(lists: Any) -> Any:
    """A copy of ``lists`` with the cf:* columns zeroed."""
    from reranker.features import CF_COLUMNS
    from reranker.train import ListSet, QueryList

    out = []
    for x in lists.lists:
        f = x.features.copy()
        f[:, CF_COLUMNS] = 0.0
        out.append(QueryList(**{**x.__dict__, "features": f}))
    return ListSet(out, lists.item_vectors, lists.item_present, lists.meta)


def train_without_cf_terms(
    cache: Path, cfg: Any, pieces: Any, folder: Path, qrels: dict[str, dict[str, float]]
) -> dict[str, Any]:
    """The ablation model: train_reranker's cached lists without the cf:* features, the same
    config (plain-NDCG selection, as --from-events sets it). ``qrels``: the label judgments."""
    from dataclasses import replace

    from reranker.train import ListSet, train_transformer
    from reranker.transformer import save_checkpoint

    train = ListSet.load(next(cache.glob("lists-*-train.npz")))
    val = ListSet.load(next(cache.glob("lists-*-val.npz")))
    res = train_transformer(
        without_cf_terms(train),
        without_cf_terms(val),
        qrels,
        replace(cfg, select="plain"),
        piece_table=pieces.table if pieces is not None else None,
        progress=False,
    )
    save_checkpoint(
        res.model, folder, {"pieces_fingerprint": pieces.fingerprint if pieces is not None else None}
    )
    return {"val": res.best_val, "best_epoch": res.best_epoch, "seconds": round(res.seconds, 1)}


def live_replay(index: Path, work: Path, settings: Any, test: Any, model_dir: Path) -> dict[str, float]:
    """The serving default: live counting on. The test clicks are replayed in time order on a copy
    of the index; each one's query is searched with every earlier test click already stored (and
    counted by the CF source), then the click itself is stored. AP@5 of the clicked SKU in each
    ranking, as in the static table."""
    from indexer.interactions import EventStore
    from reranker.base import PassThroughReranker
    from reranker.features import FeatureExtractor
    from reranker.pipeline import SearchPipeline
    from reranker.serving import load_scorer

    copy = work / "live-index"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(index, copy)
    local = settings.model_copy(update={"index_dir": copy, "cf_live": True})
    pipeline = SearchPipeline.open(copy, local, reranker=PassThroughReranker())
    aps: dict[str, list[float]] = {"fused": [], "cf": [], "reranker": []}
    try:
        pipeline.retriever.cf.reload_interval = 0.0  # every search reads the clicks stored before it
        extractor = FeatureExtractor(pipeline.index)
        extractor.warm(progress=False)
        scorer = load_scorer(model_dir, extractor.pieces, "onnx")
        with EventStore(copy, local) as store:
            for ev in tqdm(test.to_events(), desc="live replay", unit=" click"):
                r = pipeline.retriever.retrieve(ev.query, depth=DEPTH)
                if r.candidates:
                    lf = extractor.extract(r)
                    ids = [c.id for c in r.candidates]
                    for name, sc in (
                        ("fused", -np.arange(len(ids), dtype=np.float64)),
                        ("cf", cf_scores(lf.features)),
                        ("reranker", scorer.score(lf)),
                    ):
                        order = np.lexsort((np.arange(len(sc)), -np.asarray(sc, dtype=np.float64)))
                        aps[name].append(ap5([ids[i] for i in order[:5]], ev.item_id))
                else:
                    for v in aps.values():
                        v.append(0.0)
                store.append([ev])
    finally:
        pipeline.close()
        shutil.rmtree(copy, ignore_errors=True)
    return {name: float(np.mean(v)) for name, v in aps.items()}


def map5(lists: Any, scores: list[np.ndarray], test: Any) -> float:
    from indexer.cf.queries import query_key
    from reranker.clicks import query_id
    from reranker.train import rank_lists

    ranked = rank_lists(lists.lists, scores, DEPTH)
    keys = [query_id(query_key(q)) for q in test.query]
    return float(np.mean([ap5(ranked.get(q, []), it) for q, it in zip(keys, test.item, strict=True)]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=REPO / ".bench" / "clicks")
    ap.add_argument("--label-share", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reuse-index", action="store_true", help="Keep WORK/index (its events and CF model).")
    args = ap.parse_args()

    import torch

    from indexer.cf.train import time_split, train_cf
    from indexer.interactions import EventStore
    from indexer.store import build_index
    from reranker.base import PassThroughReranker
    from reranker.clicks import judgments_from_events, label_split
    from reranker.features import FeatureExtractor
    from reranker.pipeline import SearchPipeline
    from reranker.train import (
        TrainConfig,
        build_lists,
        fused_order_scores,
        rank_lists,
        score_rankings,
        train_reranker,
    )
    from shopsearch.settings import load_settings

    torch.set_num_threads(args.threads)
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    index = work / "index"
    settings = load_settings(None, index_dir=index, cf_live=False)
    log, report = load_bestbuy(settings)
    train, test = time_split(log, TEST_SHARE)
    results: dict[str, Any] = {
        "events": {"train": len(train), "test": len(test), "rejected": report.rejected}
    }
    t = time.perf_counter()
    if not (args.reuse_index and (index / "CURRENT").is_file()):
        shutil.rmtree(index, ignore_errors=True)
        n = write_catalog(log, work / "catalog.jsonl")
        build_index([work / "catalog.jsonl"], index, settings, progress=False)
        with EventStore(index, settings) as store:
            store.append(train.to_events())
        results["items"] = n
    results["seconds_index"] = round(time.perf_counter() - t, 1)

    t = time.perf_counter()
    cfg = TrainConfig(seed=args.seed, epochs=args.epochs, threads=args.threads)
    cache = work / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    run = train_reranker(
        index, settings=settings, cfg=cfg, from_events=True, label_share=args.label_share, cache=cache
    )
    results["reranker"] = {
        "queries": run.queries,
        "val": run.val,
        "val_fused": run.val_fused,
        "best_epoch": run.best_epoch,
        "seconds": run.seconds,
    }
    print(f"[clicks] re-ranker trained in {time.perf_counter() - t:.0f} s: {run.queries}")
    t = time.perf_counter()
    cf = train_cf(index, settings)
    results["cf"] = {"seconds": round(time.perf_counter() - t, 1), "params": cf.params, "holdout": cf.holdout}

    judged = judgments_from_events(
        test, settings.event_weights, eta=settings.cf_position_bias_eta, known_items=set(log.item)
    )
    pipeline = SearchPipeline.open(index, settings, reranker=PassThroughReranker())
    try:
        extractor = FeatureExtractor(pipeline.index)
        extractor.warm(progress=False)
        lists = build_lists(pipeline, extractor, judged.queries, judged.qrels, depth=DEPTH, progress=True)
        pieces = extractor.pieces
    finally:
        pipeline.close()
    rows: dict[str, dict[str, float]] = {}
    runs = {
        "fused order (fixed weights)": fused_order_scores(lists.lists),
        "CF source order": [cf_scores(x.features) for x in lists.lists],
        "listwise Transformer trained on clicks": score_lists_with(run.model_dir, lists, pieces),
    }
    # ablation: the same training lists with the cf:* score terms zeroed (the CF source's own
    # score, rank and presence stay), trained and tested the same way
    ablation = work / "models" / "without-cf-terms"
    _, label_events = label_split(train, args.label_share)  # the split train_reranker made
    labels = judgments_from_events(
        label_events, settings.event_weights, eta=settings.cf_position_bias_eta, known_items=set(log.item)
    )
    results["without_cf_terms"] = train_without_cf_terms(cache, cfg, pieces, ablation, labels.qrels)
    runs["same, without the cf:* features"] = score_lists_with(ablation, without_cf_terms(lists), pieces)
    for name, scores in runs.items():
        r = score_rankings(rank_lists(lists.lists, scores, DEPTH), judged.qrels, 10, DEPTH)
        rows[name] = {"map@5": map5(lists, scores, test), "ndcg@10": r["ndcg@10"]}
    results["test"] = rows
    results["test_queries"] = len(judged.queries)
    t = time.perf_counter()
    live = live_replay(index, work, settings, test, run.model_dir)
    names = dict(zip(("fused", "cf", "reranker"), rows, strict=False))
    for key, value in live.items():
        rows[names[key]]["map@5_live"] = value
    results["seconds_live_replay"] = round(time.perf_counter() - t, 1)
    (work / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n", encoding="utf-8")
    print(
        f"| run (Best Buy test part, {len(test)} clicks, {len(judged.queries)} queries) "
        "| MAP@5 | NDCG@10 | MAP@5, live counting |"
    )
    print("| --- | --- | --- | --- |")
    for name, r in rows.items():
        live_cell = f"{r['map@5_live']:.4f}" if "map@5_live" in r else ""
        print(f"| {name} | {r['map@5']:.4f} | {r['ndcg@10']:.4f} | {live_cell} |")


if __name__ == "__main__":
    main()
