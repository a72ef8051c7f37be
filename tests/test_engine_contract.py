"""One contract suite for the engine interfaces (channels/engine.py): Broker with its
history semantics, and PresenceManager.

Every engine runs the same tests through the parametrized ``engine`` fixture. To add an
engine, write one factory and register it in ``ENGINE_FACTORIES``:

- the factory is an async context manager yielding an :class:`EngineUnderTest`: the
  engine (not started: the fixture sets the handler, then starts it), an
  ``advance(seconds)`` coroutine that moves the engine's time forward, and ``ttl``, the
  shortest TTL (seconds) the engine honours precisely;
- an engine with an injectable clock (memory) advances a fake clock, instantly; an
  engine that cannot fake time (Redis) sleeps for real in ``advance`` and picks a
  ``ttl`` its backend honours (e.g. 1 s if TTLs are set with ``EXPIRE``). Tests only
  wait in multiples of ``ttl``;
- the factory isolates the test (e.g. a unique key prefix per test for Redis) and
  cleans up after it; it may ``pytest.skip`` when its backend is not configured;
- events may arrive asynchronously: tests wait for the expected ones with
  ``Recorder.wait_for``, then check that nothing else came with ``Harness.barrier`` (a
  control message published after the events under test; this assumes the engine
  delivers control messages on the same ordered link as channel events, as one Redis
  pub/sub connection does; an engine that spreads channels over several links sets
  ``settle``, a real delay the barrier adds).
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

from realtime_server.channels.engine import (
    Broker,
    ControlMessage,
    Engine,
    HistoryOptions,
    HistoryQuery,
    Membership,
    PresenceManager,
    PresenceStats,
    PublishItem,
)
from realtime_server.channels.memory import MemoryEngine
from realtime_server.channels.redis_engine import RedisEngine
from realtime_server.model import ClientInfo, Publication, StreamPosition

from .helpers import MS
from .redis_server import redis_server

WAIT = 2000 * MS
"""How long to wait for an event an engine must deliver."""


# --- factories --------------------------------------------------------------------------


@dataclass(frozen=True)
class EngineUnderTest:
    engine: Engine
    advance: Callable[[float], Awaitable[None]]
    ttl: float
    settle: float = 0.0
    """Extra real seconds a barrier waits, for engines whose control messages may
    travel on another link than channel events (several pub/sub shards)."""


EngineFactory = Callable[[], AbstractAsyncContextManager[EngineUnderTest]]


class FakeClock:
    def __init__(self, now: float = 10_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@asynccontextmanager
async def memory_engine() -> AsyncIterator[EngineUnderTest]:
    clock = FakeClock()

    async def advance(seconds: float) -> None:
        clock.now += seconds

    yield EngineUnderTest(MemoryEngine(clock=clock), advance, ttl=1.0)


@asynccontextmanager
async def redis_engine() -> AsyncIterator[EngineUnderTest]:
    """Real Redis (a private redis-server), unique prefix, real short TTLs."""
    async with redis_server() as server:
        engine = RedisEngine(server.url, prefix=f"t{uuid.uuid4().hex[:8]}:")

        async def advance(seconds: float) -> None:
            await asyncio.sleep(seconds)  # Redis expiry runs on its own clock

        yield EngineUnderTest(engine, advance, ttl=1.0, settle=0.05)


ENGINE_FACTORIES: dict[str, EngineFactory] = {
    "memory": memory_engine,
    "redis": redis_engine,
}


# --- harness ----------------------------------------------------------------------------


Event = tuple[str, str, Any]
"""(kind, channel, payload): ("pub", ch, Publication), ("join"/"leave", ch, ClientInfo),
("control", "", ControlMessage), ("reconnect", "", None), ("insufficient", ch, None)."""


@dataclass
class Recorder:
    """A BrokerEventHandler that records everything, in arrival order."""

    events: list[Event] = field(default_factory=list)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def _add(self, event: Event) -> None:
        self.events.append(event)
        self._changed.set()

    def handle_publication(self, channel: str, pub: Publication) -> None:
        self._add(("pub", channel, pub))

    def handle_join(self, channel: str, info: ClientInfo) -> None:
        self._add(("join", channel, info))

    def handle_leave(self, channel: str, info: ClientInfo) -> None:
        self._add(("leave", channel, info))

    def handle_control(self, message: ControlMessage) -> None:
        self._add(("control", "", message))

    def handle_reconnect(self) -> None:
        self._add(("reconnect", "", None))

    def handle_insufficient_state(self, channel: str) -> None:
        self._add(("insufficient", channel, None))

    def of(self, kind: str, channel: str | None = None) -> list[Any]:
        return [p for k, c, p in self.events if k == kind and (channel is None or c == channel)]

    def pubs(self, channel: str) -> list[Publication]:
        return self.of("pub", channel)

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = WAIT) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()


@dataclass
class Harness:
    engine: Engine
    events: Recorder
    advance: Callable[[float], Awaitable[None]]
    ttl: float
    settle: float = 0.0
    _barriers: itertools.count[int] = field(default_factory=itertools.count)

    @property
    def broker(self) -> Broker:
        return self.engine.broker

    @property
    def presence(self) -> PresenceManager:
        return self.engine.presence

    async def barrier(self) -> None:
        """Return once every event published before this call has been delivered."""
        marker = ControlMessage("barrier", {"n": next(self._barriers)})
        await self.broker.publish_control(marker)
        await self.events.wait_for(lambda: marker in self.events.of("control"))
        if self.settle:
            await asyncio.sleep(self.settle)

    async def publish_n(
        self, channel: str, n: int, history: HistoryOptions | None
    ) -> list[StreamPosition | None]:
        return [
            await self.broker.publish(channel, b'{"n":%d}' % i, history=history) for i in range(n)
        ]


@pytest.fixture(params=sorted(ENGINE_FACTORIES))
async def engine(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    async with ENGINE_FACTORIES[request.param]() as under_test:
        recorder = Recorder()
        eng = under_test.engine
        eng.broker.set_handler(recorder)
        await eng.broker.start()
        try:
            yield Harness(eng, recorder, under_test.advance, under_test.ttl, under_test.settle)
        finally:
            await eng.presence.close()
            await eng.broker.close()


HISTORY = HistoryOptions(size=100, ttl=300.0)
CH = "document:1"
OTHER = "document:2"


def offsets(pubs: list[Publication]) -> list[int]:
    return [p.offset for p in pubs]


def info(user: str, client: str, conn_info: bytes | None = None) -> ClientInfo:
    return ClientInfo(user, client, conn_info)


# --- interfaces -------------------------------------------------------------------------


async def test_implements_the_interfaces(engine: Harness) -> None:
    assert isinstance(engine.broker, Broker)
    assert isinstance(engine.presence, PresenceManager)
    assert engine.engine.name
    assert engine.broker.ready


# --- publish and delivery ---------------------------------------------------------------


async def test_publish_with_history_returns_increasing_offsets_in_one_epoch(
    engine: Harness,
) -> None:
    positions = await engine.publish_n(CH, 3, HISTORY)
    assert all(p is not None for p in positions)
    assert [p.offset for p in positions if p] == [1, 2, 3]
    epochs = {p.epoch for p in positions if p}
    assert len(epochs) == 1 and "" not in epochs


async def test_channels_have_their_own_streams(engine: Harness) -> None:
    a1 = await engine.broker.publish(CH, b"1", history=HISTORY)
    b1 = await engine.broker.publish(OTHER, b"1", history=HISTORY)
    a2 = await engine.broker.publish(CH, b"2", history=HISTORY)
    assert a1 is not None and b1 is not None and a2 is not None
    assert (a1.offset, b1.offset, a2.offset) == (1, 1, 2)
    top = (await engine.broker.history(OTHER, options=HISTORY)).top
    assert top == b1


async def test_handler_receives_subscribed_channels_only_in_order(engine: Harness) -> None:
    await engine.broker.subscribe(CH)
    positions = []
    for i in range(5):
        positions.append(await engine.broker.publish(CH, b'{"i":%d}' % i, history=HISTORY))
        await engine.broker.publish(OTHER, b"0", history=HISTORY)  # not subscribed
    await engine.events.wait_for(lambda: len(engine.events.pubs(CH)) == 5)
    await engine.barrier()
    pubs = engine.events.pubs(CH)
    assert [p.data for p in pubs] == [b'{"i":%d}' % i for i in range(5)]
    assert offsets(pubs) == [p.offset for p in positions if p] == [1, 2, 3, 4, 5]
    assert engine.events.pubs(OTHER) == []
    assert len(engine.events.of("pub")) == 5


async def test_publication_carries_info_and_tags(engine: Harness) -> None:
    await engine.broker.subscribe(CH)
    publisher = ClientInfo("42", "c1", b'{"name":"Ann"}', b'{"role":"signer"}')
    await engine.broker.publish(
        CH, b'{"x":[1,2]}', info=publisher, tags={"kind": "signed"}, history=HISTORY
    )
    await engine.events.wait_for(lambda: len(engine.events.pubs(CH)) == 1)
    (pub,) = engine.events.pubs(CH)
    assert pub == Publication(b'{"x":[1,2]}', 1, publisher, {"kind": "signed"})
    (kept,) = (await engine.broker.history(CH, limit=-1, options=HISTORY)).publications
    assert kept == pub


async def test_publish_without_history_has_no_offset(engine: Harness) -> None:
    await engine.broker.subscribe(CH)
    assert await engine.broker.publish(CH, b'"plain"') is None
    await engine.events.wait_for(lambda: len(engine.events.pubs(CH)) == 1)
    (pub,) = engine.events.pubs(CH)
    assert pub.offset == 0 and pub.data == b'"plain"'


async def test_publish_without_history_leaves_the_stream_alone(engine: Harness) -> None:
    first = await engine.broker.publish(CH, b"1", history=HISTORY)
    await engine.broker.publish(CH, b"2")
    result = await engine.broker.history(CH, limit=-1, options=HISTORY)
    assert result.top == first
    assert [p.data for p in result.publications] == [b"1"]


async def test_subscribe_is_idempotent_and_not_reference_counted(engine: Harness) -> None:
    """The hub counts references; the broker keeps one subscription per channel."""
    await engine.broker.subscribe(CH)
    await engine.broker.subscribe(CH)
    await engine.broker.publish(CH, b"1", history=HISTORY)
    await engine.events.wait_for(lambda: len(engine.events.pubs(CH)) >= 1)
    await engine.barrier()
    assert offsets(engine.events.pubs(CH)) == [1]  # delivered once, not twice
    await engine.broker.unsubscribe(CH)
    await engine.broker.publish(CH, b"2", history=HISTORY)
    await engine.barrier()
    assert offsets(engine.events.pubs(CH)) == [1]


async def test_unsubscribe_stops_delivery(engine: Harness) -> None:
    await engine.broker.subscribe(CH)
    await engine.broker.subscribe(OTHER)
    await engine.broker.publish(CH, b"1", history=HISTORY)
    await engine.events.wait_for(lambda: len(engine.events.pubs(CH)) == 1)
    await engine.broker.unsubscribe(CH)
    await engine.broker.publish(CH, b"2", history=HISTORY)
    await engine.broker.publish_join(CH, info("42", "c1"))
    await engine.broker.publish_leave(CH, info("42", "c1"))
    await engine.broker.publish(OTHER, b"3", history=HISTORY)
    await engine.events.wait_for(lambda: len(engine.events.pubs(OTHER)) == 1)
    await engine.barrier()
    assert offsets(engine.events.pubs(CH)) == [1]
    assert engine.events.of("join") == engine.events.of("leave") == []
    assert offsets(engine.events.pubs(OTHER)) == [1]


async def test_unsubscribe_unknown_channel(engine: Harness) -> None:
    await engine.broker.unsubscribe("document:never")


async def test_resubscribe_resumes_delivery(engine: Harness) -> None:
    await engine.broker.subscribe(CH)
    await engine.broker.unsubscribe(CH)
    await engine.broker.subscribe(CH)
    await engine.broker.publish(CH, b"1", history=HISTORY)
    await engine.events.wait_for(lambda: len(engine.events.pubs(CH)) == 1)


async def test_join_and_leave_are_delivered_for_subscribed_channels(engine: Harness) -> None:
    await engine.broker.subscribe(CH)
    joining = info("42", "c1", b'{"name":"Ann"}')
    await engine.broker.publish_join(CH, joining)
    await engine.broker.publish_leave(CH, joining)
    await engine.broker.publish_join(OTHER, info("43", "c2"))  # not subscribed
    await engine.events.wait_for(lambda: len(engine.events.of("leave")) == 1)
    await engine.barrier()
    kinds = [(k, c, p) for k, c, p in engine.events.events if k in ("join", "leave")]
    assert kinds == [("join", CH, joining), ("leave", CH, joining)]


async def test_control_reaches_this_node_without_subscription(engine: Harness) -> None:
    message = ControlMessage("disconnect", {"user": "42", "code": 3503, "reason": None})
    await engine.broker.publish_control(message)
    await engine.events.wait_for(lambda: message in engine.events.of("control"))
    assert engine.events.of("control") == [message]


async def test_events_of_one_channel_keep_their_order(engine: Harness) -> None:
    await engine.broker.subscribe(CH)
    await engine.broker.publish(CH, b"1", history=HISTORY)
    await engine.broker.publish_join(CH, info("42", "c1"))
    await engine.broker.publish(CH, b"2")
    await engine.broker.publish_leave(CH, info("42", "c1"))
    await engine.broker.publish(CH, b"3", history=HISTORY)
    await engine.events.wait_for(lambda: len(engine.events.pubs(CH)) == 3)
    kinds = [k for k, c, _ in engine.events.events if c == CH]
    assert kinds == ["pub", "join", "pub", "leave", "pub"]
    assert offsets(engine.events.pubs(CH)) == [1, 0, 2]


# --- history ----------------------------------------------------------------------------


async def test_top_of_an_empty_stream(engine: Harness) -> None:
    result = await engine.broker.history(CH, options=HISTORY)
    assert result.publications == []
    assert result.top.offset == 0 and result.top.epoch != ""
    again = await engine.broker.history(CH, limit=-1, options=HISTORY)
    assert again.top == result.top  # the epoch is created once, then kept
    first = await engine.broker.publish(CH, b"1", history=HISTORY)
    assert first == StreamPosition(1, result.top.epoch)


async def test_history_limit_zero_returns_only_the_top(engine: Harness) -> None:
    positions = await engine.publish_n(CH, 3, HISTORY)
    result = await engine.broker.history(CH, limit=0, options=HISTORY)
    assert result.publications == []
    assert result.top == positions[-1]


async def test_history_limit_minus_one_returns_everything(engine: Harness) -> None:
    positions = await engine.publish_n(CH, 5, HISTORY)
    result = await engine.broker.history(CH, limit=-1, options=HISTORY)
    assert offsets(result.publications) == [1, 2, 3, 4, 5]
    assert [p.data for p in result.publications] == [b'{"n":%d}' % i for i in range(5)]
    assert result.top == positions[-1]


@pytest.mark.parametrize(
    ("limit", "reverse", "expected"),
    [
        (2, False, [1, 2]),
        (2, True, [5, 4]),
        (-1, True, [5, 4, 3, 2, 1]),
        (10, False, [1, 2, 3, 4, 5]),
    ],
)
async def test_history_limit_and_direction(
    engine: Harness, limit: int, reverse: bool, expected: list[int]
) -> None:
    await engine.publish_n(CH, 5, HISTORY)
    result = await engine.broker.history(CH, limit=limit, reverse=reverse, options=HISTORY)
    assert offsets(result.publications) == expected


@pytest.mark.parametrize(
    ("since", "limit", "reverse", "expected"),
    [
        pytest.param(2, -1, False, [3, 4, 5], id="forward-all"),
        pytest.param(2, 2, False, [3, 4], id="forward-limit"),
        pytest.param(0, -1, False, [1, 2, 3, 4, 5], id="forward-from-zero"),
        pytest.param(5, -1, False, [], id="forward-at-top"),
        pytest.param(4, -1, True, [3, 2, 1], id="reverse-all"),
        pytest.param(4, 2, True, [3, 2], id="reverse-limit"),
        pytest.param(1, -1, True, [], id="reverse-at-bottom"),
    ],
)
async def test_history_since(
    engine: Harness, since: int, limit: int, reverse: bool, expected: list[int]
) -> None:
    positions = await engine.publish_n(CH, 5, HISTORY)
    top = positions[-1]
    assert top is not None
    position = StreamPosition(since, top.epoch)
    result = await engine.broker.history(
        CH, since=position, limit=limit, reverse=reverse, options=HISTORY
    )
    assert offsets(result.publications) == expected
    assert result.top == top


async def test_history_since_another_epoch_returns_no_publications(engine: Harness) -> None:
    positions = await engine.publish_n(CH, 3, HISTORY)
    top = positions[-1]
    assert top is not None
    stale = StreamPosition(1, top.epoch + "-old")
    for reverse in (False, True):
        result = await engine.broker.history(
            CH, since=stale, limit=-1, reverse=reverse, options=HISTORY
        )
        assert result.publications == []
        assert result.top == top  # the caller learns the current position


async def test_history_size_trims_the_oldest(engine: Harness) -> None:
    small = HistoryOptions(size=3, ttl=300.0)
    await engine.publish_n(CH, 5, small)
    result = await engine.broker.history(CH, limit=-1, options=small)
    assert offsets(result.publications) == [3, 4, 5]
    assert result.top.offset == 5
    since = await engine.broker.history(CH, since=StreamPosition(1, result.top.epoch), limit=-1)
    assert offsets(since.publications) == [3, 4, 5]


async def test_history_ttl_expires_publications_but_keeps_the_position(
    engine: Harness,
) -> None:
    short = HistoryOptions(size=10, ttl=engine.ttl, meta_ttl=100 * engine.ttl)
    positions = await engine.publish_n(CH, 2, short)
    top = positions[-1]
    assert top is not None
    await engine.advance(0.5 * engine.ttl)
    kept = await engine.broker.history(CH, limit=-1, options=short)
    assert offsets(kept.publications) == [1, 2]
    await engine.advance(1.5 * engine.ttl)
    expired = await engine.broker.history(CH, limit=-1, options=short)
    assert expired.publications == []
    assert expired.top == top
    nxt = await engine.broker.publish(CH, b"3", history=short)
    assert nxt == StreamPosition(3, top.epoch)  # the stream goes on in the same epoch
    assert offsets((await engine.broker.history(CH, limit=-1, options=short)).publications) == [3]


async def test_stream_position_expires_after_meta_ttl(engine: Harness) -> None:
    short = HistoryOptions(size=10, ttl=engine.ttl, meta_ttl=2 * engine.ttl)
    old = await engine.broker.publish(CH, b"1", history=short)
    assert old is not None
    await engine.advance(3 * engine.ttl)
    result = await engine.broker.history(CH, limit=-1, options=short)
    assert result.publications == []
    assert result.top.offset == 0
    assert result.top.epoch not in ("", old.epoch)  # a new stream incarnation
    again = await engine.broker.publish(CH, b"2", history=short)
    assert again == StreamPosition(1, result.top.epoch)


async def test_history_many_answers_like_history(engine: Harness) -> None:
    positions = await engine.publish_n(CH, 4, HISTORY)
    top = positions[-1]
    assert top is not None
    queries = [
        HistoryQuery(CH, options=HISTORY),
        HistoryQuery(OTHER, options=HISTORY),  # no stream yet: created, top (0, epoch)
        HistoryQuery(CH, since=StreamPosition(2, top.epoch), limit=-1, options=HISTORY),
        HistoryQuery(CH, since=StreamPosition(4, top.epoch), limit=2, reverse=True),
        HistoryQuery(CH, since=StreamPosition(1, top.epoch + "-old"), limit=-1),
    ]
    results = await engine.broker.history_many(queries)
    one_by_one = [
        await engine.broker.history(
            q.channel, since=q.since, limit=q.limit, reverse=q.reverse, options=q.options
        )
        for q in queries
    ]
    assert results == one_by_one
    assert [r.top for r in results] == [top, results[1].top, top, top, top]
    assert results[1].top.offset == 0 and results[1].top.epoch not in ("", top.epoch)
    assert [offsets(r.publications) for r in results] == [[], [], [3, 4], [3, 2], []]
    assert await engine.broker.history_many([]) == []


async def test_history_many_positions_a_new_subscription(engine: Harness) -> None:
    """The read after subscribing tells where the stream is; what follows is delivered."""
    await engine.publish_n(CH, 2, HISTORY)
    await engine.broker.subscribe(CH)
    await engine.broker.subscribe(OTHER)
    tops = [
        r.top
        for r in await engine.broker.history_many(
            [HistoryQuery(CH, options=HISTORY), HistoryQuery(OTHER, options=HISTORY)]
        )
    ]
    assert [t.offset for t in tops] == [2, 0]
    after = [await engine.broker.publish(c, b"1", history=HISTORY) for c in (CH, OTHER)]
    await engine.events.wait_for(lambda: len(engine.events.of("pub")) == 2)
    await engine.barrier()
    assert offsets(engine.events.pubs(CH)) == [3] and offsets(engine.events.pubs(OTHER)) == [1]
    assert [p.epoch for p in after if p] == [t.epoch for t in tops]
    assert engine.events.of("insufficient") == []


# --- presence ---------------------------------------------------------------------------


async def test_presence_of_an_empty_channel(engine: Harness) -> None:
    assert await engine.presence.presence(CH) == {}
    assert await engine.presence.stats(CH) == PresenceStats(0, 0)


async def test_presence_add_and_remove(engine: Harness) -> None:
    ann = info("42", "c1", b'{"name":"Ann"}')
    ann2 = info("42", "c2")
    bob = info("43", "c3")
    for who in (ann, ann2, bob):
        await engine.presence.add(CH, who, 60.0)
    assert await engine.presence.presence(CH) == {"c1": ann, "c2": ann2, "c3": bob}
    assert await engine.presence.stats(CH) == PresenceStats(num_clients=3, num_users=2)
    await engine.presence.remove(CH, "c1")
    assert await engine.presence.presence(CH) == {"c2": ann2, "c3": bob}
    assert await engine.presence.stats(CH) == PresenceStats(2, 2)
    await engine.presence.remove(CH, "c2")
    await engine.presence.remove(CH, "c3")
    assert await engine.presence.presence(CH) == {}
    assert await engine.presence.stats(CH) == PresenceStats(0, 0)


async def test_presence_add_again_refreshes_one_entry(engine: Harness) -> None:
    await engine.presence.add(CH, info("42", "c1"), 60.0)
    updated = info("42", "c1", b'{"name":"Ann"}')
    await engine.presence.add(CH, updated, 60.0)
    assert await engine.presence.presence(CH) == {"c1": updated}
    assert await engine.presence.stats(CH) == PresenceStats(1, 1)


async def test_presence_remove_unknown_client(engine: Harness) -> None:
    await engine.presence.remove(CH, "nobody")
    await engine.presence.add(CH, info("42", "c1"), 60.0)
    await engine.presence.remove(CH, "nobody")
    assert await engine.presence.stats(CH) == PresenceStats(1, 1)


async def test_presence_is_per_channel(engine: Harness) -> None:
    await engine.presence.add(CH, info("42", "c1"), 60.0)
    await engine.presence.add(OTHER, info("43", "c2"), 60.0)
    await engine.presence.remove(OTHER, "c1")  # c1 is not in OTHER
    assert list(await engine.presence.presence(CH)) == ["c1"]
    assert list(await engine.presence.presence(OTHER)) == ["c2"]
    assert await engine.presence.stats(CH) == PresenceStats(1, 1)


async def test_joined_adds_presence_and_announces_joins(engine: Harness) -> None:
    third = "document:3"
    for channel in (CH, OTHER, third):
        await engine.broker.subscribe(channel)
    ann = info("42", "c1", b'{"name":"Ann"}')
    bob = info("43", "c2")
    carl = info("44", "c3")
    await engine.engine.joined(
        [
            Membership(CH, ann, presence=True, announce=True),
            Membership(OTHER, bob, presence=False, announce=True),
            Membership(third, carl, presence=True, announce=False),
            Membership(third, bob, presence=False, announce=False),  # nothing to do
        ],
        60.0,
    )
    assert await engine.presence.presence(CH) == {"c1": ann}
    assert await engine.presence.presence(OTHER) == {}
    assert await engine.presence.presence(third) == {"c3": carl}
    await engine.events.wait_for(lambda: len(engine.events.of("join")) == 2)
    await engine.barrier()
    joins = [(c, p) for k, c, p in engine.events.events if k == "join"]
    assert sorted(joins, key=lambda j: j[0]) == [(CH, ann), (OTHER, bob)]
    await engine.engine.joined([], 60.0)
    await engine.presence.remove(CH, "c1")
    assert await engine.presence.presence(CH) == {}


async def test_left_removes_presence_and_announces_leaves(engine: Harness) -> None:
    for channel in (CH, OTHER):
        await engine.broker.subscribe(channel)
    ann = info("42", "c1", b'{"name":"Ann"}')
    bob = info("43", "c2")
    await engine.presence.add(CH, ann, 60.0)
    await engine.presence.add(CH, bob, 60.0)
    await engine.presence.add(OTHER, bob, 60.0)
    await engine.engine.left(
        [
            Membership(CH, ann, presence=True, announce=True),
            Membership(OTHER, bob, presence=False, announce=True),  # announce only
            Membership(CH, info("44", "gone"), presence=True, announce=False),  # absent
        ]
    )
    assert await engine.presence.presence(CH) == {"c2": bob}
    assert await engine.presence.presence(OTHER) == {"c2": bob}
    await engine.events.wait_for(lambda: len(engine.events.of("leave")) == 2)
    await engine.barrier()
    leaves = [(c, p) for k, c, p in engine.events.events if k == "leave"]
    assert sorted(leaves, key=lambda m: m[0]) == [(CH, ann), (OTHER, bob)]
    await engine.engine.left([])


async def test_presence_result_is_a_copy(engine: Harness) -> None:
    await engine.presence.add(CH, info("42", "c1"), 60.0)
    snapshot = await engine.presence.presence(CH)
    snapshot.clear()
    assert list(await engine.presence.presence(CH)) == ["c1"]


# --- idempotent publishing --------------------------------------------------------------


async def test_publish_once_delivers_a_key_once(engine: Harness) -> None:
    await engine.broker.subscribe(CH)
    first = await engine.broker.publish_once(CH, b'"a"', "k1", 60.0, history=HISTORY)
    again = await engine.broker.publish_once(CH, b'"b"', "k1", 60.0, history=HISTORY)
    other = await engine.broker.publish_once(CH, b'"c"', "k2", 60.0, history=HISTORY)
    assert first[0] is not None and first == (StreamPosition(1, first[0].epoch), True)
    assert again == (first[0], False)  # the first call's position, nothing published
    assert other == (StreamPosition(2, first[0].epoch), True)
    await engine.events.wait_for(lambda: len(engine.events.pubs(CH)) == 2)
    await engine.barrier()
    assert [p.data for p in engine.events.pubs(CH)] == [b'"a"', b'"c"']
    kept = (await engine.broker.history(CH, limit=-1, options=HISTORY)).publications
    assert [(p.offset, p.data) for p in kept] == [(1, b'"a"'), (2, b'"c"')]


async def test_publish_once_keys_are_scoped_to_the_channel(engine: Harness) -> None:
    a = await engine.broker.publish_once(CH, b"1", "same", 60.0, history=HISTORY)
    b = await engine.broker.publish_once(OTHER, b"1", "same", 60.0, history=HISTORY)
    assert a[1] and b[1]
    repeat = await engine.broker.publish_once(OTHER, b"2", "same", 60.0, history=HISTORY)
    assert repeat == (b[0], False)


async def test_publish_once_without_history(engine: Harness) -> None:
    await engine.broker.subscribe(CH)
    tags = {"kind": "signed"}
    assert await engine.broker.publish_once(CH, b'"x"', "k", 60.0, tags=tags) == (None, True)
    assert await engine.broker.publish_once(CH, b'"x"', "k", 60.0, tags=tags) == (None, False)
    await engine.events.wait_for(lambda: len(engine.events.pubs(CH)) == 1)
    await engine.barrier()
    assert engine.events.pubs(CH) == [Publication(b'"x"', 0, None, tags)]
    assert (await engine.broker.history(CH, options=HISTORY)).top.offset == 0


async def test_publish_once_forgets_a_key_after_its_ttl(engine: Harness) -> None:
    first = await engine.broker.publish_once(CH, b"1", "k", engine.ttl, history=HISTORY)
    await engine.advance(engine.ttl * 1.5)
    second = await engine.broker.publish_once(CH, b"2", "k", engine.ttl, history=HISTORY)
    assert first[0] is not None and second[0] is not None
    assert second == (StreamPosition(2, first[0].epoch), True)


async def test_publish_once_concurrent_repeats_publish_once(engine: Harness) -> None:
    await engine.broker.subscribe(CH)
    results = await asyncio.gather(
        *(engine.broker.publish_once(CH, b'"x"', "k", 60.0, history=HISTORY) for _ in range(20))
    )
    assert sum(published for _, published in results) == 1
    assert {position for position, _ in results} == {results[0][0]}
    await engine.events.wait_for(lambda: len(engine.events.pubs(CH)) == 1)
    await engine.barrier()
    assert len(engine.events.pubs(CH)) == 1


async def test_publish_many_is_like_consecutive_calls(engine: Harness) -> None:
    await engine.broker.subscribe(CH)
    await engine.broker.subscribe(OTHER)
    tags = {"kind": "signed"}
    items = [
        PublishItem(CH, b"1", history=HISTORY, key="a", ttl=60.0),
        PublishItem(OTHER, b"2", tags=tags),  # no history, no key
        PublishItem(CH, b"3", history=HISTORY),  # no key
        PublishItem(CH, b"4", history=HISTORY, key="a", ttl=60.0),  # repeat within
        PublishItem(OTHER, b"5", key="b", ttl=60.0),  # no history, keyed
        PublishItem(OTHER, b"6", key="b", ttl=60.0),  # repeat
    ]
    results = await engine.broker.publish_many(items)
    epoch = results[0][0].epoch if results[0][0] else ""
    assert results == [
        (StreamPosition(1, epoch), True),
        (None, True),
        (StreamPosition(2, epoch), True),
        (StreamPosition(1, epoch), False),
        (None, True),
        (None, False),
    ]
    await engine.events.wait_for(lambda: len(engine.events.of("pub")) == 4)
    await engine.barrier()
    # Ordered per channel (channels may travel on different links).
    assert [p.data for p in engine.events.pubs(CH)] == [b"1", b"3"]
    assert [p.data for p in engine.events.pubs(OTHER)] == [b"2", b"5"]
    assert engine.events.pubs(OTHER)[0].tags == tags
    assert await engine.broker.publish_many([]) == []
