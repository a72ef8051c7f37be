"""Coalesced writes: one WebSocket frame and one ``write`` per connection per loop
iteration.

Everything a session sends (pushes, replies, pings) is queued here, in order, and
written when the loop has run what was ready: a burst on one channel, or several
channels of one user, produced in the same iteration reach a client as one frame of
newline-separated messages (the JSON protocol allows it; the SDKs split frames into
lines). A single message is written as the frame it came with, which fan-out built
once for every subscriber; several messages are joined into one frame, built once for
every connection that received the same messages in the same order (a burst on a
channel: the same bytes for all of its subscribers). There is no timer: the flush is
scheduled with ``call_soon`` when the first message of an iteration is queued, so one
message waits only for the rest of the iteration's callbacks.

A connection's batch is written at once past :data:`MAX_BATCH_BYTES` or
:data:`MAX_BATCH_MESSAGES`, so latency and memory stay bounded whatever the burst.
"""

from __future__ import annotations

import asyncio
from typing import Final, Protocol

from .frames import text_frame

__all__ = ["MAX_BATCH_BYTES", "MAX_BATCH_MESSAGES", "Connection", "Writer"]

MAX_BATCH_BYTES: Final = 64 * 1024
"""Bytes of messages a connection's batch holds before it is written at once."""
MAX_BATCH_MESSAGES: Final = 64
"""Messages a connection's batch holds before it is written at once."""


class Connection(Protocol):
    """What the writer writes to (a session). Hashable by identity."""

    def write_frame(self, frame: bytes) -> None:
        """Write one complete frame to the transport now, if the WebSocket is open."""
        ...


class _Batch:
    """Several messages for one connection."""

    __slots__ = ("payloads", "size")

    def __init__(self, first: bytes, second: bytes) -> None:
        self.payloads = [first, second]
        self.size = len(first) + len(second)


# A connection's queue: one message with its prebuilt frame (or None), or a batch.
_Single = tuple[bytes, bytes | None]


class Writer:
    """The queues of every connection with something to write this iteration."""

    __slots__ = ("_pending", "_scheduled", "frames", "messages")

    def __init__(self) -> None:
        self._pending: dict[Connection, _Single | _Batch] = {}
        self._scheduled = False
        self.frames = 0
        """Frames written (``/metrics``: each is one ``write``)."""
        self.messages = 0
        """Messages written in them."""

    def queue(self, conn: Connection, payload: bytes, frame: bytes | None = None) -> None:
        """Queue one message (``frame``: the message already framed, when fan-out built
        it for many connections). Synchronous; never awaits."""
        pending = self._pending
        entry = pending.get(conn)
        if entry is None:
            pending[conn] = (payload, frame)
            if not self._scheduled:
                self._scheduled = True
                asyncio.get_running_loop().call_soon(self.flush)
            return
        if isinstance(entry, tuple):
            batch = pending[conn] = _Batch(entry[0], payload)
        else:
            batch = entry
            batch.payloads.append(payload)
            batch.size += len(payload)
        if batch.size >= MAX_BATCH_BYTES or len(batch.payloads) >= MAX_BATCH_MESSAGES:
            self.flush_one(conn)

    def flush_one(self, conn: Connection) -> None:
        """Write what is queued for ``conn`` now (before its close frame, or when its
        batch is full)."""
        entry = self._pending.pop(conn, None)
        if entry is not None:
            conn.write_frame(self._frame(entry, None))
            self.frames += 1
            self.messages += 1 if isinstance(entry, tuple) else len(entry.payloads)

    def flush(self) -> None:
        """Write every queued connection's frame (the loop calls it once per iteration
        with something queued)."""
        self._scheduled = False
        pending = self._pending
        if not pending:
            return
        self._pending = {}
        shared: dict[tuple[int, ...], bytes] = {}
        messages = 0
        for conn, entry in pending.items():
            conn.write_frame(self._frame(entry, shared))
            messages += 1 if isinstance(entry, tuple) else len(entry.payloads)
        self.frames += len(pending)
        self.messages += messages

    @staticmethod
    def _frame(entry: _Single | _Batch, shared: dict[tuple[int, ...], bytes] | None) -> bytes:
        if isinstance(entry, tuple):
            payload, frame = entry
            return frame if frame is not None else text_frame(payload)
        payloads = entry.payloads
        if shared is None:
            return text_frame(b"\n".join(payloads))
        # The same messages in the same order (a burst on one channel): one frame for
        # every connection. Payload objects are alive while queued: ids are stable.
        key = tuple(map(id, payloads))
        frame = shared.get(key)
        if frame is None:
            frame = shared[key] = text_frame(b"\n".join(payloads))
        return frame
