"""Fan-out benchmark: our server against the floor, on the same workload, in one run.

For each subscriber count and each server (one after the other, each a fresh process):
open N idle authenticated subscribed WebSocket connections from several generator
processes, measure the server's RSS before and after, then publish M messages through
the server's HTTP publish API (``burst``: back to back; ``spread``: ``--rate`` per
second) and measure the server's CPU time over the delivery phase, the deliveries, the
publish-to-receive latency and the losses. Prints one table. See bench/README.md.

    .venv/bin/python bench/fanout.py [--subscribers 1000,10000] [--messages N]
        [--mode burst|spread|both] [--servers ours,floor] [--json]

Only 127.0.0.1 is used; every step has a time bound; every child process is stopped
at the end, on failure and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson
from common import (
    API_KEY,
    CHANNEL,
    HOST,
    JWT_SECRET,
    WS_PATH,
    machine_busy_s,
    raise_nofile,
    require_bench_deps,
)

from realtime_server.loadtest.errors import LoadTestError
from realtime_server.loadtest.fleet import Generators, PublisherProcess
from realtime_server.loadtest.messages import GeneratorConfig, PublisherConfig, Stream, UserSpec
from realtime_server.loadtest.pipes import Pipes
from realtime_server.loadtest.procfs import read_proc
from realtime_server.loadtest.progress import ProgressLine
from realtime_server.loadtest.spawn import RedisProcess, ServerProcess, SpawnError
from realtime_server.loadtest.stats import Histogram

__all__ = ["main"]

BENCH_DIR: Final = Path(__file__).resolve().parent
SERVERS: Final = ("ours", "ours-redis", "floor", "floor-bcast", "starlette")
ALTERNATIVE: Final = "starlette"
"""The typical alternative: Starlette + encode/broadcaster on Redis (starlette_broadcaster.py)."""
DEFAULT_MESSAGES: Final = {"burst": 100, "spread": 40}
DEFAULT_RATE: Final = 20.0
SPREAD_MAX_LOAD: Final = 50_000.0
"""Deliveries/s offered in default spread mode: well under what 2 cores deliver, so that
each publication finds an idle server (its own wake-up) rather than a queue."""
OURS_ENV: Final = {
    "REALTIME_JWT_SECRET": JWT_SECRET,
    "REALTIME_API_KEY": API_KEY,
    "REALTIME_LOG_LEVEL": "WARNING",
    "REALTIME_MAX_CONNECTIONS_PER_USER": "0",
    "REALTIME_RATE_LIMIT": "100000",
    "REALTIME_RATE_BURST": "100000",
    "REALTIME_PING_INTERVAL": "0",
    "REALTIME_CONNECT_TIMEOUT": "30",
    "REALTIME_SHUTDOWN_TIMEOUT": "2",
    # Join/leave pushes would make opening N connections cost N^2/2 frames.
    "REALTIME_NAMESPACES": '{"document": {"join_leave": false}}',
}


class BenchError(RuntimeError):
    """A step of the benchmark failed or ran out of time."""


# --- servers ---------------------------------------------------------------------------------


@dataclass
class Server:
    """One server case's processes: the server (the load test's spawner) and, for the
    Redis-backed ones, a private redis-server."""

    name: str
    proc: ServerProcess
    redis: RedisProcess | None

    def stop(self) -> None:
        self.proc.stop(10.0)
        if self.redis is not None:
            self.redis.stop()


def start_server(
    name: str, workdir: Path, cpus: set[int] | None, load_cpus: set[int] | None
) -> Server:
    redis: RedisProcess | None = None
    if name in ("ours-redis", "starlette"):
        # A private redis-server on the load generators' CPUs: its CPU time is not the
        # server's (one PUBLISH per publication, one message to the server).
        redis = RedisProcess(workdir)
        redis.start()
        if load_cpus and redis.proc is not None:
            os.sched_setaffinity(redis.proc.pid, load_cpus)
    env: dict[str, str] = {}
    if name in ("ours", "ours-redis"):
        env.update(OURS_ENV)
        if redis is not None:
            env["REALTIME_REDIS_URL"] = redis.url
        command = None
    elif name == "starlette":
        assert redis is not None
        url = redis.url

        def command(port: int, api_port: int) -> list[str]:
            script = str(BENCH_DIR / "starlette_broadcaster.py")
            return [sys.executable, script, "--port", str(port), "--api-port", str(api_port),
                    "--redis-url", url]  # fmt: skip
    else:
        fanout = "broadcast" if name == "floor-bcast" else "write"

        def command(port: int, api_port: int) -> list[str]:
            script = str(BENCH_DIR / "floor_server.py")
            return [sys.executable, script, "--port", str(port), "--api-port", str(api_port),
                    "--fanout", fanout]  # fmt: skip

    proc = ServerProcess(
        workdir, env, 1, sorted(cpus) if cpus else None, command=command, name=name
    )
    try:
        proc.start(20.0)
    except SpawnError as exc:
        if redis is not None:
            redis.stop()
        raise BenchError(str(exc)) from None
    return Server(name, proc, redis)


# --- one server case ---------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the result table."""

    server: str
    subscribers: int
    mode: str
    messages: int
    rate: float = 0.0
    repeats: int = 0
    published: int = 0
    publish_errors: int = 0
    deliveries: int = 0
    expected: int = 0
    lost: int = 0
    closed: int = 0
    wall_s: float = 0.0
    cpu_s: float = 0.0
    deliveries_per_s: float = 0.0
    cpu_us_per_delivery: float = 0.0
    cpu_us_per_delivery_runs: list[float] = field(default_factory=list)
    user_us_per_delivery: float = 0.0
    sys_us_per_delivery: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    rss_kib_per_conn: float = 0.0
    rss_before_kib: int = 0
    rss_after_kib: int = 0
    connected: int = 0
    connect_failed: int = 0
    publisher_behind_s: float = 0.0
    other_load: float = 0.0
    subscriber_cpu_us_per_delivery: float = 0.0
    notes: list[str] = field(default_factory=list)


@dataclass
class Run:
    """One delivery phase."""

    published: int = 0
    publish_errors: int = 0
    expected: int = 0
    deliveries: int = 0
    lost: int = 0
    closed: int = 0
    cpu_s: float = 0.0
    user_s: float = 0.0
    wall_s: float = 0.0
    cpu_us_per_delivery: float = 0.0
    user_us_per_delivery: float = 0.0
    deliveries_per_s: float = 0.0
    behind_s: float = 0.0
    other_cpu_s: float = 0.0
    load_cpu_s: float = 0.0
    phase_s: float = 0.0
    latency: Histogram = field(default_factory=Histogram)
    notes: list[str] = field(default_factory=list)


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

    def cpu_sets(self) -> tuple[set[int] | None, set[int] | None]:
        """(server CPUs, load generator CPUs): the first CPU for the server, the others
        for the load, so that the server never waits for its own load generators."""
        cpus = sorted(os.sched_getaffinity(0))
        if not self.pin or len(cpus) < 2:
            return None, None
        return {cpus[0]}, set(cpus[1:])

    def spread_rate(self, n: int) -> float:
        """Publications per second in spread mode: ``--rate``, or by default 20/s capped
        so that N subscribers get at most SPREAD_MAX_LOAD deliveries per second."""
        if self.rate is not None:
            return self.rate
        return min(DEFAULT_RATE, SPREAD_MAX_LOAD / n)


@dataclass
class Load:
    """The load of one server case: the load test's generator and publisher processes.
    Each subscriber is a user with ``channels: ["document:bench"]`` in its token."""

    pipes: Pipes
    gens: Generators
    pub: PublisherProcess

    @classmethod
    def start(cls, opts: Options, server: Server, n: int, cpus: set[int] | None) -> Load:
        pipes = Pipes()
        load_cpus = sorted(cpus) if cpus else None
        try:
            gens = Generators(pipes, opts.procs, load_cpus)
            configs = [
                GeneratorConfig(
                    index=i, host=HOST, port=server.proc.port, path=WS_PATH, secret=JWT_SECRET,
                    reconnect=False, user_channel=False, prefix="bench-",
                )
                for i in range(opts.procs)
            ]  # fmt: skip
            gens.setup(configs, [UserSpec(f"bench-{i}", (CHANNEL,)) for i in range(n)])
            # One request at a time over one keep-alive connection: the next publication
            # goes when the previous one is answered.
            config = PublisherConfig(
                via="api", streams=(), api_url=server.proc.api_url, api_key=API_KEY,
                inflight=1, timeout=30.0,
            )  # fmt: skip
            pub = PublisherProcess(pipes, config, load_cpus)
        except BaseException:
            pipes.stop()
            raise
        return cls(pipes, gens, pub)

    def stop(self) -> None:
        self.pipes.stop()


class Bench:
    def __init__(self, opts: Options, workdir: Path) -> None:
        self.opts = opts
        self.workdir = workdir
        self.progress = ProgressLine(tty_every=0.2)
        self.log_notes: dict[tuple[str, int], list[str]] = {}

    def run(self) -> list[Row]:
        rows: list[Row] = []
        for n in self.opts.subscribers:
            for name in self.opts.servers:
                case = self.case(name, n)
                for line in self.log_notes.get((name, n), []):
                    case[0].notes.append(f"server log: {line}")
                rows.extend(case)
        return rows

    def case(self, name: str, n: int) -> list[Row]:
        label = f"[{name} n={n}]"
        self.progress(f"{label} starting server", force=True)
        server_cpus, load_cpus = self.opts.cpu_sets()
        server = start_server(name, self.workdir, server_cpus, load_cpus)
        load: Load | None = None
        try:
            load = Load.start(self.opts, server, n, load_cpus)
            return self._measure(label, server, load, n)
        except LoadTestError as exc:
            tail = server.proc.tail()
            raise BenchError(f"{label} {exc}\n--- server log tail ---\n{tail}") from None
        finally:
            if load is not None:
                load.stop()
            server.stop()
            self.log_notes[(name, n)] = server.proc.problems(3)

    def _open(self, label: str, load: Load, counts: list[int], firsts: list[int]) -> None:
        gens, total = load.gens, sum(load.gens.shares)
        last = [0.0]

        def show() -> None:
            if time.monotonic() - last[0] >= 0.5:
                last[0] = time.monotonic()
                gens.ask_stats()
            opened = gens.total(lambda c: c.opened)
            failed = gens.total(lambda c: sum(c.failed.values()))
            self.progress(f"{label} connecting {opened}/{total} ({failed} failed)")

        gens.open(counts, firsts, self.opts.concurrency, tick=show)

    def _measure(self, label: str, server: Server, load: Load, n: int) -> list[Row]:
        gens = load.gens
        pid = server.proc.pid
        warm = [min(s, max(1, n // (20 * len(gens.shares))), 50) for s in gens.shares]
        # Warm-up connections go first so that one-off costs (imports on first use,
        # first allocations of every structure) stay out of the per-connection memory.
        self._open(label, load, warm, [0] * len(warm))
        opened_warm = gens.total(lambda c: c.opened)
        time.sleep(0.5)
        before = read_proc(pid)
        rest = [s - w for s, w in zip(gens.shares, warm, strict=True)]
        self._open(label, load, rest, warm)
        time.sleep(1.0)  # let the server finish the tail of connect work (presence...)
        after = read_proc(pid)
        connected = gens.total(lambda c: c.opened)
        errors = gens.merged(lambda c: c.failed)
        failed = sum(errors.values())
        per_conn = (after.rss_kib - before.rss_kib) / max(1, connected - opened_warm)
        self.progress(
            f"{label} {connected} connected ({failed} failed), {per_conn:.1f} KiB/conn",
            force=True,
        )
        rows = []
        for mode in self.opts.modes:
            row = self._phase(label, server, load, n, mode)
            row.connected, row.connect_failed = connected, failed
            row.rss_before_kib, row.rss_after_kib = before.rss_kib, after.rss_kib
            row.rss_kib_per_conn = per_conn
            if errors:
                row.notes.append(f"connect errors: {errors}")
            rows.append(row)
            time.sleep(0.5)
        return rows

    def _phase(self, label: str, server: Server, load: Load, n: int, mode: str) -> Row:
        """Run ``--repeat`` delivery phases of ``mode``; one row of medians and totals."""
        messages = self.opts.messages[mode]
        rate = self.opts.spread_rate(n) if mode == "spread" else 0.0
        row = Row(server.name, n, mode, messages, rate=rate)
        runs: list[Run] = []
        latency = Histogram()
        for repeat in range(self.opts.repeat):
            what = f"{label} {mode} {repeat + 1}/{self.opts.repeat}: {messages} msgs"
            run = self._run_once(what, server, load, n, messages, rate)
            runs.append(run)
            latency.merge(run.latency)
            self.progress.done(
                f"{what}: {run.deliveries_per_s:,.0f} deliveries/s, "
                f"{run.cpu_us_per_delivery:.2f} us CPU/delivery, lost {run.lost}"
            )
            time.sleep(0.5)
        row.repeats = len(runs)
        row.published = sum(r.published for r in runs)
        row.publish_errors = sum(r.publish_errors for r in runs)
        row.expected = sum(r.expected for r in runs)
        row.deliveries = sum(r.deliveries for r in runs)
        row.lost = sum(r.lost for r in runs)
        row.closed = sum(r.closed for r in runs)
        row.cpu_s = sum(r.cpu_s for r in runs)
        row.wall_s = sum(r.wall_s for r in runs)
        row.cpu_us_per_delivery = statistics.median(r.cpu_us_per_delivery for r in runs)
        row.cpu_us_per_delivery_runs = [round(r.cpu_us_per_delivery, 3) for r in runs]
        row.deliveries_per_s = statistics.median(r.deliveries_per_s for r in runs)
        if row.deliveries:
            # The user/system split over all runs together (the tick is 10 ms: too coarse
            # to split one short run).
            row.user_us_per_delivery = sum(r.user_s for r in runs) / row.deliveries * 1e6
            row.sys_us_per_delivery = row.cpu_s / row.deliveries * 1e6 - row.user_us_per_delivery
        row.publisher_behind_s = max(r.behind_s for r in runs)
        row.subscriber_cpu_us_per_delivery = (
            sum(r.load_cpu_s for r in runs) / max(1, row.deliveries) * 1e6
        )
        row.other_load = sum(r.other_cpu_s for r in runs) / max(1e-9, sum(r.phase_s for r in runs))
        if row.other_load > 0.15:
            row.notes.append(
                f"other work on the machine took {row.other_load:.0%} of a CPU "
                "during the measurement (noise)"
            )
        for r in runs:
            row.notes.extend(note for note in r.notes if note not in row.notes)
        row.p50_ms = latency.percentile(0.50) / 1000.0
        row.p99_ms = latency.percentile(0.99) / 1000.0
        row.max_ms = latency.percentile(1.0) / 1000.0
        if mode == "spread" and row.publisher_behind_s > 2.0 / rate:
            row.notes.append(
                f"publisher fell {row.publisher_behind_s:.2f}s behind schedule: "
                "the server could not keep up with the rate"
            )
        return row

    def _run_once(
        self, what: str, server: Server, load: Load, n: int, messages: int, rate: float
    ) -> Run:
        """One delivery phase: publish ``messages``, wait until every connection open at
        the start has them all (or a deadline passed)."""
        gens, pub = load.gens, load.pub
        gens.refresh()
        run = Run()
        received0 = gens.total(lambda c: c.received)
        closes0 = gens.merged(lambda c: c.closes)
        latency0 = gens.latency()
        run.expected = messages * gens.total(lambda c: c.open_now)
        publish_time = messages / rate if rate > 0 else 0.0
        deadline = time.monotonic() + 30.0 + publish_time + messages * n * 60e-6

        pid = server.proc.pid
        procs = [pid, *(c.proc.pid for c in load.pipes.children if c.proc.pid)]
        busy0, ours0 = machine_busy_s(), sum(read_proc(p).cpu_s for p in procs)
        load0 = sum(gens.cpu_s())
        cpu0 = read_proc(pid)
        pub.run(None, (Stream((CHANNEL,), rate, "broadcast", count=messages),))
        done = None
        started = time.monotonic()
        while True:
            load.pipes.pump(0.02)
            gens.ask_stats()
            received = gens.total(lambda c: c.received) - received0
            done = done or pub.done()
            if done is not None and received >= run.expected:
                break
            now = time.monotonic()
            if now > deadline:
                # Whatever did not arrive by now is lost.
                run.notes.append("not every message arrived before the deadline")
                done = done or pub.wait(30.0)
                break
            self.progress(f"{what}, {received}/{run.expected} delivered, {now - started:.1f}s")
        cpu1 = read_proc(pid)
        busy1, ours1 = machine_busy_s(), sum(read_proc(p).cpu_s for p in procs)
        gens.refresh()
        run.load_cpu_s = sum(gens.cpu_s()) - load0
        # Busy time that is neither the server's nor its load's: other work on the
        # machine, which skews everything measured here (interrupts and softirqs too).
        run.other_cpu_s = max(0.0, (busy1 - busy0) - (ours1 - ours0))
        run.phase_s = cpu1.at - cpu0.at

        run.published = done.published
        run.publish_errors = sum(done.errors.values())
        run.behind_s = done.behind_s
        run.deliveries = gens.total(lambda c: c.received) - received0
        closes = gens.merged(lambda c: c.closes)
        grew = {k: v - closes0.get(k, 0) for k, v in closes.items() if v != closes0.get(k, 0)}
        run.closed = sum(grew.values())
        if grew:
            run.notes.append(f"closes: {grew}")
        run.latency = gens.latency().minus(latency0)
        last_ns = max(c.last_recv_ns for c in gens.stats)
        run.lost = run.expected - run.deliveries
        run.cpu_s = cpu1.cpu_s - cpu0.cpu_s
        run.user_s = cpu1.user_s - cpu0.user_s
        run.wall_s = (last_ns - done.started_ns) / 1e9 if last_ns > done.started_ns else 0.0
        if run.deliveries:
            run.cpu_us_per_delivery = run.cpu_s / run.deliveries * 1e6
            run.user_us_per_delivery = run.user_s / run.deliveries * 1e6
        if run.wall_s:
            run.deliveries_per_s = run.deliveries / run.wall_s
        if run.publish_errors:
            run.notes.append(f"{run.publish_errors} publish requests failed")
        return run


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
    }


# --- output ------------------------------------------------------------------------------------


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b > 0 else "-"


def table(rows: list[Row]) -> str:
    floors = {(r.subscribers, r.mode): r for r in rows if r.server == "floor"}
    lines = [
        "| server | subs | mode | msgs x runs | deliveries/s | CPU us/delivery (user+sys) "
        "| p50 ms | p99 ms | lost | RSS KiB/conn | CPU ours/floor | mem ours/floor |",
        "|" + "---|" * 12,
    ]
    for r in rows:
        floor = floors.get((r.subscribers, r.mode))
        cpu_ratio = mem_ratio = ""
        if r.server.startswith("ours") and floor is not None:
            cpu_ratio = _ratio(r.cpu_us_per_delivery, floor.cpu_us_per_delivery)
            mem_ratio = _ratio(r.rss_kib_per_conn, floor.rss_kib_per_conn)
        mode = f"{r.mode} {r.rate:g}/s" if r.mode == "spread" else r.mode
        lines.append(
            f"| {r.server} | {r.subscribers:,} | {mode} | {r.messages}x{r.repeats} "
            f"| {r.deliveries_per_s:,.0f} | {r.cpu_us_per_delivery:.2f} "
            f"({r.user_us_per_delivery:.2f}+{r.sys_us_per_delivery:.2f}) "
            f"| {r.p50_ms:.1f} | {r.p99_ms:.1f} | {r.lost} | {r.rss_kib_per_conn:.1f} "
            f"| {cpu_ratio} | {mem_ratio} |"
        )
    notes = [
        f"- {r.server} n={r.subscribers} {r.mode}: {'; '.join(r.notes)}" for r in rows if r.notes
    ]
    if notes:
        lines += ["", "Notes:", *notes]
    return "\n".join(lines)


def ratio_table(rows: list[Row]) -> str:
    """Ours against the floor and against the alternative, for each N and mode: higher
    is better for deliveries/s, lower is better for the three others."""
    by = {(r.server, r.subscribers, r.mode): r for r in rows}
    keys = list(dict.fromkeys((r.subscribers, r.mode) for r in rows))
    lines = [
        "| subs | mode | vs | deliveries/s ours/x | CPU us/delivery ours/x | p99 ours/x "
        "| memory/conn ours/x |",
        "|" + "---|" * 7,
    ]
    for n, mode in keys:
        ours = by.get(("ours", n, mode))
        if ours is None:
            continue
        for other in ("floor", ALTERNATIVE):
            x = by.get((other, n, mode))
            if x is None:
                continue
            label = f"{mode} {ours.rate:g}/s" if mode == "spread" else mode
            lines.append(
                f"| {n:,} | {label} | {other} "
                f"| {_ratio(ours.deliveries_per_s, x.deliveries_per_s)} "
                f"| {_ratio(ours.cpu_us_per_delivery, x.cpu_us_per_delivery)} "
                f"| {_ratio(ours.p99_ms, x.p99_ms)} "
                f"| {_ratio(ours.rss_kib_per_conn, x.rss_kib_per_conn)} |"
            )
    return "\n".join(lines) if len(lines) > 2 else ""


TARGET_FLOOR: Final = {"burst": 1.2, "spread": 1.3}
"""CPU per delivery, ours / floor, at most (issue 5)."""
TARGET_MEMORY_KIB: Final = 16.0
TARGET_ALT_CPU: Final = 2.5
TARGET_ALT_P99: Final = 10.0
"""Spread out: at least this many times cheaper per delivery / lower p99 than the alternative."""


def verdicts(rows: list[Row]) -> str:
    by = {(r.server, r.subscribers, r.mode): r for r in rows}
    out = []
    for r in rows:
        if r.server != "ours":
            continue
        floor = by.get(("floor", r.subscribers, r.mode))
        if floor is not None and floor.cpu_us_per_delivery:
            ratio = r.cpu_us_per_delivery / floor.cpu_us_per_delivery
            limit = TARGET_FLOOR[r.mode]
            out.append(
                f"- CPU/delivery n={r.subscribers} {r.mode}: {ratio:.2f}x floor "
                f"(target <= {limit}x): {'met' if ratio <= limit else 'MISSED'}"
            )
        alt = by.get((ALTERNATIVE, r.subscribers, r.mode))
        if alt is not None and r.mode == "spread" and r.cpu_us_per_delivery and r.p99_ms:
            cheaper = alt.cpu_us_per_delivery / r.cpu_us_per_delivery
            lower = alt.p99_ms / r.p99_ms
            out.append(
                f"- vs {ALTERNATIVE} n={r.subscribers} spread: {cheaper:.2f}x cheaper per "
                f"delivery (target >= {TARGET_ALT_CPU}x): "
                f"{'met' if cheaper >= TARGET_ALT_CPU else 'MISSED'}; p99 {lower:.1f}x lower "
                f"(target >= {TARGET_ALT_P99:g}x): {'met' if lower >= TARGET_ALT_P99 else 'MISSED'}"
            )
    seen: set[int] = set()
    for r in rows:
        if r.server == "ours" and r.subscribers not in seen:
            seen.add(r.subscribers)
            out.append(
                f"- memory n={r.subscribers}: {r.rss_kib_per_conn:.1f} KiB per idle "
                f"connection (target < {TARGET_MEMORY_KIB:g}): "
                f"{'met' if r.rss_kib_per_conn < TARGET_MEMORY_KIB else 'MISSED'}"
            )
    return "\n".join(out)


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
        help="publications per phase (default: burst 100, spread 60)",
    )
    parser.add_argument(
        "--mode",
        choices=("burst", "spread", "both"),
        default="both",
        help="burst: back to back; spread: --rate per second (default both)",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=None,
        help="publications per second in spread mode (default 20, capped "
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
    modes = ["burst", "spread"] if args.mode == "both" else [args.mode]
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
    )


@contextlib.contextmanager
def _signals_as_interrupt() -> Iterator[None]:
    """SIGTERM and SIGINT raise KeyboardInterrupt, so that cleanup runs. (SIGINT too:
    a shell starts background jobs with SIGINT ignored, and Python keeps it so.)"""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, action in previous.items():
            signal.signal(sig, action)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    if ALTERNATIVE in opts.servers:
        require_bench_deps("fanout")  # one line naming what to install, not a traceback
    limit = raise_nofile()
    needed = max(opts.subscribers) + 256
    if limit < needed:
        print(f"fanout: open-file limit {limit} < {needed}; raise the hard limit", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="fanout-") as tmp, _signals_as_interrupt():
        bench = Bench(opts, Path(tmp))
        info = machine_info(opts)
        try:
            rows = bench.run()
        except KeyboardInterrupt:
            print("\nfanout: interrupted; every process stopped", file=sys.stderr)
            return 130
        except (BenchError, LoadTestError) as exc:
            print(f"\nfanout: {exc}", file=sys.stderr)
            return 1
    if opts.json:
        out = {"machine": info, "rows": [asdict(r) for r in rows]}
        print(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())
    else:
        modified = " + uncommitted changes" if info["server_code_modified"] else ""
        print(
            f"server code {info['revision']}{modified}"
            f", {info['cpus']} CPUs (server on {info['server_cpus']}, load on "
            f"{info['load_cpus']}), Python {info['python']}, {info['date']}"
        )
        print()
        print(table(rows))
        ratios = ratio_table(rows)
        if ratios:
            print()
            print(ratios)
        print()
        print(verdicts(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
