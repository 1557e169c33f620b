"""Re-ranker benchmark on Home Depot: LambdaMART vs the listwise Transformer vs fixed fusions.

    python benchmarks/bench_reranker.py [--index .bench/index] [--work .bench/rerank]
        [--epochs 8] [--seed 0] [--skip-ablations] [--reuse] [--latency-queries 300]
        [--icecat-index DIR [--icecat-model CHECKPOINT]]

Everything is trained on the TRAIN half of ``benchmarks.splits.homedepot_split`` (a validation set
is carved from it for early stopping) and reported on the TEST half, in both NDCG@10 forms (plain:
unjudged count as 0; condensed: unjudged removed). Candidate lists come from the index's own
retriever and the serving feature code, cached under WORK/cache. Rows:

- fixed fusions and single sources, from the evaluation runner (``evaluation.runner``);
- ``full (transformer)`` through the same runner with the trained re-ranker in the pipeline, and
  every model (LambdaMART, Transformer, ablations: no augmentation, no adversarial training, no
  cross-candidate attention) scored on the cached test lists with the evaluation metrics;
- robustness: NDCG@10 under the typo perturbation (runner);
- training wall time per model; re-rank latency p50/p99 (features + model) per backend and depth.

The index is only read: checkpoints go to WORK/models/<name>. Results: WORK/rerank_results.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: make `benchmarks.*` importable
    sys.path.insert(0, str(REPO))

from benchmarks.splits import homedepot_split  # noqa: E402

DATA = REPO.parent / "shared" / "data"
K = 10
DEPTH = 100

# hand-written Icecat queries: no judgments exist, so these only show that results stay sensible
ICECAT_QUERIES = {
    "ic1": ("hp laserjet toner cartridge black", ("toner",)),
    "ic2": ("wireless mouse logitech", ("mouse",)),
    "ic3": ("17 inch notebook intel core 2 duo", ("notebook", "laptop")),
    "ic4": ("usb flash drive 16gb", ("usb", "flash")),
    "ic5": ("canon inkjet photo printer", ("printer",)),
    "ic6": ("samsung lcd monitor 22", ("monitor", "display")),
    "ic7": ("ethernet network switch 24 port", ("switch",)),
    "ic8": ("external hard drive 1tb", ("hard", "hdd", "drive")),
    "ic9": ("noise cancelling headphones", ("headphone", "headset")),
    "ic10": ("ddr3 memory 8gb", ("memory", "ram")),
    "ic11": ("epson ink cartridge cyan", ("ink", "cartridge")),
    "ic12": ("keyboard with numeric keypad", ("keyboard",)),
}


def _log(msg: str) -> None:
    print(f"[rerank-bench] {msg}", file=sys.stderr, flush=True)


def pct(values: Sequence[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    return {"p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99)), "n": len(a)}


# ====================================================================== data
def hd_queries() -> tuple[dict[str, str], dict[str, str], dict[str, dict[str, float]]]:
    from evaluation.qrels import read_qrels, read_queries

    queries = read_queries(DATA / "homedepot" / "queries.tsv")
    qrels = read_qrels(DATA / "homedepot" / "qrels.txt")
    usable = {q: t for q, t in queries.items() if q in qrels and any(g > 0 for g in qrels[q].values())}
    train = {q: t for q, t in usable.items() if homedepot_split(t) == "train"}
    test = {q: t for q, t in usable.items() if homedepot_split(t) == "test"}
    return train, test, qrels


def build_or_load(
    work: Path, name: str, pipeline: Any, extractor: Any, queries: dict[str, str], qrels: Any, variants: tuple
) -> Any:
    from reranker.train import ListSet, build_lists

    path = work / "cache" / f"{name}.npz"
    if path.is_file():
        try:
            data = ListSet.load(path)
            s = pipeline.retriever.settings
            lex = data.meta.get("bm25_candidates") or 0  # lists from before it: BM25 as deep as the rest
            same = (
                data.meta.get("fusion") == s.fusion
                and data.meta.get("weights", dict(s.source_weights)) == dict(s.source_weights)
                and data.meta.get("variants") == list(variants)
                and data.meta.get("candidates", 100) == s.candidates
                and max(s.candidates, lex) == s.bm25_depth
            )
            if same and {x.qid for x in data.lists} <= set(queries):
                _log(f"lists {name}: {len(data.lists)} from {path}")
                return data, 0.0
        except Exception as exc:  # noqa: BLE001 - a stale cache is rebuilt
            _log(f"rebuilding {path}: {exc}")
    t = time.perf_counter()
    data = build_lists(pipeline, extractor, queries, qrels, variants=variants, depth=DEPTH, progress=True)
    data.save(path)
    seconds = time.perf_counter() - t
    _log(f"lists {name}: {len(data.lists)} in {seconds:.0f} s")
    return data, seconds


# ====================================================================== models
def train_models(
    work: Path, train: Any, val: Any, qrels: Any, pieces: Any, args: argparse.Namespace
) -> dict[str, dict[str, Any]]:
    from reranker.lambdamart import LambdaMARTConfig, train_lambdamart
    from reranker.train import TrainConfig, train_transformer
    from reranker.transformer import save_checkpoint

    out: dict[str, dict[str, Any]] = {}
    base = dict(
        epochs=args.epochs, seed=args.seed, threads=args.threads, **getattr(args, "model_overrides", {})
    )
    variants: dict[str, dict[str, Any]] = {"transformer": {}}
    if not args.skip_ablations:
        variants.update(
            {
                "no augmentation": {"augment": False},
                "no adversarial": {"adversarial": "none"},
                "no cross-attention": {"cross_attention": False},
            }
        )
    clean_train = train.subset(lambda x: x.variant == "clean")
    for name, over in variants.items():
        folder = work / "models" / name.replace(" ", "-")
        cfg = TrainConfig(**{**base, **over})
        if args.reuse and (folder / "config.json").is_file():
            meta = json.loads((folder / "config.json").read_text())["meta"]
            out[name] = {"folder": folder, "seconds": meta.get("seconds_training"), "val": meta.get("val")}
            _log(f"{name}: reusing {folder}")
            continue
        data = train if cfg.augment else clean_train
        _log(f"training {name} ({len(data.lists)} lists) ...")
        res = train_transformer(
            data,
            val,
            qrels,
            cfg,
            piece_table=pieces.table if pieces is not None else None,
            progress=False,
            on_epoch=lambda e, r, n=name: _log(
                f"  {n} epoch {e}: loss {r['loss']:.4f} val {r['ndcg@10']:.4f}/{r['ndcg@10_condensed']:.4f} "
                f"mix {r['mix']}"
            ),
        )
        from dataclasses import asdict

        meta = {
            "train": asdict(cfg),
            "best_epoch": res.best_epoch,
            "val": res.best_val,
            "history": res.history,
            "pieces_fingerprint": pieces.fingerprint if pieces is not None else None,
            "seconds_training": round(res.seconds, 1),
        }
        save_checkpoint(res.model, folder, meta)
        out[name] = {"folder": folder, "seconds": round(res.seconds, 1), "val": res.best_val}
    folder = work / "models" / "lambdamart"
    if args.reuse and (folder / "config.json").is_file():
        meta = json.loads((folder / "config.json").read_text())["meta"]
        out["lambdamart"] = {"folder": folder, "seconds": meta.get("seconds"), "val": meta.get("val")}
    else:
        _log("training lambdamart ...")
        model, meta = train_lambdamart(
            train, val, qrels, LambdaMARTConfig(seed=args.seed, threads=args.threads)
        )
        model.save(folder)
        out["lambdamart"] = {"folder": folder, "seconds": meta["seconds"], "val": meta["val"]}
    return out


def score_lists_with(folder: Path, lists: Any, pieces: Any) -> list[np.ndarray]:
    """Scores of a checkpoint on cached lists, through the serving scorer (ONNX for the
    Transformer), so the numbers are what serving would produce."""
    from reranker.features import ListFeatures, QueryInfo
    from reranker.serving import load_scorer

    scorer = load_scorer(folder, pieces, "onnx")
    out = []
    for x in lists.lists:
        lf = ListFeatures(
            candidates=[],
            features=x.features,
            rows=x.rows,
            item_vectors={m: lists.item_vectors[m][x.rows] for m in lists.item_vectors},
            query=QueryInfo(text=x.text, vectors={"text": x.qvec} if x.qvec.any() else {}, pieces=x.pieces),
        )
        out.append(scorer.score(lf))
    return out


def significance(test: Any, models: dict[str, Any], pieces: Any, qrels: Any) -> dict[str, Any]:
    """Paired randomisation test and bootstrap CI of the Transformer against LambdaMART and the
    fused order, per query on the test lists (evaluation.significance)."""
    from evaluation.metrics import evaluate_run
    from evaluation.significance import compare_to_baseline
    from reranker.train import fused_order_scores, rank_lists

    qids = [x.qid for x in test.lists]
    runs = {"fused": rank_lists(test.lists, fused_order_scores(test.lists), DEPTH)}
    for name in ("transformer", "lambdamart"):
        runs[name] = rank_lists(test.lists, score_lists_with(models[name]["folder"], test, pieces), DEPTH)
    per_query = {n: evaluate_run(r, qrels, qids, k=K, depth=DEPTH)[1] for n, r in runs.items()}
    out = {}
    for metric in (f"ndcg@{K}", f"ndcg@{K}_condensed"):
        for base in ("lambdamart", "fused"):
            pq = {n: per_query[n] for n in ("transformer", base)}
            out[f"{metric} vs {base}"] = compare_to_baseline(pq, base, qids, metric=metric, n_resamples=5000)[
                "transformer"
            ]
    return out


# ====================================================================== latency
def latency(pipeline: Any, folder: Path, texts: Sequence[str], backends: Sequence[str]) -> dict[str, Any]:
    from reranker.serving import LearnedReranker

    retrievals = [pipeline.retriever.retrieve(t, depth=DEPTH) for t in texts]
    out: dict[str, Any] = {"pool": pct([len(r.candidates) for r in retrievals])}
    for backend in backends:
        for depth in (100, 200):
            rr = LearnedReranker(pipeline.index, folder, depth=depth, backend=backend, watch=False)  # type: ignore[arg-type]
            for r in retrievals[:20]:
                rr.rerank(r)
            total, feat = [], []
            for r in retrievals[20:]:
                t = time.perf_counter()
                lf = rr.extractor.extract(r, r.candidates[:depth])
                t1 = time.perf_counter()
                rr.scorer.score(lf)
                t2 = time.perf_counter()
                total.append((t2 - t) * 1000)
                feat.append((t1 - t) * 1000)
            out[f"{rr.scorer.kind}/{backend}/depth{depth}"] = {
                "total": pct(total),
                "features": pct(feat),
                "model": pct(np.asarray(total) - np.asarray(feat)),
            }
            _log(f"latency {backend} depth {depth}: p50 {np.percentile(total, 50):.2f} ms")
    return out


# ====================================================================== icecat
def icecat_check(index_dir: Path, folder: Path) -> dict[str, Any]:
    """Top-5 of BM25, the fixed fusion and the re-ranked list for hand-written queries, plus the
    share of the top 10 whose title/category names the product type asked for (a sanity proxy,
    not a relevance judgment)."""
    from reranker.base import PassThroughReranker
    from reranker.pipeline import SearchPipeline
    from reranker.serving import LearnedReranker
    from shopsearch.settings import load_settings

    settings = load_settings(index_dir=index_dir)
    pipe = SearchPipeline.open(index_dir, settings, reranker=PassThroughReranker())
    rr = LearnedReranker(pipe.index, folder, watch=False)
    out: dict[str, Any] = {}
    try:
        for qid, (text, types) in ICECAT_QUERIES.items():
            r = pipe.retriever.retrieve(text, depth=DEPTH)
            bm25 = sorted(
                (c for c in r.candidates if "bm25" in c.sources), key=lambda c: c.sources["bm25"].rank
            )
            lists = {"bm25": bm25, "fused": r.candidates, "reranked": rr.rerank(r)}
            entry: dict[str, Any] = {"text": text}
            for name, cands in lists.items():
                prods = [pipe.index.table.product(c.row) for c in cands[:10]]
                hits = [
                    any(
                        t in f"{p.title} {p.category} {p.attributes.get('product_type', '')}".lower()
                        for t in types
                    )
                    for p in prods
                ]
                entry[name] = {
                    "type_share@10": float(np.mean(hits)) if hits else 0.0,
                    "top5": [p.title[:80] for p in prods[:5]],
                }
            out[qid] = entry
    finally:
        pipe.close()
    return out


# ====================================================================== main
def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", type=Path, default=REPO / ".bench" / "index")
    ap.add_argument("--work", type=Path, default=REPO / ".bench" / "rerank")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-ablations", action="store_true")
    ap.add_argument("--reuse", action="store_true", help="Reuse checkpoints already in WORK/models.")
    ap.add_argument("--no-runner", action="store_true", help="Skip the evaluation-runner pass.")
    ap.add_argument("--latency-queries", type=int, default=300)
    ap.add_argument("--icecat-index", type=Path, default=None)
    ap.add_argument("--icecat-model", type=Path, default=None, help="Default: the benchmark's Transformer.")
    args = ap.parse_args(argv)

    import torch

    from evaluation.runner import EvalConfig, QuerySet, evaluate
    from reranker.base import PassThroughReranker
    from reranker.features import FeatureExtractor
    from reranker.pipeline import SearchPipeline
    from reranker.serving import LearnedReranker
    from reranker.train import fused_order_scores, is_validation, rank_lists, score_rankings
    from shopsearch.settings import load_settings

    torch.set_num_threads(args.threads)
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    train_q, test_q, qrels = hd_queries()
    _log(f"{len(train_q)} train and {len(test_q)} test queries with a positive judgment")
    settings = load_settings(index_dir=args.index)
    pipeline = SearchPipeline.open(args.index, settings, reranker=PassThroughReranker())
    results: dict[str, Any] = {"settings": {"fusion": settings.fusion, "weights": settings.source_weights}}
    try:
        extractor = FeatureExtractor(pipeline.index)
        t = time.perf_counter()
        extractor.warm()
        results["item_store_s"] = round(time.perf_counter() - t, 1)
        lists, s_train = build_or_load(
            work, "train", pipeline, extractor, train_q, qrels, ("clean", "typo", "drop")
        )
        test, s_test = build_or_load(work, "test", pipeline, extractor, test_q, qrels, ("clean",))
        typo, _ = build_or_load(work, "test-typo", pipeline, extractor, test_q, qrels, ("typo",))
        results["list_seconds"] = {"train": round(s_train, 1), "test": round(s_test, 1)}
        # carve by the ORIGINAL query text, so a perturbed copy of a validation query never trains
        val_qids = {q for q, t in train_q.items() if is_validation(t, 0.15)}
        val = lists.subset(lambda x: x.qid in val_qids)
        train = lists.subset(lambda x: x.qid not in val_qids)
        models = train_models(work, train, val, qrels, extractor.pieces, args)

        # ---- scores on the cached test lists
        rows: dict[str, dict[str, float]] = {}
        rows["fused order (configured fusion)"] = score_rankings(
            rank_lists(test.lists, fused_order_scores(test.lists), DEPTH), qrels, K, DEPTH
        )
        typo_rows: dict[str, dict[str, float]] = {}
        # queries the typo left unchanged keep their clean list, as in the runner's perturbation
        changed = {x.qid for x in typo.lists}
        typo_lists = type(test)(
            typo.lists + [x for x in test.lists if x.qid not in changed], test.item_vectors, test.item_present
        )
        typo_rows["fused order (configured fusion)"] = score_rankings(
            rank_lists(typo_lists.lists, fused_order_scores(typo_lists.lists), DEPTH), qrels, K, DEPTH
        )
        for name, info in models.items():
            scores = score_lists_with(info["folder"], test, extractor.pieces)
            rows[name] = score_rankings(rank_lists(test.lists, scores, DEPTH), qrels, K, DEPTH)
            t_scores = score_lists_with(info["folder"], typo_lists, extractor.pieces)
            typo_rows[name] = score_rankings(rank_lists(typo_lists.lists, t_scores, DEPTH), qrels, K, DEPTH)
            _log(f"test {name}: {rows[name]}; typo: {typo_rows[name]}")
        results["lists"] = rows
        results["lists_typo"] = typo_rows
        results["significance"] = significance(test, models, extractor.pieces, qrels)
        results["training"] = {n: {"seconds": i["seconds"], "val": i["val"]} for n, i in models.items()}

        # ---- the evaluation runner: fixed fusions, and the full pipeline with the Transformer
        if not args.no_runner:
            pipeline.reranker = LearnedReranker(pipeline.index, models["transformer"]["folder"], watch=False)
            qset = QuerySet(texts=test_q, images={}, qrels=qrels, qids=list(test_q))
            cfg = EvalConfig(
                runs=("bm25", "vector", "rrf", "weighted", "full"),
                k=K,
                depth=DEPTH,
                perturb=("typo",),
                n_resamples=2000,
                progress=True,
            )
            res = evaluate(pipeline, qset, cfg)
            results["runner"] = {
                n: {m: res.summary[n][m] for m in (f"ndcg@{K}", f"ndcg@{K}_condensed", f"recall@{DEPTH}")}
                for n in res.summary
            }
            results["runner_significance"] = res.significance
            results["typo"] = res.perturbation.get("typo", {})
            results["runner_meta"] = res.meta

        # ---- latency
        texts = [t for _, t in sorted(test_q.items())][: args.latency_queries + 20]
        results["latency"] = latency(
            pipeline, models["transformer"]["folder"], texts, ("onnx", "int8", "torch")
        )
        results["latency"].update(
            {
                k: v
                for k, v in latency(pipeline, models["lambdamart"]["folder"], texts, ("onnx",)).items()
                if k != "pool"
            }
        )
    finally:
        pipeline.close()
    if args.icecat_index is not None:
        results["icecat"] = icecat_check(
            args.icecat_index, args.icecat_model or models["transformer"]["folder"]
        )
    results["machine"] = {"cpus": __import__("os").cpu_count(), "torch_threads": args.threads}
    (work / "rerank_results.json").write_text(json.dumps(results, indent=1, default=str), encoding="utf-8")
    print(render(results))


def render(res: dict[str, Any]) -> str:
    lines = ["## Re-ranker: Home Depot test half (NDCG@10)", ""]
    lines += ["| system | plain | condensed | source |", "|---|---:|---:|---|"]
    for name, m in res.get("runner", {}).items():
        lines.append(
            f"| {name} | {m[f'ndcg@{K}']:.4f} | {m[f'ndcg@{K}_condensed']:.4f} | evaluation runner |"
        )
    for name, m in res.get("lists", {}).items():
        lines.append(
            f"| {name} | {m[f'ndcg@{K}']:.4f} | {m[f'ndcg@{K}_condensed']:.4f} | cached test lists |"
        )
    for name, t in res.get("significance", {}).items():
        lines.append(
            f"\ntransformer {name}: {t.get('delta', float('nan')):+.4f} "
            f"(95% CI {t.get('ci_low', float('nan')):+.4f} .. {t.get('ci_high', float('nan')):+.4f}, "
            f"randomisation p {t.get('p_randomization', float('nan')):.4f})"
        )
    if res.get("lists_typo"):
        lines += ["", "| cached test lists, typo queries | plain | drop | condensed | drop |"]
        lines += ["|---|---:|---:|---:|---:|"]
        for name, m in res["lists_typo"].items():
            clean = res["lists"][name]
            pl, co = m[f"ndcg@{K}"], m[f"ndcg@{K}_condensed"]
            lines.append(
                f"| {name} | {pl:.4f} | {clean[f'ndcg@{K}'] - pl:.4f} | {co:.4f} | "
                f"{clean[f'ndcg@{K}_condensed'] - co:.4f} |"
            )
    lines += ["", "| model | training s | best validation (plain / condensed) |", "|---|---:|---|"]
    for name, t in res.get("training", {}).items():
        v = t.get("val") or {}
        lines.append(
            f"| {name} | {t.get('seconds')} | {v.get(f'ndcg@{K}', float('nan')):.4f} / "
            f"{v.get(f'ndcg@{K}_condensed', float('nan')):.4f} |"
        )
    if res.get("typo"):
        lines += ["", "| run (typo) | NDCG@10 | drop | condensed | drop |", "|---|---:|---:|---:|---:|"]
        for name, m in res["typo"]["runs"].items():
            lines.append(
                f"| {name} | {m[f'ndcg@{K}']:.4f} | {m['drop']:.4f} | {m[f'ndcg@{K}_condensed']:.4f} | "
                f"{m['drop_condensed']:.4f} |"
            )
    lat = res.get("latency", {})
    if lat:
        lines += [
            "",
            "| re-rank latency | p50 ms | p99 ms | features p50 | model p50 |",
            "|---|---:|---:|---:|---:|",
        ]
        for name, m in lat.items():
            if name == "pool":
                continue
            t, f, mo = m["total"], m["features"], m["model"]
            lines.append(f"| {name} | {t['p50']:.2f} | {t['p99']:.2f} | {f['p50']:.2f} | {mo['p50']:.2f} |")
        lines.append(
            f"\ncandidate pool per query: p50 {lat['pool']['p50']:.0f}, p99 {lat['pool']['p99']:.0f}"
        )
    if res.get("icecat"):
        lines += ["", "| Icecat query | BM25 | fused | re-ranked |", "|---|---:|---:|---:|"]
        for e in res["icecat"].values():
            lines.append(
                f"| {e['text']} | {e['bm25']['type_share@10']:.1f} | {e['fused']['type_share@10']:.1f} | "
                f"{e['reranked']['type_share@10']:.1f} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
