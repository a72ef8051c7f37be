"""One event-store contract, run against SQLite (always) and PostgreSQL (a private
cluster, when the server binaries are installed)."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from realtime_server.events.model import Event, EventType
from realtime_server.events.postgres import PostgresStore
from realtime_server.events.sqlite import SqliteStore, chunk_rows
from realtime_server.events.store import EventQuery, EventStore, StoreUnavailable

from .helpers import MS
from .pg import PgCluster, pg_cluster

__all__ = ["pg_cluster"]  # the fixture, imported for this module

T0 = 1_700_000_000.0


def ev(kind: EventType = EventType.PUBLICATION, at: float = T0, **fields: object) -> Event:
    return Event(kind, "node-1", time=at, **fields)  # type: ignore[arg-type]


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[EventStore]:
    s: EventStore
    if request.param == "sqlite":
        s = SqliteStore(tmp_path / "events.db", timeout=5000 * MS)
    else:
        cluster: PgCluster = request.getfixturevalue("pg_cluster")
        s = PostgresStore(await cluster.create_database(), timeout=5000 * MS)
    await s.connect()
    assert await s.migrate() == ["0001_events"]
    try:
        yield s
    finally:
        await s.close()


async def test_migrate_is_idempotent(store: EventStore) -> None:
    assert await store.migrate() == []
    assert await store.migrate() == []
    await store.write_batch([ev()])
    assert len(await store.query(EventQuery())) == 1


async def test_round_trip_keeps_every_field(store: EventStore) -> None:
    original = ev(
        EventType.CONNECT_REJECTED,
        at=T0 + 0.123456,
        user="u1",
        client="c1",
        channel="document:42",
        offset=7,
        code=3500,
        details={"reason": "invalid token", "remote": ["127.0.0.1", 5], "n": 1.5},
    )
    await store.write_batch([original])
    (found,) = await store.query(EventQuery(document="42"))
    assert found.id == original.id and found.type is EventType.CONNECT_REJECTED
    assert (found.node, found.user, found.client, found.channel) == (
        "node-1",
        "u1",
        "c1",
        "document:42",
    )
    assert (found.offset, found.code, found.details) == (7, 3500, original.details)
    assert found.time == pytest.approx(original.time, abs=1e-6)
    assert found.document == "42"


async def test_rewriting_a_batch_stores_each_event_once(store: EventStore) -> None:
    batch = [ev(at=T0 + i, channel="document:1", offset=i) for i in range(50)]
    await store.write_batch(batch)
    await store.write_batch(batch)  # a batch whose acknowledgement was lost
    await store.write_batch([*batch[40:], ev(at=T0 + 50, channel="document:1", offset=50)])
    found = await store.query(EventQuery(document="1"))
    assert [e.offset for e in found] == list(range(51))
    assert len({e.id for e in found}) == 51


@pytest.mark.parametrize("n", [1, 63, 64, 65, 300, 1024, 2100])
async def test_every_batch_size_is_stored_whole_in_order(store: EventStore, n: int) -> None:
    """Batches are written in multi-row statements (SQLite: up to 1024 rows, the rest
    in powers of two): any size is stored whole, in the order given."""
    await store.write_batch([ev(at=T0, channel=f"document:{n}", offset=i) for i in range(n)])
    found = await store.query(EventQuery(document=str(n)))
    assert [e.offset for e in found] == list(range(n))


def test_sqlite_statement_sizes_fit_the_library() -> None:
    assert chunk_rows(250_000) == chunk_rows(32_766) == 1024  # Debian's build; 3.32+
    assert chunk_rows(999) == 64  # before 3.32: 999 parameters, 90 rows
    assert chunk_rows(11) == 1


async def test_an_event_twice_in_one_batch_is_stored_once(store: EventStore) -> None:
    """A replayed spill chunk may hold an event twice (spilled twice)."""
    batch = [ev(at=T0 + i, channel="document:2", offset=i) for i in range(70)]
    await store.write_batch([*batch, batch[3], batch[69], *batch[60:]])
    found = await store.query(EventQuery(document="2"))
    assert [e.offset for e in found] == list(range(70))


async def test_document_events_in_time_order(store: EventStore) -> None:
    late = ev(EventType.UNSUBSCRIBE, at=T0 + 3, user="a", channel="document:9")
    early = ev(EventType.SUBSCRIBE, at=T0 + 1, user="a", channel="document:9")
    middle = ev(EventType.PUBLICATION, at=T0 + 2, channel="document:9", offset=1)
    other = ev(EventType.PUBLICATION, at=T0 + 2, channel="document:10", offset=1)
    await store.write_batch([late, other])
    await store.write_batch([middle, early])
    found = await store.query(EventQuery(document="9"))
    assert [e.id for e in found] == [early.id, middle.id, late.id]


async def test_equal_times_keep_the_order_stored(store: EventStore) -> None:
    batch = [ev(at=T0, channel="document:5", offset=i) for i in range(20)]
    await store.write_batch(batch)
    assert [e.offset for e in await store.query(EventQuery(document="5"))] == list(range(20))


async def test_user_events_are_what_they_did_and_received(store: EventStore) -> None:
    connect = ev(EventType.CONNECT, at=T0 + 1, user="7", client="c")
    subscribe = ev(EventType.SUBSCRIBE, at=T0 + 2, user="7", client="c", channel="document:1")
    received = ev(EventType.PUBLICATION, at=T0 + 3, channel="user:7", offset=1)
    someone_else = ev(EventType.CONNECT, at=T0 + 1.5, user="8", client="d")
    not_theirs = ev(EventType.PUBLICATION, at=T0 + 4, channel="user:77", offset=1)
    await store.write_batch([not_theirs, received, subscribe, someone_else, connect])
    found = await store.query(EventQuery(user="7"))
    assert [e.id for e in found] == [connect.id, subscribe.id, received.id]


async def test_since_inclusive_until_exclusive_and_limit(store: EventStore) -> None:
    batch = [ev(at=T0 + i, channel="document:3", offset=i) for i in range(10)]
    await store.write_batch(batch)

    async def offsets(**kw: object) -> list[int | None]:
        found = await store.query(EventQuery(document="3", **kw))  # type: ignore[arg-type]
        return [e.offset for e in found]

    assert await offsets(since=T0 + 3) == [3, 4, 5, 6, 7, 8, 9]
    assert await offsets(until=T0 + 3) == [0, 1, 2]
    assert await offsets(since=T0 + 2, until=T0 + 5) == [2, 3, 4]
    assert await offsets(since=T0 + 2, limit=2) == [2, 3]
    assert await offsets(since=T0 + 20) == []


async def test_delete_before_keeps_recent_events(store: EventStore) -> None:
    now = time.time()
    old = [ev(at=now - 40 * 86400 + i, channel="document:1", offset=i) for i in range(30)]
    recent = [ev(at=now - 86400 + i, channel="document:1", offset=100 + i) for i in range(5)]
    await store.write_batch([*old, *recent])
    assert await store.delete_before(now - 30 * 86400) == 30
    assert [e.offset for e in await store.query(EventQuery(document="1"))] == list(range(100, 105))
    assert await store.delete_before(now - 30 * 86400) == 0


async def test_hostile_text_is_stored_not_refused(store: EventStore) -> None:
    """A NUL (refused by PostgreSQL text and jsonb) or a lone surrogate (not UTF-8) in
    client-supplied strings must not poison the batch."""
    nasty = "a\x00b\ud800c"
    hostile = ev(
        EventType.CONNECT,
        user=nasty,
        client="c\x00",
        details={"name": nasty, nasty: 1, "nested": {"v": "\x00"}},
    )
    fine = ev(EventType.CONNECT, user="ok")
    await store.write_batch([hostile, fine])
    found = {e.id: e for e in await store.query(EventQuery())}
    assert set(found) == {hostile.id, fine.id}
    stored = found[hostile.id]
    assert stored.user is not None and "\x00" not in stored.user and stored.user.startswith("a")
    assert stored.details is not None and "\x00" not in str(stored.details)


async def test_unreachable_store_raises_store_unavailable(tmp_path: Path) -> None:
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    sqlite = SqliteStore(not_a_folder / "events.db", timeout=2000 * MS)
    with pytest.raises(StoreUnavailable):
        await sqlite.connect()
    await sqlite.close()

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connections are refused
        pg = PostgresStore(f"postgresql://u:secret-pw@127.0.0.1:{port}/x", timeout=2000 * MS)
        await pg.connect()  # the pool starts empty: no I/O yet
        with pytest.raises(StoreUnavailable) as info:
            await pg.write_batch([ev()])
        assert "secret-pw" not in str(info.value) and "secret-pw" not in repr(pg)
        await pg.close()


async def test_uuid_ids_are_kept(store: EventStore) -> None:
    fixed = uuid.UUID("12345678-1234-5678-1234-567812345678")
    await store.write_batch([Event(EventType.CONNECT, "n", user="z", time=T0, id=fixed)])
    (found,) = await store.query(EventQuery(user="z"))
    assert found.id == fixed
