"""The fast handshake (realtime_server.handshake) accepts only what websockets accepts.

Every request here goes through both :func:`fast_accept` and websockets' own parser and
``accept()``: when the fast path accepts, websockets must accept it too, with the same
``Sec-WebSocket-Accept`` and subprotocol; when websockets refuses, the fast path must
refuse too (and leave the answer to websockets). Then, over a real socket, requests the
fast path declines still get websockets' answers.
"""

from __future__ import annotations

import asyncio
import base64
import random

import pytest
from websockets.datastructures import Headers
from websockets.http11 import Request
from websockets.typing import Origin

from realtime_server.app import Running
from realtime_server.handshake import fast_accept
from realtime_server.server import WEBSOCKET_PATH, JsonProtocol

from .conftest import StartServer
from .helpers import MS

KEY = base64.b64encode(b"0123456789abcdef").decode()
ORIGINS = ["https://app.example", None]


def request(*lines: str, target: str = WEBSOCKET_PATH, head: str | None = None) -> bytes:
    first = head if head is not None else f"GET {target} HTTP/1.1"
    return ("\r\n".join((first, *lines)) + "\r\n\r\n").encode("latin-1")


def plain(*extra: str, key: str = KEY) -> tuple[str, ...]:
    return (
        "Host: 127.0.0.1:8000",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        *extra,
    )


CASES: dict[str, bytes] = {
    "plain": request(*plain()),
    "query string": request(*plain(), target=WEBSOCKET_PATH + "?cf_ws_frame_ping_pong=true"),
    "json subprotocol": request(*plain("Sec-WebSocket-Protocol: centrifuge-json")),
    "json among others": request(
        *plain("Sec-WebSocket-Protocol: centrifuge-protobuf, centrifuge-json")
    ),
    "protobuf only": request(*plain("Sec-WebSocket-Protocol: centrifuge-protobuf")),
    "bad subprotocol list": request(*plain("Sec-WebSocket-Protocol: centrifuge-json, @@")),
    "allowed origin": request(*plain("Origin: https://app.example")),
    "other origin": request(*plain("Origin: https://evil.example")),
    "two origins": request(*plain("Origin: https://app.example", "Origin: https://app.example")),
    "mixed case": request(
        "host: x",
        "upgrade: WebSocket",
        "connection: keep-alive, Upgrade",
        f"sec-websocket-key: {KEY}",
        "sec-websocket-version: 13",
    ),
    "extensions offered": request(
        *plain("Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits")
    ),
    "no upgrade": request(
        "Host: x", "Connection: Upgrade", f"Sec-WebSocket-Key: {KEY}", "Sec-WebSocket-Version: 13"
    ),
    "upgrade h2c": request(
        "Host: x",
        "Upgrade: h2c",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {KEY}",
        "Sec-WebSocket-Version: 13",
    ),
    "no connection upgrade": request(
        "Host: x",
        "Upgrade: websocket",
        "Connection: keep-alive",
        f"Sec-WebSocket-Key: {KEY}",
        "Sec-WebSocket-Version: 13",
    ),
    "short key": request(*plain(key=base64.b64encode(b"short").decode())),
    "key not base64": request(*plain(key="!!!!!!!!!!!!!!!!!!!!!!==")),
    "two keys": request(*plain(f"Sec-WebSocket-Key: {KEY}")),
    "version 8": request(
        "Host: x",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {KEY}",
        "Sec-WebSocket-Version: 8",
    ),
    "no version": request(
        "Host: x", "Upgrade: websocket", "Connection: Upgrade", f"Sec-WebSocket-Key: {KEY}"
    ),
    "HTTP/1.0": request(*plain(), head=f"GET {WEBSOCKET_PATH} HTTP/1.0"),
    "POST": request(*plain(), head=f"POST {WEBSOCKET_PATH} HTTP/1.1"),
    "other path": request(*plain(), target="/elsewhere"),
    "body": request(*plain("Content-Length: 5")),
    "chunked": request(*plain("Transfer-Encoding: chunked")),
    "header without colon": request(*plain("Garbage")),
    "space in name": request(*plain("Bad Name: x")),
    "control byte in value": request(*plain("X-Test: a\x01b")),
    "non-ascii value": request(*plain("X-Test: caf\xe9")),
    "bare LF": request(*plain()).replace(b"\r\nHost", b"\nHost"),
}


def websockets_answer(data: bytes) -> tuple[int | None, str | None, str | None]:
    """(status, Sec-WebSocket-Accept, subprotocol) from websockets, or None status when
    its parser sends no response at all."""
    protocol = JsonProtocol(origins=[Origin(o) if o else None for o in ORIGINS])
    protocol.receive_data(data)
    events = protocol.events_received()
    if not events or not isinstance(events[0], Request):
        return None, None, None
    if events[0].path.split("?", 1)[0] != WEBSOCKET_PATH:
        return 404, None, None  # the routes answer other paths
    response = protocol.accept(events[0])
    return (
        response.status_code,
        response.headers.get("Sec-WebSocket-Accept"),
        response.headers.get("Sec-WebSocket-Protocol"),
    )


@pytest.mark.parametrize("name", sorted(CASES))
def test_fast_path_agrees_with_websockets(name: str) -> None:
    data = CASES[name]
    status, accept, subprotocol = websockets_answer(data)
    fast = fast_accept(data, WEBSOCKET_PATH, ORIGINS, "centrifuge-json", None)
    if fast is None:
        # declined: fine whatever websockets says, but the common cases must be fast
        assert name not in {"plain", "query string", "json subprotocol", "mixed case"}, name
        return
    assert status == 101, f"{name}: fast path accepted what websockets answers {status}"
    response = Headers()
    for line in fast.response.split(b"\r\n")[1:-2]:
        key, _, value = line.decode().partition(": ")
        response[key] = value
    assert response["Sec-WebSocket-Accept"] == accept
    assert response.get("Sec-WebSocket-Protocol") == subprotocol
    assert fast.rest == b""


def test_fast_path_fuzzed_agrees_with_websockets() -> None:
    """Random single-byte mutations of valid requests: never accepted by the fast path
    when websockets would refuse them."""
    rng = random.Random(1234)
    bases = [CASES["plain"], CASES["json subprotocol"], CASES["allowed origin"]]
    alphabet = b" \t\r\n:,;@x\x00\x7f\xff-"
    for _ in range(3000):
        data = bytearray(rng.choice(bases))
        for _ in range(rng.randint(1, 3)):
            position = rng.randrange(len(data) - 4)
            data[position] = rng.choice(alphabet)
        mutated = bytes(data)
        fast = fast_accept(mutated, WEBSOCKET_PATH, ORIGINS, "centrifuge-json", None)
        if fast is not None:
            status, accept, _ = websockets_answer(mutated)
            assert status == 101, mutated
            assert accept is not None and accept.encode() in fast.response, mutated


def test_kept_headers_and_pipelined_frames() -> None:
    data = request(*plain("X-Forwarded-For: 10.0.0.1", "Cookie: a=b")) + b"\x81\x80abcd"
    fast = fast_accept(data, WEBSOCKET_PATH, None, "centrifuge-json", frozenset({"cookie"}))
    assert fast is not None
    assert fast.kept == [("Cookie", "a=b")]
    assert fast.rest == b"\x81\x80abcd"


async def _raw_answer(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        return await asyncio.wait_for(reader.read(4096), 2000 * MS)
    finally:
        writer.close()


async def test_declined_requests_get_websockets_answers(start_server: StartServer) -> None:
    server: Running = await start_server(ALLOWED_ORIGINS="https://app.example")
    port = server.port
    answers = {
        "plain": b"HTTP/1.1 101 ",
        "other origin": b"HTTP/1.1 403 ",
        "version 8": b"HTTP/1.1 400 ",
        "short key": b"HTTP/1.1 400 ",
        "protobuf only": b"HTTP/1.1 400 ",
        "no upgrade": b"HTTP/1.1 426 ",
        "HTTP/1.0": b"HTTP/1.1 505 ",
    }
    for name, expected in answers.items():
        answer = await _raw_answer(port, CASES[name])
        assert answer.startswith(expected), (name, answer[:80])
    # A request split over two writes (usually two reads: websockets' path) still opens.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    data = CASES["plain"]
    writer.write(data[:20])
    await writer.drain()
    writer.write(data[20:])
    answer = await asyncio.wait_for(reader.read(4096), 2000 * MS)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 101 ")
