"""Redis timing (issue 11, item 5): a hung Redis shows in ``/readyz`` within about half a
second; after a restart, readiness and resubscription come back within about half a
second. Private redis-server processes, frozen with SIGSTOP / thawed with SIGCONT.

Before: a hung Redis was noticed after 8 s (a ping every 5 s, then a 2 s timeout);
readiness and resubscription took 1.1-1.4 s after a restart (backoff capped at 2 s).
"""

from __future__ import annotations

import asyncio
import signal
import time

import aiohttp
import redis.asyncio as aioredis

from realtime_server.app import Running

from .conftest import StartServer, connected, ws_url
from .helpers import SCALE, RawClient, api_answer, sub_token, token
from .redis_server import RedisServer, redis_server

_MARGIN = 0.15 * SCALE  # a shared 2-core machine's scheduling noise


async def _readyz(http: aiohttp.ClientSession, server: Running) -> int:
    async with http.get(f"http://127.0.0.1:{server.port}/readyz") as response:
        return response.status


async def _until_status(http: aiohttp.ClientSession, server: Running, status: int) -> float:
    """Seconds until ``/readyz`` answers ``status`` (checked every 10 ms; bounded)."""
    start = time.monotonic()
    async with asyncio.timeout(10 * SCALE):
        while await _readyz(http, server) != status:
            await asyncio.sleep(0.01)
    return time.monotonic() - start


async def test_hung_redis_shows_in_readyz_within_half_a_second(
    start_server: StartServer,
) -> None:
    async with redis_server() as redis_proc, aiohttp.ClientSession() as http:
        server = await start_server(REDIS_URL=redis_proc.url)
        client = await connected(server, "1", channels=["document:hung"])
        assert await _readyz(http, server) == 200
        assert redis_proc.proc is not None
        reconnects = server.node.broker.reconnects  # type: ignore[attr-defined]
        # A short freeze (below REALTIME_REDIS_TIMEOUT): not ready, then ready again
        # on the same links.
        redis_proc.proc.send_signal(signal.SIGSTOP)
        try:
            noticed = await _until_status(http, server, 503)
            # Meanwhile a connect is answered 100 (temporary) at once, not after the
            # revocation check's 2 s timeout.
            attempt = await RawClient.open(ws_url(server))
            started = time.monotonic()
            reply = await attempt.connect(token("2"))
            refused_in = time.monotonic() - started
        finally:
            redis_proc.proc.send_signal(signal.SIGCONT)
        assert reply["error"]["code"] == 100 and reply["error"]["temporary"] is True
        assert refused_in <= 0.2 + _MARGIN, refused_in
        thawed = await _until_status(http, server, 200)
        print(f"\nhung redis: /readyz 503 after {noticed:.3f} s, 200 {thawed:.3f} s after SIGCONT")
        assert noticed <= 0.5 + _MARGIN
        assert thawed <= 0.3 + _MARGIN
        assert server.node.broker.reconnects == reconnects  # type: ignore[attr-defined]
        await server.node.ops.publish("document:hung", b'"after"')
        assert (await client.push("pub"))["pub"]["data"] == "after"

        # A long freeze (past the timeout): the links are rebuilt, then ready again.
        redis_proc.proc.send_signal(signal.SIGSTOP)
        try:
            noticed = await _until_status(http, server, 503)
            await asyncio.sleep(2.5)  # past REALTIME_REDIS_TIMEOUT (2 s): links dropped
        finally:
            redis_proc.proc.send_signal(signal.SIGCONT)
        thawed = await _until_status(http, server, 200)
        print(f"long freeze: 503 after {noticed:.3f} s, 200 {thawed:.3f} s after SIGCONT")
        assert noticed <= 0.5 + _MARGIN
        assert thawed <= 0.5 + _MARGIN
        await server.node.ops.publish("document:hung", b'"again"')
        assert (await client.push("pub"))["pub"]["data"] == "again"


async def _back(
    http: aiohttp.ClientSession, server: Running, url: str, names: list[str]
) -> tuple[float, float]:
    """Seconds from now until every name is subscribed again (``PUBSUB NUMSUB``), and
    until ``/readyz`` answers 200."""
    up = time.monotonic()
    admin = aioredis.Redis.from_url(url)
    resubscribed = ready = None
    try:
        async with asyncio.timeout(5 * SCALE):
            while resubscribed is None or ready is None:
                counts = dict(await admin.pubsub_numsub(*names))
                if resubscribed is None and all(counts.values()):
                    resubscribed = time.monotonic() - up
                if ready is None and await _readyz(http, server) == 200:
                    ready = time.monotonic() - up
                await asyncio.sleep(0.005)
    finally:
        await admin.aclose()
    return resubscribed, ready


async def test_restart_readiness_and_resubscription_within_half_a_second(
    start_server: StartServer,
) -> None:
    # An append-only file: the restart keeps the streams (no 3010 to get in the way).
    async with redis_server(extra=["--appendonly", "yes", "--appendfsync", "always"]) as redis_proc:
        server = await start_server(REDIS_URL=redis_proc.url)
        channels = [f"document:r{i}" for i in range(50)]
        client = await connected(server, "9")
        for channel in channels:
            reply = await client.call(
                "subscribe", {"channel": channel, "token": sub_token("9", channel)}
            )
            assert "subscribe" in reply, reply
        names = [server.node.broker.names.channel(c) for c in channels]  # type: ignore[attr-defined]
        async with aiohttp.ClientSession() as http:
            for _ in range(3):
                assert await _readyz(http, server) == 200
                await redis_proc.stop()
                await _until_status(http, server, 503)
                await asyncio.sleep(2.0)  # a restart that takes a while (a big AOF to load)
                await redis_proc.start()  # returns as soon as it answers PING
                resubscribed, ready = await _back(http, server, redis_proc.url, names)
                print(
                    f"\nredis restart: resubscribed after {resubscribed:.3f} s, ready {ready:.3f} s"
                )
                assert resubscribed <= 0.5 + _MARGIN
                assert ready <= 0.5 + _MARGIN
        await server.node.ops.publish("document:r7", b'"back"')
        assert (await client.push("pub"))["pub"]["data"] == "back"


async def test_publish_timed_out_on_a_frozen_redis_is_retried_once_by_its_key(
    start_server: StartServer,
) -> None:
    """Error 100 on a publish leaves its outcome unknown: Redis may still apply the
    command when it thaws, or not (it depends on what reached it before the link was
    dropped). Retried with its idempotency key, during the freeze and after, the
    publication reaches the subscriber exactly once either way (docs/PROTOCOL.md)."""
    async with redis_server() as redis_proc:
        server = await start_server(REDIS_URL=redis_proc.url, REDIS_TIMEOUT=0.5)
        client = await connected(server, "1", channels=["document:late"])
        params = {"channel": "document:late", "data": {"n": 1}, "idempotency_key": "sig-1"}
        assert redis_proc.proc is not None
        redis_proc.proc.send_signal(signal.SIGSTOP)
        try:
            assert (await api_answer(server, "publish", params))["error"]["code"] == 100
            assert (await api_answer(server, "publish", params))["error"]["code"] == 100
        finally:
            redis_proc.proc.send_signal(signal.SIGCONT)
        async with asyncio.timeout(10 * SCALE):
            while "result" not in (answer := await api_answer(server, "publish", params)):
                assert answer["error"]["code"] == 100  # links still being rebuilt
                await asyncio.sleep(0.05)
        assert answer["result"]["offset"] == 1  # one publication, whichever call made it
        first = await client.push("pub", timeout=5 * SCALE)
        assert first["pub"]["data"] == {"n": 1} and first["pub"]["offset"] == 1
        await server.node.ops.publish("document:late", b'"next"')
        assert (await client.push("pub"))["pub"]["data"] == "next"  # no second copy between


async def test_a_node_started_before_redis_is_ready_soon_after_redis_starts(
    start_server: StartServer,
) -> None:
    """``docker compose up``: the server before Redis. It serves as not ready, asks
    again every quarter second at most, and delivers once Redis is up."""
    redis_proc = RedisServer()
    try:
        server = await start_server(REDIS_URL=redis_proc.url)
        assert not server.node.readiness().ready
        await redis_proc.start()
        started = time.monotonic()
        async with asyncio.timeout(10 * SCALE):
            while not server.node.readiness().ready:
                await asyncio.sleep(0.01)  # the background retry: no event to await
        took = time.monotonic() - started
        assert took <= 0.5 + _MARGIN, took
        client = await connected(server, "1", channels=["document:late-redis"])
        await server.node.ops.publish("document:late-redis", b'"up"')
        assert (await client.push("pub"))["pub"]["data"] == "up"
    finally:
        await redis_proc.close()
