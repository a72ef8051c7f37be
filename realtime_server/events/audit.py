"""Audit queries and their output: a document's or a user's events, in order, as a
readable table or as JSON lines.

Pure functions (parsing ``--since``/``--until``, formatting) plus :func:`read_events`,
which asks any :class:`~realtime_server.events.store.EventStore`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from typing import Any, Final, Literal

import orjson

from ..errors import ConfigError
from .model import Event
from .store import EventQuery, EventStore

__all__ = ["format_json", "format_table", "format_time", "parse_time", "read_events"]

Subject = Literal["document", "user"]

_UTC: Final = dt.UTC


def parse_time(text: str, flag: str) -> float:
    """``text`` (ISO 8601, or unix seconds) as unix seconds. A time without a zone is
    UTC; a bare date is its midnight UTC. Raises :class:`ConfigError` naming ``flag``."""
    value = text.strip()
    try:
        number = float(value)
    except ValueError:
        pass
    else:
        try:
            dt.datetime.fromtimestamp(number, _UTC)
        except (ValueError, OverflowError, OSError):
            raise ConfigError(f"{flag}: not a time") from None
        return number
    try:
        parsed = dt.datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError:
        raise ConfigError(
            f"{flag}: expected ISO 8601 (2024-05-01T12:00:00Z) or unix seconds"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=_UTC)
    try:
        seconds = parsed.timestamp()
        dt.datetime.fromtimestamp(seconds, _UTC)  # what the stores will do with it
    except (ValueError, OverflowError, OSError):
        raise ConfigError(f"{flag}: not a time") from None
    return seconds


def format_time(t: float) -> str:
    """``2024-05-01T12:00:00.123456Z``"""
    return dt.datetime.fromtimestamp(t, _UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


async def read_events(
    store: EventStore,
    subject: Subject,
    ident: str,
    *,
    since: float | None = None,
    until: float | None = None,
    limit: int | None = None,
) -> list[Event]:
    """The events of document ``ident`` or of user ``ident`` (what the user did, and
    what was published to ``user:<ident>``), in order."""
    if subject == "document":
        query = EventQuery(document=ident, since=since, until=until, limit=limit)
    else:
        query = EventQuery(user=ident, since=since, until=until, limit=limit)
    return await store.query(query)


def _value(value: Any) -> str:
    if isinstance(value, str) and value and all(c.isalnum() or c in "._:-@/" for c in value):
        return value
    return orjson.dumps(value, default=str).decode()


def describe(event: Event, *, omit_user: str | None = None) -> str:
    """``offset=3 code=3500 reason="invalid token" ...``: what the columns do not show."""
    parts: list[str] = []
    if omit_user is not None and event.user is not None and event.user != omit_user:
        parts.append(f"user={_value(event.user)}")
    if event.offset is not None:
        parts.append(f"offset={event.offset}")
    if event.code is not None:
        parts.append(f"code={event.code}")
    for key, value in (event.details or {}).items():
        if value is not None:
            parts.append(f"{key}={_value(value)}")
    return " ".join(parts)


def _row(event: Event, subject: Subject, ident: str) -> tuple[str, ...]:
    client = (event.client or "-")[:8]
    if subject == "document":
        return (
            format_time(event.time),
            event.type.value,
            event.user or "-",
            client,
            describe(event),
        )
    return (
        format_time(event.time),
        event.type.value,
        event.channel or "-",
        client,
        describe(event, omit_user=ident),
    )


def format_table(events: Sequence[Event], subject: Subject, ident: str) -> str:
    """An aligned text table, one event per line, in the order given."""
    header = (
        ("TIME", "EVENT", "USER", "CLIENT", "DETAILS")
        if subject == "document"
        else ("TIME", "EVENT", "CHANNEL", "CLIENT", "DETAILS")
    )
    rows = [header, *(_row(e, subject, ident) for e in events)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    lines = []
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines)


def event_json(event: Event) -> dict[str, Any]:
    return {
        "time": format_time(event.time),
        "unix": event.time,
        "type": event.type.value,
        "user": event.user,
        "client": event.client,
        "channel": event.channel,
        "document": event.document,
        "offset": event.offset,
        "code": event.code,
        "details": event.details,
        "node": event.node,
        "id": str(event.id),
    }


def format_json(events: Iterable[Event]) -> str:
    """JSON lines: one object per event, in order."""
    return "".join(
        orjson.dumps(event_json(e), default=str, option=orjson.OPT_APPEND_NEWLINE).decode()
        for e in events
    )
