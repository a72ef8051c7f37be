"""The embedded event store: one SQLite file, the same events and queries as PostgreSQL.

Every SQLite call runs on one worker thread owned by the store (the event loop never
waits on disk I/O; one thread means one connection used by one thread at a time), and
every await on it is bounded by ``timeout``. A call that times out keeps running on
the thread; writes being idempotent (``INSERT OR IGNORE``), writing its batch again
later is harmless. The file is in WAL mode, so ``realtime-server audit`` reads it while
a server writes.

A batch's rows are built on the event loop and handed to the thread as one flat list
of parameters; the thread only runs SQL, a few multi-row INSERT statements per batch
in one transaction. Python code on that thread would hold the GIL the loop needs (and
each time the thread takes the GIL back while a busy loop holds it, both pay context
switches), so it does as little of it as it can.

Durability and cost: ``synchronous=FULL`` in WAL mode, each commit (a batch) is
fsync'd, so a stored batch also survives a power loss or an OS crash (``NORMAL``, as
before, lost what was committed since the last checkpoint). The fsync costs the
writer thread wall time, hardly any CPU. What costs CPU is index upkeep: every row
lands on a random page of the user and channel indexes, and each page a batch
dirties is written to the WAL, then again to the file at a checkpoint (mostly kernel
time: 20-30 us per row once the log holds a few million rows). Checkpoints every
10,000 pages instead of 1,000 write a page rewritten by several batches once, and a
16 MiB page cache keeps a batch's pages from being spilled and read back: SQLite's
insert work for rows from 50,000 users went from 21 to 12 us of CPU per row with
200,000 rows in the log, 37 to 29 us at 2 million (see bench/eventcost.py --users
--prefill for the whole path).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final, TypeVar

from .migrate import load_migrations, split_sqlite_script
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
    microsecond_time,
)

__all__ = ["SqliteStore", "chunk_rows"]

T = TypeVar("T")

_COLUMNS: Final = "id, time, type, node, user_id, client_id, channel, stream_offset, code, details"
_INSERT: Final = (
    "INSERT OR IGNORE INTO events (id, time, type, node, user_id, client_id, channel,"
    " document_id, stream_offset, code, details) VALUES "
)
_FIELDS: Final = 11
_MAX_CHUNK: Final = 1024
"""Most rows per INSERT statement (11,264 parameters), fewer when the SQLite library
allows fewer parameters per statement (999 before 3.32: 64 rows). Python's sqlite3
gives up the GIL around every statement it steps, and takes it back after: one
statement per row made the store's thread and a busy event loop hand the GIL to each
other for every event (a context switch each way, often several); a batch of 1000 is
now six statements. Sizes are powers of two, so that a few statements are ever
prepared (preparing one costs about 5 us per row; they stay in the statement cache)."""
_WRITER_PRAGMAS: Final = (
    "PRAGMA synchronous=FULL",
    "PRAGMA wal_autocheckpoint=10000",
    "PRAGMA journal_size_limit=67108864",
    "PRAGMA cache_size=-16384",
)
"""The writer's settings (see the module's docstring): every commit fsync'd; the WAL
checkpointed every 10,000 pages (40 MiB) instead of 1,000, and cut back to 64 MiB
after a checkpoint; 16 MiB of page cache instead of 2."""
_DELETE_CHUNK: Final = 10_000
_NOT_INITIALISED: Final = "event log not initialised (run realtime-server migrate)"


def _row(e: Event) -> tuple[Any, ...]:
    channel = clean_optional(e.channel)
    return (
        str(e.id),
        microsecond_time(e.time),
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


def chunk_rows(parameters: int) -> int:
    """Rows per INSERT statement when a statement may hold ``parameters``: the largest
    power of two that fits, at most ``_MAX_CHUNK``."""
    return 1 << (min(parameters // _FIELDS, _MAX_CHUNK).bit_length() - 1)


@functools.cache
def _insert(rows: int) -> str:
    """The INSERT of ``rows`` rows (a few sizes only: the chunk and powers of two)."""
    return _INSERT + ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"] * rows)


class SqliteStore:
    """An :class:`~realtime_server.events.store.EventStore` in a local SQLite file."""

    name = "sqlite"

    def __init__(self, path: str | Path, *, timeout: float = 5.0, readonly: bool = False) -> None:
        self.path = Path(path)
        self.timeout = timeout
        self.readonly = readonly
        self._conn: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._chunk = 64  # rows per INSERT statement: set from the library's limit on open

    # --- plumbing ------------------------------------------------------------------------

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            raise StoreUnavailable("the SQLite event store is closed")
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.timeout):
                return await loop.run_in_executor(self._executor, functools.partial(fn, *args))
        except TimeoutError:
            raise StoreUnavailable(f"SQLite did not answer within {self.timeout:g}s") from None
        except sqlite3.OperationalError as exc:  # locked, disk I/O, cannot open...
            if str(exc).startswith("no such table"):
                raise NotInitialised(_NOT_INITIALISED) from None
            raise StoreUnavailable(f"SQLite: {exc}") from None
        except (sqlite3.DataError, sqlite3.IntegrityError, ValueError) as exc:
            raise EventsRejected(f"SQLite refused the batch: {exc}") from None
        except sqlite3.DatabaseError as exc:
            raise StoreUnavailable(f"SQLite: {exc}") from None
        except OSError as exc:  # the folder of the file cannot be created
            raise StoreUnavailable(f"SQLite: {exc.strerror or exc}") from None

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = self._open()
        return self._conn

    def _open(self) -> sqlite3.Connection:
        busy = max(1, int(self.timeout * 1000))
        if self.readonly:
            if not self.path.exists():
                raise sqlite3.OperationalError(  # say where we looked, and how to look elsewhere
                    f"no event log at {self.path.absolute()} (set REALTIME_SQLITE_PATH, or "
                    "REALTIME_DATABASE_URL for PostgreSQL)"
                )
            uri = f"{self.path.resolve().as_uri()}?mode=ro"
            conn = sqlite3.connect(
                uri, uri=True, isolation_level=None, timeout=busy / 1000, check_same_thread=False
            )
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self.path, isolation_level=None, timeout=busy / 1000, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode=WAL")
            for pragma in _WRITER_PRAGMAS:
                conn.execute(pragma)
        conn.execute(f"PRAGMA busy_timeout={busy}")
        self._chunk = chunk_rows(conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER))
        return conn

    # --- EventStore ----------------------------------------------------------------------

    async def connect(self) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="sqlite-events")
        await self._call(self._db)

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is None:
            return
        conn, self._conn = self._conn, None
        if conn is not None:
            future = asyncio.get_running_loop().run_in_executor(executor, conn.close)
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self.timeout):
                    await future
        executor.shutdown(wait=False)

    async def migrate(self) -> list[str]:
        return await self._call(self._migrate)

    def _migrate(self) -> list[str]:
        db = self._db()
        applied: list[str] = []
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY,"
                " name TEXT NOT NULL, applied_at REAL NOT NULL)"
            )
            done = {row[0] for row in db.execute("SELECT version FROM schema_migrations")}
            for migration in load_migrations("sqlite"):
                if migration.version in done:
                    continue
                for statement in split_sqlite_script(migration.sql):
                    db.execute(statement)
                db.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                    (migration.version, migration.name, time.time()),
                )
                applied.append(migration.label)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return applied

    async def write_batch(self, events: Sequence[Event]) -> None:
        if events:
            params: list[Any] = []
            for e in events:
                params += _row(e)
            await self._call(self._write, params)

    def _write(self, params: list[Any]) -> None:
        """On the store's thread: ``params`` (``_FIELDS`` per row) in one transaction."""
        db = self._db()
        rows = len(params) // _FIELDS
        chunk = self._chunk
        done = rows - rows % chunk  # in statements of ``chunk`` rows; the rest in powers of 2
        width = chunk * _FIELDS
        db.execute("BEGIN")
        try:
            if done:
                chunks = (params[i : i + width] for i in range(0, done * _FIELDS, width))
                db.executemany(_insert(chunk), chunks)
            size = chunk // 2
            while done < rows:
                if rows - done >= size:
                    db.execute(_insert(size), params[done * _FIELDS : (done + size) * _FIELDS])
                    done += size
                size //= 2
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    async def query(self, query: EventQuery) -> list[Event]:
        where: list[str] = []
        args: list[Any] = []
        if query.document is not None:
            where.append("document_id = ?")
            args.append(query.document)
        if query.user is not None:
            where.append("(user_id = ? OR channel = ?)")
            args.extend((query.user, f"user:{query.user}"))
        if query.since is not None:
            where.append("time >= ?")
            args.append(microsecond_time(query.since))
        if query.until is not None:
            where.append("time < ?")
            args.append(microsecond_time(query.until))
        sql = f"SELECT {_COLUMNS} FROM events"  # noqa: S608 - fixed column/condition text
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY time, rowid"
        if query.limit is not None:
            sql += " LIMIT ?"
            args.append(query.limit)
        rows = await self._call(self._fetch, sql, args)
        return [event_from_row(*row) for row in rows]

    def _fetch(self, sql: str, args: list[Any]) -> list[tuple[Any, ...]]:
        return list(self._db().execute(sql, args).fetchall())

    async def delete_before(self, before: float) -> int:
        total = 0
        while True:
            deleted = await self._call(self._delete_chunk, before)
            total += deleted
            if deleted < _DELETE_CHUNK:
                return total

    def _delete_chunk(self, before: float) -> int:
        before = microsecond_time(before)
        cursor = self._db().execute(
            "DELETE FROM events WHERE rowid IN (SELECT rowid FROM events WHERE time < ? LIMIT ?)",
            (before, _DELETE_CHUNK),
        )
        return int(cursor.rowcount)
