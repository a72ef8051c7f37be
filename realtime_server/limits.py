"""The process's open-file limit, and the connection caps derived from it.

Every WebSocket connection holds a descriptor, and so does everything else the server
needs to keep working: the HTTP server API's connections, the Redis and Postgres links,
health checks, the event-log files. A process that runs out of descriptors fails all of
them at once (the issue 11 report: a flood of idle handshakes made every API publish
fail and ``/healthz`` go silent). So:

- at start the soft limit is raised to the hard limit (:func:`raise_open_file_limit`),
  and both are logged;
- WebSocket-port sockets are capped below it (``REALTIME_MAX_CONNECTIONS``, by default
  the limit minus :func:`reserve`), so that what is left always serves the rest.

How the reserve is sized (:func:`reserve`): :data:`BASE_RESERVE` descriptors for what a
process holds besides client sockets (standard streams, the event loop's own, the
listening sockets, the SQLite files and the spill file, the Redis pub/sub and command
links, the Postgres pool and the outbox's connection, the API's keep-alive connections
and health checks: about 20-30 measured on an idle node, the rest is headroom), plus
the listen backlog, because the event loop accepts every connection waiting in the
backlog before the first of them reaches the cap check (:mod:`.admission`), plus
:data:`REFUSED_RESERVE` for sockets being refused (answered 503) at the cap.
"""

from __future__ import annotations

import logging
import resource
from dataclasses import dataclass
from typing import Final

__all__ = [
    "BASE_RESERVE",
    "LISTEN_BACKLOG",
    "REFUSED_RESERVE",
    "ConnectionLimits",
    "OpenFileLimit",
    "connection_limits",
    "listen_backlog",
    "open_file_limit",
    "raise_open_file_limit",
    "reserve",
]

logger = logging.getLogger("realtime_server.limits")

BASE_RESERVE: Final = 64
"""Descriptors kept for everything but client sockets (see the module docstring)."""
LISTEN_BACKLOG: Final = 100
"""The listen backlog of the WebSocket port (the event loop's default)."""
REFUSED_RESERVE: Final = 16
"""Sockets answered 503 (or a health check) while every slot is authenticated."""
_NR_OPEN_FALLBACK: Final = 1 << 20  # Linux's default fs.nr_open


@dataclass(frozen=True, slots=True)
class OpenFileLimit:
    soft: int
    hard: int
    previous_soft: int


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """The caps of the WebSocket port (:mod:`.admission`)."""

    max_connections: int
    """Sockets on the WebSocket port, authenticated or not."""
    max_unauthenticated: int
    """Of those, sockets without a successful ``connect`` yet."""
    max_refused: int = REFUSED_RESERVE
    """Sockets kept (to answer them 503, or a health check) past the cap."""


def _finite(value: int) -> int:
    if value == resource.RLIM_INFINITY or value < 0:
        try:
            with open("/proc/sys/fs/nr_open") as f:  # what Linux accepts at most
                return int(f.read())
        except (OSError, ValueError):
            return _NR_OPEN_FALLBACK
    return value


def open_file_limit() -> OpenFileLimit:
    """The current limit (nothing changed)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return OpenFileLimit(_finite(soft), _finite(hard), _finite(soft))


def raise_open_file_limit() -> OpenFileLimit:
    """Raise the soft open-file limit to the hard limit (an unlimited hard limit: to
    the most the kernel allows) and log both. Never fails: a limit that cannot be
    raised is kept, and said."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _finite(hard)
    raised = soft
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            raised = target
        except (ValueError, OSError) as exc:
            logger.warning(
                "open files: could not raise the soft limit %d to %d: %s", soft, target, exc
            )
    limit = OpenFileLimit(_finite(raised), _finite(hard), _finite(soft))
    if limit.soft != limit.previous_soft:
        logger.info(
            "open files: soft limit raised from %d to %d (hard limit %d)",
            limit.previous_soft,
            limit.soft,
            limit.hard,
        )
    else:
        logger.info("open files: soft limit %d (hard limit %d)", limit.soft, limit.hard)
    return limit


def listen_backlog(requested: int, nofile: int) -> int:
    """The WebSocket port's backlog for a process allowed ``nofile`` descriptors: the
    requested one (``REALTIME_BACKLOG``), but at most a quarter of the descriptors (at
    least 64), since one accept burst can take as many descriptors as the backlog holds
    and the reserve keeps that many free."""
    return min(requested, max(64, nofile // 4))


def reserve(backlog: int = LISTEN_BACKLOG) -> int:
    """Descriptors kept for everything but WebSocket clients (module docstring)."""
    return BASE_RESERVE + backlog + REFUSED_RESERVE


def connection_limits(
    nofile: int,
    max_connections: int = 0,
    max_unauthenticated: int = 0,
    backlog: int = LISTEN_BACKLOG,
) -> ConnectionLimits:
    """The caps for a process allowed ``nofile`` descriptors; 0 means the default:
    ``nofile - reserve(backlog)`` connections (at least 16), half of them
    unauthenticated (at least 8). Configured values are taken as they are, bounded
    only by each other (unauthenticated at most the total)."""
    total = max_connections or max(16, nofile - reserve(backlog))
    pending = max_unauthenticated or max(8, total // 2)
    return ConnectionLimits(total, min(pending, total))
