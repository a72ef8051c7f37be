"""The node: sessions, the hub and the engine put together.

It subscribes the engine's broker to a channel on the channel's first local subscriber
and unsubscribes on the last (reference counting by the hub's membership, serialised per
channel by striped locks so concurrent subscribe/unsubscribe never leave a stray broker
subscription). It receives the broker's events (:class:`BrokerEventHandler`) and the
revocation store's announcements, and offers the operations of the server API.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections.abc import Coroutine, Sequence
from typing import Any

from . import __version__, codes
from .auth.revocation import Revocation, RevocationStore
from .auth.tokens import TokenVerifier
from .channels.engine import (
    ControlMessage,
    Engine,
    HistoryOptions,
    HistoryQuery,
    HistoryResult,
    Membership,
    PresenceStats,
)
from .channels.namespaces import NamespaceOptions, Namespaces
from .codes import CloseCode
from .commands import COMMANDS
from .config import Settings
from .errors import BackendUnavailable, CommandError
from .events import Event, EventRecorder, EventType, NullRecorder
from .expiry import EXPIRY_TICK, ExpiryWheel
from .health import Health, Readiness
from .hub import Hub
from .index import MultiIndex
from .keepalive import Keepalive
from .metrics import Metrics
from .protocol import (
    ClientInfo,
    HistoryRequest,
    Publication,
    RawJSON,
    StreamPosition,
    SubscribeRequest,
    encode_join,
    encode_leave,
    encode_unsubscribe_push,
)
from .session import Session, SessionState, Subscription

__all__ = ["Node"]

logger = logging.getLogger("realtime_server.node")

_LOCK_STRIPES = 1024


def _history_query(channel: str, hopts: HistoryOptions, req: SubscribeRequest) -> HistoryQuery:
    """The history read of a subscribe: the top, or what was missed when recovering."""
    if req.recover:
        since = StreamPosition(req.offset, req.epoch)
        return HistoryQuery(channel, since=since, limit=-1, options=hopts)
    return HistoryQuery(channel, limit=0, options=hopts)


def _memberships(subs: Sequence[Subscription]) -> list[Membership]:
    """The subscriptions whose arrival or end the engine must record or announce."""
    return [
        Membership(sub.channel, sub.info, sub.options.presence, sub.options.join_leave)
        for sub in subs
        if sub.options.presence or sub.options.join_leave
    ]


def _subscribe_result(req: SubscribeRequest, found: HistoryResult) -> tuple[dict[str, Any], int]:
    """The subscribe result of a positioned channel, and the offset the client is at
    once it is delivered."""
    top = found.top
    result: dict[str, Any] = {
        "recoverable": True,
        "positioned": True,
        "epoch": top.epoch,
        "offset": top.offset,
    }
    if not req.recover:
        return result, top.offset
    pubs = found.publications
    recovered = (
        (not req.epoch or req.epoch == top.epoch)
        and req.offset <= top.offset
        and len(pubs) == top.offset - req.offset
    )
    result["was_recovering"] = True
    result["recovered"] = recovered
    if not recovered:
        return result, top.offset
    result["offset"] = req.offset
    if pubs:
        result["publications"] = [p.to_json() for p in pubs]
    return result, top.offset


class Node:
    """One server process's view of clients and channels."""

    version = __version__

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        revocations: RevocationStore,
        verifier: TokenVerifier,
        events: EventRecorder | None = None,
    ) -> None:
        self.settings = settings
        self.events: EventRecorder = events if events is not None else NullRecorder()
        self._events_off = isinstance(self.events, NullRecorder)
        self.name = settings.node()
        self.engine = engine
        self.broker = engine.broker
        self.revocations = revocations
        self.verifier = verifier
        self.namespaces: Namespaces = settings.namespaces()
        self.metrics = Metrics(self.name)
        self.hub = Hub(self.metrics)
        self.keepalive = Keepalive(settings.ping_interval, settings.pong_timeout)
        self.expiry = ExpiryWheel(EXPIRY_TICK)  # token deadlines of sessions, subscriptions
        self.commands = COMMANDS
        self.sessions: dict[str, Session] = {}
        self.by_user: MultiIndex[Session] = MultiIndex()
        self.by_jti: MultiIndex[Session] = MultiIndex()
        self.draining = False
        self._locks = [asyncio.Lock() for _ in range(_LOCK_STRIPES)]
        self._broker_channels: set[str] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.broker.set_handler(self)
        revocations.set_listener(self.handle_revocation)
        self.health = Health()
        self.health.require("node", lambda: "draining" if self.draining else None)
        self.health.require("broker", lambda: None if self.broker.ready else "unreachable")
        self.health.watch("event_log", self.events.problem)
        self.metrics.gauge("connections", "Connected clients.", lambda: len(self.sessions))
        self.metrics.gauge(
            "subscriptions",
            "Channel subscriptions of connected clients.",
            lambda: self.hub.num_subscriptions,
        )
        self.metrics.gauge(
            "channels", "Channels with local subscribers.", lambda: self.hub.num_channels
        )

    # --- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        await self.events.start()
        await self.broker.start()
        self.keepalive.start()
        self.spawn(self._refresh_presence())

    async def _refresh_presence(self) -> None:
        """Re-add local clients' presence before it expires (shared engines expire
        entries so that a crashed node's clients disappear)."""
        while True:
            await asyncio.sleep(self.settings.presence_ttl / 3)
            for s in list(self.sessions.values()):
                for sub in list(s.subs.values()):
                    if sub.options.presence and s.state is SessionState.CONNECTED:
                        try:
                            await self.engine.presence.add(
                                sub.channel, sub.info, self.settings.presence_ttl
                            )
                        except Exception:  # retried on the next round
                            logger.debug("presence refresh failed", exc_info=True)

    async def close(self) -> None:
        self.expiry.close()
        await self.keepalive.stop()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.broker.close()
        await self.engine.presence.close()
        await self.revocations.close()
        await self.events.close()

    def shutdown_clients(self, code: CloseCode = codes.CLOSE_SHUTDOWN) -> None:
        """Stop serving: every session is closed with ``code`` (3001 by default)."""
        self.draining = True
        for session in list(self.sessions.values()):
            session.close(code)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run ``coro`` in the background, keeping a reference and logging failures."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("background task failed", exc_info=task.exception())

    def readiness(self) -> Readiness:
        """What keeps this node from serving clients, and what is degraded."""
        return self.health.readiness()

    # --- event log ------------------------------------------------------------------------

    def log(
        self,
        kind: EventType,
        s: Session | None = None,
        *,
        channel: str | None = None,
        offset: int | None = None,
        code: int | None = None,
        user: str | None = None,
        at: float | None = None,
        **details: Any,
    ) -> None:
        """Record an event (never blocks). ``details`` must hold no token or payload;
        ``at``: the event's time when it is not now."""
        if self._events_off:
            return
        event = Event(
            kind,
            self.name,
            user=user if user is not None else (s.user or None if s is not None else None),
            client=s.client_id if s is not None else None,
            channel=channel,
            offset=offset,
            code=code,
            details=details or None,
        )
        if at is not None:
            event.time = at
        self.events.record(event)

    def connect_rejected(self, s: Session, code: int, reason: str) -> None:
        if s.rejection_logged:
            return
        s.rejection_logged = True
        self.metrics.connect_rejected[code] += 1
        self.log(EventType.CONNECT_REJECTED, s, code=code, reason=reason, remote=s.remote)

    # --- session index ------------------------------------------------------------------

    def register(self, s: Session) -> None:
        self.sessions[s.client_id] = s
        self.by_user.add(s.user, s)
        self.index_jti(s, s.token_jti)
        self.keepalive.add(s)
        self.metrics.connections_total += 1

    def forget(self, s: Session) -> None:
        """Remove a closing session from every index (synchronous)."""
        self.keepalive.remove(s)
        for name in (*s.subs, *s.pending):
            self.hub.remove(name, s)
        if self.sessions.pop(s.client_id, None) is None:
            return
        self.by_user.remove(s.user, s)
        self.unindex_jti(s, s.token_jti)
        for sub in s.subs.values():
            self.unindex_jti(s, sub.token_jti)

    def user_connections(self, user: str) -> int:
        return self.by_user.count(user)

    def index_jti(self, s: Session, jti: str | None) -> None:
        if jti is not None:
            self.by_jti.add(jti, s)

    def unindex_jti(self, s: Session, jti: str | None) -> None:
        if jti is not None:
            self.by_jti.remove(jti, s)

    def reindex_jti(self, s: Session, old: str | None, new: str | None) -> None:
        self.unindex_jti(s, old)
        self.index_jti(s, new)

    # --- subscriptions ------------------------------------------------------------------

    def _lock(self, channel: str) -> asyncio.Lock:
        return self._locks[zlib.crc32(channel.encode()) % _LOCK_STRIPES]

    async def _acquire(self, channel: str) -> None:
        async with self._lock(channel):
            if channel not in self._broker_channels and self.hub.has_local(channel):
                await self.broker.subscribe(channel)
                self._broker_channels.add(channel)

    async def release(self, channel: str) -> None:
        """Unsubscribe the broker from ``channel`` if no local session holds it."""
        async with self._lock(channel):
            if channel in self._broker_channels and not self.hub.has_local(channel):
                self._broker_channels.discard(channel)
                await self.broker.unsubscribe(channel)

    async def release_all(self, channels: list[str]) -> None:
        for channel in channels:
            await self.release(channel)

    async def _acquire_many(self, channels: list[str]) -> None:
        """:meth:`_acquire` for several channels; the broker subscriptions they need
        run concurrently (each confirmed when this returns). On a failure the channels
        that did get subscribed stay counted: the caller releases them all."""
        # Held channels need nothing: the caller's pending entry (added before this)
        # keeps ``release`` from dropping them meanwhile.
        new = [c for c in channels if c not in self._broker_channels]
        if len(new) <= 1:
            for channel in new:
                await self._acquire(channel)
            return
        outcomes = await asyncio.gather(*(self._acquire(c) for c in new), return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome

    async def attach(
        self, s: Session, channel: str, options: NamespaceOptions, req: SubscribeRequest
    ) -> tuple[dict[str, Any], int]:
        """Start a subscription: buffer the channel's frames for ``s``, subscribe the
        broker, read the stream position (and the missed publications when recovering).

        Returns the subscribe result and the offset the client is at once the result is
        delivered. The caller writes the reply, then calls ``hub.activate``.
        """
        return (await self.attach_many(s, [(channel, options, req)]))[0]

    async def attach_many(
        self, s: Session, subs: Sequence[tuple[str, NamespaceOptions, SubscribeRequest]]
    ) -> list[tuple[dict[str, Any], int]]:
        """:meth:`attach` for several channels at once (a connect's): the broker
        subscriptions run concurrently and are all confirmed before one history read
        for every channel (one round trip on Redis), so that read misses nothing.

        All or nothing: on a failure every channel is removed for ``s`` and released.
        """
        channels = [channel for channel, _, _ in subs]
        for channel in channels:
            self.hub.add_pending(channel, s)
        hopts = [options.history_options() for _, options, _ in subs]
        try:
            await self._acquire_many(channels)
            queries = [
                _history_query(channel, h, req)
                for (channel, _, req), h in zip(subs, hopts, strict=True)
                if h is not None
            ]
            found = iter(await self.broker.history_many(queries) if queries else ())
        except BaseException:
            for channel in channels:
                self.hub.remove(channel, s)
            await self.release_all(channels)
            raise
        return [
            _subscribe_result(req, next(found)) if h is not None else ({}, 0)
            for (_, _, req), h in zip(subs, hopts, strict=True)
        ]

    async def joined(self, s: Session, sub: Subscription) -> None:
        """Presence and join for a new subscription (when the namespace has them).

        Best effort: the subscribe reply is already out, so a backend failure here is
        logged, never answered (the presence refresher adds the entry again later)."""
        await self.joined_many(s, [sub])

    async def joined_many(self, s: Session, subs: Sequence[Subscription]) -> None:
        """:meth:`joined` for several subscriptions (one round trip on Redis)."""
        joins = _memberships(subs)
        if not joins:
            return
        try:
            await self.engine.joined(joins, self.settings.presence_ttl)
        except BackendUnavailable:
            logger.warning(
                "presence/join for %s not recorded: backend unavailable",
                ", ".join(j.channel for j in joins),
            )

    async def _left(self, subs: Sequence[Subscription]) -> None:
        """Presence removal and leave for ended subscriptions (one round trip on
        Redis); best effort (shared presence entries expire)."""
        leaves = _memberships(subs)
        if not leaves:
            return
        try:
            await self.engine.left(leaves)
        except BackendUnavailable:
            logger.warning(
                "presence/leave for %s not recorded: backend unavailable",
                ", ".join(m.channel for m in leaves),
            )

    async def unsubscribe(self, s: Session, channel: str, reason: str = "client") -> None:
        sub = s.subs.pop(channel, None)
        if sub is None:
            return
        if sub.timer is not None:
            sub.timer.cancel()
        self.unindex_jti(s, sub.token_jti)
        self.hub.remove(channel, s)
        self.log(EventType.UNSUBSCRIBE, s, channel=channel, reason=reason)
        try:
            await self._left((sub,))
        finally:
            await self.release(channel)

    async def finish(self, s: Session) -> None:
        """Asynchronous part of a session's end: presence, leave, broker refcounts."""
        s.detach()
        if s.connected_at:
            code = s.close_code.code if s.close_code is not None else s.conn.close_code
            at = s.closed_at  # hardening (issue 11): when it was decided, set by detach()
            self.log(
                EventType.DISCONNECT,
                s,
                code=code,
                at=at,
                duration=round(at - s.connected_at, 3),
                by="server" if s.close_code is not None else "client",
            )
            for name in s.subs:
                self.log(EventType.UNSUBSCRIBE, s, channel=name, reason="disconnect")
        subs = list(s.subs.values())
        channels = [*s.subs, *s.pending]
        s.subs.clear()
        s.clear_pending()
        try:
            await self._left(subs)
        except Exception:
            channels_left = ", ".join(sub.channel for sub in subs)
            logger.warning("presence cleanup failed for %s", channels_left, exc_info=True)
        for channel in channels:
            await self.release(channel)

    # --- broker events (BrokerEventHandler) --------------------------------------------

    def handle_publication(self, channel: str, pub: Publication) -> None:
        self.hub.publish(channel, pub)

    def handle_join(self, channel: str, info: ClientInfo) -> None:
        self.hub.broadcast(channel, encode_join(channel, info))

    def handle_leave(self, channel: str, info: ClientInfo) -> None:
        self.hub.broadcast(channel, encode_leave(channel, info))

    def handle_reconnect(self) -> None:
        """Revocations announced while the link was down were missed: re-check every
        live token against the store."""
        logger.info("broker link restored; re-checking %d connections", len(self.sessions))
        self.spawn(self.recheck_revocations())

    async def recheck_revocations(self) -> None:
        """Close every session whose token was revoked while we could not hear it.
        Retried with backoff while the store is unreachable."""
        for attempt in range(8):
            try:
                await self._recheck_revocations()
                return
            except BackendUnavailable:
                await asyncio.sleep(min(5.0, 0.1 * 2**attempt))
        logger.warning("could not re-check revocations: revocation store unreachable")

    async def _recheck_revocations(self) -> None:
        sessions = list(self.sessions.values())
        tokens: list[tuple[str | None, str, float | None]] = []
        owners: list[Session] = []
        for s in sessions:
            tokens.append((s.token_jti, s.user, s.token_iat))
            owners.append(s)
            for sub in s.subs.values():
                if sub.token_jti is not None or sub.token_iat is not None:
                    tokens.append((sub.token_jti, s.user, sub.token_iat))
                    owners.append(s)
        for start in range(0, len(tokens), 1000):
            chunk = tokens[start : start + 1000]
            revoked = await self.revocations.revoked_many(chunk)
            for owner, is_revoked in zip(owners[start : start + 1000], revoked, strict=True):
                if is_revoked:
                    owner.close(codes.CLOSE_TOKEN_REVOKED)

    def handle_insufficient_state(self, channel: str) -> None:
        """Publications were lost on ``channel``: make its subscribers recover."""
        code, reason = codes.UNSUBSCRIBE_INSUFFICIENT
        push = encode_unsubscribe_push(channel, code, reason)
        for s in self.hub.subscribers(channel):
            sub = s.subs.get(channel)
            if sub is None:
                continue
            if sub.server_side:
                s.close(codes.CLOSE_INSUFFICIENT_STATE)
            else:
                s.send(push)  # the SDK resubscribes with its position and recovers
                self.spawn(self.unsubscribe(s, channel, reason="insufficient state"))

    def handle_control(self, message: ControlMessage) -> None:
        params = message.params
        user = str(params.get("user") or "")
        if message.kind == "revoke":
            kind = params.get("type")
            if kind in ("jti", "user"):
                before = params.get("issued_before")
                self.handle_revocation(
                    Revocation(
                        "jti" if kind == "jti" else "user",
                        jti=str(params["jti"]) if params.get("jti") is not None else None,
                        user=str(params["user"]) if params.get("user") is not None else None,
                        issued_before=float(before) if before is not None else None,
                    )
                )
        elif message.kind == "disconnect":
            code = CloseCode(
                int(params.get("code") or codes.CLOSE_SHUTDOWN.code),
                str(params.get("reason") or "disconnect"),
                reconnect=True,
            )
            for s in self.by_user.get(user):
                if not params.get("client") or params["client"] == s.client_id:
                    s.close(code)
        elif message.kind == "unsubscribe":
            channel = str(params.get("channel") or "")
            for s in self.by_user.get(user):
                if channel in s.subs:
                    push_code, push_reason = codes.UNSUBSCRIBE_SERVER
                    s.send(encode_unsubscribe_push(channel, push_code, push_reason))
                    self.spawn(self.unsubscribe(s, channel, reason="server"))

    def handle_revocation(self, revocation: Revocation) -> None:
        """Close every local session holding a token the revocation covers."""
        self.metrics.revocations_total += 1
        if revocation.kind == "jti":
            targets = set(self.by_jti.get(revocation.jti or ""))
        else:
            targets = set()
            for s in self.by_user.get(revocation.user or ""):
                if revocation.matches(s.token_jti, s.user, s.token_iat) or any(
                    sub.token_jti is not None
                    and revocation.matches(sub.token_jti, s.user, sub.token_iat)
                    for sub in s.subs.values()
                ):
                    targets.add(s)
        for s in targets:
            s.close(codes.CLOSE_TOKEN_REVOKED)
        self.log(
            EventType.TOKEN_REVOKED,
            user=revocation.user,
            revocation=revocation.kind,
            jti=revocation.jti,
            issued_before=revocation.issued_before,
            closed=len(targets),
        )

    # --- server API operations -----------------------------------------------------------

    def channel_options(self, channel: str) -> NamespaceOptions:
        return self.namespaces.resolve(channel)[1]

    async def publish(
        self,
        channel: str,
        data: RawJSON,
        *,
        info: ClientInfo | None = None,
        tags: dict[str, str] | None = None,
        publisher: str = "api",
    ) -> StreamPosition | None:
        """Publish ``data`` (encoded JSON) to ``channel``; returns the stream position
        when the channel keeps history. Raises :class:`CommandError` (107/102)."""
        options = self.channel_options(channel)
        position = await self.broker.publish(
            channel, data, info=info, tags=tags, history=options.history_options()
        )
        self.log(
            EventType.PUBLICATION,
            channel=channel,
            offset=position.offset if position is not None else None,
            user=info.user if info is not None else None,
            size=len(data),
            publisher=publisher,
        )
        return position

    async def disconnect_user(self, user: str, code: int, reason: str, client: str = "") -> None:
        await self.broker.publish_control(
            ControlMessage(
                "disconnect", {"user": user, "code": code, "reason": reason, "client": client}
            )
        )

    async def unsubscribe_user(self, user: str, channel: str) -> None:
        self.channel_options(channel)
        await self.broker.publish_control(
            ControlMessage("unsubscribe", {"user": user, "channel": channel})
        )

    async def presence(self, channel: str) -> dict[str, ClientInfo]:
        if not self.channel_options(channel).presence:
            raise CommandError(codes.NOT_AVAILABLE)
        return await self.engine.presence.presence(channel)

    async def presence_stats(self, channel: str) -> PresenceStats:
        if not self.channel_options(channel).presence:
            raise CommandError(codes.NOT_AVAILABLE)
        return await self.engine.presence.stats(channel)

    async def history(self, req: HistoryRequest) -> dict[str, Any]:
        """The history reply body: ``publications``, ``epoch``, ``offset``."""
        options = self.channel_options(req.channel)
        hopts = options.history_options()
        if hopts is None:
            raise CommandError(codes.NOT_AVAILABLE)
        if req.reverse and req.since is not None and req.since.offset == 0:
            raise CommandError(codes.BAD_REQUEST)
        limit = req.limit
        if limit < 0 or limit > hopts.size:
            limit = hopts.size
        found = await self.broker.history(
            req.channel, since=req.since, limit=limit, reverse=req.reverse, options=hopts
        )
        if req.since is not None and req.since.epoch and req.since.epoch != found.top.epoch:
            raise CommandError(codes.UNRECOVERABLE_POSITION)
        return {
            "publications": [p.to_json() for p in found.publications],
            "epoch": found.top.epoch,
            "offset": found.top.offset,
        }

    def info(self) -> dict[str, Any]:
        return {
            "nodes": [
                {
                    "uid": self.name,
                    "name": self.name,
                    "version": self.version,
                    "num_clients": len(self.sessions),
                    "num_users": len(self.by_user),
                    "num_channels": self.hub.num_channels,
                    "num_subs": self.hub.num_subscriptions,
                    "engine": self.engine.name,
                }
            ]
        }
