"""Engine-core benchmark on Home Depot: indexing, size, load time, memory, latency (in process and
over HTTP) and relevance, side by side with LanceDB hybrid search and bm25s.

    python benchmarks/bench_core.py [--catalog ../shared/data/homedepot/catalog.jsonl]
        [--limit N] [--queries 1000] [--work .bench] [--no-cold] [--no-http]

Every measured phase runs in its own child process (this script re-invoked with ``--phase``), so
each peak RSS belongs to one job (building, serving ours, serving LanceDB, ...) and no phase
warms another's caches; a last "paired" phase loads ours and LanceDB together and sends each query
through both back to back, so a shared machine's drifting load cannot decide the comparison.
Latency uses distinct real queries (none repeated, none used for warm-up),
so neither the query-vector LRU nor any result cache can answer a measured query. Relevance is
NDCG@10 on the test half of the Home Depot queries (``benchmarks.splits.homedepot_split``).
Results are printed as Markdown and saved to ``WORK/results.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: make `benchmarks.*` importable
    sys.path.insert(0, str(REPO))

from benchmarks.peers import BM25sPeer, LanceHybridPeer, dir_size_bytes  # noqa: E402
from benchmarks.splits import homedepot_split  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "homedepot"
K = 10
EVAL_DEPTH = 100  # ranked-list depth scored for NDCG (condensed lists need more than 10)
N_WARMUP = 20
STAGES = ("filter", "bm25", "encode_text", "text_ann", "fuse")
ANCHORS = {"bm25_titles_unjudged0": 0.375, "bm25_titles_condensed": 0.709, "rrf_minilm_condensed": 0.732}
TARGETS = {"p50_ms": 10.0, "p99_ms": 25.0, "speedup_vs_lancedb_p50": 2.0}


# ====================================================================== data
def read_queries(path: Path) -> list[tuple[str, str]]:
    """(qid, text) in file order."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            qid, _, text = line.rstrip("\n").partition("\t")
            if qid and text.strip():
                out.append((qid, text))
    return out


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    """qid -> {docid: grade} (TREC format: qid 0 docid grade)."""
    qrels: dict[str, dict[str, int]] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 4:
                qrels.setdefault(parts[0], {})[parts[2]] = int(parts[3])
    return qrels


def latency_query_sets(queries: Sequence[tuple[str, str]], n: int) -> dict[str, list[str]]:
    """Disjoint sets of distinct query texts (file order): warm-up, in-process, HTTP 1 and 8 clients.
    Sets are cut from one list of distinct texts, so no measured query repeats a warm-up one."""
    seen: set[str] = set()
    distinct = []
    for _, text in queries:
        key = " ".join(text.lower().split())
        if key not in seen:
            seen.add(key)
            distinct.append(text)
    sets: dict[str, list[str]] = {}
    pos = 0
    for name, size in (("warmup", N_WARMUP), ("inproc", n), ("http1", n), ("http8", n)):
        chunk = distinct[pos : pos + size]
        if len(chunk) < size:  # small query files: wrap around (reported as fewer distinct)
            chunk = (distinct * (size // max(1, len(distinct)) + 1))[pos % len(distinct) :][:size]
        sets[name] = chunk
        pos += size
    return sets


def test_queries(
    queries: Sequence[tuple[str, str]], qrels: dict[str, dict[str, int]], limit: int | None
) -> list[tuple[str, str]]:
    """Test-half queries that have at least one positive judgment (NDCG is undefined otherwise)."""
    out = [
        (qid, text)
        for qid, text in queries
        if homedepot_split(text) == "test" and any(g > 0 for g in qrels.get(qid, {}).values())
    ]
    return out[:limit] if limit else out


# ====================================================================== metrics
def ndcg_at_k(ranked: Sequence[str], judged: dict[str, int], k: int = K, *, condensed: bool = False) -> float:
    """NDCG@k with gain = grade and a log2(rank + 1) discount; the ideal DCG uses all judged grades
    of the query. Unjudged documents gain 0, or with ``condensed`` are removed from the ranking
    before the cut (Sakai's condensed list), so the score only reflects judged documents."""
    seen: set[str] = set()
    docs = []
    for d in ranked:  # a document counts once, at its best rank
        if d not in seen:
            seen.add(d)
            docs.append(d)
    if condensed:
        docs = [d for d in docs if d in judged]
    dcg = sum(judged.get(d, 0) / math.log2(i + 2) for i, d in enumerate(docs[:k]))
    ideal = sorted(judged.values(), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def _check_ndcg() -> None:
    """Hand-computed cases, run before every benchmark so a broken metric cannot go unnoticed."""
    j = {"a": 3, "b": 2, "c": 0}
    assert ndcg_at_k(["a", "b"], j) == 1.0
    ideal = 3 + 2 / math.log2(3)
    assert abs(ndcg_at_k(["b", "a"], j) - (2 + 3 / math.log2(3)) / ideal) < 1e-12
    assert abs(ndcg_at_k(["x", "a", "b"], j) - (3 / math.log2(3) + 2 / 2) / ideal) < 1e-12
    assert ndcg_at_k(["x", "a", "b"], j, condensed=True) == 1.0
    assert ndcg_at_k(["x", "y"], j) == 0.0
    assert ndcg_at_k(["c"], j) == 0.0


def score_runs(
    runs: dict[str, dict[str, list[str]]], qrels: dict[str, dict[str, int]]
) -> dict[str, dict[str, float]]:
    """system -> {"ndcg10": mean, "ndcg10_condensed": mean, "queries": n}."""
    out = {}
    for system, run in runs.items():
        plain = [ndcg_at_k(ranked, qrels[qid]) for qid, ranked in run.items()]
        cond = [ndcg_at_k(ranked, qrels[qid], condensed=True) for qid, ranked in run.items()]
        out[system] = {
            "ndcg10": float(np.mean(plain)) if plain else float("nan"),
            "ndcg10_condensed": float(np.mean(cond)) if cond else float("nan"),
            "queries": len(run),
        }
    return out


def pct(values: Iterable[float]) -> dict[str, float]:
    a = np.asarray(list(values), dtype=np.float64)
    if a.size == 0:
        return {"p50": float("nan"), "p95": float("nan"), "p99": float("nan"), "mean": float("nan"), "n": 0}
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return {
        "p50": float(p50),
        "p95": float(p95),
        "p99": float(p99),
        "mean": float(a.mean()),
        "n": int(a.size),
    }


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rss_now_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _proc_hwm_mb(pid: int) -> float:
    """Peak RSS (VmHWM) of another live process."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


# ====================================================================== phases (child processes)
def _settings(cfg: dict[str, Any], **overrides: Any) -> Any:
    from shopsearch.settings import load_settings

    return load_settings(None, index_dir=Path(cfg["index_dir"]), **overrides)


def _generation_dir(index_dir: Path) -> Path:
    from indexer.store import current_generation

    name = current_generation(index_dir)
    if name is None:
        raise SystemExit(f"no index at {index_dir}: the build phase failed")
    return index_dir / "generations" / name


def phase_build(cfg: dict[str, Any]) -> dict[str, Any]:
    """Build the index; ``cold`` empties the embedding cache first so every title is encoded."""
    from indexer.store import Encoders, build_index

    index_dir = Path(cfg["index_dir"])
    if cfg["cold"]:
        shutil.rmtree(index_dir, ignore_errors=True)
    settings = _settings(cfg)
    encoders = Encoders(settings)
    t = time.perf_counter()
    _ = encoders.text  # load the model outside the build timer (reported separately)
    model_load_s = time.perf_counter() - t
    result = build_index(
        [Path(cfg["catalog"])], index_dir, settings, progress=cfg["progress"], encoders=encoders
    )
    gen = result.path
    sizes = {
        "total": dir_size_bytes(gen),
        "items.jsonl": dir_size_bytes(gen / "items.jsonl"),
        "text (faiss + raw vectors)": dir_size_bytes(gen / "text"),
        "lexical (tantivy)": dir_size_bytes(gen / "lexical"),
    }
    return {
        "cold": cfg["cold"],
        "items": result.counts["items"],
        "seconds": result.seconds,
        "items_per_s": result.counts["items"] / result.seconds,
        "encoded": result.encoded,
        "model_load_s": model_load_s,
        "vector_index": _manifest(gen)["vector_indexes"],
        "size_bytes": sizes,
        "embcache_bytes": dir_size_bytes(index_dir / "embcache.sqlite"),
        "peak_rss_mb": peak_rss_mb(),
    }


def _manifest(gen: Path) -> dict[str, Any]:
    return json.loads((gen / "manifest.json").read_text(encoding="utf-8"))


class _RetrievalSpy:
    """Wraps ``Retriever.retrieve`` on one instance to keep the last Retrieval (timings, sources)."""

    def __init__(self, retriever: Any) -> None:
        self.last: Any = None
        self._orig = retriever.retrieve
        retriever.retrieve = self

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.last = self._orig(*args, **kwargs)
        return self.last


def _our_runs(
    pipeline: Any, spy: _RetrievalSpy, tests: Sequence[tuple[str, str]], systems: Sequence[str]
) -> tuple[dict[str, dict[str, list[str]]], list[float]]:
    """Top-EVAL_DEPTH rankings per system from one hybrid search per query: the hybrid list is the
    pipeline's order; BM25-only and vector-only are the sources' own rankings (each source
    contributes its full top-N to the fused candidates, so nothing is lost)."""
    from reranker.pipeline import SearchRequest

    runs: dict[str, dict[str, list[str]]] = {s: {} for s in systems}
    wall = []
    for qid, text in tests:
        t = time.perf_counter()
        resp = pipeline.search(SearchRequest(text=text, k=EVAL_DEPTH))
        wall.append((time.perf_counter() - t) * 1000)
        cands = spy.last.candidates
        if "hybrid" in runs:
            runs["hybrid"][qid] = [r.id for r in resp.results]
        for source, system in (("bm25", "bm25"), ("text", "vector")):
            if system in runs:
                ranked = sorted(
                    (c for c in cands if source in c.sources), key=lambda c: c.sources[source].rank
                )
                runs[system][qid] = [c.id for c in ranked[:EVAL_DEPTH]]
    return runs, wall


def _unseen_latency(cfg: dict[str, Any], tests: Sequence[Sequence[str]], wall: Sequence[float]) -> dict:
    """Latency percentiles of the relevance runs over the queries the process had not searched
    before (warm-up and latency queries are in the query-vector cache by then)."""
    seen = set(cfg["sets"]["warmup"]) | set(cfg["sets"]["inproc"])
    return pct(ms for (_, text), ms in zip(tests, wall, strict=True) if text not in seen)


def _timed_searches(pipeline: Any, spy: _RetrievalSpy, texts: Sequence[str]) -> dict[str, Any]:
    from reranker.pipeline import SearchRequest

    wall: list[float] = []
    search_only: list[float] = []
    other: list[float] = []
    stages: dict[str, list[float]] = {s: [] for s in STAGES}  # known stages first, then any new ones
    for text in texts:
        t = time.perf_counter()
        pipeline.search(SearchRequest(text=text, k=K))
        ms = (time.perf_counter() - t) * 1000
        timings = spy.last.timings_ms
        wall.append(ms)
        for s, v in timings.items():
            stages.setdefault(s, []).append(v)
        search_only.append(ms - timings.get("encode_text", 0.0))
        other.append(ms - sum(timings.values()))
    return {
        "total": pct(wall),
        "search_only": pct(search_only),
        "stages": {s: pct(v) for s, v in stages.items() if v},
        "outside_retrieval": pct(other),
    }


def phase_serve(cfg: dict[str, Any]) -> dict[str, Any]:
    """Ours in process: load, warm up, latency over distinct queries, then relevance."""
    from reranker.pipeline import SearchPipeline, SearchRequest
    from retriever.search import Retriever

    overrides = {"query_encoder": cfg["query_encoder"]} if cfg.get("query_encoder") else {}
    settings = _settings(cfg, **overrides)
    rss_start = _rss_now_mb()
    t = time.perf_counter()
    pipeline = SearchPipeline.open(Path(cfg["index_dir"]), settings)
    load_s = time.perf_counter() - t
    t = time.perf_counter()
    encoder = pipeline.index.encoders.text  # lazily loaded: the first query would pay this
    encoder_load_s = time.perf_counter() - t
    spy = _RetrievalSpy(pipeline.retriever)
    for text in cfg["sets"]["warmup"]:
        pipeline.search(SearchRequest(text=text, k=K))
    lat = _timed_searches(pipeline, spy, cfg["sets"]["inproc"])
    out: dict[str, Any] = {
        "load_s": load_s,
        "encoder_load_s": encoder_load_s,
        "query_backend": getattr(encoder, "query_backend", "?"),
        "fusion": settings.fusion,
        "source_weights": dict(settings.source_weights),
        "reranker": pipeline.reranker.name,
        "vector_index": pipeline.index.manifest.get("vector_indexes", {}),
        "latency": lat,
        "rss_start_mb": rss_start,
        "peak_rss_mb": peak_rss_mb(),  # before relevance runs: serving only
    }
    tests = [tuple(x) for x in cfg["tests"]]
    runs, wall = _our_runs(pipeline, spy, tests, cfg["systems"])
    out["latency_depth100"] = _unseen_latency(cfg, tests, wall)
    # Plain, unweighted RRF of BM25 and MiniLM on the same index (the anchor's configuration),
    # whatever fusion and weights the engine ships by default.
    if cfg.get("plain_rrf"):
        plain = _settings(
            cfg,
            fusion="rrf",
            source_weights={**settings.source_weights, "bm25": 1.0, "text": 1.0},
            **overrides,
        )
        other = SearchPipeline(pipeline.index, Retriever(pipeline.index, plain), pipeline.reranker)
        other_runs, _ = _our_runs(other, _RetrievalSpy(other.retriever), tests, ["hybrid"])
        runs["hybrid_rrf"] = other_runs["hybrid"]
    out["relevance"] = score_runs(runs, read_qrels(Path(cfg["qrels"])))
    top = {system: {qid: ids[:K] for qid, ids in run.items()} for system, run in runs.items()}
    Path(cfg["runs_out"]).write_text(json.dumps(top), encoding="utf-8")
    pipeline.close()
    return out


def _peer_inputs(index_dir: Path) -> tuple[list[str], list[str], np.ndarray]:
    """Ids, titles and text vectors of the items our index holds, vectors read from our index."""
    gen = _generation_dir(index_dir)
    ids, titles = [], []
    with open(gen / "items.jsonl", encoding="utf-8") as f:
        for line in f:
            item = json.loads(line)
            ids.append(item["id"])
            titles.append(item.get("title") or "")
    vectors = np.load(gen / "text" / "vectors.npy")
    labels = np.load(gen / "text" / "labels.npy")
    return [ids[int(r)] for r in labels], [titles[int(r)] for r in labels], vectors


def phase_lance_build(cfg: dict[str, Any]) -> dict[str, Any]:
    ids, titles, vectors = _peer_inputs(Path(cfg["index_dir"]))
    peer, build = LanceHybridPeer.build(Path(cfg["lance_dir"]), ids, titles, vectors)
    return {
        "items": len(ids),
        "seconds": build.seconds,
        "stages": build.stages,
        "items_per_s": len(ids) / build.seconds,
        "size_bytes": build.size_bytes,
        "index_type": peer.index_type,
        "peak_rss_mb": peak_rss_mb(),
    }


def _timed_peer(texts: Sequence[str], encode: Callable[[str], Any], search: Callable[..., Any]) -> dict:
    enc, srch, total = [], [], []
    for text in texts:
        t0 = time.perf_counter()
        q = encode(text)
        t1 = time.perf_counter()
        search(text, q)
        t2 = time.perf_counter()
        enc.append((t1 - t0) * 1000)
        srch.append((t2 - t1) * 1000)
        total.append((t2 - t0) * 1000)
    return {"total": pct(total), "search_only": pct(srch), "encode": pct(enc)}


def phase_lance_serve(cfg: dict[str, Any]) -> dict[str, Any]:
    """LanceDB hybrid, query encoded by our own query encoder (identical encoding cost)."""
    import lancedb  # noqa: F401 - imported before the clock, as our engine's modules are

    from indexer.store import Encoders

    settings = _settings(cfg)
    t = time.perf_counter()
    peer = LanceHybridPeer(Path(cfg["lance_dir"]))
    load_s = time.perf_counter() - t
    encoder = Encoders(settings).text
    for text in cfg["sets"]["warmup"]:
        peer.hybrid(text, encoder.encode_query(text), K)
    lat = _timed_peer(cfg["sets"]["inproc"], encoder.encode_query, lambda s, q: peer.hybrid(s, q, K))
    out: dict[str, Any] = {
        "load_s": load_s,
        "index_type": peer.index_type,
        "query_backend": getattr(encoder, "query_backend", "?"),
        "latency": lat,
        "peak_rss_mb": peak_rss_mb(),
    }
    run: dict[str, list[str]] = {}
    wall = []
    for qid, text in cfg["tests"]:
        t = time.perf_counter()
        run[qid] = peer.hybrid(text, encoder.encode_query(text), EVAL_DEPTH)
        wall.append((time.perf_counter() - t) * 1000)
    out["relevance"] = score_runs({"lancedb_hybrid": run}, read_qrels(Path(cfg["qrels"])))
    out["latency_depth100"] = _unseen_latency(cfg, cfg["tests"], wall)
    return out


def phase_bm25s(cfg: dict[str, Any]) -> dict[str, Any]:
    ids, titles, _ = _peer_inputs(Path(cfg["index_dir"]))
    peer = BM25sPeer(ids, titles)
    for text in cfg["sets"]["warmup"]:
        peer.search(text, K)
    lat = _timed_peer(cfg["sets"]["inproc"], lambda s: None, lambda s, q: peer.search(s, K))
    out: dict[str, Any] = {
        "build_s": peer.build_seconds,
        "items_per_s": len(ids) / peer.build_seconds,
        "latency": lat,
        "peak_rss_mb": peak_rss_mb(),
    }
    run = {qid: peer.search(text, EVAL_DEPTH) for qid, text in cfg["tests"]}
    out["relevance"] = score_runs({"bm25s": run}, read_qrels(Path(cfg["qrels"])))
    return out


def phase_paired(cfg: dict[str, Any]) -> dict[str, Any]:
    """Ours and LanceDB in one process, each query through both engines back to back (the order
    alternating per query), so both see the same machine load: on a shared machine, load that
    drifts between the separate phases can otherwise decide the comparison."""
    import lancedb  # noqa: F401 - imported before the clock

    from indexer.store import Encoders
    from reranker.pipeline import SearchPipeline, SearchRequest

    settings = _settings(cfg)
    pipeline = SearchPipeline.open(Path(cfg["index_dir"]), settings)
    peer = LanceHybridPeer(Path(cfg["lance_dir"]))
    lance_encoder = Encoders(settings).text  # its own instance and query cache: no shared hits

    def ours(text: str) -> tuple[float, float]:
        t = time.perf_counter()
        pipeline.search(SearchRequest(text=text, k=K))
        total = (time.perf_counter() - t) * 1000
        return total, total - spy.last.timings_ms.get("encode_text", 0.0)

    def lance(text: str) -> tuple[float, float]:
        t0 = time.perf_counter()
        q = lance_encoder.encode_query(text)
        t1 = time.perf_counter()
        peer.hybrid(text, q, K)
        t2 = time.perf_counter()
        return (t2 - t0) * 1000, (t2 - t1) * 1000

    spy = _RetrievalSpy(pipeline.retriever)
    for text in cfg["sets"]["warmup"]:
        ours(text)
        lance(text)
    res: dict[str, list[tuple[float, float]]] = {"ours": [], "lancedb": []}
    for i, text in enumerate(cfg["sets"]["inproc"]):
        order = (("ours", ours), ("lancedb", lance)) if i % 2 == 0 else (("lancedb", lance), ("ours", ours))
        for name, fn in order:
            res[name].append(fn(text))
    a, b = np.asarray(res["ours"]), np.asarray(res["lancedb"])
    return {
        name: {"total": pct(v[:, 0]), "search_only": pct(v[:, 1])}
        for name, v in (("ours", a), ("lancedb", b))
    } | {
        "per_query_speedup_median": float(np.median(b[:, 0] / a[:, 0])),
        "per_query_speedup_search_only_median": float(np.median(b[:, 1] / a[:, 1])),
    }


PHASES: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "build": phase_build,
    "serve": phase_serve,
    "lance_build": phase_lance_build,
    "lance_serve": phase_lance_serve,
    "bm25s": phase_bm25s,
    "paired": phase_paired,
}


def run_phase(name: str, cfg: dict[str, Any], work: Path, label: str) -> dict[str, Any]:
    """Run one phase in a fresh interpreter; its stderr (progress) passes through."""
    cfg_path = work / f"phase-{label}.cfg.json"
    out_path = work / f"phase-{label}.json"
    cfg_path.write_text(json.dumps(cfg), encoding="utf-8")
    out_path.unlink(missing_ok=True)
    print(f"[bench] {label} ...", file=sys.stderr, flush=True)
    t = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--phase", name, str(cfg_path), str(out_path)],
        cwd=REPO,
    )
    if proc.returncode != 0 or not out_path.exists():
        raise SystemExit(f"phase {label} failed (exit {proc.returncode}); see the output above")
    print(f"[bench] {label} done in {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
    return json.loads(out_path.read_text(encoding="utf-8"))


def top10_agreement(fast: Path, ref: Path) -> dict[str, dict[str, int]]:
    """Per system: queries scored, and queries whose top-10 ids (in order) differ between the two
    query encoders' runs."""
    a = json.loads(fast.read_text(encoding="utf-8"))
    b = json.loads(ref.read_text(encoding="utf-8"))
    out = {}
    for system in sorted(set(a) & set(b)):
        qids = set(a[system]) & set(b[system])
        out[system] = {"queries": len(qids), "differ": sum(a[system][q] != b[system][q] for q in qids)}
    return out


# ====================================================================== HTTP
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _http_load(base: str, texts: Sequence[str], clients: int) -> dict[str, Any]:
    """``clients`` threads, each with its own connection, draining one shared list of queries."""
    import httpx

    lock = threading.Lock()
    queue = list(reversed(texts))
    lat: list[float] = []
    took: list[float] = []  # the server's own pipeline time (SearchResponse.took_ms)
    errors: list[str] = []

    def worker() -> None:
        with httpx.Client(base_url=base, timeout=60) as client:
            while True:
                with lock:
                    if not queue:
                        return
                    text = queue.pop()
                t = time.perf_counter()
                r = client.post("/search", json={"query": text, "k": K})
                ms = (time.perf_counter() - t) * 1000
                body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
                with lock:
                    if r.status_code == 200 and "results" in body:
                        lat.append(ms)
                        took.append(float(body.get("took_ms", float("nan"))))
                    else:
                        errors.append(f"{r.status_code}: {r.text[:200]}")

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t0
    return {
        "clients": clients,
        "requests": len(texts),
        "errors": len(errors),
        "first_errors": errors[:3],
        "latency": pct(lat),
        "server_took_ms": pct(took),
        "req_per_s": len(lat) / wall,
        "wall_s": wall,
    }


def bench_http(index_dir: Path, sets: dict[str, list[str]], work: Path) -> dict[str, Any]:
    """Start ``shopsearch serve`` on a free loopback port and load it with 1 and 8 clients."""
    import httpx

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = work / "serve.log"
    cmd = [
        sys.executable,
        "-m",
        "api.cli",
        "serve",
        "--index",
        str(index_dir),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    print(f"[bench] http: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    with open(log_path, "w") as log:
        server = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        t0 = time.perf_counter()
        while True:
            if server.poll() is not None:
                tail = log_path.read_text(errors="replace")[-2000:]
                raise SystemExit(f"shopsearch serve exited with {server.returncode}:\n{tail}")
            try:
                if httpx.get(base + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.perf_counter() - t0 > 300:
                raise SystemExit(f"shopsearch serve did not answer /health within 300 s (log: {log_path})")
            time.sleep(0.25)
        startup_s = time.perf_counter() - t0
        _http_load(base, sets["warmup"], 1)
        one = _http_load(base, sets["http1"], 1)
        eight = _http_load(base, sets["http8"], 8)
        return {
            "startup_s": startup_s,
            "c1": one,
            "c8": eight,
            "server_peak_rss_mb": _proc_hwm_mb(server.pid),
        }
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


# ====================================================================== report
def _mb(b: float) -> str:
    return f"{b / 1e6:.1f}"


def _lat(p: dict[str, float]) -> str:
    return f"{p['p50']:.2f} / {p['p95']:.2f} / {p['p99']:.2f}"


def render(res: dict[str, Any]) -> str:
    ours, torch_, lance, bm = res["serve"], res["serve_torch"], res["lance_serve"], res["bm25s"]
    warm, cold, lb = res["build_warm"], res.get("build_cold"), res["lance_build"]
    m = res["meta"]
    lines = [
        f"Home Depot: {warm['items']:,} items, {m['n_latency']} distinct queries per latency run "
        f"(+{N_WARMUP} warm-up), k={K}; relevance on {m['n_test']} test-half queries. "
        f"Machine: {m['machine']}, load avg at end {m['load_avg_end']:.1f}. Date: {m['date']}.",
        "",
        "| metric | ours (shopsearch) | LanceDB hybrid | bm25s |",
        "| --- | --- | --- | --- |",
    ]
    row = lines.append
    if cold:
        row(
            f"| indexing, cold (empty embedding cache; encodes every title) | "
            f"{cold['items_per_s']:,.0f} items/s ({cold['seconds']:.1f} s; "
            f"+{cold['model_load_s']:.1f} s model load) | n/a (takes our vectors) | n/a |"
        )
    else:
        row("| indexing, cold | not run (--no-cold) | | |")
    missed = warm["encoded"].get("text", 0)
    warm_label = (
        "warm rebuild (embedding cache hit, encoding free)"
        if missed == 0
        else f"rebuild meant warm, but the embedding cache MISSED {missed} titles (re-encoded)"
    )
    row(
        f"| indexing, {warm_label} | {warm['items_per_s']:,.0f} items/s "
        f"({warm['seconds']:.1f} s, encoded {warm['encoded'].get('text', 0)}) | "
        f"{lb['items_per_s']:,.0f} items/s "
        f"({lb['seconds']:.1f} s: {', '.join(f'{k} {v:.1f}' for k, v in lb['stages'].items())}) | "
        f"{bm['items_per_s']:,.0f} items/s ({bm['build_s']:.1f} s) |"
    )
    sz = warm["size_bytes"]
    row(
        f"| index size on disk (MB) | {_mb(sz['total'])} (items {_mb(sz['items.jsonl'])}, vectors+FAISS "
        f"{_mb(sz['text (faiss + raw vectors)'])}, tantivy {_mb(sz['lexical (tantivy)'])}; + embedding cache "
        f"{_mb(warm['embcache_bytes'])}) | {_mb(lb['size_bytes'])} ({lb['index_type']} + FTS) | in memory |"
    )
    row(
        f"| load time (s) | {ours['load_s']:.2f} (LiveIndex open; + {ours['encoder_load_s']:.2f} s query "
        f"encoder) | {lance['load_s']:.2f} (open table) | - |"
    )
    build_rss = (
        f"{cold['peak_rss_mb']:.0f} cold / {warm['peak_rss_mb']:.0f} warm"
        if cold
        else (f"{warm['peak_rss_mb']:.0f} warm")
    )
    row(f"| peak RSS building (MB) | {build_rss} | {lb['peak_rss_mb']:.0f} | - |")
    http = res.get("http")
    srv = f"; HTTP server {http['server_peak_rss_mb']:.0f}" if http else ""
    row(
        f"| peak RSS serving (MB) | {ours['peak_rss_mb']:.0f} in process{srv} | {lance['peak_rss_mb']:.0f} "
        f"(incl. the same query encoder) | {bm['peak_rss_mb']:.0f} |"
    )
    row(
        f"| hybrid latency p50 / p95 / p99 (ms), query encoding included | "
        f"**{_lat(ours['latency']['total'])}** "
        f"| **{_lat(lance['latency']['total'])}** | {_lat(bm['latency']['total'])} (lexical only) |"
    )
    row(
        f"| search only, encoding excluded (ms) | {_lat(ours['latency']['search_only'])} | "
        f"{_lat(lance['latency']['search_only'])} | {_lat(bm['latency']['search_only'])} |"
    )
    enc = ours["latency"]["stages"].get("encode_text")
    row(
        f"| query encoding (ms, {ours['query_backend']}) | {_lat(enc) if enc else '-'} | "
        f"{_lat(lance['latency']['encode'])} (same encoder) | - |"
    )
    row(
        f"| latency at depth 100 (relevance runs), p50 / p95 / p99 | {_lat(ours['latency_depth100'])} | "
        f"{_lat(lance['latency_depth100'])} | - |"
    )
    paired = res.get("paired")
    if paired:
        po, pl = paired["ours"], paired["lancedb"]
        row(
            f"| hybrid latency, paired in one process (engines alternate per query), encoding included | "
            f"{_lat(po['total'])} | {_lat(pl['total'])} | - |"
        )
        row(
            f"| paired, search only (encoding excluded) | {_lat(po['search_only'])} | "
            f"{_lat(pl['search_only'])} | - |"
        )
    if http:
        for key, name in (("c1", "1 client"), ("c8", "8 concurrent clients")):
            h = http[key]
            err = f", {h['errors']} errors" if h["errors"] else ""
            row(
                f"| HTTP POST /search, {name} ({h['requests']} req): p50 / p99 ms, throughput | "
                f"{h['latency']['p50']:.2f} / {h['latency']['p99']:.2f} ms, "
                f"{h['req_per_s']:.0f} req/s{err} (server-side took_ms p50 {h['server_took_ms']['p50']:.2f}) "
                "| - | - |"
            )
    rel = {**ours["relevance"], **lance["relevance"], **bm["relevance"]}
    fusion = f"{ours['fusion']}, weights {ours['source_weights']}" if ours["fusion"] != "rrf" else "rrf"
    systems = [
        ("bm25", "ours BM25 only (tantivy)", "0.375 / 0.709 (BM25 titles)"),
        ("vector", "ours vector only (MiniLM, HNSW)", ""),
        ("hybrid", f"ours hybrid, default fusion ({fusion}; re-ranker {ours['reranker']})", ""),
        ("hybrid_rrf", "ours hybrid, plain RRF (k=60, equal weights)", "- / 0.732 (RRF BM25+MiniLM)"),
        ("lancedb_hybrid", f"LanceDB hybrid (FTS + {lance['index_type']}, RRFReranker)", ""),
        ("bm25s", "bm25s (titles, Snowball stemmer)", ""),
    ]
    lines += [
        "",
        f"Relevance, NDCG@10 on {m['n_test']} Home Depot test-half queries (top-{EVAL_DEPTH} lists; "
        "condensed = unjudged results removed before the cut):",
        "",
        "| system | NDCG@10 (unjudged = 0) | NDCG@10 condensed | anchor (unjudged = 0 / condensed) |",
        "| --- | --- | --- | --- |",
    ]
    for key, name, anchor in systems:
        if key in rel:
            r = rel[key]
            row(f"| {name} | {r['ndcg10']:.3f} | {r['ndcg10_condensed']:.3f} | {anchor} |")

    lines += [
        "",
        "Per-stage breakdown, ours (ms, p50 / p95 / p99 / mean):",
        "",
        "| stage | p50 | p95 | p99 | mean |",
        "| --- | --- | --- | --- | --- |",
    ]
    stages = dict(ours["latency"]["stages"])
    stages["outside retrieval (rerank, facets, paging)"] = ours["latency"]["outside_retrieval"]
    stages["total"] = ours["latency"]["total"]
    for s, p in stages.items():
        row(f"| {s} | {p['p50']:.3f} | {p['p95']:.3f} | {p['p99']:.3f} | {p['mean']:.3f} |")

    tr = torch_["relevance"]
    lines += [
        "",
        "Query encoder: fast (ONNX Runtime) vs reference (sentence-transformers on torch):",
        "",
        "| query encoder | encode p50 / p95 / p99 (ms) | hybrid p50 / p95 / p99 (ms) | "
        "vector NDCG@10 (unj.=0 / cond.) | hybrid NDCG@10 (unj.=0 / cond.) | top-10 differs from ONNX |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    agree = res.get("encoder_agreement", {})
    differ = "; ".join(f"{s} {a['differ']} of {a['queries']} queries" for s, a in agree.items()) or "-"
    for name, srv_res, r, d in (
        (ours["query_backend"], ours, rel, "-"),
        (torch_["query_backend"], torch_, tr, differ),
    ):
        e = srv_res["latency"]["stages"].get("encode_text")
        row(
            f"| {name} (latency n={srv_res['latency']['total']['n']}) | {_lat(e) if e else '-'} | "
            f"{_lat(srv_res['latency']['total'])} | "
            f"{r['vector']['ndcg10']:.4f} / {r['vector']['ndcg10_condensed']:.4f} | "
            f"{r['hybrid']['ndcg10']:.4f} / {r['hybrid']['ndcg10_condensed']:.4f} | {d} |"
        )

    p50, p99 = ours["latency"]["total"]["p50"], ours["latency"]["total"]["p99"]
    speed = lance["latency"]["total"]["p50"] / p50
    speed_s = lance["latency"]["search_only"]["p50"] / ours["latency"]["search_only"]["p50"]
    ok = lambda c: "met" if c else "MISSED"  # noqa: E731
    want = TARGETS["speedup_vs_lancedb_p50"]
    lines += [
        "",
        "Targets (issue) and anchors:",
        "",
        f"- hybrid p50 <= {TARGETS['p50_ms']:.0f} ms in process, encoding included: {p50:.2f} ms -> "
        f"{ok(p50 <= TARGETS['p50_ms'])}",
        f"- hybrid p99 <= {TARGETS['p99_ms']:.0f} ms: {p99:.2f} ms -> {ok(p99 <= TARGETS['p99_ms'])}",
        f"- >= {want:.0f}x faster than LanceDB p50 (same run, same encoder), separate processes: "
        f"{speed:.2f}x -> {ok(speed >= want)} (search only, encoding excluded: {speed_s:.2f}x)",
    ]
    if paired:
        ps = paired["lancedb"]["total"]["p50"] / paired["ours"]["total"]["p50"]
        pss = paired["lancedb"]["search_only"]["p50"] / paired["ours"]["search_only"]["p50"]
        lines.append(
            f"- same, paired in one process: p50 ratio {ps:.2f}x -> {ok(ps >= want)}; per-query median "
            f"{paired['per_query_speedup_median']:.2f}x (search only: p50 ratio {pss:.2f}x, per-query median "
            f"{paired['per_query_speedup_search_only_median']:.2f}x)"
        )
    lines += [
        f"- anchor BM25 titles NDCG@10 {ANCHORS['bm25_titles_unjudged0']} (unjudged=0) / "
        f"{ANCHORS['bm25_titles_condensed']} (condensed): ours {rel['bm25']['ndcg10']:.3f} / "
        f"{rel['bm25']['ndcg10_condensed']:.3f}",
        f"- anchor RRF BM25+MiniLM {ANCHORS['rrf_minilm_condensed']} condensed: ours hybrid RRF "
        f"{rel.get('hybrid_rrf', rel['hybrid'])['ndcg10_condensed']:.3f}, default fusion "
        f"{rel['hybrid']['ndcg10_condensed']:.3f}",
    ]
    return "\n".join(lines)


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    load = os.getloadavg()[0]
    return (
        f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, Linux {platform.release()}, Python "
        f"{platform.python_version()}, load avg at start {load:.1f}"
    )


# ====================================================================== main
def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--catalog", type=Path, default=DATA / "catalog.jsonl")
    ap.add_argument("--queries-file", type=Path, default=DATA / "queries.tsv")
    ap.add_argument("--qrels", type=Path, default=DATA / "qrels.txt")
    ap.add_argument("--limit", type=int, default=None, help="Use the first N catalog lines only.")
    ap.add_argument("--queries", type=int, default=1000, help="Distinct queries per latency run.")
    ap.add_argument("--eval-queries", type=int, default=None, help="Cap on test-half queries for NDCG.")
    ap.add_argument("--work", type=Path, default=REPO / ".bench")
    ap.add_argument("--no-cold", action="store_true", help="Skip the cold build (keep the embedding cache).")
    ap.add_argument("--no-http", action="store_true", help="Skip the HTTP measurements.")
    ap.add_argument("--phase", nargs=3, metavar=("NAME", "CFG", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.phase:  # child process
        name, cfg_path, out_path = args.phase
        result = PHASES[name](json.loads(Path(cfg_path).read_text(encoding="utf-8")))
        Path(out_path).write_text(json.dumps(result, indent=1), encoding="utf-8")
        return

    _check_ndcg()
    for p in (args.catalog, args.queries_file, args.qrels):
        if not p.is_file():
            raise SystemExit(f"{p} not found (the shared Home Depot data lives in ../shared/data/homedepot)")
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    catalog = args.catalog.resolve()
    suffix = ""
    if args.limit:
        suffix = f"-{args.limit}"
        catalog = work / f"catalog{suffix}.jsonl"
        with open(args.catalog, encoding="utf-8") as src, open(catalog, "w", encoding="utf-8") as dst:
            for i, line in enumerate(src):
                if i >= args.limit:
                    break
                dst.write(line)
    index_dir = work / f"index{suffix}"
    queries = read_queries(args.queries_file)
    qrels = read_qrels(args.qrels)
    sets = latency_query_sets(queries, args.queries)
    tests = test_queries(queries, qrels, args.eval_queries)
    base = {
        "index_dir": str(index_dir),
        "catalog": str(catalog),
        "qrels": str(args.qrels.resolve()),
        "sets": sets,
        "tests": tests,
        "progress": sys.stderr.isatty(),
        "lance_dir": str(work / f"lancedb{suffix}"),
    }
    started = datetime.now(UTC).isoformat(timespec="seconds")
    machine = _machine()
    res: dict[str, Any] = {}
    if not args.no_cold or not index_dir.exists():
        res["build_cold"] = run_phase("build", {**base, "cold": True}, work, "build_cold")
    res["build_warm"] = run_phase("build", {**base, "cold": False}, work, "build_warm")
    runs_fast, runs_ref = work / "runs-serve.json", work / "runs-serve_torch.json"
    res["serve"] = run_phase(
        "serve",
        {
            **base,
            "systems": ["hybrid", "bm25", "vector"],
            "plain_rrf": True,
            "runs_out": str(runs_fast),
        },
        work,
        "serve",
    )
    res["serve_torch"] = run_phase(
        "serve",
        {
            **base,
            # the reference encoder is slow: a latency sample of 300 queries is enough to show it
            "sets": {**sets, "inproc": sets["inproc"][:300]},
            "query_encoder": "torch",
            "systems": ["hybrid", "vector"],
            "runs_out": str(runs_ref),
        },
        work,
        "serve_torch",
    )
    res["encoder_agreement"] = top10_agreement(runs_fast, runs_ref)
    res["lance_build"] = run_phase("lance_build", base, work, "lance_build")
    res["lance_serve"] = run_phase("lance_serve", base, work, "lance_serve")
    res["bm25s"] = run_phase("bm25s", base, work, "bm25s")
    res["paired"] = run_phase("paired", base, work, "paired")
    if not args.no_http:
        res["http"] = bench_http(index_dir, sets, work)
    res["meta"] = {
        "date": started,
        "machine": machine,
        "n_latency": len(sets["inproc"]),
        "n_test": len(tests),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "load_avg_end": os.getloadavg()[0],
    }
    (work / "results.json").write_text(json.dumps(res, indent=1), encoding="utf-8")
    print(render(res))


if __name__ == "__main__":
    main()
