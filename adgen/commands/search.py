"""`adgen ci ...`: the RARE search path: build the CI set, model and index; search; evaluate; serve HTTP."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from adgen.core.config import Settings, load_settings

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
console = Console(stderr=True)

ConfigOpt = Annotated[Path | None, typer.Option("--config", help="JSON or YAML settings file.")]
OutOpt = Annotated[Path | None, typer.Option(help="Build directory (default: <paths.index>/ci).")]


def _settings(config_file: Path | None) -> Settings:
    settings = load_settings(config_file)
    console.print_json(json.dumps(settings.masked()))
    return settings


def _out(settings: Settings, out: Path | None) -> Path:
    return out or settings.paths.index / "ci"


def _encoder(settings: Settings):  # type: ignore[no-untyped-def]
    from adgen.model.encoder import CachedEncoder, load_encoder

    return CachedEncoder(load_encoder(settings.model.encoder), settings.paths.embedding_cache)


def _fail(message: str) -> typer.Exit:
    console.print(f"[red]error:[/red] {message}")
    return typer.Exit(2)


@app.command()
def build(
    world: Annotated[Path | None, typer.Option(help="Synthetic world directory (default paths.world).")] = None,
    amazon: Annotated[Path | None, typer.Option(help="Amazon LC-Rec directory instead of a world.")] = None,
    out: OutOpt = None,
    epochs: Annotated[int, typer.Option(help="Format fine-tuning epochs.")] = 4,
    knowledge_epochs: Annotated[int, typer.Option(help="Knowledge-injection epochs.")] = 1,
    hidden: Annotated[int, typer.Option(help="CI model hidden size.")] = 128,
    layers: Annotated[int, typer.Option(help="CI model layers.")] = 2,
    merge: Annotated[bool, typer.Option(help="Merge near-duplicate CIs with the sentence encoder.")] = True,
    head_cache: Annotated[int, typer.Option(help="Head queries precomputed from the query log.")] = 200,
    llm_url: Annotated[
        str | None, typer.Option(help="Optional OpenAI-compatible base URL as extra CI teacher.")
    ] = None,
    llm_model: Annotated[str, typer.Option(help="Model name for --llm-url.")] = "gpt-4o-mini",
    every: Annotated[float, typer.Option(help="Rebuild every N seconds (periodic full rebuild); 0 = once.")] = 0.0,
    seed: Annotated[int, typer.Option(help="Seed for training and augmentation.")] = 0,
    config_file: ConfigOpt = None,
) -> None:
    """Catalogue -> CIs -> cleaned CI set -> two-stage CI model -> CIs for every ad -> index + head cache."""
    from adgen.search.ci_model import CIModelConfig

    settings = _settings(config_file)
    while True:
        model_config = CIModelConfig(
            format_epochs=epochs, knowledge_epochs=knowledge_epochs, hidden_size=hidden, num_layers=layers, seed=seed
        )
        report = _build_once(settings, world, amazon, out, model_config, merge, head_cache, llm_url, llm_model)
        typer.echo(json.dumps(report, indent=2))
        if every <= 0:
            return
        console.print(f"next rebuild in {every:.0f}s")
        time.sleep(every)


def _build_once(
    settings: Settings,
    world: Path | None,
    amazon: Path | None,
    out: Path | None,
    model_config: object,
    merge: bool,
    head_cache: int,
    llm_url: str | None,
    llm_model: str,
) -> dict[str, object]:
    from adgen.datasets import DatasetFormatError, load_amazon, load_query_labels, load_world
    from adgen.search.ci_data import CIDataError, OpenAICompatibleCISource
    from adgen.search.ci_pipeline import CIBuildConfig, build_search_index, split_queries

    try:
        if amazon is not None:
            dataset = load_amazon(amazon)
            train_queries, query_log = [], []
        else:
            world_dir = world or settings.paths.world
            dataset = load_world(world_dir)
            train_queries, _ = split_queries(load_query_labels(world_dir), CIBuildConfig().eval_share)
            query_log = _query_log(world_dir)
    except (DatasetFormatError, FileNotFoundError) as exc:
        raise _fail(str(exc)) from exc
    items = dataset.active_items()
    extra = None
    if llm_url:
        source = OpenAICompatibleCISource(llm_url, llm_model, api_key=os.environ.get("ADGEN_CI_LLM_API_KEY"))
        try:
            extra = {ad_id: source.propose(item) for ad_id, item in items.items()}
        except CIDataError as exc:
            raise _fail(str(exc)) from exc
    config = CIBuildConfig(
        model=model_config,
        head_cache_size=head_cache,
        beams=settings.model.beams,
    )
    embed = _encoder(settings).encode if merge else None
    report = build_search_index(
        items, _out(settings, out), config, train_queries, query_log, embed=embed, extra_proposals=extra
    )
    return report.model_dump()


def _query_log(world_dir: Path) -> list[str]:
    """Query texts from the world's search-queries events (the log the head cache is built from)."""
    path = world_dir / "events" / "search-queries.jsonl"
    if not path.is_file():
        return []
    with path.open() as f:
        return [json.loads(line).get("text", "") for line in f if line.strip()]


def _service(settings: Settings, out: Path | None, threads: int = 1):  # type: ignore[no-untyped-def]
    import torch

    from adgen.model.backends import BackendUnavailable
    from adgen.processors.query_retrieval import SearchConfig, SearchService
    from adgen.search.ci_index import CIError
    from adgen.search.ci_model import CIModelError

    torch.set_num_threads(threads)  # one thread answers faster than two on the shared, oversubscribed cores
    root = _out(settings, out)
    try:
        config = SearchConfig(beams=settings.model.beams)
        return SearchService.from_snapshot(root / "snapshots", root / "model", config, settings.model)  # model.backend
    except (CIError, CIModelError, BackendUnavailable) as exc:
        raise _fail(str(exc)) from exc


@app.command()
def search(
    query: Annotated[str, typer.Argument(help="Query text.")],
    out: OutOpt = None,
    top_n: Annotated[int, typer.Option(help="Ads to show.")] = 20,
    config_file: ConfigOpt = None,
) -> None:
    """Answer one query from the newest snapshot (head cache, else the CI model) and print it as JSON."""
    from adgen.processors.query_retrieval import QueryError

    service = _service(_settings(config_file), out)
    try:
        result = service.search(query, top_n=top_n)
    except QueryError as exc:
        raise _fail(f"{exc.reason} (HTTP {exc.status})") from exc
    typer.echo(result.model_dump_json(indent=2))


@app.command("eval")
def evaluate_cmd(
    world: Annotated[Path | None, typer.Option(help="World with queries/labels.jsonl (default paths.world).")] = None,
    out: OutOpt = None,
    min_grade: Annotated[int, typer.Option(help="Relevance grade that counts as relevant (2 exact, 1 related).")] = 2,
    result: Annotated[Path | None, typer.Option(help="JSON result file (default <paths.runs>/ci_eval.json).")] = None,
    config_file: ConfigOpt = None,
) -> None:
    """RARE-style retrieval vs BM25 vs dense on the held-out graded queries, in one run: HR@50/100/500,
    MAP, ACR, CIs per query. Prints a markdown table and writes JSON."""
    from adgen.datasets import load_query_labels, load_world
    from adgen.search.ci_eval import BM25Retriever, DenseRetriever, Retrieved, evaluate, markdown_table
    from adgen.search.ci_pipeline import CIBuildConfig, split_queries

    settings = _settings(config_file)
    world_dir = world or settings.paths.world
    dataset = load_world(world_dir)
    _, held_out = split_queries(load_query_labels(world_dir), CIBuildConfig().eval_share)
    items = dataset.active_items()
    service = _service(settings, out)
    service.head_cache.clear()  # measure the model path itself, not precomputed answers

    def rare(text: str) -> Retrieved:
        return rare_many([text])[0]

    def rare_many(texts: Sequence[str]) -> list[Retrieved]:
        answers = service.search_batch(list(texts))
        return [Retrieved(ads=[a.ad_id for a in r.ads], num_cis=len(r.cis)) for r in answers]

    encoder = _encoder(settings)
    methods = [
        ("RARE (CI model + CI index, batches of 64)", rare),
        ("BM25 (rank-bm25)", BM25Retriever(items)),
        ("dense (all-MiniLM-L6-v2)", DenseRetriever(items, lambda t: encoder.encode(t, progress=False))),
    ]
    reports = [
        evaluate(name, fn, held_out, min_grade=min_grade, retrieve_many=rare_many if fn is rare else None)
        for name, fn in methods
    ]
    table = markdown_table(reports)
    typer.echo(table)
    path = result or settings.paths.runs / "ci_eval.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "world": str(world_dir),
        "held_out_queries": len(held_out),
        "min_grade": min_grade,
        "ads": len(items),
        "index_version": service.index.version,
        "reports": [r.model_dump() for r in reports],
        "table": table,
    }
    path.write_text(json.dumps(payload, indent=2))
    console.print(f"wrote {path}")


@app.command()
def serve(
    out: OutOpt = None,
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 8088,
    config_file: ConfigOpt = None,
) -> None:
    """Serve `GET /search?q=...` over HTTP from the newest snapshot (standalone; the worker has its own)."""
    from aiohttp import web

    from adgen.processors.query_retrieval import aiohttp_app

    web.run_app(aiohttp_app(_service(_settings(config_file), out)), host=host, port=port)
