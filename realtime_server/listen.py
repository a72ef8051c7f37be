"""The listen backlog: how many connections the kernel queues before they are accepted.

After a node restart, a deploy or a Redis data loss every client reconnects at once. A
connection the accept queue has no room for is dropped by the kernel (``ListenOverflows``
in ``/proc/net/netstat``), and its client waits a SYN retransmit timeout (1 s, then 3 s)
before it tries again. ``REALTIME_BACKLOG`` sizes the queue of the WebSocket port and of
the HTTP API port; Linux silently caps it at ``net.core.somaxconn``, so the server reads
that limit and says when it applies.
"""

from __future__ import annotations

from typing import Final

__all__ = ["SOMAXCONN", "effective_backlog", "somaxconn"]

SOMAXCONN: Final = "/proc/sys/net/core/somaxconn"


def somaxconn(path: str = SOMAXCONN) -> int | None:
    """The kernel's cap on listen backlogs, or None where it cannot be read (not Linux)."""
    try:
        with open(path, "rb") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def effective_backlog(requested: int, path: str = SOMAXCONN) -> int:
    """The backlog ``listen(requested)`` gets: Linux takes the smaller of the two."""
    cap = somaxconn(path)
    return requested if cap is None or cap <= 0 else min(requested, cap)
