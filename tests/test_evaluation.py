"""Evaluation: metrics against trec_eval (pytrec_eval) and hand-computed cases, file formats,
significance tests, perturbations, and an end-to-end ``shopsearch eval`` over a small index."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest

from evaluation.metrics import (
    average_precision,
    condense,
    evaluate_query,
    ndcg,
    no_relevant,
    recall,
    recall_curve,
    reciprocal_rank,
    unjudged_share,
)
from evaluation.perturb import perturb
from evaluation.qrels import read_image_queries, read_qrels, read_queries, read_run, write_run
from evaluation.significance import bootstrap_test, compare_to_baseline, randomization_test
from shopsearch.errors import ConfigError, InvalidQueryError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ====================================================================== metrics
def test_hand_computed_graded_case() -> None:
    judg = {"a": 2, "b": 0, "c": 3, "d": 1}
    ranking = ["a", "x", "b", "c"]  # x is unjudged; d (grade 1) is never retrieved
    dcg = 2 / math.log2(2) + 3 / math.log2(5)
    idcg = 3 / math.log2(2) + 2 / math.log2(3) + 1 / math.log2(4)
    assert ndcg(ranking, judg, 10) == pytest.approx(dcg / idcg)
    assert ndcg(ranking, judg, 1) == pytest.approx(2 / 3)
    assert reciprocal_rank(ranking, judg, 10) == 1.0
    assert reciprocal_rank(ranking, judg, 10, rel_threshold=2) == 0.25  # only c counts
    assert reciprocal_rank(ranking, judg, 3, rel_threshold=2) == 0.0  # c is below the cut
    assert recall(ranking, judg, 100) == pytest.approx(2 / 3)
    assert average_precision(ranking, judg, 100) == pytest.approx((1 + 2 / 4) / 3)
    assert unjudged_share(ranking, judg, 10) == 0.25
    assert no_relevant(ranking, judg, 10) == 0.0
    assert no_relevant(["x", "b"], judg, 10) == 1.0

    assert condense(ranking, judg) == ["a", "b", "c"]
    m = evaluate_query(ranking, judg, k=10, depth=100)
    assert m["ndcg@10_condensed"] == pytest.approx((2 + 3 / math.log2(4)) / idcg)
    assert m["map@100_condensed"] == pytest.approx((1 + 2 / 3) / 3)
    assert m["ndcg@10"] == pytest.approx(dcg / idcg)
    assert m["unjudged@10"] == 0.25
    assert "unjudged@10_condensed" not in m
    # a repeated document counts once, at its first position
    assert evaluate_query(["a", "a", "c"], judg)["ndcg@10"] == pytest.approx((2 + 3 / math.log2(3)) / idcg)


def test_edge_cases() -> None:
    assert ndcg([], {"a": 1}, 10) == 0.0
    assert ndcg(["a"], {"a": 0}, 10) == 0.0  # no positive grade: ideal DCG is 0
    assert recall(["a"], {"a": 0}, 10) == 0.0
    assert unjudged_share([], {"a": 1}, 10) == 0.0
    assert recall_curve(["z", "a", "b"], {"a": 1, "b": 2, "c": 1}, ks=(1, 2, 3, 10)) == pytest.approx(
        [0, 1 / 3, 2 / 3, 2 / 3]
    )


def _trec_eval_cases(seed: int, n_queries: int = 40) -> tuple[dict, dict]:
    rng = random.Random(seed)
    qrels, run = {}, {}
    for qi in range(n_queries):
        q = f"q{qi}"
        docs = [f"d{rng.randrange(300):03d}" for _ in range(rng.randrange(1, 40))]
        qrels[q] = {d: rng.choice([0, 0, 1, 2, 3, 4, 6]) for d in docs}
        pool = list(qrels[q]) + [f"d{rng.randrange(300):03d}" for _ in range(150)]
        chosen = list(dict.fromkeys(pool))
        rng.shuffle(chosen)
        # coarse scores: many ties, which trec_eval breaks by docid (descending)
        run[q] = {d: round(rng.random() * 5) / 5 for d in chosen[: rng.randrange(1, 140)]}
    return qrels, run


@pytest.mark.parametrize("rel_threshold", [0, 2])
def test_metrics_match_pytrec_eval(tmp_path: Path, rel_threshold: int) -> None:
    pytrec_eval = pytest.importorskip("pytrec_eval", reason="pip install pytrec_eval-terrier")
    qrels, scores = _trec_eval_cases(seed=7 + rel_threshold)
    path = tmp_path / "run.trec"
    path.write_text(
        "".join(f"{q} Q0 {d} 0 {s} t\n" for q, docs in scores.items() for d, s in docs.items()),
        encoding="utf-8",
    )
    ranked = {q: [d for d, _ in docs] for q, docs in read_run(path).items()}  # trec_eval's order
    measures = {"ndcg_cut.10", "ndcg_cut.100", "recall.100", "map_cut.100", "recip_rank"}
    ev = pytrec_eval.RelevanceEvaluator(qrels, measures, relevance_level=rel_threshold + 1)

    def score(run: dict[str, list[str]]) -> dict:
        as_scores = {q: {d: float(len(r) - i) for i, d in enumerate(r)} for q, r in run.items() if r}
        return ev.evaluate(as_scores)

    full = ev.evaluate(scores)  # the tied scores themselves: trec_eval breaks the ties
    top10 = score({q: r[:10] for q, r in ranked.items()})  # recip_rank has no cut in trec_eval
    condensed = score({q: condense(r, qrels[q]) for q, r in ranked.items()})
    top10_c = score({q: condense(r, qrels[q])[:10] for q, r in ranked.items()})
    checked = 0
    for q, r in ranked.items():
        mine = evaluate_query(r, qrels[q], k=10, depth=100, rel_threshold=rel_threshold)
        for suffix, ref, ref10 in (("", full, top10), ("_condensed", condensed, top10_c)):
            if q not in ref:  # condensing left nothing: trec_eval skips the query
                assert mine[f"ndcg@10{suffix}"] == 0.0
                continue
            assert mine[f"ndcg@10{suffix}"] == pytest.approx(ref[q]["ndcg_cut_10"], abs=1e-9)
            assert mine[f"ndcg@100{suffix}"] == pytest.approx(ref[q]["ndcg_cut_100"], abs=1e-9)
            assert mine[f"recall@100{suffix}"] == pytest.approx(ref[q]["recall_100"], abs=1e-9)
            assert mine[f"map@100{suffix}"] == pytest.approx(ref[q]["map_cut_100"], abs=1e-9)
            assert mine[f"mrr@10{suffix}"] == pytest.approx(ref10[q]["recip_rank"], abs=1e-9)
            checked += 1
    assert checked > 60
    # the cases are not trivial: ties, graded gains, unjudged documents all occur
    assert any(len(set(s.values())) < len(s) for s in scores.values())
    assert any(mine_u > 0 for mine_u in (unjudged_share(r, qrels[q], 10) for q, r in ranked.items()))


# ====================================================================== files
def test_run_file_round_trip_keeps_order_with_ties(tmp_path: Path) -> None:
    run = {"q1": [("b", 1.0), ("a", 1.0), ("c", 1.0), ("d", 0.5), ("e", 0.7)], "q2": [("z", -2.0)]}
    path = tmp_path / "runs" / "x.trec"
    write_run(path, run, tag="my run")
    lines = path.read_text().splitlines()
    assert lines[0].split()[:4] == ["q1", "Q0", "b", "1"] and lines[0].split()[5] == "my_run"
    back = read_run(path)
    assert [d for d, _ in back["q1"]] == ["b", "a", "c", "d", "e"]
    assert back["q1"][0][1] == 1.0
    assert back["q2"] == [("z", -2.0)]


def test_read_run_orders_like_trec_eval(tmp_path: Path) -> None:
    path = tmp_path / "r.trec"
    path.write_text("q Q0 a 1 1.0 t\nq Q0 c 2 1.0 t\nq Q0 b 3 2.0 t\n")
    assert [d for d, _ in read_run(path)["q"]] == ["b", "c", "a"]


def test_query_and_qrels_files(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "p.png").write_bytes(PNG_MAGIC)
    q = tmp_path / "queries.tsv"
    q.write_text("\ufeffq1\tred mug\n\n# comment\nq2\t  lamp \n", encoding="utf-8")
    assert read_queries(q) == {"q1": "red mug", "q2": "lamp"}
    iq = tmp_path / "imgq.tsv"
    iq.write_text("q3\timg/p.png\n")
    assert read_image_queries(iq) == {"q3": (tmp_path / "img" / "p.png").resolve()}
    qr = tmp_path / "qrels.txt"
    qr.write_text("q1 0 a 2\nq1 0 b 0\nq2 0 a 1\nq1 0 a 2\n")
    assert read_qrels(qr) == {"q1": {"a": 2.0, "b": 0.0}, "q2": {"a": 1.0}}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("q1 0 a 2\nq1 0 b\n", "line 2: expected 4 fields"),
        ("q1 0 a 2\n\nq1 0 b high\n", "line 3: grade 'high' is not a number"),
        ("q1 0 a 2\nq1 0 a 1\n", "line 2: q1 a is judged twice"),
        ("# only a comment\n", "holds no judgments"),
        ("q1 0 a 2\nq1 0 b 1e39\n", "line 2: grade '1e39' is outside -1000..1000"),  # trained NaN weights
    ],
)
def test_bad_qrels_name_the_line(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "qrels.txt"
    path.write_text(content)
    with pytest.raises(InvalidQueryError, match=message):
        read_qrels(path)


def test_an_empty_queries_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "queries.tsv"
    path.write_text("# nothing yet\n")
    with pytest.raises(InvalidQueryError, match="holds no entries"):
        read_queries(path)


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(InvalidQueryError, match="qrels file not found"):
        read_qrels(tmp_path / "nope.txt")
    bad = tmp_path / "q.tsv"
    bad.write_text("q1\tok\nq2 no tab\n")
    with pytest.raises(InvalidQueryError, match="line 2: expected 'qid<TAB>text'"):
        read_queries(bad)
    bad.write_text("q1\tok\nq1\tagain\n")
    with pytest.raises(InvalidQueryError, match="line 2: query id 'q1' appears twice"):
        read_queries(bad)
    bad.write_text("q1\tmissing.png\n")
    with pytest.raises(InvalidQueryError, match="image of query 'q1' not found"):
        read_image_queries(bad)
    run = tmp_path / "r.trec"
    run.write_text("q Q0 a 1 1.0 t\nq Q0 a 2 0.5 t\n")
    with pytest.raises(InvalidQueryError, match="line 2: document a appears twice"):
        read_run(run)
    run.write_text("q Q0 a one 1.0 t\n")
    with pytest.raises(InvalidQueryError, match="line 1: rank 'one'"):
        read_run(run)


# ====================================================================== significance
def test_identical_runs_give_p_one() -> None:
    a = np.random.default_rng(1).random(200)
    assert randomization_test(a, a, n_resamples=2000) == 1.0
    boot = bootstrap_test(a, a, n_resamples=2000)
    assert boot.p == 1.0 and boot.delta == 0.0 and boot.ci_low == boot.ci_high == 0.0


def test_clear_difference_gives_small_p_and_noise_does_not() -> None:
    rng = np.random.default_rng(2)
    base = rng.random(100)
    better = np.clip(base + 0.15 + rng.normal(0, 0.05, 100), 0, 1)
    assert randomization_test(better, base, n_resamples=5000) < 0.001
    boot = bootstrap_test(better, base, n_resamples=5000)
    assert boot.p < 0.001 and 0.1 < boot.ci_low < boot.delta < boot.ci_high
    noisy = base + rng.normal(0, 0.05, 100)
    noisy -= noisy.mean() - base.mean()  # same mean, different per-query values
    assert randomization_test(noisy, base, n_resamples=5000) > 0.5
    # deterministic for a seed
    assert randomization_test(better[:20], base[:20], seed=3) == randomization_test(
        better[:20], base[:20], seed=3
    )


def test_compare_to_baseline_counts_wins() -> None:
    per_query = {
        "base": {"q1": {"m": 0.5}, "q2": {"m": 0.5}, "q3": {"m": 0.5}},
        "run": {"q1": {"m": 0.9}, "q2": {"m": 0.5}, "q3": {"m": 0.1}},
    }
    out = compare_to_baseline(per_query, "base", ["q1", "q2", "q3"], metric="m", n_resamples=200)
    assert set(out) == {"run"}
    assert (out["run"]["wins"], out["run"]["ties"], out["run"]["losses"]) == (1, 1, 1)
    assert out["run"]["delta"] == pytest.approx(0.0)
    assert out["run"]["p_randomization"] == 1.0


# ====================================================================== perturbations
def _edit_distance_one(a: str, b: str) -> bool:
    if abs(len(a) - len(b)) > 1 or a == b:
        return False
    if len(a) == len(b):
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        return len(diff) == 1 or (
            len(diff) == 2
            and diff[1] == diff[0] + 1
            and a[diff[0]] == b[diff[1]]
            and a[diff[1]] == b[diff[0]]
        )
    short, long_ = (a, b) if len(a) < len(b) else (b, a)
    return any(long_[:i] + long_[i + 1 :] == short for i in range(len(long_)))


def test_perturbations_are_deterministic_and_small() -> None:
    texts = {f"q{i}": t for i, t in enumerate(["cordless drill 20v", "white paint", "LED bulb 60 watt"] * 20)}
    seen_typo = set()
    for qid, text in texts.items():
        t = perturb(text, "typo", qid)
        assert t == perturb(text, "typo", qid)  # same query id -> same edit
        assert _edit_distance_one(text, t), (text, t)
        seen_typo.add((text, t))
        d = perturb(text, "drop", qid)
        assert d == perturb(text, "drop", qid)
        assert len(d.split()) == len(text.split()) - 1 and set(d.split()) <= set(text.split())
        c = perturb(text, "case", qid)
        assert c.lower() == text.lower() and c == perturb(text, "case", qid)
    assert len(seen_typo) > 10  # seeded by the query id: different ids get different edits
    assert perturb("drill", "drop", "q1") == "drill"  # a single word is kept
    assert perturb("cordless drill", "typo", "q1", seed=1) != perturb(
        "cordless drill", "typo", "q1", seed=2
    ) or (perturb("cordless drill", "typo", "q2", seed=1) != perturb("cordless drill", "typo", "q2", seed=2))
    with pytest.raises(ConfigError, match="unknown perturbation"):
        perturb("x", "shout", "q1")


# ====================================================================== end to end
def _eval_files(folder: Path) -> dict[str, Path]:
    """Queries and graded judgments over the small catalog of conftest (ids h-*, m-*, l-*)."""
    queries = folder / "queries.tsv"
    queries.write_text(
        "q1\tzip hoodie\nq2\tcoffee mug\nq3\tdesk lamp\nq4\tred hoodie\nq5\tblue lamp\nq6\tgreen mug\n"
        "q7\tceramic cup for tea\nq8\twarm fleece top\nq-nojudg\tsofa\n",
        encoding="utf-8",
    )
    qrels = folder / "qrels.txt"
    lines = [
        "q1 0 h-black 3", "q1 0 h-red 3", "q1 0 h-blue 1", "q1 0 m-black 0",
        "q2 0 m-black 3", "q2 0 m-green 3", "q2 0 photo-only 1", "q2 0 l-red 0",
        "q3 0 l-red 3", "q3 0 l-blue 3", "q3 0 m-green 0",
        "q4 0 h-red 3", "q4 0 h-black 1", "q4 0 h-blue 1", "q4 0 l-red 0",
        "q5 0 l-blue 3", "q5 0 l-red 1", "q5 0 h-blue 0",
        "q6 0 m-green 3", "q6 0 m-black 1",
        "q7 0 m-black 2", "q7 0 m-green 2", "q7 0 h-red 0",
        "q8 0 h-black 2", "q8 0 h-red 2", "q8 0 h-blue 1",
        "q9 0 h-black 2",
    ]  # fmt: skip
    qrels.write_text("\n".join(lines) + "\n")
    return {"queries": queries, "qrels": qrels}


@pytest.fixture(scope="module")
def small_index(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A real index (MiniLM text vectors, EfficientNet photo vectors, tantivy BM25) of conftest's
    small catalog, plus query, qrels and image-query files about it."""
    from conftest import draw, write_small_catalog

    from indexer.store import build_index
    from shopsearch.settings import load_settings

    folder = tmp_path_factory.mktemp("eval")
    catalog = write_small_catalog(folder / "catalog")
    settings = load_settings(None, index_dir=folder / "index")
    build_index([catalog], settings.index_dir, settings, progress=False)
    files = _eval_files(folder)
    (folder / "photos").mkdir()
    draw("mug", "red", folder / "photos" / "red-mug.png")
    files["image_queries"] = folder / "image_queries.tsv"
    files["image_queries"].write_text("q10\tphotos/red-mug.png\n")
    with open(files["qrels"], "a") as f:
        f.write("q10 0 photo-only 3\nq10 0 m-black 2\nq10 0 m-green 2\nq10 0 h-red 0\n")
    return {"folder": folder, "index": settings.index_dir, **files}


def _cli():
    import typer
    from typer.testing import CliRunner

    from api.eval_cli import register

    app = typer.Typer()
    register(app)

    @app.callback()
    def _root() -> None:  # keeps 'eval' a subcommand, as on the real CLI
        pass

    return app, CliRunner()


def _pipeline(index: Path, **overrides: object):
    from reranker.pipeline import SearchPipeline
    from shopsearch.settings import load_settings

    settings = load_settings(None, index_dir=index, **overrides)
    return SearchPipeline.open(settings.index_dir, settings)


@pytest.mark.slow
def test_eval_cli_end_to_end(small_index: dict[str, Path], tmp_path: Path) -> None:
    from PIL import Image

    qrels = read_qrels(small_index["qrels"])
    ideal = tmp_path / "ideal.trec"  # an external "system" that returns the ideal ranking
    write_run(
        ideal, {q: sorted(j.items(), key=lambda kv: (-kv[1], kv[0])) for q, j in qrels.items()}, "ideal"
    )
    out = tmp_path / "out"
    app, runner = _cli()
    args = [
        "eval", "--index", str(small_index["index"]), "--queries", str(small_index["queries"]),
        "--qrels", str(small_index["qrels"]), "--image-queries", str(small_index["image_queries"]),
        "--out", str(out), "--run-file", f"ideal={ideal}", "--perturb", "typo,drop,case",
        "--resamples", "500", "--quiet",
    ]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, (result.output, result.exception)
    assert "1 query ids are not in the qrels (skipped): q-nojudg" in result.output

    metrics = json.loads((out / "metrics.json").read_text())
    runs = metrics["runs"]
    assert list(runs) == ["bm25", "vector", "image", "rrf", "weighted", "full", "ideal"]
    scored = [f"q{i}" for i in (1, 2, 3, 4, 5, 6, 7, 8, 10)]  # q9 has judgments but no query
    for name, values in runs.items():
        for key in ("ndcg@10", "ndcg@10_condensed", "ndcg@100", "mrr@10", "recall@100", "map@100",
                    "no_rel@10", "unjudged@10", "map@100_condensed"):  # fmt: skip
            assert 0.0 <= values[key] <= 1.0, (name, key)
        assert sorted(metrics["per_query"][name]) == sorted(scored)
        trec = (out / "runs" / f"{name}.trec").read_text().splitlines()
        assert trec and all(len(line.split()) == 6 and line.split()[5] == name for line in trec)
    assert runs["ideal"]["ndcg@10"] == pytest.approx(1.0) and runs["ideal"]["external"] is True
    # easy queries over a tiny catalog: the engine must find the right products
    assert runs["bm25"]["ndcg@10"] > 0.6 and runs["rrf"]["ndcg@10"] > 0.6
    assert metrics["per_query"]["image"]["q10"]["ndcg@10"] > 0  # the photo query reaches mugs
    assert metrics["per_query"]["image"]["q1"]["ndcg@10"] == 0  # text-only query: no image source
    assert metrics["baseline"] in {"bm25", "vector", "image"}
    tests = metrics["significance"]["tests"]["ndcg@10"]
    assert set(tests) == set(runs) - {metrics["baseline"]}
    assert all(0 < t["p_randomization"] <= 1 and 0 < t["p_bootstrap"] <= 1 for t in tests.values())
    assert metrics["skipped"]["not_in_qrels"] == ["q-nojudg"]
    assert metrics["skipped"]["qrels_without_query"] == ["q9"]
    assert set(metrics["perturbation"]) == {"typo", "drop", "case"}
    assert metrics["perturbation"]["typo"]["changed"] == 8  # the eight scored text queries
    assert set(metrics["perturbation"]["drop"]["runs"]) == set(runs) - {"ideal"}
    assert metrics["recall_curve"]["k"][0] == 1 and len(metrics["recall_curve"]["runs"]["bm25"]) == len(
        metrics["recall_curve"]["k"]
    )

    for png in ("metrics.png", "winloss.png", "recall.png", "perturb.png"):
        data = (out / png).read_bytes()
        assert data.startswith(PNG_MAGIC)
        with Image.open(out / png) as img:
            img.verify()
    md = (out / "report.md").read_text()
    assert "ndcg@10_condensed" in md and "![Recall at k](recall.png)" in md and "helps most" in md
    html_text = (out / "report.html").read_text()
    assert html_text.count("data:image/png;base64,") == 4 and "Trail Zip Hoodie" in html_text


@pytest.mark.slow
def test_runs_are_what_the_retriever_returns(small_index: dict[str, Path]) -> None:
    from evaluation.runner import EvalConfig, Ranker
    from retriever.search import Retriever

    pipeline = _pipeline(small_index["index"])
    weighted = Retriever(pipeline.index, pipeline.settings.model_copy(update={"fusion": "weighted"}))
    rrf = Retriever(pipeline.index, pipeline.settings.model_copy(update={"fusion": "rrf"}))
    texts = read_queries(small_index["queries"])
    qrels = read_qrels(small_index["qrels"])
    qids = [q for q in texts if q in qrels]
    ranker = Ranker(pipeline, EvalConfig(progress=False))
    runs = ["bm25", "vector", "rrf", "weighted", "hybrid", "full"]
    rankings, errors = ranker.rank(qids, texts, {}, qrels, runs)
    assert not errors
    r = pipeline.retriever
    # with the retriever's query_vectors hook the runner passes batch-encoded vectors: compare alike
    vecs = ranker.query_vectors(qids, texts, {}, {"text"}) if ranker._hook else {}
    for q in qids:
        text = texts[q]
        hook = {"query_vectors": vecs[q]} if vecs else {}

        def ids(retrieval) -> list[str]:
            return [c.id for c in retrieval.candidates]

        got = {name: [d for d, _ in rankings[name][q]] for name in runs}
        assert got["bm25"] == ids(r.retrieve(text, depth=100, sources={"bm25"}))
        assert got["vector"] == ids(r.retrieve(text, depth=100, sources={"text"}, **hook))
        assert got["hybrid"] == got["full"] == ids(r.retrieve(text, depth=100, **hook))  # the default fusion
        assert got["rrf"] == ids(rrf.retrieve(text, depth=100, **hook))
        assert got["weighted"] == ids(weighted.retrieve(text, depth=100, **hook))
        assert [s for _, s in rankings["weighted"][q]] == pytest.approx(
            [c.score for c in weighted.retrieve(text, depth=100, **hook).candidates]
        )
    pipeline.close()


@pytest.mark.slow
def test_bm25_candidates_deepens_only_the_lexical_list(small_index: dict[str, Path]) -> None:
    from evaluation.runner import EvalConfig, Ranker

    pipeline = _pipeline(small_index["index"], candidates=3, bm25_candidates=3)  # = off
    deep_pipeline = _pipeline(small_index["index"], candidates=3, bm25_candidates=6)
    deep = deep_pipeline.retriever

    def per_source(retrieval) -> dict[str, int]:
        counts: dict[str, int] = {}
        for c in retrieval.candidates:
            for s in c.sources:
                counts[s] = counts.get(s, 0) + 1
        return counts

    # "warm" is also in the lamps' text: BM25's deeper hits score below its first three
    before, after = pipeline.retriever.retrieve("warm hoodie"), deep.retrieve("warm hoodie")
    shallow, wide = per_source(before), per_source(after)
    assert shallow["bm25"] == 3 and shallow["text"] == 3
    assert wide["bm25"] > 3 and wide["text"] == 3
    # the deeper hits take no share of the fused score: the first pool keeps its scores and order,
    # and what only the deeper BM25 list found follows it, in BM25 order
    scores = {c.id: c.score for c in after.candidates}
    assert [c.id for c in after.candidates][: len(before.candidates)] == [c.id for c in before.candidates]
    assert all(scores[c.id] == c.score for c in before.candidates)
    extra = [c for c in after.candidates[len(before.candidates) :] if set(c.sources) == {"bm25"}]
    assert extra and [c.sources["bm25"].rank for c in extra] == sorted(c.sources["bm25"].rank for c in extra)
    # a page deeper than the setting still gets every source that deep
    assert per_source(deep.retrieve("warm hoodie", depth=8))["bm25"] >= wide["bm25"]
    # the evaluation runner rebuilds the fusion from the source lists the same way
    ranker = Ranker(deep_pipeline, EvalConfig(progress=False, k=3, depth=3))
    texts = {"q": "warm hoodie"}
    rankings, _ = ranker.rank(["q"], texts, {}, {"q": {"h-red": 1.0}}, ["hybrid"])
    # with the hook the runner passes batch-encoded query vectors: compare alike
    hook = {"query_vectors": ranker.query_vectors(["q"], texts, {}, {"text"})["q"]} if ranker._hook else {}
    same = deep.retrieve("warm hoodie", depth=3, **hook).candidates[:3]
    assert rankings["hybrid"]["q"] == [(c.id, pytest.approx(c.score)) for c in same]
    pipeline.close()
    deep_pipeline.close()


@pytest.mark.slow
def test_judged_mode_ranks_exactly_the_judged_products(small_index: dict[str, Path]) -> None:
    from evaluation.runner import EvalConfig, evaluate, load_query_set

    pipeline = _pipeline(small_index["index"])
    qs = load_query_set(small_index["queries"], small_index["qrels"])
    result = evaluate(pipeline, qs, EvalConfig(candidates="judged", progress=False, n_resamples=100))
    enc = pipeline.index.encoders.text
    vectors = pipeline.index.vectors["text"]
    table = pipeline.index.table
    for q in qs.qids:
        judged = set(qs.qrels[q])
        for name in ("bm25", "vector", "rrf", "weighted", "full"):
            assert sorted(d for d, _ in result.rankings[name][q]) == sorted(judged), (name, q)
        # vector order = cosine of the stored vectors, computed here independently
        rows = np.array([table.id_to_row[d] for d in judged])
        sims = vectors.vectors_for(rows) @ enc.encode([qs.texts[q]])[0]
        sim_of = {table.product(int(r)).id: float(s) for r, s in zip(rows, sims, strict=True)}
        got = result.rankings["vector"][q]
        assert [s for _, s in got] == pytest.approx(sorted(sim_of.values(), reverse=True), abs=1e-5)
        assert all(s == pytest.approx(sim_of[d], abs=1e-5) for d, s in got)
        # BM25: the lexical engine's own order over the judged products it matches
        hits = [h.id for h in pipeline.index.lexical.search(qs.texts[q], 100) if h.id in judged]
        assert [d for d, _ in result.rankings["bm25"][q]][: len(hits)] == hits
    # no unjudged result can appear, so both forms agree
    for name, m in result.summary.items():
        assert m["unjudged@10"] == 0.0 and m["ndcg@10"] == pytest.approx(m["ndcg@10_condensed"]), name
    pipeline.close()


@pytest.mark.slow
def test_cli_bad_inputs(small_index: dict[str, Path], tmp_path: Path) -> None:
    app, runner = _cli()
    base = ["eval", "--index", str(small_index["index"]), "--queries", str(small_index["queries"]), "--quiet"]
    base += ["--out", str(tmp_path / "o"), "--resamples", "50"]

    result = runner.invoke(app, [*base, "--qrels", str(tmp_path / "missing.txt")])
    assert isinstance(result.exception, InvalidQueryError)
    assert "qrels file not found" in result.exception.message and "missing.txt" in result.exception.message

    bad = tmp_path / "bad_qrels.txt"
    bad.write_text("q1 0 h-black 3\nq1 0 h-red 3\nq1 h-blue 1\n")
    result = runner.invoke(app, [*base, "--qrels", str(bad)])
    assert isinstance(result.exception, InvalidQueryError)
    assert f"{bad} line 3: expected 4 fields" in result.exception.message

    result = runner.invoke(app, [*base, "--qrels", str(small_index["qrels"]), "--runs", "bm25,bogus"])
    assert isinstance(result.exception, ConfigError) and "unknown run 'bogus'" in result.exception.message

    result = runner.invoke(app, [*base, "--qrels", str(small_index["qrels"]), "--runs", "image"])
    assert isinstance(result.exception, ConfigError) and "'image' source" in result.exception.message

    result = runner.invoke(app, [*base, "--qrels", str(small_index["qrels"]), "--perturb", "shout"])
    assert isinstance(result.exception, ConfigError) and "unknown perturbation" in result.exception.message

    result = runner.invoke(app, [*base, "--qrels", str(small_index["qrels"]), "--run-file", "nopath"])
    assert isinstance(result.exception, ConfigError) and "NAME=PATH" in result.exception.message

    only_unjudged = tmp_path / "q.tsv"
    only_unjudged.write_text("x1\tsofa\nx2\tchair\n")
    result = runner.invoke(
        app, [*base[:3], "--queries", str(only_unjudged), "--qrels", str(small_index["qrels"]), "--quiet"]
    )
    assert isinstance(result.exception, InvalidQueryError)
    assert "no query can be scored: 2 query ids have no judgments" in result.exception.message


@pytest.mark.slow
def test_query_the_engine_refuses_is_reported(small_index: dict[str, Path], tmp_path: Path) -> None:
    queries = tmp_path / "q.tsv"
    queries.write_text("q1\tzip hoodie\nq2\t" + "mug " * 300 + "\n")  # over the 1000-character limit
    app, runner = _cli()
    args = ["eval", "--index", str(small_index["index"]), "--queries", str(queries), "--quiet"]
    args += ["--qrels", str(small_index["qrels"]), "--runs", "bm25,rrf", "--out", str(tmp_path / "o")]
    result = runner.invoke(app, [*args, "--resamples", "50"])
    assert result.exit_code == 0, (result.output, result.exception)
    assert "1 queries engine error: q2: query text is" in result.output
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert metrics["skipped"]["engine_error"][0].startswith("q2: query text is 1199 characters")
    assert metrics["per_query"]["bm25"]["q2"]["ndcg@10"] == 0.0  # scored as an empty ranking
    assert metrics["per_query"]["bm25"]["q1"]["ndcg@10"] > 0.5


@pytest.mark.slow
def test_judged_ids_missing_from_the_index_are_an_error_or_a_warning(
    small_index: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """Judgments about another catalog (or ids spelt another way) used to print all-zero metrics
    without a word."""
    import sys

    from api import cli

    other = tmp_path / "other_qrels.txt"
    other.write_text("q1 0 X-1 3\nq1 0 X-2 1\nq2 0 X-3 2\nq2 0 X-1 1\n")
    common = ["--index", str(small_index["index"]), "--queries", str(small_index["queries"])]
    common += ["--runs", "bm25", "--resamples", "20", "--quiet"]
    out = tmp_path / "o"
    monkeypatch.setattr(sys, "argv", ["shopsearch", "eval", *common, "--qrels", str(other), "-o", str(out)])
    with pytest.raises(SystemExit) as exited:
        cli.main()
    assert exited.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert "Traceback" not in err and len(errors) == 1, err
    assert f"none of the 3 item ids judged in {other} is in the index {small_index['index']}" in errors[0]
    assert not out.exists()  # stopped before any run was scored or written

    partly = tmp_path / "partly.txt"  # two judged ids the index lacks among ten
    partly.write_text(small_index["qrels"].read_text() + "q1 0 gone-1 2\nq2 0 gone-2 1\n")
    app, runner = _cli()
    result = runner.invoke(app, ["eval", *common, "--qrels", str(partly), "-o", str(out)])
    assert result.exit_code == 0, (result.output, result.exception)
    warnings = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, result.output
    assert f"2 of the 10 item ids judged in {partly} are not in the index" in warnings[0]
    assert warnings[0].endswith(": gone-1, gone-2")
    assert json.loads((out / "metrics.json").read_text())["runs"]["bm25"]["ndcg@10"] > 0.5
