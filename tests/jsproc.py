"""A child process that prints one JSON event per line (our Node SDK client and browser
scripts), read as it runs, with ``expect`` to await the next matching event; and a
gate tests open and close around SDK reconnects."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any, ClassVar

Event = dict[str, Any]


class JsonLinesProcess:
    """Reads ``proc``'s stdout as JSON events (a line that is not JSON is kept as a
    ``garbage`` event) and its stderr as text, from the moment it is created."""

    label: ClassVar[str] = "process"
    """How failures name the process."""
    fatal: ClassVar[frozenset[str]] = frozenset()
    """Events that fail any ``expect`` as soon as they are printed."""
    wait: ClassVar[float] = 3.0
    """``expect``'s default timeout, in seconds."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.events: list[Event] = []
        self.stderr = bytearray()
        self._consumed: set[int] = set()
        self._changed = asyncio.Event()
        self._eof = False
        self._readers = [
            asyncio.create_task(self._read_stdout()),
            asyncio.create_task(self._read_stderr()),
        ]

    def on_event(self, event: Event) -> None:
        """Called for every event as it arrives (before waiters are woken)."""

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        try:
            async for raw in self.proc.stdout:
                line = raw.decode(errors="replace").strip()
                if not line:
                    continue
                try:
                    event = json.loads(line)
                except ValueError:
                    event = {"event": "garbage", "line": line}
                self.events.append(event)
                self.on_event(event)
                self._notify()
        finally:
            self._eof = True
            self._notify()

    async def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        while chunk := await self.proc.stderr.read(4096):
            self.stderr.extend(chunk)

    def describe(self) -> str:
        lines = "\n  ".join(json.dumps(e) for e in self.events)
        return f"events:\n  {lines}\nstderr:\n{self.stderr.decode(errors='replace')}"

    async def send(self, command: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command).encode() + b"\n")
        await self.proc.stdin.drain()

    @staticmethod
    def matches(
        event: Event, name: str, match: dict[str, Any], where: Callable[[Event], bool] | None
    ) -> bool:
        return (
            event.get("event") == name
            and all(event.get(k) == v for k, v in match.items())
            and (where is None or where(event))
        )

    async def expect(
        self,
        name: str,
        timeout: float | None = None,
        where: Callable[[Event], bool] | None = None,
        **match: Any,
    ) -> Event:
        """The first not yet expected event named ``name`` with these field values (and
        satisfying ``where``), waiting for it at most ``timeout`` seconds (default
        :attr:`wait`)."""
        scanned = 0
        try:
            async with asyncio.timeout(self.wait if timeout is None else timeout):
                while True:
                    changed = self._changed
                    for index in range(scanned, len(self.events)):
                        event = self.events[index]
                        if event.get("event") in self.fatal:
                            raise AssertionError(f"{self.label} failed\n{self.describe()}")
                        if index not in self._consumed and self.matches(event, name, match, where):
                            self._consumed.add(index)
                            return event
                    scanned = len(self.events)
                    if self._eof:
                        raise AssertionError(
                            f"{self.label} exited before {name} {match}\n{self.describe()}"
                        )
                    await changed.wait()
        except TimeoutError:
            raise AssertionError(
                f"timed out waiting for {name} {match}\n{self.describe()}"
            ) from None


class Gate:
    """Open by default; while closed, whoever waits on it (an SDK's reconnect, through
    ``wait`` or as a responder) waits."""

    def __init__(self) -> None:
        self._open = asyncio.Event()
        self._open.set()

    def close(self) -> None:
        self._open.clear()

    def open(self) -> None:
        self._open.set()

    async def wait(self) -> None:
        await self._open.wait()

    async def __call__(self, _request: Event) -> None:
        await self._open.wait()
