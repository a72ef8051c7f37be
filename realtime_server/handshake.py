"""The common WebSocket upgrade, accepted without building websockets' request objects.

Nearly every connection opens with the same kind of request: ``GET`` on the WebSocket
path, HTTP/1.1, one ``Sec-WebSocket-Key``, version 13, no subprotocol or
``centrifuge-json``. websockets' parser and ``accept()`` cost about 45 µs of CPU per
connection (a generator per line, a ``Headers`` object, regular expressions per header,
a ``Date`` header); :func:`fast_accept` checks the same rules over the request's bytes
in about 8 and builds the 101 response.

It accepts only what websockets would accept, and only when it is sure: anything else
(another path, another method, a header it does not fully check, a malformed line, a
request split over several reads, a request websockets would refuse) returns None and the
connection goes through websockets' own parser, which answers it as before (400, 403,
426, 431...). ``tests/test_handshake.py`` runs the same requests through both.
"""

from __future__ import annotations

import binascii
import hashlib
import re
from collections.abc import Sequence
from typing import Final

from websockets.utils import GUID

from .values import immutable

__all__ = ["Accepted", "fast_accept", "request_line"]

_MAX_HEAD: Final = 8192
"""Longer requests take websockets' path (its limits are per line and per header count)."""

# The request line and header lines exactly as websockets' parser accepts them (token
# names; values of visible ASCII, spaces and tabs: other bytes take the slow path).
_HEAD_RE: Final = re.compile(
    rb"GET ([!-~]+) HTTP/1\.1\r\n((?:[-!#$%&'*+.^_`|~0-9a-zA-Z]+:[\t -~]*\r\n){1,100})\r\n"
)
_GUID: Final = GUID.encode("ascii")
_CHECKED: Final = frozenset(
    {
        b"upgrade",
        b"connection",
        b"sec-websocket-key",
        b"sec-websocket-version",
        b"sec-websocket-protocol",
        b"origin",
    }
)
_TOKEN_RE: Final = re.compile(rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+")
# Headers whose presence means a body or something else websockets checks: slow path.
_UNSURE: Final = frozenset({b"transfer-encoding", b"content-length"})


@immutable
class Accepted:
    """A request :func:`fast_accept` accepted."""

    response: bytes
    """The complete 101 response."""
    path: str
    """The request target (path and query)."""
    subprotocol: str | None
    kept: list[tuple[str, str]]
    """The request headers asked for (``keep``), in their order."""
    rest: bytes
    """What followed the request in the same read (the first frames)."""


def fast_accept(
    data: bytes,
    ws_path: str,
    origins: Sequence[str | None] | None,
    subprotocol: str,
    keep: frozenset[str] | None,
) -> Accepted | None:
    """Accept ``data`` as a WebSocket upgrade on ``ws_path`` if it is a plain one.

    ``origins``: the allowed ``Origin`` values (None in it allows no Origin header),
    or None for any. ``subprotocol``: the only one offered clients may pick. ``keep``:
    lower-case names of headers to return (the subscribe proxy's), None for none.
    Returns None whenever websockets' full handshake must decide."""
    end = data.find(b"\r\n\r\n")
    if end < 0 or end > _MAX_HEAD:
        return None
    match = _HEAD_RE.fullmatch(data, 0, end + 4)
    if match is None:
        return None
    target = match.group(1)
    if target.split(b"?", 1)[0] != ws_path.encode():
        return None
    seen: dict[bytes, bytes] = {}
    kept: list[tuple[str, str]] = []
    for line in match.group(2).split(b"\r\n")[:-1]:
        name, _, value = line.partition(b":")
        lower = name.lower()
        if lower in _UNSURE or (lower in _CHECKED and lower in seen):
            return None  # a body, or a repeated header websockets would join or refuse
        seen[lower] = value.strip(b" \t")
        if keep is not None and lower.decode() in keep:
            kept.append((name.decode(), value.strip(b" \t").decode()))
    if seen.get(b"upgrade", b"").lower() != b"websocket":
        return None
    connection = seen.get(b"connection", b"")
    if connection.lower() != b"upgrade":  # nearly always exactly that: no list to parse
        options = _tokens(connection)
        if options is None or b"upgrade" not in (option.lower() for option in options):
            return None
    if seen.get(b"sec-websocket-version") != b"13":
        return None
    key = seen.get(b"sec-websocket-key", b"")
    try:  # base64.b64decode(key, validate=True), without its wrapper
        if len(binascii.a2b_base64(key, strict_mode=True)) != 16:
            return None
    except binascii.Error:
        return None
    if origins is not None:
        origin = seen.get(b"origin")
        if (origin.decode() if origin is not None else None) not in origins:
            return None
    selected = None
    offered = seen.get(b"sec-websocket-protocol")
    if offered is not None:
        protocols = _tokens(offered)
        if protocols is None or subprotocol.encode() not in protocols:
            return None
        selected = subprotocol
    # websockets.utils.accept_key on bytes: RFC 6455 fixes SHA-1 here (no secret in it)
    digest = hashlib.sha1(key + _GUID, usedforsecurity=False).digest()
    accept = binascii.b2a_base64(digest, newline=False)
    response = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept + b"\r\n"
    )
    if selected is not None:
        response += b"Sec-WebSocket-Protocol: " + selected.encode() + b"\r\n"
    return Accepted(response + b"\r\n", target.decode(), selected, kept, data[end + 4 :])


def _tokens(value: bytes) -> list[bytes] | None:
    """A comma-separated list of tokens, or None when an element is not a token."""
    tokens = [element.strip(b" \t") for element in value.split(b",")]
    if all(_TOKEN_RE.fullmatch(token) for token in tokens):
        return tokens
    return None


def request_line(data: bytes) -> tuple[str, str] | None:
    """The method and target of an HTTP/1.x request's first line, else None."""
    parts = data.split(b"\n", 1)[0].rstrip(b"\r").split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        return None
    return parts[0].decode("ascii", "replace"), parts[1].decode("ascii", "replace")
