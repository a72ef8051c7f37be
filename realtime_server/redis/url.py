"""``REALTIME_REDIS_URL``: checked once when the settings are built, and described in
messages without its credentials.

Accepted forms (those of redis-py): ``redis://[[user]:password@]host[:port][/db]``,
``rediss://...`` (TLS) and ``unix://[[user]:password@]/path/to/socket[?db=N]``.
"""

from __future__ import annotations

from typing import Final
from urllib.parse import unquote, urlsplit

from ..errors import ConfigError

__all__ = ["check_redis_url", "redis_address"]

_SCHEMES: Final = ("redis", "rediss", "unix")
_VARIABLE: Final = "REALTIME_REDIS_URL"
_FORMS: Final = "expected redis://[:password@]host[:port][/db], rediss://... or unix:///path"


def check_redis_url(url: str) -> None:
    """Raise :class:`ConfigError` naming ``REALTIME_REDIS_URL`` when ``url`` is not a
    Redis URL. The message quotes the scheme at most, never the URL (it may hold a
    password)."""
    scheme, sep, _ = url.partition("://")
    if not sep or scheme.lower() not in _SCHEMES:
        shown = f"'{scheme}://'" if sep and scheme.isalnum() and len(scheme) <= 16 else "none"
        raise ConfigError(f"{_VARIABLE}: {_FORMS} (scheme: {shown})")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ConfigError(f"{_VARIABLE}: the port is not a number from 0 to 65535") from None
    if scheme.lower() == "unix":
        if not parts.path:
            raise ConfigError(f"{_VARIABLE}: unix:// needs the socket's path")
        return
    if port == 0:
        raise ConfigError(f"{_VARIABLE}: the port is not a number from 0 to 65535")
    db = unquote(parts.path).strip("/")
    if db and not db.isdigit():
        raise ConfigError(f"{_VARIABLE}: the database after the host is a number (/0)")


def redis_address(url: str) -> str:
    """``host:port`` (or the socket's path) of a Redis URL, for messages: never the
    user name or password. Assumes :func:`check_redis_url` accepted the URL."""
    parts = urlsplit(url)
    if parts.scheme.lower() == "unix":
        return unquote(parts.path)
    host = parts.hostname or "localhost"
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{parts.port or 6379}"
