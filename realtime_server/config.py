"""Settings from the environment: every limit and timeout in one place.

Each ``REALTIME_*`` variable is also a ``serve`` option (``--port`` for
``REALTIME_PORT``...). A malformed value raises :class:`ConfigError` naming the
variable; secrets never appear in messages or in ``repr``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Final

import orjson

from .channels.namespaces import Namespaces
from .errors import ConfigError

__all__ = ["SECRET_FIELDS", "VARIABLES", "Settings", "Variable"]


@dataclass(frozen=True, slots=True)
class Variable:
    """One configuration variable: its field, default and help text."""

    name: str
    field: str
    default: str | None
    help: str
    secret: bool = False


def _v(name: str, fld: str, default: str | None, text: str, secret: bool = False) -> Variable:
    return Variable(name, fld, default, text, secret)


VARIABLES: Final[tuple[Variable, ...]] = (
    _v("REALTIME_HOST", "host", "127.0.0.1", "address the WebSocket port listens on"),
    _v("REALTIME_PORT", "port", "8000", "WebSocket port (also /healthz, /readyz, /metrics)"),
    _v("REALTIME_JWT_SECRET", "jwt_secret", None, "HMAC secret for HS* tokens", True),
    _v(
        "REALTIME_JWT_PUBLIC_KEY",
        "jwt_public_key",
        None,
        "PEM text, or @path to a PEM file, for RS*/ES*/EdDSA tokens",
    ),
    _v(
        "REALTIME_JWT_ALGORITHMS",
        "jwt_algorithms",
        None,
        "comma-separated allow-list (default HS256 with a secret, RS256 with an RSA key)",
    ),
    _v("REALTIME_JWT_AUDIENCE", "jwt_audience", None, "required aud claim, checked when set"),
    _v("REALTIME_JWT_ISSUER", "jwt_issuer", None, "required iss claim, checked when set"),
    _v("REALTIME_JWT_LEEWAY", "jwt_leeway", "1", "seconds of clock leeway for exp/nbf/iat"),
    _v(
        "REALTIME_JWT_MAX_LIFETIME",
        "jwt_max_lifetime",
        "86400",
        "longest accepted token lifetime, seconds",
    ),
    _v(
        "REALTIME_JWT_MAX_LENGTH",
        "jwt_max_length",
        "8192",
        "longest accepted token, characters (checked before decoding)",
    ),
    _v(
        "REALTIME_API_KEY",
        "api_key",
        None,
        "enables the HTTP server API (X-API-Key header); unset means the API is off",
        True,
    ),
    _v("REALTIME_API_HOST", "api_host", "127.0.0.1", "address of the HTTP server API"),
    _v("REALTIME_API_PORT", "api_port", "8001", "port of the HTTP server API"),
    _v(
        "REALTIME_API_URL",
        "api_url",
        None,
        "where CLI publish/revoke reach a running server's API (default from API host/port)",
    ),
    _v(
        "REALTIME_REDIS_URL",
        "redis_url",
        None,
        "Redis engine; unset means the embedded in-memory engine",
        True,
    ),
    _v("REALTIME_REDIS_PREFIX", "redis_prefix", "rt:", "prefix of every Redis key and channel"),
    _v("REALTIME_REDIS_TIMEOUT", "redis_timeout", "2", "seconds any Redis call may take"),
    _v("REALTIME_REDIS_SHARDS", "redis_shards", "2", "Redis pub/sub connections per node"),
    _v(
        "REALTIME_PRESENCE_TTL",
        "presence_ttl",
        "60",
        "seconds a crashed node's clients stay in shared presence",
    ),
    _v(
        "REALTIME_DATABASE_URL",
        "database_url",
        None,
        "Postgres event log; unset means the embedded SQLite log",
        True,
    ),
    _v("REALTIME_SQLITE_PATH", "sqlite_path", "./realtime-events.db", "embedded event log file"),
    _v(
        "REALTIME_EVENTS_ENABLED",
        "events_enabled",
        "true",
        "record the event log (false: record nothing)",
    ),
    _v(
        "REALTIME_EVENTS_MIGRATE",
        "events_migrate",
        "true",
        "apply the event-log schema migrations when serve starts",
    ),
    _v(
        "REALTIME_EVENTS_BUFFER",
        "events_buffer",
        "100000",
        "events held in memory; while the store is down, half of it fills before spilling",
    ),
    _v("REALTIME_EVENTS_BATCH", "events_batch", "1000", "events per write to the store"),
    _v(
        "REALTIME_EVENTS_FLUSH_INTERVAL",
        "events_flush_interval",
        "0.2",
        "seconds a partial batch waits before it is written",
    ),
    _v(
        "REALTIME_EVENTS_TIMEOUT",
        "events_timeout",
        "5",
        "seconds allowed for one connect, write or query of the event store",
    ),
    _v(
        "REALTIME_EVENTS_SPILL_PATH",
        "events_spill_path",
        "./realtime-events.spill.jsonl",
        "append-only file for events the store could not take (replayed when it is back)",
    ),
    _v(
        "REALTIME_ALLOWED_ORIGINS",
        "allowed_origins",
        None,
        "comma-separated exact Origin allow-list for browsers (unset: any)",
    ),
    _v("REALTIME_LOG_LEVEL", "log_level", "INFO", "log level (tokens are never logged)"),
    _v("REALTIME_NODE_NAME", "node_name", None, "name of this node in logs and metrics"),
    _v(
        "REALTIME_NAMESPACES",
        "namespaces_json",
        None,
        "JSON object of namespace -> options, merged over the built-in user/document",
    ),
    _v(
        "REALTIME_MAX_MESSAGE_SIZE",
        "max_message_size",
        "65536",
        "largest client frame, bytes (larger: close 1009)",
    ),
    _v(
        "REALTIME_CONNECT_TIMEOUT",
        "connect_timeout",
        "10",
        "seconds to send connect before close 3502",
    ),
    _v("REALTIME_PING_INTERVAL", "ping_interval", "25", "seconds between server pings"),
    _v("REALTIME_PONG_TIMEOUT", "pong_timeout", "8", "seconds to answer a ping before close 3012"),
    _v(
        "REALTIME_EXPIRY_GRACE",
        "expiry_grace",
        "2",
        "seconds after token expiry before close 3005 / unsubscribe 2501",
    ),
    _v(
        "REALTIME_MAX_CHANNELS",
        "max_channels",
        "128",
        "channels per connection (error 106, close 3505 at connect)",
    ),
    _v(
        "REALTIME_MAX_CONNECTIONS_PER_USER",
        "max_connections_per_user",
        "0",
        "connections per user on one node (close 3504); 0 means unlimited",
    ),
    _v(
        "REALTIME_OUTBOX_BYTES",
        "outbox_bytes",
        "1048576",
        "bytes queued towards one client before close 3008",
    ),
    _v("REALTIME_RATE_LIMIT", "rate_limit", "50", "commands per second per connection"),
    _v("REALTIME_RATE_BURST", "rate_burst", "100", "command burst per connection"),
    _v("REALTIME_RATE_STRIKES", "rate_strikes", "20", "rate-limited commands before close 3013"),
    _v(
        "REALTIME_SHUTDOWN_TIMEOUT",
        "shutdown_timeout",
        "10",
        "seconds to close clients on SIGTERM before exiting",
    ),
    _v(
        "REALTIME_WORKERS",
        "workers",
        "1",
        "server processes sharing the port (SO_REUSEPORT); more than 1 needs Redis",
    ),
)

SECRET_FIELDS: Final = frozenset(v.field for v in VARIABLES if v.secret)


def _int(name: str, value: str, minimum: int = 0) -> int:
    try:
        number = int(value)
    except ValueError:
        raise ConfigError(f"{name}: expected an integer") from None
    if number < minimum:
        raise ConfigError(f"{name}: must be >= {minimum}")
    return number


def _float(name: str, value: str, minimum: float = 0.0) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"{name}: expected a number") from None
    if not number >= minimum or number == float("inf"):
        raise ConfigError(f"{name}: must be a finite number >= {minimum}")
    return number


def _port(name: str, value: str) -> int:
    port = _int(name, value)
    if port > 65535:
        raise ConfigError(f"{name}: not a port number")
    return port


def _bool(name: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}: expected true or false")


_CONVERTERS: Final[dict[str, Callable[[str, str], Any]]] = {
    "port": _port,
    "redis_timeout": lambda n, v: _float(n, v, 0.05),
    "redis_shards": lambda n, v: _int(n, v, 1),
    "presence_ttl": lambda n, v: _float(n, v, 1.0),
    "api_port": _port,
    "jwt_leeway": _float,
    "jwt_max_lifetime": lambda n, v: _float(n, v, 1.0),
    "jwt_max_length": lambda n, v: _int(n, v, 64),
    "max_message_size": lambda n, v: _int(n, v, 1024),
    "connect_timeout": lambda n, v: _float(n, v, 0.05),
    "ping_interval": lambda n, v: _float(n, v, 0.0),
    "pong_timeout": lambda n, v: _float(n, v, 0.05),
    "expiry_grace": _float,
    "max_channels": lambda n, v: _int(n, v, 1),
    "max_connections_per_user": _int,
    "outbox_bytes": lambda n, v: _int(n, v, 4096),
    "rate_limit": lambda n, v: _float(n, v, 0.1),
    "rate_burst": lambda n, v: _float(n, v, 1.0),
    "rate_strikes": lambda n, v: _int(n, v, 1),
    "shutdown_timeout": lambda n, v: _float(n, v, 0.1),
    "workers": lambda n, v: _int(n, v, 1),
    "events_enabled": _bool,
    "events_migrate": _bool,
    "events_buffer": lambda n, v: _int(n, v, 100),
    "events_batch": lambda n, v: _int(n, v, 1),
    "events_flush_interval": lambda n, v: _float(n, v, 0.001),
    "events_timeout": lambda n, v: _float(n, v, 0.05),
}


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


_LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


@dataclass(frozen=True)
class Settings:
    """Validated configuration. Build with :meth:`from_env`."""

    host: str = "127.0.0.1"
    port: int = 8000
    jwt_secret: str | None = field(default=None, repr=False)
    jwt_public_key: str | None = field(default=None, repr=False)
    jwt_algorithms: str | None = None
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    jwt_leeway: float = 1.0
    jwt_max_lifetime: float = 86400.0
    jwt_max_length: int = 8192
    api_key: str | None = field(default=None, repr=False)
    api_host: str = "127.0.0.1"
    api_port: int = 8001
    api_url: str | None = None
    redis_url: str | None = field(default=None, repr=False)
    redis_prefix: str = "rt:"
    redis_timeout: float = 2.0
    redis_shards: int = 2
    presence_ttl: float = 60.0
    database_url: str | None = field(default=None, repr=False)
    sqlite_path: str = "./realtime-events.db"
    events_enabled: bool = True
    events_migrate: bool = True
    events_buffer: int = 100000
    events_batch: int = 1000
    events_flush_interval: float = 0.2
    events_timeout: float = 5.0
    events_spill_path: str = "./realtime-events.spill.jsonl"
    allowed_origins: str | None = None
    log_level: str = "INFO"
    node_name: str | None = None
    namespaces_json: str | None = None
    max_message_size: int = 65536
    connect_timeout: float = 10.0
    ping_interval: float = 25.0
    pong_timeout: float = 8.0
    expiry_grace: float = 2.0
    max_channels: int = 128
    max_connections_per_user: int = 0
    outbox_bytes: int = 1048576
    rate_limit: float = 50.0
    rate_burst: float = 100.0
    rate_strikes: int = 20
    shutdown_timeout: float = 10.0
    workers: int = 1

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str] | None = None,
        overrides: Mapping[str, str | None] | None = None,
    ) -> Settings:
        """Read every ``REALTIME_*`` variable; ``overrides`` (by field name, as text)
        win over the environment.

        Raises:
            ConfigError: naming the variable whose value is malformed.
        """
        source = os.environ if env is None else env
        values: dict[str, Any] = {}
        for var in VARIABLES:
            raw = overrides.get(var.field) if overrides else None
            if raw is None:
                raw = source.get(var.name)
            if raw is None or raw == "":
                continue
            convert = _CONVERTERS.get(var.field)
            values[var.field] = convert(var.name, raw) if convert else raw
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.log_level.upper() not in _LOG_LEVELS:
            raise ConfigError(f"REALTIME_LOG_LEVEL: one of {', '.join(_LOG_LEVELS)}")
        self.namespaces()
        self.origins()
        if self.workers > 1 and not self.redis_url:
            raise ConfigError(
                "REALTIME_WORKERS: more than one worker needs REALTIME_REDIS_URL "
                "(workers share channels, history and revocations through Redis)"
            )
        if self.workers > 1 and (self.port == 0 or self.api_port == 0):
            raise ConfigError("REALTIME_WORKERS: workers need fixed ports (not 0)")
        if any(c in self.redis_prefix for c in "{} \n"):
            raise ConfigError("REALTIME_REDIS_PREFIX: no braces, spaces or newlines")

    def namespaces(self) -> Namespaces:
        if not self.namespaces_json:
            return Namespaces()
        try:
            parsed = orjson.loads(self.namespaces_json)
        except orjson.JSONDecodeError:
            raise ConfigError("REALTIME_NAMESPACES: not valid JSON") from None
        if not isinstance(parsed, dict):
            raise ConfigError("REALTIME_NAMESPACES: expected a JSON object")
        return Namespaces.from_json(parsed)

    def origins(self) -> list[str] | None:
        if not self.allowed_origins:
            return None
        return [_normalize_origin(o.strip()) for o in self.allowed_origins.split(",") if o.strip()]

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
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = ("set" if value else "unset") if f.name in SECRET_FIELDS else value
        return out
