"""Token-expiry deadlines on one timer per node (realtime_server.expiry).

The wheel on its own (deadlines, cancel, reschedule, callbacks that cancel each other),
then through the server over real sockets: 3005 not before ``exp`` plus the grace,
refresh and close moving a session out of its bucket, subscription deadlines cancelled
by unsubscribe, and no reference cycle left by a subscription deadline.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Callable
from typing import Any

import pytest

from realtime_server.app import Running
from realtime_server.expiry import EXPIRY_TICK, ExpiryWheel
from realtime_server.session import Session
from realtime_server.wsconn import WsConnection

from .conftest import StartServer, ws_url
from .helpers import MS, RawClient, claims, sub_token, token

TICK = 0.05


class Entry:
    """A wheel entry recording when it fired."""

    def __init__(self, name: str, on_expire: Callable[[Entry], None] | None = None) -> None:
        self.name = name
        self.expiry_key = -1
        self.fired: list[float] = []
        self.on_expire = on_expire

    def expire(self) -> None:
        self.fired.append(asyncio.get_running_loop().time())
        if self.on_expire is not None:
            self.on_expire(self)


def _signal(event: asyncio.Event) -> Callable[[Entry], None]:
    return lambda _entry: event.set()


# --- the wheel -----------------------------------------------------------------------


async def test_each_entry_fires_once_not_before_its_deadline() -> None:
    loop = asyncio.get_running_loop()
    wheel = ExpiryWheel(TICK)
    done = asyncio.Event()
    delays = {"now": 0.0, "a": 0.12, "b": 0.12, "c": 0.31}
    entries = {name: Entry(name) for name in delays}
    entries["c"].on_expire = _signal(done)
    start = loop.time()
    for name, delay in delays.items():
        wheel.schedule(entries[name], delay)
    assert len(wheel) == 4
    await asyncio.wait_for(done.wait(), 2000 * MS)
    for name, delay in delays.items():
        (fired,) = entries[name].fired  # exactly once
        # never early (but for the loop clock's resolution), at most a tick late
        assert fired >= start + delay - TICK / 50, name
        assert fired <= start + delay + TICK + 1000 * MS, name
    assert abs(entries["a"].fired[0] - entries["b"].fired[0]) < TICK / 2  # one bucket
    assert len(wheel) == 0
    assert all(e.expiry_key == -1 for e in entries.values())


async def test_cancelled_entry_never_fires_rescheduled_one_fires_at_its_new_time() -> None:
    loop = asyncio.get_running_loop()
    wheel = ExpiryWheel(TICK)
    done = asyncio.Event()
    cancelled, moved, alone = Entry("cancelled"), Entry("moved"), Entry("alone")
    sentinel = Entry("sentinel", _signal(done))
    start = loop.time()
    wheel.schedule(cancelled, 0.05)
    wheel.schedule(alone, 0.05)  # shares the bucket with ``cancelled``
    wheel.schedule(moved, 0.05)
    wheel.schedule(moved, 0.2)  # replaces the first deadline
    wheel.schedule(sentinel, 0.3)
    wheel.cancel(cancelled)
    wheel.cancel(cancelled)  # idempotent
    assert len(wheel) == 3
    await asyncio.wait_for(done.wait(), 2000 * MS)
    assert cancelled.fired == []
    assert len(alone.fired) == 1
    (fired,) = moved.fired
    assert fired >= start + 0.2 - TICK / 50
    assert len(wheel) == 0


async def test_an_entry_cancelled_or_moved_by_an_earlier_callback_does_not_fire() -> None:
    wheel = ExpiryWheel(TICK)
    done = asyncio.Event()
    later = Entry("later", _signal(done))

    def cancel_the_other(entry: Entry) -> None:
        other = second if entry is first else first
        wheel.cancel(other)
        wheel.schedule(later, 0.1)

    first = Entry("first", cancel_the_other)
    second = Entry("second", cancel_the_other)
    wheel.schedule(first, 0.05)
    wheel.schedule(second, 0.05)  # same bucket: whichever runs first cancels the other
    await asyncio.wait_for(done.wait(), 2000 * MS)
    assert len(first.fired) + len(second.fired) == 1
    assert len(later.fired) == 1


async def test_a_failing_callback_is_reported_and_does_not_strand_the_others() -> None:
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx))
    try:
        wheel = ExpiryWheel(TICK)
        done = asyncio.Event()

        def boom(_entry: Entry) -> None:
            raise RuntimeError("boom")

        failing, other = Entry("failing", boom), Entry("other")
        sentinel = Entry("sentinel", _signal(done))
        wheel.schedule(failing, 0.05)
        wheel.schedule(other, 0.05)
        wheel.schedule(sentinel, 0.15)
        await asyncio.wait_for(done.wait(), 2000 * MS)
    finally:
        loop.set_exception_handler(previous)
    assert len(other.fired) == 1
    assert [str(e["exception"]) for e in errors] == ["boom"]


async def test_close_drops_every_deadline() -> None:
    wheel = ExpiryWheel(TICK)
    done = asyncio.Event()
    dropped = Entry("dropped")
    wheel.schedule(dropped, 0.05)
    wheel.close()
    assert len(wheel) == 0 and dropped.expiry_key == -1
    wheel.schedule(Entry("after", _signal(done)), 0.1)  # usable again
    await asyncio.wait_for(done.wait(), 2000 * MS)
    assert dropped.fired == []


async def test_churn_does_not_pile_up_keys() -> None:
    wheel = ExpiryWheel(TICK)
    keeper = Entry("keeper")
    wheel.schedule(keeper, 3600)
    for i in range(2000):  # each connection gone before the next one arrives
        entry = Entry(str(i))
        wheel.schedule(entry, 60 + i * TICK)
        wheel.cancel(entry)
    assert len(wheel) == 1
    assert len(wheel._keys) <= 2 * 1 + 64 + 1  # compacted, not 2,001 keys
    wheel.close()
    assert keeper.expiry_key == -1


# --- sessions over real sockets ---------------------------------------------------------


async def _connect(
    server: Running, user: str, ttl: float = 3600
) -> tuple[RawClient, Session, asyncio.Task[None]]:
    """A connected client, its server-side session and the server's handler task."""
    before = set(server.ws.handler_tasks)
    client = await RawClient.open(ws_url(server))
    (task,) = set(server.ws.handler_tasks) - before
    reply = await client.connect(token(user, ttl=ttl))
    return client, server.node.registry.get(reply["connect"]["client"]), task


async def test_unrefreshed_connections_close_3005_not_before_exp_plus_grace(
    start_server: StartServer,
) -> None:
    grace = 0.3
    server = await start_server(EXPIRY_GRACE=grace)
    wheel = server.node.expiry
    clients = [await RawClient.open(ws_url(server)) for _ in range(4)]
    expiries = []
    for i, client in enumerate(clients):
        tok = token(f"u{i}", ttl=1)
        await client.connect(tok)
        expiries.append(claims(tok)["exp"])
    keeper, _, _ = await _connect(server, "keeper")  # an hour-long token: stays
    assert len(wheel) == 5  # one entry per connection, one loop timer for all

    async def closed_at(client: RawClient) -> tuple[tuple[int | None, str], float]:
        result = await client.closed(timeout=4000 * MS)
        return result, time.time()

    results = await asyncio.gather(*(closed_at(c) for c in clients))
    for (result, at), exp in zip(results, expiries, strict=True):
        assert result == (3005, "connection expired")
        assert at >= exp + grace - 0.01  # not before the grace period is over
        assert at <= exp + grace + EXPIRY_TICK + 1000 * MS
    await server.node.ops.publish("user:keeper", b"1")
    assert (await keeper.push("pub"))["pub"]["data"] == 1
    assert len(wheel) == 1


async def test_close_and_refresh_move_the_session_in_the_wheel(server: Running) -> None:
    wheel = server.node.expiry
    a, session_a, task_a = await _connect(server, "a", ttl=600)
    b, session_b, _ = await _connect(server, "b", ttl=600)
    assert len(wheel) == 2 and session_a.expiry_key >= 0
    before = session_b.expiry_key
    reply = await b.call("refresh", {"token": token("b", ttl=1800)})
    assert "refresh" in reply
    assert session_b.expiry_key > before  # later bucket
    assert session_b.expiry_key - before >= (1800 - 600 - 2) / EXPIRY_TICK
    assert len(wheel) == 2
    await a.close()
    await asyncio.wait_for(asyncio.shield(task_a), 2000 * MS)  # the server is done with it
    assert session_a.expiry_key == -1
    assert len(wheel) == 1
    await b.close()


async def test_unsubscribe_cancels_the_subscription_deadline(start_server: StartServer) -> None:
    server = await start_server(EXPIRY_GRACE=0.2)
    wheel = server.node.expiry
    client, session, _ = await _connect(server, "42")
    reply = await client.call(
        "subscribe", {"channel": "document:1", "token": sub_token("42", "document:1", ttl=1)}
    )
    assert reply["subscribe"]["expires"] is True
    assert len(wheel) == 2
    await client.call("unsubscribe", {"channel": "document:1"})
    assert "document:1" not in session.subs
    assert len(wheel) == 1
    # A later-expiring subscription: its 2501 is the first unsubscribe push to arrive.
    await client.call(
        "subscribe", {"channel": "document:2", "token": sub_token("42", "document:2", ttl=2)}
    )
    push = await client.push("unsubscribe", timeout=4000 * MS)
    assert push["channel"] == "document:2"
    assert push["unsubscribe"] == {"code": 2501, "reason": "subscription expired"}
    assert len(wheel) == 1  # the connection's deadline only


async def test_sub_refresh_moves_the_subscription_deadline(start_server: StartServer) -> None:
    server = await start_server(EXPIRY_GRACE=0.2)
    client, session, _ = await _connect(server, "42")
    await client.call(
        "subscribe", {"channel": "document:1", "token": sub_token("42", "document:1", ttl=1)}
    )
    await client.call(
        "subscribe", {"channel": "document:2", "token": sub_token("42", "document:2", ttl=2)}
    )
    timer = session.subs["document:1"].timer
    assert timer is not None
    before = timer.expiry_key
    reply = await client.call(
        "sub_refresh", {"channel": "document:1", "token": sub_token("42", "document:1", ttl=60)}
    )
    assert reply["sub_refresh"]["expires"] is True
    assert session.subs["document:1"].timer is timer and timer.expiry_key > before
    # document:2 lapses; document:1, refreshed, does not.
    push = await client.push("unsubscribe", timeout=4000 * MS)
    assert push["channel"] == "document:2"
    assert "document:1" in session.subs


@pytest.mark.usefixtures("no_collector")
async def test_subscription_deadline_leaves_no_cycle(server: Running) -> None:
    before = set(server.ws.all_connections)
    client = await RawClient.open(ws_url(server))
    (conn,) = set(server.ws.all_connections) - before
    ref: weakref.ref[WsConnection] = weakref.ref(conn)
    waiter = conn.lost_waiter()
    del conn
    await client.connect(token("42"))
    reply = await client.call(
        "subscribe", {"channel": "document:1", "token": sub_token("42", "document:1", ttl=60)}
    )
    assert reply["subscribe"]["expires"] is True
    tasks = set(server.ws.handler_tasks)
    await client.close()
    await asyncio.wait_for(asyncio.shield(waiter), 2000 * MS)
    done, _ = await asyncio.wait(tasks, timeout=2000 * MS)
    assert done == tasks
    await asyncio.sleep(0)  # one loop turn: connection_lost's done callbacks run
    assert len(server.node.expiry) == 0
    assert ref() is None, "the connection is still alive without a collection"
