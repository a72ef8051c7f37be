"""Event-log benchmark: what the log writes, and what it costs delivery, in one run.

1. **Writer**: events/s the batching writer sustains into PostgreSQL (a private,
   durable cluster: fsync on) and into SQLite, in process: events are created and
   recorded as fast as the writer keeps up (the buffer is kept under its spill mark,
   so the figure is the store's, not the spill file's).
2. **Delivery**: the same workloads against a real server process with the event log
   off, on PostgreSQL and on SQLite (the modes alternate, ``--repeat`` rounds, medians
   reported):

   - ``fanout``: S subscribers on one document channel; publications through the
     HTTP API at a steady ``--rate`` (below saturation, so latency means something).
     One event per publication.
   - ``personal``: S subscribers each on their ``user:<id>`` channel; a burst of M
     publications (8 in flight) round-robin over them. One event per delivery: the
     log's worst case for publications.
   - ``churn``: C connections opened and closed (16 at a time): four events each
     (connect, subscribe user:<id>, disconnect, unsubscribe).

   For each: throughput, publish-to-receive latency (p50/p99), and the server's CPU
   seconds per 1000 operations (from /proc), the steadiest measure of the log's cost.

    .venv/bin/python bench/eventlog.py [--events N] [--subscribers S] [--messages M]
        [--fanout-messages F] [--rate R] [--churn C] [--repeat R] [--database-url URL]
        [--json]

Only 127.0.0.1; every step is time-bounded; every process (server, clients, the
private PostgreSQL) is stopped at the end, on failure and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Final

import jwt
import orjson
from common import API_KEY, HOST, JWT_SECRET, SERVER_ENV, WS_PATH
from websockets.asyncio.client import connect

ROOT: Final = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from realtime_server.events.buffer import BufferedRecorder  # noqa: E402
from realtime_server.events.model import Event, EventType  # noqa: E402
from realtime_server.events.postgres import PostgresStore  # noqa: E402
from realtime_server.events.sqlite import SqliteStore  # noqa: E402
from realtime_server.events.store import EventStore  # noqa: E402
from realtime_server.loadtest.errors import LoadTestError  # noqa: E402
from realtime_server.loadtest.fleet import Generators, PublisherProcess  # noqa: E402
from realtime_server.loadtest.messages import (  # noqa: E402
    GeneratorConfig,
    PublisherConfig,
    Stream,
    UserSpec,
)
from realtime_server.loadtest.pipes import Pipes  # noqa: E402
from realtime_server.loadtest.procfs import read_proc  # noqa: E402
from realtime_server.loadtest.spawn import ServerProcess, SpawnError  # noqa: E402

MODES: Final = ("off", "postgres", "sqlite")
DOC: Final = "document:bench"
STEP_TIMEOUT: Final = 120.0


class BenchError(RuntimeError):
    """A step failed or ran out of time."""


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --- 1. writer throughput ------------------------------------------------------------


async def _until(check: Callable[[], bool], limit: float, poll: float = 0.005) -> None:
    """Re-check ``check`` until it holds (the writer's progress signals nothing)."""
    async with asyncio.timeout(limit):
        while True:
            if check():
                return
            await asyncio.sleep(poll)


async def writer_rate(store: EventStore, spill: Path, events: int) -> dict[str, float]:
    """Events/s from ``record`` to stored, the events made beforehand."""
    made = [
        Event(
            EventType.PUBLICATION,
            "bench",
            user=f"u{i % 997}",
            channel=f"document:{i % 4099}",
            offset=i,
            details={"size": 120, "publisher": "api"},
        )
        for i in range(events)
    ]
    recorder = BufferedRecorder(
        store, spill, capacity=100_000, batch_size=1000, flush_interval=0.2, timeout=30.0
    )
    await recorder.start()
    try:
        start = time.perf_counter()
        async with asyncio.timeout(STEP_TIMEOUT):
            for chunk in range(0, events, 1000):
                # Stay under the spill mark (50,000): measure the store, not the spill.
                await _until(lambda: recorder.buffered <= 40_000, STEP_TIMEOUT, 0.001)
                for event in made[chunk : chunk + 1000]:
                    recorder.record(event)
                await asyncio.sleep(0)
        await _until(lambda: recorder.written >= events, STEP_TIMEOUT)
        elapsed = time.perf_counter() - start
        if recorder.dropped or recorder.spilled:
            raise BenchError(f"writer dropped {recorder.dropped}, spilled {recorder.spilled}")
        return {"events": events, "seconds": elapsed, "events_per_s": events / elapsed}
    finally:
        await recorder.close()


async def writer_cost(store: EventStore, spill: Path, events: int) -> float:
    """CPU microseconds this process spends per event at a paced 2000 events/s (20
    every 10 ms): ``record`` plus the writer (conversion, COPY or the SQLite thread),
    minus the same pacing loop creating the same events without a recorder."""
    recorder = BufferedRecorder(
        store, spill, capacity=100_000, batch_size=1000, flush_interval=0.2, timeout=30.0
    )
    await recorder.start()

    async def paced(record: Callable[[Event], None], target: int) -> float:
        start = time.process_time()
        for i in range(0, events, 20):
            for j in range(i, i + 20):
                record(
                    Event(
                        EventType.PUBLICATION,
                        "bench",
                        user="u1",
                        channel="document:1",
                        offset=j,
                        details={"size": 120, "publisher": "api"},
                    )
                )
            await asyncio.sleep(0.01)
        await _until(lambda: recorder.written >= target, STEP_TIMEOUT)
        return time.process_time() - start

    try:
        with_log = await paced(recorder.record, events)
        without = await paced(lambda event: None, 0)
        return 1e6 * (with_log - without) / events
    finally:
        await recorder.close()


# --- 2. servers --------------------------------------------------------------------------


class Server:
    """Our server (the load test's spawner) with the event log ``mode``."""

    def __init__(self, mode: str, workdir: Path, database_url: str | None) -> None:
        self.mode = mode
        env = {
            **SERVER_ENV,
            "REALTIME_NAMESPACES": '{"document": {"join_leave": false, "presence": false}}',
            "REALTIME_EVENTS_ENABLED": "false" if mode == "off" else "true",
        }
        if mode == "postgres":
            assert database_url is not None
            env["REALTIME_DATABASE_URL"] = database_url
        self.proc = ServerProcess(workdir, env, name=f"server-{mode}")
        self.port, self.api_port = self.proc.port, self.proc.api_port
        try:
            self.proc.start(20.0)
        except SpawnError as exc:
            raise BenchError(f"server ({mode}) did not start: {exc}") from None

    def cpu(self) -> float:
        return read_proc(self.proc.pid).cpu_s

    def metrics(self) -> dict[str, float]:
        import urllib.request

        url = f"http://{HOST}:{self.port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        values: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("realtime_event_log_"):
                name, value = line.split()
                values[name.removeprefix("realtime_event_log_")] = float(value)
        return values

    def stop(self) -> None:
        self.proc.stop()


def _token(user: str, channels: list[str] | None = None) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {"sub": user, "iat": now, "exp": now + 3600}
    if channels:
        claims["channels"] = channels
    return jwt.encode(claims, JWT_SECRET, algorithm="HS256")


# --- workloads ------------------------------------------------------------------------------


def publish_run(
    server: Server, kind: str, subscribers: int, messages: int, rate: float = 0.0
) -> dict[str, float]:
    """Publish ``messages`` through the HTTP API, 8 requests in flight (``rate`` > 0:
    at that many per second instead of as fast as possible), to ``subscribers`` users
    of the load test's generator: all on one document (``f``), or each on its own
    ``user:<id>`` channel, the publications round-robin over them (``p``)."""
    expect = messages * subscribers if kind == "f" else messages
    names = [f"{kind}{i}" for i in range(subscribers)]
    if kind == "f":
        users = [UserSpec(name, (DOC,)) for name in names]
        channels: tuple[str, ...] = (DOC,)
    else:
        users = [UserSpec(name, ()) for name in names]
        channels = tuple(f"user:{name}" for name in names)
    pipes = Pipes(deadline=time.monotonic() + 3 * STEP_TIMEOUT)
    try:
        gens = Generators(pipes, 1)
        config = GeneratorConfig(
            index=0, host=HOST, port=server.port, path=WS_PATH, secret=JWT_SECRET, reconnect=False
        )
        gens.setup([config], users)
        gens.open([subscribers], [0], 32)
        if gens.total(lambda c: c.opened) < subscribers:
            raise BenchError(f"connect refused: {gens.merged(lambda c: c.failed)}")
        publisher = PublisherConfig(
            via="api", streams=(Stream(channels, rate, "broadcast", count=messages),),
            api_url=server.proc.api_url, api_key=API_KEY, inflight=8, timeout=STEP_TIMEOUT,
        )  # fmt: skip
        pub = PublisherProcess(pipes, publisher, None)
        cpu0 = server.cpu()
        pub.run(None)
        done = pub.wait(STEP_TIMEOUT)
        if done.errors:
            raise BenchError(f"publish: {done.errors}")
        deadline = time.monotonic() + STEP_TIMEOUT
        while gens.total(lambda c: c.received) < expect and time.monotonic() < deadline:
            gens.refresh()
        cpu = server.cpu() - cpu0
        received = gens.total(lambda c: c.received)
        last_ns = max(c.last_recv_ns for c in gens.stats)
        latency = gens.latency()
    except LoadTestError as exc:
        raise BenchError(str(exc)) from None
    finally:
        pipes.stop()
    if received < expect:
        raise BenchError(f"{kind}: {received} of {expect} deliveries")
    start_ns, published_ns = done.started_ns, done.ended_ns
    seconds = (max(last_ns, published_ns) - start_ns) / 1e9
    return {
        "publications_per_s": messages / ((published_ns - start_ns) / 1e9),
        "deliveries_per_s": received / seconds,
        "p50_ms": latency.percentile(0.50) / 1000,
        "p99_ms": latency.percentile(0.99) / 1000,
        "cpu_ms_per_1000": 1e6 * cpu / messages,
    }


async def churn_run(server: Server, connections: int) -> dict[str, float]:
    url = f"ws://{HOST}:{server.port}{WS_PATH}"
    tokens = [_token(f"c{i}") for i in range(connections)]
    pending = iter(tokens)
    cpu0 = server.cpu()
    start = time.perf_counter()

    async def worker() -> None:
        for tok in pending:
            async with connect(url, ping_interval=None, compression=None) as ws:
                await ws.send(orjson.dumps({"id": 1, "connect": {"token": tok}}).decode())
                reply = orjson.loads(str(await ws.recv()).split("\n")[0])
                if "connect" not in reply:
                    raise BenchError(f"connect refused: {reply}")

    async with asyncio.timeout(STEP_TIMEOUT):
        await asyncio.gather(*(worker() for _ in range(16)))
    seconds = time.perf_counter() - start
    cpu = server.cpu() - cpu0
    return {"connects_per_s": connections / seconds, "cpu_ms_per_1000": 1e6 * cpu / connections}


# --- orchestration -----------------------------------------------------------------------


@contextlib.asynccontextmanager
async def postgres(url: str | None) -> AsyncIterator[tuple[str, Callable[[], Any]]]:
    """A database URL (the given one, or a private durable cluster's) and a factory
    of fresh databases on it."""
    if url is not None:

        async def same() -> str:
            return url

        yield url, same
        return
    from tests.pg import PgCluster

    async with PgCluster(durable=True) as cluster:
        yield cluster.dsn(), cluster.create_database


async def wait_drained(server: Server) -> dict[str, float]:
    """After a run: the log holds nothing back (written; nothing dropped or spilled)."""
    values: dict[str, float] = {}

    def drained() -> bool:
        values.update(server.metrics())
        return values.get("buffered", 0) == 0 and values.get("spill_pending", 0) == 0

    await _until(drained, 60.0, 0.1)
    return values


async def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"writer": {}, "delivery": {m: [] for m in MODES}}
    with tempfile.TemporaryDirectory(prefix="rt-eventlog-") as tmp:
        workdir = Path(tmp)
        async with postgres(args.database_url) as (_, new_database):
            log(f"writer: {args.events} events into PostgreSQL ...")
            pg_url = await new_database()
            store = PostgresStore(pg_url, timeout=30.0)
            await store.connect()
            await store.migrate()
            results["writer"]["postgres"] = await writer_rate(
                store, workdir / "w-pg.spill", args.events
            )
            results["writer"]["postgres"]["cpu_us_per_event"] = await writer_cost(
                store, workdir / "w-pg2.spill", 20_000
            )
            log(f"writer: {args.events} events into SQLite ...")
            sqlite = SqliteStore(workdir / "writer.db", timeout=30.0)
            await sqlite.connect()
            await sqlite.migrate()
            results["writer"]["sqlite"] = await writer_rate(
                sqlite, workdir / "w-sq.spill", args.events
            )
            results["writer"]["sqlite"]["cpu_us_per_event"] = await writer_cost(
                sqlite, workdir / "w-sq2.spill", 20_000
            )
            for round_ in range(args.repeat):
                for mode in MODES:
                    log(f"delivery round {round_ + 1}/{args.repeat}: log {mode} ...")
                    url = await new_database() if mode == "postgres" else None
                    server = Server(mode, workdir, url)
                    try:
                        entry = {
                            "fanout": await asyncio.to_thread(
                                publish_run,
                                server,
                                "f",
                                args.subscribers,
                                args.fanout_messages,
                                args.rate,
                            ),
                            "personal": await asyncio.to_thread(
                                publish_run, server, "p", args.subscribers, args.messages
                            ),
                            "churn": await churn_run(server, args.churn),
                        }
                        if mode != "off":
                            entry["log"] = await wait_drained(server)
                            if entry["log"].get("dropped", 0) or entry["log"].get("spilled", 0):
                                raise BenchError(f"log {mode}: {entry['log']}")
                        results["delivery"][mode].append(entry)
                    finally:
                        server.stop()
    return results


def _median(entries: list[dict[str, Any]], workload: str, key: str) -> float:
    return float(statistics.median(float(e[workload][key]) for e in entries))


def report(results: dict[str, Any], args: argparse.Namespace) -> str:
    lines = [
        f"Event log benchmark ({os.cpu_count()} CPUs; medians of {args.repeat} rounds)",
        "",
        "Writer (in process, batches of 1000, COPY for PostgreSQL):",
    ]
    for store, r in results["writer"].items():
        lines.append(
            f"  {store:<9} {r['events_per_s']:>10,.0f} events/s sustained;"
            f" {r['cpu_us_per_event']:.1f} us of CPU per event at 2000 events/s"
        )
    lines += ["", "Delivery with the event log off / on:"]
    header = f"  {'workload':<34}" + "".join(f"{m:>12}" for m in MODES) + "   on/off (pg)"
    lines.append(header)
    rows = [
        ("fanout", "deliveries_per_s", f"fanout {args.subscribers} subs: deliveries/s"),
        ("fanout", "p50_ms", "fanout: latency p50 ms"),
        ("fanout", "p99_ms", "fanout: latency p99 ms"),
        ("fanout", "cpu_ms_per_1000", "fanout: server CPU ms/1000 pubs"),
        ("personal", "publications_per_s", f"personal {args.subscribers} chans: pubs/s"),
        ("personal", "p50_ms", "personal: latency p50 ms"),
        ("personal", "p99_ms", "personal: latency p99 ms"),
        ("personal", "cpu_ms_per_1000", "personal: server CPU ms/1000 pubs"),
        ("churn", "connects_per_s", "churn: connects/s"),
        ("churn", "cpu_ms_per_1000", "churn: server CPU ms/1000 conns"),
    ]
    delivery = results["delivery"]
    for workload, key, label in rows:
        values = [_median(delivery[m], workload, key) for m in MODES]
        ratio = values[1] / values[0] if values[0] else float("nan")
        lines.append(
            f"  {label:<34}" + "".join(f"{v:>12,.1f}" for v in values) + f"   {ratio:>8.2f}x"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000, help="writer events (200000)")
    parser.add_argument("--subscribers", type=int, default=200, help="subscribers (200)")
    parser.add_argument(
        "--messages", type=int, default=5000, help="personal publications, a burst (5000)"
    )
    parser.add_argument(
        "--fanout-messages", type=int, default=600, help="fanout publications (600)"
    )
    parser.add_argument("--rate", type=float, default=150.0, help="fanout publications/s (150)")
    parser.add_argument("--churn", type=int, default=3000, help="connections opened (3000)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds per mode (3)")
    parser.add_argument("--database-url", help="use this PostgreSQL instead of a private one")
    parser.add_argument("--json", action="store_true", help="print raw results as JSON")
    args = parser.parse_args()
    import uvloop

    try:
        results = uvloop.run(run(args))
    except BenchError as exc:
        log(f"benchmark failed: {exc}")
        return 1
    except KeyboardInterrupt:
        return 130
    if args.json:
        print(orjson.dumps(results, option=orjson.OPT_INDENT_2).decode())
    else:
        print(report(results, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
