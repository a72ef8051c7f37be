"""A minimal WebSocket client on ``asyncio.Protocol``, for load generation.

A full client library costs several times what the server spends per delivery, and a
load generator on the same machine as the server must stay cheaper than the server, or
it measures itself. This one does the HTTP/1.1 upgrade, then parses frames and hands
each text frame's payload to :meth:`FrameClient.on_text`; it answers WebSocket pings,
and masks what it sends (with a fixed key per frame: servers must not care). Frames
from the server are never masked and never fragmented by the servers we test; a
fragmented message is treated as a protocol error.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
import struct
import time
from typing import Final, cast

from websockets.frames import Frame, Opcode
from websockets.utils import accept_key

__all__ = [
    "CLOSED",
    "CONNECTING",
    "HANDSHAKING",
    "OPEN",
    "FrameClient",
    "abort_with_reset",
    "client_frame",
    "upgrade_request",
]

_LINGER_RST: Final = struct.pack("ii", 1, 0)
HANDSHAKING, CONNECTING, OPEN, CLOSED = 0, 1, 2, 3
"""Connection states: HTTP upgrade sent; upgraded (protocol connect sent); protocol
connect answered; closed."""


def upgrade_request(host: str, port: int, path: str) -> tuple[bytes, bytes]:
    """The HTTP upgrade request and the ``Sec-WebSocket-Accept`` value to expect."""
    key = base64.b64encode(os.urandom(16))
    accept = accept_key(key.decode()).encode()
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key.decode()}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    return request, accept


def client_frame(payload: bytes, opcode: Opcode = Opcode.TEXT) -> bytes:
    """One masked client frame."""
    return Frame(opcode, payload).serialize(mask=True, extensions=[])


def abort_with_reset(transport: asyncio.BaseTransport | None) -> None:
    """Close at once with a TCP reset: no TIME_WAIT is left on either side."""
    if transport is None or transport.is_closing():
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    transport.close()


class FrameClient(asyncio.Protocol):
    """The handshake and the frame parser. Subclasses implement :meth:`on_upgraded`,
    :meth:`on_text`, :meth:`on_close` and may override :meth:`on_fail`."""

    __slots__ = ("_accept", "_buf", "_request", "state", "transport")

    def __init__(self, request: bytes, accept: bytes) -> None:
        self.state = HANDSHAKING
        self.transport: asyncio.Transport | None = None
        self._buf = b""
        self._request = request
        self._accept = accept

    # --- hooks --------------------------------------------------------------------------

    def on_upgraded(self) -> None:
        """The server accepted the upgrade (state is CONNECTING now)."""

    def on_text(self, payload: bytes, now_ns: int) -> None:
        """One text frame; ``now_ns`` is ``time.time_ns()`` read once per socket read."""

    def on_close(self, code: int) -> None:
        """The connection is closed (close frame received, or 1006 when the transport
        went away without one). Called once."""

    def on_fail(self, reason: str) -> None:
        """The handshake failed (``reason``: the HTTP status line or what went wrong)."""

    # --- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        self.transport.write(self._request)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.state == HANDSHAKING:
            self.state = CLOSED
            self.on_fail(f"connection lost during handshake: {exc or 'EOF'}")
        elif self.state != CLOSED:
            self.state = CLOSED
            self.on_close(1006)

    def fail(self, reason: str) -> None:
        self.state = CLOSED
        self.on_fail(reason)
        abort_with_reset(self.transport)

    def close_now(self) -> None:
        """Reset the connection without a close handshake (no callback)."""
        self.state = CLOSED
        abort_with_reset(self.transport)

    def send_text(self, payload: bytes) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(client_frame(payload))

    def send_close(self, code: int = 1000) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(client_frame(code.to_bytes(2, "big"), Opcode.CLOSE))

    def _handshake(self, data: bytes) -> bytes | None:
        end = data.find(b"\r\n\r\n")
        if end < 0:
            if len(data) > 16384:
                self.fail("oversized handshake response")
            else:
                self._buf = data
            return None
        head = data[:end]
        if not head.startswith(b"HTTP/1.1 101") or self._accept not in head:
            self.fail(head.split(b"\r\n", 1)[0].decode("latin-1"))
            return None
        self.state = CONNECTING
        self.on_upgraded()
        return data[end + 4 :]

    def data_received(self, data: bytes) -> None:
        # Most reads of an open connection are one whole text frame: straight to on_text.
        n = len(data)
        if self.state == OPEN and n > 3 and data[0] == 0x81 and not self._buf:
            size = data[1]
            if size < 126:
                if size + 2 == n:
                    self.on_text(data[2:], time.time_ns())
                    return
            elif size == 126 and ((data[2] << 8) | data[3]) + 4 == n:
                self.on_text(data[4:], time.time_ns())
                return
        self._frames(data)

    def _frames(self, data: bytes) -> None:
        """Whatever :meth:`data_received`'s fast path does not take: the handshake, a
        partial frame, several frames, control frames."""
        if self._buf:
            data = self._buf + data
            self._buf = b""
        state = self.state
        if state == HANDSHAKING:
            rest = self._handshake(data)
            if not rest:
                return
            data = rest
        elif state == CLOSED:
            return
        now = time.time_ns()
        pos, end = 0, len(data)
        while end - pos >= 2:
            size = data[pos + 1] & 0x7F
            head = 2
            if size == 126:
                if end - pos < 4:
                    break
                size = (data[pos + 2] << 8) | data[pos + 3]
                head = 4
            elif size == 127:
                if end - pos < 10:
                    break
                size = int.from_bytes(data[pos + 2 : pos + 10], "big")
                head = 10
            stop = pos + head + size
            if stop > end:
                break
            first = data[pos]
            opcode = first & 0x0F
            if opcode == 1 and first & 0x80:
                self.on_text(data[pos + head : stop], now)
                if self.state == CLOSED:
                    return
            elif opcode == 8:
                code = (data[pos + head] << 8) | data[pos + head + 1] if size >= 2 else 1005
                self.state = CLOSED
                self.on_close(code)
                abort_with_reset(self.transport)
                return
            elif opcode == 9:  # ping -> pong with the same payload
                self.transport_write(client_frame(data[pos + head : stop], Opcode.PONG))
            elif opcode != 10:  # binary, continuation, fragmented: not ours to handle
                self.fail(f"unexpected frame opcode {opcode}")
                return
            pos = stop
        if pos < end:
            self._buf = data[pos:]

    def transport_write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)
