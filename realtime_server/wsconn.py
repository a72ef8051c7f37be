"""Our adjustments to websockets' server connection: bounded buffering, bounded closes,
early release.

:class:`GuardedConnection` bounds what a client that does not read can make the server
buffer through websockets' automatic replies: every ping frame is answered with a pong
written by websockets itself (our own writes are bounded in :mod:`.session`), so a
client sending pings without reading grew the server by about what it sent (52 MB of
pings: +71 MB of RSS). Past ``REALTIME_OUTBOX_BYTES`` of unsent data the connection
stops being read and is closed like any slow consumer (3008); if it overflows again
before the close completes, it is dropped.

Every close ends promptly, so a closed connection never holds its socket (issue 11):

- A close frame that cannot be written, because more than ``write_cap`` bytes already
  wait for the client (the slow consumer closed with 3008), is not queued behind them:
  the connection is aborted at once. websockets would write the frame and then wait,
  without a deadline, for the buffer to drain (its ``drain()`` comes before its close
  timeout starts), so a client that stopped reading kept its socket for good.
- Any other close (the closing handshake, and the drain before it) is bounded by
  :data:`CLOSE_TIMEOUT` as a whole; past it the connection is aborted.

Each socket is counted by the port's :class:`~.admission.ConnectionGate` from its
accept (``connection_made``) to its end (``connection_lost``); the server tells it when
the connection authenticates (:meth:`GuardedConnection.authenticated`).

Two more jobs, both about memory and the garbage collector, not behaviour:

- After the handshake, the request and response headers (about 2.5 KiB per idle
  connection) and an empty deque websockets keeps per connection are dropped.
- A closed connection is left by websockets 17 in reference cycles (the
  ``select_subprotocol`` closure holds the connection; the read-flow-control callbacks
  hold the transport, which holds the connection; a parser exception's traceback holds
  the parser frame, which holds the protocol): about 30 objects per connection that
  only a full collection frees. At 10,000 connections that made full collections take
  0.35 s each and cost 130 µs per connect while connections ramp up. Breaking the
  cycles once the connection is lost lets reference counting free it at once.

Uses attributes of websockets' ``ServerConnection`` / ``ServerProtocol`` /
``Assembler`` (pinned to websockets < 18 in pyproject.toml); each access tolerates the
attribute being gone, so a websockets change costs memory, never correctness.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any, ClassVar

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from .admission import Admission, ConnectionGate

__all__ = [
    "CLOSE_TIMEOUT",
    "GuardedConnection",
    "guarded_connection",
    "release_after_handshake",
    "release_headers",
]

CLOSE_TIMEOUT = 1.5
"""Seconds a close may take, from the decision to the socket's release: the peer's close
frame and the end of the TCP connection (websockets' default is 10 s; ours was 5 s). A
responsive client answers within a round trip; one that does not is aborted."""

_NO_HEADERS = Headers()


def _noop() -> None:
    return None


class GuardedConnection(ServerConnection):
    """A ``ServerConnection`` that refuses to buffer more than ``write_cap`` bytes for a
    client that does not read (see the module docstring)."""

    write_cap: ClassVar[int] = 1 << 20
    on_flood: ClassVar[Callable[[GuardedConnection], None] | None] = None
    other_method: ClassVar[Callable[[GuardedConnection, str, str], bytes] | None] = None
    gate: ClassVar[ConnectionGate | None] = None
    # Slots, not instance attributes: one more key in websockets' large instance dict
    # made every connection's dict a bigger, unshared one (measured +1.3 KiB each).
    __slots__ = ("admission", "flooded", "session", "started")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.session: Any = None  # set by the server's handler for the connection's life
        self.flooded = False
        self.started = False
        self.admission = Admission.NONE

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        gate = type(self).gate
        if gate is not None:
            gate.admit(self)  # refused: kept to answer 503 (server.py's routes)

    def connection_lost(self, exc: Exception | None) -> None:
        gate = type(self).gate
        if gate is not None:
            gate.release(self)
        super().connection_lost(exc)

    def authenticated(self) -> None:
        """The connection's ``connect`` succeeded (out of the unauthenticated cap)."""
        gate = type(self).gate
        if gate is not None:
            gate.authenticate(self)

    def drop(self) -> None:
        """Abort the socket (the gate made room for a newer one)."""
        self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if not self.started:
            self.started = True
            if len(data) >= 4 and not data.startswith(b"GET ") and self._answer_other(data):
                return
        super().data_received(data)
        transport = self.transport
        if transport.get_write_buffer_size() <= self.write_cap:
            return
        if self.flooded:  # still flooding after the close was started
            transport.abort()
            return
        self.flooded = True
        transport.pause_reading()
        handler = type(self).on_flood
        if handler is None:
            transport.abort()
        else:
            handler(self)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """The closing handshake, bounded (see the module docstring): aborted at once
        when the close frame cannot be written, after :attr:`close_timeout` seconds
        (the drain included) otherwise. Returns once the socket is released."""
        transport = self.transport
        if self.flooded or transport.get_write_buffer_size() > self.write_cap:
            await self._abort()
            return
        try:
            async with asyncio.timeout(self.close_timeout):
                await super().close(code, reason)
        except TimeoutError:
            await self._abort()

    async def _abort(self) -> None:
        self.transport.abort()
        await asyncio.shield(self.connection_lost_waiter)

    def _answer_other(self, data: bytes) -> bool:
        """A request whose method is not GET: websockets would close the connection
        without a response; answer it (``other_method``) and close instead."""
        answer = type(self).other_method
        if answer is None:
            return False
        line = data.split(b"\n", 1)[0].rstrip(b"\r")
        parts = line.split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            return False  # not HTTP/1.x: websockets refuses it
        method = parts[0].decode("ascii", "replace")
        target = parts[1].decode("ascii", "replace")
        self.transport.write(answer(self, method, target))
        self.transport.close()
        return True


def guarded_connection(
    write_cap: int,
    on_flood: Callable[[GuardedConnection], None],
    other_method: Callable[[GuardedConnection, str, str], bytes] | None = None,
    gate: ConnectionGate | None = None,
) -> type[GuardedConnection]:
    """The connection class of one server: its cap, what to do on overflow, how to
    answer requests with another method than GET, and the port's admission gate."""
    attributes = {
        "write_cap": write_cap,
        "on_flood": on_flood,
        "other_method": other_method,
        "gate": gate,
    }
    return type("GuardedConnection", (GuardedConnection,), attributes)


def _break_cycles(conn: ServerConnection) -> None:
    if isinstance(conn, GuardedConnection):
        conn.session = None
    protocol = conn.protocol
    vars(protocol).pop("select_subprotocol", None)  # closure over the connection
    exc = getattr(protocol, "parser_exc", None)
    if exc is not None:
        exc.__traceback__ = None  # traceback -> parser frame -> protocol
    messages = getattr(conn, "recv_messages", None)
    if messages is not None:  # bound methods of the transport, which holds conn
        messages.pause = _noop
        messages.resume = _noop


def release_after_handshake(conn: ServerConnection, request: Request, response: Response) -> None:
    """``process_response`` hook: called for every request that got a response."""
    vars(conn.protocol).pop("select_subprotocol", None)
    waiter: asyncio.Future[None] | None = getattr(conn, "connection_lost_waiter", None)
    if waiter is not None:
        waiter.add_done_callback(lambda _: _break_cycles(conn))


def release_headers(conn: ServerConnection, keep: frozenset[str] | None = None) -> None:
    """Drop what websockets keeps per connection after the handshake and never reads
    again: the handshake's headers (cleared in place: websockets' parser generator also
    holds the request object for the connection's life; ~2.5 KiB per idle connection)
    and the ``drain_waiters`` deque (0.75 KiB empty; websockets only appends to,
    removes from and iterates over it, which a list does in 56 bytes).

    ``keep``: lower-case names of request headers to keep (the subscribe proxy's
    ``REALTIME_PROXY_HTTP_HEADERS``); None keeps none."""
    if conn.request is not None:
        kept = None
        if keep is not None:
            kept = [(k, v) for k, v in conn.request.headers.raw_items() if k.lower() in keep]
        conn.request.headers = Headers(kept) if kept else _NO_HEADERS
    if conn.response is not None:
        conn.response.headers = _NO_HEADERS
        conn.response.body = b""
    if isinstance(getattr(conn, "drain_waiters", None), deque):
        conn.drain_waiters = []  # type: ignore[assignment]
