"""The publisher process: publications at steady rates, through one of three paths.

- ``api``: ``POST /api/publish`` on the server's HTTP server API (``X-API-Key``), over a
  pool of keep-alive connections;
- ``redis``: a plain Redis ``PUBLISH`` of the JSON data to the documented pub/sub channel
  ``<prefix>{<channel>}`` (no offset, not recoverable), pipelined on one connection;
- ``python``: :class:`realtime_server.publisher.Publisher` over Redis (the server's own
  atomic append-and-publish script: history and offsets, no server in the path).

Every publication's data is ``{"s": <sequence number in its channel>, "t":
<time.time_ns() just before sending>, ...}`` plus fields that make it look like what a
signing platform sends. Publications to one channel never overlap (the next waits for
the previous one's answer), so that they reach subscribers in sequence order; a failed
publication gives its sequence number to the next one of its channel.

Orders over the pipe: ``("run", duration)`` -> ``("progress", published, errors)`` every
half second, then ``("done", result)``; ``("stop",)`` ends the run early;
``("exit",)`` ends the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from multiprocessing.connection import Connection
from typing import Any, Final
from urllib.parse import unquote, urlsplit

import orjson

from .children import forward_orders
from .stats import Histogram

__all__ = ["publisher_main"]

_STATUSES: Final = ("sent", "viewed", "signed", "declined", "completed")


class _Api:
    def __init__(self, cfg: dict[str, Any]) -> None:
        import aiohttp

        self._aiohttp = aiohttp
        self.url = cfg["api_url"].rstrip("/") + "/api/publish"
        self.headers = {"X-API-Key": cfg["api_key"] or "", "Content-Type": "application/json"}
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=int(cfg["inflight"])),
            timeout=aiohttp.ClientTimeout(total=float(cfg["timeout"])),
        )

    async def publish(self, channel: str, data: dict[str, Any]) -> str | None:
        body = orjson.dumps({"channel": channel, "data": data})
        try:
            async with self.session.post(self.url, data=body, headers=self.headers) as resp:
                answer = await resp.read()
                status = resp.status
        except (self._aiohttp.ClientError, TimeoutError) as exc:
            return f"api: {type(exc).__name__}"
        if status != 200:
            return f"api: HTTP {status}"
        if answer.startswith(b'{"error"'):
            try:
                return f"api: error {orjson.loads(answer)['error'].get('code')}"
            except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
                return "api: error"
        return None

    async def close(self) -> None:
        await self.session.close()


class _RedisPlain:
    """``PUBLISH`` over one pipelined connection (hand-written RESP: three lines)."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.url = cfg["redis_url"]
        self.prefix = cfg["redis_prefix"]
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.pending = 0
        self.errors = 0
        self._task: asyncio.Task[None] | None = None

    @staticmethod
    def _command(*parts: bytes) -> bytes:
        out = [b"*%d\r\n" % len(parts)]
        for p in parts:
            out.append(b"$%d\r\n%s\r\n" % (len(p), p))
        return b"".join(out)

    async def start(self) -> None:
        u = urlsplit(self.url)
        self.reader, self.writer = await asyncio.open_connection(u.hostname, u.port or 6379)
        setup: list[bytes] = []
        if u.password:
            user = unquote(u.username or "default")
            setup.append(self._command(b"AUTH", user.encode(), unquote(u.password).encode()))
        db = (u.path or "/0").strip("/") or "0"
        if db != "0":
            setup.append(self._command(b"SELECT", db.encode()))
        for cmd in setup:
            self.writer.write(cmd)
            line = await self.reader.readline()
            if not line.startswith(b"+"):
                raise ConnectionError(f"redis: {line.decode(errors='replace').strip()}")
        self._task = asyncio.get_running_loop().create_task(self._replies())

    async def _replies(self) -> None:
        assert self.reader is not None
        while True:
            line = await self.reader.readline()
            if not line:
                return
            self.pending -= 1
            if line.startswith(b"-"):
                self.errors += 1

    async def publish(self, channel: str, data: dict[str, Any]) -> str | None:
        assert self.writer is not None
        key = f"{self.prefix}{{{channel}}}".encode()
        self.writer.write(self._command(b"PUBLISH", key, orjson.dumps(data)))
        self.pending += 1
        if self.pending > 256:
            await self.writer.drain()
        return None

    async def close(self) -> None:
        if self.writer is not None:
            with contextlib.suppress(OSError):
                await self.writer.drain()
            deadline = time.monotonic() + 5.0
            while self.pending > 0 and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            self.writer.close()
        if self._task is not None:
            self._task.cancel()


class _Python:
    """The project's own :class:`~realtime_server.publisher.Publisher` over Redis."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        from ..config import Settings
        from ..publisher import Publisher

        self.publisher = Publisher(Settings.from_env(env=cfg["settings_env"]))

    async def publish(self, channel: str, data: dict[str, Any]) -> str | None:
        from ..errors import RealtimeError

        try:
            await self.publisher.publish(channel, data)
        except RealtimeError as exc:
            return f"python: {type(exc).__name__}: {exc}"[:100]
        return None

    async def close(self) -> None:
        await self.publisher.close()


class Publisher:
    def __init__(self, ctrl: Connection, cfg: dict[str, Any]) -> None:
        self.ctrl = ctrl
        self.cfg = cfg
        self.counts: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        self.published = 0
        self.rtt = Histogram()
        self.behind_s = 0.0
        self._locks: dict[str, asyncio.Lock] = {}
        self._stop = asyncio.Event()
        self._queue: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        self._inflight = asyncio.Semaphore(int(cfg["inflight"]))
        self._tasks: set[asyncio.Task[None]] = set()

    def send(self, *message: Any) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.ctrl.send(message)

    def _data(self, kind: str, channel: str, seq: int) -> dict[str, Any]:
        if kind == "status":
            return {
                "s": seq,
                "t": time.time_ns(),
                "type": "document.status",
                "document": channel.partition(":")[2],
                "status": _STATUSES[seq % len(_STATUSES)],
            }
        if kind == "notification":
            return {
                "s": seq,
                "t": time.time_ns(),
                "type": "notification",
                "text": "A document is waiting for your signature",
            }
        return {"s": seq, "t": time.time_ns(), "type": "announcement"}

    async def _one(self, backend: Any, channel: str, kind: str, ordered: bool) -> None:
        try:
            lock = None
            if ordered:
                lock = self._locks.get(channel)
                if lock is None:
                    lock = self._locks[channel] = asyncio.Lock()
                await lock.acquire()
            try:
                seq = self.counts.get(channel, 0) + 1
                data = self._data(kind, channel, seq)
                error = await backend.publish(channel, data)
                if error is None:
                    self.counts[channel] = seq
                    self.published += 1
                    self.rtt.record((time.time_ns() - data["t"]) // 1000)
                else:
                    self.errors[error] = self.errors.get(error, 0) + 1
            finally:
                if lock is not None:
                    lock.release()
        finally:
            self._inflight.release()

    async def _stream(
        self, backend: Any, stream: dict[str, Any], until: float, ordered: bool
    ) -> None:
        loop = asyncio.get_running_loop()
        channels: list[str] = stream["channels"]
        rate = float(stream["rate"])
        kind = str(stream["kind"])
        if not channels or rate <= 0:
            return
        start = loop.time()
        n = 0
        while not self._stop.is_set():
            due = start + n / rate
            now = loop.time()
            if due >= until:
                return
            if due > now:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), due - now)
                continue
            self.behind_s = max(self.behind_s, now - due)
            channel = channels[n % len(channels)]
            n += 1
            if ordered:
                await self._inflight.acquire()
                task = loop.create_task(self._one(backend, channel, kind, True))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            else:
                await self._inflight.acquire()
                await self._one(backend, channel, kind, False)

    async def run_for(self, duration: float) -> None:
        cfg = self.cfg
        via = cfg["via"]
        backend: Any
        if via == "api":
            backend = _Api(cfg)
        elif via == "redis":
            backend = _RedisPlain(cfg)
            await backend.start()
        else:
            backend = _Python(cfg)
        loop = asyncio.get_running_loop()
        until = loop.time() + duration
        started = time.time_ns()

        async def progress() -> None:
            while True:
                await asyncio.sleep(0.5)
                self.send("progress", self.published, sum(self.errors.values()))

        reporter = loop.create_task(progress())
        try:
            ordered = via != "redis"
            await asyncio.gather(
                *(self._stream(backend, s, until, ordered) for s in cfg["streams"])
            )
            if self._tasks:
                await asyncio.wait(list(self._tasks), timeout=float(cfg["timeout"]) + 1)
        finally:
            reporter.cancel()
            await backend.close()
        if isinstance(backend, _RedisPlain) and backend.errors:
            self.errors["redis: error reply"] = backend.errors
        self.send(
            "done",
            {
                "counts": self.counts,
                "published": self.published,
                "errors": self.errors,
                "rtt": self.rtt.state(),
                "behind_s": self.behind_s,
                "started_ns": started,
                "ended_ns": time.time_ns(),
            },
        )

    async def main(self) -> None:
        loop = asyncio.get_running_loop()
        forward_orders(self.ctrl, loop, self._queue)
        running: asyncio.Task[None] | None = None
        try:
            while True:
                order = await self._queue.get()
                if order[0] == "run":
                    self._stop.clear()
                    running = loop.create_task(self.run_for(float(order[1])))
                elif order[0] == "stop":
                    self._stop.set()
                else:
                    break
        finally:
            self._stop.set()
            if running is not None and not running.done():
                with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                    await asyncio.wait_for(running, 10.0)
        self.send("bye")


def publisher_main(ctrl: Connection, cfg: dict[str, Any], cpus: list[int] | None = None) -> None:
    """Entry point of the publisher process (``multiprocessing`` spawn target)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if cpus:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, cpus)
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    with contextlib.suppress(BrokenPipeError, EOFError, ConnectionResetError):
        runner(Publisher(ctrl, cfg).main())
