"""The core under adversity: one reply per command, real drops only, join/leave
storms bounded, 3010 closes spread out, and the user named in revocation rows."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson
import pytest

from realtime_server.app import Running
from realtime_server.channels.engine import Membership
from realtime_server.events import EventType
from realtime_server.protocol import Command

from .conftest import StartServer, connected
from .helpers import MS, RawClient, recorded, sub_token, token
from .redis_server import redis_server
from .test_subscriptions import CHANNEL, build, messages, subscribe
from .test_subscriptions import connected as unit_connected


async def test_one_reply_per_command_when_work_after_the_reply_fails() -> None:
    """The join after a subscribe reply fails with an unexpected error: the client got
    its reply, and no second (error) reply with the same id."""
    node, _ = build()

    async def broken_joined(joins: list[Membership], presence_ttl: float) -> None:
        raise RuntimeError("presence store exploded")

    node.engine.joined = broken_joined  # type: ignore[method-assign]
    s, conn = await unit_connected(node, "a")
    await subscribe(s)
    replies = [m for m in messages(node, conn) if m.get("id") == 2]
    assert len(replies) == 1 and "subscribe" in replies[0], replies
    assert CHANNEL in s.subs


async def test_one_reply_per_command_at_the_session_level() -> None:
    """Whatever a handler raises after answering, the session does not answer again."""
    node, _ = build()
    s, conn = await unit_connected(node, "a")

    async def answers_then_fails(session: Any, cmd: Command) -> None:
        session.reply(cmd, {})
        raise KeyError("bug after the reply")

    node.commands._handlers["ping"] = answers_then_fails
    await s.handle(Command(7, "ping", {}))
    assert [m for m in messages(node, conn) if m.get("id") == 7] == [{"id": 7, "ping": {}}]


async def test_writes_to_a_closing_connection_are_not_drops() -> None:
    """A subscriber whose WebSocket is already closing (the client sent its close
    frame) is skipped: not delivered, and not counted as a drop either."""
    node, _ = build()
    s, conn = await unit_connected(node, "a")
    await subscribe(s)
    delivered = node.metrics.deliveries_total
    conn.writable = False  # as WsConnection says once the client's close frame is read
    await node.ops.publish(CHANNEL, b"1")
    assert node.metrics.drops_total == 0
    assert node.metrics.deliveries_total == delivered


async def test_join_leave_pushes_stop_above_the_namespace_bound(
    start_server: StartServer,
) -> None:
    limit = 3
    server = await start_server(
        NAMESPACES=orjson.dumps({"document": {"join_leave_limit": limit}}).decode()
    )
    first = await connected(server, "u0")
    await first.call("subscribe", {"channel": CHANNEL, "token": sub_token("u0", CHANNEL)})
    others = []
    for i in range(1, 8):
        client = await connected(server, f"u{i}")
        await client.call(
            "subscribe",
            {"channel": CHANNEL, "token": sub_token(f"u{i}", CHANNEL), "join_leave": True},
        )
        others.append(client)
    # The first three subscribers were announced (1 to 3 within the bound); from the
    # 4th on, nobody is told: the channel has more than ``limit`` subscribers.
    await server.node.ops.publish(CHANNEL, b'"marker"')
    joins = []
    while True:
        message = await first.recv()
        push = message.get("push", {})
        if "pub" in push:
            break
        if "join" in push:
            joins.append(push["join"]["info"]["user"])
    assert joins == ["u0", "u1", "u2"]
    # presence still answers with everyone
    stats = await first.call("presence_stats", {"channel": CHANNEL})
    assert stats["presence_stats"]["num_clients"] == 8


async def test_lost_publications_close_server_side_subscribers_spread_out(
    start_server: StartServer,
) -> None:
    """Redis comes back without its data: the connections with a server-side
    subscription are closed with 3010, not all in the same instant."""
    async with redis_server() as redis_proc:
        server = await start_server(REDIS_URL=redis_proc.url, REDIS_TIMEOUT=0.5)
        clients = [await connected(server, f"u{i}") for i in range(40)]
        for i in range(40):
            await server.node.ops.publish(f"user:u{i}", b"1")
        for client in clients:
            await client.push("pub")
        await redis_proc.stop()
        await redis_proc.start()
        closes = await asyncio.gather(*(_closed_at(c) for c in clients))
        assert all(code == 3010 for code, _ in closes)
        times = sorted(at for _, at in closes)
        assert times[-1] - times[0] > 0.15  # spread over 0.5 s for 40 connections


async def _closed_at(client: RawClient) -> tuple[int | None, float]:
    code, _ = await client.closed(timeout=10000 * MS)
    return code, time.monotonic()


async def test_revocation_rows_name_the_user(server: Running) -> None:
    """Revoked by jti: the token_revoked row and the refused reconnect's row carry the
    user (so ``audit user`` shows them)."""
    seen = recorded(server)
    await connected(server, "42", jti="to-revoke")
    await server.node.ops.revoke_token("to-revoke", time.time() + 60)
    retry = await RawClient.open(f"ws://127.0.0.1:{server.port}/connection/websocket")
    await retry.send({"connect": {"token": token("42", jti="to-revoke")}})
    assert (await retry.closed())[0] == 4501
    revoked = [e for e in seen if e.type is EventType.TOKEN_REVOKED]
    rejected = [e for e in seen if e.type is EventType.CONNECT_REJECTED]
    assert [e.user for e in revoked] == ["42"]
    assert [(e.user, e.code) for e in rejected] == [("42", 4501)]
    # an expired token's refusal (109) names its user too: its signature verified
    late = await RawClient.open(f"ws://127.0.0.1:{server.port}/connection/websocket")
    reply = await late.connect(token("43", exp=int(time.time()) - 60, iat=int(time.time()) - 120))
    assert reply["error"]["code"] == 109
    rejected = [e for e in seen if e.type is EventType.CONNECT_REJECTED]
    assert (rejected[-1].user, rejected[-1].code) == ("43", 109)


async def test_a_refused_token_says_why_in_the_log_and_the_audit_not_to_the_client(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Setting up an identity provider: a token from the wrong issuer is closed with a
    bare 3500, while the log (at most a line per 10 s) and the audit row say which
    setting it failed."""
    server = await start_server(JWT_ISSUER="https://idp.example/")
    seen = recorded(server)
    why = "wrong issuer (REALTIME_JWT_ISSUER is 'https://idp.example/')"
    with caplog.at_level(logging.INFO, logger="realtime_server.session"):
        for _ in range(3):
            client = await RawClient.open(f"ws://127.0.0.1:{server.port}/connection/websocket")
            await client.send({"connect": {"token": token("42", iss="https://idp.example")}})
            assert await client.closed() == (3500, "invalid token")
    lines = [r.getMessage() for r in caplog.records if r.name == "realtime_server.session"]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"connect refused: 3500 invalid token: {why}, client 127.0.0.1:")
    rejected = [e for e in seen if e.type is EventType.CONNECT_REJECTED]
    assert len(rejected) == 3
    assert all(e.details and e.details["reason"] == f"invalid token: {why}" for e in rejected)
