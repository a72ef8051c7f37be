"""A closed connection is freed by reference counting, without the garbage collector.

A connection left in reference cycles is freed only by a full collection, which took
0.35 s at 10,000 connections (websockets' own asyncio connections were; ours are not). These tests
run with the collector disabled and check, through weak references, that the server's
connection objects are gone once their connections are.
"""

from __future__ import annotations

import asyncio
import gc
import weakref
from typing import Any

import pytest

from realtime_server import codes
from realtime_server.app import Running
from realtime_server.gcpolicy import THRESHOLDS, tune
from realtime_server.wsconn import WsConnection

from .conftest import ws_url
from .helpers import MS, RawClient, token


async def _open(server: Running, user: str) -> tuple[RawClient, weakref.ref[WsConnection]]:
    before = set(server.ws.all_connections)
    client = await RawClient.open(ws_url(server))
    reply = await client.reply((await client.send({"connect": {"token": token(user)}}))[0])
    assert "connect" in reply
    (conn,) = set(server.ws.all_connections) - before
    return client, weakref.ref(conn)


async def _lost(ref: weakref.ref[WsConnection]) -> None:
    """Wait until the server saw the connection go (and its handler returned)."""
    conn = ref()
    if conn is None:
        return
    waiter = conn.lost_waiter()
    del conn
    await asyncio.wait_for(asyncio.shield(waiter), 2000 * MS)


async def _handlers_done(server: Running) -> None:
    tasks = set(server.ws.handler_tasks)
    if tasks:
        done, _ = await asyncio.wait(tasks, timeout=2000 * MS)
        assert done == tasks
    await asyncio.sleep(0)  # one loop turn: connection_lost's done callbacks run


@pytest.mark.usefixtures("no_collector")
async def test_closed_connections_leave_no_cycles(server: Running) -> None:
    refs: list[weakref.ref[Any]] = []
    # The client closes cleanly.
    client, ref = await _open(server, "clean")
    refs.append(ref)
    await client.ws.close()
    await _lost(ref)
    # The client vanishes (TCP reset, no close frame).
    client, ref = await _open(server, "abort")
    refs.append(ref)
    client.ws.transport.abort()
    await _lost(ref)
    # The server closes it (API disconnect of the user: close code 3000-range).
    client, ref = await _open(server, "kicked")
    refs.append(ref)
    # (a Session holds its connection: a Session left in a cycle would keep it alive)
    session = next(iter(server.node.registry))
    session.close(codes.CLOSE_SHUTDOWN)
    del session
    await _lost(ref)
    await client.ws.wait_closed()
    await _handlers_done(server)
    alive = [r() for r in refs if r() is not None]
    assert not alive, f"still alive without a collection: {[type(o).__name__ for o in alive]}"


@pytest.mark.usefixtures("no_collector")
async def test_refused_token_leaves_no_cycles(server: Running) -> None:
    before = set(server.ws.all_connections)
    client = await RawClient.open(ws_url(server))
    (conn,) = set(server.ws.all_connections) - before
    ref = weakref.ref(conn)
    del conn
    await client.send({"connect": {"token": "not-a-token"}})
    await client.ws.wait_closed()
    assert client.ws.close_code == 3500
    await _lost(ref)
    await _handlers_done(server)
    assert ref() is None


def test_tune_sets_the_thresholds() -> None:
    saved = gc.get_threshold()
    try:
        tune()
        assert gc.get_threshold() == THRESHOLDS
    finally:
        gc.set_threshold(*saved)


async def test_handshake_leftovers_are_released(server: Running) -> None:
    """What the handshake leaves for an idle connection's life: no headers, no response,
    no queue, no waiter; the connection keeps slots only."""
    client, ref = await _open(server, "idle")
    conn = ref()
    assert conn is not None and conn.request is not None
    assert not list(conn.request.headers.raw_items())
    assert not hasattr(conn, "__dict__")
    assert conn._messages is None or not conn._messages
    assert conn._waiter is not None  # the handler waits for the next message
    assert conn._lost is None and conn._fragments is None
    # and the connection still works both ways
    await server.node.ops.publish("user:idle", b'{"still":"works"}')
    assert (await client.push("pub"))["pub"]["data"] == {"still": "works"}
    await client.close()
