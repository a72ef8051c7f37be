"""Child processes and their pipes (the load test's and the benchmarks').

:class:`Pipes` starts ``multiprocessing`` children (spawned, so nothing of the parent's
state leaks in), reads what they send, hands some message types to handlers (running
counters, progress) and keeps the others in per-child inboxes until :meth:`Pipes.expect`
takes them, and stops every child at the end, also after errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import multiprocessing.connection
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any, TypeVar

from .errors import LoadTestError
from .messages import Exit
from .procfs import read_proc

__all__ = ["Child", "Pipes", "child_setup", "forward_orders", "run_loop"]

M = TypeVar("M")


@dataclass(eq=False)
class Child:
    """One child process and the parent's end of its pipe."""

    name: str
    index: int
    proc: BaseProcess
    conn: Connection
    inbox: dict[type, list[Any]] = field(default_factory=dict)

    def send(self, order: object) -> None:
        """Send an order; a child that is gone is noticed by the next read."""
        with contextlib.suppress(OSError, ValueError):
            self.conn.send(order)

    def cpu_s(self) -> float:
        """CPU seconds the process has used so far (0 when it is gone)."""
        if not self.proc.pid:
            return 0.0
        try:
            return read_proc(self.proc.pid).cpu_s
        except OSError:
            return 0.0


class Pipes:
    """The children of one run. ``deadline`` (monotonic) bounds every wait."""

    def __init__(self, deadline: float = float("inf")) -> None:
        self.ctx = multiprocessing.get_context("spawn")
        self.children: list[Child] = []
        self.deadline = deadline
        self._handlers: dict[type, Callable[[Child, Any], None]] = {}

    def on(self, kind: type[M], handler: Callable[[Child, M], None]) -> None:
        """Messages of type ``kind`` go to ``handler`` instead of the inbox."""
        self._handlers[kind] = handler

    def start(self, name: str, index: int, target: Callable[..., None], *args: Any) -> Child:
        parent, child_end = self.ctx.Pipe()
        proc = self.ctx.Process(target=target, args=(child_end, *args), daemon=True, name=name)
        proc.start()
        child_end.close()
        child = Child(name, index, proc, parent)
        self.children.append(child)
        return child

    def pump(self, timeout: float) -> None:
        """Read whatever the children sent within ``timeout`` seconds.

        Raises:
            LoadTestError: when a child died.
        """
        by_conn = {id(c.conn): c for c in self.children}
        ready = multiprocessing.connection.wait([c.conn for c in self.children], timeout)
        for conn in ready:
            assert isinstance(conn, Connection)
            child = by_conn[id(conn)]
            try:
                message = conn.recv()
            except (EOFError, OSError):
                raise LoadTestError(f"the {child.name} process died") from None
            handler = self._handlers.get(type(message))
            if handler is not None:
                handler(child, message)
            else:
                child.inbox.setdefault(type(message), []).append(message)

    def expect(
        self,
        children: list[Child],
        kind: type[M],
        timeout: float,
        tick: Callable[[], None] | None = None,
    ) -> list[M]:
        """One ``kind`` message from each of ``children`` (in their order), calling
        ``tick`` about every quarter second while waiting.

        Raises:
            LoadTestError: when the time runs out or a child died.
        """
        deadline = min(time.monotonic() + timeout, self.deadline)
        while True:
            if all(c.inbox.get(kind) for c in children):
                return [c.inbox[kind].pop(0) for c in children]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                got = sum(1 for c in children if c.inbox.get(kind))
                raise LoadTestError(
                    f"timed out waiting for {kind.__name__} ({got}/{len(children)})"
                )
            self.pump(min(remaining, 0.25))
            if tick is not None:
                tick()

    def stop(self, grace: float = 5.0) -> None:
        """Ask every child to exit, then terminate and kill the ones that do not."""
        children, self.children = self.children, []
        for c in children:
            c.send(Exit())
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


def forward_orders(
    conn: Connection, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[Any]
) -> threading.Thread:
    """In a child: a thread moving orders from the parent's pipe into ``queue`` on
    ``loop``, ending with :class:`Exit` (also when the pipe breaks). A thread, not
    ``add_reader``: libuv would make the pipe non-blocking, and a large send would fail."""

    def read() -> None:
        while True:
            try:
                order = conn.recv()
            except (EOFError, OSError):
                order = Exit()
            loop.call_soon_threadsafe(queue.put_nowait, order)
            if isinstance(order, Exit):
                return

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


def child_setup(cpus: list[int] | None) -> None:
    """First thing in a child process: Ctrl-C is the parent's (it stops us in order),
    and the process runs on ``cpus`` when given."""
    import os
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if cpus:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, cpus)


def run_loop(main: Any) -> None:
    """Run a child's coroutine under uvloop (asyncio where it is missing) until the
    parent goes away."""
    runner: Callable[[Any], Any]
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    with contextlib.suppress(BrokenPipeError, EOFError, ConnectionResetError):
        runner(main)
