"""Outbox benchmark: commit-to-client latency, rows per second through one node and two,
and the server's CPU per row.

Everything is private and on 127.0.0.1: a durable PostgreSQL cluster (fsync on, unless
``--database-url``), a redis-server (unless ``--redis-url``), and ``realtime-server
serve`` processes on the Redis engine with ``REALTIME_OUTBOX_URL`` (event log off, to
measure the outbox path itself).

1. **Latency**: one node, one WebSocket subscriber; the application commits one
   ``realtime_publish`` row per transaction at ``--rate`` rows/s. Latency is from the
   moment COMMIT is sent (so it includes the commit's own fsync) to the publication's
   arrival at the subscriber (p50, p99, max).
2. **Throughput**: ``--rows`` rows spread over 100 document channels (with history)
   and ``--partitions`` partitions, with one node, then two:

   - ``concurrent``: inserted by ``--producers`` connections in
     ``--per-transaction``-row transactions while the nodes consume; rows/s from the
     first insert until the outbox is empty. The producers' own rate is reported too
     (when it is the lower one, it is the figure's limit);
   - ``backlog``: all rows committed in one transaction, then drained: the nodes'
     capacity.

   No subscribers: the figure is the outbox's, not the fan-out's.
3. **CPU**: the server processes' CPU seconds (``/proc``) per row in the throughput
   runs, and how busy the rest of the machine was.

    .venv/bin/python bench/outbox.py [--rows N] [--per-transaction 50] [--producers 2]
        [--partitions 2] [--latency-rows 1000] [--rate 200] [--database-url URL]
        [--redis-url URL] [--json]

Every step is time-bounded; every process started is stopped at the end, on failure and
on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final

import asyncpg  # type: ignore[import-untyped]
import jwt
import orjson
from common import API_KEY, JWT_SECRET, machine_busy_s, read_proc
from websockets.asyncio.client import connect

ROOT: Final = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from realtime_server.loadtest.spawn import RedisProcess, ServerProcess  # noqa: E402
from realtime_server.outbox.schema import migrate  # noqa: E402

STEP_TIMEOUT: Final = 300.0
CHANNELS: Final = 100


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _token(channels: list[str]) -> str:
    now = int(time.time())
    claims = {"sub": "bench", "iat": now, "exp": now + 3600, "channels": channels}
    return jwt.encode(claims, JWT_SECRET, algorithm="HS256")


@contextlib.asynccontextmanager
async def backends(args: argparse.Namespace, workdir: Path) -> AsyncIterator[tuple[Any, str]]:
    """(factory of fresh migrated outbox databases, Redis URL)."""
    redis = None
    cluster = None
    try:
        if args.redis_url:
            redis_url = args.redis_url
        else:
            redis = RedisProcess(workdir)
            redis.start()
            redis_url = redis.url
        if args.database_url:
            base = args.database_url

            async def same() -> str:
                return str(base)

            factory = same
        else:
            from tests.pg import PgCluster

            cluster = PgCluster(durable=True)
            await cluster.__aenter__()
            factory = cluster.create_database

        async def fresh() -> str:
            dsn = await factory()
            conn = await asyncpg.connect(dsn, timeout=10)
            try:
                await migrate(conn)
                await conn.execute("TRUNCATE realtime_outbox, realtime_outbox_failed")
            finally:
                await conn.close()
            return dsn

        yield fresh, redis_url
    finally:
        if cluster is not None:
            await cluster.__aexit__(None, None, None)
        if redis is not None:
            redis.stop()


def start_nodes(
    workdir: Path, count: int, dsn: str, redis_url: str, partitions: int
) -> list[ServerProcess]:
    env = {
        "REALTIME_JWT_SECRET": JWT_SECRET,
        "REALTIME_API_KEY": API_KEY,
        "REALTIME_REDIS_URL": redis_url,
        "REALTIME_REDIS_PREFIX": f"b{time.monotonic_ns() % 10**8}:",
        "REALTIME_OUTBOX_URL": dsn,
        "REALTIME_OUTBOX_PARTITIONS": str(partitions),
        "REALTIME_EVENTS_ENABLED": "false",
        "REALTIME_PING_INTERVAL": "0",
        "REALTIME_NAMESPACES": '{"document": {"join_leave": false, "presence": false}}',
    }
    nodes: list[ServerProcess] = []
    try:
        for _ in range(count):
            node = ServerProcess(workdir, env, workers=1, cpus=None)
            node.start()
            nodes.append(node)
    except BaseException:
        for node in nodes:
            node.stop()
        raise
    return nodes


# --- 1. latency ----------------------------------------------------------------------------


async def latency_run(
    workdir: Path, fresh: Any, redis_url: str, rows: int, rate: float
) -> dict[str, float]:
    dsn = await fresh()
    (node,) = start_nodes(workdir, 1, dsn, redis_url, 1)
    try:
        channel = "document:latency"
        committed: dict[int, float] = {}
        latencies: list[float] = []
        async with connect(node.ws_url, max_size=None, ping_interval=None) as ws:
            await ws.send(orjson.dumps({"id": 1, "connect": {"token": _token([channel])}}).decode())
            reply = orjson.loads(await ws.recv())
            assert "connect" in reply, reply
            done = asyncio.Event()

            async def receive() -> None:
                async for frame in ws:
                    now = time.perf_counter()
                    for line in str(frame).split("\n"):
                        push = orjson.loads(line).get("push") if line else None
                        if push and "pub" in push:
                            seq = push["pub"]["data"]["seq"]
                            latencies.append(now - committed[seq])
                            if len(latencies) == rows:
                                done.set()
                                return

            reader = asyncio.get_running_loop().create_task(receive())
            conn = await asyncpg.connect(dsn, timeout=10)
            try:
                start = time.perf_counter()
                for seq in range(rows):
                    # Paced, not a burst: each row is a user's action.
                    delay = start + seq / rate - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    await conn.execute("BEGIN")
                    await conn.execute(
                        "SELECT realtime_publish($1, $2::jsonb)",
                        channel,
                        orjson.dumps({"seq": seq}).decode(),
                    )
                    committed[seq] = time.perf_counter()  # COMMIT sent (fsync included)
                    await conn.execute("COMMIT")
                async with asyncio.timeout(STEP_TIMEOUT):
                    await done.wait()
            finally:
                await conn.close()
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
    finally:
        node.stop()
    ms = sorted(1000 * x for x in latencies)
    return {
        "rows": rows,
        "rate": rate,
        "p50_ms": statistics.median(ms),
        "p99_ms": ms[min(len(ms) - 1, int(len(ms) * 0.99))],
        "max_ms": ms[-1],
    }


# --- 2. throughput -------------------------------------------------------------------------


async def produce_in(conn: Any, rows: range, partitions: int) -> None:
    """``realtime_publish`` for each row, in the connection's current transaction."""
    await conn.executemany(
        "SELECT realtime_publish($1, $2::jsonb, $3)",
        [
            (
                f"document:t{i % CHANNELS}",
                orjson.dumps({"n": i, "status": "signed"}).decode(),
                i % partitions,
            )
            for i in rows
        ],
    )


async def produce(dsn: str, rows: range, per_transaction: int, partitions: int) -> None:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        for start in range(rows.start, rows.stop, per_transaction):
            async with conn.transaction():
                chunk = range(start, min(start + per_transaction, rows.stop))
                await produce_in(conn, chunk, partitions)
    finally:
        await conn.close()


async def throughput_run(
    workdir: Path,
    fresh: Any,
    redis_url: str,
    args: argparse.Namespace,
    nodes_count: int,
    backlog: bool,
) -> dict[str, Any]:
    """``backlog``: all rows committed in one transaction, then drained (the nodes'
    capacity); else producers commit ``--per-transaction``-row transactions while the
    nodes consume."""
    dsn = await fresh()
    nodes = start_nodes(workdir, nodes_count, dsn, redis_url, args.partitions)
    watch = await asyncpg.connect(dsn, timeout=10)
    try:
        total = args.rows
        if backlog:
            async with watch.transaction():
                await produce_in(watch, range(total), args.partitions)
                cpu0 = [read_proc(n.pid).cpu_s for n in nodes]
                busy0 = machine_busy_s()
            start = time.perf_counter()
        else:
            cpu0 = [read_proc(n.pid).cpu_s for n in nodes]
            busy0 = machine_busy_s()
            start = time.perf_counter()
        share = total // args.producers
        ranges = [range(i * share, total if i == args.producers - 1 else (i + 1) * share)
                  for i in range(args.producers)]  # fmt: skip
        producers = [
            asyncio.get_running_loop().create_task(
                produce(dsn, r, args.per_transaction, args.partitions)
            )
            for r in ([] if backlog else ranges)
        ]
        async with asyncio.timeout(STEP_TIMEOUT):
            await asyncio.gather(*producers)
            produced = time.perf_counter() - start
            drained_sql = "SELECT EXISTS (SELECT 1 FROM realtime_outbox)"
            while await watch.fetchval(drained_sql):  # noqa: ASYNC110 - no event for this
                await asyncio.sleep(0.02)
        drained = time.perf_counter() - start
        cpu = sum(read_proc(n.pid).cpu_s - c for n, c in zip(nodes, cpu0, strict=True))
        busy = machine_busy_s() - busy0
        failed = await watch.fetchval("SELECT count(*) FROM realtime_outbox_failed")
        if failed:
            raise RuntimeError(f"{failed} rows failed: see realtime_outbox_failed")
    finally:
        await watch.close()
        for node in nodes:
            node.stop()
    return {
        "mode": "backlog" if backlog else "concurrent",
        "nodes": nodes_count,
        "rows": total,
        "rows_per_s": total / drained,
        "producer_rows_per_s": None if backlog else total / produced,
        "server_cpu_us_per_row": 1e6 * cpu / total,
        "server_cpu_s": cpu,
        "machine_busy_cpus": busy / drained,
        "seconds": drained,
    }


# --- orchestration ---------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"throughput": []}
    with tempfile.TemporaryDirectory(prefix="rt-bench-outbox-") as tmp:
        workdir = Path(tmp)
        async with backends(args, workdir) as (fresh, redis_url):
            log(f"latency: {args.latency_rows} rows at {args.rate}/s, one per transaction")
            results["latency"] = await latency_run(
                workdir, fresh, redis_url, args.latency_rows, args.rate
            )
            for round_ in range(args.repeat):
                for backlog in (False, True):
                    for nodes_count in (1, 2):
                        mode = "backlog" if backlog else "concurrent"
                        log(f"throughput: {mode}, {nodes_count} node(s), round {round_ + 1}")
                        results["throughput"].append(
                            await throughput_run(
                                workdir, fresh, redis_url, args, nodes_count, backlog
                            )
                        )
    return results


def report(results: dict[str, Any], args: argparse.Namespace) -> str:
    lat = results["latency"]
    lines = [
        f"commit-to-client latency ({lat['rows']} rows, {lat['rate']:g}/s, one per"
        f" transaction): p50 {lat['p50_ms']:.1f} ms, p99 {lat['p99_ms']:.1f} ms,"
        f" max {lat['max_ms']:.1f} ms",
        "",
        f"throughput ({args.rows} rows, {args.per_transaction}-row transactions,"
        f" {args.producers} producers, {args.partitions} partitions):",
        "| rows | nodes | rows/s | producers' rows/s | server CPU per row (us) |"
        " machine busy (CPUs) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in results["throughput"]:
        producers = r["producer_rows_per_s"]
        lines.append(
            f"| {r['mode']} | {r['nodes']} | {r['rows_per_s']:,.0f}"
            f" | {'-' if producers is None else f'{producers:,.0f}'}"
            f" | {r['server_cpu_us_per_row']:.0f} | {r['machine_busy_cpus']:.2f} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=50_000, help="throughput rows (50000)")
    parser.add_argument("--per-transaction", type=int, default=50, help="rows per commit (50)")
    parser.add_argument("--producers", type=int, default=2, help="producer connections (2)")
    parser.add_argument("--partitions", type=int, default=2, help="outbox partitions (2)")
    parser.add_argument("--latency-rows", type=int, default=1000, help="latency rows (1000)")
    parser.add_argument("--rate", type=float, default=200.0, help="latency rows/s (200)")
    parser.add_argument("--repeat", type=int, default=1, help="throughput rounds (1)")
    parser.add_argument("--database-url", help="use this PostgreSQL instead of a private one")
    parser.add_argument("--redis-url", help="use this Redis instead of a private one")
    parser.add_argument("--json", action="store_true", help="print raw results as JSON")
    args = parser.parse_args()
    import uvloop

    try:
        results = uvloop.run(run(args))
    except KeyboardInterrupt:
        return 130
    if args.json:
        print(orjson.dumps(results, option=orjson.OPT_INDENT_2).decode())
    else:
        print(report(results, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
