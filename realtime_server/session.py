"""One client connection: its state machine, its outbound writes, its command loop.

States: CONNECTING (until a successful ``connect``) -> CONNECTED -> CLOSED. Every write
is synchronous (a frame appended to the transport, never awaited); a client whose
outbound buffer exceeds ``REALTIME_OUTBOX_BYTES`` is closed with 3008. Commands of one
frame are handled in order, each answered at most once. This module maps every error
to what the client sees: :class:`ProtocolViolation` -> close code,
:class:`CommandError` -> error reply, anything unexpected -> error 100 (never the
exception text).

A session knows nothing of the node: it talks to a :class:`SessionHost`, the dozen
operations it needs (run a command, leave every index when closing, end a
subscription later, spawn a task) plus the settings, metrics, journal and expiry wheel.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Coroutine
from collections.abc import Set as AbstractSet
from typing import Any, Protocol

from . import codes
from .auth.tokens import TokenExpired, TokenInvalid
from .codes import CloseCode, ErrorCode
from .config import Settings
from .errors import BackendUnavailable, CommandError, ProtocolViolation
from .events import EventType
from .expiry import ExpiryWheel
from .frames import text_frame
from .journal import Journal
from .lograte import RateLimitedLog
from .metrics import Metrics
from .model import ClientInfo
from .protocol import Command, encode_error, encode_reply, parse_frame
from .randomness import random_uuid
from .records import Ended, Subscription
from .writer import Writer
from .wsconn import WsConnection

__all__ = ["Session", "SessionHost", "SessionState", "SubscriptionExpiry"]

logger = logging.getLogger("realtime_server.session")


class SessionState(enum.IntEnum):
    CONNECTING = 0
    CONNECTED = 1
    CLOSED = 2


_NO_CHANNELS: frozenset[str] = frozenset()
_CLOSED = SessionState.CLOSED


_MOVES = {
    SessionState.CONNECTING: frozenset({SessionState.CONNECTED, SessionState.CLOSED}),
    SessionState.CONNECTED: frozenset({SessionState.CLOSED}),
    SessionState.CLOSED: frozenset(),
}


class SessionHost(Protocol):
    """What a session needs from the server around it (the node implements it)."""

    @property
    def settings(self) -> Settings: ...

    @property
    def metrics(self) -> Metrics: ...

    @property
    def journal(self) -> Journal: ...

    @property
    def expiry(self) -> ExpiryWheel: ...

    @property
    def writer(self) -> Writer: ...

    @property
    def unavailable_log(self) -> RateLimitedLog:
        """Where commands failing with 100 (a backend unavailable) are reported."""
        ...

    @property
    def refusal_log(self) -> RateLimitedLog:
        """Where refused connects are reported (why: a token from the wrong issuer)."""
        ...

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run ``coro`` in the background (kept referenced, failures logged)."""
        ...

    async def dispatch(self, session: Session, cmd: Command) -> None:
        """Run the command's handler. Raises CommandError, ProtocolViolation,
        TokenInvalid, TokenExpired or BackendUnavailable."""
        ...

    def session_opened(self, session: Session) -> None:
        """The session's connect succeeded: into the indexes (registry, pings)."""
        ...

    def session_closed(self, session: Session) -> None:
        """The session is closing: out of every index, timer and channel now
        (synchronous; the broker and presence cleanup follow asynchronously)."""
        ...

    def end_subscription(self, session: Session, channel: str, why: Ended) -> None:
        """End one subscription now (the client is told, unless it asked), its
        presence and broker cleanup in the background."""
        ...


class SubscriptionExpiry:
    """A subscription token's deadline in the expiry wheel (only subscriptions whose
    token expires have one)."""

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
        self.session.host.expiry.cancel(self)
        if self.sub.timer is self:
            self.sub.timer = None


def _remote(conn: WsConnection) -> str:
    try:
        address = conn.remote_address
    except Exception:  # uvloop, transport closed before the address was ever read
        return ""
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return str(address or "")


class Session:
    """A client connection. Created by the server for each WebSocket connection."""

    # Slots: one of these per connection; keeps idle connections small.
    __slots__ = (
        "_debug",
        "_epoch",
        "_outbox_limit",
        "_pending",
        "_refilled",
        "_replied",
        "_strikes",
        "_tokens",
        "_transport",
        "_writer",
        "awaiting_pong",
        "client_id",
        "close_code",
        "closed_at",
        "conn",
        "conn_info",
        "connected_at",
        "expires_at",
        "expiry_key",
        "host",
        "name",
        "ping_bucket",
        "rejection_logged",
        "state",
        "subs",
        "token_iat",
        "token_jti",
        "user",
        "version",
    )

    def __init__(self, host: SessionHost, conn: WsConnection) -> None:
        self.host = host
        self.conn = conn
        self.client_id = random_uuid()
        self.state = SessionState.CONNECTING
        self.user = ""
        self.conn_info: bytes | None = None
        """The connection token's raw ``info`` claim (shown to others as conn_info)."""
        self.token_jti: str | None = None
        self.token_iat: float | None = None
        self.expires_at: float | None = None
        self.subs: dict[str, Subscription] = {}
        self._pending: set[str] | None = None
        self.name = ""
        self.version = ""
        self.connected_at = 0.0
        self.close_code: CloseCode | None = None
        self.closed_at = 0.0
        # Read now (the loop caches it while the socket is open); formatted on demand.
        conn.remote_address  # noqa: B018
        self.rejection_logged = False
        self.awaiting_pong = False
        self.ping_bucket = -1
        self.expiry_key = -1  # the connection token's bucket in host.expiry
        self._transport = conn.transport
        self._writer = host.writer
        self._epoch: object = None  # the writer's epoch of this session's last write
        settings = host.settings
        self._outbox_limit = settings.outbox_bytes
        self._tokens = settings.rate_burst
        self._refilled = time.monotonic()
        self._strikes = 0
        self._replied = False
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
        if new is SessionState.CONNECTED:
            self.host.session_opened(self)

    def client_info(self, chan_info: bytes | None = None) -> ClientInfo:
        """This client as others see it (with a subscription's ``chan_info``)."""
        return ClientInfo(self.user, self.client_id, self.conn_info, chan_info)

    @property
    def remote(self) -> str:
        """The client's address, ``host:port`` (for the event log; not kept per
        session)."""
        return _remote(self.conn)

    @property
    def pending(self) -> AbstractSet[str]:
        """Channels being set up (a connect's server-side channels, a subscribe's
        channel) whose subscribe reply is not written yet. Maintained by
        :mod:`subscriptions` only. A set exists only while one is (an idle connection
        keeps none: profiled at 0.2 KiB each)."""
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

    # --- output (synchronous, never awaits the client) -----------------------------

    def deliver(self, payload: bytes, frame: bytes | None = None) -> bool:
        """Send one message: written at once when it is the first this iteration,
        else queued behind it for one frame at the iteration's end (:mod:`writer`).
        ``frame`` is the message already framed, when fan-out built it once for
        everyone. Returns whether it was taken."""
        # The connection's flag rather than websockets' ``state`` property: this runs
        # once per delivery and the property call was 12% of fan-out CPU in a profile.
        if not self.conn.writable or self.state is _CLOSED:
            return False
        transport = self._transport
        if transport.get_write_buffer_size() > self._outbox_limit:
            self.host.metrics.drops_total += 1
            self.close_slow()
            return False
        writer = self._writer
        if self._epoch is writer.epoch:
            writer.queue(self, payload)  # behind this iteration's first write
            return True
        self._epoch = writer.epoch
        if not writer.scheduled:
            writer.arm()
        transport.write(frame if frame is not None else text_frame(payload))
        return True

    def write_frame(self, frame: bytes) -> None:
        """Write a frame the writer assembled, unless the WebSocket is closing (what
        was queued before a close decision still goes out before the close frame)."""
        if self.conn.writable:
            self._transport.write(frame)

    def flush(self) -> None:
        """Write what is queued for this session now (before a close frame)."""
        self._writer.flush_one(self)

    def recovery_room(self) -> int:
        """Bytes of missed publications a reply may still carry to this client: half
        of ``REALTIME_OUTBOX_BYTES``, less what already waits to be sent. A bigger
        recovery would make the client a slow reader as it reconnects (closed with
        3008, to reconnect and ask for even more); it is told ``recovered: false``."""
        return self._outbox_limit // 2 - self._transport.get_write_buffer_size()

    def close_slow(self) -> None:
        """The client does not read what we send: close with 3008 (logged, counted)."""
        if self.state is _CLOSED:
            return
        self.host.metrics.slow_disconnects_total += 1
        buffered = self._transport.get_write_buffer_size()
        self.host.journal.record(EventType.SLOW_CONSUMER, self, buffered=buffered)
        self.close(codes.CLOSE_SLOW)

    def send(self, payload: bytes) -> bool:
        return self.deliver(payload)

    def answer(self, reply: bytes) -> None:
        """Write the reply to the command being handled (each command gets one)."""
        self._replied = True
        self.deliver(reply)

    def reply(self, cmd: Command, result: dict[str, Any]) -> None:
        self.answer(encode_reply(cmd.id, cmd.method, result))

    def reply_error(self, cmd: Command, error: ErrorCode) -> None:
        self.host.metrics.command_errors[error.code] += 1
        if cmd.id:
            self.answer(encode_error(cmd.id, error))

    def close(self, code: CloseCode) -> None:
        """Close with ``code``: leave every index at once, send the close frame in the
        background. Idempotent; the first decision (and its time) stands."""
        if self.state is SessionState.CLOSED:
            return
        self.close_code = code
        self.host.metrics.closes[code.code] += 1
        self._leave()
        self.host.spawn(self._close_socket(code))

    async def _close_socket(self, code: CloseCode) -> None:
        self.flush()
        await self.conn.close(code.code, code.reason)

    def _leave(self) -> None:
        """Synchronous part of closing: state CLOSED, out of every index and timer."""
        if self.state is SessionState.CLOSED:
            return
        self.closed_at = time.time()
        self.transition(SessionState.CLOSED)
        self.host.expiry.cancel(self)
        for sub in self.subs.values():
            if sub.timer is not None:
                sub.timer.cancel()
        self.host.session_closed(self)

    def lost(self) -> None:
        """The connection ended (the client went, or a close completed)."""
        self._leave()

    def reject(self, code: int, reason: str) -> None:
        """Record a refused connect (once per session)."""
        if self.rejection_logged:
            return
        self.rejection_logged = True
        self.host.metrics.connect_rejected[code] += 1
        remote = self.remote
        self.host.journal.record(
            EventType.CONNECT_REJECTED, self, code=code, reason=reason, remote=remote
        )
        self.host.refusal_log.note(f"{code} {reason}, client {remote}")

    # --- input -----------------------------------------------------------------------

    def _rate_ok(self) -> bool:
        settings = self.host.settings
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
        self.host.metrics.rate_limited_total += 1
        journal = self.host.journal
        if self._strikes == 1:
            journal.record(EventType.RATE_LIMITED, self, code=codes.TOO_MANY_REQUESTS.code)
        if self._strikes >= settings.rate_strikes:
            journal.record(EventType.RATE_LIMITED, self, code=codes.CLOSE_TOO_MANY_REQUESTS.code)
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
        self.host.metrics.commands_total += 1
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
        self._replied = False
        try:
            try:
                await self.host.dispatch(self, cmd)
            except TokenInvalid as exc:  # why goes to the log and the audit, not the client
                raise ProtocolViolation(codes.CLOSE_INVALID_TOKEN, str(exc)) from None
            except TokenExpired:
                raise CommandError(codes.TOKEN_EXPIRED) from None
            except BackendUnavailable as exc:
                self.host.unavailable_log.failed(f"{method} of client {self.client_id}", exc)
                raise CommandError(codes.INTERNAL) from None
        except CommandError as exc:
            self._refused(cmd, exc.error.code, _why(exc.error.message, exc))
            self._reply_error_once(cmd, exc.error)
        except ProtocolViolation as exc:
            self._refused(cmd, exc.close.code, _why(exc.close.reason, exc))
            raise
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("command %s failed for client %s", method, self.client_id)
            self._refused(cmd, codes.INTERNAL.code, "internal error")
            self._reply_error_once(cmd, codes.INTERNAL)

    def _reply_error_once(self, cmd: Command, error: ErrorCode) -> None:
        """An error reply, unless the command was already answered (a failure after
        the reply is logged, never answered twice)."""
        if self._replied:
            logger.warning(
                "command %s of client %s failed after its reply (%d); not answered twice",
                cmd.method,
                self.client_id,
                error.code,
            )
            return
        self.reply_error(cmd, error)

    def _refused(self, cmd: Command, code: int, reason: str) -> None:
        """Log refusals of connect and subscribe (the audit trail cares about those)."""
        if cmd.method == "connect" and self.state is SessionState.CONNECTING:
            self.reject(code, reason)
        elif cmd.method == "subscribe" and not self._replied:
            channel = cmd.params.get("channel")
            self.host.journal.record(
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
        wheel = self.host.expiry
        if expires_at is None:
            wheel.cancel(self)
        else:
            wheel.schedule(self, expires_at - time.time() + self.host.settings.expiry_grace)

    def expire(self) -> None:
        """The connection token's deadline passed (called by the expiry wheel)."""
        expires_at = self.expires_at
        if self.state is not SessionState.CONNECTED or expires_at is None:
            return
        remaining = expires_at - time.time()
        if remaining > 0:  # the wall clock went back: wait for it
            self.host.expiry.schedule(self, remaining + self.host.settings.expiry_grace)
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
        delay = expires_at - time.time() + self.host.settings.expiry_grace
        self.host.expiry.schedule(timer, delay)

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
        self.host.end_subscription(self, sub.channel, Ended.EXPIRED)


def _why(meaning: str, exc: Exception) -> str:
    """A refusal's reason for the audit and the log: the code's meaning, and the
    detail when there is one ("invalid token: wrong issuer (...)")."""
    detail = str(exc)
    return meaning if detail == meaning else f"{meaning}: {detail}"
