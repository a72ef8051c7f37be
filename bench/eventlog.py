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
import multiprocessing
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Final

import aiohttp
import jwt
import orjson
from common import API_KEY, HOST, JWT_SECRET, free_port, read_proc, wait_port
from websockets.asyncio.client import connect

ROOT: Final = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from realtime_server.events.buffer import BufferedRecorder  # noqa: E402
from realtime_server.events.model import Event, EventType  # noqa: E402
from realtime_server.events.postgres import PostgresStore  # noqa: E402
from realtime_server.events.sqlite import SqliteStore  # noqa: E402
from realtime_server.events.store import EventStore  # noqa: E402

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
    def __init__(self, mode: str, workdir: Path, database_url: str | None) -> None:
        self.mode = mode
        self.port, self.api_port = free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("REALTIME_")}
        env.update(
            {
                "REALTIME_HOST": HOST,
                "REALTIME_PORT": str(self.port),
                "REALTIME_API_HOST": HOST,
                "REALTIME_API_PORT": str(self.api_port),
                "REALTIME_JWT_SECRET": JWT_SECRET,
                "REALTIME_API_KEY": API_KEY,
                "REALTIME_LOG_LEVEL": "WARNING",
                "REALTIME_MAX_CONNECTIONS_PER_USER": "0",
                "REALTIME_RATE_LIMIT": "100000",
                "REALTIME_RATE_BURST": "100000",
                "REALTIME_PING_INTERVAL": "0",
                "REALTIME_SHUTDOWN_TIMEOUT": "2",
                "REALTIME_NAMESPACES": '{"document": {"join_leave": false, "presence": false}}',
                "REALTIME_EVENTS_ENABLED": "false" if mode == "off" else "true",
                "REALTIME_SQLITE_PATH": str(workdir / f"events-{self.port}.db"),
                "REALTIME_EVENTS_SPILL_PATH": str(workdir / f"spill-{self.port}.jsonl"),
            }
        )
        if mode == "postgres":
            assert database_url is not None
            env["REALTIME_DATABASE_URL"] = database_url
        self.log = workdir / f"server-{mode}-{self.port}.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [str(Path(sys.executable).with_name("realtime-server")), "serve"],
                env=env,
                cwd=workdir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        for port in (self.port, self.api_port):
            if not wait_port(port, 20.0) or self.proc.poll() is not None:
                self.stop()
                raise BenchError(f"server ({mode}) did not start: {self.tail()}")

    def tail(self) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-10:])
        except OSError:
            return ""

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
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


# --- subscriber process --------------------------------------------------------------


def _token(user: str, channels: list[str] | None = None) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {"sub": user, "iat": now, "exp": now + 3600}
    if channels:
        claims["channels"] = channels
    return jwt.encode(claims, JWT_SECRET, algorithm="HS256")


async def _subscribers(ctrl: Connection, port: int, count: int, kind: str, expect: int) -> None:
    url = f"ws://{HOST}:{port}/connection/websocket"
    latencies: list[int] = []
    received = 0
    done = asyncio.Event()
    conns = []

    async def reader(ws: Any) -> None:
        nonlocal received
        async for frame in ws:
            now = time.time_ns()
            for line in frame.split("\n"):
                msg = orjson.loads(line)
                pub = msg.get("push", {}).get("pub") if isinstance(msg, dict) else None
                if pub is not None:
                    received += 1
                    latencies.append(now - pub["data"]["t"])
                    if received >= expect:
                        done.set()

    sem = asyncio.Semaphore(32)

    async def open_one(i: int) -> Any:
        async with sem:
            ws = await connect(url, max_size=None, ping_interval=None, compression=None)
            user = f"{kind}{i}"
            tok = _token(user, [DOC] if kind == "f" else None)
            await ws.send(orjson.dumps({"id": 1, "connect": {"token": tok}}).decode())
            reply = orjson.loads(str(await ws.recv()).split("\n")[0])
            if "connect" not in reply:
                raise BenchError(f"connect refused: {reply}")
            return ws

    loop = asyncio.get_running_loop()
    async with asyncio.timeout(STEP_TIMEOUT):
        conns = await asyncio.gather(*(open_one(i) for i in range(count)))
    tasks = [loop.create_task(reader(ws)) for ws in conns]
    ctrl.send(("ready", count))
    await loop.run_in_executor(None, ctrl.recv)  # "go"
    try:
        async with asyncio.timeout(STEP_TIMEOUT):
            await done.wait()
    except TimeoutError:
        pass
    last = time.time_ns()
    ctrl.send(("result", received, last, latencies))
    for task in tasks:
        task.cancel()
    for ws in conns:
        with contextlib.suppress(Exception):
            ws.transport.abort()


def subscribers_main(ctrl: Connection, port: int, count: int, kind: str, expect: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import uvloop

    with contextlib.suppress(BrokenPipeError, EOFError):
        uvloop.run(_subscribers(ctrl, port, count, kind, expect))


@contextlib.contextmanager
def subscriber_process(port: int, count: int, kind: str, expect: int) -> Iterator[Connection]:
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=subscribers_main, args=(child, port, count, kind, expect))
    proc.start()
    try:
        if not parent.poll(STEP_TIMEOUT):
            raise BenchError("subscribers did not connect in time")
        tag, *_ = parent.recv()
        if tag != "ready":
            raise BenchError(f"subscribers: {tag}")
        yield parent
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join(5)


# --- workloads ------------------------------------------------------------------------------


def _percentile(values: list[int], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1e6  # ms


async def publish_run(
    server: Server, kind: str, subscribers: int, messages: int, rate: float = 0.0
) -> dict[str, float]:
    """Publish ``messages`` through the HTTP API, 8 requests in flight (``rate`` > 0:
    at that many per second instead of as fast as possible)."""
    expect = messages * subscribers if kind == "f" else messages
    with subscriber_process(server.port, subscribers, kind, expect) as ctrl:
        url = f"http://{HOST}:{server.api_port}/api/publish"
        headers = {"X-API-Key": API_KEY, "Content-Type": "application/json"}
        sequence = iter(range(messages))
        cpu0 = server.cpu()
        ctrl.send("go")
        start_ns = time.time_ns()

        loop = asyncio.get_running_loop()
        begin = loop.time()

        async def publisher(session: aiohttp.ClientSession) -> None:
            for seq in sequence:
                if rate > 0:
                    delay = begin + seq / rate - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                channel = DOC if kind == "f" else f"user:p{seq % subscribers}"
                body = orjson.dumps({"channel": channel, "data": {"t": time.time_ns()}})
                async with session.post(url, data=body, headers=headers) as response:
                    if response.status != 200:
                        raise BenchError(f"publish: HTTP {response.status}")
                    await response.read()

        timeout = aiohttp.ClientTimeout(total=STEP_TIMEOUT)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async with asyncio.timeout(STEP_TIMEOUT):
                await asyncio.gather(*(publisher(session) for _ in range(8)))
        published_ns = time.time_ns()
        if not await loop.run_in_executor(None, ctrl.poll, STEP_TIMEOUT):
            raise BenchError("subscribers did not report")
        _, received, last_ns, latencies = ctrl.recv()
        cpu = server.cpu() - cpu0
    if received < expect:
        raise BenchError(f"{kind}: {received} of {expect} deliveries")
    seconds = (max(last_ns, published_ns) - start_ns) / 1e9
    return {
        "publications_per_s": messages / ((published_ns - start_ns) / 1e9),
        "deliveries_per_s": received / seconds,
        "p50_ms": _percentile(latencies, 0.50),
        "p99_ms": _percentile(latencies, 0.99),
        "cpu_ms_per_1000": 1e6 * cpu / messages,
    }


async def churn_run(server: Server, connections: int) -> dict[str, float]:
    url = f"ws://{HOST}:{server.port}/connection/websocket"
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
                            "fanout": await publish_run(
                                server, "f", args.subscribers, args.fanout_messages, args.rate
                            ),
                            "personal": await publish_run(
                                server, "p", args.subscribers, args.messages
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
