"""Redis Cluster (three masters on loopback): sharded pub/sub, scripts on the right shard."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from .conftest import StartServer, connected
from .helpers import MS, sub_token
from .redis_server import RedisCluster, redis_cluster


@pytest.fixture
async def cluster() -> AsyncIterator[RedisCluster]:
    async with redis_cluster() as c:
        yield c


async def test_cluster_delivery_revocation_presence_recovery(
    start_server: StartServer, cluster: RedisCluster
) -> None:
    a = await start_server(REDIS_URL=cluster.url)
    b = await start_server(REDIS_URL=cluster.url)
    assert a.node.engine.commands.cluster  # type: ignore[attr-defined]
    channels = [f"document:{i}" for i in range(12)]  # spread over the three shards
    on_a = await connected(a, "1", channels=channels)
    on_b = await connected(b, "2", channels=channels, jti="cluster-jti")
    for i, channel in enumerate(channels):
        position = await a.node.ops.publish(channel, b"%d" % i)
        assert position is not None and position.offset == 1
    for client in (on_a, on_b):
        got = {}
        for _ in channels:
            push = await client.push("pub")
            got[push["channel"]] = push["pub"]["data"]
        assert got == {c: i for i, c in enumerate(channels)}

    # a plain SPUBLISH from any program reaches subscribers
    plain = aioredis.RedisCluster.from_url(cluster.url)
    try:
        await plain.spublish("rt:{document:3}", b'{"status":"viewed"}')
    finally:
        await plain.aclose()
    assert (await on_a.push("pub"))["pub"]["data"] == {"status": "viewed"}

    # presence and join on a document channel across nodes
    await on_a.call("subscribe", {"channel": "document:p", "token": sub_token("1", "document:p")})
    await on_b.call("subscribe", {"channel": "document:p", "token": sub_token("2", "document:p")})
    joined: set[str] = set()  # each join is published right after its presence entry
    while joined != {"1", "2"}:
        joined.add((await on_a.push("join"))["join"]["info"]["user"])
    stats = await b.node.ops.presence_stats("document:p")
    assert (stats.num_clients, stats.num_users) == (2, 2)

    # recovery from the sharded history
    history = await b.node.broker.history("document:5", limit=-1)
    assert [p.data for p in history.publications] == [b"5"]

    # revocation announced on the control channel reaches the other node
    await a.node.revocations.revoke_token("cluster-jti", time.time() + 60)
    assert (await on_b.closed())[0] == 4501
    assert await a.node.revocations.is_revoked("cluster-jti", "2", None)

    # a node started later reads the list from every primary; with the cluster's data
    # flushed, it notices (the marker is gone) and writes the list back first
    await a.node.revocations.revoke_user("9", time.time() - 5)
    c = await start_server(REDIS_URL=cluster.url)
    await asyncio.wait_for(c.node.revocations.started(), 10)  # type: ignore[attr-defined]
    for server in cluster.servers:
        flusher = aioredis.Redis.from_url(server.url)
        try:
            await flusher.flushall()
        finally:
            await flusher.aclose()
    assert await c.node.revocations.is_revoked("cluster-jti", "2", None)
    assert await c.node.revocations.is_revoked(None, "9", time.time() - 10)
    assert not await c.node.revocations.is_revoked("other-jti", "2", time.time())


async def test_a_node_started_before_its_cluster_opens_sharded_links_once_it_answers(
    start_server: StartServer,
) -> None:
    """``docker compose up``: the server first, Redis Cluster later. It serves as not
    ready until the cluster answers, then subscribes the sharded way. (It once assumed
    a single Redis: ready, publishing with SPUBLISH, subscribed with SUBSCRIBE, and
    delivering nothing.)"""
    cluster = RedisCluster()
    try:
        server = await start_server(REDIS_URL=cluster.url)
        assert not server.node.readiness().ready
        await cluster.start()
        async with asyncio.timeout(10000 * MS):
            while not server.node.readiness().ready:
                await asyncio.sleep(0.02)  # the background detection: no event to await
        assert server.node.engine.commands.cluster  # type: ignore[attr-defined]
        channels = [f"document:{i}" for i in range(9)]  # spread over the three shards
        client = await connected(server, "1", channels=channels)
        for i, channel in enumerate(channels):
            await server.node.ops.publish(channel, b"%d" % i)
        got = {}
        for _ in channels:
            push = await client.push("pub")
            got[push["channel"]] = push["pub"]["data"]
        assert got == {c: i for i, c in enumerate(channels)}
    finally:
        await cluster.close()
