"""One WebSocket connection: websockets' Sans-I/O protocol under a lean asyncio Protocol.

websockets parses and validates everything here (the HTTP upgrade, origins, subprotocols,
frames, fragmentation, control frames, the closing handshake, message size limits);
this module owns the I/O around it. Two common cases skip websockets' objects where they
cost the most and decide nothing: the plain upgrade (:mod:`.handshake`) and the plain
client frame (:mod:`.clientframes`: one whole masked text frame, a command). A
connection opened by the plain upgrade makes its websockets protocol only when a frame
of another kind arrives, or when it closes; until then ``writable`` says it is open.

websockets' own asyncio layer cost about 300 µs of CPU per connection (a handshake
task, timeouts, locks, an assembler with its futures, logging) where this costs about
50 (``bench/connect.py``), and its objects were half of an idle connection's memory.

What a :class:`WsConnection` adds to the protocol:

- **Bounded buffering.** Our own writes are bounded in :mod:`.session`; websockets'
  automatic replies (a pong for every ping) are bounded here: past the endpoint's
  ``write_cap`` bytes of unsent data the connection stops being read and is closed like
  any slow consumer (``on_flood``: 3008); if it overflows again before the close
  completes, it is dropped. Incoming messages queue up to ``max_queue``; past that,
  reading pauses until the handler catches up.
- **Bounded closes.** Every close ends promptly, so a closed connection never holds its
  socket: a close frame that cannot be written because more than ``write_cap`` bytes
  already wait for the client is not queued behind them (the connection is aborted at
  once); any other close is aborted after ``close_timeout`` seconds. A handshake that
  does not complete within ``open_timeout`` is aborted too.
- **Admission.** Each socket is counted by the port's :class:`~.admission.ConnectionGate`
  from its accept to its end; the server tells it when the connection authenticates.
- **Other methods.** A request whose method is not GET (websockets closes those without
  a response) is answered by the endpoint's ``other_method`` (HEAD, 405, 426).
- **Nothing kept after the handshake**: the request's headers (but those the subscribe
  proxy forwards), no response, no reference cycles (a closed connection is freed by
  reference counting, not by a full collection).

Frames from the server are written to the transport directly by the session
(:mod:`.frames`): server frames are unmasked and compression is off, so the protocol
object keeps no per-frame state that such writes would bypass.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any, Final, cast

from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode, Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.server import ServerProtocol

from .admission import Admission
from .clientframes import plain_frame
from .handshake import fast_accept, request_line
from .wsendpoint import Endpoint

__all__ = ["WsConnection"]

logger = logging.getLogger("realtime_server.server")
_PROTOCOL_LOG = logging.getLogger("websockets.server")

_OPEN: Final = State.OPEN
_CONNECTING: Final = State.CONNECTING
_TEXT: Final = Opcode.TEXT
_BINARY: Final = Opcode.BINARY
_CONT: Final = Opcode.CONT
_NO_HEADERS: Final = Headers()


class WsConnection(asyncio.Protocol):
    """One client socket, from its accept to its end (see the module docstring)."""

    __slots__ = (
        "__weakref__",
        "_closing",
        "_direct",
        "_fragments",
        "_lost",
        "_messages",
        "_paused",
        "_timer",
        "_waiter",
        "admission",
        "closed",
        "endpoint",
        "flooded",
        "handler_task",
        "protocol",
        "remote_address",
        "request",
        "session",
        "transport",
        "writable",
    )

    def __init__(self, endpoint: Endpoint[WsConnection]) -> None:
        self.endpoint: Endpoint[WsConnection] = endpoint
        self.protocol: ServerProtocol = None  # type: ignore[assignment]  # see _direct
        self.transport: asyncio.Transport = None  # type: ignore[assignment]  # until made
        self.remote_address: Any = None
        self.request: Request | None = None
        self.session: Any = None  # set by the server's handler for the connection's life
        self.admission = Admission.NONE
        self.flooded = False
        self.closed = False
        """The socket is gone (``connection_lost``)."""
        self.handler_task: asyncio.Task[None] | None = None
        self._messages: deque[str | bytes] | None = None
        self._fragments: tuple[bool, list[Any]] | None = None  # (text?, the data so far)
        self._waiter: asyncio.Future[None] | None = None
        self._lost: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._paused = False
        self._closing = False
        self._direct = False
        """Open by the fast handshake, every frame so far a plain one (:mod:`.clientframes`):
        no protocol object made yet (:meth:`_own_protocol` makes it)."""
        self.writable = False
        """The WebSocket is open: data frames may be written (the protocol's state is
        OPEN). What the session checks before each write."""

    # --- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        self.remote_address = transport.get_extra_info("peername")
        endpoint = self.endpoint
        endpoint.connections.add(self)
        if endpoint.gate is not None:
            endpoint.gate.admit(self)  # refused: kept to answer 503 (the routes)
        # One timer per connection: the deadline to authenticate, then the close's.
        self._timer = endpoint.loop.call_later(endpoint.open_timeout, self._deadline)

    def data_received(self, data: bytes) -> None:
        if self._direct:
            self._read_direct(data)
        elif self.protocol is None or self.protocol.state is _CONNECTING:
            self._handshake(data)
        else:
            self._read(data)
        self._check_flood()

    def eof_received(self) -> bool | None:
        protocol = self._own_protocol()
        if protocol is not None:
            protocol.receive_eof()
            self.writable = False
            self._send_data()
        return None  # the transport closes

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.writable = False
        endpoint = self.endpoint
        if endpoint.gate is not None:
            endpoint.gate.release(self)
        endpoint.forget(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._wake()
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)
        self.session = None
        protocol = self._own_protocol()  # its close code and exception, as websockets says
        if protocol is None:  # closed before a byte was read
            return
        protocol.receive_eof()  # idempotent: the state is CLOSED from here
        # A parser exception's traceback holds the parser's frame, which holds the
        # protocol: drop it, so that reference counting frees the connection.
        for failure in (protocol.parser_exc, protocol.handshake_exc):
            if failure is not None:
                failure.__traceback__ = None

    # --- what the server's handler uses ----------------------------------------------

    @property
    def close_code(self) -> int | None:
        """The close code once the connection is closed (1006 without a close frame)."""
        return self.protocol.close_code if self.protocol is not None else None

    async def recv(self) -> str | bytes:
        """The next message (text as ``str``); raises ``ConnectionClosed`` once the
        connection is gone and every message was read."""
        while True:
            message = self.next_message()
            if message is not None:
                return message
            await self.readable()

    def next_message(self) -> str | bytes | None:
        """The next message if one has arrived, else None; raises ``ConnectionClosed``
        once the connection is gone and every message was read. With :meth:`readable`,
        :meth:`recv` without a coroutine of its own: an idle connection's handler waits
        on a bare future (0.24 KiB less per connection)."""
        messages = self._messages
        if messages:
            message = messages.popleft()
            left = len(messages)
            if not left:
                self._messages = None  # an idle connection keeps no deque (0.6 KiB)
            if self._paused and left <= self.endpoint.max_queue // 4:
                self._paused = False
                if not self.flooded and not self.closed:
                    self.transport.resume_reading()
            return message
        if self.closed:
            raise self.protocol.close_exc
        return None

    def readable(self) -> asyncio.Future[None]:
        """A future done once a message arrives or the connection is gone (then
        :meth:`next_message` says which)."""
        waiter = self._waiter
        if waiter is None or waiter.done():
            waiter = self._waiter = self.endpoint.loop.create_future()
        return waiter

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """The closing handshake, bounded: aborted at once when the close frame cannot
        be written, after ``close_timeout`` seconds otherwise. Returns once the socket
        is released."""
        if self.closed:
            return
        transport = self.transport
        protocol = self._own_protocol()
        write_cap = self.endpoint.write_cap
        if (
            protocol is None
            or protocol.state is _CONNECTING
            or self.flooded
            or transport.get_write_buffer_size() > write_cap
        ):
            transport.abort()
        else:
            if protocol.state is _OPEN:
                protocol.send_close(code, reason)
                self.writable = False
                self._send_data()
            self._arm_close()
        await self.wait_closed()

    async def wait_closed(self) -> None:
        """Until the socket is released."""
        if not self.closed:
            await asyncio.shield(self.lost_waiter())

    def lost_waiter(self) -> asyncio.Future[None]:
        """A future done once the socket is released (made on demand: an idle
        connection keeps none)."""
        lost = self._lost
        if lost is None:
            lost = self._lost = self.endpoint.loop.create_future()
            if self.closed:
                lost.set_result(None)
        return lost

    def authenticated(self) -> None:
        """The connection's ``connect`` succeeded: no deadline any more, and out of the
        unauthenticated cap."""
        if self._timer is not None and not self._closing:
            self._timer.cancel()
            self._timer = None
        gate = self.endpoint.gate
        if gate is not None:
            gate.authenticate(self)

    def drop(self) -> None:
        """Abort the socket (the gate made room for a newer one)."""
        self.transport.abort()

    # --- the handshake ---------------------------------------------------------------

    def _handshake(self, data: bytes) -> None:
        if self.protocol is None:  # the first read
            if len(data) >= 4 and not data.startswith(b"GET ") and self._answer_other(data):
                return
            if self._fast_handshake(data):
                return
            self.protocol = self._make_protocol()
        protocol = self.protocol
        protocol.receive_data(data)
        events = protocol.events_received()
        if not events:  # incomplete, or refused by the parser (431, 414, or EOF)
            self._send_data()
            if protocol.close_expected():
                self.transport.close()
            return
        request = events[0]
        assert isinstance(request, Request)
        response = self._respond(request)
        protocol.send_response(response)
        self._send_data()
        if protocol.state is not _OPEN:
            self.transport.close()  # a plain HTTP response or a refused handshake
            return
        self._keep_headers(request)
        self._opened(request)
        for event in events[1:]:  # frames sent right behind the request
            self._frame(event)
        self.writable = protocol.state is _OPEN  # after every call into the protocol

    def _fast_handshake(self, data: bytes) -> bool:
        endpoint = self.endpoint
        if endpoint.ws_path is None or _PROTOCOL_LOG.isEnabledFor(logging.DEBUG):
            return False  # at DEBUG, websockets' parser logs the request (scrubbed)
        accepted = fast_accept(
            data, endpoint.ws_path, endpoint.origins, endpoint.subprotocol, endpoint.keep_headers
        )
        if accepted is None or (endpoint.admits is not None and not endpoint.admits(self)):
            return False
        self._direct = True  # the protocol object is made when needed (_own_protocol)
        self.transport.write(accepted.response)
        headers = Headers(accepted.kept) if accepted.kept else _NO_HEADERS
        self._opened(Request(accepted.path, headers))
        if accepted.rest:
            self.data_received(accepted.rest)  # frames sent right behind the request
        return True

    def _opened(self, request: Request) -> None:
        self.request = request
        self.writable = True
        self.handler_task = self.endpoint.loop.create_task(self._run())

    def _respond(self, request: Request) -> Response:
        protocol = self.protocol
        try:
            response = self.endpoint.routes(self, request)
        except Exception:
            logger.exception("request handler failed")
            return protocol.reject(500, "Internal server error.\n")
        return protocol.accept(request) if response is None else response

    def _keep_headers(self, request: Request) -> None:
        keep = self.endpoint.keep_headers
        kept = None
        if keep is not None:
            kept = [(k, v) for k, v in request.headers.raw_items() if k.lower() in keep]
        # In place: websockets' parser also holds the request for the connection's life.
        request.headers = Headers(kept) if kept else _NO_HEADERS

    def _deadline(self) -> None:
        self._timer = None
        if not self._direct and (self.protocol is None or self.protocol.state is _CONNECTING):
            self.transport.abort()  # the handshake itself did not complete
        elif self.endpoint.on_stale is not None:
            self.endpoint.on_stale(self)

    def _answer_other(self, data: bytes) -> bool:
        answer = self.endpoint.other_method
        line = request_line(data)
        if answer is None or line is None:
            return False  # not HTTP/1.x: the parser refuses it
        self.transport.write(answer(self, *line))
        self.transport.close()
        return True

    async def _run(self) -> None:
        try:
            await self.endpoint.handler(self)
        except ConnectionClosed:
            pass
        except Exception:
            logger.exception("connection handler failed")
            await self.close(CloseCode.INTERNAL_ERROR)
        else:
            await self.close()
        finally:
            self.handler_task = None

    # --- frames ----------------------------------------------------------------------

    def _read_direct(self, data: bytes) -> None:
        """Plain frames (:mod:`.clientframes`) read here; from the first other one,
        websockets' protocol reads the rest of the stream."""
        pos = 0
        end = len(data)
        max_size = self.endpoint.max_size
        while pos < end:
            frame = plain_frame(data, pos, max_size)
            if frame is None:
                self._own_protocol()
                self._read(data[pos:] if pos else data)
                return
            payload, text, pos = frame
            self._message(payload, text)
            if not self._direct:  # the message failed the connection: nothing more is read
                return

    def _read(self, data: bytes) -> None:
        protocol = self.protocol
        protocol.receive_data(data)
        events = protocol.events_received()
        self._send_data()
        # Messages that came before a close frame or a protocol error are read, as
        # those before a read boundary are (and as :meth:`_read_direct` does); what the
        # handler answers is not written: the connection is closing.
        for event in events:
            self._frame(event)
        self.writable = self.writable and protocol.state is _OPEN
        if protocol.close_expected():
            self._arm_close()

    def _make_protocol(self, **kwargs: Any) -> ServerProtocol:
        """websockets' protocol with the endpoint's message size limit: the one limit
        both frame readers obey."""
        return self.endpoint.make_protocol(max_size=self.endpoint.max_size, **kwargs)

    def _own_protocol(self) -> ServerProtocol:
        """The connection's websockets protocol, made now for a connection opened by
        the fast handshake that has not needed it yet (its parser starts at a frame
        boundary; its state is OPEN, or what the connection's writes made it)."""
        if self._direct:
            self._direct = False
            self.protocol = self._make_protocol(state=_OPEN)
        return self.protocol

    def _frame(self, frame: Any) -> None:
        assert isinstance(frame, Frame)
        opcode = frame.opcode
        if opcode is _TEXT or opcode is _BINARY:
            if frame.fin:
                self._message(frame.data, opcode is _TEXT)
            else:
                self._fragments = (opcode is _TEXT, [frame.data])
        elif opcode is _CONT:
            if self._fragments is None:
                return  # the protocol failed the connection already
            text, parts = self._fragments
            parts.append(frame.data)
            if frame.fin:
                self._fragments = None
                self._message(b"".join(parts), text)

    def _message(self, data: Any, text: bool) -> None:
        if not self.writable:
            return  # failed or closing: what follows is not read
        message: str | bytes
        if text:
            try:
                message = str(data, "utf-8")
            except UnicodeDecodeError as exc:
                protocol = self._own_protocol()
                protocol.fail(CloseCode.INVALID_DATA, f"{exc.reason} at position {exc.start}")
                self.writable = False
                self._send_data()
                self._arm_close()
                return
        else:
            message = bytes(data)
        messages = self._messages
        if messages is None:
            messages = self._messages = deque()
        messages.append(message)
        if len(messages) > self.endpoint.max_queue and not self._paused:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # --- output and closing ----------------------------------------------------------

    def _send_data(self) -> None:
        transport = self.transport
        for data in self.protocol.data_to_send():
            if transport.is_closing():
                return
            if data:
                transport.write(data)
            elif transport.can_write_eof():
                try:
                    transport.write_eof()
                except Exception:  # uvloop may raise RuntimeError on a closed socket
                    transport.abort()
            else:
                transport.close()

    def _arm_close(self) -> None:
        """The TCP connection should end soon: abort it if it has not within
        ``close_timeout``."""
        if self.closed or self._closing:
            return
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.endpoint.loop.call_later(
            self.endpoint.close_timeout, self.transport.abort
        )

    def _check_flood(self) -> None:
        transport = self.transport
        if self.closed or transport.get_write_buffer_size() <= self.endpoint.write_cap:
            return
        if self.flooded:  # still flooding after the close was started
            transport.abort()
            return
        self.flooded = True
        transport.pause_reading()
        on_flood = self.endpoint.on_flood
        if on_flood is None:
            transport.abort()
        else:
            on_flood(self)
