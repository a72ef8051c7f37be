"""The PostgreSQL event store (asyncpg): batches written with binary COPY.

A batch is copied (``copy_records_to_table``) into a per-connection temporary staging
table, then moved with ``INSERT ... SELECT ... ON CONFLICT (id) DO NOTHING`` in the same
transaction: COPY's speed, with the idempotence COPY alone lacks. The staging table is
``ON COMMIT DELETE ROWS``, so it is empty between batches.

asyncpg waits forever by default; here every connect, acquire, command and release is
bounded by ``timeout``, and a connection whose call failed or timed out is terminated
rather than returned to the pool (its state is unknown). The pool starts empty, so a
server starts even while PostgreSQL is down. The DSN may hold a password: it is never
logged nor put in an exception message.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Sequence
from typing import Any, Final

from ..errors import database_failure, describe_database_error
from .migrate import load_migrations
from .model import Event, document_id
from .store import (
    EventQuery,
    EventsRejected,
    NotInitialised,
    StoreUnavailable,
    clean_optional,
    clean_text,
    encode_details,
    event_from_row,
)

__all__ = ["PostgresStore"]

_UTC: Final = dt.UTC
_MIGRATION_LOCK: Final = 0x7274_6576_656E_7473  # "rtevents": one migrator at a time
_COPY_COLUMNS: Final = (
    "id",
    "time",
    "type",
    "node",
    "user_id",
    "client_id",
    "channel",
    "document_id",
    "stream_offset",
    "code",
    "details",
)
_STAGING: Final = (
    "CREATE TEMPORARY TABLE IF NOT EXISTS events_staging (id uuid, time timestamptz,"
    " type text, node text, user_id text, client_id text, channel text, document_id text,"
    " stream_offset bigint, code integer, details jsonb) ON COMMIT DELETE ROWS"
)
_MOVE: Final = (
    f"INSERT INTO events ({', '.join(_COPY_COLUMNS)})"  # noqa: S608 - constant text
    f" SELECT {', '.join(_COPY_COLUMNS)} FROM events_staging ON CONFLICT (id) DO NOTHING"
)
_SELECT: Final = (
    "SELECT id, time, type, node, user_id, client_id, channel, stream_offset, code,"
    " details::text FROM events"
)
_DELETE_CHUNK: Final = 10_000


def _row(e: Event) -> tuple[Any, ...]:
    channel = clean_optional(e.channel)
    return (
        e.id,
        dt.datetime.fromtimestamp(e.time, _UTC),
        str(e.type),  # a StrEnum's str() is its value (and cheaper than .value)
        clean_text(e.node),
        clean_optional(e.user),
        clean_optional(e.client),
        channel,
        document_id(channel),
        e.offset,
        e.code,
        encode_details(e.details),
    )


class PostgresStore:
    """An :class:`~realtime_server.events.store.EventStore` in PostgreSQL."""

    name = "postgres"

    def __init__(
        self,
        dsn: str,
        *,
        timeout: float = 5.0,
        pool_size: int = 2,
        connect_timeout: float | None = None,
    ) -> None:
        """``timeout`` bounds every call; ``connect_timeout`` (at most ``timeout``)
        bounds making a connection, so that a long ``timeout`` (``migrate``'s) does not
        let an unreachable or frozen server hold the command for as long."""
        self._dsn = dsn
        self.timeout = timeout
        self.connect_timeout = timeout if connect_timeout is None else min(connect_timeout, timeout)
        self.pool_size = pool_size
        self._pool: Any = None

    def __repr__(self) -> str:
        return f"PostgresStore(timeout={self.timeout})"  # never the DSN

    async def connect(self) -> None:
        if self._pool is not None:
            return
        import asyncpg  # type: ignore[import-untyped]

        try:
            async with asyncio.timeout(self.connect_timeout):
                self._pool = await asyncpg.create_pool(
                    self._dsn,
                    min_size=0,
                    max_size=self.pool_size,
                    timeout=self.connect_timeout,  # connect
                    command_timeout=self.timeout,
                    max_inactive_connection_lifetime=60.0,
                    init=_init_connection,
                    reset=_no_reset,
                    server_settings={"application_name": "realtime-server events"},
                )
        except Exception as exc:
            raise _unavailable(exc) from None

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            async with asyncio.timeout(self.timeout):
                await pool.close()
        except Exception:
            pool.terminate()

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[Any]:
        """A pooled connection, bounded by the timeout; terminated when a call on it
        fails in a way that leaves its state unknown. Errors are mapped to
        :class:`StoreUnavailable` / :class:`EventsRejected`."""
        if self._pool is None:
            await self.connect()
        import asyncpg

        try:
            async with asyncio.timeout(self.timeout):
                async with self._pool.acquire(timeout=self.timeout) as conn:
                    try:
                        yield conn
                    except asyncpg.PostgresError as exc:
                        if not _is_data_error(exc):
                            conn.terminate()
                        raise
                    except BaseException:
                        conn.terminate()
                        raise
        except asyncpg.PostgresError as exc:
            if _is_data_error(exc):
                reason = describe_database_error(exc)
                raise EventsRejected(f"PostgreSQL refused the batch: {reason}") from None
            raise _unavailable(exc) from None
        except asyncpg.InterfaceError as exc:
            if isinstance(exc, ValueError):  # asyncpg could not encode an argument
                reason = describe_database_error(exc)
                raise EventsRejected(f"PostgreSQL refused the batch: {reason}") from None
            raise _unavailable(exc) from None
        except (OSError, TimeoutError) as exc:
            raise _unavailable(exc) from None

    async def migrate(self) -> list[str]:
        applied: list[str] = []
        async with self._connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY,"
                " name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r[0] for r in await conn.fetch("SELECT version FROM schema_migrations")}
            for migration in load_migrations("postgres"):
                if migration.version in done:
                    continue
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                    migration.version,
                    migration.name,
                )
                applied.append(migration.label)
        return applied

    async def write_batch(self, events: Sequence[Event]) -> None:
        if not events:
            return
        rows = [_row(e) for e in events]
        async with self._connection() as conn, conn.transaction():
            await conn.copy_records_to_table(
                "events_staging", records=rows, columns=_COPY_COLUMNS, timeout=self.timeout
            )
            await conn.execute(_MOVE, timeout=self.timeout)

    async def query(self, query: EventQuery) -> list[Event]:
        where: list[str] = []
        args: list[Any] = []

        def arg(value: Any) -> str:
            args.append(value)
            return f"${len(args)}"

        if query.document is not None:
            where.append(f"document_id = {arg(query.document)}")
        if query.user is not None:
            where.append(f"(user_id = {arg(query.user)} OR channel = {arg('user:' + query.user)})")
        if query.since is not None:
            where.append(f"time >= {arg(dt.datetime.fromtimestamp(query.since, _UTC))}")
        if query.until is not None:
            where.append(f"time < {arg(dt.datetime.fromtimestamp(query.until, _UTC))}")
        sql = _SELECT
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY time, seq"
        if query.limit is not None:
            sql += f" LIMIT {arg(query.limit)}"
        async with self._connection() as conn:
            rows = await conn.fetch(sql, *args, timeout=self.timeout)
        return [
            event_from_row(r[0], r[1].timestamp(), r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9])
            for r in rows
        ]

    async def delete_before(self, before: float) -> int:
        cutoff = dt.datetime.fromtimestamp(before, _UTC)
        total = 0
        while True:
            async with self._connection() as conn:
                status = await conn.execute(
                    "DELETE FROM events WHERE id IN"
                    " (SELECT id FROM events WHERE time < $1 LIMIT $2)",
                    cutoff,
                    _DELETE_CHUNK,
                    timeout=self.timeout,
                )
            deleted = int(status.split()[-1])
            total += deleted
            if deleted < _DELETE_CHUNK:
                return total


async def _init_connection(conn: Any) -> None:
    await conn.execute(_STAGING)


async def _no_reset(conn: Any) -> None:
    """Nothing to reset between uses: no session locks, cursors, listeners or settings
    survive our calls (a failed call terminates its connection). Saves a round trip per
    batch."""
    del conn


def _is_data_error(exc: BaseException) -> bool:
    """Errors about the rows themselves (class 22: data exception; 23: constraint)."""
    sqlstate = getattr(exc, "sqlstate", None) or ""
    return sqlstate.startswith(("22", "23"))


def _unavailable(exc: BaseException) -> StoreUnavailable:
    if getattr(exc, "sqlstate", None) == "42P01":  # undefined table
        return NotInitialised("event log not initialised (run realtime-server migrate)")
    return StoreUnavailable(database_failure(exc))
