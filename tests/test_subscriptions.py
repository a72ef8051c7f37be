"""The subscription owner (realtime_server/subscriptions.py) under races, at unit level.

Sessions are real :class:`Session` objects on a real node with the embedded engine; only
their socket is a stand-in that records frames, and the broker can be held at its
``subscribe``, ``unsubscribe`` or history read to force an interleaving. After each
scenario the owner's invariant is checked: for every channel, the broker is subscribed
on this node exactly when some session on it holds or is setting up the channel, and
nothing is left when every session is gone.

Each scenario also runs against deliberately broken variants of the owner (no
re-check under the channel's lock, an abort that forgets the broker), and must catch
them: the tests can fail.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from typing import Any

import orjson
import pytest

from realtime_server import codes
from realtime_server.app import build_verifier
from realtime_server.auth.revocation import MemoryRevocationStore
from realtime_server.channels.engine import HistoryQuery, HistoryResult
from realtime_server.channels.memory import MemoryBroker, MemoryEngine
from realtime_server.errors import BackendUnavailable
from realtime_server.node import Node
from realtime_server.protocol import Command
from realtime_server.session import Session, SessionState
from realtime_server.subscriptions import Request, Subscriptions

from .helpers import MS, make_settings, sub_token, token

CHANNEL = "document:1"


class Gate:
    """Holds a coroutine at a point until released; tells when one is waiting."""

    def __init__(self) -> None:
        self.closed = False
        self.reached = asyncio.Event()
        self._open = asyncio.Event()

    def close(self) -> None:
        self.closed = True
        self.reached.clear()
        self._open.clear()

    def open(self) -> None:
        self.closed = False
        self._open.set()

    async def passing(self) -> None:
        if self.closed:
            self.reached.set()
            await self._open.wait()


class GatedBroker(MemoryBroker):
    """The embedded broker, with gates in front of subscribe, unsubscribe and history,
    and optional random yields (to shuffle interleavings)."""

    instant_subscribe = False  # its subscribe waits at a gate: concurrent ones overlap

    def __init__(self) -> None:
        super().__init__()
        self.subscribing = Gate()
        self.unsubscribing = Gate()
        self.reading = Gate()
        self.fail_reads = False
        self.fail_subscribes: set[str] = set()
        self.shuffle: random.Random | None = None

    async def _yield(self) -> None:
        if self.shuffle is not None:
            for _ in range(self.shuffle.randint(0, 3)):
                await asyncio.sleep(0)

    @property
    def channels(self) -> set[str]:
        return set(self._channels)

    async def subscribe(self, channel: str) -> None:
        await self.subscribing.passing()
        await self._yield()
        if channel in self.fail_subscribes:
            raise BackendUnavailable("subscribe failed")
        await super().subscribe(channel)

    async def unsubscribe(self, channel: str) -> None:
        await self.unsubscribing.passing()
        await self._yield()
        await super().unsubscribe(channel)

    async def history_many(self, queries: Sequence[HistoryQuery]) -> list[HistoryResult]:
        await self.reading.passing()
        await self._yield()
        if self.fail_reads:
            raise BackendUnavailable("history read failed")
        return await super().history_many(queries)


class Unlocked(Subscriptions):
    """Broken: checks and updates the broker reference without the channel's lock."""

    async def _acquire(self, channel: str) -> None:
        if channel not in self._held and self._hub.has_local(channel):
            await self._broker.subscribe(channel)
            self._held.add(channel)

    async def _release(self, channel: str) -> None:
        if channel in self._held and not self._hub.has_local(channel):
            self._held.discard(channel)
            await self._broker.unsubscribe(channel)


class Forgetful(Subscriptions):
    """Broken: an aborted setup leaves the session's channels pending and the broker
    held."""

    async def _abort(self, s: Session, requests: Sequence[Request]) -> None:
        return None


class _Transport:
    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.frames.append(data)

    def get_write_buffer_size(self) -> int:
        return 0


class FakeConnection:
    """The little of a websockets connection a session touches."""

    remote_address = ("127.0.0.1", 40000)

    def __init__(self) -> None:
        self.transport = _Transport()
        self.writable = True
        self.close_code: int | None = None

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.close_code = code


def messages(node: Node, conn: FakeConnection) -> list[dict[str, Any]]:
    """Every JSON message written to the connection (what the writer holds is written
    first; frames unwrapped, lines split)."""
    node.writer.turn()
    out = []
    for frame in conn.transport.frames:
        length = frame[1] & 0x7F
        start = 2 if length < 126 else 4 if length == 126 else 10
        for line in frame[start:].split(b"\n"):
            out.append(orjson.loads(line))
    return out


def build(variant: type[Subscriptions] = Subscriptions) -> tuple[Node, GatedBroker]:
    settings = make_settings(EVENTS_ENABLED="false")
    engine = MemoryEngine()
    broker = GatedBroker()
    engine.broker = broker
    node = Node(settings, engine, MemoryRevocationStore(3600), build_verifier(settings))
    if variant is not Subscriptions:
        node.subscriptions.__class__ = variant  # same state, broken behaviour
    return node, broker


async def connected(node: Node, user: str) -> tuple[Session, FakeConnection]:
    conn = FakeConnection()
    session = Session(node, conn)  # type: ignore[arg-type]
    await session.handle(Command(1, "connect", {"token": token(user)}))
    assert session.state is SessionState.CONNECTED, messages(node, conn)
    return session, conn


async def subscribe(session: Session, channel: str = CHANNEL) -> None:
    params = {"channel": channel, "token": sub_token(session.user, channel)}
    await session.handle(Command(2, "subscribe", params))


async def unsubscribe(session: Session, channel: str = CHANNEL) -> None:
    await session.handle(Command(3, "unsubscribe", {"channel": channel}))


async def ended(node: Node, session: Session) -> None:
    session.close(codes.CLOSE_SHUTDOWN)
    await node.session_ended(session)


def violations(node: Node, broker: GatedBroker, channels: Sequence[str]) -> list[str]:
    """Where the owner's invariant does not hold."""
    found = []
    held = node.subscriptions.held
    for channel in channels:
        local = node.hub.has_local(channel)
        if (channel in held) != local or (channel in broker.channels) != local:
            found.append(
                f"{channel}: local={local} held={channel in held} "
                f"broker={channel in broker.channels}"
            )
    return found


async def settled(node: Node) -> None:
    """Let background settling (leave, broker release) finish."""
    for _ in range(50):
        if not node._tasks:
            return
        await asyncio.gather(*list(node._tasks), return_exceptions=True)


# --- scenarios -------------------------------------------------------------------------


async def first_subscribe_during_last_unsubscribe(variant: type[Subscriptions]) -> list[str]:
    """A's unsubscribe releases the broker (held at ``unsubscribe``) while B's
    subscribe begins: B must end up live with the broker subscribed."""
    node, broker = build(variant)
    a, _ = await connected(node, "a")
    b, b_conn = await connected(node, "b")
    await subscribe(a)
    broker.unsubscribing.close()
    leaving = asyncio.create_task(unsubscribe(a))
    await asyncio.wait_for(broker.unsubscribing.reached.wait(), 2000 * MS)
    joining = asyncio.create_task(subscribe(b))
    for _ in range(5):
        await asyncio.sleep(0)
    broker.unsubscribing.open()
    await asyncio.wait_for(asyncio.gather(leaving, joining), 2000 * MS)
    found = violations(node, broker, [CHANNEL])
    await node.ops.publish(CHANNEL, b'{"n":1}')
    if not any(m.get("push", {}).get("pub") for m in messages(node, b_conn)):
        found.append("B received nothing")
    return found


async def disconnect_while_setting_up(variant: type[Subscriptions]) -> list[str]:
    """The session closes while its broker subscribe is pending: nothing is left."""
    node, broker = build(variant)
    s, conn = await connected(node, "a")
    broker.subscribing.close()
    task = asyncio.create_task(subscribe(s))
    await asyncio.wait_for(broker.subscribing.reached.wait(), 2000 * MS)
    await ended(node, s)
    broker.subscribing.open()
    await asyncio.wait_for(task, 2000 * MS)
    await settled(node)
    found = violations(node, broker, [CHANNEL])
    if any(m.get("id") == 2 for m in messages(node, conn)):
        found.append("a closed session was answered")
    if s.pending:
        found.append(f"pending left: {set(s.pending)}")
    return found


async def failure_between_pending_and_live(variant: type[Subscriptions]) -> list[str]:
    """The history read fails after the broker subscribed: error 100, nothing left."""
    node, broker = build(variant)
    s, conn = await connected(node, "a")
    broker.fail_reads = True
    await subscribe(s)
    found = violations(node, broker, [CHANNEL])
    replies = [m for m in messages(node, conn) if m.get("id") == 2]
    errors = [(r["error"]["code"], r["error"].get("temporary")) for r in replies if "error" in r]
    if len(replies) != 1 or errors != [(100, True)]:
        found.append(f"replies: {replies}")
    if s.pending or CHANNEL in s.subs:
        found.append("the channel is still pending or subscribed")
    broker.fail_reads = False
    await subscribe(s)  # and the channel can be subscribed again
    if CHANNEL not in s.subs:
        found.append("could not subscribe again")
    return found


async def churn(variant: type[Subscriptions], seed: int) -> list[str]:
    """Many sessions subscribing, unsubscribing and closing on a few channels at once,
    with the broker's steps shuffled; then everyone leaves."""
    node, broker = build(variant)
    broker.shuffle = random.Random(seed)
    rng = random.Random(seed + 1)
    channels = [f"document:{i}" for i in range(3)]
    sessions = [(await connected(node, f"u{i}"))[0] for i in range(12)]

    async def act(s: Session) -> None:
        for _ in range(6):
            channel = rng.choice(channels)
            if channel in s.subs:
                await unsubscribe(s, channel)
            else:
                await subscribe(s, channel)

    await asyncio.wait_for(asyncio.gather(*(act(s) for s in sessions)), 5000 * MS)
    await settled(node)
    found = violations(node, broker, channels)
    await asyncio.gather(*(ended(node, s) for s in sessions))
    await settled(node)
    found += violations(node, broker, channels)
    if node.subscriptions.held or broker.channels or node.hub.num_channels:
        found.append("left behind after every session ended")
    return found


SCENARIOS = [
    first_subscribe_during_last_unsubscribe,
    disconnect_while_setting_up,
    failure_between_pending_and_live,
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda f: f.__name__)
async def test_owner_keeps_its_invariant(scenario: Any) -> None:
    assert await scenario(Subscriptions) == []


@pytest.mark.parametrize(
    ("scenario", "variant"),
    [
        (first_subscribe_during_last_unsubscribe, Unlocked),
        (disconnect_while_setting_up, Forgetful),
        (failure_between_pending_and_live, Forgetful),
    ],
    ids=["unlocked", "forgetful-disconnect", "forgetful-failure"],
)
async def test_scenarios_catch_a_broken_owner(scenario: Any, variant: type[Subscriptions]) -> None:
    assert await scenario(variant) != []


async def test_churn_leaves_nothing() -> None:
    for seed in range(5):
        assert await churn(Subscriptions, seed) == [], seed


async def test_churn_catches_an_unlocked_owner() -> None:
    broken = [seed for seed in range(10) if await churn(Unlocked, seed)]
    assert broken, "the churn never caught an owner without per-channel locking"


async def test_a_failed_broker_subscribe_among_a_connects_channels_undoes_them_all() -> None:
    """Two channels subscribed concurrently at connect (the user's and a document
    granted by the token), the document's broker subscribe fails: the connect is refused
    as temporary (100), and neither channel is left held, pending or subscribed."""
    node, broker = build()
    broker.fail_subscribes.add(CHANNEL)
    conn = FakeConnection()
    session = Session(node, conn)  # type: ignore[arg-type]
    await session.handle(Command(1, "connect", {"token": token("a", channels=[CHANNEL])}))
    assert session.state is not SessionState.CONNECTED
    replies = [m for m in messages(node, conn) if m.get("id") == 1]
    assert [r.get("error", {}).get("code") for r in replies] == [codes.INTERNAL.code]
    await settled(node)
    assert violations(node, broker, ["user:a", CHANNEL]) == []
    assert broker.channels == set()
    assert not session.subs and not session.pending
