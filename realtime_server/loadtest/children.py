"""Stopping generator processes and reading a spawned server's log (shared by the load
test and the benchmarks in bench/)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Protocol

__all__ = ["log_problems", "stop_children"]


class _Child(Protocol):
    @property
    def proc(self) -> BaseProcess: ...

    @property
    def conn(self) -> Connection: ...


def stop_children(children: Iterable[_Child], grace: float = 5.0) -> None:
    """Ask every child to exit, then terminate and kill the ones that do not (bounded)."""
    children = list(children)
    for c in children:
        with contextlib.suppress(OSError, ValueError):
            c.conn.send(("exit",))
    deadline = time.monotonic() + grace
    for c in children:
        c.proc.join(max(0.1, deadline - time.monotonic()))
        if c.proc.is_alive():
            c.proc.terminate()
            c.proc.join(2.0)
        if c.proc.is_alive():
            c.proc.kill()
            c.proc.join(2.0)
        with contextlib.suppress(OSError):
            c.conn.close()


def log_problems(log: Path, most: int) -> list[str]:
    """The first warnings and errors of a server log file."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return []
    found = [
        line.strip()[:200]
        for line in text.splitlines()
        if " WARNING " in line or " ERROR " in line or "Traceback" in line
    ]
    return found[:most]
