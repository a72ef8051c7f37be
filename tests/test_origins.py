"""``REALTIME_ALLOWED_ORIGINS``: browsers' ``Origin`` checked by exact match at the handshake.

An allowed origin connects; any other origin, including look-alikes (suffix and prefix
tricks, another scheme, an explicit or different port, other case, a trailing slash,
``null``), gets HTTP 403 and never reaches the protocol. Requests without ``Origin``
(non-browser SDKs) are allowed. Without the variable, any origin is accepted.
"""

from __future__ import annotations

import asyncio

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Origin

from realtime_server.app import Running

from .conftest import StartServer, ws_url
from .helpers import MS, RawClient, token

ALLOWED = "https://app.example.com,http://localhost:3000, https://sign.example.org:8443"

LOOK_ALIKES = [
    "https://app.example.com.evil.com",  # allowed origin as a prefix of another host
    "https://evilapp.example.com",  # ... as a suffix
    "https://app.example.co",  # shorter
    "https://app.example.comm",
    "https://evil.com",
    "http://app.example.com",  # other scheme
    "wss://app.example.com",
    "https://app.example.com:443",  # explicit default port (browsers never send it)
    "https://app.example.com:8443",  # other port
    "http://localhost:3001",
    "http://localhost",
    "http://127.0.0.1:3000",  # same machine, other host name
    "https://sign.example.org",  # allowed only with :8443
    "HTTPS://APP.EXAMPLE.COM",  # other case (browsers send lower case)
    "https://App.Example.com",
    "https://app.example.com/",  # trailing slash
    "https://user@app.example.com",
    "null",  # sandboxed iframes, file:// pages
    "",
]


async def _status(url: str, origin: str | None) -> int:
    """The HTTP status of a WebSocket handshake with this ``Origin`` (101 if it opened)."""
    try:
        async with asyncio.timeout(3000 * MS):
            ws = await connect(
                url,
                origin=Origin(origin) if origin is not None else None,
                ping_interval=None,
                proxy=None,
            )
    except InvalidStatus as exc:
        return exc.response.status_code
    await ws.close()
    return 101


@pytest.fixture
async def guarded(start_server: StartServer) -> Running:
    return await start_server(ALLOWED_ORIGINS=ALLOWED)


@pytest.mark.parametrize(
    "origin", ["https://app.example.com", "http://localhost:3000", "https://sign.example.org:8443"]
)
async def test_allowed_origin_connects_and_speaks_the_protocol(
    guarded: Running, origin: str
) -> None:
    client = await RawClient.open(ws_url(guarded), origin=Origin(origin), proxy=None)
    try:
        reply = await client.connect(token("alice"))
        assert "client" in reply["connect"], reply
    finally:
        await client.close()


async def test_no_origin_is_allowed_for_non_browser_clients(guarded: Running) -> None:
    assert await _status(ws_url(guarded), None) == 101


@pytest.mark.parametrize("origin", LOOK_ALIKES)
async def test_other_and_look_alike_origins_get_403(guarded: Running, origin: str) -> None:
    assert await _status(ws_url(guarded), origin) == 403
    assert not guarded.node.registry


async def test_two_origin_headers_are_refused(guarded: Running) -> None:
    """A request carrying an allowed and a foreign Origin is not let through."""
    reader, writer = await asyncio.open_connection("127.0.0.1", guarded.port)
    try:
        writer.write(
            b"GET /connection/websocket HTTP/1.1\r\n"
            b"Host: 127.0.0.1\r\n"
            b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            b"Origin: https://app.example.com\r\nOrigin: https://evil.com\r\n\r\n"
        )
        await writer.drain()
        async with asyncio.timeout(3000 * MS):
            status_line = await reader.readline()
    finally:
        writer.close()
        await writer.wait_closed()
    status = int(status_line.split()[1])
    assert status != 101 and 400 <= status < 500, status_line


async def test_http_routes_ignore_origin(guarded: Running) -> None:
    """The check is for WebSocket handshakes; /healthz answers whatever the Origin."""
    reader, writer = await asyncio.open_connection("127.0.0.1", guarded.port)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nOrigin: https://evil.com\r\n\r\n")
        await writer.drain()
        async with asyncio.timeout(3000 * MS):
            status_line = await reader.readline()
    finally:
        writer.close()
        await writer.wait_closed()
    assert status_line.startswith(b"HTTP/1.1 200"), status_line


async def test_without_allow_list_any_origin_connects(server: Running) -> None:
    for origin in ("https://app.example.com", "https://evil.com", "null", None):
        assert await _status(ws_url(server), origin) == 101


async def test_allow_list_entry_with_capitals_matches_what_browsers_send(
    start_server: StartServer,
) -> None:
    server = await start_server(ALLOWED_ORIGINS="https://App.Example.com")
    assert await _status(ws_url(server), "https://app.example.com") == 101
