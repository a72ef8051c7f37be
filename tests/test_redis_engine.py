"""The Redis engine's own mechanics, on a private redis-server: a connect's reads and
announcements batched into one script call, the broker's position taken from the read
that follows a subscribe, scripts reloaded after Redis forgot them."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
import redis.asyncio as aioredis

from realtime_server.channels.engine import HistoryOptions, HistoryQuery, Membership, PublishItem
from realtime_server.channels.redis_engine import RedisEngine
from realtime_server.errors import BackendUnavailable
from realtime_server.model import ClientInfo
from realtime_server.redis.client import LuaScript

from .redis_server import RedisServer, redis_server
from .test_engine_contract import Recorder

HISTORY = HistoryOptions(size=100, ttl=300.0)
CHANNELS = ["document:1", "document:2", "user:42"]


class Setup:
    def __init__(self, server: RedisServer, engine: RedisEngine, admin: aioredis.Redis) -> None:
        self.server = server
        self.engine = engine
        self.admin = admin
        self.events = Recorder()

    async def calls(self, command: str) -> int:
        stats: dict[str, Any] = await self.admin.info("commandstats")
        return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


@pytest.fixture
async def setup() -> AsyncIterator[Setup]:
    async with redis_server() as server:
        engine = RedisEngine(server.url, prefix=f"t{uuid.uuid4().hex[:8]}:")
        admin = aioredis.Redis.from_url(server.url)
        s = Setup(server, engine, admin)
        engine.broker.set_handler(s.events)
        await engine.broker.start()
        try:
            yield s
        finally:
            await admin.aclose()
            await engine.presence.close()
            await engine.broker.close()


async def test_a_connects_reads_and_joins_are_one_script_call_each(setup: Setup) -> None:
    engine = setup.engine
    await engine.broker.history("document:warm", options=HISTORY)  # scripts loaded
    await engine.joined([Membership("document:warm", ClientInfo("1", "c0"), True, False)], 60.0)
    before = await setup.calls("evalsha")
    tops = await engine.broker.history_many([HistoryQuery(c, options=HISTORY) for c in CHANNELS])
    assert [t.top.offset for t in tops] == [0, 0, 0]
    assert await setup.calls("evalsha") == before + 1
    joins = [Membership(c, ClientInfo("42", "c1"), True, True) for c in CHANNELS]
    await engine.joined(joins, 60.0)
    assert await setup.calls("evalsha") == before + 2
    for channel in CHANNELS:
        assert list(await engine.presence.presence(channel)) == ["c1"]


async def test_a_gap_right_after_subscribing_is_filled_from_history(setup: Setup) -> None:
    """The subscribe itself reads nothing: the first history read after it tells the
    broker where the stream is, and a publication lost on the link after that read is
    still recovered from the stream (not skipped)."""
    engine, commands = setup.engine, setup.engine.commands
    channel = "document:gap"
    await engine.broker.subscribe(channel)
    (read,) = await engine.broker.history_many([HistoryQuery(channel, options=HISTORY)])
    names = commands.names
    # Append offset 1 to the stream but publish it where nobody listens: "lost".
    lost: list[bytes | str | int] = [
        names.channel("elsewhere"),
        b'{"n":1}',
        "",
        "",
        100,
        300_000,
        86_400_000,
        "unused",
        int(time.time() * 1000),
        "0",
    ]
    keys = [names.stream(channel), names.meta(channel)]
    offset, _, _published = await commands.script(commands.publish_script, keys, lost)
    assert offset == 1
    await engine.broker.publish(channel, b'{"n":2}', history=HISTORY)
    await setup.events.wait_for(lambda: len(setup.events.pubs(channel)) == 2)
    pubs = setup.events.pubs(channel)
    assert [(p.offset, p.data) for p in pubs] == [(1, b'{"n":1}'), (2, b'{"n":2}')]
    assert setup.events.of("insufficient") == []
    assert read.top.offset == 0


async def test_scripts_are_reloaded_after_redis_forgot_them(setup: Setup) -> None:
    engine = setup.engine
    await engine.broker.publish("document:1", b"1", history=HISTORY)
    await setup.admin.script_flush()
    found = await engine.broker.history_many(
        [HistoryQuery(c, limit=-1, options=HISTORY) for c in CHANNELS]
    )
    assert [len(r.publications) for r in found] == [1, 0, 0]
    await setup.admin.script_flush()
    await engine.joined([Membership("document:1", ClientInfo("42", "c1"), True, False)], 60.0)
    assert list(await engine.presence.presence("document:1")) == ["c1"]


async def test_presence_added_by_joined_expires_after_its_ttl(setup: Setup) -> None:
    engine = setup.engine
    ttl = 0.3
    await engine.joined([Membership("document:1", ClientInfo("42", "c1"), True, False)], ttl)
    await engine.joined([Membership("document:1", ClientInfo("43", "c2"), True, False)], 60.0)
    assert set(await engine.presence.presence("document:1")) == {"c1", "c2"}
    await asyncio.sleep(ttl + 0.1)  # expiry is wall-clock time (as the contract's advance)
    assert list(await engine.presence.presence("document:1")) == ["c2"]


class Traced:
    """Logs the start and end of every script call of the engine (our wrapper, in
    order), and can fail the next one as if Redis were unreachable."""

    def __init__(self, engine: RedisEngine) -> None:
        self.log: list[tuple[str, int, tuple[str, ...]]] = []
        self.fail_next = False
        commands = engine.commands
        original = commands.script

        async def traced(
            script: LuaScript, keys: Sequence[str], args: Sequence[Any], **options: Any
        ) -> Any:
            n = len({entry[1] for entry in self.log})
            self.log.append(("start", n, tuple(keys)))
            try:
                if self.fail_next:
                    self.fail_next = False
                    raise BackendUnavailable("injected")
                return await original(script, keys, args, **options)
            finally:
                self.log.append(("end", n, tuple(keys)))

        commands.script = traced  # type: ignore[method-assign]

    def index(self, kind: str, key: str) -> list[int]:
        return [i for i, (k, _, keys) in enumerate(self.log) if k == kind and key in keys]


async def test_reads_of_a_new_subscription_wait_for_the_one_positioning_it(
    setup: Setup,
) -> None:
    """Two clients attaching one channel at once: the second read is sent only once
    the first (which positions the broker) is done, so it cannot run in Redis before
    it and miss a publication the broker would then skip as already delivered."""
    engine = setup.engine
    names = engine.commands.names
    trace = Traced(engine)
    await engine.broker.subscribe("document:a")
    first, second, unrelated = await asyncio.gather(
        engine.broker.history_many(
            [HistoryQuery("document:a", options=HISTORY), HistoryQuery("user:1", options=HISTORY)]
        ),
        engine.broker.history("document:a", options=HISTORY),
        engine.broker.history("document:b", options=HISTORY),  # not subscribed: no wait
    )
    a = names.meta("document:a")
    (first_end, *_), second_start = trace.index("end", a), trace.index("start", a)[1]
    assert second_start > first_end
    assert trace.index("start", names.meta("document:b"))[0] < first_end
    assert first[0].top == second.top and unrelated.top.offset == 0


async def test_a_failed_positioning_read_leaves_it_to_the_next(setup: Setup) -> None:
    engine = setup.engine
    trace = Traced(engine)
    channel = "document:retry"
    await engine.broker.subscribe(channel)
    trace.fail_next = True
    failed, ok = await asyncio.gather(
        engine.broker.history(channel, options=HISTORY),
        engine.broker.history(channel, options=HISTORY),
        return_exceptions=True,
    )
    assert isinstance(failed, BackendUnavailable) and not isinstance(ok, BaseException)
    # the second read positioned the broker: a publication is delivered in order
    await engine.broker.publish(channel, b"1", history=HISTORY)
    await setup.events.wait_for(lambda: len(setup.events.pubs(channel)) == 1)
    assert [p.offset for p in setup.events.pubs(channel)] == [ok.top.offset + 1]


async def test_publish_many_is_one_round_trip_and_survives_a_script_flush(setup: Setup) -> None:
    broker = setup.engine.broker
    await broker.subscribe("document:1")
    await setup.admin.script_flush()  # Redis forgot publish.lua: the first call is NOSCRIPT
    items = [
        PublishItem("document:1", b'{"n":%d}' % i, history=HISTORY, key=f"k{i}", ttl=60.0)
        for i in range(50)
    ]
    results = await broker.publish_many(items)
    assert [(p.offset if p else None, first) for p, first in results] == [
        (i + 1, True) for i in range(50)
    ]
    await setup.events.wait_for(lambda: len(setup.events.pubs("document:1")) == 50)
    before = await setup.calls("evalsha")
    again = await broker.publish_many(items)
    assert again == [(p, False) for p, _ in results]  # every key repeated: nothing published
    assert await setup.calls("evalsha") == before + 50  # one pipelined round trip
