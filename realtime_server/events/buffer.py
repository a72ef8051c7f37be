"""The batching writer: events from the hot path to the store, nothing lost on the way.

``record`` (called on the event loop by connect, subscribe, publish...) appends to a
bounded in-memory deque and returns; it never awaits, blocks or raises. One writer task
takes events out in batches of ``batch_size``: as soon as a batch is full, or
``flush_interval`` after the first event of a partial one.

When the store fails (unreachable, too slow: every call is bounded by the store's
timeout), the writer retries with capped exponential backoff, and the events reach the
spill file (JSON lines, fsync'd, see :mod:`.spill`) within about ``spill_after``
seconds (1 s): a guard task spills whatever waits once the store has acknowledged
nothing for that long, the batch being written included (a copy: the store may still
take it), so a crash (SIGKILL) while the store is down loses at most about the last
second of events (issue 11: it lost everything below half the buffer). Independently,
once ``spill_at`` events (half the capacity) wait, they are spilled at once, by the
guard when the writer is held in a write that hangs (a frozen host). When the
store answers again, the spill file is written first, then the buffer; the store skips
ids it already holds, so a batch whose acknowledgement was lost, or an event spilled
twice, is stored once. ``close`` writes what is buffered, or spills it when the store
is down; ``start`` replays a spill file left by the previous run. An event is dropped
(and counted) only when the buffer is full and spilling fails or cannot keep up, or
when the store refuses its content.

Counters: ``written`` (handed to the store), ``spilled`` (appended to the spill file),
``dropped``; gauges: buffered (in memory), spill pending (on disk). See
:meth:`BufferedRecorder.bind_metrics`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

from ..metrics import Metrics
from .model import Event
from .spill import SpillFile
from .store import EventsRejected, EventStore, StoreUnavailable

__all__ = ["BufferedRecorder"]

logger = logging.getLogger("realtime_server.events")

_RETRY_BASE = 0.1
_SPILL_RETRY = 1.0
SPILL_AFTER = 1.0
"""Seconds without any acknowledgement from the store after which what waits in memory
is spilled: the most a crash loses while the store is unreachable (about)."""


class BufferedRecorder:
    """An :class:`~realtime_server.events.model.EventRecorder` writing to ``store``."""

    def __init__(
        self,
        store: EventStore,
        spill_path: str | Path,
        *,
        capacity: int = 100_000,
        batch_size: int = 1000,
        flush_interval: float = 0.2,
        timeout: float = 5.0,
        migrate: bool = True,
        retry_max: float = 2.0,
        spill_after: float = SPILL_AFTER,
    ) -> None:
        if capacity < 2:
            raise ValueError("capacity must be at least 2")
        self.store = store
        self.capacity = capacity
        self.batch_size = max(1, min(batch_size, capacity // 2))
        self.spill_at = max(self.batch_size, capacity // 2)
        self.flush_interval = flush_interval
        self.timeout = timeout
        self.migrate = migrate
        self.retry_max = retry_max
        self.spill_after = spill_after
        self.spill = SpillFile(spill_path)
        self.written = 0
        self.spilled = 0
        self.dropped = 0
        self._buffer: deque[Event] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # The batch the writer is handing to the store (out of the buffer meanwhile), and
        # whether the guard spilled a copy of it (then it is never put back).
        self._inflight: list[Event] = []
        self._inflight_spilled = False
        # Monotonic time of the store's last acknowledgement (or of the first event to
        # wait since): the guard spills once it is ``spill_after`` old.
        self._progress = time.monotonic()
        self._guard_wake = asyncio.Event()
        self._guard_task: asyncio.Task[None] | None = None
        # Spill appends, replay renames and deletes run on threads: one at a time.
        self._spill_lock = asyncio.Lock()
        self._opened = False
        self._closing = False
        self._closed = False
        self._degraded = False
        self._failures = 0
        self._retry_at = 0.0
        self._error = ""
        self._full_logged = False
        self._spill_retry_at = 0.0

    # --- EventRecorder ---------------------------------------------------------------------

    def record(self, event: Event) -> None:
        """Buffer ``event`` (never blocks nor raises)."""
        buffer = self._buffer
        n = len(buffer)
        if n >= self.capacity or self._closed:
            self.dropped += 1
            if not self._full_logged:
                self._full_logged = True
                logger.error(
                    "event log: buffer %s, dropping events",
                    "closed" if self._closed else f"full ({n})",
                )
            return
        buffer.append(event)
        n += 1
        if n == 1 or n == self.batch_size or n >= self.spill_at:
            self._wake.set()
            if n == 1:
                if not self._inflight:  # the first event waiting: the guard's clock starts
                    self._progress = time.monotonic()
                self._guard_wake.set()
            elif n >= self.spill_at:
                self._guard_wake.set()  # the writer may be stuck in a write: spill now

    async def start(self) -> None:
        """Count a spill file left by the previous run (replayed in the background),
        open the store (applying migrations if configured), start the writer. A store
        that cannot be opened does not fail the start: the log is degraded and the
        writer keeps trying."""
        try:
            async with asyncio.timeout(self.timeout):
                pending = await asyncio.to_thread(self.spill.count)
            if pending:
                logger.info("event log: %d spilled events to replay", pending)
        except (OSError, TimeoutError) as exc:
            logger.error("event log: cannot read the spill file: %s", _text(exc))
        try:
            await self._open()
        except StoreUnavailable as exc:
            self._failed(exc)
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._run(), name="event-log-writer")
        self._guard_task = loop.create_task(self._guard(), name="event-log-guard")

    async def close(self) -> None:
        """Write what is buffered, or spill it if the store is down (bounded)."""
        if self._closed:
            return
        self._closing = True
        self._wake.set()
        task = self._task
        if task is not None:
            try:
                async with asyncio.timeout(2 * self.timeout + 1):
                    await asyncio.shield(task)
            except TimeoutError:
                logger.warning("event log: writer did not finish in time; spilling")
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            except Exception:
                logger.exception("event log: writer failed")
        await self._stop_guard()
        if self._buffer:
            await self._spill_buffer()
        self._closed = True
        if self._buffer:
            self.dropped += len(self._buffer)
            logger.error("event log: %d events lost at shutdown", len(self._buffer))
            self._buffer.clear()
        await self.store.close()

    def problem(self) -> str | None:
        if not self._degraded:
            return None
        return (
            f"degraded: {self.store.name} store failing ({self._error}),"
            f" {len(self._buffer)} events buffered, {self.spill.pending} spilled"
        )

    # --- metrics ---------------------------------------------------------------------------

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    @property
    def degraded(self) -> bool:
        return self._degraded

    def bind_metrics(self, metrics: Metrics) -> None:
        """Expose the counters on ``/metrics`` (as ``realtime_event_log_*``)."""
        gauges: list[tuple[str, str, Any]] = [
            ("buffered", "Events in memory waiting for the event store.", lambda: self.buffered),
            (
                "spill_pending",
                "Events in the local spill file waiting for the event store.",
                lambda: self.spill.pending,
            ),
            ("written", "Events written to the event store since start.", lambda: self.written),
            ("spilled", "Events spilled to the local file since start.", lambda: self.spilled),
            (
                "dropped",
                "Events lost: buffer full and spilling failed, or refused by the store.",
                lambda: self.dropped,
            ),
            ("degraded", "1 while the event store is unreachable.", lambda: int(self.degraded)),
        ]
        for name, help_text, read in gauges:
            if name in ("written", "spilled", "dropped"):
                metrics.counter(f"event_log_{name}", help_text, read)
            else:
                metrics.gauge(f"event_log_{name}", help_text, read)

    # --- the writer task ---------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            await self._wait_for_work()
            if self._closing:
                break
            try:
                await self._cycle()
            except Exception as exc:  # a bug: keep the writer alive, log loudly
                logger.exception("event log: writer error")
                self._failed(exc)
        await self._final()

    async def _wait_for_work(self) -> None:
        """Return when a batch is full, ``flush_interval`` after the first event of a
        partial one, when a retry is due, when the buffer needs spilling, or on close.
        The idle wait (nothing buffered) ends with ``record`` or ``close``."""
        loop = asyncio.get_running_loop()
        while not self._closing:
            self._wake.clear()
            if self._degraded:
                now = loop.time()
                if len(self._buffer) >= self.spill_at and now >= self._spill_retry_at:
                    return
                remaining = self._retry_at - now
                if remaining <= 0:
                    if self._buffer or self.spill.pending or not self._opened:
                        return
                    self._recovered()  # nothing at risk any more
                    continue
                await self._sleep(remaining)
            elif not self._opened or self.spill.pending:
                return
            elif not self._buffer:
                await self._wake.wait()
            else:
                if len(self._buffer) < self.batch_size:
                    await self._sleep(self.flush_interval)
                return

    async def _sleep(self, delay: float) -> None:
        """Wait ``delay`` seconds, or less if ``record``/``close`` wakes the writer."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._wake.wait()

    async def _cycle(self) -> None:
        loop = asyncio.get_running_loop()
        if self._degraded and loop.time() < self._retry_at:
            await self._spill_buffer()  # woken by pressure before the retry is due
            return
        try:
            if not self._opened:
                await self._open()
            await self._replay()
            await self._drain()
        except (StoreUnavailable, OSError) as exc:  # OSError: reading the spill file
            self._failed(exc)
            if len(self._buffer) >= self.spill_at:
                await self._spill_buffer()
            return
        self._recovered()

    async def _final(self) -> None:
        """On close: write the buffer (if the store is up), spill the rest."""
        if not self._degraded:
            try:
                if not self._opened:
                    await self._open()
                await self._drain(everything=True)
            except StoreUnavailable as exc:
                self._failed(exc)
        if self._buffer:
            await self._spill_buffer()

    @contextlib.asynccontextmanager
    async def _deadline(self) -> AsyncIterator[None]:
        """Bound a store call even if the store failed to bound it itself."""
        try:
            async with asyncio.timeout(self.timeout * 1.5):
                yield
        except TimeoutError:
            raise StoreUnavailable(f"{self.store.name} store did not answer in time") from None

    async def _open(self) -> None:
        async with self._deadline():
            await self.store.connect()
        if self.migrate:
            async with self._deadline():
                applied = await self.store.migrate()
            if applied:
                logger.info("event log: applied migrations %s", ", ".join(applied))
        self._opened = True

    async def _drain(self, *, everything: bool = False) -> None:
        """Write as many full batches as there are, and a partial one only when it is
        all the buffer held when called (its flush interval is what woke the writer).
        What remains after full batches (the events that came in since the last one
        filled up) waits for its own flush interval: writing it at once made a busy
        log alternate full batches with small ones (a third more transactions, each
        paying its round trips or its thread hand-off). ``everything``: down to the
        last event (close).

        A batch leaves the buffer while it is written (the guard may spill the buffer
        meanwhile); if the write fails it goes back to the front, unless the guard
        spilled a copy of it."""
        buffer = self._buffer
        partial = everything or len(buffer) < self.batch_size
        while buffer and (partial or len(buffer) >= self.batch_size):
            partial = everything
            batch = [buffer.popleft() for _ in range(min(self.batch_size, len(buffer)))]
            self._inflight = batch
            self._inflight_spilled = False
            try:
                await self._store(batch)
            except BaseException:
                if not self._inflight_spilled:
                    buffer.extendleft(reversed(batch))
                raise
            finally:
                self._inflight = []
            if len(buffer) >= self.spill_at and not self._closing:
                await self._spill_buffer()  # the store is slower than the events come

    async def _replay(self) -> None:
        """Write the spill file(s), oldest first, chunk by chunk."""
        spill = self.spill
        while not self._closing and await self._locked_spill(spill.begin_replay):
            while not self._closing:
                events, offset, bad = await asyncio.to_thread(spill.read_chunk, self.batch_size)
                if not events and not bad:
                    await self._locked_spill(spill.finish_replay)
                    break
                await self._store(events)
                async with self._spill_lock:
                    spill.advance(offset, len(events) + bad)
                self.dropped += bad
                if len(self._buffer) >= self.spill_at:
                    await self._spill_buffer()

    async def _store(self, batch: Sequence[Event]) -> None:
        """Write ``batch``; events the store refuses for their content are dropped, one
        by one, so that one bad event never blocks the others."""
        try:
            async with self._deadline():
                await self.store.write_batch(batch)
        except EventsRejected as exc:
            logger.error("event log: batch refused (%s); writing its events one by one", exc)
            for event in batch:
                try:
                    async with self._deadline():
                        await self.store.write_batch([event])
                except EventsRejected:
                    self.dropped += 1
                    logger.error("event log: dropped event %s (%s)", event.id, event.type.value)
        self.written += len(batch)
        self._progress = time.monotonic()

    async def _locked_spill(self, operation: Callable[[], bool] | Callable[[], None]) -> Any:
        """Run a spill-file operation on a thread, never two at a time."""
        async with self._spill_lock:
            return await asyncio.to_thread(operation)

    async def _spill_buffer(self, *, inflight: bool = False) -> bool:
        """Move everything buffered to the spill file (fsync'd before it leaves memory);
        ``inflight``: also a copy of the batch being written, unless it is spilled
        already. Returns whether the spill succeeded (or there was nothing to spill)."""
        async with self._spill_lock:
            batch = self._inflight if inflight and not self._inflight_spilled else []
            taken = list(self._buffer)
            self._buffer.clear()
            events = batch + taken
            if not events:
                return True
            try:
                async with asyncio.timeout(self.timeout):
                    await asyncio.to_thread(self.spill.append, events)
            except (OSError, TimeoutError) as exc:
                # Kept in memory; if the buffer fills up, record() drops and counts.
                self._buffer.extendleft(reversed(taken))
                logger.error("event log: cannot spill to %s: %s", self.spill.path, _text(exc))
                self._spill_retry_at = asyncio.get_running_loop().time() + _SPILL_RETRY
                return False
            if batch and batch is self._inflight:
                self._inflight_spilled = True
            self.spilled += len(events)
            self._full_logged = False
            self._progress = time.monotonic()
            return True

    # --- the guard: nothing waits in memory long while the store does not answer ------

    async def _guard(self) -> None:
        """Spill what waits (buffer and batch in flight) once the store has acknowledged
        nothing for ``spill_after`` seconds; again every ``spill_after`` while it stays
        silent. Also spill the buffer as soon as ``spill_at`` events wait: the writer
        does that between writes, but a store that hangs (a frozen host: no refusal,
        no answer) holds the writer in one write for up to its timeout, long enough
        for a busy node to fill the buffer. Sleeps while nothing waits."""
        wake = self._guard_wake
        while True:
            wake.clear()
            if len(self._buffer) >= self.spill_at:
                spilled = await self._spill_buffer()
            elif not self._buffer and (not self._inflight or self._inflight_spilled):
                await wake.wait()
                continue
            else:
                delay = self._progress + self.spill_after - time.monotonic()
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(delay):
                            await wake.wait()
                    continue
                spilled = await self._spill_buffer(inflight=True)
            if not spilled:
                await asyncio.sleep(_SPILL_RETRY)

    async def _stop_guard(self) -> None:
        task = self._guard_task
        if task is not None:
            self._guard_task = None
            async with self._spill_lock:  # never in the middle of a spill
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # --- health --------------------------------------------------------------------------

    def _failed(self, exc: BaseException) -> None:
        self._failures += 1
        delay = min(self.retry_max, _RETRY_BASE * 2 ** min(self._failures - 1, 16))
        self._retry_at = asyncio.get_running_loop().time() + delay * random.uniform(0.5, 1.0)
        error = _text(exc)
        if not self._degraded or error != self._error:
            logger.warning(
                "event log degraded: %s (buffering up to %d events, then spilling to %s)",
                error,
                self.spill_at,
                self.spill.path,
            )
        self._degraded = True
        self._error = error

    def _recovered(self) -> None:
        if self._degraded:
            logger.info("event log: %s store reachable again", self.store.name)
        self._degraded = False
        self._failures = 0
        self._error = ""


def _text(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
