"""The event log: what happened on which connection, channel and document, recorded off
the delivery path (Postgres, or SQLite for the embedded default)."""

from __future__ import annotations

from .model import Event, EventRecorder, EventType, NullRecorder

__all__ = ["Event", "EventRecorder", "EventType", "NullRecorder"]
