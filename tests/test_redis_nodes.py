"""The Redis engine with real Redis: several nodes behave as one."""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import redis.asyncio as aioredis

from realtime_server.app import Running
from realtime_server.config import Settings
from realtime_server.publisher import Publisher

from .conftest import StartServer, connected, ws_url
from .helpers import MS, RawClient, claims, make_settings, sub_token, token
from .procs import cli_env, run_cli, server_process


async def two_nodes(start_server: StartServer, redis_url: str, prefix: str) -> list[Running]:
    return [await start_server(REDIS_URL=redis_url, REDIS_PREFIX=prefix) for _ in range(2)]


async def test_publication_reaches_every_node(
    start_server: StartServer, redis_url: str, redis_prefix: str
) -> None:
    a, b = await two_nodes(start_server, redis_url, redis_prefix)
    on_a = await connected(a, "1", channels=["document:7"])
    on_b = await connected(b, "2", channels=["document:7"])
    position = await a.node.ops.publish("document:7", b'{"status":"signed"}')
    assert position is not None and position.offset == 1
    for client in (on_a, on_b):
        assert (await client.push("pub"))["pub"] == {"data": {"status": "signed"}, "offset": 1}
    second = await b.node.ops.publish("document:7", b'{"status":"completed"}')
    assert second is not None and second.offset == 2 and second.epoch == position.epoch
    for client in (on_a, on_b):
        assert (await client.push("pub"))["pub"]["offset"] == 2


async def test_revocation_closes_on_every_node(
    start_server: StartServer, redis_url: str, redis_prefix: str
) -> None:
    a, b = await two_nodes(start_server, redis_url, redis_prefix)
    on_a = await connected(a, "42", jti="jti-a")
    on_b = await connected(b, "42", jti="jti-b", iat=int(time.time()) - 60)
    bystander = await connected(b, "7")
    await b.node.revocations.revoke_token("jti-a", time.time() + 60)
    assert (await on_a.closed())[0] == 4501
    await a.node.revocations.revoke_user("42", time.time() - 1)
    assert (await on_b.closed())[0] == 4501
    # a revoked token cannot connect on any node
    again = await RawClient.open(ws_url(b))
    await again.send({"connect": {"token": token("42", jti="jti-a", iat=int(time.time()) + 1)}})
    assert (await again.closed())[0] == 4501
    await a.node.ops.publish("user:7", b"1")
    assert (await bystander.push("pub"))["pub"]["data"] == 1


async def test_presence_join_leave_and_disconnect_across_nodes(
    start_server: StartServer, redis_url: str, redis_prefix: str
) -> None:
    a, b = await two_nodes(start_server, redis_url, redis_prefix)
    alice = await connected(a, "alice")
    await alice.call(
        "subscribe", {"channel": "document:1", "token": sub_token("alice", "document:1")}
    )
    bob = await connected(b, "bob")
    await bob.call("subscribe", {"channel": "document:1", "token": sub_token("bob", "document:1")})
    while (await alice.push("join"))["join"]["info"]["user"] != "bob":
        pass
    stats = await a.node.ops.presence_stats("document:1")
    assert (stats.num_clients, stats.num_users) == (2, 2)
    await a.node.ops.disconnect_user("bob", 4100, "bye")
    assert await bob.closed() == (4100, "bye")
    assert (await alice.push("leave"))["leave"]["info"]["user"] == "bob"


async def test_plain_redis_publish_is_delivered(
    start_server: StartServer, redis_url: str, redis_prefix: str
) -> None:
    (server,) = [await start_server(REDIS_URL=redis_url, REDIS_PREFIX=redis_prefix)]
    client = await connected(server, "42", channels=["document:9"])
    redis = aioredis.Redis.from_url(redis_url)
    try:
        receivers = await redis.publish(redis_prefix + "{document:9}", b'{"status":"viewed"}')
        assert receivers == 1
        push = await client.push("pub")
        assert push == {"channel": "document:9", "pub": {"data": {"status": "viewed"}}}
        await redis.publish(redis_prefix + "{document:9}", b"not json")  # dropped, logged
        await redis.publish(redis_prefix + "{document:9}", b"[1]")
        assert (await client.push("pub"))["pub"]["data"] == [1]
    finally:
        await redis.aclose()


async def test_no_leftover_redis_subscriptions(
    start_server: StartServer, redis_url: str, redis_prefix: str
) -> None:
    server = await start_server(REDIS_URL=redis_url, REDIS_PREFIX=redis_prefix)
    clients = [await connected(server, f"u{i}", channels=["document:x"]) for i in range(5)]
    redis = aioredis.Redis.from_url(redis_url)
    channel = redis_prefix + "{document:x}"
    try:
        assert (await redis.pubsub_numsub(channel))[0][1] == 1  # one per node, not per client
        await asyncio.gather(*(c.close() for c in clients))
        async with asyncio.timeout(5000 * MS):
            while server.node.registry or server.node.hub.has_local("document:x"):
                await asyncio.sleep(0.01)  # cleanup runs in the handlers' finally blocks
        async with asyncio.timeout(5000 * MS):
            while (await redis.pubsub_numsub(channel))[0][1] != 0:
                await asyncio.sleep(0.01)
    finally:
        await redis.aclose()


async def test_concurrent_subscribe_unsubscribe_leaves_consistent_state(
    start_server: StartServer, redis_url: str, redis_prefix: str
) -> None:
    server = await start_server(REDIS_URL=redis_url, REDIS_PREFIX=redis_prefix)
    clients = [await connected(server, f"u{i}") for i in range(10)]
    tok = {f"u{i}": sub_token(f"u{i}", "document:race") for i in range(10)}

    async def churn(i: int, client: RawClient) -> None:
        for _ in range(5):
            await client.call("subscribe", {"channel": "document:race", "token": tok[f"u{i}"]})
            await client.call("unsubscribe", {"channel": "document:race"})

    await asyncio.gather(*(churn(i, c) for i, c in enumerate(clients)))
    redis = aioredis.Redis.from_url(redis_url)
    try:
        assert not server.node.hub.has_local("document:race")
        assert (await redis.pubsub_numsub(redis_prefix + "{document:race}"))[0][1] == 0
    finally:
        await redis.aclose()


async def test_python_publisher_and_cli_through_redis(
    start_server: StartServer, redis_url: str, redis_prefix: str
) -> None:
    server = await start_server(REDIS_URL=redis_url, REDIS_PREFIX=redis_prefix)
    client = await connected(server, "42", channels=["document:5"], jti="cli-redis")
    settings = make_settings(REDIS_URL=redis_url, REDIS_PREFIX=redis_prefix, API_KEY=None)
    async with Publisher(settings) as publisher:
        position = await publisher.publish("document:5", {"status": "signed"})
    assert position is not None and position.offset == 1
    assert (await client.push("pub"))["pub"]["offset"] == 1
    env = cli_env(REDIS_URL=redis_url, REDIS_PREFIX=redis_prefix, API_KEY=None)
    code, out, err = await run_cli("publish", "document:5", '{"status":"completed"}', env=env)
    assert code == 0, err
    assert '"offset":2' in out
    assert (await client.push("pub"))["pub"]["data"] == {"status": "completed"}
    code, _, err = await run_cli("revoke", "--jti", "cli-redis", env=env)
    assert code == 0, err
    assert (await client.closed())[0] == 4501
    code, out, err = await run_cli("check", env=env)
    assert code == 0 and "redis" in out


async def test_recovery_survives_node_restart(
    start_server: StartServer, redis_url: str, redis_prefix: str
) -> None:
    first = await start_server(REDIS_URL=redis_url, REDIS_PREFIX=redis_prefix)
    client = await connected(first, "42", channels=["document:r"])
    await first.node.ops.publish("document:r", b"1")
    pub = await client.push("pub")
    epoch = (await first.node.broker.history("document:r")).top.epoch
    await client.close()
    second = await start_server(REDIS_URL=redis_url, REDIS_PREFIX=redis_prefix)
    await second.node.ops.publish("document:r", b"2")
    again = await RawClient.open(ws_url(second))
    reply = await again.connect(
        token("42", channels=["document:r"]),
        subs={"document:r": {"recover": True, "offset": pub["pub"]["offset"], "epoch": epoch}},
    )
    sub = reply["connect"]["subs"]["document:r"]
    assert sub["recovered"] is True and [p["data"] for p in sub["publications"]] == [2]


def test_settings_choose_redis(redis_url: str) -> None:
    assert Settings.from_env(env={"REALTIME_REDIS_URL": redis_url}).redis_url == redis_url


async def test_crashed_node_clients_leave_presence(
    start_server: StartServer, redis_url: str, redis_prefix: str
) -> None:
    observer = await start_server(REDIS_URL=redis_url, REDIS_PREFIX=redis_prefix)
    async with server_process(
        REDIS_URL=redis_url, REDIS_PREFIX=redis_prefix, PRESENCE_TTL="2"
    ) as doomed:
        client = await RawClient.open(doomed.ws_url)
        await client.connect(token("ghost"))
        await client.call(
            "subscribe", {"channel": "document:c", "token": sub_token("ghost", "document:c")}
        )
        # presence is added after the reply, in one step with the join publication
        assert (await client.push("join"))["join"]["info"]["user"] == "ghost"
        assert (await observer.node.ops.presence_stats("document:c")).num_clients == 1
        await doomed.stop(signal.SIGKILL)  # no cleanup: a crash
    started = time.monotonic()
    async with asyncio.timeout(6000 * MS):
        while (await observer.node.ops.presence_stats("document:c")).num_clients:
            await asyncio.sleep(0.1)  # expiry has no event to await
    assert time.monotonic() - started < 4


async def test_connect_round_trips(
    start_server: StartServer, redis_url: str, redis_prefix: str
) -> None:
    """A connect with its user channel and a document channel another client of the
    node already holds: one MGET (revocation), one SUBSCRIBE (the new user channel),
    one script call reading both streams, one adding presence and publishing the join."""
    # No periodic node announcement (a PUBLISH) inside the measured window.
    server = await start_server(
        REDIS_URL=redis_url, REDIS_PREFIX=redis_prefix, NODE_INFO_INTERVAL="3600"
    )
    watcher = await connected(server, "w", channels=["document:rt"])
    assert (await watcher.push("join"))["join"]["info"]["user"] == "w"  # its own, done
    admin = aioredis.Redis.from_url(redis_url)
    commands = ("evalsha", "mget", "subscribe", "publish", "get")
    try:
        before = await admin.info("commandstats")
        await connected(server, "n", channels=["document:rt"], jti="rt-jti")
        assert (await watcher.push("join"))["join"]["info"]["user"] == "n"
        after = await admin.info("commandstats")
    finally:
        await admin.aclose()

    def calls(stats: dict[str, Any], name: str) -> int:
        return int(stats.get(f"cmdstat_{name}", {}).get("calls", 0))

    used = {name: calls(after, name) - calls(before, name) for name in commands}
    # (the PUBLISH of the join runs inside the presence script)
    assert used == {"evalsha": 2, "mget": 1, "subscribe": 1, "publish": 1, "get": 0}


async def test_disconnect_round_trips(
    start_server: StartServer, redis_url: str, redis_prefix: str
) -> None:
    """A disconnect with its user channel and a document channel another client of the
    node still holds: presence removal and the leave in one script call (MONITOR shows
    the commands each client sent, and those a script ran, apart)."""
    server = await start_server(REDIS_URL=redis_url, REDIS_PREFIX=redis_prefix)
    watcher = await connected(server, "w", channels=["document:rd"])
    leaving = await connected(server, "n", channels=["document:rd"])
    assert (await watcher.push("join"))["join"]["info"]["user"] == "w"
    assert (await watcher.push("join"))["join"]["info"]["user"] == "n"
    admin = aioredis.Redis.from_url(redis_url)
    marker = aioredis.Redis.from_url(redis_url)
    sent: list[str] = []
    try:
        async with admin.monitor() as monitor:
            await marker.ping()  # the monitor is attached once it reports this
            while not (await monitor.next_command())["command"].startswith("PING"):
                pass
            await leaving.close()
            assert (await watcher.push("leave"))["leave"]["info"]["user"] == "n"
            await marker.echo("end-of-disconnect")
            while True:
                entry = await asyncio.wait_for(monitor.next_command(), 2000 * MS)
                command = str(entry["command"])
                if command.startswith("ECHO end-of-disconnect"):
                    break
                if entry["client_type"] != "lua":
                    sent.append(command.split(" ", 1)[0].upper())
        presence = await server.node.engine.presence.presence("document:rd")
    finally:
        await admin.aclose()
        await marker.aclose()
    scripts = [c for c in sent if c in ("EVALSHA", "EVAL")]
    assert len(scripts) == 1, sent  # presence removal + leave, together
    assert "PUBLISH" not in sent and "HDEL" not in sent, sent
    assert [info.user for info in presence.values()] == ["w"]


async def test_revoked_token_checked_with_the_reads_leaves_nothing_behind(
    start_server: StartServer, redis_url: str, redis_prefix: str
) -> None:
    """On Redis the revocation check leaves with the connect's history read (after the
    broker subscriptions): a revoked token is still closed 4501, before the channel
    limit's 3505, and its subscriptions are undone."""
    server = await start_server(REDIS_URL=redis_url, REDIS_PREFIX=redis_prefix, MAX_CHANNELS=2)
    await server.node.revocations.revoke_token("gone", time.time() + 60)
    redis = aioredis.Redis.from_url(redis_url)
    try:
        for channels in (["document:rv"], ["document:rv", "document:rw"]):  # 2 and 3 channels
            attempt = await RawClient.open(ws_url(server))
            await attempt.send({"connect": {"token": token("42", jti="gone", channels=channels)}})
            assert (await attempt.closed())[0] == 4501
        assert not server.node.hub.has_local("user:42")
        assert not server.node.hub.has_local("document:rv")
        assert server.node.subscriptions.held == frozenset()
        async with asyncio.timeout(5000 * MS):  # the UNSUBSCRIBEs were written first
            for channel in ("{user:42}", "{document:rv}"):
                while (await redis.pubsub_numsub(redis_prefix + channel))[0][1] != 0:
                    await asyncio.sleep(0.01)
        over = await RawClient.open(ws_url(server))
        three = token("42", channels=["document:rv", "document:rw"])
        await over.send({"connect": {"token": three}})
        assert (await over.closed())[0] == 3505
        fine = await connected(server, "42", channels=["document:rv"])
        await server.node.ops.publish("document:rv", b"1")
        assert (await fine.push("pub"))["pub"]["data"] == 1
    finally:
        await redis.aclose()


async def test_a_node_frozen_through_a_revocation_and_an_expiry_closes_both_on_thaw(
    redis_url: str, redis_prefix: str
) -> None:
    """A node frozen (SIGSTOP: a paused VM) while one of its tokens is revoked elsewhere
    and another expires acts on both the moment it runs again: 4501 and 3005."""
    shared = {"REDIS_URL": redis_url, "REDIS_PREFIX": redis_prefix}
    async with server_process(**shared) as node:
        revoked = await RawClient.open(node.ws_url)
        assert "connect" in await revoked.connect(token("1", jti="frozen-jti"))
        expiring = await RawClient.open(node.ws_url)
        expiring_token = token("2", ttl=2)
        assert "connect" in await expiring.connect(expiring_token)
        node.proc.send_signal(signal.SIGSTOP)
        try:
            code, _, err = await run_cli("revoke", "--jti", "frozen-jti", env=cli_env(**shared))
            assert code == 0, err
            expires_at = claims(expiring_token)["exp"]
            await asyncio.sleep(max(0.0, expires_at + 0.2 - time.time()))  # time passing
        finally:
            node.proc.send_signal(signal.SIGCONT)
        assert await revoked.closed(timeout=2000 * MS) == (4501, "token revoked")
        assert (await expiring.closed(timeout=2000 * MS))[0] == 3005
