"""The outbox consumer: every node with ``REALTIME_OUTBOX_URL`` runs one.

Partitions and locks
--------------------
Each of the ``REALTIME_OUTBOX_PARTITIONS`` partitions has a worker task on every node.
A worker handles its partition in batches, one transaction each::

    BEGIN
    SELECT <up to BATCH rows of the partition, in id order> FOR UPDATE
           -- only if pg_try_advisory_xact_lock(LOCK_CLASS, partition) succeeds
    <run the rows, in order, through the HTTP API's code (see .rows): consecutive
     publishes in one pipelined Redis round trip, any other row on its own>
    DELETE <the rows run>; COMMIT          -- one round trip

Transaction-level advisory locks, not session locks: the lock lives exactly as long as
the transaction that reads, runs and deletes the rows, so there is no state where a
node believes it owns a partition whose lock went with a dead connection, nothing to
release on errors, and a node killed mid-batch loses the lock with its transaction
(its rows stay and the next holder runs them: publishes carry ``outbox:<id>`` and are
delivered once). A node frozen or cut off mid-batch keeps its connection, which
PostgreSQL would notice only by TCP keepalive, hours later: each batch sets
``idle_in_transaction_session_timeout`` (``REALTIME_OUTBOX_IDLE_TIMEOUT``) for its
transaction, so PostgreSQL ends it and frees the partition.

``FOR UPDATE SKIP LOCKED`` on the rows would let a second node run later rows while the
first still runs earlier ones (out of order), and a lock row per partition would need a
table the schema does not have. A node that does not get the lock (another is working
the partition) waits for the next notification or poll; under load the holder keeps
draining, so the partition goes on.

Waking up
---------
One connection per node ``LISTEN``s on ``realtime_outbox`` (``realtime_publish``
notifies at commit with the partition as payload) and, every
``REALTIME_OUTBOX_POLL_INTERVAL`` seconds, runs one query that probes each partition's
first row (an index lookup each): rows inserted without a notification are found, the
oldest waiting row's age is measured, and rows in partitions nobody consumes are
reported. A notification or a poll that finds rows wakes the partition's worker, which
drains it: many rows per transaction under load; an idle row costs one transaction of
three round trips (BEGIN; lock and read; delete and commit).

Failures
--------
See :mod:`.rows`: a row that can never run moves to ``realtime_outbox_failed`` in the
same transaction and the partition goes on; a temporary failure (Redis) commits what ran
before it and retries that row first, with backoff. PostgreSQL unreachable: the worker
and the listener retry with backoff; nothing else on the node waits for the outbox.
Troubles show in :meth:`OutboxConsumer.problem` (``/readyz`` ``degraded``) and in
``/metrics``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator
from typing import Any, Final

from ..metrics import Metrics
from .db import APPLICATION_NAME, TIMEOUT, OutboxUnavailable, connect, unavailable
from .rows import Result, Runner, run_rows
from .schema import CHANNEL, MOVE_FAILED, POLL, SELECT_ROWS

__all__ = ["BATCH", "OutboxConsumer"]

logger = logging.getLogger("realtime_server.outbox")

BATCH: Final = 500
"""Most rows run in one transaction."""

IDLE_TIMEOUT: Final = 30.0
"""Default seconds a batch's transaction may sit idle (running its rows) before
PostgreSQL ends it and frees the partition."""

MAX_CONNECTIONS: Final = 4
"""Most worker connections per node (partitions share them), besides the listener's."""


class Backoff:
    """Exponential backoff with full jitter: 50 ms doubling up to 5 s."""

    __slots__ = ("attempts", "base", "cap")

    def __init__(self, base: float = 0.05, cap: float = 5.0) -> None:
        self.base = base
        self.cap = cap
        self.attempts = 0

    def next(self) -> float:
        delay = min(self.cap, self.base * 2**self.attempts)
        self.attempts = min(self.attempts + 1, 16)
        return random.uniform(delay / 2, delay)

    def reset(self) -> None:
        self.attempts = 0


class _RetryRow(Exception):
    def __init__(self, row_id: int, error: str) -> None:
        super().__init__(error)
        self.row_id = row_id
        self.error = error


def _delete_and_commit(ids: list[int]) -> str:
    """One round trip: delete the rows run, then commit (ids are integers read from the
    table, so inlining them is safe; the simple protocol allows two statements)."""
    if not ids:
        return "COMMIT"
    listed = ",".join(str(int(i)) for i in ids)
    return f"DELETE FROM realtime_outbox WHERE id = ANY('{{{listed}}}'::bigint[]); COMMIT"  # noqa: S608


async def _no_reset(conn: Any) -> None:
    """Pooled connections carry no state between batches (every batch ends with COMMIT
    or ROLLBACK, or its connection is terminated): skip asyncpg's reset round trip."""
    del conn


class OutboxConsumer:
    """Consumes the outbox at ``dsn``, running rows with ``runner`` (the API's code)."""

    def __init__(
        self,
        dsn: str,
        runner: Runner,
        *,
        partitions: int = 1,
        poll_interval: float = 1.0,
        batch: int = BATCH,
        timeout: float = TIMEOUT,
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        self._dsn = dsn
        self._runner = runner
        self.partitions = partitions
        self.poll_interval = poll_interval
        self.batch = batch
        self.timeout = timeout
        # A frozen or cut-off node's batch would hold its partition's lock until
        # PostgreSQL noticed the connection was gone (TCP keepalive: hours). Set per
        # transaction, in BEGIN's round trip: a startup parameter would be refused by
        # poolers such as PgBouncer, and SET LOCAL leaves nothing on the connection.
        self._begin = (
            "BEGIN; SET LOCAL idle_in_transaction_session_timeout ="
            f" {max(1, round(idle_timeout * 1000))}"
        )
        self.executed = 0
        """Rows run and deleted by this node."""
        self.failed = 0
        """Rows moved to ``realtime_outbox_failed`` by this node."""
        self.retries = 0
        """Temporary failures (a row or a transaction retried)."""
        self._wake = [asyncio.Event() for _ in range(partitions)]
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._pool: Any = None
        self._problems: dict[str, str] = {}
        self._oldest: float | None = None  # seconds, at the last successful poll
        self._polled_at = time.monotonic()

    def __repr__(self) -> str:
        return f"OutboxConsumer(partitions={self.partitions})"  # never the DSN

    # --- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Start the listener and the workers; returns at once (PostgreSQL may be down:
        they retry in the background)."""
        import asyncpg  # type: ignore[import-untyped]

        self._pool = asyncpg.create_pool(
            self._dsn,
            min_size=0,
            max_size=min(self.partitions, MAX_CONNECTIONS),
            timeout=self.timeout,
            command_timeout=self.timeout,
            max_inactive_connection_lifetime=60.0,
            reset=_no_reset,
            server_settings={"application_name": APPLICATION_NAME},
        )
        await self._pool  # min_size 0: connects nothing yet
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._listen(), name="outbox listener")]
        self._tasks += [
            loop.create_task(self._work(p), name=f"outbox partition {p}")
            for p in range(self.partitions)
        ]
        for task in self._tasks:
            task.add_done_callback(_log_failure)

    async def close(self, grace: float | None = None) -> None:
        """Stop: workers finish the batch they are running and commit it (at most
        ``grace`` seconds, default the statement timeout; past that the transaction is
        abandoned and another node re-runs its rows), then everything is closed."""
        self._stop.set()
        for wake in self._wake:
            wake.set()
        workers = self._tasks[1:]
        if workers:
            await asyncio.wait(workers, timeout=self.timeout if grace is None else grace)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                async with asyncio.timeout(self.timeout):
                    await pool.close()
            except Exception:
                pool.terminate()

    # --- health and metrics -----------------------------------------------------------

    def problem(self) -> str | None:
        """None when the outbox is consumed normally; else why not (no secrets)."""
        if not self._problems:
            return None
        return "; ".join(sorted({p.removeprefix("outbox: ") for p in self._problems.values()}))

    def oldest_age(self) -> float:
        """Seconds the oldest waiting row has waited (0: none), as of the last poll;
        while polls fail, that age keeps growing."""
        if not self._oldest:
            return 0.0
        if "listener" in self._problems:
            return self._oldest + (time.monotonic() - self._polled_at)
        return self._oldest

    def bind_metrics(self, metrics: Metrics) -> None:
        metrics.counter("outbox_executed", "Outbox rows run and deleted.", lambda: self.executed)
        metrics.counter(
            "outbox_failed", "Outbox rows moved to realtime_outbox_failed.", lambda: self.failed
        )
        metrics.counter(
            "outbox_retries", "Outbox temporary failures (retried).", lambda: self.retries
        )
        metrics.gauge(
            "outbox_oldest_age_seconds",
            "Age of the oldest outbox row waiting (0: none).",
            self.oldest_age,
        )
        metrics.gauge(
            "outbox_degraded",
            "1 while the outbox cannot be consumed normally.",
            lambda: 1.0 if self._problems else 0.0,
        )

    def _trouble(self, source: str, problem: str) -> None:
        if self._problems.get(source) != problem:
            logger.warning("%s: %s", source, problem)
        self._problems[source] = problem

    def _fine(self, source: str) -> None:
        if self._problems.pop(source, None) is not None:
            logger.info("%s: back to normal", source)

    async def _sleep(self, seconds: float) -> None:
        """Sleep, or return early when stopping."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stop.wait()

    # --- listening and polling --------------------------------------------------------

    def _on_notify(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        try:
            partition = int(payload)
        except ValueError:
            return
        if 0 <= partition < self.partitions:
            self._wake[partition].set()

    async def _listen(self) -> None:
        backoff = Backoff()
        while not self._stop.is_set():
            try:
                conn = await connect(self._dsn, self.timeout)
            except OutboxUnavailable as exc:
                self._trouble("listener", str(exc))
                await self._sleep(backoff.next())
                continue
            lost = asyncio.Event()
            conn.add_termination_listener(lambda _conn, lost=lost: lost.set())
            try:
                await conn.add_listener(CHANNEL, self._on_notify)
                while not lost.is_set():
                    await self._poll(conn)  # also right after (re)connecting
                    backoff.reset()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self.poll_interval):
                            await lost.wait()
                self._trouble("listener", "outbox: connection to PostgreSQL lost")
            except Exception as exc:
                self._trouble("listener", str(unavailable(exc)))
            finally:
                conn.terminate()
            await self._sleep(backoff.next())

    async def _poll(self, conn: Any) -> None:
        rows = await conn.fetch(POLL, self.partitions, timeout=self.timeout)
        oldest = 0.0
        outside: list[int] = []
        for partition, age in rows:
            if age is None:
                continue
            oldest = max(oldest, age)
            if 0 <= partition < self.partitions:
                self._wake[partition].set()
            else:
                outside.append(partition)
        self._oldest, self._polled_at = oldest, time.monotonic()
        self._fine("listener")
        if outside:
            self._trouble(
                "partitions",
                f"outbox: rows in partition {', '.join(map(str, outside))} are not consumed"
                f" (REALTIME_OUTBOX_PARTITIONS={self.partitions}: partitions 0 to"
                f" {self.partitions - 1})",
            )
        else:
            self._fine("partitions")

    # --- working a partition ----------------------------------------------------------

    async def _work(self, partition: int) -> None:
        wake = self._wake[partition]
        source = f"partition {partition}"
        backoff = Backoff()
        while not self._stop.is_set():
            await wake.wait()
            wake.clear()  # a notification from now on runs another round
            while not self._stop.is_set():
                try:
                    handled = await self._batch(partition)
                except _RetryRow as retry:
                    self.retries += 1
                    self._trouble(
                        source, f"outbox: row {retry.row_id} waits for a retry ({retry.error})"
                    )
                    await self._sleep(backoff.next())
                    continue
                except OutboxUnavailable as exc:
                    self.retries += 1
                    self._trouble(source, str(exc))
                    await self._sleep(backoff.next())
                    continue
                except Exception:  # a bug: keep the partition going, loudly
                    logger.exception("outbox partition %d: unexpected error", partition)
                    self.retries += 1
                    self._trouble(source, "outbox: unexpected error (see the log)")
                    await self._sleep(backoff.next())
                    continue
                self._fine(source)
                backoff.reset()
                if handled < self.batch:
                    break  # drained (or another node holds the partition)

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[Any]:
        """A pooled connection; terminated when anything fails on it (its transaction
        state is unknown), errors raised as :class:`OutboxUnavailable`."""
        pool = self._pool
        if pool is None:
            raise OutboxUnavailable("outbox: stopped")
        try:
            conn = await pool.acquire(timeout=self.timeout)
        except Exception as exc:
            raise unavailable(exc) from None
        try:
            yield conn
        except BaseException as exc:
            # A connection the server closed is already detached from the pool.
            with contextlib.suppress(Exception):
                conn.terminate()
            if isinstance(exc, Exception):
                raise unavailable(exc) from None
            raise
        finally:
            with contextlib.suppress(Exception):
                await pool.release(conn)

    async def _batch(self, partition: int) -> int:
        """One transaction; the number of rows read (0 when another node holds the
        partition). Raises _RetryRow after committing what ran before that row."""
        retry: _RetryRow | None = None
        async with self._connection() as conn:
            await conn.execute(self._begin, timeout=self.timeout)
            rows = await conn.fetch(SELECT_ROWS, partition, self.batch, timeout=self.timeout)
            done: list[int] = []
            failed: list[int] = []
            errors: list[str] = []
            outcomes = [] if self._stop.is_set() else await run_rows(self._runner, rows)
            for (row_id, method, _), outcome in zip(rows, outcomes, strict=False):
                if outcome.result is Result.DONE:
                    done.append(row_id)
                elif outcome.result is Result.FAILED:
                    logger.warning("outbox row %d (%s) failed: %s", row_id, method, outcome.error)
                    failed.append(row_id)
                    errors.append(outcome.error)
                else:
                    retry = _RetryRow(row_id, outcome.error)
            if failed:
                await conn.execute(MOVE_FAILED, failed, errors, timeout=self.timeout)
            await conn.execute(_delete_and_commit(done), timeout=self.timeout)
        self.executed += len(done)
        self.failed += len(failed)
        if retry is not None:
            raise retry
        return len(rows)


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("%s stopped", task.get_name(), exc_info=task.exception())
