"""End-to-end tests with the real centrifuge-js SDK (npm ``centrifuge`` 5.x over ``ws``).

Each test starts a server in its own event loop and one or more Node processes running
``tests/js/client.mjs``, a centrifuge-js client remote-controlled over stdio: the test
sends JSON commands on stdin and reads the SDK's events as JSON lines on stdout. Token
requests (``getToken``) and the connect gate (``getData``, called before every
connection attempt) are answered from here, so that publishing "while the client is
away" is ordered by events, never by sleeping. Every Node process has a hard deadline of
its own, and is killed by the driver when a test fails.

Needs Node.js and ``tests/js/node_modules`` (``npm ci --prefix tests/js``).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from realtime_server.app import Running

from .conftest import StartServer, ws_url
from .helpers import MS, QUIET, api, claims, quiet_period, sub_token, token
from .jsproc import Event, Gate, JsonLinesProcess
from .prereq import NODE_INSTALL, NPM_CI, missing, need_program

JS_DIR = Path(__file__).parent / "js"
CLIENT_SCRIPT = JS_DIR / "client.mjs"

Responder = Callable[[Event], Any]
"""Answers a request of the Node client (a value, or an awaitable of one)."""

FORGED_SECRET = "not-the-server-secret-0123456789abcdef"
WAIT = 3000 * MS
"""Default bound for one expected event."""
"""Observation window for "nothing more happens" (no reconnect after a terminal close)."""


def _node_executable() -> str:
    node = need_program("node", NODE_INSTALL)
    for module in ("centrifuge", "ws"):
        if not (JS_DIR / "node_modules" / module).is_dir():
            missing(f"tests/js/node_modules/{module} not found: {NPM_CI}")
    return node


class NodeClient(JsonLinesProcess):
    """One ``client.mjs`` process: its event log, its commands, its requests."""

    label = "node client"
    fatal = frozenset({"fatal"})
    wait = WAIT

    def __init__(self, proc: asyncio.subprocess.Process, responders: dict[str, Responder]):
        super().__init__(proc)
        self._responders = responders
        self._tasks: set[asyncio.Task[Any]] = set()

    # --- input from Node ---------------------------------------------------------------

    def on_event(self, event: Event) -> None:
        if event.get("event") == "request":
            task = asyncio.create_task(self._answer(event))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _answer(self, request: Event) -> None:
        responder = self._responders.get(request["kind"])
        reply: dict[str, Any]
        if responder is None:
            reply = {"error": f"no responder for {request['kind']}"}
        else:
            try:
                value = responder(request)
                if inspect.isawaitable(value):
                    value = await value
                reply = {"value": value}
            except Exception as exc:
                # Visible in the event log of a failing test; the SDK sees a failed getToken.
                self.events.append({"event": "responder_failed", "error": repr(exc)})
                self._notify()
                reply = {"error": repr(exc)}
        with contextlib.suppress(ConnectionError):
            await self.send({"cmd": "reply", "id": request["id"], **reply})

    # --- what the tests use ------------------------------------------------------------

    def all(self, name: str, **match: Any) -> list[Event]:
        return [e for e in self.events if self.matches(e, name, match, None)]

    def since(self, event: Event) -> list[Event]:
        """Events logged after ``event``."""
        return self.events[self.events.index(event) + 1 :]

    async def connect(self) -> None:
        """Send ``connect``; consumes the ``connecting`` event it starts with (code 0)."""
        await self.send({"cmd": "connect"})
        await self.expect("connecting", scope="client", code=0)

    async def state(self) -> Event:
        ref = f"state-{len(self.events)}"
        await self.send({"cmd": "state", "ref": ref})
        return await self.expect("result", cmd="state", ref=ref)

    async def presence(self, channel: str) -> Event:
        ref = f"presence-{len(self.events)}"
        await self.send({"cmd": "presence", "channel": channel, "ref": ref})
        return await self.expect("result", cmd="presence", ref=ref)

    # --- lifecycle ---------------------------------------------------------------------

    async def exit(self, timeout: float = 5000 * MS) -> int:
        """Ask the client to disconnect and exit; returns the exit code."""
        if self.proc.returncode is None and self.proc.stdin is not None:
            with contextlib.suppress(ConnectionError):
                await self.send({"cmd": "exit"})
                self.proc.stdin.close()
        async with asyncio.timeout(timeout):
            return await self.proc.wait()

    async def cleanup(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._readers, *self._tasks, return_exceptions=True)


@asynccontextmanager
async def node_client(
    url: str,
    tok: str = "",
    *,
    responders: dict[str, Responder] | None = None,
    gate: Gate | None = None,
    **config: Any,
) -> AsyncIterator[NodeClient]:
    """A running ``client.mjs``, not connected yet (see :meth:`NodeClient.connect`).

    ``responders`` answer its requests by kind (``connection_token`` turns on the SDK's
    ``getToken``); ``gate`` answers ``connect_data``. On leaving, the client must exit
    by itself with code 0; on a failure it is killed.
    """
    node = _node_executable()
    responders = dict(responders or {})
    if gate is not None:
        responders["connect_data"] = gate
    settings = {
        "url": url,
        "token": tok,
        "getToken": "connection_token" in responders,
        "gateConnect": gate is not None,
        "deadlineMs": round(30000 * MS * 1000),
        **config,
    }
    proc = await asyncio.create_subprocess_exec(
        node,
        str(CLIENT_SCRIPT),
        json.dumps(settings),
        cwd=JS_DIR,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    client = NodeClient(proc, responders)
    try:
        await client.expect("ready", timeout=10000 * MS)
        yield client
        code = await client.exit()
        assert code == 0, f"node client exited with {code}\n{client.describe()}"
        assert not client.all("fatal"), client.describe()
    finally:
        await client.cleanup()


# --- 1. connect, server-side user channel ------------------------------------------------


async def test_connect_and_user_channel_publication(server: Running) -> None:
    async with node_client(ws_url(server), token("alice")) as js:
        await js.connect()
        connected = await js.expect("connected")
        assert connected["transport"] == "websocket"
        assert connected["client"] in server.node.registry
        sub = await js.expect("subscribed", scope="client", channel="user:alice")
        assert sub["recoverable"] is True
        assert sub["streamPosition"]["offset"] == 0

        result = await api(server, "publish", {"channel": "user:alice", "data": {"n": 1}})
        pub = await js.expect("publication", scope="client", channel="user:alice")
        assert pub["data"] == {"n": 1}
        assert pub["offset"] == result["offset"] == 1

        await server.node.ops.publish("user:alice", b'{"n":2,"text":"caf\xc3\xa9"}')
        pub = await js.expect("publication", scope="client", channel="user:alice")
        assert pub["data"] == {"n": 2, "text": "café"}
        assert pub["offset"] == 2


# --- 2. document subscription, presence, join/leave --------------------------------------


async def test_document_subscription_presence_join_leave(server: Running) -> None:
    doc = "document:contract-42"

    def alice_sub_token(request: Event) -> str:
        return sub_token("alice", request["channel"], info={"role": "signer"})

    alice = node_client(
        ws_url(server),
        token("alice", info={"name": "Alice"}),
        responders={"subscription_token": alice_sub_token},
    )
    async with alice as a:
        # Subscription token through the subscription's getToken.
        await a.connect()
        await a.expect("connected")
        await a.send({"cmd": "subscribe", "channel": doc, "getToken": True, "joinLeave": True})
        request = await a.expect("request", kind="subscription_token")
        assert request["channel"] == doc
        subscribed = await a.expect("subscribed", scope="sub", channel=doc)
        assert subscribed["recoverable"] is True

        result = await api(server, "publish", {"channel": doc, "data": {"status": "signed"}})
        pub = await a.expect("publication", scope="sub", channel=doc)
        assert pub["data"] == {"status": "signed"}
        assert pub["offset"] == result["offset"]

        presence = await a.presence(doc)
        assert len(presence["clients"]) == 1
        ((alice_client, alice_info),) = presence["clients"].items()
        assert alice_info == {
            "user": "alice",
            "client": alice_client,
            "connInfo": {"name": "Alice"},
            "chanInfo": {"role": "signer"},
        }

        # Bob: subscribe issued before connect, so the SDK batches connect and subscribe
        # in one frame; a static subscription token.
        bob = node_client(ws_url(server), token("bob", info={"name": "Bob"}))
        async with bob as b:
            await b.send({"cmd": "subscribe", "channel": doc, "token": sub_token("bob", doc)})
            await b.connect()
            bob_connected = await b.expect("connected")
            await b.expect("subscribed", scope="sub", channel=doc)

            # Alice saw her own join first; then Bob's.
            own = await a.expect("join", scope="sub", channel=doc)
            assert own["info"]["client"] == alice_client
            join = await a.expect("join", scope="sub", channel=doc)
            assert join["info"]["user"] == "bob"
            assert join["info"]["client"] == bob_connected["client"]
            assert join["info"]["connInfo"] == {"name": "Bob"}

            presence = await b.presence(doc)
            users = {c["user"] for c in presence["clients"].values()}
            assert users == {"alice", "bob"}
            assert set(presence["clients"]) == {alice_client, bob_connected["client"]}

            # Both get the next publication.
            await api(server, "publish", {"channel": doc, "data": {"status": "archived"}})
            for client in (a, b):
                pub = await client.expect("publication", scope="sub", channel=doc)
                assert pub["data"] == {"status": "archived"}

        leave = await a.expect("leave", scope="sub", channel=doc)
        assert leave["info"]["user"] == "bob"
        assert leave["info"]["client"] == bob_connected["client"]
        presence = await a.presence(doc)
        assert set(presence["clients"]) == {alice_client}


async def test_channels_claim_subscribes_document_server_side(server: Running) -> None:
    doc = "document:board-1"
    # user:bob is not alice's: the server skips it (never subscribes it).
    async with node_client(ws_url(server), token("alice", channels=[doc, "user:bob"])) as a:
        await a.connect()
        alice = await a.expect("connected")
        subscribed = [await a.expect("subscribed", scope="client") for _ in range(2)]
        assert {s["channel"] for s in subscribed} == {"user:alice", doc}

        result = await api(server, "publish", {"channel": doc, "data": {"v": 1}})
        pub = await a.expect("publication", scope="client", channel=doc)
        assert (pub["offset"], pub["data"]) == (result["offset"], {"v": 1})

        presence = await a.presence(doc)  # no Subscription object: Centrifuge.presence()
        assert set(presence["clients"]) == {alice["client"]}

        async with node_client(ws_url(server), token("bob", channels=[doc])) as b:
            await b.connect()
            bob = await b.expect("connected")
            await b.expect("subscribed", scope="client", channel=doc)
            join = await a.expect(
                "join", scope="client", channel=doc, where=lambda e: e["info"]["user"] == "bob"
            )
            assert join["info"]["client"] == bob["client"]
        leave = await a.expect("leave", scope="client", channel=doc)
        assert leave["info"]["client"] == bob["client"]
        assert not a.all("subscribed", scope="client", channel="user:bob")


# --- 3. refusals ---------------------------------------------------------------------------


async def test_refused_subscriptions(server: Running) -> None:
    async with node_client(ws_url(server), token("alice")) as js:
        await js.connect()
        connected = await js.expect("connected")

        await js.send({"cmd": "subscribe", "channel": "user:bob"})
        refused = await js.expect("unsubscribed", scope="sub", channel="user:bob")
        assert refused["code"] == 103

        await js.send({"cmd": "subscribe", "channel": "document:secret"})
        refused = await js.expect("unsubscribed", scope="sub", channel="document:secret")
        assert refused["code"] == 103

        forged = sub_token("alice", "document:forged", secret=FORGED_SECRET)
        await js.send({"cmd": "subscribe", "channel": "document:forged", "token": forged})
        refused = await js.expect("unsubscribed", scope="sub", channel="document:forged")
        assert refused["code"] == 103

        state = await js.state()
        assert state["state"] == "connected"
        assert state["subs"] == {
            "user:bob": "unsubscribed",
            "document:secret": "unsubscribed",
            "document:forged": "unsubscribed",
        }
        assert not js.all("connecting", code=1), "the refusals must not cost the connection"
        assert not [e for e in js.since(connected) if e["event"] in ("connecting", "disconnected")]


# --- 4. forged and expired connection tokens -----------------------------------------------


async def test_forged_token_is_terminal(server: Running) -> None:
    forged = token("alice", secret=FORGED_SECRET)
    async with node_client(ws_url(server), forged) as js:
        await js.connect()
        disconnected = await js.expect("disconnected")
        assert disconnected["code"] == 3500
        assert disconnected["reason"] == "invalid token"
        await quiet_period()
        assert (await js.state())["state"] == "disconnected"
        assert not [e for e in js.since(disconnected) if e["event"] in ("connecting", "connected")]
        assert not js.all("connected")
    assert server.node.metrics.connections_total == 0


async def test_expired_token_refetched_with_get_token(server: Running) -> None:
    now = int(time.time())
    expired = token("alice", exp=now - 60, iat=now - 120)
    fresh: list[str] = []

    def connection_token(_request: Event) -> str:
        fresh.append(token("alice"))
        return fresh[-1]

    async with node_client(
        ws_url(server), expired, responders={"connection_token": connection_token}
    ) as js:
        await js.connect()
        error = await js.expect("error", scope="client", type="connect")
        assert error["code"] == 109
        await js.expect("request", kind="connection_token")
        connected = await js.expect("connected")
        await js.expect("subscribed", scope="client", channel="user:alice")
        assert len(fresh) == 1
        assert server.node.registry.get(connected["client"]).token_jti == claims(fresh[0])["jti"]
        assert not js.all("disconnected")


# --- 5. connection token refresh ---------------------------------------------------------


async def test_refresh_keeps_connection_past_expiry(start_server: StartServer) -> None:
    grace = 1.0
    server = await start_server(EXPIRY_GRACE=grace)
    first = token("alice", ttl=2)
    issued: list[str] = []

    def connection_token(_request: Event) -> str:
        issued.append(token("alice", ttl=2))
        return issued[-1]

    async with node_client(
        ws_url(server), first, responders={"connection_token": connection_token}
    ) as js:
        await js.connect()
        connected = await js.expect("connected")
        await js.expect("request", kind="connection_token", timeout=4000 * MS)
        # Past the first token's expiry plus the grace period: without refresh the server
        # would have closed the connection with 3005 by now.
        await asyncio.sleep(max(0.0, claims(first)["exp"] + grace + QUIET - time.time()))
        assert issued
        assert not [e for e in js.since(connected) if e["event"] in ("connecting", "disconnected")]
        session = server.node.registry.get(connected["client"])
        assert session.expires_at is not None and session.expires_at > claims(first)["exp"]

        await server.node.ops.publish("user:alice", b'{"alive":true}')
        pub = await js.expect("publication", scope="client", channel="user:alice")
        assert pub["data"] == {"alive": True}


async def test_unrefreshed_connection_closed_3005_then_reconnects(
    start_server: StartServer,
) -> None:
    grace = 1.5  # past the token verifier's 1 s leeway: the old token is refused (109)
    server = await start_server(EXPIRY_GRACE=grace)
    first = token("alice", ttl=2)
    held = asyncio.Event()
    requests = 0

    async def connection_token(_request: Event) -> str:
        nonlocal requests
        requests += 1
        if requests == 1:
            await held.wait()  # the refresh never gets its token in time
        return token("alice")

    async with node_client(
        ws_url(server), first, responders={"connection_token": connection_token}
    ) as js:
        await js.connect()
        await js.expect("connected")
        await js.expect("request", kind="connection_token", timeout=4000 * MS)
        closed = await js.expect("connecting", scope="client", timeout=5000 * MS)
        assert closed["code"] == 3005
        assert closed["reason"] == "connection expired"
        assert time.time() >= claims(first)["exp"] + grace - 0.1
        error = await js.expect("error", scope="client", type="connect")
        assert error["code"] == 109
        await js.expect("request", kind="connection_token")
        await js.expect("connected")
        await js.expect("subscribed", scope="client", channel="user:alice")
        held.set()
        assert not js.all("disconnected")


# --- 6. revocation -----------------------------------------------------------------------


async def test_revoked_token_closes_4501_without_reconnect(server: Running) -> None:
    tok = token("alice")
    async with node_client(ws_url(server), tok) as js:
        await js.connect()
        await js.expect("connected")
        await js.expect("subscribed", scope="client", channel="user:alice")
        assert server.node.metrics.connections_total == 1

        await api(
            server, "revoke_token", {"uid": claims(tok)["jti"], "expire_at": claims(tok)["exp"]}
        )
        disconnected = await js.expect("disconnected")
        assert disconnected["code"] == 4501
        assert disconnected["reason"] == "token revoked"
        await quiet_period()
        assert (await js.state())["state"] == "disconnected"
        assert not [e for e in js.since(disconnected) if e["event"] in ("connecting", "connected")]
    assert server.node.metrics.connections_total == 1
    assert server.node.registry.user_connections("alice") == 0


# --- 7. reconnect after 3001 and recovery -------------------------------------------------


async def test_reconnect_after_3001_recovers_missed_publications(server: Running) -> None:
    user_ch = "user:alice"
    doc = "document:deal-7"
    gate = Gate()

    def alice_sub_token(request: Event) -> str:
        return sub_token("alice", request["channel"])

    async def publish_both(n: int) -> None:
        for channel in (user_ch, doc):
            result = await api(server, "publish", {"channel": channel, "data": {"n": n}})
            assert result["offset"] == n

    async with node_client(
        ws_url(server),
        token("alice"),
        responders={"subscription_token": alice_sub_token},
        gate=gate,
    ) as js:
        await js.send({"cmd": "subscribe", "channel": doc, "getToken": True, "recoverable": True})
        await js.connect()
        await js.expect("request", kind="connect_data")
        await js.expect("connected")
        first_user = await js.expect("subscribed", scope="client", channel=user_ch)
        first_doc = await js.expect("subscribed", scope="sub", channel=doc)
        assert first_doc["recoverable"] is True

        for n in (1, 2):
            await publish_both(n)
            for scope, channel in (("client", user_ch), ("sub", doc)):
                pub = await js.expect("publication", scope=scope, channel=channel)
                assert (pub["offset"], pub["data"]) == (n, {"n": n})

        # Away: the server closes with 3001; the reconnect attempt is held at the gate
        # while the backend publishes.
        gate.close()
        await api(
            server,
            "disconnect",
            {"user": "alice", "disconnect": {"code": 3001, "reason": "shutdown"}},
        )
        closed = await js.expect("connecting", scope="client")
        assert (closed["code"], closed["reason"]) == (3001, "shutdown")
        await js.expect("request", kind="connect_data")
        assert server.node.registry.user_connections("alice") == 0
        for n in (3, 4, 5):
            await publish_both(n)
        gate.open()

        await js.expect("connected")
        user_sub = await js.expect("subscribed", scope="client", channel=user_ch)
        assert user_sub["wasRecovering"] is True
        assert user_sub["recovered"] is True
        assert user_sub["streamPosition"]["epoch"] == first_user["streamPosition"]["epoch"]
        doc_sub = await js.expect("subscribed", scope="sub", channel=doc)
        assert doc_sub["wasRecovering"] is True
        assert doc_sub["recovered"] is True
        assert doc_sub["streamPosition"]["epoch"] == first_doc["streamPosition"]["epoch"]
        for n in (3, 4, 5):
            for scope, channel in (("client", user_ch), ("sub", doc)):
                pub = await js.expect("publication", scope=scope, channel=channel)
                assert (pub["offset"], pub["data"]) == (n, {"n": n})

        await publish_both(6)
        for scope, channel in (("client", user_ch), ("sub", doc)):
            pub = await js.expect("publication", scope=scope, channel=channel)
            assert (pub["offset"], pub["data"]) == (6, {"n": 6})

        # Exactly once, in order, on both channels.
        for scope, channel in (("client", user_ch), ("sub", doc)):
            got = [
                (p["offset"], p["data"]["n"])
                for p in js.all("publication", scope=scope, channel=channel)
            ]
            assert got == [(n, n) for n in range(1, 7)], got
        assert not js.all("disconnected")
        assert len(js.all("request", kind="subscription_token")) == 1


# --- 8. ping / pong -------------------------------------------------------------------------


async def test_ping_pong_keeps_idle_connection(start_server: StartServer) -> None:
    server = await start_server(PING_INTERVAL=1, PONG_TIMEOUT=min(0.9, 500 * MS))
    # With a 1 s ping and 1 s of allowed delay the SDK drops a connection that sees no
    # ping for 2 s; the server drops one that does not answer a ping within 0.5 s.
    async with node_client(ws_url(server), token("alice"), maxServerPingDelay=1000) as js:
        await js.connect()
        connected = await js.expect("connected")
        await asyncio.sleep(3500 * MS)
        assert not [e for e in js.since(connected) if e["event"] in ("connecting", "disconnected")]
        session = server.node.registry.get(connected["client"])
        assert session.state.name == "CONNECTED"
        await server.node.ops.publish("user:alice", b'{"idle":false}')
        pub = await js.expect("publication", scope="client", channel="user:alice")
        assert pub["data"] == {"idle": False}
