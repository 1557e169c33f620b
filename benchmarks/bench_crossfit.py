"""Full pipeline on Home Depot with cross-fitted fused features: fusion model + listwise re-ranker.

    python benchmarks/bench_crossfit.py [--base .bench/index] [--full .bench/fusion-hd/index]
        [--work .bench/xfit] [--fused-weight 1.5] [--folds 2] [--seed 0] [--d-model N --ff N] [--refit]
        [--candidates 100] [--bm25-candidates 200]

Why: the re-ranker reads the fused source (rank, score) as features. If the fusion model was
trained on the same queries the re-ranker trains on, those features are better on the training
lists than they will ever be on new queries, and the re-ranker learns to over-trust them
(validation 0.852 condensed vs 0.778 on test in ``bench_reranker.py`` over ``--full``).
Cross-fitting removes that: the TRAIN half of ``benchmarks.splits.homedepot_split`` is cut into
``--folds`` parts by a hash of the query text; for each part, a fusion model is trained on the
other parts (a copy of ``--base``, the index without a fusion model), and that part's candidate
lists (clean, typo and word-drop variants) come from it. The re-ranker (Transformer and
LambdaMART, default settings, validation carved as in ``bench_reranker.py``) trains on the union.

Test lists come from ``--full``: the index whose fusion model was trained on the whole TRAIN half
(``bench_fusion.py``, word-gram channel off: the default), which is what serving would use. They are read from
``.bench/rerank-fused/cache`` when ``bench_reranker.py --index FULL --work .bench/rerank-fused``
has built them (same settings), otherwise built here. The TEST half is never used for a choice.
Results: WORK/results.json. A rerun with the same WORK reuses the fold models and all lists and
retrains only the re-rankers (``--seed``, ``--d-model``, ``--ff``, ``--refit``: the seed, width
and refit studies).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.bench_fusion import copy_index  # noqa: E402
from benchmarks.bench_reranker import DEPTH, K, build_or_load, hd_queries, score_lists_with, train_models  # noqa: E402


def fold_of(text: str, folds: int) -> int:
    return int(hashlib.sha1(f"xfit\x00{text}".encode()).hexdigest(), 16) % folds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", type=Path, default=REPO / ".bench" / "index")
    ap.add_argument("--full", type=Path, default=REPO / ".bench" / "fusion-hd" / "index")
    ap.add_argument("--work", type=Path, default=REPO / ".bench" / "xfit")
    ap.add_argument("--test-cache", type=Path, default=REPO / ".bench" / "rerank-fused")
    ap.add_argument("--fused-weight", type=float, default=1.5)
    ap.add_argument(
        "--candidates", type=int, default=100, help="Top-N per source in every list (serving: 'candidates')."
    )
    ap.add_argument(
        "--bm25-candidates",
        type=int,
        default=None,
        help="Top-N from BM25 (serving: 'bm25_candidates'; default: the setting's).",
    )
    ap.add_argument("--folds", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--d-model", type=int, default=None, help="Re-ranker width (default: TrainConfig's).")
    ap.add_argument("--ff", type=int, default=None, help="Re-ranker feed-forward width.")
    ap.add_argument(
        "--refit", action=argparse.BooleanOptionalAction, default=None, help="Refit on train + validation."
    )
    args = ap.parse_args()

    import torch

    from indexer.fusion.sidecar import has_model
    from indexer.fusion.train import TrainConfig, train_fusion
    from reranker.base import PassThroughReranker
    from reranker.features import FeatureExtractor
    from reranker.pipeline import SearchPipeline
    from reranker.train import ListSet, fused_order_scores, is_validation, rank_lists, score_rankings
    from shopsearch.settings import load_settings

    torch.set_num_threads(args.threads)
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    weights = {"bm25": 1.0, "text": 0.6, "image": 1.0, "fused": args.fused_weight}
    train_q, test_q, qrels = hd_queries()
    fold = {q: fold_of(t, args.folds) for q, t in train_q.items()}
    results: dict[str, Any] = {
        "folds": args.folds,
        "weights": weights,
        "candidates": args.candidates,
        "bm25_candidates": args.bm25_candidates,
        "fusion": {},
    }
    parts, pieces = [], None
    for f in range(args.folds):
        idx = work / f"idx{f}"
        copy_index(args.base, idx)
        settings = load_settings(
            None,
            index_dir=idx,
            source_weights=weights,
            candidates=args.candidates,
            bm25_candidates=args.bm25_candidates,
        )
        others = {q: t for q, t in train_q.items() if fold[q] != f}
        if not has_model(idx):
            t = time.perf_counter()
            cfg = TrainConfig(seed=args.seed, threads=args.threads, n_gram_buckets=0)
            res = train_fusion(
                idx, settings, queries=others, qrels={q: qrels[q] for q in others}, config=cfg, log=print
            )
            results["fusion"][f] = {
                "queries": len(others),
                "seconds": round(time.perf_counter() - t, 1),
                "best_epoch": res.best_epoch,
                "val_best": res.val_best,
            }
        mine = {q: t for q, t in train_q.items() if fold[q] == f}
        pipeline = SearchPipeline.open(idx, settings, reranker=PassThroughReranker())
        try:
            extractor = FeatureExtractor(pipeline.index)
            extractor.warm()
            data, _ = build_or_load(
                work, f"fold{f}", pipeline, extractor, mine, qrels, ("clean", "typo", "drop")
            )
            parts.append(data)
            pieces = extractor.pieces
        finally:
            pipeline.close()
    lists = ListSet(
        [x for p in parts for x in p.lists], parts[0].item_vectors, parts[0].item_present, parts[0].meta
    )
    val_qids = {q for q, t in train_q.items() if is_validation(t, 0.15)}
    val = lists.subset(lambda x: x.qid in val_qids)
    train = lists.subset(lambda x: x.qid not in val_qids)
    overrides = {"d_model": args.d_model, "ff": args.ff, "refit": args.refit}
    ns = argparse.Namespace(
        epochs=args.epochs,
        seed=args.seed,
        threads=args.threads,
        skip_ablations=True,
        reuse=False,
        model_overrides={k: v for k, v in overrides.items() if v is not None},
    )
    models = train_models(work, train, val, qrels, pieces, ns)

    full_settings = load_settings(
        None,
        index_dir=args.full,
        source_weights=weights,
        candidates=args.candidates,
        bm25_candidates=args.bm25_candidates,
    )
    pipeline = SearchPipeline.open(args.full, full_settings, reranker=PassThroughReranker())
    try:
        extractor = FeatureExtractor(pipeline.index)
        extractor.warm()
        test, _ = build_or_load(args.test_cache, "test", pipeline, extractor, test_q, qrels, ("clean",))
        typo, _ = build_or_load(args.test_cache, "test-typo", pipeline, extractor, test_q, qrels, ("typo",))
    finally:
        pipeline.close()
    changed = {x.qid for x in typo.lists}
    typo_lists = ListSet(
        typo.lists + [x for x in test.lists if x.qid not in changed], test.item_vectors, test.item_present
    )
    rows = {
        "fused order": score_rankings(
            rank_lists(test.lists, fused_order_scores(test.lists), DEPTH), qrels, K, DEPTH
        )
    }
    for name, info in models.items():
        scores = score_lists_with(info["folder"], test, pieces)
        rows[name] = score_rankings(rank_lists(test.lists, scores, DEPTH), qrels, K, DEPTH)
        t_scores = score_lists_with(info["folder"], typo_lists, pieces)
        rows[f"{name} (typo)"] = score_rankings(
            rank_lists(typo_lists.lists, t_scores, DEPTH), qrels, K, DEPTH
        )
        rows[f"{name} (validation)"] = info["val"]
    results["test"] = rows
    (work / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n", encoding="utf-8")
    print("| run (Home Depot test half) | NDCG@10 | condensed |\n| --- | --- | --- |")
    for name, r in rows.items():
        print(f"| {name} | {r['ndcg@10']:.4f} | {r['ndcg@10_condensed']:.4f} |")


if __name__ == "__main__":
    main()
