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
  counting is off in this benchmark (a static model; ``bench_cf.py`` measures live counting).
- Test: every test click's query is searched (no user: the lists carry no personalisation) and
  the clicked SKU's AP@5 is taken in each ranking: the fused order of the sources, the CF
  source's own order (its candidates first, in its order), and the re-ranker's order. Also
  NDCG@10 against each test query's weighted clicks.

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


def cf_order(lists: Any) -> list[np.ndarray]:
    """The CF source's own order first, then the rest in fused order."""
    from reranker.features import FEATURE_INDEX

    cf = FEATURE_INDEX["src:cf:inv_log_rank"]
    pos = FEATURE_INDEX["fused_inv_log_pos"]
    return [x.features[:, cf].astype(np.float64) * 10.0 + x.features[:, pos] for x in lists.lists]


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
    from reranker.clicks import judgments_from_events
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
    run = train_reranker(index, settings=settings, cfg=cfg, from_events=True, label_share=args.label_share)
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
        "CF source order": cf_order(lists),
        "listwise Transformer trained on clicks": score_lists_with(run.model_dir, lists, pieces),
    }
    for name, scores in runs.items():
        r = score_rankings(rank_lists(lists.lists, scores, DEPTH), judged.qrels, 10, DEPTH)
        rows[name] = {"map@5": map5(lists, scores, test), "ndcg@10": r["ndcg@10"]}
    results["test"] = rows
    results["test_queries"] = len(judged.queries)
    (work / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n", encoding="utf-8")
    print(
        f"| run (Best Buy test part, {len(test)} clicks, {len(judged.queries)} queries) | MAP@5 | NDCG@10 |"
    )
    print("| --- | --- | --- |")
    for name, r in rows.items():
        print(f"| {name} | {r['map@5']:.4f} | {r['ndcg@10']:.4f} |")


if __name__ == "__main__":
    main()
