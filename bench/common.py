"""What the benchmarks share: the servers' secrets and the one channel they fan out to.

Everything else (servers started on free loopback ports, the generator and publisher
processes, the ``/proc`` readers and limits) is the installed load test's
(``realtime_server.loadtest``: ``spawn``, ``fleet``, ``procfs``). Linux-specific
(``/proc``), loopback-only.
"""

from __future__ import annotations

from typing import Final

from realtime_server.loadtest.procfs import machine_busy_s, raise_nofile

__all__ = [
    "API_KEY",
    "CHANNEL",
    "HOST",
    "JWT_SECRET",
    "WS_PATH",
    "machine_busy_s",
    "raise_nofile",
]

HOST: Final = "127.0.0.1"
WS_PATH: Final = "/connection/websocket"
CHANNEL: Final = "document:bench"
JWT_SECRET: Final = "bench-secret-not-for-production-0123456789abcdef"
API_KEY: Final = "bench-api-key-0123456789"
