"""The in-node index of channel subscribers, and encode-once fan-out.

Fan-out is synchronous: a publication is encoded into one WebSocket frame per channel
(server-to-client frames are unmasked, so the same bytes serve every subscriber) and
written to each subscriber's transport without awaiting anyone. A subscriber whose
outbound buffer is over its bound is closed with 3008 instead of buffering more.

A subscriber that is being set up (reading history for recovery) is *pending*: frames
for it are kept, with their offsets, until its subscribe reply is written, then the ones
it has not already received are flushed in order.

A channel with a single local subscriber (every ``user:<id>`` channel of a user with one
connection) maps to that session itself, not to a one-entry dict (0.2 KiB per idle
connection); a second subscriber turns it into a dict, and back when one is left.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import orjson
from websockets.frames import Frame, Opcode

from .metrics import Metrics
from .protocol import Publication, encode_pub_push

if TYPE_CHECKING:
    from .session import Session

__all__ = ["Hub", "text_frame"]

_Members = dict["Session", None]


def text_frame(payload: bytes) -> bytes:
    """The bytes of one unmasked, uncompressed WebSocket text frame."""
    return Frame(Opcode.TEXT, payload).serialize(mask=False, extensions=[])


class Hub:
    """Channel -> local sessions. Sessions write frames through :meth:`Session.write`."""

    def __init__(self, metrics: Metrics) -> None:
        self._subs: dict[str, Session | _Members] = {}
        self._pending: dict[str, dict[Session, list[tuple[int, bytes]]]] = {}
        self._metrics = metrics

    # --- membership (synchronous: no await between check and update) ---------------

    def has_local(self, channel: str) -> bool:
        """Whether any session on this node holds or is setting up the channel."""
        return channel in self._subs or channel in self._pending

    def channels(self) -> Iterable[str]:
        return self._subs.keys()

    def subscribers(self, channel: str) -> list[Session]:
        subs = self._subs.get(channel)
        if subs is None:
            return []
        if isinstance(subs, dict):
            return list(subs)
        return [subs]

    @property
    def num_channels(self) -> int:
        return len(self._subs)

    @property
    def num_subscriptions(self) -> int:
        return sum(len(s) if isinstance(s, dict) else 1 for s in self._subs.values())

    def add_pending(self, channel: str, session: Session) -> None:
        self._pending.setdefault(channel, {})[session] = []

    def activate(self, channel: str, session: Session, delivered_offset: int) -> None:
        """Move a pending session to live and flush the frames it has not received.

        ``delivered_offset`` is the last offset the subscribe reply brought the client
        to; buffered publications at or below it are duplicates and are skipped.
        """
        pending = self._pending.get(channel)
        buffered = pending.pop(session, None) if pending is not None else None
        if pending is not None and not pending:
            del self._pending[channel]
        for offset, frame in buffered or ():
            if offset == 0 or offset > delivered_offset:
                session.write(frame)
        subs = self._subs.get(channel)
        if subs is None:
            self._subs[channel] = session
        elif isinstance(subs, dict):
            subs[session] = None
        elif subs is not session:
            self._subs[channel] = {subs: None, session: None}

    def remove(self, channel: str, session: Session) -> None:
        """Forget the session on the channel (live or pending)."""
        subs = self._subs.get(channel)
        if subs is session:
            del self._subs[channel]
        elif isinstance(subs, dict):
            subs.pop(session, None)
            if len(subs) <= 1:
                if subs:
                    self._subs[channel] = next(iter(subs))
                else:
                    del self._subs[channel]
        pending = self._pending.get(channel)
        if pending is not None:
            pending.pop(session, None)
            if not pending:
                del self._pending[channel]

    # --- fan-out (hot path) ------------------------------------------------------

    def publish(self, channel: str, pub: Publication) -> None:
        """Encode ``pub`` once and write it to every local subscriber of ``channel``."""
        subs = self._subs.get(channel)
        pending = self._pending.get(channel)
        if subs is None and pending is None:
            return
        frame = text_frame(encode_pub_push(orjson.dumps(channel), pub))
        self._metrics.publications_total += 1
        if pending is not None:
            for buffered in pending.values():
                buffered.append((pub.offset, frame))
        if subs is not None:
            self._fan_out(subs, frame)

    def broadcast(self, channel: str, payload: bytes) -> None:
        """Write a non-positioned push (join, leave) to every local subscriber."""
        subs = self._subs.get(channel)
        pending = self._pending.get(channel)
        if subs is None and pending is None:
            return
        frame = text_frame(payload)
        if pending is not None:
            for buffered in pending.values():
                buffered.append((0, frame))
        if subs is not None:
            self._fan_out(subs, frame)

    def _fan_out(self, subs: Session | _Members, frame: bytes) -> None:
        metrics = self._metrics
        if not isinstance(subs, dict):
            if subs.write(frame):
                metrics.deliveries_total += 1
            else:
                metrics.drops_total += 1
            return
        # Copy: a write may close a slow session, which removes it from ``subs``.
        targets = tuple(subs)
        written = 0
        for session in targets:
            if session.write(frame):
                written += 1
        metrics.deliveries_total += written
        metrics.drops_total += len(targets) - written
