"""The simulated users of a generator and their connections (the protocol side).

A :class:`Conn` is one connection of a :class:`User`: the WebSocket handshake and
frames are :class:`~.wsclient.FrameClient`'s; this adds the protocol: ``connect`` with
the user's token (and, after a reconnect, ``subs`` asking to recover each channel from
its last offset, as the SDKs do), pongs, and publications handed to the generator that
owns the connection, which counts them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from typing import Any, Final, Protocol

import orjson

from .counters import Counters
from .wsclient import CLOSED, OPEN, FrameClient, client_frame

__all__ = [
    "Conn",
    "Cursor",
    "Owner",
    "User",
    "create_connection",
    "is_terminal",
    "os_reason",
    "retryable",
]

_PONG: Final = client_frame(b"{}")
_IP_BIND_ADDRESS_NO_PORT: Final = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


def is_terminal(code: int) -> bool:
    """Close codes after which the SDKs do not reconnect (3500-3999, 4500-4999)."""
    return 3500 <= code <= 3999 or 4500 <= code <= 4999


def os_reason(exc: OSError) -> str:
    name = os.strerror(exc.errno) if exc.errno else type(exc).__name__
    return f"socket: {name}"[:80]


def retryable(reason: str) -> bool:
    """Failures worth another try: the network and the server's temporary errors."""
    transient = ("socket:", "timeout", "connection lost", "error 100", "HTTP/1.1 5")
    if reason.startswith("close "):
        try:
            return not is_terminal(int(reason[6:]))
        except ValueError:
            return True
    return reason.startswith(transient)


async def create_connection(
    loop: asyncio.AbstractEventLoop,
    factory: Any,
    host: str,
    port: int,
    source: str | None,
) -> tuple[asyncio.BaseTransport, Any]:
    """``loop.create_connection``, from the local address ``source`` when given.

    The socket is bound before it connects, with ``IP_BIND_ADDRESS_NO_PORT``: the kernel
    picks the local port at connect time, per (source, destination) pair, so each source
    address has the whole ephemeral port range towards one server port.
    """
    if source is None:
        return await loop.create_connection(factory, host, port)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_IP, _IP_BIND_ADDRESS_NO_PORT, 1)
        sock.bind((source, 0))
        await loop.sock_connect(sock, (host, port))
        return await loop.create_connection(factory, sock=sock)
    except BaseException:
        sock.close()
        raise


class Owner(Protocol):
    """What a connection reports to (the generator)."""

    c: Counters

    def pub(self, u: User, channel: str, pub: dict[str, Any], now: int, live: bool) -> None: ...

    def closed(self, conn: Conn, code: int) -> None: ...

    def subscribed(self, conn: Conn, reply: dict[str, Any], now: int) -> None: ...


class Cursor:
    """Where a user is in one channel: the next sequence number it expects (0: none yet,
    the first publication seen sets it), and the stream position to recover from
    (``epoch`` None while the server has given none)."""

    __slots__ = ("epoch", "nxt", "offset")

    def __init__(self, nxt: int) -> None:
        self.nxt = nxt
        self.offset = 0
        self.epoch: str | None = None


class User:
    """One simulated user: its token, channels and stream positions, across reconnects."""

    __slots__ = (
        "channels",
        "conn",
        "connected",
        "cursors",
        "expected",
        "source",
        "steady",
        "sub_channel",
        "sub_token",
        "token",
        "user",
    )

    def __init__(
        self,
        user: str,
        channels: tuple[str, ...],
        token: str,
        steady: bool,
        source: str | None = None,
    ) -> None:
        self.user = user
        self.channels = channels  # server-side subscriptions expected at connect
        self.expected = frozenset(channels)
        self.token = token
        self.steady = steady
        self.source = source
        # Steady users were subscribed before the first publication: they expect
        # sequence number 1 everywhere.
        self.cursors = {ch: Cursor(1) for ch in channels} if steady else {}
        self.conn: Conn | None = None
        self.connected = 0
        self.sub_channel: str | None = None  # churn users: a client-side subscription
        self.sub_token: str | None = None

    def cursor(self, channel: str) -> Cursor:
        """The cursor of ``channel``; a new one (expecting nothing yet) the first time."""
        cur = self.cursors.get(channel)
        if cur is None:
            cur = self.cursors[channel] = Cursor(0)
        return cur

    def position(self, channel: str, offset: int, epoch: str) -> None:
        """The server's stream position of ``channel`` (a subscription's reply)."""
        cur = self.cursor(channel)
        cur.offset, cur.epoch = offset, epoch


class Conn(FrameClient):
    """One connection of a :class:`User`."""

    __slots__ = ("done", "owner", "started_ns", "sub_sent_ns", "user")

    def __init__(
        self,
        owner: Owner,
        user: User,
        request: bytes,
        accept: bytes,
        done: asyncio.Future[str | None],
    ) -> None:
        super().__init__(request, accept)
        self.owner = owner
        self.user = user
        self.done = done  # result None once connected, else the failure reason
        self.started_ns = time.time_ns()
        self.sub_sent_ns = 0

    def on_upgraded(self) -> None:
        u = self.user
        params: dict[str, Any] = {"token": u.token, "name": "loadtest"}
        subs = {
            ch: {"recover": True, "offset": cur.offset, "epoch": cur.epoch}
            for ch, cur in u.cursors.items()
            if cur.epoch is not None
        }
        if subs:
            params["subs"] = subs
        self.send_text(orjson.dumps({"id": 1, "connect": params}))

    def on_fail(self, reason: str) -> None:
        if not self.done.done():
            self.done.set_result(reason)
        else:  # an open connection we gave up on (malformed traffic)
            self.owner.closed(self, 1002)

    def on_close(self, code: int) -> None:
        if not self.done.done():
            self.done.set_result(f"close {code}")
            return
        self.owner.closed(self, code)

    def on_text(self, payload: bytes, now_ns: int) -> None:
        if 10 in payload:  # several replies in one frame, a line each (10: b"\n")
            for line in payload.split(b"\n"):
                if line and self.state != CLOSED:
                    self.on_text(line, now_ns)
            return
        try:
            reply = orjson.loads(payload)
            push = reply.get("push")
        except orjson.JSONDecodeError:
            self.fail("malformed frame from server")
            return
        except AttributeError:  # JSON, but no object
            return
        if push is not None:
            pub = push.get("pub")
            if pub is not None:
                self.owner.pub(self.user, push.get("channel", ""), pub, now_ns, True)
            elif "join" in push:
                self.owner.c.joins += 1
            elif "leave" in push:
                self.owner.c.leaves += 1
            elif "unsubscribe" in push:
                self.owner.c.unsubscribe_pushes += 1
        elif not reply:  # a ping
            self.transport_write(_PONG)
        else:
            self._reply(reply, now_ns)

    def _reply(self, reply: dict[str, Any], now: int) -> None:
        ident = reply.get("id")
        if ident == 1:
            if isinstance(reply.get("connect"), dict):
                self._connected(reply["connect"], now)
            else:
                code = (reply.get("error") or {}).get("code", "?")
                self.fail(f"error {code}")
        elif ident == 2:
            self.owner.subscribed(self, reply, now)

    def opened(self, now: int) -> None:
        """The protocol's connect was answered: the connection is open."""
        self.state = OPEN
        self.owner.c.connect_latency.record((now - self.started_ns) // 1000)
        if not self.done.done():
            self.done.set_result(None)

    def _connected(self, result: dict[str, Any], now: int) -> None:
        u, owner = self.user, self.owner
        c = owner.c
        subs = result.get("subs") or {}
        missing = [ch for ch in u.expected if ch not in subs]
        if missing:
            c.missing_subs += len(missing)
        for ch, res in subs.items():
            if not isinstance(res, dict):
                continue
            if res.get("was_recovering"):
                if res.get("recovered"):
                    c.recovered_ok += 1
                else:
                    c.recovered_failed += 1
            if "epoch" in res:
                u.position(ch, int(res.get("offset") or 0), str(res["epoch"]))
            for pub in res.get("publications") or ():
                owner.pub(u, ch, pub, now, False)
        self.opened(now)
        if u.sub_channel is not None:
            self.sub_sent_ns = time.time_ns()
            cmd = {"id": 2, "subscribe": {"channel": u.sub_channel, "token": u.sub_token}}
            self.send_text(orjson.dumps(cmd))
