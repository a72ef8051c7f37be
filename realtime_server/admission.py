"""Admission on the WebSocket port: a cap on sockets, and a smaller one on sockets that
have not authenticated yet.

Every socket accepted on the WebSocket port (WebSocket clients, health checks,
``/metrics`` scrapes) is counted from the moment it is accepted until it is gone:

- **unauthenticated**: no successful ``connect`` yet (TCP only, a handshake, an HTTP
  request, a WebSocket waiting for its ``connect``);
- **authenticated**: a connection whose ``connect`` succeeded.

Caps (:class:`~realtime_server.limits.ConnectionLimits`): authenticated plus
unauthenticated at most ``max_connections``; unauthenticated at most
``max_unauthenticated``. When an accepted socket would pass either, the *oldest*
unauthenticated socket is dropped (aborted) to make room: an idle-handshake flood then
only ever holds the unauthenticated share, and every newcomer (a real client, a health
check) still gets in and has the time of a handshake to authenticate. Only when every
slot is taken by authenticated connections is a newcomer refused: its WebSocket
handshake is answered HTTP 503; its ``/healthz``, ``/readyz`` or ``/metrics`` request
is still answered (up to ``max_refused`` such sockets are kept, the oldest dropped
beyond).

An episode (from the first socket dropped or refused until the port is back under 90%
of both caps) is logged once when it starts and once when it ends; ``/metrics`` counts
sockets by state and refusals by reason (:data:`REASONS`).
"""

from __future__ import annotations

import enum
import logging
import time
from collections import Counter
from typing import Final, Protocol

from .limits import ConnectionLimits

__all__ = ["REASONS", "Admission", "ConnectionGate", "Gated"]

logger = logging.getLogger("realtime_server.admission")

REASONS: Final = ("max_connections", "unauthenticated_dropped", "refused_dropped")
"""``max_connections``: a WebSocket handshake answered 503 (every slot authenticated);
``unauthenticated_dropped``: the oldest unauthenticated socket aborted to make room;
``refused_dropped``: a socket kept to be answered 503 aborted to make room."""

_LOW_WATER: Final = 0.9


class Admission(enum.IntEnum):
    NONE = 0
    UNAUTHENTICATED = 1
    AUTHENTICATED = 2
    REFUSED = 3


class Gated(Protocol):
    """What the gate needs of a connection (``wsconn.WsConnection``)."""

    admission: Admission

    def drop(self) -> None:
        """Abort the socket now (its release comes later, through the gate)."""


class ConnectionGate:
    """The counts and caps of one process's WebSocket port (see the module docstring).
    Every method is synchronous and O(1); it runs once per accepted, authenticated
    and closed socket, never per message."""

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self.authenticated = 0
        # Insertion-ordered: the first key is the oldest socket.
        self._unauthenticated: dict[Gated, None] = {}
        self._refused: dict[Gated, None] = {}
        self.refusals: Counter[str] = Counter({reason: 0 for reason in REASONS})
        self._episode_started: float | None = None
        self._episode_counts: Counter[str] = Counter()

    @property
    def unauthenticated(self) -> int:
        return len(self._unauthenticated)

    @property
    def sockets(self) -> int:
        """Sockets on the port that count against the cap (refused ones do not)."""
        return self.authenticated + len(self._unauthenticated)

    @property
    def refused(self) -> int:
        return len(self._refused)

    def admit(self, conn: Gated) -> bool:
        """A socket was accepted. True: admitted (unauthenticated); False: every slot
        is authenticated, the socket is kept only to be answered (503 to a WebSocket
        handshake, a health route served)."""
        limits = self.limits
        pending = self._unauthenticated
        while pending and (
            len(pending) >= limits.max_unauthenticated
            or self.authenticated + len(pending) >= limits.max_connections
        ):
            self._drop_oldest(pending, "unauthenticated_dropped")
        if self.authenticated + len(pending) < limits.max_connections:
            pending[conn] = None
            conn.admission = Admission.UNAUTHENTICATED
            return True
        refused = self._refused
        while len(refused) >= limits.max_refused:
            self._drop_oldest(refused, "refused_dropped")
        refused[conn] = None
        conn.admission = Admission.REFUSED
        self._episode()
        return False

    def refuse(self) -> None:
        """A refused socket's WebSocket handshake is answered 503: count it."""
        self._count("max_connections")

    def authenticate(self, conn: Gated) -> None:
        """The connection's ``connect`` succeeded: out of the unauthenticated cap."""
        if conn.admission is Admission.UNAUTHENTICATED:
            del self._unauthenticated[conn]
            self.authenticated += 1
            conn.admission = Admission.AUTHENTICATED

    def release(self, conn: Gated) -> None:
        """The socket is gone (idempotent)."""
        state = conn.admission
        if state is Admission.UNAUTHENTICATED:
            self._unauthenticated.pop(conn, None)
        elif state is Admission.AUTHENTICATED:
            self.authenticated -= 1
        elif state is Admission.REFUSED:
            self._refused.pop(conn, None)
        else:
            return
        conn.admission = Admission.NONE
        if self._episode_started is not None:
            self._maybe_end_episode()

    # --- internals ----------------------------------------------------------------------

    def _drop_oldest(self, pool: dict[Gated, None], reason: str) -> None:
        victim = next(iter(pool))
        del pool[victim]
        victim.admission = Admission.NONE
        self._count(reason)
        victim.drop()

    def _count(self, reason: str) -> None:
        self.refusals[reason] += 1
        self._episode()
        self._episode_counts[reason] += 1

    def _episode(self) -> None:
        if self._episode_started is not None:
            return
        self._episode_started = time.monotonic()
        self._episode_counts.clear()
        limits = self.limits
        logger.warning(
            "connection limit reached: %d sockets (%d authenticated, %d not), caps %d and "
            "%d unauthenticated; dropping the oldest unauthenticated sockets, answering "
            "503 when every slot is authenticated",
            self.sockets,
            self.authenticated,
            self.unauthenticated,
            limits.max_connections,
            limits.max_unauthenticated,
        )

    def _maybe_end_episode(self) -> None:
        limits = self.limits
        if (
            self.sockets > _LOW_WATER * limits.max_connections
            or self.unauthenticated > _LOW_WATER * limits.max_unauthenticated
        ):
            return
        started = self._episode_started
        assert started is not None
        self._episode_started = None
        counts = self._episode_counts
        logger.info(
            "connection limit episode over after %.1f s: %d handshakes answered 503, "
            "%d unauthenticated sockets dropped, %d refused sockets dropped; %d sockets now",
            time.monotonic() - started,
            counts["max_connections"],
            counts["unauthenticated_dropped"],
            counts["refused_dropped"],
            self.sockets,
        )
