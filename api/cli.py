"""The ``shopsearch`` command line: index, search, serve, info, demo.

User errors (bad paths, bad settings, bad queries) print one clear line and exit 2; they never
show a stack trace. Usage mistakes print click's usage message and exit 2; Ctrl-C exits 130.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from shopsearch.errors import ConfigError, IndexNotFoundError, ShopSearchError
from shopsearch.settings import Settings, load_settings
from shopsearch.text import is_utf8

try:  # typer >= 0.29 ships its own copy of click and raises that copy's exceptions
    from typer._click import Command, Context, Parameter
    from typer._click.exceptions import ClickException
except ImportError:  # older typer: click itself
    from click import ClickException, Command, Context, Parameter

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Multimodal e-commerce search: index a catalog, search it by text or photo, serve it over HTTP.",
)

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_CATALOG = REPO_ROOT / "examples" / "sample_catalog" / "catalog.jsonl"

IndexOpt = Annotated[Path, typer.Option("--index", "-i", help="Index directory.")]
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="TOML settings file.")]


def _settings(config: Path | None, **overrides: Any) -> Settings:
    if config is not None and config.is_dir():
        raise ConfigError(f"--config {config} is a directory, not a TOML settings file")
    return load_settings(config, **overrides)


def _check_output_dir(path: Path, option: str, *inner: str) -> None:
    """Refuse an output folder that cannot be created or written to before any expensive work, so
    that a long build or training does not fail at its very end. ``inner``: existing subfolders the
    command writes into, checked too."""
    path = path.absolute()
    if not is_utf8(str(path)):  # faiss and tantivy take UTF-8 paths only
        raise ConfigError(f"{option} {os.fsencode(path)!r} is not a valid UTF-8 path")
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{option} {path} is a file, not a directory")
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"{option} {path}: {existing} is a file, not a directory")
    folders = [existing, *(path / name for name in inner if (path / name).is_dir())]
    for folder in folders:
        if not os.access(folder, os.W_OK | os.X_OK):
            raise ConfigError(f"{option} {path}: cannot write to {folder} (permission denied or read-only)")


def _parse_pairs(values: list[str] | None, what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for v in values or []:
        if "=" not in v:
            raise typer.BadParameter(f"{what} must look like NAME=VALUE, got {v!r}")
        key, value = v.split("=", 1)
        if not key.strip():  # '=Black' used to filter on an attribute named ''
            raise typer.BadParameter(f"{what} must look like NAME=VALUE with a non-empty NAME, got {v!r}")
        # 'color=' filtered on an empty value (--attr); --map has no use for one either: a column
        # mapped to '' is refused by the catalog reader and would vanish from an event file
        if not value.strip():
            raise typer.BadParameter(f"{what} must look like NAME=VALUE with a non-empty VALUE, got {v!r}")
        out[key.strip()] = value.strip()
    return out


def _check_category(category: str | None) -> None:
    """Refuse a --category with no non-empty part between its '>' separators ('>>>', '', ' '):
    it used to filter nothing, so that every category matched."""
    from indexer.product import normalize_category

    if category is not None and not normalize_category(category):
        raise typer.BadParameter(
            f"--category {category!r} names no category: give a path such as 'Men > Tops'"
        )


def _read_image_arg(image: Path, limit: int) -> bytes:
    """The --image file, at most ``limit`` bytes (the API's upload limit, max_upload_bytes): a
    device such as /dev/zero or a huge file is refused instead of read until memory runs out."""
    try:
        with open(image, "rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise ShopSearchError(f"cannot read --image {image}: {exc.strerror}") from None
    if len(data) > limit:
        raise ShopSearchError(
            f"--image {image} is larger than the limit of {limit:,} bytes (setting max_upload_bytes)"
        )
    return data


@app.command()
def index(
    catalogs: Annotated[list[Path], typer.Argument(help="Catalog files: .jsonl, .csv or .parquet.")],
    index_dir: IndexOpt = Path("index"),
    config: ConfigOpt = None,
    field_map: Annotated[
        list[str] | None, typer.Option("--map", help="Map your column to ours, e.g. --map name=title.")
    ] = None,
    media_root: Annotated[
        list[Path] | None,
        typer.Option("--media-root", help="Folder images/videos may come from (repeatable)."),
    ] = None,
    text_model: Annotated[str | None, typer.Option(help="sentence-transformers model path or name.")] = None,
    image_model: Annotated[str | None, typer.Option(help="'efficientnet-lite0' or 'open_clip:ARCH'.")] = None,
    image_pretrained: Annotated[str | None, typer.Option(help="Checkpoint path for open_clip.")] = None,
    vector_index: Annotated[str | None, typer.Option(help="auto, flat, hnsw or ivfpq.")] = None,
    lexical_backend: Annotated[
        str | None, typer.Option(help="tantivy (embedded, default) or opensearch (see docs/opensearch.md).")
    ] = None,
    vector_backend: Annotated[
        str | None,
        typer.Option(help="faiss (in process, default) or opensearch (k-NN plugin, see docs/opensearch.md)."),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Build a new index generation from catalog files (bad rows are reported and skipped)."""
    settings = _settings(
        config,
        index_dir=index_dir,
        text_model=text_model,
        image_model=image_model,
        image_pretrained=image_pretrained,
        vector_index=vector_index,
        lexical_backend=lexical_backend,
        vector_backend=vector_backend,
        media_roots=[p.resolve() for p in media_root] if media_root else None,
    )
    _check_output_dir(settings.index_dir, "--index", "generations")
    from indexer.store import build_index

    result = build_index(
        catalogs,
        settings.index_dir,
        settings,
        field_map=_parse_pairs(field_map, "--map") or None,
        progress=not quiet,
    )
    typer.echo(result.report.summary())
    c = result.counts
    typer.echo(
        f"indexed {c['items']} items ({c['text_vectors']} text, {c['image_vectors']} image, "
        f"{c['video_vectors']} video vectors) into {result.path} in {result.seconds:.1f} s; "
        f"encoded {result.encoded}; report: {settings.index_dir / 'ingest_report.json'}"
    )


@app.command()
def search(
    query: Annotated[str, typer.Argument(help="Query text ('' for an image-only search).")] = "",
    index_dir: IndexOpt = Path("index"),
    config: ConfigOpt = None,
    image: Annotated[Path | None, typer.Option("--image", help="Photo to search with.")] = None,
    k: Annotated[int, typer.Option("-k", help="Results per page.")] = 10,
    offset: Annotated[int, typer.Option(help="Skip this many results.")] = 0,
    category: Annotated[str | None, typer.Option(help="Category path filter, e.g. 'Men > Tops'.")] = None,
    brand: Annotated[list[str] | None, typer.Option(help="Brand filter (repeatable: any of).")] = None,
    price_min: Annotated[float | None, typer.Option()] = None,
    price_max: Annotated[float | None, typer.Option()] = None,
    attr: Annotated[
        list[str] | None, typer.Option(help="Attribute equality, NAME=VALUE (repeatable).")
    ] = None,
    explain: Annotated[bool, typer.Option(help="Show per-source ranks and scores.")] = False,
    exact: Annotated[
        bool, typer.Option("--exact", help="Search the words as typed (no spelling correction).")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Search an index by text, photo, or both."""
    from indexer.filters import Filters
    from reranker.pipeline import SearchPipeline, SearchRequest

    _check_category(category)
    settings = _settings(config, index_dir=index_dir)
    filters = Filters.from_dict(
        {
            "category": category,
            "brands": brand or None,
            "price_min": price_min,
            "price_max": price_max,
            "attributes": _parse_pairs(attr, "--attr"),
        }
    )
    image_bytes = None
    if image is not None:
        image_bytes = _read_image_arg(image, settings.max_upload_bytes)
    pipeline = SearchPipeline.open(settings.index_dir, settings)
    resp = pipeline.search(
        SearchRequest(
            text=query or None,
            image=image_bytes,
            image_name=f"--image {image}" if image is not None else None,
            k=k,
            offset=offset,
            filters=filters,
            explain=explain,
            spell_correction=False if exact else None,
        )
    )
    if as_json:
        typer.echo(json.dumps(response_to_dict(resp), ensure_ascii=False, indent=2))
        return
    typer.echo(f"{resp.total} results in {resp.took_ms:.1f} ms")
    if resp.correction is not None and resp.correction.changed:
        typer.echo(f"showing results for: {resp.correction.text}  (--exact searches {query!r} as typed)")
    if resp.correction is not None and resp.correction.suggestion:
        typer.echo(f"did you mean: {resp.correction.suggestion}")
    for i, r in enumerate(resp.results, resp.offset + 1):
        p = r.product
        price = f"  ${p.price:,.2f}" if p.price is not None else ""
        label = p.title or f"(photo-only item {p.id})"
        typer.echo(f"{i:>3}. [{p.id}] {label}{price}  {p.brand}  <{p.category}>")
        if explain and r.explain:
            typer.echo("      " + "  ".join(f"{k}={v}" for k, v in r.explain.items()))


def response_to_dict(resp: Any) -> dict[str, Any]:
    return {
        "total": resp.total,
        "offset": resp.offset,
        "k": resp.k,
        "took_ms": resp.took_ms,
        **resp.spelling_fields(),
        "results": [
            {
                "id": r.id,
                "score": r.score,
                **r.product.to_dict(),
                **({"explain": r.explain} if r.explain else {}),
            }
            for r in resp.results
        ],
        "facets": resp.facets,
    }


@app.command()
def info(index_dir: IndexOpt = Path("index"), config: ConfigOpt = None) -> None:
    """Show what the HTTP /info shows: the manifest and live counts of an index, the re-ranker
    that would serve it (and why a checkpoint on disk would not) and the CF status."""
    from reranker.pipeline import SearchPipeline

    settings = _settings(config, index_dir=index_dir)
    # the text and image encoders load on first use, which info never makes
    pipeline = SearchPipeline.open(settings.index_dir, settings)
    try:
        typer.echo(json.dumps(pipeline.info(), indent=2, default=str))
    finally:
        pipeline.close()


@app.command()
def serve(
    index_dir: IndexOpt = Path("index"),
    config: ConfigOpt = None,
    host: Annotated[str | None, typer.Option(help="Bind address.")] = None,
    port: Annotated[int | None, typer.Option(help="Port.")] = None,
) -> None:
    """Serve the HTTP API and the web page."""
    settings = _settings(config, index_dir=index_dir, host=host, port=port)
    _serve(settings)


def _serve(settings: Settings) -> None:
    import uvicorn

    from api.app import create_app
    from reranker.pipeline import SearchPipeline

    pipeline = SearchPipeline.open(settings.index_dir, settings)
    pipeline.index.encoders.text.encode_query("warm up")  # first query should not pay model loading
    typer.echo(
        f"serving {pipeline.index.info()['live']['items']} items at http://{settings.host}:{settings.port}/ "
        f"(API docs at /docs)"
    )
    uvicorn.run(
        create_app(pipeline, settings=settings),
        host=settings.host,
        port=settings.port,
        log_level="info",
        access_log=settings.access_log,  # off by default: /metrics counts requests at a fraction of the cost
    )


@app.command()
def demo(
    index_dir: IndexOpt = Path("index"),
    catalog: Annotated[Path, typer.Option(help="Catalog to index.")] = SAMPLE_CATALOG,
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    serve_after: Annotated[
        bool, typer.Option("--serve/--no-serve", help="Start the web server after indexing.")
    ] = True,
) -> None:
    """Index the bundled sample catalog, run a few searches, then serve it."""
    from indexer.store import build_index
    from reranker.pipeline import SearchPipeline, SearchRequest

    if not catalog.exists():
        raise ShopSearchError(
            f"catalog not found at {catalog} (run from a clone of the repo, or pass --catalog)"
        )
    settings = _settings(None, index_dir=index_dir, port=port)
    _check_output_dir(settings.index_dir, "--index", "generations")
    result = build_index([catalog], settings.index_dir, settings)
    typer.echo(result.report.summary())
    typer.echo(f"indexed {result.counts['items']} items in {result.seconds:.1f} s into {result.path}")
    pipeline = SearchPipeline.open(settings.index_dir, settings)
    for q in ("black hoodie", "waterproof boots", "ceramic mug", "wterproof bots"):
        resp = pipeline.search(SearchRequest(text=q, k=3))
        typer.echo(f"\n'{q}': {resp.total} results in {resp.took_ms:.1f} ms")
        if resp.correction is not None and resp.correction.changed:
            typer.echo(f"   (showing results for '{resp.correction.text}')")
        for r in resp.results:
            typer.echo(f"   [{r.id}] {r.product.title}")
    pipeline.close()
    if serve_after:
        _serve(settings)


from api.eval_cli import register as _register_eval  # noqa: E402 - keeps eval's imports out of startup

_register_eval(app)


# --- collaborative filtering
events_app = typer.Typer(no_args_is_help=True, help="Interaction events (views, clicks, carts, purchases).")
app.add_typer(events_app, name="events")

EventsOpt = Annotated[
    list[Path] | None,
    typer.Option("--events", "-e", help="Event file: .jsonl, .csv, .tsv or .parquet (repeatable)."),
]
EventMapOpt = Annotated[
    list[str] | None, typer.Option("--map", help="Map your column to ours, e.g. --map sku=item_id.")
]
CheckItemsOpt = Annotated[
    bool,
    typer.Option(
        "--check-items/--no-check-items", help="Refuse events whose item is not in the index's catalog."
    ),
]


def _import_events(
    settings: Settings,
    files: list[Path],
    field_map: list[str] | None,
    check_items: bool,
    quiet: bool,
    again: bool = False,
) -> None:
    _check_output_dir(settings.index_dir, "--index", "events")
    from indexer.interactions import EventStore
    from indexer.store import LiveIndex, current_generation

    _check_events_home(settings.index_dir)
    known = None
    if check_items and current_generation(settings.index_dir) is not None:
        table = LiveIndex(settings.index_dir, settings).table
        known = lambda item_id: table.get(item_id) is not None  # noqa: E731
    with EventStore(settings.index_dir, settings) as store:
        report = store.import_files(
            files,
            known_item=known,
            field_map=_parse_pairs(field_map, "--map") or None,
            progress=not quiet,
            again=again,
        )
        total = store.count()
    typer.echo(report.summary())
    typer.echo(f"event store {settings.index_dir / 'events'} now holds {total} events")


def _check_events_home(index_dir: Path) -> None:
    """Events belong to an index: refuse a folder that holds neither an index nor an event store,
    as the commands that read an index do, instead of creating it (a mistyped --index did)."""
    from indexer.interactions import EVENTS_DIR
    from indexer.store import require_generation

    if not (index_dir / EVENTS_DIR).is_dir():
        require_generation(index_dir)


@events_app.command("import")
def events_import(
    files: Annotated[list[Path], typer.Argument(help="Event files: .jsonl, .csv, .tsv or .parquet.")],
    index_dir: IndexOpt = Path("index"),
    config: ConfigOpt = None,
    field_map: EventMapOpt = None,
    check_items: CheckItemsOpt = True,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
    again: Annotated[
        bool,
        typer.Option(
            "--again",
            help="Store a file that was imported before a second time (its events then count twice).",
        ),
    ] = False,
) -> None:
    """Validate and append events to the index's durable event store (bad events are reported).
    A file already imported is skipped (a retry would count its events twice); an import cut short
    goes on where it stopped when the same file is imported again."""
    _import_events(_settings(config, index_dir=index_dir), files, field_map, check_items, quiet, again)


@events_app.command("stats")
def events_stats(index_dir: IndexOpt = Path("index"), config: ConfigOpt = None) -> None:
    """Counts of the stored events by type, and their time range."""
    from indexer.interactions import EventStore

    settings = _settings(config, index_dir=index_dir)
    if not (settings.index_dir / "events").is_dir():
        raise IndexNotFoundError(f"no event store in {settings.index_dir}: run 'shopsearch events import'")
    with EventStore(settings.index_dir, settings) as store:
        typer.echo(json.dumps(store.stats(), indent=2))


@app.command("train-cf")
def train_cf(
    index_dir: IndexOpt = Path("index"),
    config: ConfigOpt = None,
    events: EventsOpt = None,
    field_map: EventMapOpt = None,
    check_items: CheckItemsOpt = True,
    model: Annotated[str | None, typer.Option(help="als (implicit) or gmf (torch).")] = None,
    tune: Annotated[
        bool | None, typer.Option("--tune/--no-tune", help="Tune blend weights on the newest 10%.")
    ] = None,
    cold_start: Annotated[
        bool, typer.Option("--cold-start/--no-cold-start", help="Map content vectors of cold items.")
    ] = True,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Import --events files (if any), then train the CF models on every stored event and publish
    them; a running server picks them up within a second (or on POST /admin/reload)."""
    from indexer.cf import train_cf as run_training

    settings = _settings(config, index_dir=index_dir, cf_model=model, cf_tune=tune)
    if events:
        _import_events(settings, events, field_map, check_items, quiet)
    else:  # the event store would create a mistyped --index
        _check_output_dir(settings.index_dir, "--index", "events")
        _check_events_home(settings.index_dir)
    report = run_training(settings.index_dir, settings, progress=not quiet, cold_start=cold_start)
    typer.echo(report.summary())
    typer.echo(f"published {report.generation} at {report.path}")


# --- end collaborative filtering


# --- fusion model
@app.command("train-fusion")
def train_fusion_cmd(
    index_dir: IndexOpt = Path("index"),
    config: ConfigOpt = None,
    queries: Annotated[
        Path | None, typer.Option(help="TRAINING queries (qid<TAB>text); never your test queries.")
    ] = None,
    qrels: Annotated[Path | None, typer.Option(help="TREC qrels for --queries (qid 0 docid grade).")] = None,
    exclude_ids: Annotated[
        Path | None, typer.Option(help="File of item ids (one a line) never to train on, e.g. held out.")
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="Most epochs (early stopping may end sooner).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Pairs per step.")] = None,
    photo_views: Annotated[
        int | None, typer.Option(help="Augmented photo views to encode (and cache) per item; 0: none.")
    ] = None,
    seed: Annotated[
        int | None, typer.Option(min=0, max=2**32 - 1, help="Random seed (runs are deterministic).")
    ] = None,
    max_minutes: Annotated[float | None, typer.Option(help="Stop training after this long.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Train the multimodal fusion model on the index's stored vectors (nothing is re-encoded) and
    publish fused vectors for the live generation; later builds and upserts use it too."""
    from dataclasses import replace

    from indexer.fusion.train import TrainConfig, train_fusion

    settings = _settings(config, index_dir=index_dir)
    if (queries is None) != (qrels is None):
        raise typer.BadParameter("--queries and --qrels go together")
    texts = judgments = None
    if queries is not None and qrels is not None:
        from evaluation.qrels import read_qrels, read_queries

        texts, judgments = read_queries(queries), read_qrels(qrels)
    excluded = None
    if exclude_ids is not None:
        try:
            excluded = {line.strip() for line in exclude_ids.read_text(encoding="utf-8").splitlines()}
        except OSError as exc:
            raise typer.BadParameter(f"cannot read --exclude-ids {exclude_ids}: {exc}") from None
        excluded.discard("")
    cfg = TrainConfig.from_settings(settings)
    overrides = {"epochs": epochs, "batch_size": batch_size, "photo_views": photo_views, "seed": seed}
    cfg = replace(cfg, **{k: v for k, v in overrides.items() if v is not None}, max_minutes=max_minutes)
    result = train_fusion(
        settings.index_dir,
        settings,
        queries=texts,
        qrels=judgments,
        exclude_ids=excluded,
        config=cfg,
        progress=not quiet,
        log=typer.echo,
    )
    pub = result.publish
    typer.echo(
        f"best epoch {result.best_epoch}: validation {result.val_best.get('score', 0):.4f} "
        f"(untrained {result.val_start.get('score', 0):.4f}); model in {result.model_dir}; "
        f"{pub.get('count', 0)} fused vectors for {pub.get('generation')} ({pub.get('version')}) "
        f"in {result.seconds:.0f} s"
    )


# --- end fusion model


# --- re-ranker
@app.command("train-reranker")
def train_reranker_cmd(
    queries: Annotated[Path | None, typer.Option(help="TRAINING queries (qid<TAB>text).")] = None,
    qrels: Annotated[Path | None, typer.Option(help="TREC qrels for --queries (qid 0 docid grade).")] = None,
    from_events: Annotated[
        bool,
        typer.Option(
            "--from-events",
            help="Labels from the index's stored clicks, carts and purchases instead of --queries/--qrels.",
        ),
    ] = False,
    label_share: Annotated[
        float | None,
        typer.Option(
            help="--from-events: the newest share of the events that gives the labels (default 0.2); the CF "
            "features of the training lists come from a CF model fitted on the rest."
        ),
    ] = None,
    index_dir: IndexOpt = Path("index"),
    config: ConfigOpt = None,
    split_train_only: Annotated[
        bool, typer.Option("--split-train-only", help="Keep only the train half of the hash split.")
    ] = False,
    model: Annotated[str, typer.Option(help="'transformer' or 'lambdamart' (the baseline).")] = "transformer",
    epochs: Annotated[int, typer.Option(help="Most epochs (early stopping may end sooner).")] = 8,
    seed: Annotated[
        int, typer.Option(min=0, max=2**32 - 1, help="Random seed (runs are deterministic).")
    ] = 0,
    augment: Annotated[bool, typer.Option(help="Query perturbations, list crops, dropped features.")] = True,
    adversarial: Annotated[str, typer.Option(help="'fgm', 'pgd' or 'none'.")] = "fgm",
    cross_attention: Annotated[bool, typer.Option(help="Candidates attend to each other.")] = True,
    refit: Annotated[
        bool,
        typer.Option(
            help="Transformer: once validation has chosen the epochs, train again on training + "
            "validation queries (about twice the training time)."
        ),
    ] = False,
    threads: Annotated[int, typer.Option(min=1, help="torch threads.")] = 1,
    out: Annotated[Path | None, typer.Option(help="Checkpoint folder (default: INDEX/models/reranker).")] = (
        None
    ),
    cache: Annotated[Path | None, typer.Option(help="Folder to cache candidate lists in.")] = None,
    fusion_folds: Annotated[
        int,
        typer.Option(
            min=1,
            help="Cross-fit the fused source over this many folds (one fusion training each): use it "
            "when the index's fusion model was trained on these same judgments.",
        ),
    ] = 1,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Train the listwise re-ranker on judged queries or on stored interactions; a running server
    swaps it in by itself."""
    from reranker.train import TrainConfig, train_reranker

    if model not in ("transformer", "lambdamart"):
        raise typer.BadParameter(f"--model must be transformer or lambdamart, got {model!r}")
    if label_share is not None and not from_events:
        raise typer.BadParameter("--label-share applies to --from-events only")
    settings = _settings(config, index_dir=index_dir)
    for folder, option in ((out, "--out"), (cache, "--cache")):
        if folder is not None:
            _check_output_dir(folder, option)
    cfg = TrainConfig(
        epochs=epochs,
        seed=seed,
        augment=augment,
        adversarial=adversarial,  # type: ignore[arg-type] - TrainConfig validates it
        cross_attention=cross_attention,
        refit=refit,
        threads=threads,
    )
    run = train_reranker(
        settings.index_dir,
        queries,
        qrels,
        settings=settings,
        cfg=cfg,
        kind=model,  # type: ignore[arg-type]
        split_train_only=split_train_only,
        out=out,
        cache=cache,
        fusion_folds=fusion_folds,
        from_events=from_events,
        label_share=0.2 if label_share is None else label_share,
        progress=not quiet,
        log=typer.echo,
    )
    typer.echo(f"{run.kind} re-ranker in {run.model_dir} (best epoch {run.best_epoch}, {run.seconds})")


# --- end re-ranker


def _check_utf8(callback: Callable[..., Any] | None) -> Callable[..., Any]:
    """Wrap a parameter callback so that text which was not valid UTF-8 is refused by name."""

    def check(ctx: Context, param: Parameter, value: Any) -> Any:
        for v in value if isinstance(value, list | tuple) else [value]:
            if isinstance(v, str) and not is_utf8(v):
                raw = v.encode("utf-8", "surrogateescape")
                raise typer.BadParameter(f"not valid UTF-8: {raw!r}", ctx=ctx, param=param)
        return value if callback is None else callback(ctx, param, value)

    return check


def _refuse_invalid_utf8(command: Command) -> None:
    """Python decodes undecodable argv bytes to lone surrogates, which crash deep inside the
    encoders and filters; refuse them in every text parameter of every command, in one place.
    Paths are left alone: such bytes are legal in file names."""
    for param in command.params:
        param.callback = _check_utf8(param.callback)
    for sub in getattr(command, "commands", {}).values():
        _refuse_invalid_utf8(sub)


def _os_error_line(exc: OSError) -> str:
    """``PATH: reason`` for an OSError about a file (a path the user gave, or one inside it)."""
    path = str(exc.filename) if exc.filename2 is None else f"{exc.filename} -> {exc.filename2}"
    return f"{path}: {exc.strerror or exc}"


def main() -> None:
    """Console entry point: user errors, usage mistakes and unusable paths print a clear message and
    exit 2, Ctrl-C exits 130; only a bug shows a stack trace."""
    command = typer.main.get_command(app)
    _refuse_invalid_utf8(command)
    try:
        code = command.main(standalone_mode=False)  # returns Ctrl-C as 130 rather than raising it
    except ShopSearchError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        code = 130
    except typer.Exit as exc:
        code = exc.exit_code
    except ClickException as exc:  # unknown option or command, missing or bad value
        if (
            isinstance(exc, typer.BadParameter)
            and exc.ctx is None
            and exc.param is None
            and exc.param_hint is None
        ):
            typer.echo(f"error: {exc.message}", err=True)  # a command's own check: its message is enough
        else:
            exc.show()
        sys.exit(exc.exit_code)
    except OSError as exc:
        if exc.filename is None:
            raise
        typer.echo(f"error: {_os_error_line(exc)}", err=True)
        sys.exit(2)
    if code == 130:
        typer.echo("interrupted", err=True)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
