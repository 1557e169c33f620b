"""The evaluation report: PNG plots plus the same content as Markdown and as self-contained HTML.

Plots are drawn on bare ``matplotlib.figure.Figure`` objects (Agg canvas, no pyplot state), so
the report can be written from any thread or a headless machine. The HTML embeds the PNGs as
data URIs; the Markdown links the PNG files written alongside it.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evaluation.metrics import CURVE_KS
from shopsearch.errors import ConfigError

if TYPE_CHECKING:
    from evaluation.runner import EvalResult

TOP_QUERIES = 10  # queries listed per run as helped / hurt most
TOP_RESULTS = 5  # results shown side by side for each of them


# ====================================================================== plots
def _figure(width: float, height: float) -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError:  # pragma: no cover - depends on the environment
        raise ConfigError("the evaluation report needs matplotlib: pip install matplotlib") from None
    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def plot_metrics(summary: dict[str, dict[str, float]], metrics: Sequence[str], path: Path) -> Path:
    """Grouped bars: one group per metric, one bar per run."""
    runs = list(summary)
    fig = _figure(max(6.0, 1.2 * len(metrics) + 0.25 * len(runs) * len(metrics)), 4.2)
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(runs))
    for i, run in enumerate(runs):
        xs = [m + (i - (len(runs) - 1) / 2) * width for m in range(len(metrics))]
        ax.bar(xs, [summary[run][m] for m in metrics], width=width, label=run)
    ax.set_xticks(range(len(metrics)), labels=list(metrics), rotation=20)
    ax.set_ylim(0, 1)
    ax.set_ylabel("mean over queries")
    ax.set_title("Metrics per run")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small", ncols=min(4, len(runs)))
    fig.savefig(path, format="png")
    return path


def plot_win_loss(significance: dict[str, dict[str, float]], baseline: str, metric: str, path: Path) -> Path:
    """Per run: queries it wins, ties and loses against the baseline on ``metric``."""
    runs = list(significance)
    fig = _figure(7.0, max(2.2, 0.45 * len(runs) + 1.2))
    ax = fig.add_subplot()
    if not runs:
        ax.text(0.5, 0.5, f"only one run ({baseline}): nothing to compare", ha="center", va="center")
        ax.set_axis_off()
    else:
        wins = [significance[r]["wins"] for r in runs]
        ties = [significance[r]["ties"] for r in runs]
        losses = [significance[r]["losses"] for r in runs]
        ax.barh(runs, wins, color="#2e7d32", label="wins")
        ax.barh(runs, ties, left=wins, color="#bdbdbd", label="ties")
        ax.barh(
            runs,
            losses,
            left=[w + t for w, t in zip(wins, ties, strict=True)],
            color="#c62828",
            label="losses",
        )
        ax.invert_yaxis()
        ax.set_xlabel("queries")
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title(f"Per-query {metric} against {baseline}")
    fig.savefig(path, format="png")
    return path


def plot_recall(curves: dict[str, list[float]], path: Path) -> Path:
    fig = _figure(6.5, 4.2)
    ax = fig.add_subplot()
    for run, values in curves.items():
        ax.plot(CURVE_KS, values, marker="o", markersize=3, label=run)
    ax.set_xscale("log")
    ax.set_xticks(CURVE_KS, labels=[str(k) for k in CURVE_KS])
    ax.set_ylim(0, 1)
    ax.set_xlabel("k")
    ax.set_ylabel("recall@k")
    ax.set_title("Recall at k")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.savefig(path, format="png")
    return path


def plot_perturbation(perturbation: dict[str, dict[str, Any]], metric: str, path: Path) -> Path:
    kinds = list(perturbation)
    runs = list(next(iter(perturbation.values()))["runs"])
    fig = _figure(max(6.0, 1.5 * len(kinds) + 0.3 * len(runs) * len(kinds)), 4.0)
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(runs))
    for i, run in enumerate(runs):
        xs = [j + (i - (len(runs) - 1) / 2) * width for j in range(len(kinds))]
        ax.bar(xs, [perturbation[kd]["runs"][run]["drop"] for kd in kinds], width=width, label=run)
    ax.set_xticks(range(len(kinds)), labels=kinds)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_ylabel(f"{metric} drop")
    ax.set_title("Robustness: metric lost under query perturbations")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small", ncols=min(4, len(runs)))
    fig.savefig(path, format="png")
    return path


# ====================================================================== content
def _fmt(x: float) -> str:
    return f"{x:.4f}"


def _p(x: float) -> str:
    return f"{x:.4f}" if x >= 1e-4 else f"{x:.1e}"


def _tables(result: EvalResult) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) for every table of the report."""
    k, depth = result.config.k, result.config.depth
    main = [
        f"ndcg@{k}",
        f"ndcg@{k}_condensed",
        f"ndcg@{depth}",
        f"mrr@{k}",
        f"recall@{depth}",
        f"map@{depth}",
    ]
    main += [f"no_rel@{k}", f"unjudged@{k}"]
    cond = [f"{m}_condensed" for m in (f"ndcg@{depth}", f"mrr@{k}", f"recall@{depth}", f"map@{depth}")]
    cond.append(f"no_rel@{k}_condensed")
    out = []
    rows = []
    for run in result.rankings:
        mark = " (baseline)" if run == result.baseline else (" (external)" if run in result.external else "")
        rows.append([run + mark, *(_fmt(result.summary[run][m]) for m in main)])
    out.append(("Metrics per run", ["run", *main], rows))
    out.append(
        (
            "Condensed metrics (unjudged results removed before scoring)",
            ["run", *cond],
            [[run, *(_fmt(result.summary[run][m]) for m in cond)] for run in result.rankings],
        )
    )
    for metric, tests in result.significance.items():
        rows = [
            [
                run,
                f"{t['delta']:+.4f}",
                f"[{t['ci_low']:+.4f}, {t['ci_high']:+.4f}]",
                _p(t["p_randomization"]),
                _p(t["p_bootstrap"]),
                f"{int(t['wins'])} / {int(t['ties'])} / {int(t['losses'])}",
            ]
            for run, t in tests.items()
        ]
        out.append(
            (
                f"Significance against {result.baseline} on {metric} "
                f"(paired, two-sided, {result.config.n_resamples} resamples, seed {result.config.seed})",
                ["run", "delta", "95% CI", "p randomisation", "p bootstrap", "wins / ties / losses"],
                rows,
            )
        )
    if result.perturbation:
        kinds = list(result.perturbation)
        mk = f"ndcg@{k}"
        rows = []
        for run in next(iter(result.perturbation.values()))["runs"]:
            cells = [run, _fmt(result.summary[run][mk])]
            for kd in kinds:
                e = result.perturbation[kd]["runs"][run]
                change = round(e[mk] - result.summary[run][mk], 4) + 0.0  # no "-0.0000"
                cells.append(f"{e[mk]:.4f} ({change:+.4f})")
            rows.append(cells)
        changed = ", ".join(f"{kd}: {result.perturbation[kd]['changed']}" for kd in kinds)
        out.append(
            (
                f"Robustness: {mk} under perturbed queries (change in brackets; queries changed: {changed})",
                ["run", "original", *kinds],
                rows,
            )
        )
    skipped = result.queries.skipped
    rows = [
        [why, str(len(ids)), ", ".join(ids[:8]) + (" ..." if len(ids) > 8 else "")]
        for why, ids in skipped.items()
        if ids
    ]
    if rows:
        out.append(("Queries not scored or incomplete", ["reason", "count", "examples"], rows))
    return out


def _label(result: EvalResult, doc: str, qid: str) -> str:
    grade = result.queries.qrels[qid].get(doc)
    title = result.title_of(doc) or f"[{doc}]"
    title = " ".join(title.split())
    if len(title) > 90:
        title = title[:87] + "..."
    return f"({grade:g}) {title}" if grade is not None else f"(?) {title}"


def _movers(result: EvalResult, run: str) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """Queries with the largest gain and loss of ndcg@k against the baseline."""
    metric = f"ndcg@{result.config.k}"
    deltas = [
        (q, result.per_query[run][q][metric] - result.per_query[result.baseline][q][metric])
        for q in result.queries.qids
    ]
    helps = sorted((d for d in deltas if d[1] > 1e-12), key=lambda d: (-d[1], d[0]))[:TOP_QUERIES]
    hurts = sorted((d for d in deltas if d[1] < -1e-12), key=lambda d: (d[1], d[0]))[:TOP_QUERIES]
    return helps, hurts


def _query_text(result: EvalResult, qid: str) -> str:
    text = result.queries.texts.get(qid)
    image = result.queries.images.get(qid)
    if text and image:
        return f"{text} + photo {image.name}"
    return text or f"photo {image.name if image else '?'}"


def _side_by_side(result: EvalResult, run: str, qid: str) -> tuple[list[str], list[list[str]]]:
    base = [d for d, _ in result.rankings[result.baseline].get(qid, [])[:TOP_RESULTS]]
    mine = [d for d, _ in result.rankings[run].get(qid, [])[:TOP_RESULTS]]

    def cell(docs: list[str], i: int) -> str:
        if i < len(docs):
            return _label(result, docs[i], qid)
        return "(no results)" if i == 0 else ""

    rows = [[str(i + 1), cell(base, i), cell(mine, i)] for i in range(max(len(base), len(mine), 1))]
    return ["#", result.baseline, run], rows


# ====================================================================== writers
def _md_cell(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(_md_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return lines + [""]


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _intro(result: EvalResult) -> list[str]:
    m, c = result.meta, result.config
    return [
        f"Index `{m['index']}` ({m['items']} items, generation {m['generation']}), "
        f"re-ranker `{m['reranker']}`, configured fusion `{m['fusion']}`.",
        f"{m['queries_scored']} queries scored; candidates: **{c.candidates}**; gain = qrels grade (linear), "
        f"unjudged = 0; relevant means grade > {c.rel_threshold:g}; baseline **{result.baseline}** "
        f"(best single-source run on ndcg@{c.k} unless chosen).",
        f"Ranking took {m['seconds_ranking']} s ({m['ms_per_query']} ms per query for all runs together); "
        f"total {m['seconds_total']} s.",
    ]


PLOTS = (
    ("metrics.png", "Metrics per run"),
    ("winloss.png", "Per-query wins and losses against the baseline"),
    ("recall.png", "Recall at k"),
    ("perturb.png", "Robustness"),
)


def write_report(result: EvalResult, out_dir: Path) -> dict[str, Path]:
    """Write the PNG plots, ``report.md`` and ``report.html`` into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    k, depth = result.config.k, result.config.depth
    metric = f"ndcg@{k}"
    paths: dict[str, Path] = {}
    paths["plot:metrics"] = plot_metrics(
        result.summary,
        [metric, f"{metric}_condensed", f"mrr@{k}", f"recall@{depth}", f"map@{depth}"],
        out_dir / "metrics.png",
    )
    paths["plot:winloss"] = plot_win_loss(
        result.significance.get(metric, {}), result.baseline, metric, out_dir / "winloss.png"
    )
    paths["plot:recall"] = plot_recall(result.curves, out_dir / "recall.png")
    if result.perturbation:
        paths["plot:perturb"] = plot_perturbation(result.perturbation, metric, out_dir / "perturb.png")
    plots = [
        (name, caption) for name, caption in PLOTS if (out_dir / name).exists() and name != "perturb.png"
    ]
    if "plot:perturb" in paths:
        plots.append(PLOTS[-1])

    tables = _tables(result)
    md = ["# shopsearch evaluation", ""]
    for line in _intro(result):
        md += [line, ""]
    body = [
        "<h1>shopsearch evaluation</h1>",
        *(f"<p>{html.escape(s).replace('**', '')}</p>" for s in _intro(result)),
    ]
    for title, header, rows in tables:
        md += [f"## {title}", "", *_md_table(header, rows)]
        body += [f"<h2>{html.escape(title)}</h2>", _html_table(header, rows)]
    md += ["## Plots", ""]
    body.append("<h2>Plots</h2>")
    for name, caption in plots:
        md += [f"![{caption}]({name})", ""]
        data = base64.b64encode((out_dir / name).read_bytes()).decode()
        body.append(
            f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )

    md += [
        f"## Queries each run helps and hurts most against {result.baseline} ({metric})",
        "",
        f"Top {TOP_RESULTS} results side by side; (grade) from the qrels, (?) = unjudged.",
        "",
    ]
    body += [
        f"<h2>Queries each run helps and hurts most against {html.escape(result.baseline)} ({metric})</h2>",
        f"<p>Top {TOP_RESULTS} results side by side; (grade) from the qrels, (?) = unjudged.</p>",
    ]
    for run in result.rankings:
        if run == result.baseline:
            continue
        helps, hurts = _movers(result, run)
        md.append(f"### {run}")
        body.append(f"<h3>{html.escape(run)}</h3>")
        for label, movers in (("helps", helps), ("hurts", hurts)):
            md += ["", f"**{run} {label} most** ({len(movers)} queries)", ""]
            body.append(f"<h4>{html.escape(run)} {label} most ({len(movers)} queries)</h4>")
            for qid, delta in movers:
                base_v = result.per_query[result.baseline][qid][metric]
                head = (
                    f"{qid}: {_query_text(result, qid)} - {metric} {base_v:.3f} -> "
                    f"{base_v + delta:.3f} ({delta:+.3f})"
                )
                header, rows = _side_by_side(result, run, qid)
                md += [f"*{_md_cell(head)}*", "", *_md_table(header, rows)]
                body.append(
                    f"<details><summary>{html.escape(head)}</summary>{_html_table(header, rows)}</details>"
                )
    md_path = out_dir / "report.md"
    md_path.write_text("\n".join(md) + "\n", encoding="utf-8")
    html_path = out_dir / "report.html"
    html_path.write_text(_HTML.format(body="\n".join(body)), encoding="utf-8")
    paths["report:md"] = md_path
    paths["report:html"] = html_path
    return paths


_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>shopsearch evaluation</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }}
th, td {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }}
th {{ background: #f3f3f3; }}
img {{ max-width: 100%; }}
figure {{ margin: 1em 0; }}
details {{ margin: 0.3em 0; }}
summary {{ cursor: pointer; }}
</style></head>
<body>
{body}
</body></html>
"""
