"""The subscribe proxy's settings, checked (pure: :mod:`.config` calls it at
construction, :mod:`.proxy` reads the header names; no aiohttp here)."""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import urlsplit

from .channels.namespaces import Namespaces
from .errors import ConfigError

__all__ = ["check_proxy_settings", "header_names"]

_HEADER_NAME: Final = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")
# Never forwarded: they describe the handshake or the proxy request itself.
_NOT_FORWARDED: Final = frozenset(
    {
        "connection",
        "content-length",
        "content-type",
        "host",
        "keep-alive",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)


def header_names(text: str | None) -> frozenset[str] | None:
    """``REALTIME_PROXY_HTTP_HEADERS`` as lower-case names; None when empty (then no
    header is kept per connection).

    Raises:
        ConfigError: a malformed name, or one that is never forwarded.
    """
    if not text:
        return None
    names = [n.strip() for n in text.split(",") if n.strip()]
    for name in names:
        if not _HEADER_NAME.fullmatch(name):
            raise ConfigError("REALTIME_PROXY_HTTP_HEADERS: comma-separated header names")
        lowered = name.lower()
        if lowered in _NOT_FORWARDED or lowered.startswith("sec-websocket-"):
            raise ConfigError(f"REALTIME_PROXY_HTTP_HEADERS: {name} is never forwarded")
    return frozenset(n.lower() for n in names) or None


def _check_url(url: str) -> None:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        raise ConfigError("REALTIME_SUBSCRIBE_PROXY_URL: not a URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError("REALTIME_SUBSCRIBE_PROXY_URL: expected http(s)://host/path")
    if parts.username is not None or parts.password is not None:
        # It is a serve option (visible in the process list): no credentials in it.
        raise ConfigError("REALTIME_SUBSCRIBE_PROXY_URL: no credentials in the URL")


def check_proxy_settings(url: str | None, headers: str | None, namespaces: Namespaces) -> None:
    """The proxy URL, the forwarded header names, and that every namespace with
    ``subscribe_proxy`` has a proxy to ask.

    Raises:
        ConfigError: naming the variable.
    """
    header_names(headers)
    if url:
        _check_url(url)
        return
    proxied = [name for name, opts in namespaces if opts.subscribe_proxy]
    if proxied:
        raise ConfigError(
            f"REALTIME_NAMESPACES: {proxied[0]}.subscribe_proxy needs REALTIME_SUBSCRIBE_PROXY_URL"
        )
