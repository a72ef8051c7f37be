"""The in-node index of channel subscribers, and encode-once fan-out.

Fan-out is synchronous: a publication is encoded into one WebSocket frame per channel
(the same bytes serve every subscriber, :mod:`frames`) and handed to each subscriber
without awaiting anyone (the :mod:`writer` writes it, coalesced with whatever else the
subscriber gets in the same loop iteration). A subscriber decides itself what to do
with a message it cannot take (a slow client is closed with 3008 instead of buffering
more).

A subscriber that is being set up (reading history for recovery) is *pending*: frames
for it are kept, with their offsets, until its subscribe reply is written, then the ones
it has not already received are flushed in order.

The hub only indexes: who may subscribe, the broker's reference counts and the
subscription's life are :mod:`subscriptions`' business.
"""

from __future__ import annotations

from typing import Protocol

import orjson

from .frames import text_frame
from .metrics import Metrics
from .model import Publication
from .multimap import MultiMap
from .protocol import encode_pub_push

__all__ = ["Hub", "Subscriber"]


class Subscriber(Protocol):
    """What the hub writes to (a session). Hashable by identity."""

    def deliver(self, payload: bytes, frame: bytes | None = None) -> bool:
        """Take one message (``frame``: already framed), synchronously, never
        awaiting; returns whether it was taken."""
        ...


class Hub:
    """Channel -> local subscribers, live and pending."""

    __slots__ = ("_live", "_metrics", "_pending")

    def __init__(self, metrics: Metrics) -> None:
        self._live: MultiMap[str, Subscriber] = MultiMap()
        self._pending: dict[str, dict[Subscriber, list[tuple[int, bytes, bytes]]]] = {}
        self._metrics = metrics

    # --- membership (synchronous: no await between check and update) ---------------

    def has_local(self, channel: str) -> bool:
        """Whether any subscriber on this node holds or is setting up the channel."""
        return channel in self._live or channel in self._pending

    def subscribers(self, channel: str) -> tuple[Subscriber, ...]:
        """The channel's live subscribers."""
        return self._live.get(channel)

    def count(self, channel: str) -> int:
        """The channel's subscribers on this node, live and pending."""
        pending = self._pending.get(channel)
        return self._live.count(channel) + (len(pending) if pending is not None else 0)

    @property
    def num_channels(self) -> int:
        return len(self._live)

    @property
    def num_subscriptions(self) -> int:
        return self._live.total()

    def add_pending(self, channel: str, subscriber: Subscriber) -> None:
        self._pending.setdefault(channel, {})[subscriber] = []

    def activate(self, channel: str, subscriber: Subscriber, delivered_offset: int) -> None:
        """Move a pending subscriber to live and flush the frames it has not received.

        ``delivered_offset`` is the last offset the subscribe reply brought the client
        to; buffered publications at or below it are duplicates and are skipped.
        """
        pending = self._pending.get(channel)
        buffered = pending.pop(subscriber, None) if pending is not None else None
        if pending is not None and not pending:
            del self._pending[channel]
        for offset, payload, frame in buffered or ():
            if offset == 0 or offset > delivered_offset:
                subscriber.deliver(payload, frame)
        self._live.add(channel, subscriber)

    def remove(self, channel: str, subscriber: Subscriber) -> None:
        """Forget the subscriber on the channel (live or pending)."""
        self._live.remove(channel, subscriber)
        pending = self._pending.get(channel)
        if pending is not None:
            pending.pop(subscriber, None)
            if not pending:
                del self._pending[channel]

    # --- fan-out (hot path) ------------------------------------------------------

    def publish(self, channel: str, pub: Publication) -> None:
        """Encode ``pub`` once and write it to every local subscriber of ``channel``."""
        live = self._live.raw(channel)
        pending = self._pending.get(channel)
        if live is None and pending is None:
            return
        payload = encode_pub_push(orjson.dumps(channel), pub)
        frame = text_frame(payload)
        self._metrics.publications_total += 1
        if pending is not None:
            for buffered in pending.values():
                buffered.append((pub.offset, payload, frame))
        if live is not None:
            self._fan_out(live, payload, frame)

    def push(self, channel: str, payload: bytes) -> None:
        """Write a push without a stream position (join, leave) to every local
        subscriber."""
        live = self._live.raw(channel)
        pending = self._pending.get(channel)
        if live is None and pending is None:
            return
        frame = text_frame(payload)
        if pending is not None:
            for buffered in pending.values():
                buffered.append((0, payload, frame))
        if live is not None:
            self._fan_out(live, payload, frame)

    def _fan_out(self, live: Subscriber | set[Subscriber], payload: bytes, frame: bytes) -> None:
        if not isinstance(live, set):
            if live.deliver(payload, frame):
                self._metrics.deliveries_total += 1
            return
        # Copy: a delivery may close a slow subscriber, which removes it from ``live``.
        delivered = 0
        for subscriber in tuple(live):
            if subscriber.deliver(payload, frame):
                delivered += 1
        self._metrics.deliveries_total += delivered
