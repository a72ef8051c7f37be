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

Batches (:attr:`Stream.batch` > 1): ``batch`` publications in one ``POST /api/batch``
(``{"commands": [{"publish": {...}}, ...]}``, each command's reply or error in
``{"result": {"replies": [...]}}``); the other paths publish a batch's items one after
the other. A batch's publications get consecutive sequence numbers; when one of them
fails and a later one of its channel succeeds, the failed one's number is a gap (the
generators count it lost, the publisher counts it as an error).

Orders over the pipe (:mod:`.messages`): :class:`Run` -> :class:`Progress` every half
second, then :class:`Published`; :class:`Stop` ends the run early; :class:`Exit` ends the
process. Runs may follow each other (the benchmarks' phases): sequence numbers go on
from one run to the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from multiprocessing.connection import Connection
from typing import Any, Final, Protocol
from urllib.parse import unquote, urlsplit

import orjson

from .messages import (
    Bye,
    Exit,
    Progress,
    Published,
    PublisherConfig,
    PublishResult,
    Run,
    Stop,
    Stream,
)
from .pipes import child_setup, forward_orders, run_loop
from .stats import Histogram

__all__ = ["publisher_main"]

_STATUSES: Final = ("sent", "viewed", "signed", "declined", "completed")


Item = tuple[str, dict[str, Any]]
"""One publication: its channel and its data."""


class _Backend(Protocol):
    async def publish(self, channel: str, data: dict[str, Any]) -> str | None:
        """Publish; None when it worked, else what went wrong (a short reason)."""

    async def publish_many(self, items: list[Item]) -> list[str | None]:
        """Publish ``items`` in order; for each, what :meth:`publish` would return."""

    async def close(self) -> None: ...


async def _one_by_one(backend: _Backend, items: list[Item]) -> list[str | None]:
    return [await backend.publish(channel, data) for channel, data in items]


def _api_error(answer: Any) -> str:
    """The short reason for an API ``{"error": {...}}`` object."""
    code = answer.get("code") if isinstance(answer, dict) else None
    return f"api: error {code}" if code is not None else "api: error"


class _Api:
    def __init__(self, cfg: PublisherConfig) -> None:
        import aiohttp

        self._aiohttp = aiohttp
        self.url = cfg.api_url.rstrip("/") + "/api/publish"
        self.batch_url = cfg.api_url.rstrip("/") + "/api/batch"
        self.headers = {"X-API-Key": cfg.api_key, "Content-Type": "application/json"}
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=cfg.inflight),
            timeout=aiohttp.ClientTimeout(total=cfg.timeout),
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
                return _api_error(orjson.loads(answer)["error"])
            except (orjson.JSONDecodeError, KeyError, TypeError):
                return "api: error"
        return None

    async def publish_many(self, items: list[Item]) -> list[str | None]:
        """One ``/api/batch`` request; a failure of the whole request fails every item."""
        commands = [{"publish": {"channel": channel, "data": data}} for channel, data in items]
        body = orjson.dumps({"commands": commands})
        try:
            async with self.session.post(self.batch_url, data=body, headers=self.headers) as resp:
                answer = await resp.read()
                status = resp.status
        except (self._aiohttp.ClientError, TimeoutError) as exc:
            return [f"api: {type(exc).__name__}"] * len(items)
        if status != 200:
            return [f"api: HTTP {status}"] * len(items)
        try:
            reply = orjson.loads(answer)
        except orjson.JSONDecodeError:
            return ["api: malformed batch reply"] * len(items)
        result = reply.get("result") if isinstance(reply, dict) else None
        replies = result.get("replies") if isinstance(result, dict) else None
        if not isinstance(replies, list) or len(replies) != len(items):
            error = reply.get("error") if isinstance(reply, dict) else None
            why = _api_error(error) if error is not None else "api: malformed batch reply"
            return [why] * len(items)
        return [
            _api_error(r["error"]) if isinstance(r, dict) and "error" in r else None
            for r in replies
        ]

    async def close(self) -> None:
        await self.session.close()


class _RedisPlain:
    """``PUBLISH`` over one pipelined connection (hand-written RESP: three lines)."""

    def __init__(self, cfg: PublisherConfig) -> None:
        self.url = cfg.redis_url
        self.prefix = cfg.redis_prefix
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

    async def publish_many(self, items: list[Item]) -> list[str | None]:
        return await _one_by_one(self, items)

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

    def __init__(self, cfg: PublisherConfig) -> None:
        from ..config import Settings
        from ..publisher import Publisher

        self.publisher = Publisher(Settings.from_env(env=cfg.settings_env))

    async def publish(self, channel: str, data: dict[str, Any]) -> str | None:
        from ..errors import RealtimeError

        try:
            await self.publisher.publish(channel, data)
        except RealtimeError as exc:
            return f"python: {type(exc).__name__}: {exc}"[:100]
        return None

    async def publish_many(self, items: list[Item]) -> list[str | None]:
        return await _one_by_one(self, items)

    async def close(self) -> None:
        await self.publisher.close()


class Publisher:
    """The publisher process's state: sequence numbers per channel across runs."""

    def __init__(self, ctrl: Connection, cfg: PublisherConfig) -> None:
        self.ctrl = ctrl
        self.cfg = cfg
        self.counts: dict[str, int] = {}
        self._run = _RunState()
        self._locks: dict[str, asyncio.Lock] = {}
        self._stop = asyncio.Event()
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self._inflight = asyncio.Semaphore(cfg.inflight)
        self._tasks: set[asyncio.Task[None]] = set()

    def send(self, message: object) -> None:
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

    async def _some(
        self, backend: _Backend, channels: tuple[str, ...], kind: str, ordered: bool
    ) -> None:
        """Publish one publication per entry of ``channels`` (one request when there are
        several: a batch), holding each channel's lock when ``ordered``."""
        run = self._run
        locks: list[asyncio.Lock] = []
        try:
            if ordered:
                # Sorted, so that two batches sharing channels never wait for each other.
                for channel in sorted(set(channels)):
                    lock = self._locks.get(channel)
                    if lock is None:
                        lock = self._locks[channel] = asyncio.Lock()
                    await lock.acquire()
                    locks.append(lock)
            seqs: dict[str, int] = {}
            items: list[Item] = []
            for channel in channels:
                seq = seqs[channel] = seqs.get(channel, self.counts.get(channel, 0)) + 1
                items.append((channel, self._data(kind, channel, seq)))
            if len(items) == 1:
                errors = [await backend.publish(*items[0])]
            else:
                errors = await backend.publish_many(items)
            answered = time.time_ns()
            for (channel, data), error in zip(items, errors, strict=True):
                if error is None:
                    self.counts[channel] = max(self.counts.get(channel, 0), data["s"])
                    run.published += 1
                    run.rtt.record((answered - data["t"]) // 1000)
                else:
                    run.errors[error] = run.errors.get(error, 0) + 1
        finally:
            for lock in locks:
                lock.release()
            self._inflight.release()

    async def _stream(self, backend: _Backend, stream: Stream, until: float, ordered: bool) -> None:
        loop = asyncio.get_running_loop()
        channels, rate = stream.channels, stream.rate
        if not channels or (rate <= 0 and stream.count is None):
            return
        batch = max(1, stream.batch)
        start = loop.time()
        n = 0  # publications so far: the next batch is due at start + n / rate
        while not self._stop.is_set():
            if stream.count is not None and n >= stream.count:
                return
            now = loop.time()
            if rate > 0:
                due = start + n / rate
                if due >= until:
                    return
                if due > now:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stop.wait(), due - now)
                    continue
                self._run.behind_s = max(self._run.behind_s, now - due)
            elif now >= until:
                return
            size = batch if stream.count is None else min(batch, stream.count - n)
            some = tuple(channels[(n + i) % len(channels)] for i in range(size))
            n += size
            await self._inflight.acquire()
            if ordered:
                task = loop.create_task(self._some(backend, some, stream.kind, True))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            else:
                await self._some(backend, some, stream.kind, False)

    def _backend(self) -> _Backend:
        via = self.cfg.via
        if via == "api":
            return _Api(self.cfg)
        if via == "redis":
            return _RedisPlain(self.cfg)
        return _Python(self.cfg)

    async def run_for(self, duration: float | None, streams: tuple[Stream, ...]) -> None:
        """One run: every stream until ``duration`` (or its count), then the result."""
        cfg = self.cfg
        self._run = run = _RunState()
        backend = self._backend()
        if isinstance(backend, _RedisPlain):
            await backend.start()
        loop = asyncio.get_running_loop()
        until = loop.time() + duration if duration is not None else float("inf")
        started = time.time_ns()

        async def progress() -> None:
            while True:
                await asyncio.sleep(0.5)
                self.send(Progress(run.published, sum(run.errors.values())))

        reporter = loop.create_task(progress())
        try:
            ordered = cfg.via != "redis"
            await asyncio.gather(*(self._stream(backend, s, until, ordered) for s in streams))
            if self._tasks:
                await asyncio.wait(list(self._tasks), timeout=cfg.timeout + 1)
        finally:
            reporter.cancel()
            await backend.close()
        if isinstance(backend, _RedisPlain) and backend.errors:
            run.errors["redis: error reply"] = backend.errors
        result = PublishResult(
            counts=dict(self.counts),
            published=run.published,
            errors=run.errors,
            rtt=run.rtt,
            behind_s=run.behind_s,
            started_ns=started,
            ended_ns=time.time_ns(),
        )
        self.send(Published(result))

    async def main(self) -> None:
        loop = asyncio.get_running_loop()
        forward_orders(self.ctrl, loop, self._queue)
        running: asyncio.Task[None] | None = None
        try:
            while True:
                order = await self._queue.get()
                if isinstance(order, Run):
                    self._stop.clear()
                    streams = order.streams if order.streams is not None else self.cfg.streams
                    running = loop.create_task(self.run_for(order.duration, streams))
                elif isinstance(order, Stop):
                    self._stop.set()
                elif isinstance(order, Exit):
                    break
        finally:
            self._stop.set()
            if running is not None and not running.done():
                with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                    await asyncio.wait_for(running, 10.0)
        self.send(Bye())


class _RunState:
    """The counts of one run."""

    __slots__ = ("behind_s", "errors", "published", "rtt")

    def __init__(self) -> None:
        self.published = 0
        self.errors: dict[str, int] = {}
        self.rtt = Histogram()
        self.behind_s = 0.0


def publisher_main(ctrl: Connection, cfg: PublisherConfig, cpus: list[int] | None = None) -> None:
    """Entry point of the publisher process (``multiprocessing`` spawn target)."""
    child_setup(cpus)
    run_loop(Publisher(ctrl, cfg).main())
