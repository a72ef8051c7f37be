"""Shared pieces of the fan-out benchmark: limits, /proc readers, ports, constants.

Everything here is Linux-specific (``/proc``) and loopback-only.
"""

from __future__ import annotations

import os
import resource
import signal
import socket
import time
from dataclasses import dataclass
from typing import Final

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
    "wait_port",
]

HOST: Final = "127.0.0.1"
WS_PATH: Final = "/connection/websocket"
CHANNEL: Final = "document:bench"
JWT_SECRET: Final = "bench-secret-not-for-production-0123456789abcdef"
API_KEY: Final = "bench-api-key-0123456789"

_CLK_TCK: Final = os.sysconf("SC_CLK_TCK")
_PAGE: Final = os.sysconf("SC_PAGE_SIZE")


def raise_nofile() -> int:
    """Raise this process's open-file limit to its hard limit; returns the new soft limit.

    10,000 sockets do not fit in the usual soft limit of 1024.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


def ignore_sigint() -> None:
    """Children leave Ctrl-C to the orchestrator, which stops them in order."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@dataclass(frozen=True, slots=True)
class ProcSample:
    """CPU seconds (all threads) and resident memory of a process."""

    user_s: float
    sys_s: float
    rss_kib: int
    at: float

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.sys_s


def read_proc(pid: int) -> ProcSample:
    """utime+stime from ``/proc/<pid>/stat`` and VmRSS from ``/proc/<pid>/status``."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    # The command name (field 2) may hold spaces: split after its closing parenthesis.
    fields = stat[stat.rindex(b")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of stat(5)
    rss_kib = 0
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith(b"VmRSS:"):
                rss_kib = int(line.split()[1])
                break
    return ProcSample(utime / _CLK_TCK, stime / _CLK_TCK, rss_kib, time.monotonic())


def machine_busy_s() -> float:
    """CPU seconds the whole machine has spent busy (all CPUs), from ``/proc/stat``."""
    with open("/proc/stat", "rb") as f:
        fields = [int(x) for x in f.readline().split()[1:9]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields) - idle) / _CLK_TCK


def free_port() -> int:
    """A loopback port free right now (another process could take it; unlikely here)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float) -> bool:
    """Whether something accepts TCP connections on ``HOST:port`` within ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False
