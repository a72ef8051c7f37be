"""The publishing side of the Redis broker: publications (with history and
idempotency keys through ``publish.lua``), joins, leaves and control messages.

``publish.lua`` appends to the channel's stream and publishes in one atomic step,
returning the offset; with an idempotency key it first checks ``P{C}:i:<key>`` and, for a
repeat, returns the first call's position without publishing. Several publications go in
one pipelined round trip (:meth:`RedisPublishing.publish_many`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import orjson

from ..model import ClientInfo, Publication, RawJSON, StreamPosition
from ..protocol import encode_client_info
from ..redis.client import RedisCommands, ScriptCall
from ..redis.envelope import encode_join_leave, encode_publication
from ..redis.names import RedisNames
from .engine import ControlMessage, HistoryOptions, PublishItem
from .memory import new_epoch

__all__ = ["RedisPublishing"]


def _info_json(info: ClientInfo | None) -> str:
    return encode_client_info(info).decode() if info is not None else ""


def _publish_result(reply: Any) -> tuple[StreamPosition | None, bool]:
    """``publish.lua``'s ``{offset, epoch, published}``."""
    offset, epoch, published = reply
    epoch = epoch.decode() if isinstance(epoch, bytes) else epoch
    return (StreamPosition(int(offset), epoch) if epoch else None), bool(published)


class RedisPublishing:
    """The :class:`~.engine.Broker` methods that publish (base of the Redis broker)."""

    commands: RedisCommands
    names: RedisNames
    _epoch = ""

    def _stream_epoch(self) -> str:
        """The epoch for a stream the next script call may create: one candidate,
        drawn again once a call used it. Most calls find their stream there (a fresh
        random epoch per call was a twentieth of a connect's Redis work); two streams
        of different channels may share an epoch, which only ever compares within one
        channel."""
        if not self._epoch:
            self._epoch = new_epoch()
        return self._epoch

    def _epoch_seen(self, epoch: str) -> None:
        """A script call answered ``epoch``: draw a new candidate if it used this one."""
        if epoch == self._epoch:
            self._epoch = ""

    async def publish(
        self,
        channel: str,
        data: RawJSON,
        *,
        info: ClientInfo | None = None,
        tags: dict[str, str] | None = None,
        history: HistoryOptions | None = None,
    ) -> StreamPosition | None:
        names = self.names
        if history is None or history.size <= 0:
            pub = Publication(data, 0, info, tags)
            payload = encode_publication(pub) if (info or tags) else data
            await self.commands.publish(names.channel(channel), payload)
            return None
        [(position, _)] = await self.publish_many([PublishItem(channel, data, info, tags, history)])
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
        """``publish.lua`` with the key ``P{C}:i:<key>`` (also without history: the
        script then only checks the key, publishes and stores it)."""
        item = PublishItem(channel, data, info, tags, history, key, ttl)
        return (await self.publish_many([item]))[0]

    async def publish_many(
        self, items: Sequence[PublishItem]
    ) -> list[tuple[StreamPosition | None, bool]]:
        """One ``publish.lua`` call per item, pipelined: one round trip for all (on a
        cluster, one call after the other: items go to different shards)."""
        if not items:
            return []
        if not self.commands.detected:
            await self.commands.run(self.commands.detect)
        calls = [self._publish_call(item) for item in items]
        if len(calls) == 1 or self.commands.cluster:
            replies = [
                await self.commands.script(self.commands.publish_script, c.keys, c.args)
                for c in calls
            ]
        else:
            replies = await self.commands.script_pipeline(self.commands.publish_script, calls)
        results = [_publish_result(reply) for reply in replies]
        for position, _ in results:
            if position is not None:
                self._epoch_seen(position.epoch)
        return results

    def _publish_call(self, item: PublishItem) -> ScriptCall:
        """The keys and arguments of ``publish.lua`` (after cluster detection)."""
        names = self.names
        channel, history, key = item.channel, item.history, item.key
        size = history.size if history is not None and history.size > 0 else 0
        args: list[bytes | str | int] = [
            names.channel(channel),
            item.data,
            _info_json(item.info),
            orjson.dumps(item.tags).decode() if item.tags else "",
            size,
            int(history.ttl * 1000) if history is not None else 0,
            int(max(history.meta_ttl, history.ttl) * 1000) if history is not None else 0,
            self._stream_epoch(),
            int(time.time() * 1000),
            "1" if self.commands.cluster else "0",
        ]
        keys = [names.stream(channel), names.meta(channel)]
        if key is not None:
            keys.append(names.idempotency(channel, key))
            args.append(max(1, int(item.ttl * 1000)))
        return ScriptCall(keys, args)

    async def publish_join(self, channel: str, info: ClientInfo) -> None:
        await self.commands.publish(self.names.channel(channel), encode_join_leave("join", info))

    async def publish_leave(self, channel: str, info: ClientInfo) -> None:
        await self.commands.publish(self.names.channel(channel), encode_join_leave("leave", info))

    async def publish_control(self, message: ControlMessage) -> None:
        payload = orjson.dumps({"kind": message.kind, "params": message.params})
        await self.commands.call("PUBLISH", self.names.control, payload)
