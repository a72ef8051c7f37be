"""The load test's pieces the benchmarks' bursts and peers rely on.

- The publisher's batches (``Stream.batch``): one ``POST /api/batch`` request per burst,
  consecutive sequence numbers, per-command errors counted, bursts spaced so that the
  publications per second stay the stream's rate; a stream without batches still sends
  one ``/api/publish`` per publication. Checked against a recording HTTP server (what
  went over the wire), then end to end through our server's real batch API.
- The generator's Socket.IO mode against the real socket.io peers of the benchmarks
  (``bench/peers/socketio/server.mjs`` on Node.js, ``bench/python_socketio_server.py``
  under uvicorn), started here: authenticated connects (and refused ones), pings
  answered, publications from ``/api/batch`` counted in order with their latency.

The peers need ``make bench-deps`` (Node.js packages, python-socketio); without them
the peer tests skip with one line naming what is missing (on CI they fail).
"""

from __future__ import annotations

import asyncio
import importlib.util
import itertools
import multiprocessing
import sys
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from realtime_server.loadtest.counters import Counters
from realtime_server.loadtest.fleet import Generators, PublisherProcess
from realtime_server.loadtest.messages import (
    GeneratorConfig,
    Published,
    PublisherConfig,
    PublishResult,
    Stream,
    UserSpec,
)
from realtime_server.loadtest.pipes import Pipes
from realtime_server.loadtest.publisher import Publisher
from realtime_server.loadtest.sioclient import SOCKETIO_PATH
from realtime_server.loadtest.spawn import ServerProcess

from .conftest import StartServer, api_url
from .helpers import API_KEY, SCALE, SECRET
from .prereq import NODE_INSTALL, missing, need_program

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parent.parent
NODE_PEER = ROOT / "bench" / "peers" / "socketio"
PYTHON_PEER = ROOT / "bench" / "python_socketio_server.py"
BENCH_DEPS = "run `make bench-deps`"


# --- the publisher's batches, on the wire ----------------------------------------------------


class Recorder:
    """A real HTTP server answering like our API and keeping every request it got:
    (path, body, monotonic arrival time). ``fail`` names (request number, command
    index) pairs answered with a per-command error."""

    def __init__(self, fail: frozenset[tuple[int, int]] = frozenset()) -> None:
        self.requests: list[tuple[str, dict[str, Any], float]] = []
        self.fail = fail
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def _publish(self, request: web.Request) -> web.Response:
        self.requests.append(("publish", orjson.loads(await request.read()), time.monotonic()))
        return web.json_response({"result": {}})

    async def _batch(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        number = len(self.requests)
        self.requests.append(("batch", body, time.monotonic()))
        replies = [
            {"error": {"code": 102, "message": "unknown channel"}}
            if (number, i) in self.fail
            else {"publish": {"offset": i + 1, "epoch": "e"}}
            for i in range(len(body["commands"]))
        ]
        return web.json_response({"result": {"replies": replies}})

    async def __aenter__(self) -> Recorder:
        app = web.Application()
        app.router.add_post("/api/publish", self._publish)
        app.router.add_post("/api/batch", self._batch)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = self.runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


class InProcess:
    """The publisher's state machine in this process, its pipe's other end read here."""

    def __init__(self, url: str) -> None:
        self.conn, theirs = multiprocessing.Pipe()
        config = PublisherConfig(via="api", streams=(), api_url=url, api_key=API_KEY, inflight=1)
        self.publisher = Publisher(theirs, config)

    async def run(self, *streams: Stream) -> PublishResult:
        """One run of ``streams``; its result."""
        await asyncio.wait_for(self.publisher.run_for(None, streams), 30 * SCALE)
        return _published(self.conn)


def _published(conn: Connection) -> PublishResult:
    while conn.poll(0):
        message = conn.recv()
        if isinstance(message, Published):
            return message.result
    raise AssertionError("the publisher sent no result")


async def test_a_burst_goes_in_one_batch_request_with_consecutive_sequence_numbers() -> None:
    async with Recorder(fail=frozenset({(1, 3)})) as api:
        publisher = InProcess(api.url)
        result = await publisher.run(Stream(("document:a",), 0.0, "broadcast", count=25, batch=10))
        assert [(path, len(body["commands"])) for path, body, _ in api.requests] == [
            ("batch", 10),
            ("batch", 10),
            ("batch", 5),
        ]
        sent = [c["publish"] for _, body, _ in api.requests for c in body["commands"]]
        assert {p["channel"] for p in sent} == {"document:a"}
        assert [p["data"]["s"] for p in sent] == list(range(1, 26))
        assert all(isinstance(p["data"]["t"], int) for p in sent)
        # The second request's fourth command (s=14) was refused: one error, the others
        # count, and the channel's count is the last one that went through.
        assert result.published == 24
        assert result.errors == {"api: error 102": 1}
        assert result.counts == {"document:a": 25}
        assert result.rtt.total == 24

        # Without batches, one /api/publish per publication, numbers going on.
        api.requests.clear()
        result = await publisher.run(Stream(("document:a",), 0.0, "broadcast", count=2))
        assert [(path, body["data"]["s"]) for path, body, _ in api.requests] == [
            ("publish", 26),
            ("publish", 27),
        ]
        assert result.published == 2 and result.counts == {"document:a": 27}


async def test_bursts_keep_the_stream_rate_in_publications_per_second() -> None:
    """40 publications per second in bursts of 10: a burst every 0.25 s (never sooner:
    the publisher waits for each one's due time), the last burst cut to the count."""
    async with Recorder() as api:
        stream = Stream(("document:a", "document:b"), 40.0, "status", count=25, batch=10)
        result = await InProcess(api.url).run(stream)
        assert [len(body["commands"]) for _, body, _ in api.requests] == [10, 10, 5]
        times = [at for _, _, at in api.requests]
        assert all(later - earlier >= 0.24 for earlier, later in itertools.pairwise(times))
        # Channels in turn within and across bursts, each with its own numbering.
        sent = [c["publish"] for _, body, _ in api.requests for c in body["commands"]]
        assert [p["channel"] for p in sent[:3]] == ["document:a", "document:b", "document:a"]
        assert [p["data"]["s"] for p in sent if p["channel"] == "document:b"] == list(range(1, 13))
        assert result.published == 25 and result.counts == {"document:a": 13, "document:b": 12}


# --- generators and the publisher processes against a server ----------------------------------


class Fleet:
    """Generator processes and the publisher process, driven from a test (blocking
    calls: run them in a thread when the server is in this process)."""

    def __init__(self, configs: list[GeneratorConfig], users: list[UserSpec], api: str) -> None:
        self.pipes = Pipes()
        try:
            self.gens = Generators(self.pipes, len(configs))
            self.gens.setup(configs, users)
            config = PublisherConfig(
                via="api", streams=(), api_url=api, api_key=API_KEY, inflight=1, timeout=10.0
            )
            self.pub = PublisherProcess(self.pipes, config, None)
        except BaseException:
            self.pipes.stop()
            raise

    def open(self) -> list[Counters]:
        self.gens.open(list(self.gens.shares), [0] * len(self.gens.shares), 8)
        return self.gens.stats

    def publish(self, stream: Stream) -> PublishResult:
        self.pub.run(None, (stream,))
        return self.pub.wait(30 * SCALE)

    def wait_received(self, total: int) -> list[Counters]:
        """The generators' counters once they received ``total`` live publications
        between them (or after a bounded wait)."""
        deadline = time.monotonic() + 10 * SCALE
        while time.monotonic() < deadline:
            self.gens.refresh()
            if self.gens.total(lambda c: c.received) >= total:
                break
            self.pipes.pump(0.05)
        self.gens.refresh()
        return self.gens.stats

    def stop(self) -> None:
        self.pipes.stop()


def _configs(port: int, path: str, protocol: str, secrets: list[str]) -> list[GeneratorConfig]:
    return [
        GeneratorConfig(
            index=i, host="127.0.0.1", port=port, path=path, secret=secret, reconnect=False,
            user_channel=protocol == "centrifuge", prefix="peers-", protocol=protocol,
            open_timeout=10 * SCALE,
        )
        for i, secret in enumerate(secrets)
    ]  # fmt: skip


async def test_batches_through_our_api_reach_every_subscriber_in_order(
    start_server: StartServer,
) -> None:
    server = await start_server()

    def run() -> tuple[PublishResult, list[Counters]]:
        configs = _configs(server.port, "/connection/websocket", "centrifuge", [SECRET])
        users = [UserSpec(f"u{i}", ("document:burst",)) for i in range(20)]
        fleet = Fleet(configs, users, api_url(server))
        try:
            fleet.open()
            result = fleet.publish(Stream(("document:burst",), 0.0, "broadcast", 30, batch=10))
            return result, fleet.wait_received(20 * 30)
        finally:
            fleet.stop()

    result, (c,) = await asyncio.to_thread(run)
    assert result.published == 30 and result.errors == {}
    assert c.opened == 20 and c.failed == {}
    assert c.received == 20 * 30 and c.latency.total == 20 * 30
    assert c.gaps == 0 and c.duplicates == 0 and c.foreign == 0


# --- the Socket.IO mode against the socket.io peers ---------------------------------------------


def _node_peer(port: int, api_port: int) -> list[str]:
    node = need_program("node", NODE_INSTALL)
    return [node, str(NODE_PEER / "server.mjs"), "--port", str(port),
            "--api-port", str(api_port), "--ping-interval", "0.3"]  # fmt: skip


def _python_peer(port: int, api_port: int) -> list[str]:
    return [sys.executable, str(PYTHON_PEER), "--port", str(port), "--api-port",
            str(api_port), "--ping-interval", "0.3"]  # fmt: skip


def _need(peer: str) -> None:
    if peer == "socketio-node":
        need_program("node", NODE_INSTALL)
        if not (NODE_PEER / "node_modules" / "socket.io").is_dir():
            missing(f"bench/peers/socketio/node_modules not installed: {BENCH_DEPS}")
        return
    for module in ("socketio", "starlette", "uvicorn"):
        if importlib.util.find_spec(module) is None:
            missing(f"{module} (the python-socketio peer) not installed: {BENCH_DEPS}")


@pytest.fixture(params=["socketio-node", "python-socketio"])
def peer(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServerProcess]:
    """A socket.io peer of the benchmarks, pinging every 0.3 s and allowing 0.3 s for
    the answer, on free loopback ports."""
    name = request.param
    _need(name)
    env = {"BENCH_JWT_SECRET": SECRET, "BENCH_API_KEY": API_KEY}
    command = _node_peer if name == "socketio-node" else _python_peer
    proc = ServerProcess(tmp_path, env, command=command, name=name)
    proc.start(30 * SCALE)
    try:
        yield proc
    finally:
        proc.stop(10.0)


def test_socketio_mode_connects_answers_pings_and_counts_publications(
    peer: ServerProcess,
) -> None:
    # Generator 0 mints good tokens, generator 1 tokens signed with another secret.
    other = "not-the-peer-secret-0123456789abcdef"
    configs = _configs(peer.port, SOCKETIO_PATH, "socketio", [SECRET, other])
    users = [UserSpec(f"s{i}", ("document:sio",)) for i in range(12)]
    fleet = Fleet(configs, users, peer.api_url)
    try:
        good, bad = fleet.open()
        assert good.opened == 6 and good.failed == {}
        assert bad.opened == 0
        assert bad.failed == {"socket.io connect error: invalid token": 6}
        # Several ping intervals pass: a client that did not answer would be closed
        # after 0.6 s (interval + allowance).
        time.sleep(1.5)
        result = fleet.publish(Stream(("document:sio",), 0.0, "broadcast", 12, batch=4))
        assert result.published == 12 and result.errors == {}
        good, _ = fleet.wait_received(6 * 12)
    finally:
        fleet.stop()
    assert good.closes == {} and good.open_now == 6
    assert good.received == 6 * 12 and good.latency.total == 6 * 12
    assert good.gaps == 0 and good.duplicates == 0 and good.foreign == 0
