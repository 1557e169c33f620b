"""Query spelling correction on Home Depot: relevance with and without it, under typos, and cost.

    python benchmarks/bench_spelling.py [--index .bench/index] [--split test]
    python benchmarks/bench_spelling.py --cross

Runs the evaluation runner (BM25 and weighted fusion of BM25 + MiniLM, the default settings) on
one half of ``benchmarks.splits.homedepot_split`` twice, with ``spell_correction`` off and on,
each clean and under the runner's typo perturbation (``evaluation.perturb``, seed 0). The
corrector's settings were chosen on the TRAIN half; report the TEST half. Also prints how often
the corrector changes a clean query, how often it restores a typo'd query exactly, and its time
per query. Results: WORK/spelling.json.

``--cross``: real shoppers' queries against a catalog that does not carry most of what they ask
for, the case the common-word rule is for. Best Buy's logged queries (video games, music, films)
are corrected against the Icecat electronics catalog's vocabulary, built with and without the text
model's word list (without it every word the catalog lacks is replaced, as before the rule). Prints
how many distinct queries each changes and the most frequent queries they search differently.
There are no judgments here: read the list. Results: WORK/cross.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.bench_reranker import hd_queries  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "homedepot"
SHARED = REPO.parent / "shared" / "data"


def cross(work: Path, show: int = 40) -> None:
    from collections import Counter

    from indexer.catalog import read_catalog
    from indexer.encoders.text import tokenizer_words
    from indexer.report import IngestReport
    from indexer.spelling import SpellCorrector, Vocabulary, product_words

    products = read_catalog(SHARED / "icecat" / "catalog.jsonl", report=IngestReport())
    sets = [product_words(p) for p in products]
    plain = SpellCorrector(Vocabulary.build(iter(sets)))
    ruled = SpellCorrector(Vocabulary.build(iter(sets), lexicon=tokenizer_words("all-MiniLM-L6-v2")))
    with open(SHARED / "bestbuy" / "clicks_train.jsonl", encoding="utf-8") as f:
        queries = Counter(" ".join(json.loads(line)["query"].split()).lower() for line in f if line.strip())
    rows = []
    changed = {"without the word list": 0, "with the word list": 0}
    for q, n in queries.most_common():
        a, b = plain.correct(q), ruled.correct(q)
        changed["without the word list"] += a.changed
        changed["with the word list"] += b.changed
        if a.text != b.text:
            rows.append(
                {"query": q, "events": n, "without": a.text, "with": b.text, "did_you_mean": b.suggestion}
            )
    out = {
        "distinct queries": len(queries),
        "query events": sum(queries.values()),
        "changed": changed,
        "searched differently": len(rows),
        "events searched differently": sum(r["events"] for r in rows),
        "queries": rows,
    }
    work.mkdir(parents=True, exist_ok=True)
    (work / "cross.json").write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in out.items() if k != "queries"}, indent=1))
    print("| query (events) | without the word list | with it |\n| --- | --- | --- |")
    for r in rows[:show]:
        print(f"| {r['query']} ({r['events']}) | {r['without']} | {r['with']} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", type=Path, default=REPO / ".bench" / "index")
    ap.add_argument("--split", choices=("train", "test"), default="test")
    ap.add_argument("--work", type=Path, default=REPO / ".bench" / "spelling")
    ap.add_argument("--cross", action="store_true", help="Best Buy queries on the Icecat catalog (above).")
    args = ap.parse_args()
    if args.cross:
        cross(args.work)
        return

    from evaluation.perturb import perturb
    from evaluation.runner import EvalConfig, evaluate, load_query_set
    from indexer.spelling import SpellCorrector
    from reranker.base import PassThroughReranker
    from reranker.pipeline import SearchPipeline
    from shopsearch.settings import load_settings

    train, test, _ = hd_queries()
    mine = train if args.split == "train" else test
    out: dict[str, object] = {"split": args.split, "queries": len(mine), "runs": {}}
    for spell in (False, True):
        settings = load_settings(None, index_dir=args.index, spell_correction=spell)
        pipeline = SearchPipeline.open(args.index, settings, reranker=PassThroughReranker())
        try:
            qs = load_query_set(DATA / "queries.tsv", DATA / "qrels.txt")
            qs.qids = [q for q in qs.qids if q in mine]
            res = evaluate(
                pipeline,
                qs,
                EvalConfig(runs=["bm25", "weighted"], perturb=["typo"], progress=False, n_resamples=1000),
            )
            typo = res.perturbation["typo"]["runs"]
            for run in ("bm25", "weighted"):
                s = res.summary[run]
                out["runs"][f"{run}, spelling {'on' if spell else 'off'}"] = {  # type: ignore[index]
                    "ndcg@10": s["ndcg@10"],
                    "condensed": s["ndcg@10_condensed"],
                    "typo ndcg@10": typo[run]["ndcg@10"],
                    "typo condensed": typo[run]["ndcg@10_condensed"],
                }
            if spell:
                corrector = SpellCorrector(pipeline.index.vocabulary)
                clean_changed = sum(corrector.correct(t).changed for t in mine.values())
                typos = {q: perturb(t, "typo", q) for q, t in mine.items()}
                typos = {q: t for q, t in typos.items() if t != mine[q]}
                # restored: the typo'd query is searched exactly as the clean query is
                restored = sum(
                    corrector.correct(t).text == corrector.correct(mine[q]).text for q, t in typos.items()
                )
                for t in list(mine.values())[:200]:  # warm-up: first two-edit lookup builds its buckets
                    corrector.correct(t)
                times = []
                for t in [*mine.values(), *typos.values()]:
                    t0 = time.perf_counter()
                    corrector.correct(t)
                    times.append((time.perf_counter() - t0) * 1000)
                out["corrector"] = {
                    "vocabulary": len(pipeline.index.vocabulary.words),
                    "clean queries changed": clean_changed,
                    "typo queries": len(typos),
                    "typo queries searched as the clean query": restored,
                    "ms p50": float(np.percentile(times, 50)),
                    "ms p99": float(np.percentile(times, 99)),
                }
        finally:
            pipeline.close()
    args.work.mkdir(parents=True, exist_ok=True)
    (args.work / "spelling.json").write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    print(f"| run (Home Depot {args.split} half) | NDCG@10 | condensed | under typos | condensed |")
    print("| --- | --- | --- | --- | --- |")
    for name, r in out["runs"].items():  # type: ignore[union-attr]
        print(
            f"| {name} | {r['ndcg@10']:.4f} | {r['condensed']:.4f} | "
            f"{r['typo ndcg@10']:.4f} | {r['typo condensed']:.4f} |"
        )
    print(json.dumps(out["corrector"], indent=1))


if __name__ == "__main__":
    main()
