"""The `adgen` command line. Each area registers its own sub-app in `adgen/commands/`."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from adgen.core.config import load_settings

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
console = Console()

# (module under adgen.commands, sub-command name or None to merge its commands at top level)
_COMMAND_MODULES: tuple[tuple[str, str | None], ...] = (
    ("runtime", None),  # adgen up / down
    ("world", "world"),  # adgen world generate
    ("produce", None),  # adgen produce
    ("index", "index"),  # adgen index build/add/remove/stats/report
    ("train", None),  # adgen train / eval
    ("worker", None),  # adgen worker / monitor / features
    ("search", "ci"),  # adgen ci build / search
    ("demo", None),  # adgen demo
    ("bench", "bench"),  # adgen bench / bench report
    ("lifecycle", None),  # adgen retrain / adgen model list|publish|use|rollback
    ("init", None),  # adgen init
)


@app.callback()
def _root() -> None:
    """adgen: streaming nearline ad retrieval with a generative language model."""


@app.command()
def config(
    config_file: Annotated[Path | None, typer.Option("--config", help="JSON or YAML settings file.")] = None,
) -> None:
    """Print the effective settings (env ADGEN_*, then the file), secrets masked."""
    settings = load_settings(config_file)
    console.print_json(json.dumps(settings.masked()))


def _register() -> None:
    for module_name, group in _COMMAND_MODULES:
        try:
            module = importlib.import_module(f"adgen.commands.{module_name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"adgen.commands.{module_name}":
                continue  # area not built yet
            raise
        sub: typer.Typer = module.app
        if group is None:
            app.registered_commands.extend(sub.registered_commands)
            app.registered_groups.extend(sub.registered_groups)
        else:
            app.add_typer(sub, name=group)


_register()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
