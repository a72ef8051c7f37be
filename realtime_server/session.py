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
from collections.abc import Set as AbstractSet
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

__all__ = ["Session", "SessionState", "Subscription", "SubscriptionExpiry"]

logger = logging.getLogger("realtime_server.session")


class SessionState(enum.IntEnum):
    CONNECTING = 0
    CONNECTED = 1
    CLOSED = 2


_OPEN = State.OPEN
_NO_CHANNELS: frozenset[str] = frozenset()
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
    timer: SubscriptionExpiry | None = None
    """The subscription token's deadline, while it has one: ``timer.cancel()``."""


class SubscriptionExpiry:
    """A subscription token's deadline in the node's expiry wheel (only subscriptions
    whose token expires have one)."""

    __slots__ = ("expiry_key", "session", "sub")

    def __init__(self, session: Session, sub: Subscription) -> None:
        self.session = session
        self.sub = sub
        self.expiry_key = -1

    def expire(self) -> None:
        self.session._sub_expired(self.sub)

    def cancel(self) -> None:
        """Forget the deadline; the subscription no longer refers to this object (no
        reference cycle is left for the garbage collector)."""
        self.session.node.expiry.cancel(self)
        if self.sub.timer is self:
            self.sub.timer = None


def _remote(conn: ServerConnection) -> str:
    try:
        address = conn.remote_address
    except Exception:  # uvloop, transport closed before the address was ever read
        return ""
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return str(address or "")


class Session:
    """A connected client. Created by the server for each WebSocket connection."""

    # Slots: one of these per connection; keeps idle connections small.
    __slots__ = (
        "_debug",
        "_outbox_limit",
        "_pending",
        "_protocol",
        "_refilled",
        "_strikes",
        "_tokens",
        "_transport",
        "awaiting_pong",
        "client_id",
        "close_code",
        "closed_at",
        "conn",
        "conn_info",
        "connected_at",
        "expires_at",
        "expiry_key",
        "name",
        "node",
        "ping_bucket",
        "rejection_logged",
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
        self._pending: set[str] | None = None
        self.name = ""
        self.version = ""
        self.connected_at = 0.0
        self.close_code: CloseCode | None = None
        self.closed_at = 0.0  # when the session was detached: the disconnect's time
        # Read now (the loop caches it while the socket is open); formatted on demand.
        conn.remote_address  # noqa: B018
        self.rejection_logged = False
        self.awaiting_pong = False
        self.ping_bucket = -1
        self.expiry_key = -1  # the connection token's bucket in node.expiry
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

    @property
    def remote(self) -> str:
        """The client's address, ``host:port`` (for the event log; not kept per
        session)."""
        return _remote(self.conn)

    @property
    def pending(self) -> AbstractSet[str]:
        """Channels being set up (a connect's server-side channels, a subscribe's
        channel) whose subscribe reply is not written yet. A set exists only while
        one is (an idle connection keeps none: profiled at 0.2 KiB each)."""
        return self._pending if self._pending is not None else _NO_CHANNELS

    def add_pending(self, channel: str) -> None:
        if self._pending is None:
            self._pending = set()
        self._pending.add(channel)

    def discard_pending(self, channel: str) -> None:
        pending = self._pending
        if pending is not None:
            pending.discard(channel)
            if not pending:
                self._pending = None

    def clear_pending(self) -> None:
        self._pending = None

    # --- output (synchronous, never awaits the client) -----------------------------

    def write(self, frame: bytes) -> bool:
        """Append one WebSocket frame to the transport. Returns whether it was written."""
        # ``_state`` rather than the ``state`` property: this runs once per delivery and
        # the property call was 12% of fan-out CPU in a profile (websockets is pinned <18).
        if self._protocol._state is not _OPEN or self.state is _CLOSED:
            return False
        transport = self._transport
        if transport.get_write_buffer_size() > self._outbox_limit:
            self.close_slow()
            return False
        transport.write(frame)
        return True

    def close_slow(self) -> None:
        """The client does not read what we send: close with 3008 (logged, counted)."""
        if self.state is _CLOSED:
            return
        self.node.metrics.slow_disconnects_total += 1
        buffered = self._transport.get_write_buffer_size()
        self.node.log(EventType.SLOW_CONSUMER, self, buffered=buffered)
        self.close(codes.CLOSE_SLOW)

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
        # hardening (issue 11): the decision's time, not the socket's end (up to the
        # close timeout later), is what the disconnect event records.
        self.closed_at = time.time()
        self.node.expiry.cancel(self)
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

    def schedule_expiry(self, expires_at: float | None) -> None:
        """Close with 3005 when the connection token is not refreshed in time: once
        ``expires_at`` plus ``REALTIME_EXPIRY_GRACE`` has passed (None: never)."""
        self.expires_at = expires_at
        wheel = self.node.expiry
        if expires_at is None:
            wheel.cancel(self)
        else:
            wheel.schedule(self, expires_at - time.time() + self.node.settings.expiry_grace)

    def expire(self) -> None:
        """The connection token's deadline passed (called by the expiry wheel)."""
        expires_at = self.expires_at
        if self.state is not SessionState.CONNECTED or expires_at is None:
            return
        remaining = expires_at - time.time()
        if remaining > 0:  # the wall clock went back: wait for it
            self.node.expiry.schedule(self, remaining + self.node.settings.expiry_grace)
            return
        self.close(codes.CLOSE_EXPIRED)

    def schedule_sub_expiry(self, sub: Subscription, expires_at: float | None) -> None:
        """Unsubscribe (push 2501; close 3006 for a server-side channel) when the
        subscription token is not refreshed in time."""
        sub.expires_at = expires_at
        timer = sub.timer
        if expires_at is None:
            if timer is not None:
                timer.cancel()
            return
        if timer is None:
            timer = sub.timer = SubscriptionExpiry(self, sub)
        delay = expires_at - time.time() + self.node.settings.expiry_grace
        self.node.expiry.schedule(timer, delay)

    def _sub_expired(self, sub: Subscription) -> None:
        """The subscription token's deadline passed (called by the expiry wheel)."""
        expires_at = sub.expires_at
        current = self.state is SessionState.CONNECTED and self.subs.get(sub.channel) is sub
        if current and expires_at is not None and time.time() < expires_at:
            self.schedule_sub_expiry(sub, expires_at)  # the wall clock went back: wait
            return
        sub.timer = None
        if not current or expires_at is None:
            return
        if sub.server_side:
            self.close(codes.CLOSE_SUBSCRIPTION_EXPIRED)
            return
        code, reason = codes.UNSUBSCRIBE_EXPIRED
        self.send(encode_unsubscribe_push(sub.channel, code, reason))
        self.node.spawn(self.node.unsubscribe(self, sub.channel, reason="expired"))
