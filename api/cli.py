"""The ``shopsearch`` command line: index, search, serve, info, demo.

User errors (bad paths, bad settings, bad queries) print one clear line and exit 2; they never
show a stack trace.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from shopsearch.errors import ShopSearchError
from shopsearch.settings import Settings, load_settings

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
    return load_settings(config, **overrides)


def _parse_pairs(values: list[str] | None, what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for v in values or []:
        if "=" not in v:
            raise typer.BadParameter(f"{what} must look like NAME=VALUE, got {v!r}")
        key, value = v.split("=", 1)
        out[key.strip()] = value.strip()
    return out


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
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Build a new index generation from catalog files (bad rows are reported and skipped)."""
    from indexer.store import build_index

    settings = _settings(
        config,
        index_dir=index_dir,
        text_model=text_model,
        image_model=image_model,
        image_pretrained=image_pretrained,
        vector_index=vector_index,
        media_roots=[p.resolve() for p in media_root] if media_root else None,
    )
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
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Search an index by text, photo, or both."""
    from indexer.filters import Filters
    from reranker.pipeline import SearchPipeline, SearchRequest

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
        try:
            image_bytes = image.read_bytes()
        except OSError as exc:
            raise ShopSearchError(f"cannot read --image {image}: {exc.strerror}") from None
    pipeline = SearchPipeline.open(settings.index_dir, settings)
    resp = pipeline.search(
        SearchRequest(
            text=query or None, image=image_bytes, k=k, offset=offset, filters=filters, explain=explain
        )
    )
    if as_json:
        typer.echo(json.dumps(response_to_dict(resp), ensure_ascii=False, indent=2))
        return
    typer.echo(f"{resp.total} results in {resp.took_ms:.1f} ms")
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
    """Show the manifest and live counts of an index."""
    from indexer.store import LiveIndex

    settings = _settings(config, index_dir=index_dir)
    live = LiveIndex(settings.index_dir, settings)
    typer.echo(json.dumps(live.info(), indent=2, default=str))


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
        create_app(pipeline, settings=settings), host=settings.host, port=settings.port, log_level="info"
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
    result = build_index([catalog], settings.index_dir, settings)
    typer.echo(result.report.summary())
    typer.echo(f"indexed {result.counts['items']} items in {result.seconds:.1f} s into {result.path}")
    pipeline = SearchPipeline.open(settings.index_dir, settings)
    for q in ("black hoodie", "waterproof boots", "ceramic mug"):
        resp = pipeline.search(SearchRequest(text=q, k=3))
        typer.echo(f"\n'{q}': {resp.total} results in {resp.took_ms:.1f} ms")
        for r in resp.results:
            typer.echo(f"   [{r.id}] {r.product.title}")
    pipeline.close()
    if serve_after:
        _serve(settings)


from api.eval_cli import register as _register_eval  # noqa: E402 - keeps eval's imports out of startup

_register_eval(app)


def main() -> None:
    """Console entry point: map user errors to one line on stderr and exit code 2."""
    try:
        app(standalone_mode=False)
    except ShopSearchError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        sys.exit(2)
    except typer.Abort:
        sys.exit(130)
    except KeyboardInterrupt:
        sys.exit(130)
    except (typer.BadParameter, typer.Exit) as exc:
        if isinstance(exc, typer.Exit):
            sys.exit(exc.exit_code)
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except Exception as exc:  # click usage errors
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise


if __name__ == "__main__":
    main()
