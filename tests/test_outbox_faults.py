"""The outbox under faults: a node SIGKILLed mid-batch (real server processes),
PostgreSQL restarted under load (a private cluster), Redis down (a private
redis-server). Committed rows are delivered exactly once and in order; nothing else
stops."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import orjson

from realtime_server.outbox.db import APPLICATION_NAME
from realtime_server.protocol import HistoryRequest

from .conftest import StartServer, connected
from .helpers import MS, RawClient, token
from .outbox_db import (
    app_connection,
    drained,
    migrated_database,
    publish_rows,
    wait_until,
    waiting_rows,
)
from .pg import PgCluster, pg_cluster
from .procs import server_process
from .redis_server import redis_server

__all__ = ["pg_cluster"]  # the fixture, imported for this module

WAIT = 30000 * MS


class Collector:
    """Reads every publication a client receives, by channel, in the background."""

    def __init__(self, client: RawClient) -> None:
        self.client = client
        self.got: dict[str, list[Any]] = {}
        self._changed = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        while True:
            push = await self.client.push("pub", timeout=3600)
            self.got.setdefault(push["channel"], []).append(push["pub"]["data"])
            self._changed.set()

    def of(self, channel: str) -> list[Any]:
        return self.got.get(channel, [])

    async def until(self, channel: str, count: int, timeout: float = WAIT) -> list[Any]:
        async with asyncio.timeout(timeout):
            while len(self.of(channel)) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.of(channel)

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


@contextlib.asynccontextmanager
async def collecting(client: RawClient) -> AsyncIterator[Collector]:
    collector = Collector(client)
    try:
        yield collector
    finally:
        await collector.close()


@contextlib.asynccontextmanager
async def holding_commits(dsn: str) -> AsyncIterator[None]:
    """Hold a SHARE lock on the outbox table while the body runs: a consumer still
    reads, locks and runs its rows (ROW SHARE), but its ``DELETE ...; COMMIT`` (ROW
    EXCLUSIVE) waits. So a node killed inside is killed mid-batch whatever the machine's
    speed (without this, a fast node once committed its batch before the kill landed).

    On leaving, the outbox's connections to this database are terminated before the
    lock goes: a node killed after sending its ``DELETE ...; COMMIT`` would otherwise
    commit once the lock goes, since PostgreSQL notices a vanished client only when it
    next writes to it. Terminating them stands in for noticing at once."""
    async with app_connection(dsn) as locker, locker.transaction():
        await locker.execute("LOCK TABLE realtime_outbox IN SHARE MODE")
        yield
        await locker.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name = $1",
            APPLICATION_NAME,
        )

        async def outbox_gone() -> bool:
            # pg_stat_activity is read once per transaction, and this one holds the
            # lock: without clearing, the poll sees the terminated backends forever.
            await locker.execute("SELECT pg_stat_clear_snapshot()")
            gone: bool = await locker.fetchval(
                "SELECT count(*) = 0 FROM pg_stat_activity"
                " WHERE datname = current_database() AND application_name = $1",
                APPLICATION_NAME,
            )
            return gone

        await wait_until(outbox_gone, WAIT)


async def commit_waiting(conn: asyncpg.Connection) -> bool:
    """Whether an outbox consumer waits on a lock (its DELETE, under holding_commits)."""
    waiting: bool = await conn.fetchval(
        "SELECT count(*) > 0 FROM pg_locks JOIN pg_stat_activity USING (pid)"
        " WHERE NOT granted AND application_name = $1",
        APPLICATION_NAME,
    )
    return waiting


async def test_a_node_killed_mid_batch_and_another_finishing_delivers_exactly_once(
    pg_cluster: PgCluster, redis_url: str, redis_prefix: str
) -> None:
    dsn = await migrated_database(pg_cluster)
    shared = {"REDIS_URL": redis_url, "REDIS_PREFIX": redis_prefix}
    total = 3000
    async with server_process(**shared) as watcher_node:  # serves the client, no outbox
        client = await RawClient.open(watcher_node.ws_url)
        assert "connect" in await client.connect(token("42", channels=["document:k"]))
        async with collecting(client) as seen, app_connection(dsn) as conn:
            # All rows first: the first node's first transaction takes rows 1-500.
            await publish_rows(conn, "document:k", range(total), per_transaction=50)
            async with holding_commits(dsn), server_process(**shared, OUTBOX_URL=dsn) as first:
                await seen.until("document:k", 100)
                await wait_until(lambda: commit_waiting(conn), WAIT)
                await first.stop(signal.SIGKILL)  # mid-batch: run, its commit waiting
            killed_at = len(seen.of("document:k"))
            assert await conn.fetchval("SELECT min(id) FROM realtime_outbox") == 1
            async with server_process(**shared, OUTBOX_URL=dsn):  # reruns rows 1-500...
                await seen.until("document:k", total)
                await drained(conn, WAIT)
                await asyncio.sleep(0.2)  # a negative check: nothing more arrives
        assert killed_at < total
        numbers = [d["n"] for d in seen.of("document:k")]
        assert numbers == list(range(total)), "duplicates or gaps"


async def test_postgres_restarted_under_load(start_server: StartServer) -> None:
    async with PgCluster() as pg:
        dsn = await migrated_database(pg)
        server = await start_server(OUTBOX_URL=dsn, OUTBOX_POLL_INTERVAL=0.2)
        client = await connected(server, "42", channels=["document:1", "document:2"])
        acked: list[int] = []  # committed for sure
        unsure: list[int] = []  # the connection broke during the transaction
        stop = asyncio.Event()

        async def produce() -> None:
            n = 0
            conn = None
            while not stop.is_set():
                batch = list(range(n, n + 5))
                n += 5
                try:
                    if conn is None:
                        conn = await asyncpg.connect(dsn, timeout=2)
                    # Bounded: a connection PostgreSQL's restart left half-open must not
                    # stall the producer (it once did past the test's wait, then failed
                    # with asyncpg's "another operation is in progress").
                    async with asyncio.timeout(5), conn.transaction():
                        for i in batch:
                            await conn.execute(
                                "SELECT realtime_publish('document:1', $1::jsonb)",
                                orjson.dumps({"n": i}).decode(),
                            )
                    acked.extend(batch)
                except (
                    OSError,
                    asyncpg.PostgresError,
                    asyncpg.InterfaceError,
                    asyncpg.InternalClientError,
                    TimeoutError,
                ):
                    unsure.extend(batch)
                    if conn is not None:
                        conn.terminate()
                        conn = None
                    await asyncio.sleep(0.05)  # PostgreSQL is down: no event to await
            if conn is not None:
                await conn.close()

        async with collecting(client) as seen:
            producer = asyncio.get_running_loop().create_task(produce())
            try:
                await seen.until("document:1", 200)
                await pg.astop("fast")
                await wait_until(lambda: "outbox" in server.node.readiness().degraded, WAIT)
                readiness = server.node.readiness()
                assert readiness.ready  # /readyz 200: clients are still served
                assert "PostgreSQL" in readiness.degraded["outbox"]
                assert dsn not in readiness.degraded["outbox"]
                # Delivery of anything else goes on during the outage.
                await server.node.ops.publish("document:2", b'"during the outage"')
                assert await seen.until("document:2", 1) == ["during the outage"]
                await pg.astart()
                restarted_at = len(acked)
                await wait_until(lambda: len(acked) >= restarted_at + 200, WAIT)
            finally:
                stop.set()
                await producer
            await wait_until(lambda: set(acked) <= {d["n"] for d in seen.of("document:1")}, WAIT)
            await wait_until(lambda: "outbox" not in server.node.readiness().degraded, WAIT)
            async with app_connection(dsn) as conn:
                await drained(conn, WAIT)
        numbers = [d["n"] for d in seen.of("document:1")]
        assert numbers == sorted(set(numbers)), "out of order or twice"
        assert set(numbers) <= set(acked) | set(unsure)


async def test_redis_down_keeps_the_row_first_and_retries(
    start_server: StartServer, pg_cluster: PgCluster
) -> None:
    dsn = await migrated_database(pg_cluster)
    async with redis_server() as redis_proc:
        server = await start_server(
            REDIS_URL=redis_proc.url, REDIS_TIMEOUT=0.3, OUTBOX_URL=dsn, OUTBOX_POLL_INTERVAL=0.2
        )
        await redis_proc.stop()
        async with app_connection(dsn) as conn:
            await publish_rows(conn, "document:9", range(20), per_transaction=10)
            await wait_until(
                lambda: "waits for a retry" in server.node.readiness().degraded.get("outbox", ""),
                WAIT,
            )
            assert "redis" in server.node.readiness().degraded["outbox"]
            assert await conn.fetchval("SELECT count(*) FROM realtime_outbox") == 20
            await redis_proc.start()  # empty: the channel starts a new stream
            await drained(conn, WAIT)
        await wait_until(lambda: "outbox" not in server.node.readiness().degraded, WAIT)
        found = await server.node.ops.history(HistoryRequest("document:9", limit=-1))
        assert [orjson.loads(p.data) for p in found.publications] == [{"n": i} for i in range(20)]
        assert [p.offset for p in found.publications] == list(range(1, 21))


async def test_a_frozen_node_mid_batch_frees_its_partition_after_the_idle_timeout(
    pg_cluster: PgCluster,
) -> None:
    """A node frozen (SIGSTOP: a paused VM, a cut network) while its batch is open keeps
    its connection, so PostgreSQL never sees it go; REALTIME_OUTBOX_IDLE_TIMEOUT ends the
    transaction and another node takes the partition."""
    dsn = await migrated_database(pg_cluster)
    async with redis_server() as redis_proc, app_connection(dsn) as conn:
        assert redis_proc.proc is not None
        env = {
            "REDIS_URL": redis_proc.url,
            "REDIS_TIMEOUT": "2.5",  # the window to freeze the node in, below
            "OUTBOX_URL": dsn,
            "OUTBOX_IDLE_TIMEOUT": "3",
            "OUTBOX_POLL_INTERVAL": "0.2",
        }
        async with server_process(**env) as frozen:
            redis_proc.proc.send_signal(signal.SIGSTOP)  # the batch's publish waits
            try:
                await publish_rows(conn, "document:f", range(10), per_transaction=10)
                await wait_until(lambda: batch_waiting(conn), WAIT)  # rows read and locked
                frozen.proc.send_signal(signal.SIGSTOP)
            finally:
                redis_proc.proc.send_signal(signal.SIGCONT)
            assert await waiting_rows(conn) == 10
            async with server_process(**env):
                await drained(conn, WAIT)  # the frozen node's lock is gone
            assert await conn.fetchval("SELECT count(*) FROM realtime_outbox_failed") == 0


async def batch_waiting(conn: Any) -> bool:
    """An outbox connection sits in an open transaction (a batch running its rows)."""
    return bool(
        await conn.fetchval(
            "SELECT count(*) > 0 FROM pg_stat_activity WHERE datname = current_database()"
            " AND application_name = $1 AND state = 'idle in transaction'",
            APPLICATION_NAME,
        )
    )


async def test_a_frozen_postgres_degrades_the_outbox_and_it_resumes_on_thaw(
    start_server: StartServer,
) -> None:
    """PostgreSQL hung (SIGSTOP: connections open, nothing answers): the outbox shows
    degraded once its statements time out; after the thaw, new rows are delivered at
    once (the listener and the pool are not left waiting on dead reads)."""
    async with PgCluster() as pg:
        dsn = await migrated_database(pg)
        server = await start_server(OUTBOX_URL=dsn, OUTBOX_POLL_INTERVAL=0.2)
        client = await connected(server, "42", channels=["document:1"])
        async with collecting(client) as seen, app_connection(dsn) as conn:
            await publish_rows(conn, "document:1", range(10))
            await seen.until("document:1", 10)
            pg.signal_all(signal.SIGSTOP)
            try:
                await wait_until(lambda: "outbox" in server.node.readiness().degraded, WAIT)
                assert server.node.readiness().ready  # clients are still served
            finally:
                pg.signal_all(signal.SIGCONT)
            await publish_rows(conn, "document:1", range(10, 20))
            assert [d["n"] for d in await seen.until("document:1", 20)] == list(range(20))
        await wait_until(lambda: "outbox" not in server.node.readiness().degraded, WAIT)
