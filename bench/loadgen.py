"""Load generator processes: subscribers (many WebSocket clients) and the publisher.

Both run as ``multiprocessing`` children of ``fanout.py`` and take orders over a pipe
(tuples, see :func:`subscriber_main` and :func:`publisher_main`).

The subscriber client is the installed load test's hand-rolled client
(``realtime_server.loadtest.wsclient.FrameClient`` on ``asyncio.Protocol`` under uvloop):
an HTTP/1.1 upgrade request, one masked ``connect`` frame, then a frame parser that
touches only what it needs. A full client library costs several times what the server
spends per delivery, and on a 2-core machine the generator shares the CPU with the server, so it
must stay cheap. Per received publication it does one ``orjson.loads``, one counter
increment and one latency sample; ``time.time_ns()`` is read once per socket read.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import aiohttp
import jwt
import orjson
import uvloop
from common import API_KEY, CHANNEL, HOST, JWT_SECRET, WS_PATH, ignore_sigint, raise_nofile

from realtime_server.loadtest.children import forward_orders
from realtime_server.loadtest.wsclient import (
    CONNECTING,
    OPEN,
    FrameClient,
    client_frame,
    upgrade_request,
)

__all__ = ["publisher_main", "subscriber_main"]


class Tally:
    """What one generator process received in the current phase."""

    __slots__ = (
        "close_codes",
        "closed",
        "last_ns",
        "latencies_us",
        "on_target",
        "phase",
        "received",
        "target",
    )

    def __init__(self) -> None:
        self.phase = -1
        self.received = 0
        self.target = -1
        self.last_ns = 0
        self.latencies_us = array.array("q")
        self.closed = 0
        self.close_codes: dict[int, int] = {}
        self.on_target: Callable[[], None] | None = None


class Subscriber(FrameClient):
    """One client connection: handshake, connect, then count publications.

    The handshake and the frame parser are the installed load test's
    (:class:`realtime_server.loadtest.wsclient.FrameClient`); this only counts.
    """

    __slots__ = ("_connect_frame", "ready", "tally")

    def __init__(
        self,
        tally: Tally,
        request: bytes,
        accept: bytes,
        connect_frame: bytes,
        ready: asyncio.Future[None],
    ) -> None:
        super().__init__(request, accept)
        self.tally = tally
        self.ready = ready
        self._connect_frame = connect_frame

    def on_upgraded(self) -> None:
        self.transport_write(self._connect_frame)

    def on_fail(self, reason: str) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(reason))

    def on_text(self, payload: bytes, now: int) -> None:
        if payload.startswith(b'{"push"'):
            pub = orjson.loads(payload)["push"].get("pub")
            if pub is not None:
                tally = self.tally
                body = pub["data"]
                if body["p"] == tally.phase:
                    tally.latencies_us.append((now - body["t"]) // 1000)
                    tally.received += 1
                    tally.last_ns = now
                    if tally.received == tally.target and tally.on_target:
                        tally.on_target()
        elif self.state == CONNECTING:
            reply = orjson.loads(payload)
            if isinstance(reply, dict) and reply.get("id") == 1 and "connect" in reply:
                self.state = OPEN
                if not self.ready.done():
                    self.ready.set_result(None)
            else:
                self.fail(f"connect refused: {reply!r:.200}")

    def on_close(self, code: int) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"closed with {code}"))
            return
        self.tally.closed += 1
        self.tally.close_codes[code] = self.tally.close_codes.get(code, 0) + 1

    def abort(self) -> None:
        """Close at once, with a reset: no TIME_WAIT left on either side."""
        self.close_now()


class Generator:
    """One subscriber process: opens its share of connections, counts deliveries."""

    def __init__(self, ctrl: Connection, cfg: dict[str, Any]) -> None:
        self.ctrl = ctrl
        self.index: int = cfg["index"]
        self.port: int = cfg["port"]
        self.concurrency: int = cfg["concurrency"]
        self.open_timeout: float = cfg["open_timeout"]
        self.tally = Tally()
        self.subs: list[Subscriber] = []
        self.opened = 0
        self.failed = 0
        self.errors: dict[str, int] = {}
        self._tokens_made = 0
        self._queue: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        self._reported = False

    # --- connections ----------------------------------------------------------------

    def _token(self, n: int) -> str:
        now = int(time.time())
        claims = {
            "sub": f"bench-{self.index}-{n}",
            "iat": now,
            "exp": now + 3600,
            "jti": uuid.uuid4().hex,
            "channels": [CHANNEL],
        }
        return jwt.encode(claims, JWT_SECRET, algorithm="HS256")

    async def _open_one(self, loop: asyncio.AbstractEventLoop, n: int) -> None:
        request, accept = upgrade_request(HOST, self.port, WS_PATH)
        command = orjson.dumps({"id": 1, "connect": {"token": self._token(n)}})
        frame = client_frame(command)
        ready: asyncio.Future[None] = loop.create_future()
        _, proto = await loop.create_connection(
            lambda: Subscriber(self.tally, request, accept, frame, ready), HOST, self.port
        )
        try:
            await asyncio.wait_for(ready, self.open_timeout)
        except BaseException:
            proto.abort()
            raise
        self.subs.append(proto)

    async def open(self, count: int) -> None:
        loop = asyncio.get_running_loop()
        start = self._tokens_made
        self._tokens_made += count
        numbers = iter(range(start, start + count))

        async def worker() -> None:
            for n in numbers:
                for attempt in range(3):
                    try:
                        await self._open_one(loop, n)
                        self.opened += 1
                        break
                    except (OSError, TimeoutError) as exc:
                        if attempt == 2:
                            self.failed += 1
                            key = f"{type(exc).__name__}: {exc}"[:120]
                            self.errors[key] = self.errors.get(key, 0) + 1
                        else:
                            await asyncio.sleep(0.2 * (attempt + 1))

        async def progress() -> None:
            while True:
                await asyncio.sleep(0.5)
                self.ctrl.send(("progress", self.opened, self.failed))

        reporter = loop.create_task(progress())
        try:
            await asyncio.gather(*(worker() for _ in range(self.concurrency)))
        finally:
            reporter.cancel()
        self.ctrl.send(("opened", self.opened, self.failed, dict(self.errors)))

    # --- phases ----------------------------------------------------------------------

    def arm(self, phase: int, messages: int) -> None:
        tally = self.tally
        tally.phase = phase
        tally.received = 0
        tally.last_ns = 0
        tally.latencies_us = array.array("q")
        live = sum(1 for s in self.subs if s.state == OPEN)
        tally.target = messages * live
        self._reported = False
        tally.on_target = self.report
        self.ctrl.send(("armed", live))
        if tally.target == 0:
            self.report()

    def report(self) -> None:
        if self._reported:
            return
        self._reported = True
        tally = self.tally
        self.ctrl.send(
            (
                "result",
                tally.received,
                tally.target,
                tally.last_ns,
                tally.closed,
                dict(tally.close_codes),
                tally.latencies_us.tobytes(),
            )
        )

    # --- control loop -------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        forward_orders(self.ctrl, loop, self._queue)
        try:
            while True:
                order = await self._queue.get()
                kind = order[0]
                if kind == "open":
                    await self.open(order[1])
                elif kind == "arm":
                    self.arm(order[1], order[2])
                elif kind == "progress":
                    self.ctrl.send(("phase-progress", self.tally.received))
                elif kind == "collect":
                    self.report()
                else:  # exit
                    break
        finally:
            for sub in self.subs:
                sub.abort()
            await asyncio.sleep(0.1)
        with contextlib.suppress(OSError):
            self.ctrl.send(("bye",))


def subscriber_main(ctrl: Connection, cfg: dict[str, Any]) -> None:
    """Entry point of a subscriber process.

    Orders: ``("open", n)`` -> progress reports, then ``("opened", ok, failed, errors)``;
    ``("arm", phase, messages)`` -> ``("armed", live)``, then ``("result", ...)`` once
    every live connection has all ``messages`` of the phase, or on ``("collect",)``;
    ``("exit",)`` -> connections reset, ``("bye",)``.
    """
    ignore_sigint()
    raise_nofile()
    if cfg.get("cpus"):
        os.sched_setaffinity(0, cfg["cpus"])
    with contextlib.suppress(BrokenPipeError, EOFError, ConnectionResetError):
        uvloop.run(Generator(ctrl, cfg).run())


# --- publisher ---------------------------------------------------------------------------


async def _publish_phase(
    session: aiohttp.ClientSession, url: str, phase: int, mode: str, count: int, rate: float
) -> tuple[Any, ...]:
    loop = asyncio.get_running_loop()
    headers = {"X-API-Key": API_KEY, "Content-Type": "application/json"}
    ok, errors = 0, 0
    first_ns = last_ns = 0
    start = loop.time()
    behind = 0.0
    for seq in range(count):
        if mode == "spread":
            delay = start + seq / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                behind = max(behind, -delay)
        sent_ns = time.time_ns()
        body = orjson.dumps({"channel": CHANNEL, "data": {"p": phase, "s": seq, "t": sent_ns}})
        if not first_ns:
            first_ns = sent_ns
        last_ns = sent_ns
        async with session.post(url, data=body, headers=headers) as resp:
            answer = await resp.read()
        if resp.status == 200 and b'"error"' not in answer:
            ok += 1
        else:
            errors += 1
    return ("published", ok, errors, first_ns, last_ns, behind)


async def _publisher(ctrl: Connection, url: str) -> None:
    connector = aiohttp.TCPConnector(limit=1, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        loop = asyncio.get_running_loop()
        while True:
            order = await loop.run_in_executor(None, ctrl.recv)
            if order[0] != "run":
                break
            _, phase, mode, count, rate = order
            ctrl.send(await _publish_phase(session, url, phase, mode, count, rate))


def publisher_main(ctrl: Connection, url: str, cpus: set[int] | None = None) -> None:
    """Entry point of the publisher process.

    Orders: ``("run", phase, mode, count, rate)`` -> ``("published", ok, errors,
    first_ns, last_ns, seconds_behind)``; anything else ends the process. Each
    publication's data is ``{"p": phase, "s": seq, "t": send time in ns}``; requests go
    one after the other over one keep-alive connection.
    """
    ignore_sigint()
    if cpus:
        os.sched_setaffinity(0, cpus)
    with contextlib.suppress(BrokenPipeError, EOFError, ConnectionResetError):
        uvloop.run(_publisher(ctrl, url))
