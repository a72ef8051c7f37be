"""Event records and the recorder interface the node calls.

``EventRecorder.record`` is called on the event loop from the hot paths of connect,
subscribe and publish: it must never block, never await and never raise. It only
appends to a bounded in-memory buffer; writing happens elsewhere, in batches.
No token, secret or payload body is ever part of an event.
"""

from __future__ import annotations

import enum
import itertools
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

__all__ = ["Event", "EventRecorder", "EventType", "NullRecorder", "document_id", "new_event_id"]


class EventType(enum.StrEnum):
    CONNECT = "connect"
    CONNECT_REJECTED = "connect_rejected"
    DISCONNECT = "disconnect"
    SUBSCRIBE = "subscribe"
    SUBSCRIBE_REJECTED = "subscribe_rejected"
    SUBSCRIBE_PROXY = "subscribe_proxy"
    """The backend's answer about a subscription: details ``decision`` (allowed, denied,
    disconnect, failed), ``failure`` (its kind: timeout, status...), ``ms``; ``code`` of
    a refusal (100 for a failure)."""
    UNSUBSCRIBE = "unsubscribe"
    PUBLICATION = "publication"
    TOKEN_REFRESHED = "token_refreshed"  # noqa: S105 - an event name
    TOKEN_REVOKED = "token_revoked"  # noqa: S105 - an event name
    RATE_LIMITED = "rate_limited"
    SLOW_CONSUMER = "slow_consumer"


_ID_PREFIX = int.from_bytes(os.urandom(8), "big") << 64
_ID_COUNTER = itertools.count(1)
_new_object = object.__new__
_set_slot = object.__setattr__
_UNKNOWN = uuid.SafeUUID.unknown


def new_event_id() -> uuid.UUID:
    """A unique event id: 64 random bits per process, then a counter. Several times
    cheaper than ``uuid4()`` (which reads the OS random source every time), and as
    unique for idempotent writes: two processes collide only if their random halves do.

    Made without ``UUID.__init__`` (its argument checks were half the cost): the two
    slots it would set, as ``UUID.__setstate__`` does; the value is a valid 128-bit int.
    """
    event_id = _new_object(uuid.UUID)
    _set_slot(event_id, "int", _ID_PREFIX | next(_ID_COUNTER))
    _set_slot(event_id, "is_safe", _UNKNOWN)
    return event_id


def document_id(channel: str | None) -> str | None:
    """The document id of a ``document:<id>`` channel, else None."""
    if channel is not None and channel.startswith("document:"):
        return channel[len("document:") :]
    return None


@dataclass(slots=True)
class Event:
    """One row of the event log. ``id`` is unique: writes are idempotent on it.

    Not frozen: a frozen dataclass sets each field through ``object.__setattr__``,
    which made creating one (several per connect) twice as slow. Treat as read-only.
    """

    type: EventType
    node: str
    user: str | None = None
    client: str | None = None
    channel: str | None = None
    offset: int | None = None
    code: int | None = None
    details: dict[str, Any] | None = None
    time: float = field(default_factory=time.time)
    id: uuid.UUID = field(default_factory=new_event_id)

    @property
    def document(self) -> str | None:
        return document_id(self.channel)


@runtime_checkable
class EventRecorder(Protocol):
    """Where the node hands its events. ``record`` never blocks nor raises."""

    def record(self, event: Event) -> None: ...

    async def start(self) -> None: ...

    async def close(self) -> None:
        """Flush what is buffered (or spill it to disk when the store is down)."""
        ...

    def problem(self) -> str | None:
        """None when healthy; else a short description for ``/readyz``."""
        ...


class NullRecorder:
    """Records nothing (``REALTIME_EVENTS_ENABLED=false``, and tests); has no metrics."""

    def bind_metrics(self, metrics: object) -> None:
        del metrics

    def record(self, event: Event) -> None:
        return None

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def problem(self) -> str | None:
        return None
