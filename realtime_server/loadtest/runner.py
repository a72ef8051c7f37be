"""The load test itself: start what is needed, open the connections, publish, count.

Steps of :meth:`LoadTest.run`:

1. targets: a server started here (``spawn``: ``realtime-server serve`` on free loopback
   ports, with a private ``redis-server`` when the Redis engine is needed), or the one at
   ``url``; anything that is not a loopback address is refused unless ``allow_remote``;
2. generator processes get their share of users and mint their tokens;
3. a few warm-up connections per generator, then the server's memory is read, then the
   rest of the connections; memory again after a second: the difference per connection,
   and the server CPU time per connect;
4. publications for ``duration`` seconds (plus churn, or a reconnect storm), with a
   progress line; then a drain of at most ``drain`` seconds for what is still in flight;
5. the publisher's per-channel counts go to the generators, which report what was lost;
6. everything started here is stopped, also on errors and on Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import multiprocessing
import multiprocessing.connection
import os
import secrets
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import orjson

from .children import stop_children
from .generator import generator_main
from .procfs import machine_busy_s, raise_nofile, read_proc, read_tree
from .progress import ProgressLine
from .publisher import publisher_main
from .scenarios import DEFAULTS, Plan, build_plan
from .spawn import RedisProcess, ServerProcess, SpawnError
from .stats import Histogram

__all__ = ["MAX_DURATION", "MAX_USERS", "LoadTest", "LoadTestError", "Options", "check_target"]

MAX_USERS: Final = 200_000
MAX_DURATION: Final = 3600.0
MAX_RATE: Final = 100_000.0
OVERHEAD_CAP: Final = 1800.0
"""Seconds a run may spend beyond ``duration`` (connecting, draining, reconnecting)."""


class LoadTestError(RuntimeError):
    """A step of the load test failed, ran out of time, or was refused."""


@dataclass
class Options:
    """Everything a run needs; the command line fills it (see :mod:`.cli`)."""

    scenario: str = "signing-day"
    url: str | None = None
    api_url: str | None = None
    secret: str | None = None
    api_key: str | None = None
    redis_url: str | None = None
    redis_prefix: str = "rt:"
    audience: str | None = None
    issuer: str | None = None
    algorithm: str = "HS256"
    spawn: bool = False
    workers: int = 1
    engine: str = "auto"
    server_env: dict[str, str] = field(default_factory=dict)
    server_pid: int | None = None
    publish_via: str = "api"
    users: int | None = None
    documents: int | None = None
    participants: int | None = None
    rate: float | None = None
    doc_rate: float | None = None
    user_rate: float | None = None
    churn_rate: float | None = None
    churn_lifetime: float | None = None
    drop: str = "api"
    storm_at: float | None = None
    reconnect_delay: float = 2.0
    duration: float | None = None
    drain: float = 10.0
    procs: int = 2
    concurrency: int = 32
    connect_rate: float = 0.0
    inflight: int = 32
    allow_remote: bool = False
    pin: bool = False
    progress: bool = True
    discard: int = 0
    """Test hook: the first generator throws away this many deliveries, as if lost."""

    def scenario_duration(self) -> float:
        if self.duration is not None:
            return self.duration
        return float(DEFAULTS[self.scenario]["duration"])


def check_target(url: str, allow_remote: bool, what: str) -> tuple[str, int]:
    """The host and port of ``url``; refuses anything but loopback unless allowed.

    Raises:
        LoadTestError: for a malformed URL or a non-loopback address.
    """
    parts = urlsplit(url)
    host = parts.hostname
    if not host:
        raise LoadTestError(f"{what}: no host in {url!r}")
    try:
        port = parts.port
    except ValueError:
        raise LoadTestError(f"{what}: bad port in {url!r}") from None
    if port is None:
        port = {"ws": 80, "http": 80, "wss": 443, "https": 443, "redis": 6379}.get(parts.scheme, 0)
    if parts.scheme in ("wss", "https", "rediss"):
        raise LoadTestError(f"{what}: TLS ({parts.scheme}) is not supported by the load test")
    if not allow_remote and not _is_loopback(host):
        raise LoadTestError(
            f"{what}: {host} is not a loopback address; the load test only sends traffic "
            "to loopback unless --allow-remote is given"
        )
    return host, port


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    if host != "localhost":
        return False
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


@dataclass
class Child:
    name: str
    proc: BaseProcess
    conn: Connection
    inbox: dict[str, list[tuple[Any, ...]]] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    waiting_stats: bool = False


class LoadTest:
    """One run. ``run()`` returns the result as a JSON-ready dict."""

    def __init__(self, opts: Options, log: Callable[[str], None] | None = None) -> None:
        self.o = opts
        self.log = log or (lambda _text: None)
        self.gens: list[Child] = []
        self.pub: Child | None = None
        self.server: ServerProcess | None = None
        self.redis: RedisProcess | None = None
        self.server_pid: int | None = opts.server_pid
        self.cpu_offset = 0.0
        self.notes: list[str] = []
        self.ctx = multiprocessing.get_context("spawn")
        self.started = time.monotonic()
        self.deadline = self.started + opts.scenario_duration() + OVERHEAD_CAP
        self._progress = ProgressLine(enabled=opts.progress)
        self._last_hist: Histogram | None = None
        self._cur_p99 = 0.0
        self._published = 0
        self._pub_errors = 0
        self._plan: Plan | None = None

    # --- validation and targets -------------------------------------------------------------

    def validate(self) -> None:
        o = self.o
        if o.scenario not in DEFAULTS:
            raise LoadTestError(f"unknown scenario {o.scenario!r}")
        duration = o.scenario_duration()
        if not 1.0 <= duration <= MAX_DURATION:
            raise LoadTestError(f"--duration must be between 1 and {MAX_DURATION:g} seconds")
        users = o.users if o.users is not None else int(DEFAULTS[o.scenario]["users"])
        if not 1 <= users <= MAX_USERS:
            raise LoadTestError(f"--users must be between 1 and {MAX_USERS:,}")
        for name in ("rate", "doc_rate", "user_rate", "churn_rate"):
            value = getattr(o, name)
            if value is not None and not 0 <= value <= MAX_RATE:
                flag = "--" + name.replace("_", "-")
                raise LoadTestError(f"{flag} must be between 0 and {MAX_RATE:g}")
        if o.documents is not None and not 0 <= o.documents <= MAX_USERS:
            raise LoadTestError(f"--documents must be between 0 and {MAX_USERS:,}")
        if o.participants is not None and not 1 <= o.participants <= 100:
            raise LoadTestError("--participants must be between 1 and 100")
        if not 1 <= o.procs <= 64 or not 1 <= o.workers <= 64:
            raise LoadTestError("--procs and --workers must be between 1 and 64")
        if o.publish_via not in ("api", "redis", "python"):
            raise LoadTestError("--publish-via must be api, redis or python")
        if o.drop not in ("api", "restart", "network"):
            raise LoadTestError("--drop must be api, restart or network")
        if o.drop == "restart" and o.scenario == "reconnect-storm" and not o.spawn:
            raise LoadTestError("--drop restart needs --spawn (the load test restarts its server)")
        if not o.spawn and not o.url:
            raise LoadTestError("give --url of a running server, or --spawn")
        if not o.spawn and o.workers != 1:
            raise LoadTestError("--workers goes with --spawn")
        if not o.spawn:
            check_target(o.url or "", o.allow_remote, "--url")
            if o.api_url:
                check_target(o.api_url, o.allow_remote, "--api-url")
            if o.redis_url:
                check_target(o.redis_url, o.allow_remote, "Redis URL")
        if not o.spawn and not o.secret:
            raise LoadTestError("no JWT secret: set REALTIME_JWT_SECRET (or --secret-env NAME)")
        if o.spawn and o.algorithm != "HS256":
            raise LoadTestError("--jwt-algorithm other than HS256 needs a running server (--url)")
        limit = raise_nofile()
        needed = users // max(1, o.procs) + 512
        if limit < needed:
            raise LoadTestError(f"open-file limit {limit} < {needed}; raise the hard limit")

    def _engine(self) -> str:
        o = self.o
        if o.engine != "auto":
            return o.engine
        restart = o.scenario == "reconnect-storm" and o.drop == "restart"
        if o.workers > 1 or o.publish_via in ("redis", "python") or restart:
            return "redis"
        return "memory"

    def _start_targets(self, workdir: Path, plan: Plan) -> None:
        o = self.o
        if not o.spawn:
            check_target(o.url or "", o.allow_remote, "--url")
            if o.api_url:
                check_target(o.api_url, o.allow_remote, "--api-url")
            if o.redis_url:
                check_target(o.redis_url, o.allow_remote, "Redis URL")
            return
        engine = self._engine()
        if engine == "memory" and o.workers > 1:
            raise LoadTestError("--workers N > 1 needs the Redis engine")
        server_cpus, load_cpus = self._cpus()
        o.secret = secrets.token_hex(32)
        o.api_key = secrets.token_hex(16)
        env = {
            "REALTIME_JWT_SECRET": o.secret,
            "REALTIME_API_KEY": o.api_key,
            "REALTIME_MAX_CONNECTIONS_PER_USER": "0",
        }
        if plan.spawn_namespaces:
            env["REALTIME_NAMESPACES"] = orjson.dumps(plan.spawn_namespaces).decode()
        if engine == "redis":
            self.redis = RedisProcess(workdir)
            self.redis.start()
            if load_cpus:
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(self.redis.proc.pid, load_cpus)  # type: ignore[union-attr]
            o.redis_url = self.redis.url
            o.redis_prefix = "rt:"
            env["REALTIME_REDIS_URL"] = self.redis.url
        env.update(o.server_env)
        self.server = ServerProcess(workdir, env, o.workers, server_cpus)
        self.log(f"starting realtime-server ({engine} engine, {o.workers} worker(s))")
        self.server.start()
        o.url = self.server.ws_url
        o.api_url = self.server.api_url
        self.server_pid = self.server.pid
        self.log(f"server pid {self.server_pid}: {o.url}, API {o.api_url}")

    def _cpus(self) -> tuple[list[int] | None, list[int] | None]:
        """With ``pin``: (server CPUs, load CPUs): one CPU per server worker first, the
        rest for the generators, the publisher and Redis; None when there are too few."""
        cpus = sorted(os.sched_getaffinity(0))
        workers = self.o.workers if self.o.spawn else 1
        if not self.o.pin or len(cpus) <= workers:
            return None, None
        return cpus[:workers], cpus[workers:]

    # --- children ---------------------------------------------------------------------------

    def _start_children(self, plan: Plan) -> None:
        o = self.o
        assert o.url is not None
        host, port = check_target(o.url, o.allow_remote, "--url")
        path = urlsplit(o.url).path or "/connection/websocket"
        _, load_cpus = self._cpus()
        for i in range(o.procs):
            parent, child = self.ctx.Pipe()
            proc = self.ctx.Process(
                target=generator_main, args=(child, load_cpus), daemon=True, name=f"lt-gen-{i}"
            )
            proc.start()
            child.close()
            self.gens.append(Child(f"generator {i}", proc, parent))
        for i, gen in enumerate(self.gens):
            cfg = {
                "index": i,
                "host": host,
                "port": port,
                "path": path,
                "secret": o.secret,
                "algorithm": o.algorithm,
                "audience": o.audience,
                "issuer": o.issuer,
                "token_ttl": int(o.scenario_duration() + OVERHEAD_CAP + 600),
                "open_timeout": 30.0,
                "reconnect": True,
                "reconnect_delay": o.reconnect_delay,
                "reconnect_window": 60.0 + o.reconnect_delay,
                "discard": o.discard if i == 0 else 0,
                "prefix": plan.prefix,
            }
            gen.conn.send(("setup", cfg, plan.users[i :: o.procs]))
        self._expect(self.gens, "ready", 60.0 + len(plan.users) * 0.001)
        if o.publish_via == "api":
            if not o.api_url:
                raise LoadTestError("--publish-via api needs --api-url")
            check_target(o.api_url, o.allow_remote, "--api-url")
            if not o.api_key:
                raise LoadTestError("no API key: set REALTIME_API_KEY (or --api-key-env NAME)")
        elif not o.redis_url:
            raise LoadTestError(f"--publish-via {o.publish_via} needs a Redis URL")
        settings_env = {
            "REALTIME_REDIS_URL": o.redis_url or "",
            "REALTIME_REDIS_PREFIX": o.redis_prefix,
            "REALTIME_JWT_SECRET": o.secret or "",
        }
        if plan.spawn_namespaces and o.spawn:
            settings_env["REALTIME_NAMESPACES"] = orjson.dumps(plan.spawn_namespaces).decode()
        pcfg = {
            "via": o.publish_via,
            "api_url": o.api_url or "",
            "api_key": o.api_key,
            "redis_url": o.redis_url or "",
            "redis_prefix": o.redis_prefix,
            "settings_env": settings_env,
            "streams": plan.streams,
            "inflight": o.inflight,
            "timeout": 10.0,
        }
        parent, child = self.ctx.Pipe()
        proc = self.ctx.Process(
            target=publisher_main, args=(child, pcfg, load_cpus), daemon=True, name="lt-pub"
        )
        proc.start()
        child.close()
        self.pub = Child("publisher", proc, parent)

    def _stop_children(self) -> None:
        stop_children([*self.gens, *([self.pub] if self.pub else [])])
        self.gens.clear()
        self.pub = None

    def _pump(self, timeout: float) -> None:
        """Read whatever the children sent within ``timeout`` seconds into their inboxes."""
        children = [*self.gens, *([self.pub] if self.pub else [])]
        by_conn = {id(c.conn): c for c in children}
        ready = multiprocessing.connection.wait([c.conn for c in children], timeout)
        for conn in ready:
            assert isinstance(conn, Connection)
            child = by_conn[id(conn)]
            try:
                message = conn.recv()
            except (EOFError, OSError):
                raise LoadTestError(f"the {child.name} process died") from None
            kind = message[0]
            if kind == "stats":
                child.stats = message[1]
                child.waiting_stats = False
            elif kind == "progress":
                self._published, self._pub_errors = message[1], message[2]
            else:
                child.inbox.setdefault(kind, []).append(message)

    def _expect(
        self,
        children: list[Child],
        kind: str,
        timeout: float,
        tick: Callable[[], None] | None = None,
    ) -> list[tuple[Any, ...]]:
        """One ``kind`` message from each child (in order), ticking while waiting."""
        deadline = min(time.monotonic() + timeout, self.deadline)
        while True:
            if all(c.inbox.get(kind) for c in children):
                return [c.inbox[kind].pop(0) for c in children]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                got = sum(1 for c in children if c.inbox.get(kind))
                raise LoadTestError(f"timed out waiting for {kind!r} ({got}/{len(children)})")
            self._pump(min(remaining, 0.25))
            if tick is not None:
                tick()

    # --- measuring ------------------------------------------------------------------------

    def _server_sample(self) -> tuple[float, int] | None:
        """(server CPU seconds so far, RSS KiB) of the server's process tree."""
        if self.server_pid is None:
            return None
        try:
            read_proc(self.server_pid)
        except OSError:
            return None
        s = read_tree(self.server_pid)
        return s.cpu_s + self.cpu_offset, s.rss_kib

    def _load_cpu(self) -> float:
        total = 0.0
        for c in [*self.gens, *([self.pub] if self.pub else [])]:
            if c.proc.pid:
                with contextlib.suppress(OSError):
                    total += read_proc(c.proc.pid).cpu_s
        if self.redis is not None and self.redis.proc is not None:
            with contextlib.suppress(OSError):
                total += read_proc(self.redis.proc.pid).cpu_s
        return total

    def _ask_stats(self) -> None:
        for g in self.gens:
            if not g.waiting_stats:
                g.waiting_stats = True
                with contextlib.suppress(OSError, ValueError):
                    g.conn.send(("stats",))

    def _sum(self, key: str) -> int:
        return sum(int(g.stats.get(key, 0)) for g in self.gens)

    def _sum_dict(self, key: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for g in self.gens:
            for k, v in (g.stats.get(key) or {}).items():
                out[k] = out.get(k, 0) + v
        return out

    def _latency(self) -> Histogram:
        return Histogram.merged(
            Histogram.from_parts(*g.stats["latency"]) for g in self.gens if "latency" in g.stats
        )

    def _tick(self, label: str) -> Callable[[], None]:
        last = [0.0]

        def tick() -> None:
            now = time.monotonic()
            if now - last[0] < 0.5:
                return
            last[0] = now
            self._ask_stats()
            hist = self._latency()
            if self._last_hist is not None and hist.total > self._last_hist.total:
                self._cur_p99 = hist.minus(self._last_hist).percentile(0.99) / 1000
            self._last_hist = hist
            failed = sum(sum((g.stats.get("failed") or {}).values()) for g in self.gens)
            self._progress(
                f"[{self.o.scenario} {now - self.started:5.1f}s {label}] "
                f"open {self._sum('open_now'):,} failed {failed:,} | "
                f"pubs {self._published:,} | deliveries {self._sum('received'):,} | "
                f"p99 {self._cur_p99:.1f} ms"
            )

        return tick

    def _open(self, counts: list[int], first: list[int], label: str) -> list[dict[str, Any]]:
        o = self.o
        rate = o.connect_rate / len(self.gens) if o.connect_rate > 0 else 0.0
        for g, start, n in zip(self.gens, first, counts, strict=True):
            g.conn.send(("open", start, n, o.concurrency, rate))
        total = sum(counts)
        timeout = 60.0 + total * 0.02 + (total / o.connect_rate if o.connect_rate else 0)
        got = self._expect(self.gens, "opened", timeout, self._tick(label))
        for g, m in zip(self.gens, got, strict=True):
            g.stats = m[1]
        return [m[1] for m in got]

    def _drop(self) -> int:
        """Drop every client at once; returns how many connections were open."""
        o = self.o
        open_before = self._sum("open_now")
        if o.drop == "network":
            for g in self.gens:
                g.conn.send(("drop",))
            return sum(int(m[1]) for m in self._expect(self.gens, "dropped", 30.0))
        if o.drop == "restart":
            assert self.server is not None
            sample = self._server_sample()
            self.server.stop()
            if sample is not None:
                self.cpu_offset = sample[0]
            self.server.start()
            self.server_pid = self.server.pid
            self.notes.append(
                "server restarted for the storm: its CPU is the old process's (until its "
                "shutdown) plus the new one's"
            )
            return open_before
        assert self._plan is not None
        users = [name for name, _ in self._plan.users]
        errors = asyncio.run(_disconnect_all(o.api_url or "", o.api_key or "", users))
        if errors:
            self.notes.append(f"storm: {errors} API disconnect calls failed")
        return open_before

    # --- the run ------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        self.validate()
        o = self.o
        prefix = "lt" + secrets.token_hex(3) + "-"
        plan = build_plan(
            o.scenario,
            prefix,
            {
                "users": o.users,
                "documents": o.documents,
                "participants": o.participants,
                "rate": o.rate,
                "doc_rate": o.doc_rate,
                "user_rate": o.user_rate,
                "churn_rate": o.churn_rate,
                "churn_lifetime": o.churn_lifetime,
                "storm_at": o.storm_at,
                "duration": o.scenario_duration(),
            },
        )
        self._plan = plan
        with tempfile.TemporaryDirectory(prefix="loadtest-") as tmp:
            try:
                self._start_targets(Path(tmp), plan)
                self._start_children(plan)
                return self._measure(plan)
            except SpawnError as exc:
                raise LoadTestError(str(exc)) from None
            finally:
                self._progress.done()
                self._stop_children()
                if self.server is not None:
                    self.notes.extend(f"server log: {p}" for p in self.server.problems())
                    self.server.stop()
                if self.redis is not None:
                    self.redis.stop()

    def _measure(self, plan: Plan) -> dict[str, Any]:
        o = self.o
        procs = len(self.gens)
        shares = [len(plan.users[i::procs]) for i in range(procs)]
        warm = [min(s, max(1, s // 20), 50) for s in shares]
        self._open(warm, [0] * procs, "warm-up")
        time.sleep(0.5)
        before = self._server_sample()
        rest = [s - w for s, w in zip(shares, warm, strict=True)]
        t_open = time.time_ns()
        warm_opened = self._sum("opened")
        self._open(rest, warm, "connecting")
        opened = self._sum("opened")
        last_open_ns = max(int(g.stats.get("last_open_ns", 0)) for g in self.gens)
        time.sleep(1.0)
        after = self._server_sample()
        connect_phase = {
            "requested": len(plan.users),
            "opened": opened,
            "opened_measured": opened - warm_opened,
            "window_s": max(0.0, (last_open_ns - t_open) / 1e9),
            "before": before,
            "after": after,
        }

        # --- publications ---
        duration = o.scenario_duration()
        assert self.pub is not None
        busy0, load0 = machine_busy_s(), self._load_cpu()
        cpu0 = self._server_sample()
        t_pub0 = time.time_ns()
        if plan.churn_rate > 0:
            per_gen = plan.churn_rate / procs
            for g in self.gens:
                g.conn.send(("churn", per_gen, plan.churn_lifetime, plan.documents))
        self.pub.conn.send(("run", duration))
        tick = self._tick("publishing")
        storm: dict[str, Any] | None = None
        started = time.monotonic()
        while not self.pub.inbox.get("done"):
            if time.monotonic() > self.deadline or time.monotonic() > started + duration + 60:
                raise LoadTestError("the publisher did not finish in time")
            self._pump(0.25)
            tick()
            elapsed = time.monotonic() - started
            if plan.storm_at is not None and storm is None and elapsed >= plan.storm_at:
                storm = self._storm_begin()
            if storm is not None:
                self._storm_track(storm)
        done = self.pub.inbox["done"].pop(0)[1]
        if plan.churn_rate > 0:
            for g in self.gens:
                g.conn.send(("stop-churn",))
            self._expect(self.gens, "churn-stopped", 10.0, tick)
        # --- drain: wait until nothing more arrives (or the storm's clients are back) ---
        drain_end = time.monotonic() + o.drain
        if storm is not None:
            drain_end = max(drain_end, storm["t0"] + 60.0 + o.reconnect_delay)
        last_total, stable_since = -1, time.monotonic()
        while time.monotonic() < min(drain_end, self.deadline):
            self._ask_stats()
            self._pump(0.25)
            tick()
            if storm is not None:
                self._storm_track(storm)
            total = self._sum("received") + self._sum("recovered_pubs")
            if total != last_total:
                last_total, stable_since = total, time.monotonic()
            elif time.monotonic() - stable_since >= 1.0 and (storm is None or storm["complete"]):
                break
        cpu1 = self._server_sample()
        busy1, load1 = machine_busy_s(), self._load_cpu()
        for g in self.gens:
            g.conn.send(("final", done["counts"]))
        finals = [m[1] for m in self._expect(self.gens, "final", 60.0)]
        return self._result(plan, connect_phase, done, finals, storm, {
            "t_pub0": t_pub0,
            "cpu0": cpu0,
            "cpu1": cpu1,
            "busy": busy1 - busy0,
            "load": load1 - load0,
        })  # fmt: skip

    def _storm_begin(self) -> dict[str, Any]:
        self.log("storm: dropping every client")
        self._ask_stats()
        self._pump(0.2)
        reconnects0 = self._sum("reconnects")
        t0_ns = time.time_ns()
        t0 = time.monotonic()
        dropped = self._drop()
        return {
            "t0": t0,
            "t0_ns": t0_ns,
            "drop": self.o.drop,
            "dropped": dropped,
            "reconnects0": reconnects0,
            "drop_s": time.monotonic() - t0,
            "complete": dropped == 0,
            "all_back_s": None,
        }

    def _storm_track(self, storm: dict[str, Any]) -> None:
        back = self._sum("reconnects") - storm["reconnects0"]
        storm["reconnected"] = back
        if not storm["complete"] and back >= storm["dropped"]:
            storm["complete"] = True
            last = max(int(g.stats.get("last_reconnect_ns", 0)) for g in self.gens)
            storm["all_back_s"] = max(0.0, (last - storm["t0_ns"]) / 1e9)

    # --- results ----------------------------------------------------------------------------

    def _result(
        self,
        plan: Plan,
        cp: dict[str, Any],
        done: dict[str, Any],
        finals: list[dict[str, Any]],
        storm: dict[str, Any] | None,
        m: dict[str, Any],
    ) -> dict[str, Any]:
        o = self.o

        def total(key: str) -> int:
            return sum(int(f.get(key, 0)) for f in finals)

        def merged(key: str) -> dict[str, int]:
            out: dict[str, int] = {}
            for f in finals:
                for k, v in (f.get(key) or {}).items():
                    out[k] = out.get(k, 0) + v
            return out

        def hist(key: str) -> Histogram:
            return Histogram.merged(Histogram.from_parts(*f[key]) for f in finals)

        latency, connect_lat = hist("latency"), hist("connect_latency")
        received = total("received")
        last_recv = max((int(f.get("last_recv_ns", 0)) for f in finals), default=0)
        window = (last_recv - m["t_pub0"]) / 1e9 if last_recv > m["t_pub0"] else 0.0
        lost = total("gaps") + total("tail")
        server: dict[str, Any] = {"pid": self.server_pid}
        before, after = cp["before"], cp["after"]
        if m["cpu0"] is not None and m["cpu1"] is not None:
            cpu = m["cpu1"][0] - m["cpu0"][0]
            server["cpu_s"] = round(cpu, 3)
            deliveries = received + total("recovered_pubs")
            server["cpu_us_per_delivery"] = round(cpu / deliveries * 1e6, 2) if deliveries else None
            pubs = done["published"]
            server["cpu_us_per_publication"] = round(cpu / pubs * 1e6, 1) if pubs else None
            span = max(1e-9, (time.time_ns() - m["t_pub0"]) / 1e9)
            server["cpu_busy_percent"] = round(100 * cpu / span, 1)
        if before is not None and after is not None:
            measured = max(1, cp["opened_measured"])
            server["rss_kib_before"] = before[1]
            server["rss_kib_after"] = after[1]
            server["rss_kib_per_conn"] = round((after[1] - before[1]) / measured, 2)
            server["cpu_us_per_connect"] = round((after[0] - before[0]) / measured * 1e6, 1)
        pub_rtt = Histogram.from_parts(*done["rtt"])
        connections = {
            "requested": cp["requested"],
            "opened": cp["opened"],
            "failed": merged("failed"),
            "connect_rate_per_s": round(cp["opened_measured"] / cp["window_s"], 1)
            if cp["window_s"]
            else None,
            "connect_p50_ms": round(connect_lat.percentile(0.5) / 1000, 2),
            "connect_p99_ms": round(connect_lat.percentile(0.99) / 1000, 2),
            "closed": merged("closes"),
            "reconnects": total("reconnects"),
            "reconnect_failed": merged("reconnect_failed"),
            "missing_subscriptions": total("missing_subs"),
            "open_at_end": total("open_now"),
        }
        other = max(0.0, m["busy"] - m["load"] - (server.get("cpu_s") or 0.0))
        span_s = max(1e-9, (time.time_ns() - m["t_pub0"]) / 1e9)
        result: dict[str, Any] = {
            "scenario": plan.scenario,
            "plan": plan.describe(),
            "target": {
                "url": o.url,
                "api_url": o.api_url if o.publish_via == "api" else None,
                "publish_via": o.publish_via,
                "spawned": o.spawn,
                "engine": self._engine() if o.spawn else None,
                "workers": o.workers if o.spawn else None,
            },
            "duration_s": o.scenario_duration(),
            "connections": connections,
            "publications": {
                "published": done["published"],
                "errors": done["errors"],
                "rate_per_s": round(
                    done["published"] / max(1e-9, (done["ended_ns"] - done["started_ns"]) / 1e9), 1
                ),
                "publish_p50_ms": round(pub_rtt.percentile(0.5) / 1000, 2),
                "publish_p99_ms": round(pub_rtt.percentile(0.99) / 1000, 2),
                "behind_schedule_s": round(done["behind_s"], 3),
            },
            "deliveries": {
                "received": received,
                "expected": total("expected"),
                "lost": lost,
                "gaps": total("gaps"),
                "never_arrived": total("tail"),
                "duplicates": total("duplicates"),
                "recovered": total("recovered_pubs"),
                "per_s": round(received / window, 1) if window else 0.0,
                "window_s": round(window, 3),
                "other_pushes": {"join": total("joins"), "leave": total("leaves")},
                "discarded_by_test_hook": total("discarded"),
            },
            "latency_ms": {
                "p50": round(latency.percentile(0.50) / 1000, 2),
                "p90": round(latency.percentile(0.90) / 1000, 2),
                "p99": round(latency.percentile(0.99) / 1000, 2),
                "p999": round(latency.percentile(0.999) / 1000, 2),
                "max": round(latency.maximum() / 1000, 2),
            },
            "server": server,
            "machine": {
                "cpus": os.cpu_count(),
                "loadavg": [round(x, 2) for x in os.getloadavg()],
                "python": sys.version.split()[0],
                "other_load_cpus": round(other / span_s, 2),
                "loadtest_cpu_us_per_delivery": round(m["load"] / received * 1e6, 2)
                if received
                else None,
            },
            "notes": self.notes,
        }
        if plan.churn_rate > 0:
            sub_lat = hist("subscribe_latency")
            result["churn"] = {
                "rate_per_s": plan.churn_rate,
                "lifetime_s": plan.churn_lifetime,
                "opened": total("churn_opened"),
                "failed": merged("churn_failed"),
                "closed": total("churn_closed"),
                "received": total("churn_received"),
                "subscribe_p50_ms": round(sub_lat.percentile(0.5) / 1000, 2),
                "subscribe_p99_ms": round(sub_lat.percentile(0.99) / 1000, 2),
            }
        if storm is not None:
            back = storm["all_back_s"]
            result["storm"] = {
                "drop": storm["drop"],
                "dropped": storm["dropped"],
                "reconnected": storm.get("reconnected", 0),
                "all_back_s": None if back is None else round(back, 3),
                "drop_took_s": round(storm["drop_s"], 3),
                "subscriptions_recovered": total("recovered_ok"),
                "subscriptions_not_recovered": total("recovered_failed"),
                "missed_recovered": total("recovered_pubs"),
                "missed_lost": lost,
            }
        if other / span_s > 0.15:
            self.notes.append(
                f"other work on the machine took {other / span_s:.0%} of a CPU during the "
                "publications (noise)"
            )
        return result


async def _disconnect_all(api_url: str, api_key: str, users: list[str]) -> int:
    """The server API's ``disconnect`` (code 3001) for every user, 64 at a time."""
    import aiohttp

    url = api_url.rstrip("/") + "/api/disconnect"
    headers = {"X-API-Key": api_key, "Content-Type": "application/json"}
    errors = 0
    it = iter(users)
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=64), timeout=aiohttp.ClientTimeout(total=10)
    ) as session:

        async def worker() -> None:
            nonlocal errors
            for user in it:
                body = orjson.dumps(
                    {"user": user, "disconnect": {"code": 3001, "reason": "loadtest storm"}}
                )
                try:
                    async with session.post(url, data=body, headers=headers) as resp:
                        answer = await resp.read()
                        if resp.status != 200 or answer.startswith(b'{"error"'):
                            errors += 1
                except (aiohttp.ClientError, TimeoutError):
                    errors += 1

        await asyncio.gather(*(worker() for _ in range(64)))
    return errors
