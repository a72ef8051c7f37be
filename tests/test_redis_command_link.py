"""The shared command connection of a single Redis (redis/command_link.py), on private
redis-servers: concurrent callers share one connection and each gets its own reply; a
hung Redis fails the commands in flight within the timeout and the link comes back; a
killed connection is redialed; AUTH and SELECT as the URL says, never echoing the
password."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from realtime_server.auth.redis_revocation import RedisRevocationStore
from realtime_server.errors import BackendUnavailable
from realtime_server.redis.client import RedisCommands
from realtime_server.redis.command_link import CommandLink
from realtime_server.redis.link import LinkOptions
from realtime_server.redis.names import RedisNames

from .helpers import SCALE
from .redis_server import RedisServer, redis_server

PASSWORD = "command-link-password-0123"


@pytest.fixture
async def server() -> AsyncIterator[RedisServer]:
    async with redis_server() as proc:
        yield proc


async def _clients(admin: aioredis.Redis) -> int:
    return int((await admin.info("clients"))["connected_clients"])


async def test_concurrent_callers_share_one_connection_in_order(server: RedisServer) -> None:
    admin = aioredis.Redis.from_url(server.url)
    commands = RedisCommands(server.url, RedisNames("t:"), timeout=2.0)
    try:
        await admin.mset({f"k{i}": f"v{i}" for i in range(200)})
        await commands.call("PING")  # detected (redis-py's connection), link dialed
        connections = await _clients(admin)
        values = await asyncio.gather(*(commands.call("GET", f"k{i}") for i in range(200)))
        assert values == [f"v{i}".encode() for i in range(200)]
        many = await asyncio.gather(*(commands.mget([f"k{i}", "none"]) for i in range(50)))
        assert many == [[f"v{i}".encode(), None] for i in range(50)]
        assert await _clients(admin) == connections  # not one connection per caller
        with pytest.raises(BackendUnavailable, match="refused the command: WRONGTYPE"):
            await commands.call("HGET", "k1", "field")
        assert await commands.call("GET", "k1") == b"v1"  # an error reply breaks nothing
    finally:
        await commands.close()
        await admin.aclose()


async def test_a_hung_redis_fails_what_is_in_flight_then_the_link_recovers(
    server: RedisServer,
) -> None:
    admin = aioredis.Redis.from_url(server.url, socket_timeout=5)
    commands = RedisCommands(server.url, RedisNames("t:"), timeout=0.2)
    try:
        await commands.call("SET", "k", "1")
        sleeper = asyncio.ensure_future(admin.execute_command("DEBUG", "SLEEP", "0.6"))
        await asyncio.sleep(0.05)  # let DEBUG SLEEP reach Redis first
        started = time.monotonic()
        failed = await asyncio.gather(
            *(commands.call("GET", "k") for _ in range(5)), return_exceptions=True
        )
        assert all(isinstance(f, BackendUnavailable) for f in failed), failed
        assert "no answer within 0.2s" in str(failed[0])
        assert time.monotonic() - started < 0.2 + 0.15 * SCALE
        await sleeper
        assert await commands.call("GET", "k") == b"1"
    finally:
        await commands.close()
        await admin.aclose()


async def test_a_killed_connection_is_redialed(server: RedisServer) -> None:
    admin = aioredis.Redis.from_url(server.url)
    commands = RedisCommands(server.url, RedisNames("t:"), timeout=1.0)
    try:
        await commands.call("SET", "k", "1")
        assert await admin.client_kill_filter(_type="normal", skipme=True) >= 1
        # The command in flight when the kill lands may fail; the next one redials.
        with contextlib.suppress(BackendUnavailable):
            await commands.call("GET", "k")
        assert await commands.call("GET", "k") == b"1"
    finally:
        await commands.close()
        await admin.aclose()


async def test_user_password_and_database_from_the_url(server: RedisServer) -> None:
    admin = aioredis.Redis.from_url(server.url)
    await admin.execute_command("ACL", "SETUSER", "bob", "on", f">{PASSWORD}", "~*", "&*", "+@all")
    base = f"127.0.0.1:{server.port}"
    commands = RedisCommands(f"redis://bob:{PASSWORD}@{base}/3", RedisNames("t:"), 1.0)
    wrong = CommandLink(LinkOptions.from_url(f"redis://bob:wrong-password-9876@{base}/3"), 1.0)
    try:
        await commands.call("SET", "in-three", "yes")
        assert await admin.get("in-three") is None
        assert await admin.execute_command("SELECT", "3")
        assert await admin.get("in-three") == b"yes"
        with pytest.raises(BackendUnavailable) as refused:
            await wrong.call("GET", "in-three")
        assert str(refused.value) == "redis AUTH refused: WRONGPASS"  # never the password
    finally:
        await wrong.close()
        await commands.close()
        await admin.aclose()


async def test_revocation_checking_queued_now_answers_like_is_revoked(server: RedisServer) -> None:
    """``checking`` sends its MGET at once once the link is up (before: asked when
    awaited); both answer as ``is_revoked``, and a lost Redis as BackendUnavailable."""
    commands = RedisCommands(server.url, RedisNames("t:"), timeout=0.5)
    store = RedisRevocationStore(commands)
    try:
        assert commands.mget_soon(["k"]) is None  # nothing dialed yet
        assert await store.checking("j1", "42", 100.0) is False  # asked when awaited
        await store.revoke_token("j1", time.time() + 60)
        await store.revoke_user("7", 1000.0)
        cases = [("j1", "42", 100.0), ("j2", "42", 100.0), (None, "7", 999.0), ("j3", "7", 1001.0)]
        queued = [store.checking(*case) for case in cases]  # all MGETs queued now
        probe = commands.mget_soon(["k"])
        assert probe is not None and await probe == [None]
        expected = [await store.is_revoked(*case) for case in cases]
        assert [await q for q in queued] == expected == [True, False, True, False]
        await server.stop()
        with pytest.raises(BackendUnavailable):
            await store.checking("j1", "42", 100.0)
    finally:
        await commands.close()
