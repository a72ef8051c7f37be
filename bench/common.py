"""What the benchmarks share: the servers' secrets, the one channel they fan out to, and
a few helpers.

The rest (servers started on free loopback ports, the generator and publisher
processes, the ``/proc`` readers and limits) is the installed load test's
(``realtime_server.loadtest``: ``spawn``, ``fleet``, ``procfs``). Linux-specific
(``/proc``), loopback-only.
"""

from __future__ import annotations

import importlib
import shutil
import signal
import sys
from pathlib import Path
from typing import Any, Final

from realtime_server.loadtest.procfs import (
    ProcSample,
    free_port,
    machine_busy_s,
    raise_nofile,
    read_proc,
    thread_cpu_s,
)
from realtime_server.loadtest.procfs import wait_port as _wait_port

__all__ = [
    "API_KEY",
    "CHANNEL",
    "HOST",
    "JWT_SECRET",
    "SERVER_ENV",
    "SOCKETIO_NODE_DIR",
    "WS_PATH",
    "ProcSample",
    "free_port",
    "ignore_sigint",
    "machine_busy_s",
    "peer_missing",
    "raise_nofile",
    "read_proc",
    "require_bench_deps",
    "require_peer",
    "thread_cpu_s",
    "wait_port",
]

HOST: Final = "127.0.0.1"
WS_PATH: Final = "/connection/websocket"
CHANNEL: Final = "document:bench"
JWT_SECRET: Final = "bench-secret-not-for-production-0123456789abcdef"
API_KEY: Final = "bench-api-key-0123456789"
SERVER_ENV: Final = {
    "REALTIME_JWT_SECRET": JWT_SECRET,
    "REALTIME_API_KEY": API_KEY,
    "REALTIME_LOG_LEVEL": "WARNING",
    "REALTIME_MAX_CONNECTIONS_PER_USER": "0",
    "REALTIME_RATE_LIMIT": "100000",
    "REALTIME_RATE_BURST": "100000",
    "REALTIME_PING_INTERVAL": "0",
    "REALTIME_SHUTDOWN_TIMEOUT": "2",
}
"""realtime-server's settings in every benchmark: the bench secrets, quiet logs, no
per-user or rate caps, no server pings (each benchmark adds its own)."""


def ignore_sigint() -> None:
    """Children leave Ctrl-C to the orchestrator, which stops them in order."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def wait_port(port: int, timeout: float) -> bool:
    """Whether something accepts TCP connections on ``HOST:port`` within ``timeout``."""
    return _wait_port(HOST, port, timeout)


BENCH_MODULES: Final = ("starlette", "broadcaster", "uvicorn")
"""What the Starlette + broadcaster baseline imports beyond the server's dependencies."""

PEER_MODULES: Final = {
    "starlette": BENCH_MODULES,
    "python-socketio": ("socketio", "starlette", "uvicorn"),
}
"""The Python packages each Python peer imports beyond the server's dependencies."""

SOCKETIO_NODE_DIR: Final = Path(__file__).resolve().parent / "peers" / "socketio"
"""The Node.js socket.io peer: server.mjs, its package.json and, once installed,
node_modules/ (``make bench-deps`` runs ``npm ci`` there)."""


def _missing_modules(modules: tuple[str, ...]) -> list[str]:
    missing = []
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(module)
    return missing


def peer_missing(name: str) -> str | None:
    """What the peer server ``name`` lacks to run, as one line naming how to install
    it; None when it can run (and for servers that need nothing beyond ours)."""
    if name == "socketio-node":
        if shutil.which("node") is None:
            return "socketio-node needs Node.js 20+ (node not found on PATH)"
        if not (SOCKETIO_NODE_DIR / "node_modules" / "socket.io").is_dir():
            return (
                "socketio-node needs its packages: run `make bench-deps` "
                "(npm ci --prefix bench/peers/socketio)"
            )
        return None
    missing = _missing_modules(PEER_MODULES.get(name, ()))
    if missing:
        return (
            f"{name} needs {', '.join(missing)}: run `make bench-deps` "
            "(installs requirements/bench.txt into .venv)"
        )
    return None


def require_peer(name: str) -> None:
    """Exit with one line naming what to install when the peer ``name`` cannot run."""
    line = peer_missing(name)
    if line is not None:
        sys.exit(line)


def require_bench_deps(script: str) -> None:
    """Exit with one line naming what to install when the baseline's packages are
    missing (they are not the server's dependencies: ``make bench-deps``)."""
    missing = _missing_modules(BENCH_MODULES)
    if missing:
        sys.exit(
            f"{script}: the Starlette + broadcaster baseline needs {', '.join(missing)}: "
            "run `make bench-deps` (installs requirements/bench.txt into .venv)"
        )


def serve_uvicorn(app: Any, port: int, api_port: int) -> int:
    """Serve an ASGI peer (Starlette + broadcaster, python-socketio) on both ports with
    the options of the other servers: uvloop, httptools, no WebSocket pings, no
    compression, the same frame size limit, a backlog of 4096, no access log."""
    import socket

    import uvicorn
    import uvloop

    def listen(p: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((HOST, p))
        sock.listen(4096)
        sock.setblocking(False)
        return sock

    config = uvicorn.Config(
        app,
        loop="uvloop",
        http="httptools",
        ws="websockets-sansio",
        ws_ping_interval=None,
        ws_ping_timeout=None,
        ws_per_message_deflate=False,
        ws_max_size=65536,
        log_level="warning",
        access_log=False,
        backlog=4096,
    )
    # uvicorn's own run() with loop="uvloop" does the same: serve() under uvloop.
    uvloop.run(uvicorn.Server(config).serve(sockets=[listen(port), listen(api_port)]))
    return 0
