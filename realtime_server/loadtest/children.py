"""Stopping generator processes and reading a spawned server's log (shared by the load
test and the benchmarks in bench/)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, Protocol

__all__ = ["forward_orders", "log_problems", "stop_children"]


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


def forward_orders(
    conn: Connection, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[Any]
) -> threading.Thread:
    """Start a thread that moves orders from a parent's pipe into ``queue`` on ``loop``,
    ending with ``("exit",)`` (also when the pipe breaks). A thread, not ``add_reader``:
    libuv would make the pipe non-blocking, and a large ``send`` would then fail."""

    def read() -> None:
        while True:
            try:
                order = conn.recv()
            except (EOFError, OSError):
                order = ("exit",)
            loop.call_soon_threadsafe(queue.put_nowait, order)
            if order[0] == "exit":
                return

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread
