"""The options of a load test and their validation: one place, checked once, before any
process starts (:func:`validate`)."""

from __future__ import annotations

import ipaddress
import math
import socket
from dataclasses import dataclass, field, fields
from typing import Final
from urllib.parse import urlsplit

from .errors import UsageError
from .limits import Limits, check_limits
from .scenarios import DEFAULTS, Workload

__all__ = [
    "MAX_DURATION",
    "MAX_USERS",
    "OVERHEAD_CAP",
    "Checked",
    "Endpoint",
    "Options",
    "check_target",
    "is_loopback",
    "validate",
]

MAX_USERS: Final = 200_000
MAX_DURATION: Final = 3600.0
MAX_RATE: Final = 100_000.0
OVERHEAD_CAP: Final = 1800.0
"""Seconds a run may spend beyond ``duration`` (connecting, draining, reconnecting)."""


@dataclass(frozen=True)
class Options(Workload):
    """Everything a run needs; the command line fills it (see :mod:`.cli`). The
    workload's sizes and rates are :class:`Workload`'s fields (None: the scenario's
    default, :meth:`workload`)."""

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
    drop: str = "api"
    reconnect_delay: float = 2.0
    drain: float = 10.0
    procs: int = 2
    concurrency: int = 32
    connect_rate: float = 0.0
    inflight: int = 32
    source_addresses: int = 0
    """Loopback source addresses to spread connections over; 0: as many as needed."""
    max_error_share: float = 0.01
    """Failed connections or publications beyond this share fail the run."""
    allow_remote: bool = False
    pin: bool = False
    progress: bool = True
    discard: int = 0
    """Test hook: the first generator throws away this many deliveries, as if lost."""

    def workload(self) -> Workload:
        """The sizes and rates given, the scenario's defaults elsewhere."""
        given = Workload(**{f.name: getattr(self, f.name) for f in fields(Workload)})
        return given.over(DEFAULTS.get(self.scenario, Workload()))

    def engine_to_spawn(self) -> str:
        """With ``spawn``: the engine (``auto``: Redis when the workload needs it)."""
        if self.engine != "auto":
            return self.engine
        restart = self.scenario == "reconnect-storm" and self.drop == "restart"
        if self.workers > 1 or self.publish_via in ("redis", "python") or restart:
            return "redis"
        return "memory"


@dataclass(frozen=True)
class Endpoint:
    """Where the generators connect."""

    host: str
    port: int
    path: str


@dataclass(frozen=True)
class Checked:
    """What :func:`validate` found out: the numbers of the run and its target."""

    workload: Workload
    users: int
    duration: float
    target: Endpoint | None
    """The running server's WebSocket endpoint; None with ``spawn`` (known once started)."""
    limits: Limits


def check_target(url: str, allow_remote: bool, what: str) -> tuple[str, int]:
    """The host and port of ``url``; refuses anything but loopback unless allowed.

    Raises:
        UsageError: for a malformed URL, TLS, or a non-loopback address.
    """
    parts = urlsplit(url)
    host = parts.hostname
    if not host:
        raise UsageError(f"{what}: no host in {url!r}")
    try:
        port = parts.port
    except ValueError:
        raise UsageError(f"{what}: bad port in {url!r}") from None
    if port is None:
        port = {"ws": 80, "http": 80, "wss": 443, "https": 443, "redis": 6379}.get(parts.scheme, 0)
    if parts.scheme in ("wss", "https", "rediss"):
        raise UsageError(f"{what}: TLS ({parts.scheme}) is not supported by the load test")
    if not allow_remote and not is_loopback(host):
        raise UsageError(
            f"{what}: {host} is not a loopback address; the load test only sends traffic "
            "to loopback unless --allow-remote is given"
        )
    return host, port


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address, or ``localhost``) is this machine's loopback."""
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


def _check_numbers(o: Options, w: Workload) -> None:
    if o.scenario not in DEFAULTS:
        raise UsageError(f"unknown scenario {o.scenario!r}")
    if not 1.0 <= (w.duration or 0.0) <= MAX_DURATION:
        raise UsageError(f"--duration must be between 1 and {MAX_DURATION:g} seconds")
    if not 1 <= (w.users or 0) <= MAX_USERS:
        raise UsageError(f"--users must be between 1 and {MAX_USERS:,}")
    rates = {"--rate": o.rate, "--doc-rate": o.doc_rate, "--user-rate": o.user_rate}
    rates["--churn-rate"] = o.churn_rate
    for flag, value in rates.items():
        if value is not None and not 0 <= value <= MAX_RATE:
            raise UsageError(f"{flag} must be between 0 and {MAX_RATE:g}")
    if o.documents is not None and not 0 <= o.documents <= MAX_USERS:
        raise UsageError(f"--documents must be between 0 and {MAX_USERS:,}")
    if o.participants is not None and not 1 <= o.participants <= 100:
        raise UsageError("--participants must be between 1 and 100")
    if not 1 <= o.procs <= 64 or not 1 <= o.workers <= 64:
        raise UsageError("--procs and --workers must be between 1 and 64")
    if not 0.0 <= o.max_error_share <= 1.0:
        raise UsageError("--max-error-share must be between 0 and 1")
    if not 0 <= o.source_addresses <= 65_000:
        raise UsageError("--source-addresses must be between 0 and 65000")
    if o.publish_via not in ("api", "redis", "python"):
        raise UsageError("--publish-via must be api, redis or python")
    if o.drop not in ("api", "restart", "network"):
        raise UsageError("--drop must be api, restart or network")
    if o.engine not in ("auto", "memory", "redis"):
        raise UsageError("--engine must be auto, memory or redis")


def _check_target(o: Options) -> Endpoint | None:
    """The running server to test (None with ``spawn``), its API and Redis checked."""
    if o.spawn:
        if o.algorithm != "HS256":
            raise UsageError("--jwt-algorithm other than HS256 needs a running server (--url)")
        if o.engine_to_spawn() == "memory" and o.workers > 1:
            raise UsageError("--workers N > 1 needs the Redis engine")
        return None
    if o.drop == "restart" and o.scenario == "reconnect-storm":
        raise UsageError("--drop restart needs --spawn (the load test restarts its server)")
    if not o.url:
        raise UsageError("give --url of a running server, or --spawn")
    if o.workers != 1:
        raise UsageError("--workers goes with --spawn")
    host, port = check_target(o.url, o.allow_remote, "--url")
    if o.publish_via == "api":
        if not o.api_url:
            raise UsageError("--publish-via api needs --api-url")
        check_target(o.api_url, o.allow_remote, "--api-url")
        if not o.api_key:
            raise UsageError("no API key: set REALTIME_API_KEY (or --api-key-env NAME)")
    elif not o.redis_url:
        raise UsageError(f"--publish-via {o.publish_via} needs a Redis URL")
    if o.redis_url:
        check_target(o.redis_url, o.allow_remote, "Redis URL")
    if not o.secret:
        raise UsageError("no JWT secret: set REALTIME_JWT_SECRET (or --secret-env NAME)")
    return Endpoint(host, port, urlsplit(o.url).path or "/connection/websocket")


def validate(o: Options) -> Checked:
    """Check every option once and the limits of the machine for this run.

    Raises:
        UsageError: naming what is wrong, before anything started.
    """
    w = o.workload()
    _check_numbers(o, w)
    target = _check_target(o)
    users = w.users or 0
    churn = 0
    if o.scenario == "churn":
        # each churn connection lives its lifetime plus up to 2 s of closing
        churn = math.ceil((w.churn_rate or 0.0) * ((w.churn_lifetime or 0.0) + 3.0))
    limits = check_limits(
        connections=users,
        procs=o.procs,
        workers=o.workers if o.spawn else 1,
        churn=churn,
        spawn=o.spawn,
        server_pid=o.server_pid,
        host=target.host if target is not None else "127.0.0.1",
        requested_sources=o.source_addresses,
    )
    return Checked(w, users, w.duration or 0.0, target, limits)
