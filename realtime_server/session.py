"""One client connection: its state machine, its outbound writes, its commands.

States: CONNECTING (until a successful ``connect``) -> CONNECTED -> CLOSED. Every write
is synchronous (a frame appended to the transport, never awaited); a client whose
outbound buffer exceeds ``REALTIME_OUTBOX_BYTES`` is closed with 3008. Commands of one
frame are handled in order. This module maps every error to what the client sees:
:class:`ProtocolViolation` -> close code, :class:`CommandError` -> error reply, anything
unexpected -> error 100 (never the exception text).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from websockets.asyncio.server import ServerConnection
from websockets.protocol import State

from . import codes
from .auth.tokens import TokenExpired, TokenInvalid
from .channels.namespaces import NamespaceOptions
from .codes import CloseCode, ErrorCode
from .errors import BackendUnavailable, CommandError, ProtocolViolation
from .events import EventType
from .hub import text_frame
from .protocol import (
    ClientInfo,
    Command,
    encode_error,
    encode_reply,
    encode_unsubscribe_push,
    parse_frame,
)

if TYPE_CHECKING:
    from .node import Node

__all__ = ["Session", "SessionState", "Subscription"]

logger = logging.getLogger("realtime_server.session")


class SessionState(enum.IntEnum):
    CONNECTING = 0
    CONNECTED = 1
    CLOSED = 2


_OPEN = State.OPEN
_CLOSED = SessionState.CLOSED


_MOVES = {
    SessionState.CONNECTING: frozenset({SessionState.CONNECTED, SessionState.CLOSED}),
    SessionState.CONNECTED: frozenset({SessionState.CLOSED}),
    SessionState.CLOSED: frozenset(),
}


@dataclass(slots=True)
class Subscription:
    """A channel a session is subscribed to (server-side or client-side)."""

    channel: str
    options: NamespaceOptions
    info: ClientInfo
    server_side: bool
    token_jti: str | None = None
    token_iat: float | None = None
    expires_at: float | None = None
    timer: asyncio.TimerHandle | None = None


def _remote(conn: ServerConnection) -> str:
    address = conn.remote_address
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return str(address or "")


class Session:
    """A connected client. Created by the server for each WebSocket connection."""

    # Slots: one of these per connection; keeps idle connections small.
    __slots__ = (
        "_debug",
        "_expiry_timer",
        "_outbox_limit",
        "_protocol",
        "_refilled",
        "_strikes",
        "_tokens",
        "_transport",
        "awaiting_pong",
        "client_id",
        "close_code",
        "conn",
        "conn_info",
        "connected_at",
        "expires_at",
        "name",
        "node",
        "pending",
        "ping_bucket",
        "rejection_logged",
        "remote",
        "state",
        "subs",
        "token_iat",
        "token_jti",
        "user",
        "version",
    )

    def __init__(self, node: Node, conn: ServerConnection) -> None:
        self.node = node
        self.conn = conn
        self.client_id = str(uuid.uuid4())
        self.state = SessionState.CONNECTING
        self.user = ""
        self.conn_info: bytes | None = None
        self.token_jti: str | None = None
        self.token_iat: float | None = None
        self.expires_at: float | None = None
        self.subs: dict[str, Subscription] = {}
        self.pending: set[str] = set()
        self.name = ""
        self.version = ""
        self.connected_at = 0.0
        self.close_code: CloseCode | None = None
        self.remote = _remote(conn)
        self.rejection_logged = False
        self.awaiting_pong = False
        self.ping_bucket = -1
        self._expiry_timer: asyncio.TimerHandle | None = None
        self._transport = conn.transport
        self._protocol = conn.protocol
        self._outbox_limit = node.settings.outbox_bytes
        self._tokens = node.settings.rate_burst
        self._refilled = time.monotonic()
        self._strikes = 0
        self._debug = logger.isEnabledFor(logging.DEBUG)

    def __repr__(self) -> str:
        return f"Session({self.client_id}, user={self.user!r}, {self.state.name})"

    # --- state ---------------------------------------------------------------------

    def transition(self, new: SessionState) -> None:
        if new not in _MOVES[self.state]:
            raise RuntimeError(f"illegal session move {self.state.name} -> {new.name}")
        if self._debug:
            logger.debug("session %s: %s -> %s", self.client_id, self.state.name, new.name)
        self.state = new

    @property
    def info(self) -> ClientInfo:
        return ClientInfo(self.user, self.client_id, self.conn_info)

    # --- output (synchronous, never awaits the client) -----------------------------

    def write(self, frame: bytes) -> bool:
        """Append one WebSocket frame to the transport. Returns whether it was written."""
        # ``_state`` rather than the ``state`` property: this runs once per delivery and
        # the property call was 12% of fan-out CPU in a profile (websockets is pinned <18).
        if self._protocol._state is not _OPEN or self.state is _CLOSED:
            return False
        transport = self._transport
        if transport.get_write_buffer_size() > self._outbox_limit:
            self.node.metrics.slow_disconnects_total += 1
            self.node.log(EventType.SLOW_CONSUMER, self, buffered=transport.get_write_buffer_size())
            self.close(codes.CLOSE_SLOW)
            return False
        transport.write(frame)
        return True

    def send(self, payload: bytes) -> bool:
        return self.write(text_frame(payload))

    def reply(self, cmd: Command, result: dict[str, Any]) -> None:
        self.send(encode_reply(cmd.id, cmd.method, result))

    def reply_error(self, cmd: Command, error: ErrorCode) -> None:
        self.node.metrics.command_errors[error.code] += 1
        if cmd.id:
            self.send(encode_error(cmd.id, error))

    def close(self, code: CloseCode) -> None:
        """Close with ``code``: detach from the node at once, send the close frame in the
        background. Idempotent."""
        if self.state is SessionState.CLOSED:
            return
        self.close_code = code
        self.node.metrics.closes[code.code] += 1
        self.detach()
        self.node.spawn(self._close_socket(code))

    async def _close_socket(self, code: CloseCode) -> None:
        await self.conn.close(code.code, code.reason)

    def detach(self) -> None:
        """Synchronous part of leaving: state CLOSED, out of every index and timer."""
        if self.state is SessionState.CLOSED:
            return
        self.transition(SessionState.CLOSED)
        if self._expiry_timer is not None:
            self._expiry_timer.cancel()
        for sub in self.subs.values():
            if sub.timer is not None:
                sub.timer.cancel()
        self.node.forget(self)

    # --- input -----------------------------------------------------------------------

    def _rate_ok(self) -> bool:
        settings = self.node.settings
        now = time.monotonic()
        self._tokens = min(
            settings.rate_burst, self._tokens + (now - self._refilled) * settings.rate_limit
        )
        self._refilled = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            self._strikes = 0
            return True
        self._strikes += 1
        self.node.metrics.rate_limited_total += 1
        if self._strikes == 1:
            self.node.log(EventType.RATE_LIMITED, self, code=codes.TOO_MANY_REQUESTS.code)
        if self._strikes >= settings.rate_strikes:
            self.node.log(EventType.RATE_LIMITED, self, code=codes.CLOSE_TOO_MANY_REQUESTS.code)
            raise ProtocolViolation(codes.CLOSE_TOO_MANY_REQUESTS)
        return False

    async def feed(self, message: str | bytes) -> None:
        """Handle one frame from the client. Raises :class:`ProtocolViolation`."""
        if isinstance(message, bytes):
            raise ProtocolViolation(codes.CLOSE_BAD_REQUEST, "binary frame")
        self.awaiting_pong = False
        for cmd in parse_frame(message):
            if self.state is SessionState.CLOSED:
                return
            if not self._rate_ok():
                if cmd.id:
                    self.reply_error(cmd, codes.TOO_MANY_REQUESTS)
                continue
            await self.handle(cmd)
            if cmd.method == "connect" and self.state is SessionState.CONNECTING:
                # The connect failed with an error reply (109, 100): the subscribes the
                # SDK batched behind it are moot; the client reconnects and resends them.
                return

    async def handle(self, cmd: Command) -> None:
        self.node.metrics.commands_total += 1
        method = cmd.method
        if method == "":
            return  # pong
        if method == "send":
            if self.state is not SessionState.CONNECTED:
                raise ProtocolViolation(codes.CLOSE_BAD_REQUEST, "send before connect")
            return  # no handler for asynchronous messages: ignored, never answered
        if self.state is SessionState.CONNECTING and method != "connect":
            raise ProtocolViolation(codes.CLOSE_BAD_REQUEST, "command before connect")
        if self.state is SessionState.CONNECTED and method == "connect":
            raise ProtocolViolation(codes.CLOSE_BAD_REQUEST, "already connected")
        handler = self.node.commands.get(method)
        try:
            try:
                if handler is None:
                    raise CommandError(codes.METHOD_NOT_FOUND)
                await handler(self, cmd)
            except TokenInvalid:
                raise ProtocolViolation(codes.CLOSE_INVALID_TOKEN) from None
            except TokenExpired:
                raise CommandError(codes.TOKEN_EXPIRED) from None
            except BackendUnavailable:
                raise CommandError(codes.INTERNAL) from None
        except CommandError as exc:
            self._refused(cmd, exc.error.code, exc.error.message)
            self.reply_error(cmd, exc.error)
        except ProtocolViolation as exc:
            self._refused(cmd, exc.close.code, exc.close.reason)
            raise
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("command %s failed for client %s", method, self.client_id)
            self._refused(cmd, codes.INTERNAL.code, "internal error")
            self.reply_error(cmd, codes.INTERNAL)

    def _refused(self, cmd: Command, code: int, reason: str) -> None:
        """Log refusals of connect and subscribe (the audit trail cares about those)."""
        if cmd.method == "connect" and self.state is SessionState.CONNECTING:
            self.node.connect_rejected(self, code, reason)
        elif cmd.method == "subscribe":
            channel = cmd.params.get("channel")
            self.node.log(
                EventType.SUBSCRIBE_REJECTED,
                self,
                channel=channel if isinstance(channel, str) else None,
                code=code,
                reason=reason,
            )

    # --- expiry ----------------------------------------------------------------------

    def _grace_timer(
        self, old: asyncio.TimerHandle | None, expires_at: float | None, *callback: Any
    ) -> asyncio.TimerHandle | None:
        """Cancel ``old``; call ``callback`` once ``expires_at`` plus the grace period
        has passed (None: the token never expires)."""
        if old is not None:
            old.cancel()
        if expires_at is None:
            return None
        delay = expires_at - time.time() + self.node.settings.expiry_grace
        return asyncio.get_running_loop().call_later(max(0.0, delay), *callback)

    def schedule_expiry(self, expires_at: float | None) -> None:
        """Close with 3005 when the connection token is not refreshed in time."""
        self.expires_at = expires_at
        self._expiry_timer = self._grace_timer(self._expiry_timer, expires_at, self._expired)

    def _expired(self) -> None:
        self._expiry_timer = None
        expires_at = self.expires_at
        if self.state is SessionState.CONNECTED and expires_at and time.time() >= expires_at:
            self.close(codes.CLOSE_EXPIRED)

    def schedule_sub_expiry(self, sub: Subscription, expires_at: float | None) -> None:
        """Unsubscribe (push 2501) when the subscription token is not refreshed."""
        sub.expires_at = expires_at
        sub.timer = self._grace_timer(sub.timer, expires_at, self._sub_expired, sub)

    def _sub_expired(self, sub: Subscription) -> None:
        sub.timer = None
        if self.state is not SessionState.CONNECTED or self.subs.get(sub.channel) is not sub:
            return
        if sub.expires_at is None or time.time() < sub.expires_at:
            return
        if sub.server_side:
            self.close(codes.CLOSE_SUBSCRIPTION_EXPIRED)
            return
        code, reason = codes.UNSUBSCRIBE_EXPIRED
        self.send(encode_unsubscribe_push(sub.channel, code, reason))
        self.node.spawn(self.node.unsubscribe(self, sub.channel, reason="expired"))
