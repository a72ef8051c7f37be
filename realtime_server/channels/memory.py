"""The embedded in-memory engine: one process, no Redis.

Publishing appends to the channel's stream and hands the publication to the node in the
same synchronous step, so the append and the delivery are atomic and ordered per
channel. Streams live in process memory: a restart starts new epochs, and clients that
reconnect after it are told ``recovered: false``.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..model import ClientInfo, Publication, RawJSON, StreamPosition, kept
from ..randomness import random_token
from .engine import (
    BrokerEventHandler,
    ControlMessage,
    HistoryOptions,
    HistoryQuery,
    HistoryResult,
    Membership,
    PresenceStats,
    PublishItem,
)
from .idempotency import MAX_ENTRIES, RecentKeys

__all__ = ["MemoryBroker", "MemoryEngine", "MemoryPresence"]

Clock = Callable[[], float]


def new_epoch() -> str:
    """A short random id of a stream incarnation."""
    return random_token(6)


@dataclass(slots=True)
class _Stream:
    epoch: str
    top: int = 0
    meta_expires: float = 0.0
    # Created on the first publication: every connection's user channel has a stream
    # (for its epoch) but most never see a publication (profiled: ~0.6 KiB each).
    entries: deque[tuple[float, Publication]] | None = None

    def trim(self, now: float, size: int) -> None:
        entries = self.entries
        while entries and (len(entries) > size or entries[0][0] <= now):
            entries.popleft()

    def append(self, expires: float, pub: Publication) -> None:
        if self.entries is None:
            self.entries = deque()
        self.entries.append((expires, pub))


class MemoryBroker:
    """Broker and history in process memory (implements :class:`engine.Broker`)."""

    def __init__(self, clock: Clock = time.monotonic, max_keys: int = MAX_ENTRIES) -> None:
        self._clock = clock
        self.recent_keys = RecentKeys(clock, max_keys)
        self._handler: BrokerEventHandler | None = None
        self._streams: dict[str, _Stream] = {}
        self._channels: set[str] = set()
        self._last_sweep = clock()

    def set_handler(self, handler: BrokerEventHandler) -> None:
        self._handler = handler

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        self._streams.clear()
        self._channels.clear()

    @property
    def ready(self) -> bool:
        return True

    instant_subscribe = True  # a set operation

    async def subscribe(self, channel: str) -> None:
        self._channels.add(channel)

    async def unsubscribe(self, channel: str) -> None:
        self._channels.discard(channel)

    def _stream(self, channel: str, options: HistoryOptions | None, now: float) -> _Stream:
        stream = self._streams.get(channel)
        if stream is None or stream.meta_expires <= now:
            stream = _Stream(new_epoch())
            self._streams[channel] = stream
        if options is not None:
            stream.meta_expires = now + max(options.meta_ttl, options.ttl)
            stream.trim(now, options.size)
        elif stream.meta_expires <= now:
            stream.meta_expires = now + 86400.0
        return stream

    def _sweep(self, now: float) -> None:
        """Forget streams whose position expired (amortised: at most once a minute)."""
        if now - self._last_sweep < 60.0:
            return
        self._last_sweep = now
        for channel in [c for c, s in self._streams.items() if s.meta_expires <= now]:
            del self._streams[channel]

    async def publish(
        self,
        channel: str,
        data: RawJSON,
        *,
        info: ClientInfo | None = None,
        tags: dict[str, str] | None = None,
        history: HistoryOptions | None = None,
    ) -> StreamPosition | None:
        position: StreamPosition | None = None
        if history is not None and history.size > 0:
            now = self._clock()
            self._sweep(now)
            stream = self._stream(channel, history, now)
            stream.top += 1
            pub = Publication(kept(data), stream.top, info, tags)  # kept in history
            stream.append(now + history.ttl, pub)
            stream.trim(now, history.size)
            position = StreamPosition(stream.top, stream.epoch)
        else:
            pub = Publication(data, 0, info, tags)
        if self._handler is not None and channel in self._channels:
            self._handler.handle_publication(channel, pub)
        return position

    async def publish_once(
        self,
        channel: str,
        data: RawJSON,
        key: str,
        ttl: float,
        *,
        info: ClientInfo | None = None,
        tags: dict[str, str] | None = None,
        history: HistoryOptions | None = None,
    ) -> tuple[StreamPosition | None, bool]:
        # Atomic: MemoryBroker.publish never suspends, so no other task runs between
        # the check, the publish and remembering the key.
        seen, position = self.recent_keys.seen(channel, key)
        if seen:
            return position, False
        position = await self.publish(channel, data, info=info, tags=tags, history=history)
        self.recent_keys.remember(channel, key, position, ttl)
        return position, True

    async def publish_many(
        self, items: Sequence[PublishItem]
    ) -> list[tuple[StreamPosition | None, bool]]:
        results: list[tuple[StreamPosition | None, bool]] = []
        for item in items:
            if item.key is None:
                position = await self.publish(
                    item.channel, item.data, info=item.info, tags=item.tags, history=item.history
                )
                results.append((position, True))
            else:
                results.append(
                    await self.publish_once(
                        item.channel,
                        item.data,
                        item.key,
                        item.ttl,
                        info=item.info,
                        tags=item.tags,
                        history=item.history,
                    )
                )
        return results

    async def publish_join(self, channel: str, info: ClientInfo) -> None:
        if self._handler is not None and channel in self._channels:
            self._handler.handle_join(channel, info)

    async def publish_leave(self, channel: str, info: ClientInfo) -> None:
        if self._handler is not None and channel in self._channels:
            self._handler.handle_leave(channel, info)

    async def publish_control(self, message: ControlMessage) -> None:
        if self._handler is not None:
            self._handler.handle_control(message)

    async def history(
        self,
        channel: str,
        *,
        since: StreamPosition | None = None,
        limit: int = 0,
        reverse: bool = False,
        options: HistoryOptions | None = None,
    ) -> HistoryResult:
        now = self._clock()
        stream = self._stream(channel, options, now)
        if options is None:
            stream.trim(now, len(stream.entries or ()))  # drop expired entries only
        top = StreamPosition(stream.top, stream.epoch)
        if limit == 0 or (since is not None and since.epoch and since.epoch != stream.epoch):
            return HistoryResult([], top)
        pubs = [pub for _, pub in stream.entries or ()]
        if since is not None:
            if reverse:
                pubs = [p for p in pubs if p.offset < since.offset]
            else:
                pubs = [p for p in pubs if p.offset > since.offset]
        if reverse:
            pubs.reverse()
        if limit > 0:
            pubs = pubs[:limit]
        return HistoryResult(pubs, top)

    async def history_many(self, queries: Sequence[HistoryQuery]) -> list[HistoryResult]:
        return [
            await self.history(
                q.channel, since=q.since, limit=q.limit, reverse=q.reverse, options=q.options
            )
            for q in queries
        ]


class MemoryPresence:
    """Presence in process memory (implements :class:`engine.PresenceManager`).

    ``ttl`` is not needed here: entries live in the same process as their connections,
    which remove them when they end (there is no other node that could crash).
    """

    def __init__(self) -> None:
        self._channels: dict[str, dict[str, ClientInfo]] = {}

    async def add(self, channel: str, info: ClientInfo, ttl: float) -> None:
        self._channels.setdefault(channel, {})[info.client] = info

    async def remove(self, channel: str, client: str) -> None:
        clients = self._channels.get(channel)
        if clients is not None:
            clients.pop(client, None)
            if not clients:
                del self._channels[channel]

    async def presence(self, channel: str) -> dict[str, ClientInfo]:
        return dict(self._channels.get(channel, {}))

    async def stats(self, channel: str) -> PresenceStats:
        clients = self._channels.get(channel, {})
        return PresenceStats(len(clients), len({i.user for i in clients.values()}))

    async def close(self) -> None:
        self._channels.clear()


class MemoryEngine:
    """The embedded engine (implements :class:`engine.Engine`)."""

    name = "memory"

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self.broker = MemoryBroker(clock)
        self.presence = MemoryPresence()

    async def joined(self, joins: Sequence[Membership], presence_ttl: float) -> None:
        for j in joins:
            if j.presence:
                await self.presence.add(j.channel, j.info, presence_ttl)
            if j.announce:
                await self.broker.publish_join(j.channel, j.info)

    async def left(self, leaves: Sequence[Membership]) -> None:
        for m in leaves:
            if m.presence:
                await self.presence.remove(m.channel, m.info.client)
            if m.announce:
                await self.broker.publish_leave(m.channel, m.info)
