"""What the benchmarks share: the servers' secrets, the one channel they fan out to, and
a few helpers.

The rest (servers started on free loopback ports, the generator and publisher
processes, the ``/proc`` readers and limits) is the installed load test's
(``realtime_server.loadtest``: ``spawn``, ``fleet``, ``procfs``). Linux-specific
(``/proc``), loopback-only.
"""

from __future__ import annotations

import importlib
import signal
import sys
from typing import Final

from realtime_server.loadtest.procfs import (
    ProcSample,
    free_port,
    machine_busy_s,
    raise_nofile,
    read_proc,
)
from realtime_server.loadtest.procfs import wait_port as _wait_port

__all__ = [
    "API_KEY",
    "CHANNEL",
    "HOST",
    "JWT_SECRET",
    "WS_PATH",
    "ProcSample",
    "free_port",
    "ignore_sigint",
    "machine_busy_s",
    "raise_nofile",
    "read_proc",
    "require_bench_deps",
    "wait_port",
]

HOST: Final = "127.0.0.1"
WS_PATH: Final = "/connection/websocket"
CHANNEL: Final = "document:bench"
JWT_SECRET: Final = "bench-secret-not-for-production-0123456789abcdef"
API_KEY: Final = "bench-api-key-0123456789"


def ignore_sigint() -> None:
    """Children leave Ctrl-C to the orchestrator, which stops them in order."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def wait_port(port: int, timeout: float) -> bool:
    """Whether something accepts TCP connections on ``HOST:port`` within ``timeout``."""
    return _wait_port(HOST, port, timeout)


BENCH_MODULES: Final = ("starlette", "broadcaster", "uvicorn")
"""What the Starlette + broadcaster baseline imports beyond the server's dependencies."""


def require_bench_deps(script: str) -> None:
    """Exit with one line naming what to install when the baseline's packages are
    missing (they are not the server's dependencies: ``make bench-deps``)."""
    missing = []
    for module in BENCH_MODULES:
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(module)
    if missing:
        sys.exit(
            f"{script}: the Starlette + broadcaster baseline needs {', '.join(missing)}: "
            "run `make bench-deps` (installs requirements/bench.txt into .venv)"
        )
