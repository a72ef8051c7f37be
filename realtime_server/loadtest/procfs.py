"""Linux process accounting for load tests: CPU and memory from ``/proc``, process trees,
open-file limits, free loopback ports.

Everything here reads ``/proc`` (Linux only) and never touches another machine.
"""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import time
from dataclasses import dataclass
from typing import Final

__all__ = [
    "ProcSample",
    "free_port",
    "machine_busy_s",
    "raise_nofile",
    "read_proc",
    "read_tree",
    "thread_cpu_s",
    "tree_pids",
    "wait_port",
]

_CLK_TCK: Final = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class ProcSample:
    """CPU seconds (all threads) and resident memory of a process (or a process tree)."""

    user_s: float
    sys_s: float
    rss_kib: int
    at: float

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.sys_s


def raise_nofile() -> int:
    """Raise this process's open-file limit to its hard limit; returns the new soft limit.

    10,000 sockets do not fit in the usual soft limit of 1024.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            return target
    return soft


def _cpu_ticks(stat_path: str) -> tuple[int, int]:
    """utime and stime, in clock ticks, from a ``stat`` file of ``/proc`` (a process's
    or one thread's: the same format)."""
    with open(stat_path, "rb") as f:
        stat = f.read()
    # The command name (field 2) may hold spaces: split after its closing parenthesis.
    fields = stat[stat.rindex(b")") + 2 :].split()
    return int(fields[11]), int(fields[12])  # fields 14 and 15 of stat(5)


def thread_cpu_s(pid: int, tid: int) -> float:
    """CPU seconds (user + system) of thread ``tid`` of process ``pid`` (``tid ==
    pid``: its main thread, the event loop's in our server).

    Raises:
        OSError: when the thread is gone.
    """
    return sum(_cpu_ticks(f"/proc/{pid}/task/{tid}/stat")) / _CLK_TCK


def read_proc(pid: int) -> ProcSample:
    """utime+stime from ``/proc/<pid>/stat`` and VmRSS from ``/proc/<pid>/status``.

    Raises:
        OSError: when the process is gone.
    """
    utime, stime = _cpu_ticks(f"/proc/{pid}/stat")
    rss_kib = 0
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith(b"VmRSS:"):
                rss_kib = int(line.split()[1])
                break
    return ProcSample(utime / _CLK_TCK, stime / _CLK_TCK, rss_kib, time.monotonic())


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                found.extend(int(x) for x in f.read().split())
        except OSError:
            continue
    return found


def tree_pids(pid: int) -> list[int]:
    """``pid`` and all its descendants (``serve --workers N``: the supervisor and its
    workers)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(_children(p))
    return out


def read_tree(pid: int) -> ProcSample:
    """CPU and RSS summed over ``pid`` and its descendants (those alive now)."""
    user = system = 0.0
    rss = 0
    for p in tree_pids(pid):
        try:
            s = read_proc(p)
        except OSError:
            continue
        user += s.user_s
        system += s.sys_s
        rss += s.rss_kib
    return ProcSample(user, system, rss, time.monotonic())


def machine_busy_s() -> float:
    """CPU seconds the whole machine has spent busy (all CPUs), from ``/proc/stat``."""
    with open("/proc/stat", "rb") as f:
        fields = [int(x) for x in f.readline().split()[1:9]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields) - idle) / _CLK_TCK


def free_port(host: str = "127.0.0.1") -> int:
    """A loopback port free right now (another process could take it; unlikely here)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_port(host: str, port: int, timeout: float) -> bool:
    """Whether something accepts TCP connections on ``host:port`` within ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False
