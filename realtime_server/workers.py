"""``serve --workers N``: N server processes on one port (SO_REUSEPORT), sharing state
through the Redis engine. The parent only supervises: it forwards SIGTERM/SIGINT to the
workers and exits 0 when they all stopped cleanly. The kernel spreads new connections
over the workers; the same code runs as separate machines behind a load balancer.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from types import FrameType

__all__ = ["WORKER_ENV", "run_workers"]

WORKER_ENV = "REALTIME_WORKER_ID"
"""Set by the parent in each worker's environment (its index)."""

logger = logging.getLogger("realtime_server.workers")


def run_workers(count: int) -> int:
    """Start ``count`` workers running ``serve`` and wait for them; returns the exit code."""
    rest = sys.argv[1:]
    if rest and rest[0] == "serve":
        rest = rest[1:]
    procs: list[subprocess.Popen[bytes]] = []
    for index in range(count):
        env = dict(os.environ)
        env[WORKER_ENV] = str(index)  # Settings.worker_id: the node name gets -w<index>
        args = [sys.executable, "-m", "realtime_server", "serve", *rest]
        procs.append(subprocess.Popen(args, env=env))  # noqa: S603 - our own interpreter
    logger.info("started %d workers: %s", count, ", ".join(str(p.pid) for p in procs))

    def forward(signum: int, frame: FrameType | None) -> None:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    codes = [proc.wait() for proc in procs]
    failed = [c for c in codes if c != 0]
    if failed:
        logger.error("workers exited with %s", codes)
        return 1
    return 0
