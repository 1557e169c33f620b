"""Run every retrieval configuration over a query set and score it against graded judgments.

One retrieval per query serves every run: the retriever returns fused candidates that remember
each source's rank and score, so each source's own list (``bm25``, ``vector``, ...) and each
fusion of those lists (``rrf``, ``weighted``) is rebuilt from it with the retriever's own fusion
functions, and ``full`` passes the same retrieval through the re-ranker. The configured fusion is
therefore exactly what the search API returns (a test checks it).

``candidates="judged"`` is the re-rank-only mode of Amazon ESCI task 1: each query ranks only its
judged products that are in the index (BM25 from the lexical engine with a deep cut, cosine from
the stored vectors), so unjudged documents play no part.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from evaluation.metrics import CURVE_KS, evaluate_run, metric_names, recall_curve
from evaluation.perturb import PERTURBATIONS, perturb
from evaluation.qrels import Qrels, Run, read_image_queries, read_qrels, read_queries
from evaluation.significance import compare_to_baseline
from shopsearch.errors import ConfigError, InvalidQueryError, ShopSearchError

# run name -> retriever source name
SOURCE_RUNS: dict[str, str] = {
    "bm25": "bm25",
    "vector": "text",
    "text_image": "text_image",
    "image": "image",
    "cf": "cf",
}
FUSION_RUNS: tuple[str, ...] = ("rrf", "weighted")
# "hybrid" is the configured fusion over every source; "full" adds the re-ranker
RUN_NAMES: tuple[str, ...] = (*SOURCE_RUNS, *FUSION_RUNS, "hybrid", "full")
CANDIDATE_MODES: tuple[str, ...] = ("retrieved", "judged")
# the order in which the retriever builds (and fuses) its source lists
SOURCE_ORDER: tuple[str, ...] = ("bm25", "text", "text_image", "image", "cf")


@dataclass(frozen=True)
class EvalConfig:
    runs: Sequence[str] | None = None  # None: every run the index supports
    k: int = 10
    depth: int = 100
    candidates: str = "retrieved"
    perturb: Sequence[str] = ()
    rel_threshold: float = 0.0
    baseline: str | None = None  # None: the best single-source run on ndcg@k
    seed: int = 0
    n_resamples: int = 10_000
    batch_size: int = 64
    progress: bool = True

    def __post_init__(self) -> None:
        if self.k < 1 or self.depth < self.k:
            raise ConfigError(f"need 1 <= k <= depth, got k={self.k}, depth={self.depth}")
        if self.candidates not in CANDIDATE_MODES:
            raise ConfigError(
                f"--candidates must be one of {', '.join(CANDIDATE_MODES)}, got {self.candidates!r}"
            )
        bad = [p for p in self.perturb if p not in PERTURBATIONS]
        if bad:
            raise ConfigError(f"unknown perturbation(s) {', '.join(bad)} (known: {', '.join(PERTURBATIONS)})")
        if self.n_resamples < 1:
            raise ConfigError("n_resamples must be at least 1")


@dataclass
class QuerySet:
    """The queries that can be scored, and the ones that cannot (with the reason)."""

    texts: dict[str, str]
    images: dict[str, Path]
    qrels: Qrels
    qids: list[str]
    skipped: dict[str, list[str]] = field(default_factory=dict)


def load_query_set(
    queries: Path | None,
    qrels: Path,
    image_queries: Path | None = None,
    *,
    rel_threshold: float = 0.0,
) -> QuerySet:
    """Read the files and keep the queries that have judgments with at least one relevant
    document; the others are listed in ``skipped`` (``not_in_qrels``, ``no_relevant``), as are
    judged query ids that no query file names (``qrels_without_query``)."""
    if queries is None and image_queries is None:
        raise ConfigError("give a queries file (--queries) and/or an image queries file (--image-queries)")
    judgments = read_qrels(qrels)
    texts = read_queries(queries) if queries is not None else {}
    images = read_image_queries(image_queries) if image_queries is not None else {}
    order = list(dict.fromkeys([*texts, *images]))
    skipped: dict[str, list[str]] = {"not_in_qrels": [], "no_relevant": [], "qrels_without_query": []}
    qids = []
    for q in order:
        if q not in judgments:
            skipped["not_in_qrels"].append(q)
        elif not any(g > rel_threshold for g in judgments[q].values()):
            skipped["no_relevant"].append(q)
        else:
            qids.append(q)
    skipped["qrels_without_query"] = [q for q in judgments if q not in texts and q not in images]
    if not qids:
        raise InvalidQueryError(
            f"no query can be scored: {len(skipped['not_in_qrels'])} query ids have no judgments in "
            f"{qrels} and {len(skipped['no_relevant'])} have no relevant document"
        )
    return QuerySet(texts, images, judgments, qids, skipped)


@dataclass
class EvalResult:
    config: EvalConfig
    queries: QuerySet
    rankings: dict[str, Run]  # run -> qid -> [(docid, score)] best first
    summary: dict[str, dict[str, float]]  # run -> metric -> mean
    per_query: dict[str, dict[str, dict[str, float]]]  # run -> qid -> metric -> value
    curves: dict[str, list[float]]  # run -> mean recall at CURVE_KS
    baseline: str
    significance: dict[str, dict[str, dict[str, float]]]  # metric -> run -> stats
    perturbation: dict[str, dict[str, Any]]  # kind -> {"changed": n, "runs": {run: {...}}}
    meta: dict[str, Any]
    title_of: Callable[[str], str | None] = lambda _doc: None
    external: tuple[str, ...] = ()

    @property
    def run_names(self) -> list[str]:
        return list(self.rankings)

    def to_json(self, *, digits: int = 6) -> dict[str, Any]:
        """The ``metrics.json`` document: stable keys ``runs.<name>.<metric>``."""

        def r(x: float) -> float:
            return round(float(x), digits)

        return {
            "meta": self.meta,
            "metrics": metric_names(self.config.k, self.config.depth),
            "baseline": self.baseline,
            "runs": {
                name: {
                    **{m: r(v) for m, v in self.summary[name].items()},
                    "queries": len(self.queries.qids),
                    "external": name in self.external,
                }
                for name in self.rankings
            },
            "recall_curve": {
                "k": list(CURVE_KS),
                "runs": {n: [r(v) for v in c] for n, c in self.curves.items()},
            },
            "significance": {
                "baseline": self.baseline,
                "n_resamples": self.config.n_resamples,
                "seed": self.config.seed,
                "tests": {
                    metric: {run: {k: r(v) for k, v in s.items()} for run, s in tests.items()}
                    for metric, tests in self.significance.items()
                },
            },
            "perturbation": self.perturbation,
            "skipped": self.queries.skipped,
            "per_query": {
                name: {q: {m: r(v) for m, v in vals.items()} for q, vals in pq.items()}
                for name, pq in self.per_query.items()
            },
        }


# ====================================================================== ranking
def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class Ranker:
    """Produces every engine run's rankings for a set of queries over one open index."""

    def __init__(self, pipeline: Any, config: EvalConfig) -> None:
        self.pipeline = pipeline
        self.config = config
        self.retriever = pipeline.retriever
        self.index = pipeline.index
        self.settings = pipeline.retriever.settings
        self._hook = "query_vectors" in inspect.signature(self.retriever.retrieve).parameters

    # ----------------------------------------------------------------- which runs
    def sources(self, with_images: bool) -> list[str]:
        """Retriever sources this index and query set can feed (weight > 0 in the settings)."""
        vectors = self.index.vectors
        weights = self.settings.source_weights
        out = ["bm25"]
        if "text" in vectors:
            out.append("text")
        if self._clip() and "image" in vectors:
            out.append("text_image")
        if with_images and ("image" in vectors or "video" in vectors):
            out.append("image")
        if getattr(self.index, "cf", None) is not None:
            out.append("cf")
        return [s for s in out if weights.get(s, 1.0) > 0]

    def available_runs(self, with_images: bool) -> list[str]:
        srcs = set(self.sources(with_images))
        single = [name for name, s in SOURCE_RUNS.items() if s in srcs]
        return [*single, *FUSION_RUNS, "full"]

    def _clip(self) -> bool:
        return self.settings.image_model.startswith("open_clip")

    # ----------------------------------------------------------------- query vectors
    def query_vectors(
        self,
        qids: Sequence[str],
        texts: Mapping[str, str | None],
        images: Mapping[str, Path],
        sources: set[str],
    ) -> dict[str, dict[str, np.ndarray]]:
        """Batch-encode every query once: qid -> source -> vector."""
        from indexer.media import load_image

        enc = self.index.encoders
        out: dict[str, dict[str, np.ndarray]] = {q: {} for q in qids}
        with_text = [q for q in qids if texts.get(q)]
        clean = {q: self.searched_text(texts[q]) for q in with_text}  # as the retriever searches it
        bs = self.config.batch_size
        if "text" in sources and with_text:
            vecs = enc.text.encode(
                [clean[q] for q in with_text], batch_size=bs, progress=self.config.progress
            )
            for q, v in zip(with_text, vecs, strict=True):
                out[q]["text"] = v
        if "text_image" in sources and with_text:
            for chunk in _chunks(with_text, bs):
                for q, v in zip(chunk, enc.image.encode_text([clean[q] for q in chunk]), strict=True):
                    out[q]["text_image"] = v
        with_image = [q for q in qids if q in images]
        if "image" in sources and with_image:
            for chunk in _chunks(with_image, bs):
                pics = [load_image(images[q], max_pixels=self.settings.max_image_pixels) for q in chunk]
                for q, v in zip(chunk, enc.image.encode(pics, batch_size=bs), strict=True):
                    out[q]["image"] = v
        return out

    def searched_text(self, text: str) -> str:
        """The text the retriever searches for ``text`` (whitespace collapsed, spelling corrected
        when the retriever does that), so batch-encoded vectors match what it would encode."""
        query_text = getattr(self.retriever, "query_text", None)
        return (query_text(text) if query_text else None) or " ".join(text.split())

    # ----------------------------------------------------------------- ranking
    def rank(
        self,
        qids: Sequence[str],
        texts: Mapping[str, str | None],
        images: Mapping[str, Path],
        qrels: Qrels,
        runs: Sequence[str],
        *,
        desc: str = "queries",
    ) -> tuple[dict[str, Run], dict[str, str]]:
        """run -> qid -> [(docid, score)], and qid -> error for queries the engine refused."""
        from indexer.media import load_image

        sources = set(self.sources(bool(images)))
        judged = self.config.candidates == "judged"
        qvecs: dict[str, dict[str, np.ndarray]] = {}
        if judged or self._hook:
            qvecs = self.query_vectors(qids, texts, images, sources)
        rankings: dict[str, Run] = {name: {} for name in runs}
        errors: dict[str, str] = {}
        for q in tqdm(qids, desc=desc, disable=not self.config.progress, unit="q"):
            text = texts.get(q) or None
            try:
                if judged:
                    searched = self.searched_text(text) if text else None
                    retrieval = self._judged_retrieval(q, searched, qvecs[q], qrels[q], sources)
                else:
                    image = None
                    if q in images and "image" in sources:
                        image = load_image(images[q], max_pixels=self.settings.max_image_pixels)
                    kwargs: dict[str, Any] = {"query_vectors": qvecs[q]} if self._hook else {}
                    retrieval = self.retriever.retrieve(text, image, depth=self.config.depth, **kwargs)
            except ShopSearchError as exc:
                errors[q] = exc.message
                for name in runs:
                    rankings[name][q] = []
                continue
            for name, ranked in self._runs_from(retrieval, runs).items():
                if judged:  # every judged product is ranked: those a source did not score go last
                    have = {d for d, _ in ranked}
                    floor = min((s for _, s in ranked), default=0.0)
                    ranked = ranked + sorted((c.id, floor) for c in retrieval.candidates if c.id not in have)
                rankings[name][q] = ranked[: self.config.depth]
        return rankings, errors

    def _runs_from(self, retrieval: Any, runs: Sequence[str]) -> dict[str, list[tuple[str, float]]]:
        from retriever.fusion import FUSERS, fusion_head

        cands = retrieval.candidates
        lists = source_lists(cands)
        head = fusion_head(lists, max(self.config.depth, self.settings.candidates))
        weights = {s: self.settings.source_weights.get(s, 1.0) for s in lists}
        out: dict[str, list[tuple[str, float]]] = {}
        for name in runs:
            if name in SOURCE_RUNS:
                out[name] = lists.get(SOURCE_RUNS[name], [])
            elif name in FUSION_RUNS or name == "hybrid":
                method = self.settings.fusion if name == "hybrid" else name
                kwargs = {"k": self.settings.rrf_k} if method == "rrf" else {}
                fused = FUSERS[method](head, weights, **kwargs)
                for lst in lists.values():  # deeper BM25 hits: in the pool, no share of the score
                    for doc, _ in lst:
                        fused.setdefault(doc, 0.0)
                out[name] = sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))
            elif name == "full":
                out[name] = [(c.id, float(c.score)) for c in self.pipeline.reranker.rerank(retrieval)]
        return out

    def _judged_retrieval(
        self,
        qid: str,
        text: str | None,
        qvec: Mapping[str, np.ndarray],
        judgments: Mapping[str, float],
        sources: set[str],
    ) -> Any:
        """A Retrieval over exactly the query's judged, indexed products."""
        from retriever.fusion import FUSERS
        from retriever.search import Candidate, Retrieval, SourceHit

        table, vectors, lexical = self.index.table, self.index.vectors, self.index.lexical
        rows = {}
        for doc in judgments:
            row = table.id_to_row.get(doc)
            if row is not None and table.is_live(row):
                rows[row] = doc
        lists: dict[str, list[tuple[int, float]]] = {}
        if text and "bm25" in sources:
            hits = lexical.search(text, max(1, lexical.count()))
            ids = set(rows.values())
            lists["bm25"] = [(table.id_to_row[h.id], float(h.score)) for h in hits if h.id in ids]
        for source, modalities in (
            ("text", ("text",)),
            ("text_image", ("image",)),
            ("image", ("image", "video")),
        ):
            if source not in sources or source not in qvec:
                continue
            best: dict[int, float] = {}
            for modality in modalities:
                index = vectors.get(modality)
                if index is None:
                    continue
                labels = np.fromiter(rows, dtype=np.int64, count=len(rows))
                labels = labels[index.contains(labels)] if len(labels) else labels
                if len(labels):
                    sims = index.vectors_for(labels) @ qvec[source].astype(np.float32)
                    for lab, s in zip(labels.tolist(), sims.tolist(), strict=True):
                        best[lab] = max(s, best.get(lab, -np.inf))
            lists[source] = sorted(best.items(), key=lambda kv: (-kv[1], rows[kv[0]]))
        fusion = self.settings.fusion
        weights = {s: self.settings.source_weights.get(s, 1.0) for s in lists}
        fused = FUSERS[fusion](lists, weights, **({"k": self.settings.rrf_k} if fusion == "rrf" else {}))
        cands: dict[int, Candidate] = {}
        for row, doc in rows.items():
            cands[row] = Candidate(row=row, id=doc, score=float(fused.get(row, 0.0)))
        for source, ranked in lists.items():
            for rank, (row, score) in enumerate(ranked, 1):
                cands[row].sources[source] = SourceHit(rank=rank, score=score)
        ordered = sorted(cands.values(), key=lambda c: (-c.score, c.id))
        return Retrieval(ordered, text, {}, dict(qvec))


def source_lists(candidates: Sequence[Any]) -> dict[str, list[tuple[str, float]]]:
    """Each source's own ranked list, rebuilt from fused candidates' per-source hits. Candidates
    a source did not return are absent from its list. Sources come in the retriever's order, so
    fusing these lists adds the same floats in the same order as the retriever does."""
    per: dict[str, list[tuple[int, str, float]]] = {}
    for c in candidates:
        for source, hit in c.sources.items():
            per.setdefault(source, []).append((hit.rank, c.id, float(hit.score)))
    order = {s: i for i, s in enumerate(SOURCE_ORDER)}
    return {
        s: [(doc, score) for _, doc, score in sorted(per[s])]
        for s in sorted(per, key=lambda s: (order.get(s, len(order)), s))
    }


# ====================================================================== evaluation
def resolve_runs(
    requested: Sequence[str] | None, available: Sequence[str], external: Sequence[str]
) -> list[str]:
    """Validate run names against what the engine and this index can produce."""
    if requested is None:
        return list(available)
    runs = []
    for name in requested:
        if name not in RUN_NAMES:
            raise ConfigError(f"unknown run {name!r}: choose from {', '.join(RUN_NAMES)}")
        if name in SOURCE_RUNS and name not in available:
            raise ConfigError(
                f"run {name!r} needs the {SOURCE_RUNS[name]!r} source, which this index or query set does "
                f"not have (available runs: {', '.join(available)})"
            )
        if name not in runs:
            runs.append(name)
    clash = set(runs) & set(external)
    if clash:
        raise ConfigError(
            f"--run-file name(s) {', '.join(sorted(clash))} clash with engine runs: rename them"
        )
    return runs


def pick_baseline(summary: Mapping[str, Mapping[str, float]], metric: str, requested: str | None) -> str:
    """The requested run, else the best single-source run on ``metric`` (else the best run)."""
    if requested is not None:
        if requested not in summary:
            raise ConfigError(f"baseline {requested!r} is not one of the runs: {', '.join(summary)}")
        return requested
    pool = [n for n in summary if n in SOURCE_RUNS] or list(summary)
    return max(pool, key=lambda n: (summary[n][metric], -pool.index(n)))


def evaluate(
    pipeline: Any,
    queries: QuerySet,
    config: EvalConfig,
    *,
    external: Mapping[str, Run] | None = None,
) -> EvalResult:
    """Rank, score, test and perturb: everything the report shows."""
    t_start = time.perf_counter()
    external = dict(external or {})
    ranker = Ranker(pipeline, config)
    with_images = bool(queries.images)
    if with_images and "image" not in ranker.sources(True):
        raise ConfigError("--image-queries given, but this index has no image or video vectors")
    runs = resolve_runs(config.runs, ranker.available_runs(with_images), list(external))
    qids = queries.qids
    t0 = time.perf_counter()
    rankings, errors = ranker.rank(qids, queries.texts, queries.images, queries.qrels, runs)
    seconds_rank = time.perf_counter() - t0
    for name, run in external.items():
        rankings[name] = {q: run.get(q, [])[: config.depth] for q in qids}
        missing = [q for q in qids if q not in run]
        if missing:
            queries.skipped[f"missing_in_run:{name}"] = missing
    if errors:
        queries.skipped["engine_error"] = [f"{q}: {msg}" for q, msg in errors.items()]

    k, depth = config.k, config.depth
    kw = {"k": k, "depth": depth, "rel_threshold": config.rel_threshold}
    summary, per_query, curves = {}, {}, {}
    for name, run in rankings.items():
        docs = {q: [d for d, _ in ranked] for q, ranked in run.items()}
        summary[name], per_query[name] = evaluate_run(docs, queries.qrels, qids, **kw)
        curves[name] = np.mean(
            [recall_curve(docs[q], queries.qrels[q], CURVE_KS, config.rel_threshold) for q in qids], axis=0
        ).tolist()

    main = f"ndcg@{k}"
    baseline = pick_baseline(summary, main, config.baseline)
    significance = {
        metric: compare_to_baseline(
            per_query, baseline, qids, metric=metric, n_resamples=config.n_resamples, seed=config.seed
        )
        for metric in (main, f"{main}_condensed")
    }

    perturbation: dict[str, dict[str, Any]] = {}
    for kind in config.perturb:
        changed = {q: perturb(t, kind, q, seed=config.seed) for q, t in queries.texts.items() if q in qids}
        n_changed = sum(1 for q, t in changed.items() if t != queries.texts[q])
        t0 = time.perf_counter()
        p_rank, _ = ranker.rank(qids, changed, queries.images, queries.qrels, runs, desc=f"perturb {kind}")
        entry: dict[str, Any] = {
            "changed": n_changed,
            "seconds": round(time.perf_counter() - t0, 2),
            "runs": {},
        }
        for name, run in p_rank.items():
            means, _ = evaluate_run({q: [d for d, _ in r] for q, r in run.items()}, queries.qrels, qids, **kw)
            entry["runs"][name] = {
                main: round(means[main], 6),
                f"{main}_condensed": round(means[f"{main}_condensed"], 6),
                "drop": round(summary[name][main] - means[main], 6),
                "drop_condensed": round(summary[name][f"{main}_condensed"] - means[f"{main}_condensed"], 6),
            }
        perturbation[kind] = entry

    table = pipeline.index.table

    def title_of(doc: str) -> str | None:
        p = table.get(doc)
        return p.title if p is not None else None

    meta = {
        "index": str(pipeline.index.index_dir),
        "generation": getattr(pipeline.index, "generation", None),
        "items": len(table),
        "reranker": pipeline.reranker.name,
        "fusion": pipeline.retriever.settings.fusion,
        "candidates": config.candidates,
        "k": k,
        "depth": depth,
        "rel_threshold": config.rel_threshold,
        "queries_scored": len(qids),
        "query_vectors_batched": ranker._hook or config.candidates == "judged",
        "seconds_ranking": round(seconds_rank, 2),
        "ms_per_query": round(1000 * seconds_rank / max(1, len(qids)), 2),
        "seconds_total": round(time.perf_counter() - t_start, 2),
        "judged_not_in_index": sum(1 for q in qids for d in queries.qrels[q] if table.get(d) is None),
    }
    return EvalResult(
        config=config,
        queries=queries,
        rankings=rankings,
        summary=summary,
        per_query=per_query,
        curves=curves,
        baseline=baseline,
        significance=significance,
        perturbation=perturbation,
        meta=meta,
        title_of=title_of,
        external=tuple(external),
    )


def save(result: EvalResult, out_dir: Path) -> dict[str, Path]:
    """Write metrics.json, one TREC run file per run (``runs/<name>.trec``) and the report."""
    import json

    from evaluation.qrels import write_run
    from evaluation.report import write_report

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for name, run in result.rankings.items():
        paths[f"run:{name}"] = out_dir / "runs" / f"{name}.trec"
        write_run(paths[f"run:{name}"], run, tag=name)
    paths["metrics"] = out_dir / "metrics.json"
    paths["metrics"].write_text(json.dumps(result.to_json(), indent=1, ensure_ascii=False), encoding="utf-8")
    paths.update(write_report(result, out_dir))
    return paths
