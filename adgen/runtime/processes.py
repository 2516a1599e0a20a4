"""Child-process plumbing for the embedded servers: free ports, spawn tied to our life, stop by PID.

Servers started for a test session or a foreground command must never outlive their parent: on Linux
the child asks the kernel for SIGTERM when the parent dies (`prctl(PR_SET_PDEATHSIG)`), so even a
SIGKILLed pytest leaves no orphan broker behind. `adgen up` opts out (detached=True) on purpose.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

_PR_SET_PDEATHSIG = 1


class ServerStartError(RuntimeError):
    """A server process exited or did not answer in time; the message carries its log tail."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now (the OS picks it; a tiny race with other binders remains)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    """preexec_fn: SIGTERM this child when the parent thread exits (Linux only; no-op elsewhere)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def spawn(argv: Sequence[str], log_path: Path, *, detached: bool = False) -> subprocess.Popen[bytes]:
    """Start `argv` with stdout+stderr appended to `log_path`.

    detached=False: the child dies with this process (PDEATHSIG) and shares our session, so Ctrl-C
    reaches it too. detached=True: own session, survives us (for `adgen up`).
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=detached,
            preexec_fn=None if detached else _die_with_parent,
        )


def wait_until(
    ready: Callable[[], bool],
    *,
    timeout_s: float,
    process: subprocess.Popen[bytes] | None,
    what: str,
    log_path: Path,
    interval_s: float = 0.05,
) -> float:
    """Poll `ready()` until true; return seconds waited. Raise with the log tail if the process dies."""
    start = time.monotonic()
    while True:
        if process is not None and process.poll() is not None:
            raise ServerStartError(f"{what} exited with code {process.returncode} during start-up:\n{tail(log_path)}")
        with contextlib.suppress(Exception):
            if ready():
                return time.monotonic() - start
        if time.monotonic() - start > timeout_s:
            raise ServerStartError(f"{what} did not answer within {timeout_s:.0f}s:\n{tail(log_path)}")
        time.sleep(interval_s)


def tail(path: Path, lines: int = 20) -> str:
    """Last lines of a log file for error messages ('' if missing)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def pid_alive(pid: int) -> bool:
    """True if a process with this PID exists and is not a zombie (exited, waiting to be reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no procfs: trust kill(0)
    return state not in {"Z", "X"}


def pid_runs(pid: int, executable: str) -> bool:
    """True if `pid` is alive and its command line mentions `executable` (guards against PID reuse)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return pid_alive(pid) and not Path("/proc").exists()
    return Path(executable).name in cmdline


def stop_pid(pid: int, *, grace_s: float = 5.0, process: subprocess.Popen[bytes] | None = None) -> None:
    """SIGTERM, wait up to `grace_s`, then SIGKILL. Reaps the child when we own its Popen."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if process is not None:
            if process.poll() is not None:
                return
        elif not pid_alive(pid):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    if process is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=grace_s)


class ManagedServer:
    """A server child process started, waited for and stopped by PID; subclasses say how to run and probe it.

    One copy of the lifecycle (spawn, wait for the probe, stop on a failed start, SIGTERM then SIGKILL,
    context manager) for every server the embedded runtime and the tests start.
    """

    process: subprocess.Popen[bytes] | None = None
    detached: bool = False
    start_timeout_s: float = 20.0
    stop_grace_s: float = 5.0

    @property
    def log_path(self) -> Path:
        raise NotImplementedError

    def describe(self) -> str:
        """What the server is and where, for error messages."""
        raise NotImplementedError

    def argv(self) -> list[str]:
        raise NotImplementedError

    def answers(self) -> bool:
        """True once the server serves requests (exceptions count as not yet)."""
        raise NotImplementedError

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError(f"{self.describe()} not started")
        return self.process.pid

    def start(self) -> float:
        """Spawn and wait until `answers()`; returns seconds until it answered. Stops the child on failure."""
        self.process = spawn(self.argv(), self.log_path, detached=self.detached)
        try:
            return wait_until(
                self.answers,
                timeout_s=self.start_timeout_s,
                process=self.process,
                what=self.describe(),
                log_path=self.log_path,
            )
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            stop_pid(self.process.pid, process=self.process, grace_s=self.stop_grace_s)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
