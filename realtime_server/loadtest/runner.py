"""The load test itself: start what is needed, open the connections, publish, count.

Steps of :meth:`LoadTest.run`:

1. the options are checked once (:func:`.options.validate`), with the machine's limits
   (open files on both sides, ephemeral ports), which are reported up front;
2. targets: a server started here (``spawn``: ``realtime-server serve`` on free loopback
   ports, with a private ``redis-server`` when the Redis engine is needed), or the one at
   ``url``;
3. generator processes get their share of users and mint their tokens;
4. a few warm-up connections per generator, then the server's memory is read, then the
   rest of the connections; memory again after a second: the difference per connection,
   and the server CPU time per connect;
5. publications for ``duration`` seconds (plus churn, or a reconnect storm), with a
   progress line; then a drain of at most ``drain`` seconds for what is still in flight;
6. the publisher's per-channel counts go to the generators, which report what was lost;
   the kernel's listen-queue drops are read again; the result names its failures
   (:mod:`.verdict`);
7. everything started here is stopped, also on errors and on Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

from .errors import LoadTestError
from .fleet import Generators, PublisherProcess
from .messages import GeneratorConfig, PublisherConfig, PublishResult
from .netstat import ListenCounters, read_listen_counters
from .options import OVERHEAD_CAP, Checked, Endpoint, Options, is_loopback, validate
from .pipes import Pipes
from .procfs import machine_busy_s, read_proc, read_tree
from .progress import ProgressLine
from .result import ConnectPhase, PublishPhase, Run, ServerSample, build_result
from .scenarios import Plan, build_plan
from .spawn import HOST, RedisProcess, ServerProcess, SpawnError
from .speed import reference_us
from .stats import Histogram
from .storm import Storm, disconnect_all
from .verdict import failures

__all__ = ["LoadTest", "Targets"]


@dataclass(frozen=True)
class Targets:
    """The server under test and how to reach it (spawned, or given)."""

    ws: Endpoint
    url: str
    api_url: str | None
    api_key: str
    secret: str
    redis_url: str | None
    redis_prefix: str
    namespaces: dict[str, Any] | None = None
    """Namespace options given to a spawned server (the Python publisher needs them)."""


class LoadTest:
    """One run. ``run()`` returns the result as a JSON-ready dict, whose ``failures``
    lists what makes the run fail (empty when it measured what it set out to)."""

    def __init__(self, opts: Options, log: Callable[[str], None] | None = None) -> None:
        self.o = opts
        self.log = log or (lambda _text: None)
        self.pipes = Pipes()
        self.gens: Generators | None = None
        self.pub: PublisherProcess | None = None
        self.server: ServerProcess | None = None
        self.redis: RedisProcess | None = None
        self.server_pid: int | None = opts.server_pid
        self.cpu_offset = 0.0
        self.notes: list[str] = []
        self.started = time.monotonic()
        self._checked: Checked | None = None
        self._plan: Plan | None = None
        self._progress = ProgressLine(enabled=opts.progress)
        self._last_hist: Histogram | None = None
        self._cur_p99 = 0.0

    def validate(self) -> Checked:
        """Check the options and the machine's limits (once).

        Raises:
            UsageError: what cannot make a run.
        """
        if self._checked is None:
            self._checked = validate(self.o)
        return self._checked

    def run(self) -> dict[str, Any]:
        checked = self.validate()
        self.log(checked.limits.describe())
        o = self.o
        self.pipes.deadline = time.monotonic() + checked.duration + OVERHEAD_CAP
        prefix = "lt" + secrets.token_hex(3) + "-"  # runs never see each other's traffic
        self._plan = plan = build_plan(o.scenario, prefix, checked.workload)
        speed = [reference_us()]  # the machine's speed now, and after the load (speed.py)
        with tempfile.TemporaryDirectory(prefix="loadtest-") as tmp:
            try:
                targets = self._start_targets(Path(tmp), plan, checked)
                self._start_children(plan, targets, checked)
                run = self._measure(plan, targets, checked)
                speed.append(reference_us())
            except SpawnError as exc:
                raise LoadTestError(str(exc)) from None
            finally:
                self._progress.done()
                self.pipes.stop()
                if self.server is not None:
                    self.notes.extend(f"server log: {p}" for p in self.server.problems())
                    self.server.stop()
                if self.redis is not None:
                    self.redis.stop()
        result = build_result(run)
        result["machine"]["reference_us"] = speed
        result["failures"] = failures(result, o.max_error_share)
        return result

    # --- targets and children -------------------------------------------------------------

    def _start_targets(self, workdir: Path, plan: Plan, checked: Checked) -> Targets:
        o = self.o
        if not o.spawn:
            assert checked.target is not None and o.url is not None
            return Targets(
                checked.target, o.url, o.api_url, o.api_key or "", o.secret or "",
                o.redis_url, o.redis_prefix,
            )  # fmt: skip
        engine = o.engine_to_spawn()
        server_cpus, load_cpus = self._cpus()
        secret, api_key = secrets.token_hex(32), secrets.token_hex(16)
        env = {
            "REALTIME_JWT_SECRET": secret,
            "REALTIME_API_KEY": api_key,
            "REALTIME_MAX_CONNECTIONS_PER_USER": "0",
        }
        if plan.spawn_namespaces:
            env["REALTIME_NAMESPACES"] = orjson.dumps(plan.spawn_namespaces).decode()
        redis_url = None
        if engine == "redis":
            self.redis = RedisProcess(workdir)
            self.redis.start()
            if load_cpus and self.redis.proc is not None:
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(self.redis.proc.pid, load_cpus)
            env["REALTIME_REDIS_URL"] = redis_url = self.redis.url
        env.update(o.server_env)
        self.server = ServerProcess(workdir, env, o.workers, server_cpus)
        self.log(f"starting realtime-server ({engine} engine, {o.workers} worker(s))")
        self.server.start()
        self.server_pid = self.server.pid
        self.log(f"server pid {self.server_pid}: {self.server.ws_url}, API {self.server.api_url}")
        endpoint = Endpoint(HOST, self.server.port, urlsplit(self.server.ws_url).path)
        return Targets(
            endpoint, self.server.ws_url, self.server.api_url, api_key, secret, redis_url,
            "rt:", plan.spawn_namespaces,
        )  # fmt: skip

    def _cpus(self) -> tuple[list[int] | None, list[int] | None]:
        """With ``pin``: (server CPUs, load CPUs): one CPU per server worker first, the
        rest for the generators, the publisher and Redis; None when there are too few."""
        cpus = sorted(os.sched_getaffinity(0))
        workers = self.o.workers if self.o.spawn else 1
        if not self.o.pin or len(cpus) <= workers:
            return None, None
        return cpus[:workers], cpus[workers:]

    def _start_children(self, plan: Plan, t: Targets, checked: Checked) -> None:
        o = self.o
        _, load_cpus = self._cpus()
        self.gens = gens = Generators(self.pipes, o.procs, load_cpus)
        sources = checked.limits.sources
        host = "127.0.0.1" if sources and t.ws.host == "localhost" else t.ws.host
        configs = [
            GeneratorConfig(
                index=i, host=host, port=t.ws.port, path=t.ws.path, secret=t.secret,
                algorithm=o.algorithm, audience=o.audience, issuer=o.issuer,
                token_ttl=int(checked.duration + OVERHEAD_CAP + 600),
                reconnect_delay=o.reconnect_delay, reconnect_window=60.0 + o.reconnect_delay,
                sources=sources, prefix=plan.prefix,
                discard=o.discard if i == 0 else 0,
            )
            for i in range(o.procs)
        ]  # fmt: skip
        gens.setup(configs, plan.users)
        settings_env = {
            "REALTIME_REDIS_URL": t.redis_url or "",
            "REALTIME_REDIS_PREFIX": t.redis_prefix,
            "REALTIME_JWT_SECRET": t.secret,
        }
        if t.namespaces:
            settings_env["REALTIME_NAMESPACES"] = orjson.dumps(t.namespaces).decode()
        config = PublisherConfig(
            via=o.publish_via, streams=plan.streams, api_url=t.api_url or "",
            api_key=t.api_key, redis_url=t.redis_url or "", redis_prefix=t.redis_prefix,
            settings_env=settings_env, inflight=o.inflight,
        )  # fmt: skip
        self.pub = PublisherProcess(self.pipes, config, load_cpus)

    # --- measuring ------------------------------------------------------------------------

    def _server_sample(self) -> ServerSample | None:
        """CPU seconds so far and RSS of the server's process tree."""
        if self.server_pid is None:
            return None
        try:
            read_proc(self.server_pid)
        except OSError:
            return None
        s = read_tree(self.server_pid)
        return ServerSample(s.cpu_s + self.cpu_offset, s.rss_kib)

    def _load_cpu(self) -> float:
        assert self.gens is not None and self.pub is not None
        total = sum(self.gens.cpu_s()) + self.pub.cpu_s()
        if self.redis is not None and self.redis.proc is not None:
            with contextlib.suppress(OSError):
                total += read_proc(self.redis.proc.pid).cpu_s
        return total

    def _listen_counters(self, t: Targets) -> ListenCounters | None:
        """The machine's listen-queue drops, when the server runs on this machine."""
        return read_listen_counters() if is_loopback(t.ws.host) else None

    def _tick(self, label: str) -> Callable[[], None]:
        last = [0.0]
        gens = self.gens
        assert gens is not None

        def tick() -> None:
            now = time.monotonic()
            if now - last[0] < 0.5:
                return
            last[0] = now
            gens.ask_stats()
            hist = gens.latency()
            if self._last_hist is not None and hist.total > self._last_hist.total:
                self._cur_p99 = hist.minus(self._last_hist).percentile(0.99) / 1000
            self._last_hist = hist
            failed = gens.total(lambda c: sum(c.failed.values()))
            published = self.pub.published if self.pub is not None else 0
            self._progress(
                f"[{self.o.scenario} {now - self.started:5.1f}s {label}] "
                f"open {gens.total(lambda c: c.open_now):,} failed {failed:,} | "
                f"pubs {published:,} | deliveries {gens.total(lambda c: c.received):,} | "
                f"p99 {self._cur_p99:.1f} ms"
            )

        return tick

    def _connect(self, plan: Plan) -> ConnectPhase:
        """Warm-up connections, a memory sample, the rest, another sample."""
        o, gens = self.o, self.gens
        assert gens is not None
        shares = gens.shares
        warm = [min(s, max(1, s // 20), 50) for s in shares]
        gens.open(warm, [0] * len(shares), o.concurrency, o.connect_rate, self._tick("warm-up"))
        time.sleep(0.5)
        before = self._server_sample()
        rest = [s - w for s, w in zip(shares, warm, strict=True)]
        t_open = time.time_ns()
        warm_opened = gens.total(lambda c: c.opened)
        gens.open(rest, warm, o.concurrency, o.connect_rate, self._tick("connecting"))
        opened = gens.total(lambda c: c.opened)
        last_open_ns = max(c.last_open_ns for c in gens.stats)
        time.sleep(1.0)
        after = self._server_sample()
        window = max(0.0, (last_open_ns - t_open) / 1e9)
        return ConnectPhase(len(plan.users), opened, opened - warm_opened, window, before, after)

    def _measure(self, plan: Plan, t: Targets, checked: Checked) -> Run:
        o, gens, pub = self.o, self.gens, self.pub
        assert gens is not None and pub is not None
        listen0 = self._listen_counters(t)
        connect = self._connect(plan)
        busy0, load0, gen0 = machine_busy_s(), self._load_cpu(), gens.cpu_s()
        cpu0 = self._server_sample()
        t_pub0 = time.time_ns()
        if plan.churn_rate > 0:
            gens.start_churn(plan.churn_rate, plan.churn_lifetime, tuple(plan.documents))
        pub.run(checked.duration)
        tick = self._tick("publishing")
        storm: Storm | None = None
        started = time.monotonic()
        done: PublishResult | None = None
        while done is None:
            if time.monotonic() > started + checked.duration + 60:
                raise LoadTestError("the publisher did not finish in time")
            self.pipes.pump(0.25)
            tick()
            due = plan.storm_at is not None and time.monotonic() - started >= plan.storm_at
            if due and storm is None:
                storm = self._storm_begin()
            if storm is not None:
                self._storm_track(storm)
            done = pub.done()
        if plan.churn_rate > 0:
            gens.stop_churn(tick)
        self._drain(storm, tick)
        cpu1 = self._server_sample()
        ended = time.time_ns()
        busy1, load1, gen1 = machine_busy_s(), self._load_cpu(), gens.cpu_s()
        finals = gens.final(done.counts)
        listen1 = self._listen_counters(t)
        listen = (listen0, listen1) if listen0 is not None and listen1 is not None else None
        publish = PublishPhase(
            t_pub0, ended, cpu0, cpu1, busy1 - busy0, load1 - load0,
            [b - a for a, b in zip(gen0, gen1, strict=True)],
        )  # fmt: skip
        target = {
            "url": t.url,
            "api_url": t.api_url if o.publish_via == "api" else None,
            "publish_via": o.publish_via,
            "spawned": o.spawn,
            "engine": o.engine_to_spawn() if o.spawn else None,
            "workers": o.workers if o.spawn else None,
        }
        return Run(
            plan, target, checked.duration, self.server_pid, connect, publish, done, finals,
            storm, checked.limits, listen, self.notes,
        )  # fmt: skip

    def _drain(self, storm: Storm | None, tick: Callable[[], None]) -> None:
        """Wait until nothing more arrives (and the storm's clients are back)."""
        gens = self.gens
        assert gens is not None
        drain_end = time.monotonic() + self.o.drain
        if storm is not None:
            drain_end = max(drain_end, storm.t0 + 60.0 + self.o.reconnect_delay)
        last_total, stable_since = -1, time.monotonic()
        while time.monotonic() < min(drain_end, self.pipes.deadline):
            gens.ask_stats()
            self.pipes.pump(0.25)
            tick()
            if storm is not None:
                self._storm_track(storm)
            total = gens.total(lambda c: c.received + c.recovered_pubs)
            if total != last_total:
                last_total, stable_since = total, time.monotonic()
            elif time.monotonic() - stable_since >= 1.0 and (storm is None or storm.complete):
                return

    # --- the storm --------------------------------------------------------------------------

    def _storm_begin(self) -> Storm:
        gens = self.gens
        assert gens is not None
        self.log("storm: dropping every client")
        gens.refresh(2.0)
        return Storm.begin(self.o.drop, gens.total(lambda c: c.reconnects), self._drop)

    def _storm_track(self, storm: Storm) -> None:
        gens = self.gens
        assert gens is not None
        storm.track(
            gens.total(lambda c: c.reconnects), max(c.last_reconnect_ns for c in gens.stats)
        )

    def _drop(self) -> int:
        """Drop every client at once; returns how many connections were open."""
        o, gens = self.o, self.gens
        assert gens is not None
        open_before = gens.total(lambda c: c.open_now)
        if o.drop == "network":
            return gens.drop()
        if o.drop == "restart":
            assert self.server is not None
            sample = self._server_sample()
            self.server.stop()
            if sample is not None:
                self.cpu_offset = sample.cpu_s
            self.server.start()
            self.server_pid = self.server.pid
            self.notes.append(
                "server restarted for the storm: its CPU is the old process's (until its "
                "shutdown) plus the new one's"
            )
            return open_before
        assert self._plan is not None and self.pub is not None
        users = [spec.name for spec in self._plan.users]
        cfg = self.pub.config
        errors = asyncio.run(disconnect_all(cfg.api_url, cfg.api_key, users))
        if errors:
            self.notes.append(f"storm: {errors} API disconnect calls failed")
        return open_before
