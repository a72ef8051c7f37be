"""The Redis broker: publications, history and control messages shared by every node.

- Publishing (:mod:`.redis_publish`): with history, ``publish.lua`` appends to the
  stream and publishes in one atomic step, returning the offset.
- Each node keeps one pub/sub subscription per channel that has local subscribers (the
  node reference-counts; the broker subscribes idempotently), spread over a few shards.
- Per channel with history the broker remembers the last delivered (epoch, offset),
  starting from the stream top of the first history read issued after subscribing
  (the subscriber's own read, no extra round trip; reads of the channel issued
  meanwhile wait for it, so that none runs in Redis before it). A
  publication that skips offsets (a message lost on the link) or a link that comes back
  after an outage makes it read the missing publications from the stream and deliver
  them first, in order; when the stream cannot fill the gap (trimmed, or a new epoch
  after Redis lost its data) it tells the node (``handle_insufficient_state``) so that
  clients recover by resubscribing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from ..errors import BackendUnavailable
from ..model import Publication, StreamPosition
from ..redis.client import RedisCommands, ScriptCall
from ..redis.envelope import decode_message
from ..redis.names import RedisNames
from ..redis.pubsub import BACKOFF_CAP, PubSubShard, PubSubShards
from ..redis.url import redis_address
from .engine import (
    BrokerEventHandler,
    ControlMessage,
    HistoryOptions,
    HistoryQuery,
    HistoryResult,
)
from .memory import new_epoch
from .redis_publish import RedisPublishing

__all__ = ["RedisBroker"]

logger = logging.getLogger("realtime_server.redis")


def _entry_publication(entry: Any) -> Publication:
    """A publication from a stream entry ``[id, [field, value, ...]]``."""
    entry_id, flat = entry
    fields = {flat[i]: flat[i + 1] for i in range(0, len(flat), 2)}
    offset = int(entry_id.split(b"-", 1)[0])
    info = None
    if b"i" in fields:
        decoded = decode_message(b"~j" + fields[b"i"])
        info = decoded.info if decoded is not None else None
    tags = orjson.loads(fields[b"g"]) if b"g" in fields else None
    return Publication(fields[b"d"], offset, info, tags or None)


class RedisBroker(RedisPublishing):
    """Implements :class:`engine.Broker` on Redis (single instance)."""

    def __init__(self, commands: RedisCommands, shards: int = 2) -> None:
        self.commands = commands
        self.names: RedisNames = commands.names
        self._handler: BrokerEventHandler | None = None
        self._positions: dict[str, StreamPosition] = {}
        # Subscribed channels whose position the next read is to set: None until a
        # read claims it, then a future resolved when that read is done.
        self._unpositioned: dict[str, asyncio.Future[None] | None] = {}
        self._subscribed: set[str] = set()
        self._history_options: dict[str, HistoryOptions] = {}
        self._node_id = uuid.uuid4().hex[:12]
        self._shard_count = max(1, shards)
        self._shards = PubSubShards([])  # none until Redis has said whether it is a cluster
        self._detector: asyncio.Task[None] | None = None
        self._started = False

    def _build_shards(self) -> PubSubShards:
        """Standalone: a few connections to the one Redis. Cluster: one connection per
        primary, holding (SSUBSCRIBE) the channels whose slot that primary owns."""
        commands = self.commands

        def shard(i: int, url: str, sharded: bool) -> PubSubShard:
            anchor = (
                self.names.control if i == 0 else f"{self.names.prefix}node:{self._node_id}:{i}"
            )
            return PubSubShard(
                url, i, anchor, self._on_message, self._on_up, commands.timeout, sharded=sharded
            )

        if not commands.cluster:
            return PubSubShards([shard(i, commands.url, False) for i in range(self._shard_count)])
        primaries = commands.primaries()
        index = {name: i for i, (name, _) in enumerate(primaries)}
        shards = [shard(i, url, True) for i, (_, url) in enumerate(primaries)]
        return PubSubShards(shards, lambda name: index[commands.primary_of(name)])

    def set_handler(self, handler: BrokerEventHandler) -> None:
        self._handler = handler

    async def start(self) -> None:
        """Learn whether the URL is a Redis Cluster, then open the pub/sub links (one
        per shard or per primary). Redis unreachable: serve as not ready and keep
        asking in the background; the links are opened once it answers. (Assuming a
        single Redis instead left a node started before its cluster subscribed with
        SUBSCRIBE while publishing with SPUBLISH: ready, and delivering nothing.)"""
        if self._started:
            return
        self._started = True
        try:
            await self.commands.run(self.commands.detect)
        except BackendUnavailable as exc:  # the message names the address and cause
            logger.warning("%s; serving as not ready (/readyz 503) until it answers", exc)
            self._detector = asyncio.get_running_loop().create_task(
                self._detect_later(), name="redis-detect"
            )
            return
        self._open_links()
        if not await self._shards.wait_ready(self.commands.timeout * 2):
            logger.warning(
                "redis at %s not reachable yet; serving as not ready (/readyz 503) and retrying",
                redis_address(self.commands.url),
            )

    def _open_links(self) -> None:
        self._shards = self._build_shards()
        self._shards.start()

    async def _detect_later(self) -> None:
        """Ask until Redis answers (as often as a lost pub/sub link is redialed), then
        open the links."""
        delay = 0.02
        logged = False
        while True:
            await asyncio.sleep(delay)
            delay = min(BACKOFF_CAP, delay * 2)
            try:
                await self.commands.run(self.commands.detect)
            except BackendUnavailable:
                continue
            except Exception:  # a bug: keep asking, loudly (once)
                if not logged:
                    logged = True
                    logger.exception("redis: detecting a cluster failed")
                continue
            kind = "a Redis Cluster" if self.commands.cluster else "a single Redis"
            logger.info(
                "redis at %s answers (%s); opening the pub/sub links",
                redis_address(self.commands.url),
                kind,
            )
            self._open_links()
            return

    async def close(self) -> None:
        detector, self._detector = self._detector, None
        if detector is not None:
            detector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await detector
        if self._started:
            await self._shards.close()
        await self.commands.close()

    @property
    def ready(self) -> bool:
        return self._started and self._shards.ready

    @property
    def reconnects(self) -> int:
        return sum(s.reconnects for s in self._shards.shards)

    # --- subscriptions -----------------------------------------------------------------

    instant_subscribe = False  # a round trip: concurrent ones share it

    async def subscribe(self, channel: str) -> None:
        name = self.names.channel(channel)
        if not self._shards.shards:
            raise BackendUnavailable("redis pub/sub links not open yet (redis unreachable)")
        shard = self._shards.for_channel(name)
        if name in shard.channels and shard.ready:
            return
        await shard.subscribe(name)
        self._subscribed.add(channel)
        # The first history read issued from now on (the subscriber's own, right after
        # this) tells where the stream is, so a later gap can be detected and filled:
        # everything published after the confirmation above arrives on the link.
        self._unpositioned[channel] = None

    async def _claim(self, channels: Iterable[str]) -> dict[str, asyncio.Future[None]]:
        """Before a read: wait while other reads are positioning any of ``channels``,
        then claim those still unpositioned (this read sets their position). So every
        read of a channel runs in Redis after its positioning read: no reader's top is
        below the position, and no publication a reader still needs is skipped as
        already delivered. Claims are taken at once (no await), so never in a cycle."""
        wanted = [c for c in dict.fromkeys(channels) if c in self._unpositioned]
        while True:
            busy = [f for c in wanted if (f := self._unpositioned.get(c)) is not None]
            if not busy:
                break
            for pending in busy:
                await asyncio.shield(pending)
        claims: dict[str, asyncio.Future[None]] = {}
        loop = asyncio.get_running_loop()
        for channel in wanted:
            if channel in self._unpositioned:
                claims[channel] = self._unpositioned[channel] = loop.create_future()
        return claims

    def _settle(self, claims: dict[str, asyncio.Future[None]], done: bool) -> None:
        """After a read: its claims are positioned (``done``) or, when it failed, open
        to the next read; either way, wake the reads waiting for them."""
        for channel, claim in claims.items():
            if self._unpositioned.get(channel) is claim:
                if done:
                    del self._unpositioned[channel]
                else:
                    self._unpositioned[channel] = None
            if not claim.done():
                claim.set_result(None)

    async def unsubscribe(self, channel: str) -> None:
        name = self.names.channel(channel)
        self._subscribed.discard(channel)
        self._positions.pop(channel, None)
        claim = self._unpositioned.pop(channel, None)
        if claim is not None and not claim.done():
            claim.set_result(None)
        self._history_options.pop(channel, None)
        if self._shards.shards:
            await self._shards.for_channel(name).unsubscribe(name)

    # --- history ----------------------------------------------------------------------

    def _read_call(
        self,
        channel: str,
        *,
        since: int,
        limit: int,
        reverse: bool,
        options: HistoryOptions | None,
        create: bool,
    ) -> ScriptCall:
        if options is not None:
            self._history_options[channel] = options
        opts = options or self._history_options.get(channel)
        ttl_ms = int(opts.ttl * 1000) if opts else 0
        meta_ttl = int(max(opts.meta_ttl, opts.ttl) * 1000) if (opts and create) else 0
        oldest = int(time.time() * 1000) - ttl_ms if ttl_ms else 0
        keys = [self.names.stream(channel), self.names.meta(channel)]
        args: list[str | int] = [
            self._stream_epoch(),
            meta_ttl,
            since,
            limit,
            "1" if reverse else "0",
            oldest,
        ]
        return ScriptCall(keys, args)

    def _parse_read(self, reply: Any) -> tuple[StreamPosition, list[Any]] | None:
        """One channel's result of ``history.lua``."""
        top, epoch, entries = reply
        epoch = epoch.decode() if isinstance(epoch, bytes) else epoch
        if not epoch:
            return None
        self._epoch_seen(epoch)
        return StreamPosition(int(top), epoch), entries

    async def _read(
        self, channel: str, *, since: int, limit: int
    ) -> tuple[StreamPosition, list[Any]] | None:
        """Read the stream without creating it (the top, gap fills)."""
        call = self._read_call(
            channel, since=since, limit=limit, reverse=False, options=None, create=False
        )
        (reply,) = await self.commands.script(self.commands.history_script, call.keys, call.args)
        return self._parse_read(reply)

    async def _top(self, channel: str) -> StreamPosition | None:
        found = await self._read(channel, since=-1, limit=0)
        return found[0] if found is not None else None

    async def history(
        self,
        channel: str,
        *,
        since: StreamPosition | None = None,
        limit: int = 0,
        reverse: bool = False,
        options: HistoryOptions | None = None,
    ) -> HistoryResult:
        query = HistoryQuery(channel, since=since, limit=limit, reverse=reverse, options=options)
        return (await self.history_many((query,)))[0]

    async def history_many(self, queries: Sequence[HistoryQuery]) -> list[HistoryResult]:
        """One ``history.lua`` call for every channel (one per channel, concurrently,
        on a cluster)."""
        claims = await self._claim(q.channel for q in queries)
        try:
            calls = [
                self._read_call(
                    q.channel,
                    since=q.since.offset if q.since is not None else -1,
                    limit=q.limit,
                    reverse=q.reverse,
                    options=q.options,
                    create=True,
                )
                for q in queries
            ]
            replies = await self.commands.run_batch(self.commands.history_script, calls)
            results = [
                self._history_result(
                    q.channel, q.since, self._parse_read(reply), claims.get(q.channel)
                )
                for q, reply in zip(queries, replies, strict=True)
            ]
        except BaseException:
            self._settle(claims, done=False)
            raise
        self._settle(claims, done=True)
        return results

    def _history_result(
        self,
        channel: str,
        since: StreamPosition | None,
        found: tuple[StreamPosition, list[Any]] | None,
        claim: asyncio.Future[None] | None,
    ) -> HistoryResult:
        if found is None:  # no stream and none created (no options known)
            return HistoryResult([], StreamPosition(0, new_epoch()))
        top, entries = found
        if claim is not None:  # the first read since subscribing: where the stream is
            if self._unpositioned.get(channel) is claim:
                known = self._positions.get(channel)
                if known is None or known.epoch != top.epoch or known.offset < top.offset:
                    self._positions[channel] = top
        elif (
            channel in self._subscribed
            and channel not in self._positions
            and channel not in self._unpositioned
        ):
            self._positions[channel] = top  # where this node's subscribers start
        if since is not None and since.epoch and since.epoch != top.epoch:
            return HistoryResult([], top)
        return HistoryResult([_entry_publication(e) for e in entries], top)

    # --- incoming messages (one read loop per shard) -------------------------------------

    async def _on_message(self, redis_channel: bytes, payload: bytes) -> None:
        handler = self._handler
        if handler is None:
            return
        if redis_channel == self.names.control.encode():
            self._on_control(handler, payload)
            return
        channel = self.names.realtime_channel(redis_channel)
        if channel is None:
            return
        decoded = decode_message(payload)
        if decoded is None:
            logger.warning("dropped a malformed message on %s", channel)
            return
        if decoded.kind == "pub":
            pub = decoded.pub
            assert pub is not None
            if pub.offset:
                await self._deliver_positioned(handler, channel, pub, decoded.epoch)
            else:
                handler.handle_publication(channel, pub)
        elif decoded.kind == "join" and decoded.info is not None:
            handler.handle_join(channel, decoded.info)
        elif decoded.kind == "leave" and decoded.info is not None:
            handler.handle_leave(channel, decoded.info)

    def _on_control(self, handler: BrokerEventHandler, payload: bytes) -> None:
        try:
            message = orjson.loads(payload)
            kind, params = message["kind"], message["params"]
            if not isinstance(kind, str) or not isinstance(params, dict):
                raise TypeError
        except (orjson.JSONDecodeError, KeyError, TypeError):
            logger.warning("dropped a malformed control message")
            return
        handler.handle_control(ControlMessage(kind, params))

    async def _deliver_positioned(
        self, handler: BrokerEventHandler, channel: str, pub: Publication, epoch: str
    ) -> None:
        known = self._positions.get(channel)
        if known is not None:
            if known.epoch != epoch:
                handler.handle_insufficient_state(channel)  # the stream was reset
            elif pub.offset <= known.offset:
                return  # already delivered (filled from history after a gap)
            elif pub.offset > known.offset + 1:
                if await self._fill(handler, channel, known):
                    if pub.offset <= self._positions[channel].offset:
                        return
                else:
                    handler.handle_insufficient_state(channel)
        self._positions[channel] = StreamPosition(pub.offset, epoch)
        handler.handle_publication(channel, pub)

    async def _fill(self, handler: BrokerEventHandler, channel: str, known: StreamPosition) -> bool:
        """Deliver what the stream holds after ``known``; False if it cannot fill the gap."""
        try:
            found = await self._read(channel, since=known.offset, limit=-1)
        except BackendUnavailable:
            return False
        if found is None:
            return False
        top, entries = found
        pubs = [_entry_publication(e) for e in entries]
        if top.epoch != known.epoch or not pubs or pubs[0].offset != known.offset + 1:
            return top.epoch == known.epoch and top.offset == known.offset
        for pub in pubs:
            handler.handle_publication(channel, pub)
        self._positions[channel] = StreamPosition(pubs[-1].offset, top.epoch)
        return True

    async def _on_up(self, shard: PubSubShard) -> None:
        """After (re)subscribing a shard: fill every channel's gap from history."""
        handler = self._handler
        if handler is None:
            return
        for name in list(shard.channels):
            channel = self.names.realtime_channel(name)
            known = self._positions.get(channel) if channel is not None else None
            if channel is None or known is None:
                continue
            filled = await self._fill(handler, channel, known)
            if not filled:
                self._positions.pop(channel, None)
                top = await self._top(channel)
                if top is not None:
                    self._positions[channel] = top
                handler.handle_insufficient_state(channel)
        if shard.index == 0 and shard.reconnects:  # a link that was lost, not the first one
            handler.handle_reconnect()
