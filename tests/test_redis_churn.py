"""Redis pub/sub under churn with the links killed every 50 ms (issue 11, item 3).

Two nodes on a private Redis; 7 workers x 500 cycles of connect / subscribe /
unsubscribe or abort (mid-subscribe too) while ``CLIENT KILL TYPE pubsub`` drops every
pub/sub link each 50 ms. Afterwards Redis holds no subscription for any channel used
(``PUBSUB NUMSUB`` 0), every node gauge is 0, and nothing was logged at ERROR (no
"connection handler failed", no "read() called while another coroutine is already
waiting"). Before the pub/sub connections had one owner each, 2 runs in 8 leaked a
subscription for good.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random

import pytest
import redis.asyncio as aioredis

from realtime_server.app import Running

from .conftest import StartServer, ws_url
from .helpers import MS, SCALE, RawClient, sub_token, token
from .redis_server import redis_server

WORKERS = 7
CYCLES = 500
RUNS = int(os.environ.get("REALTIME_TEST_CHURN_RUNS", "2"))
"""Runs of the whole churn (each about 10 s); more for a soak test."""
CHANNELS = [f"document:churn{i}" for i in range(12)]


async def _cycle(server: Running, user: str, n: int, rng: random.Random) -> None:
    """One client's life: connect, subscribe, then unsubscribe and close, or abort
    right after the reply, or abort with the subscribe still in flight. Any outcome
    of each command is fine (error 100 while a link is down): only the end state
    counts."""
    channel = rng.choice(CHANNELS)
    try:
        client = await RawClient.open(ws_url(server), open_timeout=2000 * MS)
    except (OSError, TimeoutError):
        return
    try:
        reply = await client.connect(token(user), timeout=2000 * MS)
        if "connect" not in reply:
            return
        (sub_id,) = await client.send(
            {"subscribe": {"channel": channel, "token": sub_token(user, channel)}}
        )
        mode = n % 3
        if mode == 2:
            return  # aborted with the subscribe in flight
        await client.reply(sub_id)
        if mode == 1:
            return  # aborted after the reply
        await client.call("unsubscribe", {"channel": channel})
        await client.ws.close()
    except Exception:  # a dropped cycle is fine here (only the end state counts)
        return
    finally:
        client.ws.transport.abort()


async def _worker(servers: list[Running], w: int, cycles: int) -> None:
    rng = random.Random(w)
    for n in range(cycles):
        await _cycle(servers[(w + n) % 2], f"w{w}", n, rng)


async def _killer(url: str, stop: asyncio.Event) -> int:
    admin = aioredis.Redis.from_url(url)
    kills = 0
    try:
        while not stop.is_set():
            with contextlib.suppress(Exception):
                kills += await admin.client_kill_filter(_type="pubsub")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.05)
    finally:
        await admin.aclose()
    return kills


def _gauges(server: Running) -> dict[str, float]:
    gauges = server.node.metrics.gauges
    return {name: gauges[name][1]() for name in ("connections", "subscriptions", "channels")}


@pytest.mark.parametrize("run", range(RUNS))
async def test_churn_with_links_killed_leaks_nothing(
    start_server: StartServer, caplog: pytest.LogCaptureFixture, run: int
) -> None:
    caplog.set_level(logging.WARNING)
    async with redis_server() as redis_proc:
        env = {"REDIS_URL": redis_proc.url, "REDIS_TIMEOUT": 1, "EVENTS_ENABLED": "false"}
        servers = [await start_server(**env), await start_server(**env)]
        stop = asyncio.Event()
        killer = asyncio.create_task(_killer(redis_proc.url, stop))
        try:
            async with asyncio.timeout(60000 * MS):
                await asyncio.gather(*(_worker(servers, w, CYCLES) for w in range(WORKERS)))
        finally:
            stop.set()
            kills = await killer
        assert kills > 20, "the links were not killed"
        # Settle: every session gone, every shard subscribed again.
        async with asyncio.timeout(10000 * MS):
            while not all(s.node.broker.ready and not any(_gauges(s).values()) for s in servers):
                await asyncio.sleep(10 * MS)
        admin = aioredis.Redis.from_url(redis_proc.url)
        try:
            names = [servers[0].node.broker.names.channel(c) for c in CHANNELS]  # type: ignore[attr-defined]
            users = [servers[0].node.broker.names.channel(f"user:w{w}") for w in range(WORKERS)]  # type: ignore[attr-defined]
            async with asyncio.timeout(5000 * SCALE):
                while True:
                    counts = dict(await admin.pubsub_numsub(*names, *users))
                    if not any(counts.values()):
                        break
                    await asyncio.sleep(20 * MS)
        finally:
            await admin.aclose()
        for server in servers:
            assert _gauges(server) == {"connections": 0, "subscriptions": 0, "channels": 0}
            shards = server.node.broker._shards.shards  # type: ignore[attr-defined]
            assert not any(shard.channels for shard in shards)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [f"{r.name}: {r.getMessage()}" for r in errors[:5]]
    assert "connection handler failed" not in caplog.text
    assert "another coroutine is already waiting" not in caplog.text
