"""`adgen up` / `adgen down` / `adgen status`: the embedded broker + redis-server in the background.

`python -m adgen.commands.runtime up|down|status` runs the same commands without importing the whole CLI:
`adgen up` loads every command module (torch included) before it starts anything, this entry point loads
only the runtime, so the servers answer within a second or two of the command starting.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from adgen.core.config import load_settings
from adgen.runtime.embedded import EmbeddedRuntime
from adgen.runtime.state import RuntimeState, ServerRecord, read_state, state_path, stop_recorded, write_state

app = typer.Typer(no_args_is_help=True, add_completion=False)
err = Console(stderr=True)

ConfigOption = Annotated[Path | None, typer.Option("--config", help="JSON or YAML settings file.")]


@app.command()
def up(config_file: ConfigOption = None) -> None:
    """Start Tansu + redis-server in the background, create every topic, print the ADGEN_* env to use.

    Idempotent: if the recorded runtime is still running, it only prints its env again.
    """
    settings = load_settings(config_file)
    state_dir = settings.paths.state
    existing = read_state(state_dir)
    if existing is not None:
        alive = existing.alive()
        if all(alive.values()):
            err.print(f"[green]already running[/] (state: {state_path(state_dir)})")
            _print_env(existing)
            return
        err.print(f"[yellow]stale state[/] {alive}; stopping leftovers and starting fresh")
        stop_recorded(state_dir)

    data_dir = state_dir / "runtime"
    runtime = EmbeddedRuntime(settings, data_dir, detached=True)
    try:
        effective = runtime.start()
    except BaseException:
        runtime.stop()
        raise
    assert runtime.timings is not None
    state = RuntimeState(
        broker=ServerRecord(
            pid=runtime.broker.pid,
            port=runtime.broker.port,
            binary=runtime.broker.binary,
            log_path=runtime.broker.log_path,
        ),
        redis=ServerRecord(
            pid=runtime.redis.pid, port=runtime.redis.port, binary=runtime.redis.binary, log_path=runtime.redis.log_path
        ),
        bootstrap_servers=effective.kafka.bootstrap_servers,
        redis_url=effective.redis.url,
        data_dir=data_dir,
        timings=runtime.timings,
    )
    path = write_state(state_dir, state)
    t = runtime.timings
    err.print(
        f"[green]up[/] in {t.total_s:.2f}s (broker {t.broker_s:.2f}s, redis {t.redis_s:.2f}s, "
        f"topics {t.topics_s:.2f}s); state: {path}; stop with `adgen down`"
    )
    _print_env(state)


@app.command()
def down(config_file: ConfigOption = None) -> None:
    """Stop the background runtime recorded by `adgen up` (by PID: SIGTERM, then SIGKILL)."""
    state_dir = load_settings(config_file).paths.state
    if read_state(state_dir) is None:
        err.print(f"nothing to stop: no {state_path(state_dir)}")
        return
    stopped = stop_recorded(state_dir)
    err.print(f"[green]down[/]: stopped {', '.join(stopped) if stopped else 'nothing (already gone)'}")


@app.command()
def status(config_file: ConfigOption = None) -> None:
    """Print the recorded runtime and whether each server is still running (JSON)."""
    state_dir = load_settings(config_file).paths.state
    state = read_state(state_dir)
    if state is None:
        err.print(f"not running: no {state_path(state_dir)}")
        raise typer.Exit(code=1)
    print(json.dumps({"alive": state.alive(), "env": state.env(), "state": json.loads(state.model_dump_json())}))


def _print_env(state: RuntimeState) -> None:
    """`export` lines on stdout, so `eval "$(adgen up)"` configures the shell."""
    for name, value in state.env().items():
        print(f"export {name}={shlex.quote(value)}")


if __name__ == "__main__":
    app()
