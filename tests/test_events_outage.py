"""PostgreSQL trouble loses nothing: a real server under a load of connections,
subscriptions, refusals and publications; its private PostgreSQL is killed mid-load
and restarted. Delivery never stops; afterwards the table holds every recorded event
exactly once. And a server stopped during an outage spills; the next one replays."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from realtime_server.app import Running, running
from realtime_server.events.buffer import BufferedRecorder
from realtime_server.events.model import Event

from .conftest import StartServer, ws_url
from .helpers import MS, RawClient, make_settings, recorded, sub_token, token
from .pg import PgCluster, require_postgres

DOC = "document:live"


@pytest.fixture
async def pg() -> AsyncIterator[PgCluster]:
    """A cluster of this test's own: it gets killed."""
    require_postgres()
    async with PgCluster() as cluster:
        yield cluster


def capture(server: Running) -> tuple[BufferedRecorder, list[Event]]:
    """The server's recorder, and every event it is handed from now on."""
    recorder = server.node.events
    assert isinstance(recorder, BufferedRecorder)
    return recorder, recorded(server)


async def wait_until(check: Callable[[], bool], timeout: float) -> None:
    """For the writer's progress, which nothing signals: re-check every 20 ms."""
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(20 * MS)


async def stored_rows(dsn: str) -> list[Any]:
    import asyncpg  # type: ignore[import-untyped]

    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        return list(
            await conn.fetch(
                "SELECT id, type, client_id, channel, stream_offset FROM events", timeout=10
            )
        )
    finally:
        await conn.close(timeout=5)


async def settled_rows(dsn: str, expected: set[uuid.UUID]) -> list[Any]:
    """The stored rows, once they include ``expected`` (or after 10 s, for the caller
    to compare exactly). The last batch may still be on its way to PostgreSQL: taken
    from the buffer (``buffered`` no longer counts it), not committed yet."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(10000 * MS):
            while not expected <= {r["id"] for r in await stored_rows(dsn)}:
                await asyncio.sleep(50 * MS)
    return await stored_rows(dsn)


async def churn(server: Running, n: int) -> str:
    """One short-lived client: connect, subscribe, unsubscribe, close; plus one refused
    connect. Returns the client id."""
    client = await RawClient.open(ws_url(server))
    user = f"u{n}"
    reply = await client.connect(token(user))
    client_id = str(reply["connect"]["client"])
    channel = f"document:d{n % 3}"
    sub = await client.call("subscribe", {"channel": channel, "token": sub_token(user, channel)})
    assert "subscribe" in sub, sub
    assert "unsubscribe" in await client.call("unsubscribe", {"channel": channel})
    await client.close()
    refused = await RawClient.open(ws_url(server))
    await refused.send({"connect": {"token": "not-a-token"}})
    assert (await refused.closed())[0] == 3500
    return client_id


async def test_postgres_killed_mid_load_loses_nothing(
    pg: PgCluster, start_server: StartServer, tmp_path: Path
) -> None:
    dsn = await pg.create_database()
    server = await start_server(
        DATABASE_URL=dsn,
        EVENTS_SPILL_PATH=tmp_path / "spill.jsonl",
        EVENTS_BUFFER=300,  # spill at 150: the outage below spills
        EVENTS_BATCH=50,
        EVENTS_FLUSH_INTERVAL=0.02,
        EVENTS_TIMEOUT=1,
        NODE_NAME="outage-node",
    )
    recorder, seen = capture(server)
    watchers = []
    watcher_ids = []
    for i in range(3):
        watcher = await RawClient.open(ws_url(server))
        reply = await watcher.connect(token(f"w{i}", channels=[DOC]))
        assert DOC in reply["connect"]["subs"]
        watchers.append(watcher)
        watcher_ids.append(reply["connect"]["client"])

    rounds = 0
    progressed = asyncio.Event()
    stop_load = asyncio.Event()
    published = 0
    client_ids: list[str] = []

    async def load() -> None:
        nonlocal rounds, published
        while not stop_load.is_set():
            client_ids.append(await churn(server, rounds))
            for _ in range(3):
                position = await server.node.ops.publish(DOC, b'{"status":"viewed"}', publisher="t")
                published += 1
                assert position is not None and position.offset == published
            # Delivery goes on whatever PostgreSQL does: every watcher gets it now.
            for watcher in watchers:
                for _ in range(3):
                    push = await watcher.push("pub", timeout=1000 * MS)
                    assert push["channel"] == DOC
            rounds += 1
            progressed.set()

    async def reach(target: int) -> None:
        async with asyncio.timeout(20000 * MS):
            while rounds < target:
                progressed.clear()
                await progressed.wait()

    task = asyncio.get_running_loop().create_task(load())
    try:
        await reach(15)
        await wait_until(lambda: recorder.written > 0, 5000 * MS)
        await pg.astop("immediate")  # connections cut, possibly mid-batch
        outage_start = rounds
        await wait_until(lambda: "event_log" in server.node.readiness().degraded, 5000 * MS)
        readiness = server.node.readiness()
        assert "degraded" in readiness.degraded["event_log"]
        assert readiness.ready  # an audit-store outage never drains the node (/readyz 200)
        await reach(outage_start + 25)
        await wait_until(lambda: recorder.spilled > 0, 5000 * MS)
        await pg.astart()
        await reach(rounds + 15)
    finally:
        stop_load.set()
        await asyncio.wait_for(task, 10000 * MS)

    await wait_until(
        lambda: recorder.buffered == 0 and recorder.spill.pending == 0 and not recorder.degraded,
        10000 * MS,
    )
    assert server.node.readiness().degraded == {} and server.node.readiness().ready
    assert recorder.dropped == 0 and recorder.spilled > 0
    metrics = server.node.metrics.render().decode()
    assert f"realtime_event_log_spilled_total {recorder.spilled}\n" in metrics

    expected = {e.id for e in seen}
    rows = await settled_rows(dsn, expected)
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids))
    assert set(ids) == expected  # every recorded event, once, nothing else
    offsets = sorted(r["stream_offset"] for r in rows if r["type"] == "publication")
    assert offsets == list(range(1, published + 1))
    connects = [r["client_id"] for r in rows if r["type"] == "connect"]
    assert sorted(connects) == sorted([*client_ids, *watcher_ids])
    disconnects = [r["client_id"] for r in rows if r["type"] == "disconnect"]
    assert sorted(disconnects) == sorted(client_ids)
    rejected = [r for r in rows if r["type"] == "connect_rejected"]
    assert len(rejected) == len(client_ids) == rounds
    subscribes = [(r["client_id"], r["channel"]) for r in rows if r["type"] == "subscribe"]
    # user:<id> and a document for each churn client; user:<id> and DOC for watchers
    assert len(subscribes) == len(set(subscribes)) == 2 * rounds + 2 * len(watchers)
    assert not (tmp_path / "spill.jsonl").exists()
    for watcher in watchers:
        await watcher.close()


async def test_server_stopped_during_outage_spills_and_next_start_replays(
    pg: PgCluster, start_server: StartServer, tmp_path: Path
) -> None:
    dsn = await pg.create_database()
    await pg.astop()
    env: dict[str, Any] = {
        "DATABASE_URL": dsn,
        "EVENTS_SPILL_PATH": tmp_path / "spill.jsonl",
        "EVENTS_TIMEOUT": 1,
    }
    async with running(make_settings(**env)) as first:
        readiness = first.node.readiness()
        assert "event_log" in readiness.degraded and readiness.ready  # degraded, yet serving
        recorder, seen = capture(first)
        ids = [await churn(first, i) for i in range(5)]
    # graceful shutdown: the buffer went to the spill file
    assert recorder.dropped == 0 and recorder.spilled == len(seen) > 0
    assert (tmp_path / "spill.jsonl").exists()

    await pg.astart()
    second = await start_server(**env)
    again, _ = capture(second)
    await wait_until(lambda: again.spill.pending == 0 and again.written >= len(seen), 10000 * MS)
    rows = await stored_rows(dsn)
    assert {r["id"] for r in rows} == {e.id for e in seen} and len(rows) == len(seen)
    assert sorted(r["client_id"] for r in rows if r["type"] == "connect") == sorted(ids)
    assert not (tmp_path / "spill.jsonl").exists()
    assert uuid.UUID(str(rows[0]["id"]))


async def test_postgres_frozen_mid_load_loses_nothing(
    pg: PgCluster, start_server: StartServer, tmp_path: Path
) -> None:
    """A hung PostgreSQL (SIGSTOP: sockets open, nothing answers) is not a refused
    connection: every write and connect must time out by itself. Serving goes on at
    full pace, and after the thaw every event is stored exactly once (a batch PostgreSQL
    committed after the writer gave up on it is written again, and ignored by id)."""
    dsn = await pg.create_database()
    server = await start_server(
        DATABASE_URL=dsn,
        EVENTS_SPILL_PATH=tmp_path / "spill.jsonl",
        EVENTS_BUFFER=300,
        EVENTS_BATCH=50,
        EVENTS_FLUSH_INTERVAL=0.02,
        EVENTS_TIMEOUT=1,
    )
    recorder, seen = capture(server)
    client_ids = [await churn(server, n) for n in range(10)]
    await wait_until(lambda: recorder.written > 0, 5000 * MS)
    pg.signal_all(signal.SIGSTOP)
    try:
        async with asyncio.timeout(20000 * MS):  # 60 clients, not held up by PostgreSQL
            client_ids += [await churn(server, n) for n in range(10, 70)]
        await wait_until(lambda: "event_log" in server.node.readiness().degraded, 10000 * MS)
        assert server.node.readiness().ready
    finally:
        pg.signal_all(signal.SIGCONT)
    client_ids += [await churn(server, n) for n in range(70, 80)]
    await wait_until(
        lambda: recorder.buffered == 0 and recorder.spill.pending == 0 and not recorder.degraded,
        20000 * MS,
    )
    assert recorder.dropped == 0
    expected = {e.id for e in seen}
    rows = await settled_rows(dsn, expected)
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)) and set(ids) == expected
    connects = sorted(r["client_id"] for r in rows if r["type"] == "connect")
    assert connects == sorted(client_ids)
