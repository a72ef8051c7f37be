"""The node's side of the event log: who did what, recorded without ever blocking.

Every component that has something to record (a connect, a refused subscribe, a
publication, a revocation) calls :meth:`Journal.record` with the event type and the
session it concerns (anything with ``user`` and ``client_id``). The recorder behind it
buffers and writes in batches; with the event log off, nothing is built at all. No
token, secret or payload body is ever recorded.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

from .events import Event, EventRecorder, EventType, NullRecorder
from .events.model import new_event_id

__all__ = ["Actor", "Journal"]


class Actor(Protocol):
    """Whose event it is: a session (its user is "" before a successful connect)."""

    @property
    def user(self) -> str: ...

    @property
    def client_id(self) -> str: ...


class Journal:
    """Records this node's events (never blocks, never raises)."""

    __slots__ = ("enabled", "node", "recorder")

    def __init__(self, node: str, recorder: EventRecorder | None = None) -> None:
        self.node = node
        self.recorder: EventRecorder = recorder if recorder is not None else NullRecorder()
        self.enabled = not isinstance(self.recorder, NullRecorder)

    def record(
        self,
        kind: EventType,
        actor: Actor | None = None,
        *,
        channel: str | None = None,
        offset: int | None = None,
        code: int | None = None,
        user: str | None = None,
        at: float | None = None,
        **details: Any,
    ) -> None:
        """Record an event. ``user`` overrides the actor's (a revocation's user);
        ``at`` is when it was decided (default: now). ``details`` must hold no token
        or payload."""
        if not self.enabled:
            return
        client = None
        if actor is not None:
            client = actor.client_id
            if user is None:
                user = actor.user or None
        # All fields positionally (keywords and default factories cost a third more).
        self.recorder.record(
            Event(
                kind,
                self.node,
                user,
                client,
                channel,
                offset,
                code,
                details or None,
                time.time() if at is None else at,
                new_event_id(),
            )
        )
