"""``shopsearch eval``: score the engine's runs against graded judgments and write a report.

Registered on the main CLI by ``register(app)`` so that the evaluation code (and matplotlib) is
only imported when the command runs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from shopsearch.errors import ConfigError, InvalidQueryError


def _split(value: str | None) -> list[str] | None:
    if value is None:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    return items or None


def _run_files(values: list[str] | None) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for v in values or []:
        name, sep, path = v.partition("=")
        name, path = name.strip(), path.strip()
        if not sep or not name or not path:
            raise ConfigError(f"--run-file must look like NAME=PATH, got {v!r}")
        if name in out:
            raise ConfigError(f"--run-file name {name!r} is given twice")
        out[name] = Path(path)
    return out


def _check_judged_ids(
    qrels: dict[str, dict[str, float]],
    qids: list[str],
    indexed: Callable[[str], bool],
    where: str,
    index: str,
) -> str | None:
    """Refuse judgments none of whose items (those of the queries to score) is in the index: every
    metric would be 0 without a word. Returns a warning line when only some are missing."""
    judged = list(dict.fromkeys(d for q in qids for d in qrels.get(q, {})))
    missing = [d for d in judged if not indexed(d)]
    if not missing:
        return None
    if len(missing) == len(judged):
        raise InvalidQueryError(
            f"none of the {len(judged)} item ids judged in {where} is in the index {index} (e.g. "
            f"{', '.join(missing[:3])}): are the judgments for another catalog?"
        )
    shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
    return (
        f"warning: {len(missing)} of the {len(judged)} item ids judged in {where} are not in the "
        f"index (they count as never retrieved): {shown}"
    )


_NOTES = {
    "not_in_qrels": "query ids are not in the qrels (skipped)",
    "no_relevant": "queries have no relevant judgment (skipped)",
    "qrels_without_query": "judged query ids have no query in the queries file (ignored)",
}


def register(app: typer.Typer) -> None:
    """Add the ``eval`` command to ``app``."""

    @app.command("eval")
    def eval_command(
        index_dir: Annotated[Path, typer.Option("--index", "-i", help="Index directory.")] = Path("index"),
        queries: Annotated[
            Path | None, typer.Option("--queries", help="Text queries: qid<TAB>text per line.")
        ] = None,
        qrels: Annotated[
            Path | None, typer.Option("--qrels", help="TREC qrels: 'qid 0 docid grade' per line.")
        ] = None,
        image_queries: Annotated[
            Path | None,
            typer.Option("--image-queries", help="Photo queries: qid<TAB>path (relative to this file)."),
        ] = None,
        runs: Annotated[
            str | None,
            typer.Option(
                "--runs",
                help="Comma-separated runs: bm25, vector, text_image, image, cf, rrf, weighted, hybrid, "
                "full. Default: all the index supports.",
            ),
        ] = None,
        k: Annotated[int, typer.Option("--k", help="Cutoff of NDCG/MRR/no-relevant/unjudged.")] = 10,
        depth: Annotated[int, typer.Option("--depth", help="Results kept per query (recall/MAP).")] = 100,
        out: Annotated[Path, typer.Option("--out", "-o", help="Output directory.")] = Path("eval-out"),
        run_file: Annotated[
            list[str] | None,
            typer.Option("--run-file", help="External TREC run to compare, NAME=PATH (repeatable)."),
        ] = None,
        candidates: Annotated[
            str,
            typer.Option(
                "--candidates",
                help="'retrieved' (search the index) or 'judged' (rank only each query's judged products).",
            ),
        ] = "retrieved",
        perturb: Annotated[
            str | None, typer.Option("--perturb", help="Comma-separated: typo, drop, case.")
        ] = None,
        baseline: Annotated[
            str | None, typer.Option("--baseline", help="Run the others are tested against.")
        ] = None,
        rel_threshold: Annotated[
            float, typer.Option("--rel-threshold", help="Relevant means grade above this.")
        ] = 0.0,
        seed: Annotated[
            int, typer.Option("--seed", min=0, max=2**32 - 1, help="Seed of the significance tests.")
        ] = 0,
        resamples: Annotated[int, typer.Option("--resamples", help="Significance test resamples.")] = 10_000,
        config: Annotated[Path | None, typer.Option("--config", help="TOML settings file.")] = None,
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
    ) -> None:
        """Evaluate runs (each source, each fusion, the full pipeline) against graded judgments."""
        from evaluation.qrels import read_run
        from evaluation.runner import EvalConfig, evaluate, load_query_set, save
        from reranker.pipeline import SearchPipeline
        from shopsearch.settings import load_settings

        if qrels is None:
            raise ConfigError("--qrels is required (TREC qrels: 'qid 0 docid grade' per line)")
        cfg = EvalConfig(
            runs=_split(runs),
            k=k,
            depth=depth,
            candidates=candidates,
            perturb=tuple(_split(perturb) or ()),
            rel_threshold=rel_threshold,
            baseline=baseline,
            seed=seed,
            n_resamples=resamples,
            progress=not quiet,
        )
        external = {name: read_run(path) for name, path in _run_files(run_file).items()}
        query_set = load_query_set(queries, qrels, image_queries, rel_threshold=rel_threshold)
        for why, ids in query_set.skipped.items():
            if ids:
                shown = ", ".join(ids[:5]) + (" ..." if len(ids) > 5 else "")
                typer.echo(f"note: {len(ids)} {_NOTES.get(why, why)}: {shown}", err=True)
        settings = load_settings(config, index_dir=index_dir)
        pipeline = SearchPipeline.open(settings.index_dir, settings)
        try:
            table = pipeline.index.table
            warning = _check_judged_ids(
                query_set.qrels,
                query_set.qids,
                lambda d: table.get(d) is not None,
                str(qrels),
                str(settings.index_dir),
            )
            if warning:
                typer.echo(warning, err=True)
            result = evaluate(pipeline, query_set, cfg, external=external)
        finally:
            pipeline.close()
        for why, ids in query_set.skipped.items():  # found while ranking: engine errors, run gaps
            if ids and why not in _NOTES:
                typer.echo(
                    f"note: {len(ids)} queries {why.replace('_', ' ')}: {'; '.join(ids[:3])}", err=True
                )
        paths = save(result, out)
        main = f"ndcg@{cfg.k}"
        tests = result.significance.get(main, {})
        typer.echo(
            f"{len(query_set.qids)} queries, {result.meta['seconds_total']} s; baseline {result.baseline}"
        )
        typer.echo(f"{'run':<14}{main:>10}{'condensed':>11}{f'mrr@{cfg.k}':>9}{f'recall@{cfg.depth}':>12}  p")
        for name, m in result.summary.items():
            p = f"{tests[name]['p_randomization']:.4f}" if name in tests else "-"
            typer.echo(
                f"{name:<14}{m[main]:>10.4f}{m[main + '_condensed']:>11.4f}{m[f'mrr@{cfg.k}']:>9.4f}"
                f"{m[f'recall@{cfg.depth}']:>12.4f}  {p}"
            )
        typer.echo(
            f"wrote {paths['metrics']}, {paths['report:md']}, {paths['report:html']}, runs in {out / 'runs'}"
        )
