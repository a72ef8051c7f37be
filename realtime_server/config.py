"""Settings from the environment: every limit and timeout in one place.

:class:`Settings` is the one table of configuration: each field declares, once, its
default, its bounds, its help text, its ``REALTIME_*`` variable and whether it is a
secret (:func:`setting`). The converter follows from the field's type. Validation runs
in ``__post_init__``, so ``Settings(...)``, :func:`dataclasses.replace` and
:meth:`Settings.from_env` all check the same things; a malformed value raises
:class:`ConfigError` naming the variable, and secrets never appear in messages or in
``repr``.

Each variable is also a ``serve`` option (``--port`` for ``REALTIME_PORT``...), except
secrets, which come from the environment only. Only :meth:`Settings.from_env` reads the
environment.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson

from .channels.namespaces import Namespaces
from .errors import ConfigError
from .proxy_settings import check_proxy_settings
from .redis.url import check_redis_url
from .settings_table import Variable, check_value, convert, setting, variables_of

__all__ = ["ALL_VARIABLES", "SECRET_FIELDS", "VARIABLES", "Settings", "Variable", "setting"]

_LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _normalize_origin(origin: str) -> str:
    """An allow-list entry as browsers send it: lower case, no default port, no path."""
    scheme, sep, rest = origin.partition("://")
    if not sep or not scheme or not rest or "/" in rest or "@" in rest or "?" in rest:
        raise ConfigError("REALTIME_ALLOWED_ORIGINS: each origin is scheme://host[:port]")
    scheme, rest = scheme.lower(), rest.lower()
    default = {"https": ":443", "http": ":80"}.get(scheme)
    if default and rest.endswith(default):
        rest = rest[: -len(default)]
    return f"{scheme}://{rest}"


def _parse_namespaces(text: str | None) -> Namespaces:
    if not text:
        return Namespaces()
    try:
        parsed = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise ConfigError("REALTIME_NAMESPACES: not valid JSON") from None
    if not isinstance(parsed, dict):
        raise ConfigError("REALTIME_NAMESPACES: expected a JSON object")
    return Namespaces.from_json(parsed)


def _parse_origins(text: str | None) -> tuple[str, ...] | None:
    if not text:
        return None
    return tuple(_normalize_origin(o.strip()) for o in text.split(",") if o.strip())


@dataclass(frozen=True)
class Settings:
    """Validated configuration: build with :meth:`from_env`, or directly (tests).

    Derived values (the parsed namespaces and origins) are computed once, at
    construction.
    """

    host: str = setting("127.0.0.1", "address the WebSocket port listens on", metavar="ADDRESS")
    port: int = setting(
        8000,
        "WebSocket port (also /healthz, /readyz, /metrics)",
        minimum=0,
        maximum=65535,
        metavar="PORT",
    )
    jwt_secret: str | None = setting(None, "HMAC secret for HS* tokens", secret=True)
    jwt_public_key: str | None = setting(
        None, "PEM text, or @path to a PEM file, for RS*/ES*/EdDSA tokens", metavar="PEM|@PATH"
    )
    jwt_algorithms: str | None = setting(
        None,
        "comma-separated allow-list (default HS256 with a secret, RS256 with an RSA key; "
        "with a key set RS256,PS256,ES256,EdDSA, and HS256 with a secret too)",
        metavar="ALGS",
    )
    jwt_audience: str | None = setting(None, "required aud claim, checked when set", metavar="AUD")
    jwt_issuer: str | None = setting(None, "required iss claim, checked when set", metavar="ISS")
    jwt_leeway: float = setting(
        1.0, "seconds of clock leeway for exp/nbf/iat", minimum=0, metavar="SECONDS"
    )
    jwt_max_lifetime: float = setting(
        86400.0, "longest accepted token lifetime, seconds", minimum=1, metavar="SECONDS"
    )
    jwt_max_length: int = setting(
        8192,
        "longest accepted token, characters (checked before decoding)",
        minimum=64,
        metavar="CHARS",
    )
    jwt_jwks_url: str | None = setting(
        None, "identity provider's JSON Web Key Set (https; http to loopback)", metavar="URL"
    )
    jwt_jwks_refresh: float = setting(
        300.0, "seconds between key-set refreshes", minimum=1, metavar="SECONDS"
    )
    jwt_jwks_min_interval: float = setting(
        10.0, "least seconds between refetches for an unknown kid", minimum=0, metavar="SECONDS"
    )
    jwt_jwks_timeout: float = setting(
        5.0, "seconds one key-set fetch may take", minimum=0.05, metavar="SECONDS"
    )
    api_key: str | None = setting(
        None,
        "enables the HTTP server API (X-API-Key header); unset means the API is off",
        secret=True,
    )
    api_host: str = setting("127.0.0.1", "address of the HTTP server API", metavar="ADDRESS")
    api_port: int = setting(
        8001, "port of the HTTP server API", minimum=0, maximum=65535, metavar="PORT"
    )
    api_url: str | None = setting(
        None,
        "where CLI publish/revoke reach a running server's API (default from API host/port)",
        metavar="URL",
    )
    redis_url: str | None = setting(
        None, "Redis engine; unset means the embedded in-memory engine", secret=True
    )
    redis_prefix: str = setting("rt:", "prefix of every Redis key and channel", metavar="PREFIX")
    redis_timeout: float = setting(
        2.0, "seconds any Redis call may take", minimum=0.05, metavar="SECONDS"
    )
    redis_shards: int = setting(2, "Redis pub/sub connections per node", minimum=1, metavar="N")
    presence_ttl: float = setting(
        60.0,
        "seconds a crashed node's clients stay in shared presence",
        minimum=1,
        metavar="SECONDS",
    )
    database_url: str | None = setting(
        None, "Postgres event log; unset means the embedded SQLite log", secret=True
    )
    sqlite_path: str = setting("./realtime-events.db", "embedded event log file", metavar="PATH")
    events_enabled: bool = setting(
        True, "record the event log (false: record nothing)", metavar="BOOL"
    )
    events_migrate: bool = setting(
        True, "apply the event-log schema migrations when serve starts", metavar="BOOL"
    )
    events_buffer: int = setting(
        100000,
        "events held in memory; while the store does not answer they reach the spill "
        "file within about 1 s (at once past half of the buffer)",
        minimum=100,
        metavar="EVENTS",
    )
    events_batch: int = setting(1000, "events per write to the store", minimum=1, metavar="EVENTS")
    events_flush_interval: float = setting(
        0.2,
        "seconds a partial batch waits before it is written",
        minimum=0.001,
        metavar="SECONDS",
    )
    events_timeout: float = setting(
        5.0,
        "seconds allowed for one connect, write or query of the event store",
        minimum=0.05,
        metavar="SECONDS",
    )
    events_spill_path: str = setting(
        "./realtime-events.spill.jsonl",
        "append-only file for events the store could not take (replayed when it is back)",
        metavar="PATH",
    )
    revocations_path: str = setting(
        "./realtime-revocations.jsonl",
        "embedded engine: file keeping revocations across restarts (empty: memory only;"
        " with Redis they are in Redis)",
        metavar="PATH",
    )
    idempotency_ttl: float = setting(
        300.0,
        "seconds a publish's idempotency_key is remembered (a repeat delivers nothing)",
        minimum=1,
        maximum=86400,
        metavar="SECONDS",
    )
    outbox_url: str | None = setting(
        None,
        "PostgreSQL database holding the outbox table; set: this node consumes it",
        secret=True,
    )
    outbox_partitions: int = setting(
        1,
        "outbox partitions (each worked by one node at a time, in id order)",
        minimum=1,
        maximum=1024,
        metavar="N",
    )
    outbox_poll_interval: float = setting(
        1.0,
        "seconds between polls of the outbox for rows inserted without a notification",
        minimum=0.01,
        maximum=3600,
        metavar="SECONDS",
    )
    outbox_idle_timeout: float = setting(
        30.0,
        "seconds an outbox batch's transaction may sit idle before PostgreSQL ends it,"
        " freeing its partition (a frozen or unreachable node); above REDIS_TIMEOUT",
        minimum=1,
        maximum=3600,
        metavar="SECONDS",
    )
    allowed_origins: str | None = setting(
        None,
        "comma-separated exact Origin allow-list for browsers (unset: any)",
        metavar="ORIGINS",
    )
    log_level: str = setting("INFO", "log level (tokens are never logged)", metavar="LEVEL")
    node_name: str | None = setting(
        None,
        "name of this node in logs and metrics (default: the host name; workers add -w<N>)",
        metavar="NAME",
    )
    node_info_interval: float = setting(
        3.0,
        "seconds between this node's announcements to the others (info lists the nodes "
        "heard within three of their intervals)",
        minimum=0.05,
        maximum=3600,
        metavar="SECONDS",
    )
    namespaces_json: str | None = setting(
        None,
        "JSON object of namespace -> options, merged over the built-in user/document",
        env="REALTIME_NAMESPACES",
        option="--namespaces",
        metavar="JSON",
    )
    subscribe_proxy_url: str | None = setting(
        None, "backend asked about subscribes to namespaces with subscribe_proxy", metavar="URL"
    )
    proxy_http_headers: str | None = setting(
        None, "handshake headers forwarded to the subscribe proxy (e.g. Cookie)", metavar="NAMES"
    )
    proxy_timeout: float = setting(
        1.0, "seconds per subscribe-proxy call (then error 100)", minimum=0.01, metavar="SECONDS"
    )
    proxy_max_concurrency: int = setting(
        100, "subscribe-proxy calls in flight per process", minimum=1, metavar="N"
    )
    max_message_size: int = setting(
        65536, "largest client frame, bytes (larger: close 1009)", minimum=1024, metavar="BYTES"
    )
    connect_timeout: float = setting(
        10.0,
        "seconds from the TCP accept to a successful connect (else close 3502)",
        minimum=0.05,
        metavar="SECONDS",
    )
    ping_interval: float = setting(
        25.0, "seconds between server pings (0 disables)", minimum=0, metavar="SECONDS"
    )
    pong_timeout: float = setting(
        8.0, "seconds to answer a ping before close 3012", minimum=0.05, metavar="SECONDS"
    )
    expiry_grace: float = setting(
        2.0,
        "seconds after token expiry before close 3005 / unsubscribe 2501",
        minimum=0,
        metavar="SECONDS",
    )
    max_channels: int = setting(
        128,
        "channels per connection (error 106, close 3505 at connect)",
        minimum=1,
        metavar="N",
    )
    max_connections_per_user: int = setting(
        0,
        "connections per user on one node (close 3504); 0 means unlimited",
        minimum=0,
        metavar="N",
    )
    max_connections: int = setting(
        0,
        "WebSocket-port sockets per process before handshakes get 503; 0: the open-file "
        "limit minus a reserve for the API, Redis, Postgres and health checks",
        minimum=0,
        metavar="N",
    )
    max_unauthenticated: int = setting(
        0,
        "of those, sockets without a successful connect; past it the oldest is dropped; "
        "0: half of the connection cap",
        minimum=0,
        metavar="N",
    )
    outbox_bytes: int = setting(
        1048576,
        "bytes queued towards one client before close 3008; half of it bounds what one"
        " reply recovers (more: recovered false)",
        minimum=4096,
        metavar="BYTES",
    )
    rate_limit: float = setting(
        50.0, "commands per second per connection", minimum=0.1, metavar="PER_SECOND"
    )
    rate_burst: float = setting(100.0, "command burst per connection", minimum=1, metavar="N")
    rate_strikes: int = setting(
        20, "rate-limited commands before close 3013", minimum=1, metavar="N"
    )
    shutdown_timeout: float = setting(
        10.0, "seconds to close clients on SIGTERM before exiting", minimum=0.1, metavar="SECONDS"
    )
    backlog: int = setting(
        4096,
        "listen backlog of the WebSocket and API ports, per worker (the kernel caps it at "
        "net.core.somaxconn); room for a reconnect storm's SYNs",
        minimum=1,
        maximum=65535,
        metavar="N",
    )
    workers: int = setting(
        1,
        "server processes sharing the port (SO_REUSEPORT); more than 1 needs Redis",
        minimum=1,
        metavar="N",
    )
    worker_id: int | None = setting(
        None,
        "index of this worker process, set by serve --workers for each worker",
        env="REALTIME_WORKER_ID",
        minimum=0,
        internal=True,
    )

    def __post_init__(self) -> None:
        for var in variables_of(Settings):
            check_value(var, getattr(self, var.field))
        if self.log_level.upper() not in _LOG_LEVELS:
            raise ConfigError(f"REALTIME_LOG_LEVEL: one of {', '.join(_LOG_LEVELS)}")
        if self.workers > 1 and not self.redis_url:
            raise ConfigError(
                "REALTIME_WORKERS: more than one worker needs REALTIME_REDIS_URL "
                "(workers share channels, history and revocations through Redis)"
            )
        if self.workers > 1 and (self.port == 0 or self.api_port == 0):
            raise ConfigError("REALTIME_WORKERS: workers need fixed ports (not 0)")
        if self.redis_url:
            check_redis_url(self.redis_url)
        if self.outbox_url and self.redis_url and self.outbox_idle_timeout <= self.redis_timeout:
            raise ConfigError(
                "REALTIME_OUTBOX_IDLE_TIMEOUT: must exceed REALTIME_REDIS_TIMEOUT (a batch"
                " waits that long on Redis before it gives up)"
            )
        if any(c in self.redis_prefix for c in "{} \n"):
            raise ConfigError("REALTIME_REDIS_PREFIX: no braces, spaces or newlines")
        # Derived once: read on every subscribe and handshake.
        object.__setattr__(self, "_namespaces", _parse_namespaces(self.namespaces_json))
        object.__setattr__(self, "_origins", _parse_origins(self.allowed_origins))
        check_proxy_settings(self.subscribe_proxy_url, self.proxy_http_headers, self.namespaces())

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str] | None = None,
        overrides: Mapping[str, str | None] | None = None,
    ) -> Settings:
        """Read every ``REALTIME_*`` variable; ``overrides`` (by field name, as text)
        win over the environment. An empty value means unset.

        Raises:
            ConfigError: naming the variable whose value is malformed.
        """
        source = os.environ if env is None else env
        values: dict[str, Any] = {}
        for var in variables_of(Settings):
            raw = overrides.get(var.field) if overrides else None
            if raw is None:
                raw = source.get(var.name)
            if raw is None or raw == "":
                continue
            values[var.field] = convert(var, raw)
        return cls(**values)

    def namespaces(self) -> Namespaces:
        """The namespace table (built-ins merged with ``REALTIME_NAMESPACES``)."""
        parsed: Namespaces = self._namespaces  # type: ignore[attr-defined]
        return parsed

    def origins(self) -> list[str] | None:
        """The normalized ``Origin`` allow-list; None allows any."""
        parsed: tuple[str, ...] | None = self._origins  # type: ignore[attr-defined]
        return list(parsed) if parsed is not None else None

    def node(self) -> str:
        """This process's node name: ``REALTIME_NODE_NAME`` or the host name, with
        ``-w<index>`` for a ``serve --workers`` worker."""
        base = self.node_name or socket.gethostname()
        return base if self.worker_id is None else f"{base}-w{self.worker_id}"

    def api_base_url(self) -> str:
        if self.api_url:
            return self.api_url.rstrip("/")
        host = self.api_host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"http://{host}:{self.api_port}"

    def public(self) -> dict[str, Any]:
        """Settings safe to show: secrets replaced by whether they are set."""
        out: dict[str, Any] = {}
        for var in variables_of(Settings):
            value = getattr(self, var.field)
            out[var.field] = ("set" if value else "unset") if var.secret else value
        return out


ALL_VARIABLES: Final = variables_of(Settings)
"""Every variable, internal ones included (what :meth:`Settings.from_env` reads)."""
VARIABLES: Final = tuple(v for v in ALL_VARIABLES if not v.internal)
"""The documented variables (``--help``, README)."""
SECRET_FIELDS: Final = frozenset(v.field for v in ALL_VARIABLES if v.secret)
