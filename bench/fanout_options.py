"""The fan-out benchmark's command line and options (``bench/fanout.py``): what it
measures (subscriber counts, modes, servers, rates, repeats), where its processes run,
and the facts a result depends on (:func:`machine_info`)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from fanout_servers import SERVERS

from realtime_server.loadtest.speed import reference_us

__all__ = ["MODES", "Options", "machine_info", "parse_args"]

BENCH_DIR: Final = Path(__file__).resolve().parent
MODES: Final = ("burst", "spread", "bursts")
DEFAULT_MESSAGES: Final = {"burst": 100, "spread": 40, "bursts": 100}
DEFAULT_BURST_SIZE: Final = 10
DEFAULT_RATE: Final = 20.0
SPREAD_MAX_LOAD: Final = 50_000.0
"""Deliveries/s offered in default spread mode: well under what 2 cores deliver, so that
each publication finds an idle server (its own wake-up) rather than a queue. Bursts
offer the same publications per second, ``--burst-size`` at a time."""


@dataclass
class Options:
    subscribers: list[int]
    modes: list[str]
    messages: dict[str, int]
    rate: float | None
    servers: list[str]
    procs: int
    concurrency: int
    repeat: int
    pin: bool = True
    json: bool = False
    burst_size: int = DEFAULT_BURST_SIZE

    def cpu_sets(self) -> tuple[set[int] | None, set[int] | None]:
        """(server CPUs, load generator CPUs): the first CPU for the server, the others
        for the load, so that the server never waits for its own load generators."""
        cpus = sorted(os.sched_getaffinity(0))
        if not self.pin or len(cpus) < 2:
            return None, None
        return {cpus[0]}, set(cpus[1:])

    def spread_rate(self, n: int) -> float:
        """Publications per second in spread and bursts modes: ``--rate``, or by default
        20/s capped so that N subscribers get at most SPREAD_MAX_LOAD deliveries per
        second (in bursts: ``--burst-size`` publications every ``burst-size / rate`` s)."""
        if self.rate is not None:
            return self.rate
        return min(DEFAULT_RATE, SPREAD_MAX_LOAD / n)


def machine_info(opts: Options) -> dict[str, Any]:
    """What the numbers depend on: the server's code revision, the machine, the options."""

    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args],
                cwd=BENCH_DIR.parent,
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            ).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""

    dirty = git("status", "--porcelain", "--", "realtime_server")
    server_cpus, load_cpus = opts.cpu_sets()
    return {
        "revision": git("rev-parse", "--short", "HEAD") or "unknown",
        "server_code_modified": bool(dirty),
        "cpus": os.cpu_count(),
        "server_cpus": sorted(server_cpus) if server_cpus else "any",
        "load_cpus": sorted(load_cpus) if load_cpus else "any",
        "python": sys.version.split()[0],
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "reference_us": reference_us(),  # the machine's speed now (loadtest/speed.py)
    }


# --- command line ------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        description="Fan-out benchmark: our server against a bare websockets broadcast "
        "server, same workload, one table.",
    )
    parser.add_argument(
        "--subscribers",
        default="1000,10000",
        help="comma-separated subscriber counts (default 1000,10000)",
    )
    parser.add_argument(
        "--messages",
        type=int,
        default=None,
        help="publications per phase (default: burst 100, spread 40, bursts 100)",
    )
    parser.add_argument(
        "--mode",
        default="all",
        help="comma-separated, from burst (back to back, one request each), spread "
        "(--rate per second, one request each), bursts (--burst-size publications per "
        "/api/batch request, --rate publications per second); both = burst,spread; "
        "all = burst,spread,bursts (default all)",
    )
    parser.add_argument(
        "--burst-size",
        type=int,
        default=DEFAULT_BURST_SIZE,
        help=f"publications per burst in bursts mode (default {DEFAULT_BURST_SIZE})",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=None,
        help="publications per second in spread and bursts modes (default 20, capped "
        f"at {SPREAD_MAX_LOAD:,.0f}/N so that the server is never saturated)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="delivery phases per mode on the same connections; the table "
        "shows medians (default 3)",
    )
    parser.add_argument(
        "--servers",
        default="ours,floor",
        help=f"comma-separated, from {', '.join(SERVERS)} (default ours,floor)",
    )
    parser.add_argument(
        "--procs", type=int, default=2, help="subscriber generator processes (default 2)"
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=24,
        help="connections being opened at once per generator (default 24)",
    )
    parser.add_argument(
        "--no-pin",
        dest="pin",
        action="store_false",
        help="do not pin the server to the first CPU and the load generators to the others",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the results as JSON on stdout instead of the table",
    )
    args = parser.parse_args(argv)
    try:
        subscribers = [int(x) for x in args.subscribers.split(",") if x.strip()]
    except ValueError:
        parser.error("--subscribers: comma-separated integers")
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    if not subscribers or any(n < 1 or n > 50_000 for n in subscribers):
        parser.error("--subscribers: each between 1 and 50000")
    if not servers or any(s not in SERVERS for s in servers):
        parser.error(f"--servers: from {', '.join(SERVERS)}")
    if args.messages is not None and not 1 <= args.messages <= 10_000:
        parser.error("--messages: between 1 and 10000")
    if args.rate is not None and not 0.1 <= args.rate <= 10_000:
        parser.error("--rate: between 0.1 and 10000")
    if not 1 <= args.procs <= 16 or not 1 <= args.repeat <= 20:
        parser.error("--procs: between 1 and 16; --repeat: between 1 and 20")
    if not 2 <= args.burst_size <= 100:
        parser.error("--burst-size: between 2 and 100 (the API's batch limit)")
    modes: list[str] = []
    for part in args.mode.split(","):
        named = {"both": ["burst", "spread"], "all": list(MODES)}.get(part.strip(), [part.strip()])
        modes += [m for m in named if m not in modes]
    if not modes or any(m not in MODES for m in modes):
        parser.error(f"--mode: comma-separated, from {', '.join(MODES)}, both, all")
    messages = {m: args.messages or DEFAULT_MESSAGES[m] for m in modes}
    return Options(
        subscribers,
        modes,
        messages,
        args.rate,
        servers,
        args.procs,
        max(1, args.concurrency),
        args.repeat,
        args.pin,
        args.json,
        args.burst_size,
    )
