"""Revocations outlive Redis losing its data (a restart without persistence, a flush).

Revocations are keys in Redis; a Redis that comes back empty forgets them. Every node
keeps the live revocations in memory too (read from Redis at start, then from the
announcements) and a marker key tells a complete list from a lost one: while the marker
is missing, revocation checks fail as temporary (error 100, never an unchecked token)
and the node writes what it remembers back. Private redis-server processes."""

from __future__ import annotations

import asyncio
import time

import redis.asyncio as aioredis
from websockets.exceptions import ConnectionClosed

from realtime_server.app import Running, running
from realtime_server.auth.redis_revocation import RedisRevocationStore
from realtime_server.redis.client import RedisCommands
from realtime_server.redis.names import RedisNames

from .conftest import StartServer, connected, ws_url
from .helpers import MS, RawClient, make_settings, token
from .redis_server import redis_server


async def refused_as_revoked(server: Running, user: str, **claims: object) -> bool:
    """Connect with a token; True when refused as revoked (4501), False when accepted.
    A temporary refusal (error 100: the list is being restored) is retried, as the SDKs
    do, for at most 5 s."""
    async with asyncio.timeout(5000 * MS):
        while True:
            client = await RawClient.open(ws_url(server))
            try:
                reply = await client.connect(token(user, **claims))
            except ConnectionClosed as closed:
                assert closed.rcvd is not None
                assert (closed.rcvd.code, closed.rcvd.reason) == (4501, "token revoked")
                return True
            await client.close()
            if "connect" in reply:
                return False
            assert reply["error"]["code"] == 100 and reply["error"]["temporary"], reply
            await asyncio.sleep(20 * MS)  # the SDKs' backoff, shortened


async def wait_ready(server: Running) -> None:
    async with asyncio.timeout(5000 * MS):
        while not server.node.broker.ready:
            await asyncio.sleep(10 * MS)  # readiness has no event to await


async def test_revocations_survive_a_redis_restart_without_its_data(
    start_server: StartServer,
) -> None:
    async with redis_server() as redis_proc:
        server = await start_server(REDIS_URL=redis_proc.url, REDIS_TIMEOUT=0.5)
        issued = time.time() - 10
        victim = await connected(server, "42", jti="stolen-1")
        await server.node.revocations.revoke_token("stolen-1", time.time() + 600)
        assert (await victim.closed())[0] == 4501
        await server.node.revocations.revoke_user("43", time.time() - 5)
        # A revocation by another process (the CLI, the outbox) reaches the node too.
        commands = RedisCommands(redis_proc.url, RedisNames("rt:"), 1.0)
        await RedisRevocationStore(commands).revoke_token("stolen-2", time.time() + 600)
        await commands.close()
        assert await refused_as_revoked(server, "44", jti="stolen-2")

        await redis_proc.restart()  # no persistence: every key is gone
        await wait_ready(server)
        assert await refused_as_revoked(server, "42", jti="stolen-1")
        assert await refused_as_revoked(server, "43", iat=int(issued))
        assert await refused_as_revoked(server, "44", jti="stolen-2")
        assert not await refused_as_revoked(server, "42", jti="fresh")
        assert not await refused_as_revoked(server, "43")  # issued after the cutoff


async def test_a_flushed_redis_is_refilled_before_any_token_is_let_in(
    start_server: StartServer,
) -> None:
    """FLUSHALL keeps the links up: no reconnect tells the nodes; the marker does. The
    first node to look writes the list back; the other adds what it remembers."""
    async with redis_server() as redis_proc:
        server = await start_server(REDIS_URL=redis_proc.url)
        other = await start_server(REDIS_URL=redis_proc.url)
        await other.node.revocations.started()
        await server.node.revocations.revoke_token("stolen-1", time.time() + 600)
        admin = aioredis.Redis.from_url(redis_proc.url)
        try:
            marker = await admin.get("rt:revocations")
            await admin.flushall()
            assert await refused_as_revoked(server, "42", jti="stolen-1")
            assert await admin.exists("rt:revoked:jti:stolen-1") == 1
            assert await admin.get("rt:revocations") not in (None, marker)
            assert await refused_as_revoked(other, "42", jti="stolen-1")
            assert not await refused_as_revoked(other, "42")
        finally:
            await admin.aclose()


async def test_a_node_started_later_remembers_earlier_revocations(
    start_server: StartServer,
) -> None:
    async with redis_server() as redis_proc:
        settings = make_settings(REDIS_URL=redis_proc.url, REDIS_TIMEOUT=0.5)
        async with running(settings) as first:
            await first.node.revocations.revoke_token("stolen-1", time.time() + 600)
            await first.node.revocations.revoke_user("43", time.time() - 5)
            second = await start_server(REDIS_URL=redis_proc.url, REDIS_TIMEOUT=0.5)
            await second.node.revocations.started()  # read the list from Redis
        await redis_proc.restart()
        await wait_ready(second)
        assert await refused_as_revoked(second, "42", jti="stolen-1")
        assert await refused_as_revoked(second, "43", iat=int(time.time() - 10))
        assert not await refused_as_revoked(second, "45")
