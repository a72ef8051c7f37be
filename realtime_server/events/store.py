"""The event store interface, what queries it answers, and the row encoding both stores
share.

Guarantees every :class:`EventStore` gives:

- ``write_batch`` is idempotent on ``Event.id``: writing an event that is already stored
  is a no-op (``ON CONFLICT (id) DO NOTHING`` / ``INSERT OR IGNORE``), so a batch whose
  acknowledgement was lost can be written again without duplicating a row.
- A batch is written atomically (one transaction): all of it or none of it.
- Every call is bounded by the store's timeout; failures are raised as
  :class:`StoreUnavailable` (transient: try again later) or :class:`EventsRejected`
  (the content cannot be stored: trying again will not help).
- ``query`` returns events in order: by time, then by the order they were stored.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

import orjson

from ..errors import BackendUnavailable, RealtimeError
from .model import Event, EventType

__all__ = [
    "EventQuery",
    "EventStore",
    "EventsRejected",
    "NotInitialised",
    "StoreUnavailable",
    "clean_text",
    "encode_details",
    "event_from_json",
    "event_to_json",
    "microsecond_time",
]


class StoreUnavailable(BackendUnavailable):
    """The store could not be reached or did not answer in time (try again later)."""


class NotInitialised(StoreUnavailable):
    """The store answers but has no schema yet (``realtime-server migrate``)."""


class EventsRejected(RealtimeError):
    """The store refused a batch for its content (retrying the same rows cannot help)."""


@dataclass(frozen=True, slots=True)
class EventQuery:
    """Which events to read. ``since`` is inclusive, ``until`` exclusive (unix seconds).

    ``user`` selects what the user did (``user_id``) and what was published to the
    user's own channel (``user:<id>``): what they did and received.
    """

    document: str | None = None
    user: str | None = None
    since: float | None = None
    until: float | None = None
    limit: int | None = None


class EventStore(Protocol):
    """Where the batching writer puts events and where the audit commands read them."""

    name: str
    """``postgres`` or ``sqlite`` (for messages and metrics; never holds credentials)."""

    async def connect(self) -> None:
        """Open what the store needs. Raises :class:`StoreUnavailable`."""
        ...

    async def close(self) -> None:
        """Release connections and threads (bounded; never raises)."""
        ...

    async def migrate(self) -> list[str]:
        """Apply the pending schema migrations; returns the names of those applied."""
        ...

    async def write_batch(self, events: Sequence[Event]) -> None:
        """Store ``events`` atomically, skipping ids already stored."""
        ...

    async def query(self, query: EventQuery) -> list[Event]:
        """Events matching ``query`` in order (time, then storage order)."""
        ...

    async def delete_before(self, before: float) -> int:
        """Delete events older than ``before`` (unix seconds); returns how many."""
        ...


# --- row encoding ------------------------------------------------------------------------


def microsecond_time(t: float) -> float:
    """``t`` rounded to the microsecond exactly as ``datetime.fromtimestamp`` rounds it
    (half to even on the fraction), i.e. as it reaches PostgreSQL's timestamptz and as
    ``audit`` prints it: both stores keep, compare and show the same instants, and a
    printed time passed back to ``--since`` selects the event it came from."""
    fraction, whole = math.modf(t)
    return (int(whole) * 1_000_000 + round(fraction * 1e6)) / 1_000_000


_NUL: Final = "\x00"
_REPLACEMENT: Final = "\ufffd"


def clean_text(value: str) -> str:
    """``value`` as text every store accepts: no NUL (Postgres refuses it in text and
    jsonb) and no lone surrogate (not encodable as UTF-8). Client-supplied strings (a
    token's ``sub``, a client name) could otherwise poison a whole batch. Replacements
    are character for character: cleaning ``document:<id>`` cleans ``<id>``."""
    if value.isascii() and _NUL not in value:  # nearly always: nothing to do
        return value
    if not value.isascii():
        value = value.encode("utf-8", "replace").decode("utf-8")
    if _NUL in value:
        value = value.replace(_NUL, _REPLACEMENT)
    return value


def clean_optional(value: str | None) -> str | None:
    if value is None or (value.isascii() and _NUL not in value):
        return value
    return clean_text(value)


def encode_details(details: dict[str, Any] | None) -> str | None:
    """``details`` as JSON text storable in jsonb (never raises)."""
    if not details:
        return None
    try:
        text = orjson.dumps(details, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
    except (TypeError, orjson.JSONEncodeError):  # a lone surrogate somewhere
        return orjson.dumps(_clean_json(details)).decode()
    if "\\u0000" in text:  # a NUL somewhere (or the text of one: rare, cleaned alike)
        return orjson.dumps(_clean_json(details)).decode()
    return text


def _clean_json(value: Any) -> Any:
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {clean_text(str(k)): _clean_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean_json(v) for v in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    return clean_text(str(value))


def decode_details(text: str | None) -> dict[str, Any] | None:
    if not text:
        return None
    value = orjson.loads(text)
    return value if isinstance(value, dict) else {"value": value}


def event_to_json(event: Event) -> dict[str, Any]:
    """The spill-file form of an event (one JSON object per line)."""
    return {
        "id": str(event.id),
        "time": event.time,
        "type": event.type.value,
        "node": event.node,
        "user": event.user,
        "client": event.client,
        "channel": event.channel,
        "offset": event.offset,
        "code": event.code,
        "details": event.details,
    }


def event_from_json(obj: dict[str, Any]) -> Event:
    """Inverse of :func:`event_to_json`. Raises ``ValueError``/``KeyError``/``TypeError``
    on a malformed object."""
    details = obj.get("details")
    offset = obj.get("offset")
    code = obj.get("code")
    return Event(
        EventType(obj["type"]),
        str(obj["node"]),
        user=_opt_str(obj.get("user")),
        client=_opt_str(obj.get("client")),
        channel=_opt_str(obj.get("channel")),
        offset=int(offset) if offset is not None else None,
        code=int(code) if code is not None else None,
        details=details if isinstance(details, dict) else None,
        time=float(obj["time"]),
        id=uuid.UUID(str(obj["id"])),
    )


def _opt_str(value: object) -> str | None:
    return None if value is None else str(value)


def event_from_row(
    event_id: str | uuid.UUID,
    time: float,
    kind: str,
    node: str,
    user: str | None,
    client: str | None,
    channel: str | None,
    offset: int | None,
    code: int | None,
    details: str | None,
) -> Event:
    """An :class:`Event` from a stored row (both stores select these columns)."""
    return Event(
        EventType(kind),
        node,
        user=user,
        client=client,
        channel=channel,
        offset=offset,
        code=code,
        details=decode_details(details),
        time=time,
        id=event_id if isinstance(event_id, uuid.UUID) else uuid.UUID(event_id),
    )
