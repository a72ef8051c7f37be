"""Helpers for the outbox tests: a fresh migrated database on the shared cluster, and
asyncpg connections playing the application's part."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import orjson

from realtime_server.outbox.schema import migrate

from .helpers import MS
from .pg import PgCluster


async def migrated_database(cluster: PgCluster) -> str:
    """A fresh database with the outbox schema; its DSN."""
    dsn = await cluster.create_database()
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        await migrate(conn)
    finally:
        await conn.close(timeout=5)
    return dsn


@asynccontextmanager
async def app_connection(dsn: str) -> AsyncIterator[Any]:
    """The application's connection."""
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        yield conn
    finally:
        conn.terminate()


async def publish_rows(
    conn: Any, channel: str, numbers: range, per_transaction: int = 50, partition: int = 0
) -> None:
    """``realtime_publish(channel, {"n": i})`` for each i, ``per_transaction`` per commit."""
    values = list(numbers)
    for start in range(0, len(values), per_transaction):
        chunk = values[start : start + per_transaction]
        async with conn.transaction():
            await conn.executemany(
                "SELECT realtime_publish($1, $2::jsonb, $3)",
                [(channel, orjson.dumps({"n": i}).decode(), partition) for i in chunk],
            )


async def wait_until(
    predicate: Callable[[], bool | Awaitable[bool]], timeout: float = 10000 * MS
) -> None:
    """Poll a condition that no event signals (a row count, a counter in another
    component, a query), every 20 ms; ``predicate`` may be a coroutine function."""
    async with asyncio.timeout(timeout):
        while True:
            met = predicate()
            if met if isinstance(met, bool) else await met:
                return
            await asyncio.sleep(0.02)


async def waiting_rows(conn: Any) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM realtime_outbox"))


async def drained(conn: Any, timeout: float = 10000 * MS) -> None:
    """Wait until the outbox is empty (the consumer deletes rows when it commits, just
    after their publications went out)."""
    async with asyncio.timeout(timeout):
        while await waiting_rows(conn):
            await asyncio.sleep(0.02)
