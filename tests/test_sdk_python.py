"""End-to-end tests with the real centrifuge-python SDK (PyPI ``centrifuge-python`` 0.7.0).

The SDK client runs in the test's event loop, next to the server. Its events are
recorded by handler subclasses; the tests await them (bounded), never sleep to
synchronise. A gate in ``on_connecting`` holds a reconnect (the SDK awaits the handler
before scheduling it), so that publishing "while the client is away" is deterministic.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from centrifuge import (
    Client,
    ClientEventHandler,
    ClientState,
    ConnectedContext,
    ConnectingContext,
    DisconnectedContext,
    ErrorContext,
    JoinContext,
    LeaveContext,
    PublicationContext,
    ServerJoinContext,
    ServerLeaveContext,
    ServerPublicationContext,
    ServerSubscribedContext,
    ServerSubscribingContext,
    ServerUnsubscribedContext,
    SubscribedContext,
    SubscribingContext,
    Subscription,
    SubscriptionErrorContext,
    SubscriptionEventHandler,
    SubscriptionState,
    UnsubscribedContext,
)
from centrifuge.exceptions import ReplyError

from realtime_server.app import Running

from .conftest import StartServer, ws_url
from .helpers import MS, QUIET, api, api_answer, claims, quiet_period, sub_token, token
from .jsproc import Gate
from .redis_server import redis_server

FORGED_SECRET = "not-the-server-secret-0123456789abcdef"
WAIT = 3000 * MS
"""Default bound for one expected event."""
"""Observation window for "nothing more happens" (no reconnect after a terminal close)."""


@dataclass
class Record:
    """One SDK event: ``kind`` is the handler name without ``on_`` (``sub.`` prefixed for
    Subscription events), ``channel`` where the event has one."""

    kind: str
    channel: str | None
    ctx: Any
    at: float


class Recorder:
    """The events of one client and its subscriptions, in order."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        self._consumed: set[int] = set()
        self._changed = asyncio.Event()

    def record(self, kind: str, ctx: Any, channel: str | None = None) -> None:
        if channel is None:
            channel = getattr(ctx, "channel", None)
        self.records.append(Record(kind, channel, ctx, time.monotonic()))
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def describe(self) -> str:
        return "\n  ".join(f"{r.kind} {r.channel or ''} {r.ctx!r}" for r in self.records)

    @staticmethod
    def _matches(
        r: Record, kind: str, channel: str | None, where: Callable[[Any], bool] | None
    ) -> bool:
        return (
            r.kind == kind
            and (channel is None or r.channel == channel)
            and (where is None or where(r.ctx))
        )

    async def expect(
        self,
        kind: str,
        channel: str | None = None,
        where: Callable[[Any], bool] | None = None,
        timeout: float = WAIT,
    ) -> Any:
        """The context of the first not yet expected matching event (waiting for it)."""
        scanned = 0
        try:
            async with asyncio.timeout(timeout):
                while True:
                    changed = self._changed
                    for index in range(scanned, len(self.records)):
                        r = self.records[index]
                        if index not in self._consumed and self._matches(r, kind, channel, where):
                            self._consumed.add(index)
                            return r.ctx
                    scanned = len(self.records)
                    await changed.wait()
        except TimeoutError:
            raise AssertionError(
                f"timed out waiting for {kind} {channel or ''}\n  {self.describe()}"
            ) from None

    def all(self, kind: str, channel: str | None = None) -> list[Any]:
        return [r.ctx for r in self.records if self._matches(r, kind, channel, None)]

    def kinds_after(self, ctx: Any) -> list[str]:
        """Kinds of the events recorded after the one with context ``ctx``."""
        index = next(i for i, r in enumerate(self.records) if r.ctx is ctx)
        return [r.kind for r in self.records[index + 1 :]]


class ClientEvents(ClientEventHandler):
    def __init__(self, recorder: Recorder, gate: Gate | None = None) -> None:
        self.rec = recorder
        self.gate = gate

    async def on_connecting(self, ctx: ConnectingContext) -> None:
        self.rec.record("connecting", ctx)
        if self.gate is not None:
            await self.gate.wait()

    async def on_connected(self, ctx: ConnectedContext) -> None:
        self.rec.record("connected", ctx)

    async def on_disconnected(self, ctx: DisconnectedContext) -> None:
        self.rec.record("disconnected", ctx)

    async def on_error(self, ctx: ErrorContext) -> None:
        self.rec.record("error", ctx)

    async def on_subscribed(self, ctx: ServerSubscribedContext) -> None:
        self.rec.record("subscribed", ctx)

    async def on_subscribing(self, ctx: ServerSubscribingContext) -> None:
        self.rec.record("subscribing", ctx)

    async def on_unsubscribed(self, ctx: ServerUnsubscribedContext) -> None:
        self.rec.record("unsubscribed", ctx)

    async def on_publication(self, ctx: ServerPublicationContext) -> None:
        self.rec.record("publication", ctx)

    async def on_join(self, ctx: ServerJoinContext) -> None:
        self.rec.record("join", ctx)

    async def on_leave(self, ctx: ServerLeaveContext) -> None:
        self.rec.record("leave", ctx)


class SubEvents(SubscriptionEventHandler):
    def __init__(self, recorder: Recorder, channel: str) -> None:
        self.rec = recorder
        self.channel = channel

    def _record(self, kind: str, ctx: Any) -> None:
        self.rec.record(f"sub.{kind}", ctx, self.channel)

    async def on_subscribing(self, ctx: SubscribingContext) -> None:
        self._record("subscribing", ctx)

    async def on_subscribed(self, ctx: SubscribedContext) -> None:
        self._record("subscribed", ctx)

    async def on_unsubscribed(self, ctx: UnsubscribedContext) -> None:
        self._record("unsubscribed", ctx)

    async def on_publication(self, ctx: PublicationContext) -> None:
        self._record("publication", ctx)

    async def on_join(self, ctx: JoinContext) -> None:
        self._record("join", ctx)

    async def on_leave(self, ctx: LeaveContext) -> None:
        self._record("leave", ctx)

    async def on_error(self, ctx: SubscriptionErrorContext) -> None:
        self._record("error", ctx)


class SDKClient:
    """A centrifuge-python Client with its recorder."""

    def __init__(self, client: Client, rec: Recorder) -> None:
        self.client = client
        self.rec = rec

    def subscription(
        self,
        channel: str,
        *,
        token: str = "",
        get_token: Callable[[str], Awaitable[str]] | None = None,
        **options: Any,
    ) -> Subscription:
        return self.client.new_subscription(
            channel,
            events=SubEvents(self.rec, channel),
            token=token,
            get_token=get_token,
            **options,
        )


@asynccontextmanager
async def sdk_client(
    server: Running,
    tok: str = "",
    *,
    get_token: Callable[[], Awaitable[str]] | None = None,
    gate: Gate | None = None,
    **options: Any,
) -> AsyncIterator[SDKClient]:
    """A centrifuge-python client for ``server`` (not connected yet); disconnected and
    its background tasks finished on leaving."""
    rec = Recorder()
    client = Client(
        ws_url(server),
        events=ClientEvents(rec, gate),
        token=tok,
        get_token=get_token,
        proxy=None,
        min_reconnect_delay=0.1,
        max_reconnect_delay=1.0,
        **options,
    )
    try:
        yield SDKClient(client, rec)
    finally:
        if gate is not None:
            gate.open()
        await client.disconnect()
        # Let the SDK's close of its socket finish before the server goes away.
        pending = [t for t in client._background_tasks if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=2000 * MS)


# --- 1. connect, server-side user channel ------------------------------------------------


async def test_connect_and_user_channel_publication(server: Running) -> None:
    async with sdk_client(server, token("alice")) as c:
        await c.client.connect()
        connected = await c.rec.expect("connected")
        assert connected.client in server.node.registry
        assert c.client.state is ClientState.CONNECTED
        sub = await c.rec.expect("subscribed", "user:alice")
        assert sub.recoverable is True
        assert sub.stream_position is not None and sub.stream_position.offset == 0

        result = await api(server, "publish", {"channel": "user:alice", "data": {"n": 1}})
        pub = await c.rec.expect("publication", "user:alice")
        assert pub.pub.data == {"n": 1}
        assert pub.pub.offset == result["offset"] == 1

        await server.node.ops.publish("user:alice", b'{"n":2,"text":"caf\xc3\xa9"}')
        pub = await c.rec.expect("publication", "user:alice")
        assert pub.pub.data == {"n": 2, "text": "café"}
        assert pub.pub.offset == 2


# --- 2. document subscription, presence, join/leave --------------------------------------


async def test_document_subscription_presence_join_leave(server: Running) -> None:
    doc = "document:contract-42"
    requested: list[str] = []

    async def alice_sub_token(channel: str) -> str:
        requested.append(channel)
        return sub_token("alice", channel, info={"role": "signer"})

    async with sdk_client(server, token("alice", info={"name": "Alice"})) as a:
        await a.client.connect()
        alice_id = (await a.rec.expect("connected")).client
        a_doc = a.subscription(doc, get_token=alice_sub_token, join_leave=True)
        await a_doc.subscribe()
        subscribed = await a.rec.expect("sub.subscribed", doc)
        assert subscribed.recoverable is True
        assert requested == [doc]

        result = await api(server, "publish", {"channel": doc, "data": {"status": "signed"}})
        pub = await a.rec.expect("sub.publication", doc)
        assert pub.pub.data == {"status": "signed"}
        assert pub.pub.offset == result["offset"]

        presence = await a_doc.presence()
        assert set(presence.clients) == {alice_id}
        me = presence.clients[alice_id]
        assert (me.user, me.client) == ("alice", alice_id)
        assert me.conn_info == {"name": "Alice"}
        assert me.chan_info == {"role": "signer"}

        async with sdk_client(server, token("bob", info={"name": "Bob"})) as b:
            await b.client.connect()
            bob_id = (await b.rec.expect("connected")).client
            b_doc = b.subscription(doc, token=sub_token("bob", doc))
            await b_doc.subscribe()
            await b.rec.expect("sub.subscribed", doc)

            # Alice saw her own join, then Bob's.
            own = await a.rec.expect("sub.join", doc)
            assert own.info.client == alice_id
            join = await a.rec.expect("sub.join", doc)
            assert (join.info.user, join.info.client) == ("bob", bob_id)
            assert join.info.conn_info == {"name": "Bob"}

            presence = await b_doc.presence()
            assert set(presence.clients) == {alice_id, bob_id}
            assert {i.user for i in presence.clients.values()} == {"alice", "bob"}
            stats = await b_doc.presence_stats()
            assert (stats.num_clients, stats.num_users) == (2, 2)

            await api(server, "publish", {"channel": doc, "data": {"status": "archived"}})
            for rec in (a.rec, b.rec):
                pub = await rec.expect("sub.publication", doc)
                assert pub.pub.data == {"status": "archived"}

        leave = await a.rec.expect("sub.leave", doc)
        assert (leave.info.user, leave.info.client) == ("bob", bob_id)
        presence = await a_doc.presence()
        assert set(presence.clients) == {alice_id}


async def test_channels_claim_subscribes_document_server_side(server: Running) -> None:
    doc = "document:board-1"
    # user:bob is not alice's: the server skips it (never subscribes it).
    async with sdk_client(server, token("alice", channels=[doc, "user:bob"])) as a:
        await a.client.connect()
        alice_id = (await a.rec.expect("connected")).client
        subscribed = [await a.rec.expect("subscribed") for _ in range(2)]
        assert {s.channel for s in subscribed} == {"user:alice", doc}

        result = await api(server, "publish", {"channel": doc, "data": {"v": 1}})
        pub = await a.rec.expect("publication", doc)
        assert (pub.pub.offset, pub.pub.data) == (result["offset"], {"v": 1})

        presence = await a.client.presence(doc)
        assert set(presence.clients) == {alice_id}

        async with sdk_client(server, token("bob", channels=[doc])) as b:
            await b.client.connect()
            bob_id = (await b.rec.expect("connected")).client
            await b.rec.expect("subscribed", doc)
            join = await a.rec.expect("join", doc, where=lambda e: e.info.user == "bob")
            assert join.info.client == bob_id
        leave = await a.rec.expect("leave", doc)
        assert leave.info.client == bob_id
        assert not a.rec.all("subscribed", "user:bob")


# --- 3. refusals ---------------------------------------------------------------------------


async def test_refused_subscriptions(server: Running) -> None:
    async with sdk_client(server, token("alice")) as c:
        await c.client.connect()
        connected = await c.rec.expect("connected")

        other = c.subscription("user:bob")
        await other.subscribe()
        refused = await c.rec.expect("sub.unsubscribed", "user:bob")
        assert refused.code == 103
        assert other.state is SubscriptionState.UNSUBSCRIBED

        secret = c.subscription("document:secret")
        await secret.subscribe()
        refused = await c.rec.expect("sub.unsubscribed", "document:secret")
        assert refused.code == 103

        forged = c.subscription(
            "document:forged",
            token=sub_token("alice", "document:forged", secret=FORGED_SECRET),
        )
        await forged.subscribe()
        refused = await c.rec.expect("sub.unsubscribed", "document:forged")
        assert refused.code == 103

        assert c.client.state is ClientState.CONNECTED
        after = c.rec.kinds_after(connected)
        assert "connecting" not in after and "disconnected" not in after


# --- 4. forged and expired connection tokens -----------------------------------------------


async def test_forged_token_is_terminal(server: Running) -> None:
    async with sdk_client(server, token("alice", secret=FORGED_SECRET)) as c:
        await c.client.connect()
        disconnected = await c.rec.expect("disconnected")
        assert disconnected.code == 3500
        assert disconnected.reason == "invalid token"
        await quiet_period()
        assert c.client.state is ClientState.DISCONNECTED
        after = c.rec.kinds_after(disconnected)
        assert "connecting" not in after and "connected" not in after
        assert not c.rec.all("connected")
    assert server.node.metrics.connections_total == 0


async def test_expired_token_refetched_with_get_token(server: Running) -> None:
    now = int(time.time())
    expired = token("alice", exp=now - 60, iat=now - 120)
    fresh: list[str] = []

    async def get_token() -> str:
        fresh.append(token("alice"))
        return fresh[-1]

    async with sdk_client(server, expired, get_token=get_token) as c:
        await c.client.connect()
        error = await c.rec.expect("error", where=lambda e: isinstance(e.error, ReplyError))
        assert error.error.code == 109
        connected = await c.rec.expect("connected")
        await c.rec.expect("subscribed", "user:alice")
        assert len(fresh) == 1
        assert server.node.registry.get(connected.client).token_jti == claims(fresh[0])["jti"]
        assert not c.rec.all("disconnected")


# --- 5. connection token refresh ---------------------------------------------------------


async def test_refresh_keeps_connection_past_expiry(start_server: StartServer) -> None:
    grace = 1.0
    server = await start_server(EXPIRY_GRACE=grace)
    first = token("alice", ttl=2)
    issued: list[str] = []
    refreshed = asyncio.Event()

    async def get_token() -> str:
        issued.append(token("alice", ttl=2))
        refreshed.set()
        return issued[-1]

    async with sdk_client(server, first, get_token=get_token) as c:
        await c.client.connect()
        connected = await c.rec.expect("connected")
        async with asyncio.timeout(4000 * MS):
            await refreshed.wait()
        # Past the first token's expiry plus the grace period: without refresh the server
        # would have closed the connection with 3005 by now.
        await asyncio.sleep(max(0.0, claims(first)["exp"] + grace + QUIET - time.time()))
        after = c.rec.kinds_after(connected)
        assert "connecting" not in after and "disconnected" not in after
        assert c.client.state is ClientState.CONNECTED
        session = server.node.registry.get(connected.client)
        assert session.expires_at is not None and session.expires_at > claims(first)["exp"]
        assert session.token_jti in {claims(t)["jti"] for t in issued}

        await server.node.ops.publish("user:alice", b'{"alive":true}')
        pub = await c.rec.expect("publication", "user:alice")
        assert pub.pub.data == {"alive": True}


async def test_unrefreshed_connection_closed_3005_then_reconnects(
    start_server: StartServer,
) -> None:
    grace = 1.5  # past the token verifier's 1 s leeway: the old token is refused (109)
    server = await start_server(EXPIRY_GRACE=grace)
    first = token("alice", ttl=2)
    held = asyncio.Event()
    calls = 0

    async def get_token() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            await held.wait()  # the refresh never gets its token in time
        return token("alice")

    try:
        async with sdk_client(server, first, get_token=get_token) as c:
            await c.client.connect()
            await c.rec.expect("connected")
            closed = await c.rec.expect(
                "connecting", where=lambda e: e.code != 0, timeout=5000 * MS
            )
            assert (closed.code, closed.reason) == (3005, "connection expired")
            assert calls == 1
            assert time.time() >= claims(first)["exp"] + grace - 0.1
            error = await c.rec.expect("error", where=lambda e: isinstance(e.error, ReplyError))
            assert error.error.code == 109
            connected = await c.rec.expect("connected")
            await c.rec.expect("subscribed", "user:alice")
            assert calls == 2
            assert connected.client in server.node.registry
            assert not c.rec.all("disconnected")
            held.set()  # the stale refresh ends (its connection is gone: token unused)
    finally:
        held.set()


# --- 6. revocation -----------------------------------------------------------------------


async def test_revoked_token_closes_4501_without_reconnect(server: Running) -> None:
    tok = token("alice")
    async with sdk_client(server, tok) as c:
        await c.client.connect()
        await c.rec.expect("connected")
        assert server.node.metrics.connections_total == 1

        jti, exp = claims(tok)["jti"], claims(tok)["exp"]
        await api(server, "revoke_token", {"uid": jti, "expire_at": exp})
        disconnected = await c.rec.expect("disconnected")
        assert (disconnected.code, disconnected.reason) == (4501, "token revoked")
        await quiet_period()
        assert c.client.state is ClientState.DISCONNECTED
        after = c.rec.kinds_after(disconnected)
        assert "connecting" not in after and "connected" not in after
    assert server.node.metrics.connections_total == 1
    assert server.node.registry.user_connections("alice") == 0


# --- 7. reconnect after 3001 and recovery -------------------------------------------------


async def test_reconnect_after_3001_recovers_missed_publications(server: Running) -> None:
    user_ch = "user:alice"
    doc = "document:deal-7"
    gate = Gate()
    sub_tokens = 0

    async def alice_sub_token(channel: str) -> str:
        nonlocal sub_tokens
        sub_tokens += 1
        return sub_token("alice", channel)

    async def publish_both(n: int) -> None:
        for channel in (user_ch, doc):
            result = await api(server, "publish", {"channel": channel, "data": {"n": n}})
            assert result["offset"] == n

    async with sdk_client(server, token("alice"), gate=gate) as c:
        await c.client.connect()
        await c.rec.expect("connecting", where=lambda e: e.code == 0)
        await c.rec.expect("connected")
        first_user = await c.rec.expect("subscribed", user_ch)
        d = c.subscription(doc, get_token=alice_sub_token, recoverable=True)
        await d.subscribe()
        first_doc = await c.rec.expect("sub.subscribed", doc)
        assert first_doc.recoverable is True

        for n in (1, 2):
            await publish_both(n)
            pub = await c.rec.expect("publication", user_ch)
            assert (pub.pub.offset, pub.pub.data) == (n, {"n": n})
            pub = await c.rec.expect("sub.publication", doc)
            assert (pub.pub.offset, pub.pub.data) == (n, {"n": n})

        # Away: the server closes with 3001; the reconnect waits at the gate while the
        # backend publishes.
        gate.close()
        await api(
            server,
            "disconnect",
            {"user": "alice", "disconnect": {"code": 3001, "reason": "shutdown"}},
        )
        closed = await c.rec.expect("connecting")
        assert (closed.code, closed.reason) == (3001, "shutdown")
        assert server.node.registry.user_connections("alice") == 0
        for n in (3, 4, 5):
            await publish_both(n)
        gate.open()

        await c.rec.expect("connected")
        user_sub = await c.rec.expect("subscribed", user_ch)
        assert user_sub.was_recovering is True
        assert user_sub.recovered is True
        assert user_sub.stream_position.epoch == first_user.stream_position.epoch
        doc_sub = await c.rec.expect("sub.subscribed", doc)
        assert doc_sub.was_recovering is True
        assert doc_sub.recovered is True
        assert doc_sub.stream_position.epoch == first_doc.stream_position.epoch
        for n in (3, 4, 5):
            pub = await c.rec.expect("publication", user_ch)
            assert (pub.pub.offset, pub.pub.data) == (n, {"n": n})
            pub = await c.rec.expect("sub.publication", doc)
            assert (pub.pub.offset, pub.pub.data) == (n, {"n": n})

        await publish_both(6)
        pub = await c.rec.expect("publication", user_ch)
        assert (pub.pub.offset, pub.pub.data) == (6, {"n": 6})
        pub = await c.rec.expect("sub.publication", doc)
        assert (pub.pub.offset, pub.pub.data) == (6, {"n": 6})

        # Exactly once, in order, on both channels.
        for kind, channel in (("publication", user_ch), ("sub.publication", doc)):
            got = [(p.pub.offset, p.pub.data["n"]) for p in c.rec.all(kind, channel)]
            assert got == [(n, n) for n in range(1, 7)], got
        assert not c.rec.all("disconnected")
        assert sub_tokens == 1


# --- 8. ping / pong -------------------------------------------------------------------------


async def test_ping_pong_keeps_idle_connection(start_server: StartServer) -> None:
    server = await start_server(PING_INTERVAL=1, PONG_TIMEOUT=min(0.9, 500 * MS))
    # The Python SDK counts only pings as proof of life: with a 1 s ping and 1 s of
    # allowed delay it drops a connection that sees no ping for 2 s. The server drops a
    # connection that does not answer a ping within 0.5 s.
    async with sdk_client(server, token("alice"), max_server_ping_delay=1.0) as c:
        await c.client.connect()
        connected = await c.rec.expect("connected")
        await asyncio.sleep(3500 * MS)
        after = c.rec.kinds_after(connected)
        assert "connecting" not in after and "disconnected" not in after
        assert c.client.state is ClientState.CONNECTED
        assert connected.client in server.node.registry
        await server.node.ops.publish("user:alice", b'{"idle":false}')
        pub = await c.rec.expect("publication", "user:alice")
        assert pub.pub.data == {"idle": False}


# --- 7. a hung Redis --------------------------------------------------------------------------


async def test_frozen_redis_connects_are_retried_and_subscribers_stay(
    start_server: StartServer,
) -> None:
    """Redis frozen (SIGSTOP): a connecting client is refused with 100 (temporary) and
    the SDK keeps retrying; a connected one stays connected. After the thaw the first
    connects, and a publication reaches both."""
    async with redis_server() as redis_proc:
        assert redis_proc.proc is not None
        server = await start_server(REDIS_URL=redis_proc.url, REDIS_TIMEOUT=0.5)
        doc = "document:hung"
        async with sdk_client(server, token("alice", channels=[doc])) as alice:
            await alice.client.connect()
            await alice.rec.expect("connected")
            await alice.rec.expect("subscribed", doc)
            redis_proc.proc.send_signal(signal.SIGSTOP)
            frozen_at = time.monotonic()
            try:
                async with sdk_client(server, token("bob", channels=[doc])) as bob:
                    await bob.client.connect()
                    # Refused, retried, refused again..., past REDIS_TIMEOUT (the links
                    # are rebuilt): the SDK never gives up on a temporary error.
                    while time.monotonic() - frozen_at < 1.0:
                        error = await bob.rec.expect("error", timeout=5000 * MS)
                        assert isinstance(error.error, ReplyError) and error.error.code == 100
                        assert error.error.temporary
                    redis_proc.proc.send_signal(signal.SIGCONT)
                    await bob.rec.expect("connected", timeout=10000 * MS)
                    await bob.rec.expect("subscribed", doc)
                    params = {"channel": doc, "data": {"v": 1}, "idempotency_key": "hung-1"}
                    async with asyncio.timeout(10000 * MS):  # the links come back
                        while "error" in (reply := await api_answer(server, "publish", params)):
                            await asyncio.sleep(0.05)
                    for client in (alice, bob):
                        pub = await client.rec.expect("publication", doc)
                        assert pub.pub.data == {"v": 1}
                        assert pub.pub.offset == reply["result"]["offset"]
                    assert not alice.rec.all("disconnected")
            finally:
                redis_proc.proc.send_signal(signal.SIGCONT)
