"""The fusion model on Home Depot (judged queries) and Icecat (no judgments).

    python benchmarks/bench_fusion.py homedepot [--work .bench/fusion-hd] [--epochs 15] [--retrain]
    python benchmarks/bench_fusion.py icecat [--work .bench/fusion-icecat] [--retrain]

Home Depot: the engine-core index (``.bench/index``, read-only) is copied to WORK; the model trains
on the TRAIN half of the queries (``benchmarks.splits.homedepot_split``) plus the catalog's own
pseudo-queries, and everything is reported on the TEST half: NDCG@10 (plain and condensed) of
BM25, the MiniLM vectors, the fused source alone, RRF of BM25 + vectors (the configured fixed
fusion) and RRF with the fused source added; then the same under the evaluation's ``typo``
perturbation. The fused source's RRF weight is chosen on the training run's own validation
queries (part of the TRAIN half), never on test queries.

Icecat: an index of the catalog is built in WORK (text only: its photos are remote URLs), the
model trains on its own pseudo-queries, and a few hand-written queries are shown side by side.
There are no Icecat judgments here: the real check is on queries we do not have.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.splits import homedepot_split  # noqa: E402

DATA = REPO.parent / "shared" / "data"
K = 10
DEPTH = 100
FUSED_WEIGHTS = (0.3, 0.6, 1.0, 1.5)
FUSIONS = ("rrf", "weighted")  # rrf: k=60, bm25 and text weight 1; weighted: the settings' weights
ICECAT_QUERIES = (
    "hp laptop 17 inch",
    "black toner cartridge for xerox",
    "wireless mouse",
    "usb c to hdmi adapter",
    "ups battery backup 1500va",
    "epson inkjet photo printer",
    "cat6 ethernet cable 10m",
    "intel core i7 processor",
)


def copy_index(src: Path, dst: Path) -> None:
    """The live generation, its CURRENT and the embedding cache, once (a trained model is kept)."""
    from indexer.store import snapshot_live_generation

    if not (dst / "CURRENT").exists():
        snapshot_live_generation(src, dst)


def encode_cached(encoder: Any, texts: list[str], path: Path) -> dict[str, np.ndarray]:
    """MiniLM vectors of query texts, kept in an .npz next to the results."""
    have: dict[str, np.ndarray] = {}
    if path.exists():
        z = np.load(path, allow_pickle=False)
        have = dict(zip(z["texts"].tolist(), z["vecs"], strict=True))
    todo = sorted({t for t in texts if t not in have})
    if todo:
        vecs = encoder.encode(todo, batch_size=128, progress=True)
        have.update(zip(todo, vecs, strict=True))
        keys = sorted(have)
        np.savez(path, texts=np.asarray(keys), vecs=np.stack([have[k] for k in keys]))
    return have


def rankings(
    retriever: Any, queries: dict[str, str], qvecs: dict[str, np.ndarray], settings: Any
) -> dict[str, dict[str, list[str]]]:
    """run -> qid -> ranked doc ids (top 100, as the evaluation cuts): each source alone; plain
    RRF (k=60, equal weights) and the shipped weighted fusion (the settings' weights), each
    without the fused source (``rrf``, ``weighted``) and with it at weight w (``rrf+fused@w``)."""
    from evaluation.runner import source_lists
    from retriever.fusion import FUSERS

    runs: dict[str, dict[str, list[str]]] = {}
    for qid, text in queries.items():
        r = retriever.retrieve(text, depth=DEPTH, query_vectors={"text": qvecs[" ".join(text.split())]})
        lists = source_lists(r.candidates)
        for source, ranked in lists.items():
            runs.setdefault(source, {})[qid] = [d for d, _ in ranked][:DEPTH]
        base = {s: lst for s, lst in lists.items() if s != "fused"}
        for method in FUSIONS:
            weights = {"bm25": 1.0, "text": 1.0} if method == "rrf" else dict(settings.source_weights)
            kwargs = {"k": settings.rrf_k} if method == "rrf" else {}
            for w in (None, *FUSED_WEIGHTS):
                name = method if w is None else f"{method}+fused@{w}"
                fused = FUSERS[method](base if w is None else lists, {**weights, "fused": w or 0.0}, **kwargs)
                order = sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))
                runs.setdefault(name, {})[qid] = [d for d, _ in order][:DEPTH]
    return runs


def score(runs: dict[str, dict[str, list[str]]], qrels: dict[str, dict[str, float]], qids: list[str]) -> dict:
    from evaluation.metrics import evaluate_run

    out = {}
    for name, run in runs.items():
        means, _ = evaluate_run(run, qrels, qids, k=K, depth=DEPTH)
        out[name] = {m: round(means[m], 4) for m in (f"ndcg@{K}", f"ndcg@{K}_condensed", f"recall@{DEPTH}")}
    return out


def homedepot(args: argparse.Namespace) -> None:
    import torch

    from evaluation.perturb import perturb
    from evaluation.qrels import read_qrels, read_queries
    from indexer.fusion.sidecar import has_model
    from indexer.fusion.train import TrainConfig, _hash_fraction, train_fusion
    from indexer.store import LiveIndex
    from retriever.search import Retriever
    from shopsearch.settings import load_settings

    torch.set_num_threads(args.threads)
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    t = time.perf_counter()
    copy_index(REPO / ".bench" / "index", work / "index")
    times["copy_index_s"] = time.perf_counter() - t
    settings = load_settings(None, index_dir=work / "index")
    queries = read_queries(DATA / "homedepot" / "queries.tsv")
    qrels = read_qrels(DATA / "homedepot" / "qrels.txt")
    train = {q: t for q, t in queries.items() if q in qrels and homedepot_split(t) == "train"}
    test = {q: t for q, t in queries.items() if q in qrels and homedepot_split(t) == "test"}
    test = {q: t for q, t in test.items() if any(g > 0 for g in qrels[q].values())}
    print(f"{len(train)} train queries, {len(test)} test queries")
    results: dict[str, Any] = {"train_queries": len(train), "test_queries": len(test)}

    cfg = TrainConfig(epochs=args.epochs, seed=args.seed, threads=args.threads, max_minutes=args.max_minutes)
    if args.grams is not None:
        cfg = replace(cfg, n_gram_buckets=args.grams)
    if args.retrain or not has_model(work / "index"):
        t = time.perf_counter()
        result = train_fusion(
            work / "index",
            settings,
            queries=train,
            qrels={q: qrels[q] for q in train},
            config=cfg,
            progress=True,
            log=print,
        )
        times["train_fusion_s"] = time.perf_counter() - t
        results["training"] = {
            "best_epoch": result.best_epoch,
            "val_start": result.val_start,
            "val_best": result.val_best,
            "counts": result.counts,
            "seconds_per_epoch": [h["seconds"] for h in result.history[1:]],
            "publish": result.publish,
        }
    val = {q: t for q, t in train.items() if _hash_fraction(q, cfg.seed, "val-query") < cfg.val_fraction}

    live = LiveIndex(work / "index", settings)
    assert live.fused is not None, "train-fusion publishes fused vectors"
    retriever = Retriever(live, settings)
    typo = {q: perturb(t, "typo", q, seed=0) for q, t in test.items()}
    texts = [" ".join(t.split()) for t in [*test.values(), *typo.values(), *val.values()]]
    t = time.perf_counter()
    qvecs = encode_cached(live.encoders.text, texts, work / "query_vectors.npz")
    times["encode_queries_s"] = time.perf_counter() - t

    t = time.perf_counter()
    val_scores = score(rankings(retriever, val, qvecs, settings), qrels, list(val))
    best_w = {
        method: max(FUSED_WEIGHTS, key=lambda w: val_scores[f"{method}+fused@{w}"][f"ndcg@{K}_condensed"])
        for method in FUSIONS
    }
    results["validation_queries"] = {"n": len(val), "runs": val_scores, "chosen_fused_weight": best_w}
    t = time.perf_counter()
    clean = score(rankings(retriever, test, qvecs, settings), qrels, list(test))
    times["rank_test_s"] = time.perf_counter() - t
    noisy = score(rankings(retriever, typo, qvecs, settings), qrels, list(test))
    results["test"] = clean
    results["test_typo"] = noisy
    results["typo_changed"] = sum(1 for q in test if typo[q] != test[q])
    results["fused_weight"] = best_w
    results["settings"] = {"source_weights": settings.source_weights, "rrf_k": settings.rrf_k}
    live.close()
    results["times_s"] = {k: round(v, 1) for k, v in times.items()}
    (work / "results.json").write_text(json.dumps(results, indent=1) + "\n")

    m, mc = f"ndcg@{K}", f"ndcg@{K}_condensed"
    print(
        f"\nHome Depot TEST half ({len(test)} queries); fused weight {best_w} (chosen on validation queries)"
    )
    print(f"| run | {m} | {mc} | {m} typo | drop | {mc} typo | drop |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    names = ["bm25", "text", "fused"]
    for method in FUSIONS:
        names += [method, *(f"{method}+fused@{w}" for w in FUSED_WEIGHTS)]
    for name in names:
        a, b = clean[name], noisy[name]
        print(
            f"| {name} | {a[m]:.4f} | {a[mc]:.4f} | {b[m]:.4f} | {a[m] - b[m]:+.4f} | {b[mc]:.4f} | "
            f"{a[mc] - b[mc]:+.4f} |"
        )
    print(json.dumps(results, indent=1))


def icecat(args: argparse.Namespace) -> None:
    import torch

    from indexer.fusion.sidecar import has_model
    from indexer.fusion.train import TrainConfig, train_fusion
    from indexer.store import LiveIndex, build_index
    from retriever.search import Retriever
    from shopsearch.settings import load_settings

    torch.set_num_threads(args.threads)
    work: Path = args.work
    index_dir = work / "index"
    settings = load_settings(None, index_dir=index_dir)
    times: dict[str, float] = {}
    if not (index_dir / "CURRENT").exists():
        t = time.perf_counter()
        build_index([DATA / "icecat" / "catalog.jsonl"], index_dir, settings, progress=True)
        times["build_s"] = time.perf_counter() - t
    results: dict[str, Any] = {}
    if args.retrain or not has_model(index_dir):
        t = time.perf_counter()
        cfg = TrainConfig(
            epochs=args.epochs, seed=args.seed, threads=args.threads, max_minutes=args.max_minutes
        )
        if args.grams is not None:
            cfg = replace(cfg, n_gram_buckets=args.grams)
        result = train_fusion(index_dir, settings, config=cfg, progress=True, log=print)
        times["train_fusion_s"] = time.perf_counter() - t
        results["training"] = {
            "best_epoch": result.best_epoch,
            "val_start": result.val_start,
            "val_best": result.val_best,
            "counts": result.counts,
        }
    live = LiveIndex(index_dir, settings)
    retriever = Retriever(live, settings)
    shown = {}
    for q in ICECAT_QUERIES:
        r = retriever.retrieve(q, depth=20)
        from evaluation.runner import source_lists

        lists = source_lists(r.candidates)
        shown[q] = {s: [live.table.get(d).title[:70] for d, _ in lst[:5]] for s, lst in lists.items()}
        shown[q]["rrf (all)"] = [live.table.product(c.row).title[:70] for c in r.candidates[:5]]
        print(f"\n### {q}")
        for s, titles in shown[q].items():
            print(f"- {s}: " + " | ".join(titles[:3]))
    live.close()
    results["queries"] = shown
    results["times_s"] = {k: round(v, 1) for k, v in times.items()}
    (work / "results.json").write_text(json.dumps(results, indent=1) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", choices=("homedepot", "icecat"))
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-minutes", type=float, default=None)
    ap.add_argument("--grams", type=int, default=None, help="Hashed word/trigram buckets (0: channel off).")
    ap.add_argument("--retrain", action="store_true")
    args = ap.parse_args()
    args.work = args.work or REPO / ".bench" / f"fusion-{'hd' if args.dataset == 'homedepot' else 'icecat'}"
    homedepot(args) if args.dataset == "homedepot" else icecat(args)


if __name__ == "__main__":
    main()
