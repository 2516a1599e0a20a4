"""`adgen ci ...`: the RARE search path: build the CI set, model and index; search; evaluate; experiment; serve HTTP."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
import yaml
from rich.console import Console

from adgen.core.config import Settings, load_settings

if TYPE_CHECKING:
    from adgen.core.catalogue import Item
    from adgen.search.ci_pipeline import CIBuildConfig
    from adgen.search.query_log import QueryLog

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


def _query_encoder(settings: Settings):  # type: ignore[no-untyped-def]
    """The sentence encoder without the disk cache: the dense baseline's latency includes encoding the query."""
    from adgen.model.encoder import load_encoder

    encoder = load_encoder(settings.model.encoder)
    return lambda texts: encoder.encode(texts, progress=False)


def _fail(message: str) -> typer.Exit:
    console.print(f"[red]error:[/red] {message}")
    return typer.Exit(2)


WorldOpt = Annotated[Path | None, typer.Option(help="Synthetic world directory (default paths.world).")]
ItemsOpt = Annotated[
    Path | None, typer.Option("--items", help="Your catalogue: items JSONL (docs/data-formats.md, section 3).")
]
LogOpt = Annotated[
    Path | None,
    typer.Option("--query-log", help="Your labelled query log JSONL (docs/data-formats.md, section 4)."),
]
AmazonOpt = Annotated[Path | None, typer.Option(help="Amazon LC-Rec directory as the catalogue.")]


def load_search_data(
    settings: Settings,
    world: Path | None = None,
    items_path: Path | None = None,
    query_log_path: Path | None = None,
    amazon: Path | None = None,
) -> tuple[dict[str, Item], QueryLog | None, str]:
    """(catalogue, query log, description) from your own files, the Amazon data or a synthetic world.

    A world brings its own query log (its searches and labels) unless `--query-log` names another one.
    """
    from adgen.datasets import load_amazon, load_items_jsonl, load_world
    from adgen.search.query_log import load_query_log, world_query_log

    if items_path is not None:
        items = load_items_jsonl(items_path)
        source = str(items_path)
    elif amazon is not None:
        items = load_amazon(amazon).active_items()
        source = str(amazon)
    else:
        world_dir = world or settings.paths.world
        items = load_world(world_dir).active_items()
        source = str(world_dir)
        if query_log_path is None:
            return items, world_query_log(world_dir, items), source
    log = load_query_log(query_log_path, items) if query_log_path is not None else None
    return items, log, source


def _build_config(file: Path | None, overrides: dict[str, object], model_overrides: dict[str, object]) -> CIBuildConfig:
    from adgen.search.ci_pipeline import CIBuildConfig

    raw: dict[str, Any] = {}
    if file is not None:
        text = file.read_text()
        raw = yaml.safe_load(text) if file.suffix in {".yaml", ".yml"} else json.loads(text)
    config = CIBuildConfig.model_validate(raw)
    model = config.model.model_copy(update={k: v for k, v in model_overrides.items() if v is not None})
    return config.model_copy(update={"model": model, **{k: v for k, v in overrides.items() if v is not None}})


@app.command()
def build(
    world: WorldOpt = None,
    items_path: ItemsOpt = None,
    query_log_path: LogOpt = None,
    amazon: AmazonOpt = None,
    out: OutOpt = None,
    build_config: Annotated[
        Path | None, typer.Option(help="JSON/YAML with CIBuildConfig fields (the flags below override it).")
    ] = None,
    epochs: Annotated[
        int | None, typer.Option(help="Most format fine-tuning epochs (the best on validation is kept).")
    ] = None,
    knowledge_epochs: Annotated[int | None, typer.Option(help="Knowledge-injection epochs.")] = None,
    hidden: Annotated[int | None, typer.Option(help="CI model hidden size.")] = None,
    layers: Annotated[int | None, typer.Option(help="CI model layers.")] = None,
    merge: Annotated[bool, typer.Option(help="Merge near-duplicate CIs with the sentence encoder.")] = True,
    head_cache: Annotated[int | None, typer.Option(help="Head queries precomputed from the query log.")] = None,
    tune: Annotated[bool, typer.Option(help="Choose the serving settings on validation queries.")] = True,
    llm_url: Annotated[
        str | None, typer.Option(help="Optional OpenAI-compatible base URL as extra CI teacher.")
    ] = None,
    llm_model: Annotated[str, typer.Option(help="Model name for --llm-url.")] = "gpt-4o-mini",
    every: Annotated[float, typer.Option(help="Rebuild every N seconds (periodic full rebuild); 0 = once.")] = 0.0,
    seed: Annotated[int | None, typer.Option(help="Seed for training, augmentation and the split.")] = None,
    config_file: ConfigOpt = None,
) -> None:
    """Catalogue (+ labelled query log) -> CI set -> two-stage CI model -> CIs for every ad -> index ->
    serving settings tuned on validation -> head cache -> snapshot."""
    settings = _settings(config_file)
    config = _build_config(
        build_config,
        {"head_cache_size": head_cache, "tune": tune},
        {
            "format_epochs": epochs,
            "knowledge_epochs": knowledge_epochs,
            "hidden_size": hidden,
            "num_layers": layers,
            "seed": seed,
        },
    )
    if seed is not None:
        config = config.model_copy(update={"split": config.split.model_copy(update={"seed": seed})})
    while True:
        data = (world, items_path, query_log_path, amazon)
        report = _build_once(settings, data, out, config, merge, llm_url, llm_model)
        typer.echo(json.dumps({k: v for k, v in report.items() if k != "tuning"}, indent=2))
        if every <= 0:
            return
        console.print(f"next rebuild in {every:.0f}s")
        time.sleep(every)


def _build_once(
    settings: Settings,
    data: tuple[Path | None, Path | None, Path | None, Path | None],
    out: Path | None,
    config: CIBuildConfig,
    merge: bool,
    llm_url: str | None,
    llm_model: str,
) -> dict[str, object]:
    from adgen.datasets import DatasetFormatError
    from adgen.search.ci_data import CIDataError, OpenAICompatibleCISource
    from adgen.search.ci_pipeline import build_search_index
    from adgen.search.query_log import QueryLogError

    try:
        items, query_log, _ = load_search_data(settings, *data)
    except (DatasetFormatError, QueryLogError, FileNotFoundError) as exc:
        raise _fail(str(exc)) from exc
    extra = None
    if llm_url:
        source = OpenAICompatibleCISource(llm_url, llm_model, api_key=os.environ.get("ADGEN_CI_LLM_API_KEY"))
        try:
            extra = {ad_id: source.propose(item) for ad_id, item in items.items()}
        except CIDataError as exc:
            raise _fail(str(exc)) from exc
    embed = _encoder(settings).encode if merge else None
    report = build_search_index(items, _out(settings, out), config, query_log, embed=embed, extra_proposals=extra)
    return report.model_dump()


def _service(settings: Settings, out: Path | None, threads: int = 1):  # type: ignore[no-untyped-def]
    import torch

    from adgen.model.backends import BackendUnavailable
    from adgen.processors.query_retrieval import SearchService
    from adgen.search.ci_index import CIError
    from adgen.search.ci_model import CIModelError

    torch.set_num_threads(threads)  # one thread answers faster than two on the shared, oversubscribed cores
    root = _out(settings, out)
    try:
        # the serving settings the build chose on validation, decoded on model.backend
        return SearchService.from_build(root, settings.model)
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


ResultOpt = Annotated[Path | None, typer.Option(help="JSON result file (default <paths.runs>/ci_eval.json).")]


@app.command("eval")
def evaluate_cmd(
    world: WorldOpt = None,
    items_path: ItemsOpt = None,
    query_log_path: LogOpt = None,
    amazon: AmazonOpt = None,
    out: OutOpt = None,
    result: ResultOpt = None,
    split: Annotated[str, typer.Option(help="Which split of the build to score: test (once, at the end) or valid.")] = (
        "test"
    ),
    config_file: ConfigOpt = None,
) -> None:
    """The CI path as served, the pure CI path, BM25, dense and hybrid on the build's never-seen test queries,
    one process, one table: HR@10/50, NDCG@10, MAP, ACR, CIs/query, latency. Writes JSON."""
    from adgen.commands.search_quality import evaluate_build
    from adgen.datasets import DatasetFormatError
    from adgen.figures.search import quality_table
    from adgen.search.query_log import QueryLogError

    if split not in {"test", "valid"}:
        raise _fail(f"--split must be 'test' or 'valid', got {split!r}")
    settings = _settings(config_file)
    try:
        items, log, source = load_search_data(settings, world, items_path, query_log_path, amazon)
    except (DatasetFormatError, QueryLogError, FileNotFoundError) as exc:
        raise _fail(str(exc)) from exc
    if log is None:
        raise _fail("evaluation needs labelled queries: pass --query-log (or a world, which has its own)")
    encoder = _query_encoder(settings)
    try:
        payload = evaluate_build(_out(settings, out), items, log, encoder, split)
    except (FileNotFoundError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    payload = {"data": source, **payload}
    typer.echo(quality_table(payload))
    path = result or settings.paths.runs / "ci_eval.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2))
    console.print(f"wrote {path}")


DEFAULT_RESULT = Path("docs/data/search/world.json")


@app.command()
def experiment(
    world: WorldOpt = None,
    items_path: ItemsOpt = None,
    query_log_path: LogOpt = None,
    out: Annotated[Path, typer.Option(help="Directory for one build per variant.")] = Path("var/ci-experiment"),
    build_config: Annotated[Path | None, typer.Option(help="JSON/YAML with the base CIBuildConfig.")] = None,
    result: Annotated[Path, typer.Option(help="JSON result (docs/search.md is rendered from it).")] = DEFAULT_RESULT,
    config_file: ConfigOpt = None,
) -> None:
    """Build each variant (CI coverage, query augmentation), keep the one validation prefers, then score it,
    the pure CI path and the baselines on test, once. Writes the JSON behind docs/search.md."""
    from adgen.commands.search_quality import run_experiment
    from adgen.datasets import DatasetFormatError
    from adgen.figures.search import quality_table
    from adgen.search.query_log import QueryLogError

    settings = _settings(config_file)
    try:
        items, log, source = load_search_data(settings, world, items_path, query_log_path)
    except (DatasetFormatError, QueryLogError, FileNotFoundError) as exc:
        raise _fail(str(exc)) from exc
    if log is None:
        raise _fail("the experiment needs labelled queries: pass --query-log (or a world, which has its own)")
    base = _build_config(build_config, {}, {})
    payload = run_experiment(items, log, out, base, _query_encoder(settings), embed=_encoder(settings).encode)
    payload = {"data": source, "command": _command_line(), **payload}
    result.parent.mkdir(parents=True, exist_ok=True)
    result.write_text(json.dumps(payload, indent=2))
    typer.echo(quality_table(payload))
    console.print(f"wrote {result}; render the docs with `adgen bench report` (from the repository root)")


def _command_line() -> str:
    import shlex
    import sys

    return "adgen " + " ".join(shlex.quote(a) for a in sys.argv[1:])


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
