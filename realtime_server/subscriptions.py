"""The owner of every subscription on this node, from the broker's reference count
through pending to live, with presence and join/leave.

Life of a subscription:

1. **begin** (:meth:`Subscriptions.setting_up`): the channel is *pending* for the
   session (in the session and in the hub, which buffers its frames), the broker is
   subscribed (first local subscriber of the channel; confirmed before going on), and
   the stream position is read, with what the client missed when it recovers.
2. **commit** (:meth:`Setup.commit`, synchronous): the subscription is recorded, the
   reply written, then the channel goes live for the session and the buffered frames
   it has not seen follow the reply in order.
3. **abort**: anything that fails or is refused between 1 and 2, and a session that
   closed meanwhile, is undone by the same ``async with`` block that began it.
4. **end**: unsubscribe, disconnect, expiry, server unsubscribe, lost publications:
   every path goes through :meth:`Subscriptions.end` (synchronous: no frame of the
   channel after it) then :meth:`Subscriptions.settle` (presence, leave, broker).

The broker holds a channel while the hub has any local subscriber, live or pending:
acquire and release re-check that under the channel's lock, so concurrent subscribes,
unsubscribes and disconnects never leave a stray broker subscription nor drop a needed
one, whatever order they finish in.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from types import TracebackType
from typing import Any

from . import codes
from .channels.engine import Engine, HistoryQuery, HistoryResult, Membership
from .channels.namespaces import NamespaceOptions
from .errors import BackendUnavailable
from .events import EventType
from .hub import Hub
from .journal import Journal
from .model import Publication
from .protocol import (
    SubscribeRequest,
    SubscribeResult,
    encode_client_info,
    encode_unsubscribe_push,
)
from .records import Ended, Subscription
from .registry import Registry
from .session import Session, SessionState
from .values import immutable

__all__ = ["Request", "Setup", "Subscriptions"]

logger = logging.getLogger("realtime_server.subscriptions")

_LOCK_STRIPES = 1024
_PUSHES = {
    Ended.EXPIRED: codes.UNSUBSCRIBE_EXPIRED,
    Ended.SERVER: codes.UNSUBSCRIBE_SERVER,
    Ended.INSUFFICIENT_STATE: codes.UNSUBSCRIBE_INSUFFICIENT,
}


@immutable
class Request:
    """One channel to set up for a session."""

    channel: str
    options: NamespaceOptions
    request: SubscribeRequest


@immutable
class Outcome:
    """What setting a channel up found: the result to send, and the offset the client
    is at once that result is delivered (buffered frames up to it are duplicates)."""

    result: SubscribeResult
    delivered: int


_PUBLICATION_OVERHEAD = 48
"""Bytes a recovered publication adds to a reply beside its data (keys, offset)."""


def recovered_size(pubs: Sequence[Publication]) -> int:
    """What recovering ``pubs`` adds to a reply, about (see Session.recovery_room)."""
    return sum(len(p.data) for p in pubs) + _PUBLICATION_OVERHEAD * len(pubs)


def _outcome(req: SubscribeRequest, found: HistoryResult | None, room: int) -> Outcome:
    """The result for one channel; ``room``: bytes of publications it may recover."""
    if found is None:  # a channel without history
        return Outcome(SubscribeResult(), 0)
    top = found.top
    if not req.recover:
        return Outcome(SubscribeResult(top), top.offset)
    pubs = found.publications
    recovered = (
        (not req.epoch or req.epoch == top.epoch)
        and req.offset <= top.offset
        and len(pubs) == top.offset - req.offset
        and (not pubs or recovered_size(pubs) <= room)
    )
    if not recovered:
        return Outcome(SubscribeResult(top, recovering=True), top.offset)
    position = type(top)(req.offset, top.epoch)  # the client's, then the publications
    return Outcome(
        SubscribeResult(position, recovering=True, recovered=True, publications=tuple(pubs)),
        top.offset,
    )


class Setup:
    """Channels being set up for one session (``async with subscriptions.setting_up``).

    Entering begins them (all or nothing); :meth:`commit` makes them live; leaving the
    block without a commit undoes them, whatever happened in between.
    """

    __slots__ = ("_check", "_owner", "committed", "outcomes", "requests", "session")

    def __init__(
        self,
        owner: Subscriptions,
        session: Session,
        requests: Sequence[Request],
        check: Callable[[], Awaitable[None]] | None = None,
    ):
        self._owner = owner
        self.session = session
        self.requests = tuple(requests)
        self._check = check
        self.outcomes: tuple[Outcome, ...] = ()
        self.committed = False

    @property
    def alive(self) -> bool:
        """Whether the session is still open (a commit is possible)."""
        return self.session.state is not SessionState.CLOSED

    async def __aenter__(self) -> Setup:
        try:
            self.outcomes = await self._owner._begin(self.session, self.requests, self._check)
        except BaseException:
            await self._owner._abort(self.session, self.requests)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self.committed:
            await self._owner._abort(self.session, self.requests)

    def commit(self, subs: Sequence[Subscription], reply: bytes) -> None:
        """Record ``subs`` (one per request, in order), write ``reply``, then make the
        channels live. Synchronous: nothing can come between the reply and the frames
        that follow it. The session must be alive (check :attr:`alive`)."""
        if not self.alive:
            raise RuntimeError("commit on a closed session")
        self._owner._commit(self.session, subs, self.outcomes, reply)
        self.committed = True


class Subscriptions:
    """Every subscription of this node (see the module docstring)."""

    def __init__(
        self,
        engine: Engine,
        hub: Hub,
        registry: Registry,
        journal: Journal,
        presence_ttl: float,
        spawn: Callable[[Coroutine[Any, Any, Any]], None],
    ) -> None:
        self._engine = engine
        self._broker = engine.broker
        self._hub = hub
        self._registry = registry
        self._journal = journal
        self._presence_ttl = presence_ttl
        self._spawn = spawn
        self._locks = [asyncio.Lock() for _ in range(_LOCK_STRIPES)]
        self._held: set[str] = set()

    @property
    def held(self) -> frozenset[str]:
        """Channels the broker is subscribed to for this node."""
        return frozenset(self._held)

    # --- the broker's reference (held while the hub has a local subscriber) ---------

    def _lock(self, channel: str) -> asyncio.Lock:
        return self._locks[zlib.crc32(channel.encode()) % _LOCK_STRIPES]

    async def _acquire(self, channel: str) -> None:
        async with self._lock(channel):
            if channel not in self._held and self._hub.has_local(channel):
                await self._broker.subscribe(channel)
                self._held.add(channel)

    async def _release(self, channel: str) -> None:
        async with self._lock(channel):
            if channel in self._held and not self._hub.has_local(channel):
                self._held.discard(channel)
                await self._broker.unsubscribe(channel)

    async def _acquire_all(self, channels: Sequence[str]) -> None:
        """The broker subscriptions run concurrently; each is confirmed on return. A
        channel whose lock is taken is being acquired by another setup (it costs no
        round trip of ours): when at most one channel is left to subscribe, or the
        broker subscribes without I/O, they are awaited in turn, with no task for each."""
        new: list[str] = []
        busy: list[str] = []
        for c in channels:
            if c not in self._held:
                (busy if self._lock(c).locked() else new).append(c)
        if len(new) <= 1 or self._broker.instant_subscribe:
            for channel in (*new, *busy):
                await self._acquire(channel)
            return
        new += busy
        outcomes = await asyncio.gather(*(self._acquire(c) for c in new), return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome

    # --- begin, commit, abort --------------------------------------------------------

    def setting_up(
        self,
        s: Session,
        requests: Sequence[Request],
        check: Callable[[], Awaitable[None]] | None = None,
    ) -> Setup:
        """``async with subscriptions.setting_up(s, requests) as setup:`` (see Setup).

        ``check``, when given, is started right before the history read (after the
        broker subscriptions) and awaited with it: a check that asks Redis (the
        revocation store's) then leaves in the same write as the read. Its error, if
        any, is raised rather than the read's, and aborts the setup like any other."""
        return Setup(self, s, requests, check)

    async def _begin(
        self,
        s: Session,
        requests: Sequence[Request],
        check: Callable[[], Awaitable[None]] | None = None,
    ) -> tuple[Outcome, ...]:
        for r in requests:
            s.add_pending(r.channel)
            self._hub.add_pending(r.channel, s)
        await self._acquire_all([r.channel for r in requests])
        # One history read for every channel with history (one round trip on Redis),
        # after every broker subscription is confirmed: it misses nothing.
        queries: list[HistoryQuery] = []
        for r in requests:
            hopts = r.options.history_options()
            if hopts is not None:
                limit = -1 if r.request.recover else 0
                queries.append(HistoryQuery(r.channel, r.request.since, limit, options=hopts))
        found = iter(await self._read(queries, check))
        # One reply carries every channel's recovery: they share the session's room,
        # in the order asked; a channel that does not fit is told recovered: false.
        room = s.recovery_room()
        outcomes = []
        for r in requests:
            outcome = _outcome(r.request, next(found) if r.options.history else None, room)
            if outcome.result.publications:
                room -= recovered_size(outcome.result.publications)
            outcomes.append(outcome)
        return tuple(outcomes)

    async def _read(
        self, queries: list[HistoryQuery], check: Callable[[], Awaitable[None]] | None
    ) -> Sequence[HistoryResult]:
        if check is None:
            return await self._broker.history_many(queries) if queries else ()
        verdict = check()  # a remote check's request is sent now: with the read's
        try:
            found = await self._broker.history_many(queries) if queries else ()
        except asyncio.CancelledError:
            asyncio.ensure_future(verdict).add_done_callback(_retrieved)  # not left pending
            raise
        except BaseException:
            await verdict  # its verdict comes first (a revoked token is told so)
            raise
        await verdict
        return found

    def _commit(
        self,
        s: Session,
        subs: Sequence[Subscription],
        outcomes: Sequence[Outcome],
        reply: bytes,
    ) -> None:
        for sub in subs:
            s.discard_pending(sub.channel)
            s.subs[sub.channel] = sub
            self._registry.index_token(s, sub.token_jti)
        s.answer(reply)
        for sub, outcome in zip(subs, outcomes, strict=True):
            self._hub.activate(sub.channel, s, outcome.delivered)
            result = outcome.result
            details: dict[str, Any] = {"server_side": sub.server_side}
            if result.recovering:
                details["recovered"] = result.recovered
                details["recovered_count"] = len(result.publications)
            offset = result.position.offset if result.position is not None else None
            self._journal.record(
                EventType.SUBSCRIBE, s, channel=sub.channel, offset=offset, **details
            )

    async def _abort(self, s: Session, requests: Sequence[Request]) -> None:
        for r in requests:
            s.discard_pending(r.channel)
            self._hub.remove(r.channel, s)
        for r in requests:
            await self._release_quietly(r.channel)

    # --- join, leave, presence ---------------------------------------------------------

    def _memberships(self, subs: Sequence[Subscription]) -> list[Membership]:
        """Presence entries and join/leave announcements for ``subs`` (join/leave only
        while the channel's local subscribers are within its namespace's bound)."""
        out: list[Membership] = []
        for sub in subs:
            options = sub.options
            announce = options.announces(self._hub.count(sub.channel))
            if options.presence or announce:
                # Encoded here, once for the presence entry and the announcement (not
                # kept per subscription: 0.1 KiB per idle connection).
                info_json = encode_client_info(sub.client_info)
                out.append(
                    Membership(sub.channel, sub.client_info, options.presence, announce, info_json)
                )
        return out

    async def joined(self, subs: Sequence[Subscription]) -> None:
        """Presence and join for new subscriptions (one round trip on Redis). Never
        raises: the reply is out; the presence refresher adds a missed entry later."""
        joins = self._memberships(subs)
        if joins:
            await _best_effort("join", self._engine.joined(joins, self._presence_ttl), joins)

    async def refresh_presence(self) -> None:
        """Re-add local clients' presence before it expires (shared engines expire
        entries so that a crashed node's clients disappear)."""
        for s in self._registry:
            for sub in list(s.subs.values()):
                if sub.options.presence and s.state is SessionState.CONNECTED:
                    try:
                        await self._engine.presence.add(
                            sub.channel, sub.client_info, self._presence_ttl
                        )
                    except Exception:  # retried on the next round
                        logger.debug("presence refresh failed", exc_info=True)

    # --- the end ---------------------------------------------------------------------

    def end(self, s: Session, channel: str, why: Ended) -> Subscription | None:
        """End one subscription now: no frame of the channel reaches the session after
        this; the client is told why (unsubscribe push), unless it asked. The caller
        then awaits (or spawns) :meth:`settle` with the returned subscription."""
        sub = s.subs.pop(channel, None)
        if sub is None:
            return None
        if sub.timer is not None:
            sub.timer.cancel()
        self._registry.unindex_token(s, sub.token_jti)
        self._hub.remove(channel, s)
        push = _PUSHES.get(why)
        if push is not None:
            code, reason = push
            s.send(encode_unsubscribe_push(channel, code, reason))
        self._journal.record(EventType.UNSUBSCRIBE, s, channel=channel, reason=why.value)
        return sub

    def end_later(self, s: Session, channel: str, why: Ended) -> None:
        """:meth:`end`, with presence/leave/broker cleanup in the background."""
        sub = self.end(s, channel, why)
        if sub is not None:
            self._spawn(self.settle((sub,)))

    async def unsubscribe(self, s: Session, channel: str) -> None:
        """The client's unsubscribe: ended and settled before its reply."""
        sub = self.end(s, channel, Ended.CLIENT)
        if sub is not None:
            await self.settle((sub,))

    def session_closed(self, s: Session) -> None:
        """The session is closing: out of the hub for every channel now (synchronous);
        :meth:`end_session` settles its subscriptions, the setups in flight abort."""
        hub = self._hub
        for channel in (*s.subs, *s.pending):
            hub.remove(channel, s)

    async def end_session(self, s: Session) -> None:
        """After a session closed: its subscriptions end (recorded as disconnects),
        then presence, leave and the broker are settled."""
        subs = list(s.subs.values())
        s.subs.clear()
        for sub in subs:
            if sub.timer is not None:
                sub.timer.cancel()
            if s.connected_at:
                self._journal.record(
                    EventType.UNSUBSCRIBE, s, channel=sub.channel, reason=Ended.DISCONNECT.value
                )
        await self.settle(subs)

    async def settle(self, subs: Sequence[Subscription]) -> None:
        """Presence removal and leave (one round trip on Redis), then the broker
        references of ended subscriptions. Never raises (shared presence entries expire
        anyway; a failed unsubscribe is redone when the link is rebuilt)."""
        leaves = self._memberships(subs)
        if leaves:
            await _best_effort("leave", self._engine.left(leaves), leaves)
        for sub in subs:
            await self._release_quietly(sub.channel)

    async def _release_quietly(self, channel: str) -> None:
        try:
            await self._release(channel)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("releasing %s failed", channel)


def _retrieved(task: asyncio.Future[None]) -> None:
    if not task.cancelled():
        task.exception()  # nobody waits for it any more


async def _best_effort(
    what: str, call: Coroutine[Any, Any, None], memberships: Sequence[Membership]
) -> None:
    """Presence and join/leave after the fact: logged, never raised (the client's reply
    is out; shared presence entries expire and the refresher adds missed ones)."""
    try:
        await call
    except BackendUnavailable:
        logger.warning(
            "presence/%s for %s not recorded: backend unavailable",
            what,
            ", ".join(m.channel for m in memberships),
        )
    except Exception:
        logger.exception("presence/%s failed", what)
