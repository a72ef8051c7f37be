"""What the machine must hold for a run: open files on both sides, ephemeral ports.

Every connection is a descriptor in a generator process and one in the server; every
connection from one source address to one server port takes one ephemeral port
(``net.ipv4.ip_local_port_range``: about 28,000 by default). Past that, the load test
binds its connections to more loopback source addresses (all of 127.0.0.0/8 is
loopback on Linux), each with the whole range. :func:`check_limits` reports the limits
up front and refuses, in one line, a run they cannot hold.
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass
from typing import Final

from .errors import UsageError
from .procfs import raise_nofile

__all__ = [
    "GENERATOR_RESERVE",
    "SERVER_RESERVE",
    "Limits",
    "check_limits",
    "nofile_limit",
    "port_range",
    "source_addresses",
]

GENERATOR_RESERVE: Final = 64
"""Descriptors a generator uses besides its connections (pipes, event loop, libraries)."""
SERVER_RESERVE: Final = 128
"""Descriptors a server process uses besides client connections (API, Redis, event log)."""
PORT_SHARE: Final = 0.8
"""Of a source address's ephemeral ports, the share a run plans to use."""
PORT_RANGE: Final = "/proc/sys/net/ipv4/ip_local_port_range"


def port_range(path: str = PORT_RANGE) -> int | None:
    """How many ephemeral ports one source address has; None where unknown."""
    try:
        with open(path, "rb") as f:
            low, high = (int(x) for x in f.read().split())
    except (OSError, ValueError):
        return None
    return max(0, high - low + 1)


def nofile_limit(pid: int) -> int | None:
    """Another process's soft open-file limit, from ``/proc/<pid>/limits``."""
    try:
        with open(f"/proc/{pid}/limits", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Max open files"):
                    soft = line.split()[3]
                    return None if soft == "unlimited" else int(soft)
    except (OSError, ValueError, IndexError):
        return None
    return None


def _ipv4_loopback(host: str) -> str | None:
    """The IPv4 loopback address ``host`` names (``localhost``: 127.0.0.1), else None."""
    if host == "localhost":
        return "127.0.0.1"
    try:
        addr = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
    return str(addr) if addr.version == 4 and addr.is_loopback else None


def source_addresses(
    requested: int, host: str, connections: int, ports: int | None
) -> tuple[str, ...]:
    """The local addresses to bind connections to: 127.0.0.1, 127.0.0.2, ...

    ``requested`` 0 picks as many as ``connections`` need (none when one is enough,
    so that the kernel chooses as usual).

    Raises:
        UsageError: when the run needs several and the target is not IPv4 loopback.
    """
    per_source = int((ports or 28_232) * PORT_SHARE)
    needed = max(1, math.ceil(connections / max(1, per_source)))
    count = requested or (needed if needed > 1 else 0)
    if count == 0:
        return ()
    if _ipv4_loopback(host) is None:
        if requested:
            raise UsageError(f"--source-addresses needs an IPv4 loopback target, not {host}")
        each = f"{ports:,}" if ports else "about 28,000"
        raise UsageError(
            f"{connections:,} connections to one port need {needed} source addresses "
            f"({each} ephemeral ports each, net.ipv4.ip_local_port_range), "
            f"and {host} is not an IPv4 loopback address to spread them over: widen the "
            "range, or run load tests from several machines"
        )
    if count > 65_000:
        raise UsageError("--source-addresses: at most 65,000")
    return tuple(str(ipaddress.IPv4Address("127.0.0.1") + i) for i in range(count))


@dataclass(frozen=True)
class Limits:
    """The descriptors and ports a run has and needs."""

    generator_limit: int
    generator_needs: int
    server_limit: int | None
    """None when unknown (an external server without ``--server-pid``)."""
    server_needs: int
    server_what: str
    ports: int | None
    sources: tuple[str, ...]

    def describe(self) -> str:
        server = (
            f"server {self.server_limit:,} (needs {self.server_needs:,})"
            if self.server_limit is not None
            else "server unknown (give --server-pid)"
        )
        spread = (
            f"over {len(self.sources)} source addresses ({self.sources[0]}-{self.sources[-1]})"
            if self.sources
            else "from one source address"
        )
        ports = f"{self.ports:,}" if self.ports is not None else "unknown"
        return (
            f"open files: {self.generator_limit:,} per generator (needs "
            f"{self.generator_needs:,}), {server}; ephemeral ports {ports} per source "
            f"address, connections {spread}"
        )


def check_limits(
    *,
    connections: int,
    procs: int,
    workers: int,
    churn: int,
    spawn: bool,
    server_pid: int | None,
    host: str,
    requested_sources: int,
) -> Limits:
    """The limits of this run (raising this process's soft limit first: generators and a
    spawned server inherit it); ``connections`` steady ones plus ``churn`` at once.

    Raises:
        UsageError: one line naming the limit that cannot hold the run.
    """
    limit = raise_nofile()
    per_gen = math.ceil(connections / procs) + math.ceil(churn / procs)
    gen_needs = per_gen + GENERATOR_RESERVE
    if limit < gen_needs:
        raise UsageError(
            f"open-file limit {limit:,} per generator process cannot hold this run: "
            f"{per_gen:,} connections each need {gen_needs:,} descriptors; raise it "
            f"(ulimit -n {gen_needs}) or spread the run over more --procs"
        )
    per_server = math.ceil(connections / workers) + churn
    server_needs = per_server + SERVER_RESERVE
    server_limit: int | None
    if spawn:
        server_limit, what = limit, "started here, with this shell's limit"
    elif server_pid is not None:
        server_limit, what = nofile_limit(server_pid), f"pid {server_pid}"
    else:
        server_limit, what = None, "unknown"
    if server_limit is not None and server_limit < server_needs:
        raise UsageError(
            f"open-file limit {server_limit:,} of the server ({what}) cannot hold this "
            f"run: {per_server:,} connections per server process need {server_needs:,} "
            f"descriptors; raise it (ulimit -n {server_needs})"
        )
    ports = port_range()
    sources = source_addresses(requested_sources, host, connections + churn, ports)
    return Limits(limit, gen_needs, server_limit, server_needs, what, ports, sources)
