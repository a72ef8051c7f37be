"""Fan-out benchmark: our server against the floor, on the same workload, in one run.

For each subscriber count and each server (one after the other, each a fresh process):
open N idle authenticated subscribed WebSocket connections from several generator
processes, measure the server's RSS before and after, then publish M messages through
the server's HTTP publish API (``burst``: back to back; ``spread``: ``--rate`` per
second, one request each; ``bursts``: ``--burst-size`` publications in one ``/api/batch``
request, the bursts spaced as in ``spread``) and measure the server's CPU time over the
delivery phase, the deliveries, the publish-to-receive latency and the losses. Prints
one table, ours against the floor and the peers, and the verdicts against issue 5's and
issue 15's targets. See bench/README.md.

    .venv/bin/python bench/fanout.py [--subscribers 1000,10000] [--messages N]
        [--mode burst,spread,bursts|both|all] [--burst-size 10]
        [--servers ours,floor,...] [--json]

Servers (``--servers``): see ``fanout_servers.py`` (ours, the floor, and the peers:
Starlette + broadcaster, Node.js socket.io, python-socketio).

Only 127.0.0.1 is used; every step has a time bound; every child process is stopped
at the end, on failure and on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Final

import orjson
from common import (
    API_KEY,
    CHANNEL,
    HOST,
    JWT_SECRET,
    machine_busy_s,
    peer_missing,
    raise_nofile,
)
from fanout_options import Options, machine_info, parse_args
from fanout_report import Row, mode_label, ratio_table, table, verdicts
from fanout_servers import (
    Server,
    StartError,
    delivery_allowance_s,
    start_server,
    wire,
)

from realtime_server.loadtest.errors import LoadTestError
from realtime_server.loadtest.fleet import Generators, PublisherProcess
from realtime_server.loadtest.messages import GeneratorConfig, PublisherConfig, Stream, UserSpec
from realtime_server.loadtest.pipes import Pipes
from realtime_server.loadtest.procfs import read_proc
from realtime_server.loadtest.progress import ProgressLine
from realtime_server.loadtest.stats import Histogram

__all__ = ["main"]

STATS_EVERY_S: Final = 0.02
"""How often a phase asks the generators for their counters (the end of a phase is seen
within this)."""


class BenchError(RuntimeError):
    """A step of the benchmark failed or ran out of time."""


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
            path, protocol = wire(server.name)
            configs = [
                GeneratorConfig(
                    index=i, host=HOST, port=server.proc.port, path=path, secret=JWT_SECRET,
                    reconnect=False, user_channel=False, prefix="bench-", protocol=protocol,
                )
                for i in range(opts.procs)
            ]  # fmt: skip
            gens.setup(configs, [UserSpec(f"bench-{i}", (CHANNEL,)) for i in range(n)])
            # One request at a time over one keep-alive connection: the next publication
            # (or batch) goes when the previous one is answered.
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
        _, load_cpus = self.opts.cpu_sets()
        if load_cpus:
            # This process polls the generators during every phase: on the load's CPUs,
            # never on the server's.
            os.sched_setaffinity(0, load_cpus)
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
        rate = self.opts.spread_rate(n) if mode in ("spread", "bursts") else 0.0
        batch = self.opts.burst_size if mode == "bursts" else 1
        row = Row(server.name, n, mode, messages, rate=rate, burst_size=batch if batch > 1 else 0)
        runs: list[Run] = []
        latency = Histogram()
        for repeat in range(self.opts.repeat):
            what = f"{label} {mode_label(row)} {repeat + 1}/{self.opts.repeat}: {messages} msgs"
            run = self._run_once(what, server, load, n, messages, rate, batch)
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
            system = row.cpu_s / row.deliveries * 1e6 - row.user_us_per_delivery
            row.sys_us_per_delivery = max(0.0, system)
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
        if rate > 0 and row.publisher_behind_s > 2.0 * batch / rate:
            row.notes.append(
                f"publisher fell {row.publisher_behind_s:.2f}s behind schedule: "
                "the server could not keep up with the rate"
            )
        return row

    def _run_once(
        self,
        what: str,
        server: Server,
        load: Load,
        n: int,
        messages: int,
        rate: float,
        batch: int = 1,
    ) -> Run:
        """One delivery phase: publish ``messages`` (``batch`` per request), wait until
        every connection open at the start has them all (or a deadline passed)."""
        gens, pub = load.gens, load.pub
        gens.refresh()
        run = Run()
        received0 = gens.total(lambda c: c.received)
        closes0 = gens.merged(lambda c: c.closes)
        latency0 = gens.latency()
        run.expected = messages * gens.total(lambda c: c.open_now)
        publish_time = messages / rate if rate > 0 else 0.0
        allowance = delivery_allowance_s(server.name)
        deadline = time.monotonic() + 30.0 + publish_time + messages * n * allowance

        pid = server.proc.pid
        # The server, its load and this process: what is busy beyond them is other work.
        procs = [pid, os.getpid(), *(c.proc.pid for c in load.pipes.children if c.proc.pid)]
        busy0, ours0 = machine_busy_s(), sum(read_proc(p).cpu_s for p in procs)
        load0 = sum(gens.cpu_s())
        cpu0 = read_proc(pid)
        pub.run(None, (Stream((CHANNEL,), rate, "broadcast", count=messages, batch=batch),))
        done = None
        started = time.monotonic()
        next_ask = 0.0
        while True:
            load.pipes.pump(0.02)
            now = time.monotonic()
            if now >= next_ask:
                # At most every 20 ms: asking again as soon as an answer arrived kept this
                # process and the generators busy with thousands of round trips a second
                # (half a CPU here, and as much in the generators answering).
                gens.ask_stats()
                next_ask = now + STATS_EVERY_S
            received = gens.total(lambda c: c.received) - received0
            done = done or pub.done()
            if done is not None and received >= run.expected:
                break
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
    for name in opts.servers:
        line = peer_missing(name)
        if line is not None:  # one line naming what to install, not a traceback
            print(f"fanout: {line}", file=sys.stderr)
            return 2
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
        except (BenchError, StartError, LoadTestError) as exc:
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
