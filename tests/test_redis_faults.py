"""Redis trouble, on private redis-server processes: link kills, restarts, a cut network,
a slow Redis. Clients stay up, nothing unchecked gets in, missed publications are
recovered (or clients are told they cannot be)."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import redis.asyncio as aioredis

from realtime_server.app import Running
from realtime_server.auth.redis_revocation import RedisRevocationStore
from realtime_server.redis.client import RedisCommands
from realtime_server.redis.names import RedisNames

from .conftest import StartServer, connected, ws_url
from .helpers import MS, RawClient, sub_token, token
from .redis_server import TcpProxy, redis_server


async def readyz(server: Running) -> int:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{server.port}/readyz") as resp,
    ):
        return resp.status


async def wait_until(predicate: object, within: float = 5000 * MS) -> None:
    """Poll a condition that has no event to await (bounded)."""
    async with asyncio.timeout(within):
        while not predicate():  # type: ignore[operator]
            await asyncio.sleep(0.01)


async def test_pubsub_link_killed_under_load_loses_nothing(start_server: StartServer) -> None:
    async with redis_server() as redis_proc:
        server = await start_server(REDIS_URL=redis_proc.url, REDIS_TIMEOUT=1)
        clients = [await connected(server, f"u{i}", channels=["document:load"]) for i in range(5)]
        admin = aioredis.Redis.from_url(redis_proc.url)
        try:
            for n in range(1, 61):
                await server.node.ops.publish("document:load", b"%d" % n)
                if n == 20:
                    killed = await admin.client_kill_filter(_type="pubsub")
                    assert killed >= 1
            for client in clients:
                offsets = [(await client.push("pub"))["pub"]["offset"] for _ in range(60)]
                assert offsets == list(range(1, 61))
            assert server.node.broker.reconnects >= 1  # type: ignore[attr-defined]
            await wait_until(lambda: server.node.broker.ready)
        finally:
            await admin.aclose()


async def test_redis_restart_readiness_temporary_errors_and_recovery(
    start_server: StartServer,
) -> None:
    async with redis_server() as redis_proc:
        server = await start_server(REDIS_URL=redis_proc.url, REDIS_TIMEOUT=0.5)
        user_sub = await connected(server, "42")
        doc_sub = await connected(server, "43")
        await doc_sub.call(
            "subscribe", {"channel": "document:1", "token": sub_token("43", "document:1")}
        )
        await server.node.ops.publish("user:42", b"1")
        await user_sub.push("pub")
        await server.node.ops.publish("document:1", b"1")
        await doc_sub.push("pub")
        assert await readyz(server) == 200

        await redis_proc.stop()
        await wait_until(lambda: not server.node.broker.ready)
        assert await readyz(server) == 503
        attempt = await RawClient.open(ws_url(server))
        reply = await attempt.connect(token("44"))
        assert reply["error"] == {
            "code": 100,
            "message": "internal server error",
            "temporary": True,
        }

        await redis_proc.start()
        restarted = time.monotonic()
        await wait_until(lambda: server.node.broker.ready, within=5000 * MS)
        assert time.monotonic() - restarted < 2.0
        assert await readyz(server) == 200
        # Redis lost its streams: clients are told to recover (and will learn they
        # cannot): the server-side user channel closes with 3010; a client-side
        # subscription may get its unsubscribe push 2500 before that.
        assert (await user_sub.closed())[0] == 3010
        assert (await doc_sub.closed())[0] == 3010
        pushes = [
            m["push"]["unsubscribe"] for m in doc_sub.skipped if "unsubscribe" in m.get("push", {})
        ]
        assert all(p["code"] == 2500 for p in pushes)
        # and the node works again
        fresh = await connected(server, "45")
        await server.node.ops.publish("user:45", b"2")
        assert (await fresh.push("pub"))["pub"]["data"] == 2


async def test_revocation_during_link_outage_applies_when_back(start_server: StartServer) -> None:
    async with redis_server() as redis_proc:
        proxy = TcpProxy(redis_proc.port)
        await proxy.start()
        try:
            server = await start_server(REDIS_URL=proxy.url, REDIS_TIMEOUT=0.5)
            victim = await connected(server, "42", jti="while-down")
            bystander = await connected(server, "7")
            proxy.cut()
            await wait_until(lambda: not server.node.broker.ready)
            commands = RedisCommands(redis_proc.url, RedisNames("rt:"), 1.0)
            await RedisRevocationStore(commands).revoke_token("while-down", time.time() + 60)
            await commands.close()
            assert victim.ws.protocol.close_rcvd is None  # the node could not hear it
            proxy.restore()
            assert (await victim.closed(timeout=5000 * MS))[0] == 4501
            await server.node.ops.publish("user:7", b"1")
            assert (await bystander.push("pub"))["pub"]["data"] == 1
        finally:
            await proxy.close()


async def test_slow_redis_never_stalls_other_clients(start_server: StartServer) -> None:
    async with redis_server() as redis_proc:
        server = await start_server(REDIS_URL=redis_proc.url, REDIS_TIMEOUT=0.3)
        busy = await connected(server, "1")
        admin = aioredis.Redis.from_url(redis_proc.url, socket_timeout=5)
        try:
            sleeper = asyncio.ensure_future(admin.execute_command("DEBUG", "SLEEP", "1"))
            await asyncio.sleep(0.05)  # let DEBUG SLEEP reach Redis first
            newcomer = await RawClient.open(ws_url(server))
            started = time.monotonic()
            (ping_id,) = await busy.send({"ping": {}})
            assert await busy.reply(ping_id) == {"id": ping_id, "ping": {}}
            assert time.monotonic() - started < 0.2
            reply = await newcomer.connect(token("2"))
            assert reply["error"]["code"] == 100 and reply["error"]["temporary"] is True
            assert time.monotonic() - started < 0.9
            await sleeper
        finally:
            await admin.aclose()
