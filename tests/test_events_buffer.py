"""The batching writer: batches by size and interval, spills while the store is down,
replays each event exactly once, flushes or spills on close, bounds every wait."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from realtime_server.errors import ConfigError
from realtime_server.events.buffer import BufferedRecorder
from realtime_server.events.factory import build_recorder, build_store, spill_path
from realtime_server.events.model import Event, EventType
from realtime_server.events.sqlite import SqliteStore
from realtime_server.events.store import EventQuery, EventsRejected, StoreUnavailable
from realtime_server.metrics import Metrics

from .helpers import MS, make_settings


class FakeStore:
    """An in-memory store whose failures the test controls. Rows are keyed by id
    (idempotent like the real ones); every write is counted."""

    name = "fake"

    def __init__(self) -> None:
        self.rows: dict[uuid.UUID, Event] = {}
        self.batches: list[int] = []
        self.down = False
        self.hang: asyncio.Event | None = None
        self.lose_acks = 0  # commit, then report a failure (the ack was lost)
        self.poison: set[uuid.UUID] = set()
        self.closed = False
        self.changed = asyncio.Condition()

    async def connect(self) -> None:
        if self.down:
            raise StoreUnavailable("fake store down")

    async def close(self) -> None:
        self.closed = True

    async def migrate(self) -> list[str]:
        await self.connect()
        return []

    async def write_batch(self, events: Sequence[Event]) -> None:
        if self.hang is not None:
            await self.hang.wait()
        if self.down:
            raise StoreUnavailable("fake store down")
        if any(e.id in self.poison for e in events):
            raise EventsRejected("poison")
        for e in events:
            self.rows.setdefault(e.id, e)
        self.batches.append(len(events))
        async with self.changed:
            self.changed.notify_all()
        if self.lose_acks:
            self.lose_acks -= 1
            raise StoreUnavailable("connection lost after commit")

    async def query(self, query: EventQuery) -> list[Event]:
        return sorted(self.rows.values(), key=lambda e: e.time)

    async def delete_before(self, before: float) -> int:
        return 0

    async def wait(self, predicate: Callable[[], bool], timeout: float = 3000 * MS) -> None:
        async with asyncio.timeout(timeout), self.changed:
            await self.changed.wait_for(predicate)


def events(n: int, start: int = 0) -> list[Event]:
    return [
        Event(EventType.PUBLICATION, "n", channel="document:1", offset=start + i) for i in range(n)
    ]


def recorder(store: FakeStore | SqliteStore, tmp_path: Path, **kw: object) -> BufferedRecorder:
    options: dict[str, object] = {
        "capacity": 1000,
        "batch_size": 100,
        "flush_interval": 20 * MS,
        "timeout": 1000 * MS,
        "retry_max": 50 * MS,
    }
    options.update(kw)
    return BufferedRecorder(store, tmp_path / "spill.jsonl", **options)  # type: ignore[arg-type]


async def next_start(store: FakeStore, tmp_path: Path, *, stored: int) -> BufferedRecorder:
    """A recorder started on ``tmp_path`` after an earlier one spilled there: returned
    closed, once the store holds ``stored`` events and the spill file is replayed."""
    again = recorder(store, tmp_path)
    await again.start()
    await store.wait(lambda: len(store.rows) == stored)
    await wait_until(lambda: again.spill.pending == 0)
    await again.close()
    return again


async def wait_until(check: Callable[[], bool], timeout: float = 3000 * MS) -> None:
    """For conditions no store write signals (a spill): re-check every few ms."""
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(5 * MS)


async def test_full_batch_is_written_without_waiting_for_the_interval(tmp_path: Path) -> None:
    store = FakeStore()
    rec = recorder(store, tmp_path, batch_size=10, flush_interval=30.0)
    await rec.start()
    for e in events(10):
        rec.record(e)
    await store.wait(lambda: len(store.rows) == 10, timeout=2000 * MS)
    assert store.batches == [10]
    await rec.close()


async def test_partial_batch_is_written_after_the_interval(tmp_path: Path) -> None:
    store = FakeStore()
    rec = recorder(store, tmp_path, batch_size=100, flush_interval=50 * MS)
    await rec.start()
    for e in events(3):
        rec.record(e)
    await store.wait(lambda: len(store.rows) == 3)
    assert store.batches == [3] and rec.written == 3 and rec.buffered == 0
    await rec.close()
    assert store.closed


async def test_batches_hold_at_most_batch_size(tmp_path: Path) -> None:
    store = FakeStore()
    rec = recorder(store, tmp_path, batch_size=100)
    await rec.start()
    for e in events(950):
        rec.record(e)
    await store.wait(lambda: len(store.rows) == 950)
    assert max(store.batches) <= 100 and sum(store.batches) == 950
    await rec.close()


async def test_the_rest_of_a_full_batch_waits_for_its_interval(tmp_path: Path) -> None:
    """22 events at once, batches of 10: two full batches now; the 2 left over wait
    for their flush interval (here: until close) instead of a batch of their own."""
    store = FakeStore()
    rec = recorder(store, tmp_path, batch_size=10, flush_interval=30.0)
    await rec.start()
    for e in events(22):
        rec.record(e)
    await store.wait(lambda: len(store.rows) >= 20)
    assert store.batches == [10, 10] and rec.buffered == 2
    await rec.close()
    assert store.batches == [10, 10, 2] and len(store.rows) == 22


async def test_store_down_spills_then_replays_each_event_once(tmp_path: Path) -> None:
    store = FakeStore()
    store.down = True
    rec = recorder(store, tmp_path, capacity=100)  # spills at 50
    await rec.start()
    assert rec.problem() is not None and "degraded" in (rec.problem() or "")
    batch = events(120)
    for i in range(0, 120, 10):  # a steady flow, not one burst larger than the bound
        for e in batch[i : i + 10]:
            rec.record(e)
        await asyncio.sleep(2 * MS)
    await wait_until(lambda: rec.spilled >= 100)
    assert rec.dropped == 0 and rec.spill.pending == rec.spilled
    assert (tmp_path / "spill.jsonl").exists()
    assert "degraded" in (rec.problem() or "")
    store.down = False
    await store.wait(lambda: len(store.rows) == 120)
    await wait_until(lambda: rec.problem() is None)
    assert sorted(e.offset or 0 for e in store.rows.values()) == list(range(120))
    assert rec.spill.pending == 0 and rec.dropped == 0
    assert not (tmp_path / "spill.jsonl").exists()
    assert not (tmp_path / "spill.jsonl.replaying").exists()
    await rec.close()


async def test_store_down_events_reach_the_spill_file_within_a_second(tmp_path: Path) -> None:
    """Issue 11: below half the buffer nothing was spilled, so a crash lost it all. Now
    whatever waits is spilled once the store has been silent for ``spill_after``."""
    store = FakeStore()
    store.down = True
    rec = recorder(store, tmp_path, capacity=1000, spill_after=0.3)  # spill_at 500
    await rec.start()
    loop = asyncio.get_running_loop()
    for round_ in range(3):
        recorded_at = loop.time()
        for e in events(10, start=10 * round_):
            rec.record(e)
        expected = 10 * (round_ + 1)
        await wait_until(lambda: rec.spill.pending == expected, 2000 * MS)  # noqa: B023
        assert loop.time() - recorded_at <= 0.3 + 300 * MS
        assert rec.buffered == 0
    assert rec.spilled == 30 and rec.dropped == 0
    store.down = False
    await store.wait(lambda: len(store.rows) == 30)
    await rec.close()
    assert sorted(e.offset or 0 for e in store.rows.values()) == list(range(30))


async def test_hung_store_batch_in_flight_is_spilled_and_stored_once(tmp_path: Path) -> None:
    """A write that hangs (the store stopped answering mid-batch): a copy of the batch
    being written is spilled too, and events that come meanwhile; once the store
    answers, every event is stored once."""
    store = FakeStore()
    store.hang = asyncio.Event()
    rec = recorder(store, tmp_path, timeout=30.0, spill_after=0.2, batch_size=10)
    await rec.start()
    for e in events(10):
        rec.record(e)
    await wait_until(lambda: rec.spill.pending == 10, 2000 * MS)  # the batch in flight
    for e in events(5, start=10):
        rec.record(e)
    await wait_until(lambda: rec.spill.pending == 15, 2000 * MS)
    assert rec.buffered == 0
    store.hang.set()
    store.hang = None
    await store.wait(lambda: len(store.rows) == 15)
    await wait_until(lambda: rec.spill.pending == 0)
    await rec.close()
    assert sorted(e.offset or 0 for e in store.rows.values()) == list(range(15))
    assert rec.dropped == 0


async def test_hung_store_pressure_spills_at_once(tmp_path: Path) -> None:
    """The writer stuck in a write that hangs (a frozen PostgreSQL) cannot spill; half
    the buffer waiting is spilled anyway, without waiting for spill_after (a busy node
    once filled its buffer and dropped events within the guard's second)."""
    store = FakeStore()
    store.hang = asyncio.Event()
    rec = recorder(store, tmp_path, capacity=100, batch_size=10, timeout=30.0, spill_after=30.0)
    await rec.start()
    for e in events(10):
        rec.record(e)
    await wait_until(lambda: rec.buffered == 0)  # the writer holds them, in a hung write
    for e in events(rec.spill_at, start=10):
        rec.record(e)
    await wait_until(lambda: rec.spill.pending == rec.spill_at, 2000 * MS)
    assert rec.buffered == 0 and rec.dropped == 0
    store.hang.set()
    store.hang = None
    await store.wait(lambda: len(store.rows) == 10 + rec.spill_at)
    await wait_until(lambda: rec.spill.pending == 0)
    await rec.close()
    assert sorted(e.offset or 0 for e in store.rows.values()) == list(range(10 + rec.spill_at))


async def test_healthy_store_spills_nothing(tmp_path: Path) -> None:
    store = FakeStore()
    rec = recorder(store, tmp_path, spill_after=0.1, flush_interval=20 * MS)
    await rec.start()
    for i in range(10):
        for e in events(5, start=5 * i):
            rec.record(e)
        await asyncio.sleep(40 * MS)  # a steady flow across several guard periods
    await store.wait(lambda: len(store.rows) == 50)
    await rec.close()
    assert rec.spilled == 0 and not (tmp_path / "spill.jsonl").exists()


async def test_lost_acknowledgements_store_each_event_once(tmp_path: Path) -> None:
    store = FakeStore()
    store.lose_acks = 3
    rec = recorder(store, tmp_path, batch_size=10)
    await rec.start()
    for e in events(40):
        rec.record(e)
    await store.wait(lambda: len(store.rows) == 40 and rec.buffered == 0 and not rec.degraded)
    await rec.close()
    assert len(store.rows) == 40 and sum(store.batches) > 40  # rewritten, stored once


async def test_close_flushes_the_buffer(tmp_path: Path) -> None:
    store = FakeStore()
    rec = recorder(store, tmp_path, flush_interval=30.0)
    await rec.start()
    for e in events(7):
        rec.record(e)
    await rec.close()
    assert len(store.rows) == 7 and not (tmp_path / "spill.jsonl").exists()
    rec.record(events(1)[0])  # after close: counted, never raises
    assert rec.dropped == 1


async def test_close_spills_when_down_and_next_start_replays(tmp_path: Path) -> None:
    store = FakeStore()
    store.down = True
    rec = recorder(store, tmp_path)
    await rec.start()
    batch = events(7)
    for e in batch:
        rec.record(e)
    await rec.close()
    lines = (tmp_path / "spill.jsonl").read_text().splitlines()
    assert len(lines) == 7 and rec.spilled == 7 and rec.dropped == 0

    store.down = False
    await next_start(store, tmp_path, stored=7)
    assert {e.id for e in store.rows.values()} == {e.id for e in batch}
    stored = store.rows[batch[3].id]
    assert (stored.offset, stored.channel, stored.time) == (3, "document:1", batch[3].time)
    assert not (tmp_path / "spill.jsonl").exists()


async def test_close_while_a_write_hangs_spills_everything(tmp_path: Path) -> None:
    """SIGTERM while the store hangs (a frozen PostgreSQL): the close is bounded, and
    the batch held by the hung write is spilled with the rest; the next start stores
    every event once."""
    store = FakeStore()
    store.hang = asyncio.Event()
    rec = recorder(store, tmp_path, batch_size=10, timeout=200 * MS, spill_after=30.0)
    await rec.start()
    batch = events(15)
    for e in batch:
        rec.record(e)
    await wait_until(lambda: rec.buffered == 5)  # ten in the hung write
    async with asyncio.timeout(3000 * MS):
        await rec.close()
    assert rec.spill.pending == 15 and rec.dropped == 0
    store.hang.set()
    store.hang = None
    await next_start(store, tmp_path, stored=15)
    assert {e.id for e in store.rows.values()} == {e.id for e in batch}


async def test_interrupted_replay_and_torn_line_are_handled(tmp_path: Path) -> None:
    store = FakeStore()
    store.down = True
    first = recorder(store, tmp_path)
    await first.start()
    batch = events(30)
    for e in batch:
        first.record(e)
    await first.close()
    spill = tmp_path / "spill.jsonl"
    # A crash during replay: the file was renamed, 10 events stored, then a new spill
    # was being appended to when the process died (torn last line).
    spill.rename(tmp_path / "spill.jsonl.replaying")
    for e in batch[:10]:
        store.rows[e.id] = e
    later = events(5, start=100)
    rescue = recorder(FakeStore(), tmp_path)
    rescue.spill.append(later)
    with spill.open("ab") as f:
        f.write(b'{"id": "torn')
    store.down = False
    again = await next_start(store, tmp_path, stored=35)
    assert again.dropped == 1  # the torn line
    assert {e.id for e in store.rows.values()} == {e.id for e in [*batch, *later]}
    assert not spill.exists() and not (tmp_path / "spill.jsonl.replaying").exists()


async def test_refused_event_is_dropped_alone(tmp_path: Path) -> None:
    store = FakeStore()
    batch = events(20)
    store.poison = {batch[5].id}
    rec = recorder(store, tmp_path)
    await rec.start()
    for e in batch:
        rec.record(e)
    await store.wait(lambda: len(store.rows) == 19)
    await rec.close()
    assert rec.dropped == 1 and batch[5].id not in store.rows


async def test_full_buffer_drops_and_counts_when_spilling_fails(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    store = FakeStore()
    store.down = True
    rec = BufferedRecorder(
        store, blocker / "spill.jsonl", capacity=100, timeout=500 * MS, retry_max=50 * MS
    )
    await rec.start()
    for e in events(150):
        rec.record(e)  # never raises, never blocks
    assert rec.buffered == 100 and rec.dropped == 50
    await rec.close()
    assert rec.dropped == 150  # nowhere to put the rest at shutdown either


async def test_hanging_store_is_bounded(tmp_path: Path) -> None:
    store = FakeStore()
    store.hang = asyncio.Event()
    rec = recorder(store, tmp_path, timeout=100 * MS, batch_size=5)
    await rec.start()
    for e in events(5):
        rec.record(e)
    await wait_until(lambda: rec.degraded)
    assert (rec.problem() or "").startswith(  # says why, for /readyz
        "degraded: fake store failing (fake store did not answer in time), "
    )
    store.hang.set()
    store.hang = None
    await store.wait(lambda: len(store.rows) == 5)
    await wait_until(lambda: not rec.degraded)
    await rec.close()


async def test_metrics_are_exposed(tmp_path: Path) -> None:
    store = FakeStore()
    rec = recorder(store, tmp_path)
    metrics = Metrics("n")
    rec.bind_metrics(metrics)
    await rec.start()
    for e in events(3):
        rec.record(e)
    await store.wait(lambda: len(store.rows) == 3)
    text = metrics.render().decode()
    for name, value in (
        ("written_total", 3),
        ("buffered", 0),
        ("spilled_total", 0),
        ("spill_pending", 0),
        ("dropped_total", 0),
        ("degraded", 0),
    ):
        assert f"realtime_event_log_{name} {value}\n" in text
    await rec.close()


async def test_sqlite_end_to_end(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "events.db", timeout=5000 * MS)
    rec = recorder(store, tmp_path, capacity=100_000, batch_size=1000)
    await rec.start()
    batch = events(5000)
    for e in batch:
        rec.record(e)
    await rec.close()
    reader = SqliteStore(tmp_path / "events.db", readonly=True)
    await reader.connect()
    found = await reader.query(EventQuery(document="1"))
    await reader.close()
    assert [e.id for e in found] == [e.id for e in batch]


@pytest.mark.parametrize("capacity", [1, 0])
def test_capacity_must_allow_a_batch(tmp_path: Path, capacity: int) -> None:
    with pytest.raises(ValueError):
        BufferedRecorder(FakeStore(), tmp_path / "s", capacity=capacity)


def test_factory_choices(tmp_path: Path) -> None:
    off = build_recorder(make_settings(EVENTS_ENABLED="false"))
    assert not isinstance(off, BufferedRecorder) and off.problem() is None
    off.bind_metrics(Metrics("n"))  # no-op

    sqlite = build_recorder(make_settings(SQLITE_PATH=tmp_path / "e.db", EVENTS_BUFFER=500))
    assert isinstance(sqlite, BufferedRecorder) and sqlite.store.name == "sqlite"
    assert (sqlite.capacity, sqlite.spill_at) == (500, 250)

    pg = build_recorder(make_settings(DATABASE_URL="postgresql://u:pw@127.0.0.1:1/db"))
    assert isinstance(pg, BufferedRecorder) and pg.store.name == "postgres"
    assert "pw" not in repr(pg.store)
    with pytest.raises(ConfigError, match="REALTIME_DATABASE_URL"):
        build_store(make_settings(DATABASE_URL="mysql://u:pw@h/db"))

    settings = make_settings(EVENTS_SPILL_PATH=tmp_path / "spill.jsonl", WORKER_ID=3)
    assert spill_path(settings) == f"{tmp_path}/spill.jsonl.w3"
