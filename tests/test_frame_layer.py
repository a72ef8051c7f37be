"""The WebSocket frame layer (realtime_server.wsconn) against hand-made frames.

A raw TCP client sends exactly the bytes under test (fragments, control frames, bad
UTF-8, unmasked frames, reserved bits, oversized fragments, pipelined messages) and reads
the server's frames back: each case gets the RFC 6455 close code, and the server keeps
serving the others.
"""

from __future__ import annotations

import asyncio
import base64
import os
import struct

import orjson
import pytest
from websockets.frames import Close, Frame, Opcode

from realtime_server.app import Running

from .conftest import StartServer
from .helpers import MS, token

WAIT = 2000 * MS


def raw_frame(frame: Frame, mask: bool = True) -> bytes:
    """A frame's bytes, without websockets' checks (reserved bits, control frames)."""
    first = (0x80 if frame.fin else 0) | (0x40 if frame.rsv1 else 0) | frame.opcode
    data = bytes(frame.data)
    length = len(data)
    if length < 126:
        head = struct.pack("!BB", first, (0x80 if mask else 0) | length)
    elif length < 65536:
        head = struct.pack("!BBH", first, (0x80 if mask else 0) | 126, length)
    else:
        head = struct.pack("!BBQ", first, (0x80 if mask else 0) | 127, length)
    if not mask:
        return head + data
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(data))


class Raw:
    """A WebSocket client that writes raw frames and parses the server's."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, server: Running) -> Raw:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                "GET /connection/websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
        assert head.startswith(b"HTTP/1.1 101 "), head
        return cls(reader, writer)

    def send(self, frame: Frame, mask: bool = True) -> None:
        self.writer.write(raw_frame(frame, mask))

    def text(self, payload: bytes, fin: bool = True, opcode: Opcode = Opcode.TEXT) -> None:
        self.send(Frame(opcode, payload, fin=fin))

    async def frame(self) -> tuple[Opcode, bytes]:
        first, second = await asyncio.wait_for(self.reader.readexactly(2), WAIT)
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", await self.reader.readexactly(8))
        return Opcode(first & 0x0F), await self.reader.readexactly(length)

    async def close_code(self) -> int:
        """The code of the server's close frame (skipping data frames), then EOF."""
        while True:
            opcode, data = await self.frame()
            if opcode is Opcode.CLOSE:
                code = Close.parse(data).code
                assert await asyncio.wait_for(self.reader.read(), WAIT) == b""
                return code

    async def reply(self) -> dict[str, object]:
        opcode, data = await self.frame()
        assert opcode is Opcode.TEXT
        return dict(orjson.loads(data.split(b"\n", 1)[0]))

    def connect_command(self, user: str = "42") -> bytes:
        return orjson.dumps({"id": 1, "connect": {"token": token(user)}})


async def test_fragmented_connect_is_assembled(server: Running) -> None:
    raw = await Raw.open(server)
    command = raw.connect_command()
    raw.text(command[:10], fin=False)
    raw.send(Frame(Opcode.PING, b"in between"))  # control frames may interleave
    raw.text(command[10:30], fin=False, opcode=Opcode.CONT)
    raw.text(command[30:], fin=True, opcode=Opcode.CONT)
    assert await raw.frame() == (Opcode.PONG, b"in between")
    assert "connect" in await raw.reply()


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        ([Frame(Opcode.TEXT, b'{"id":1,"connect":"\xff\xfe"}')], 1007),
        ([Frame(Opcode.CONT, b"nothing to continue")], 1002),
        ([Frame(Opcode.TEXT, b"{", fin=False), Frame(Opcode.TEXT, b"}")], 1002),
        ([Frame(Opcode.PING, b"x" * 126)], 1002),
        ([Frame(Opcode.PING, b"", fin=False)], 1002),
        ([Frame(Opcode.TEXT, b"{}", rsv1=True)], 1002),
        ([Frame(Opcode.TEXT, b"x" * 1500, fin=False), Frame(Opcode.CONT, b"x" * 1500)], 1009),
        ([Frame(Opcode.BINARY, b"\x00\x01")], 3501),
    ],
    ids=[
        "bad utf-8",
        "lone continuation",
        "text inside a fragmented message",
        "long ping",
        "fragmented ping",
        "reserved bit",
        "fragments over the size limit",
        "binary",
    ],
)
async def test_hostile_frames_get_their_close_code(
    start_server: StartServer, frames: list[Frame], code: int
) -> None:
    server = await start_server(MAX_MESSAGE_SIZE=2048)
    raw = await Raw.open(server)
    for frame in frames:
        raw.send(frame)
    assert await raw.close_code() == code
    # and the server still serves everyone else
    other = await Raw.open(server)
    other.writer.write(
        Frame(Opcode.TEXT, other.connect_command("7")).serialize(mask=True, extensions=[])
    )
    assert "connect" in await other.reply()


async def test_unmasked_client_frame_closes_1002(server: Running) -> None:
    raw = await Raw.open(server)
    raw.send(Frame(Opcode.TEXT, raw.connect_command()), mask=False)
    assert await raw.close_code() == 1002


async def test_client_close_is_echoed(server: Running) -> None:
    raw = await Raw.open(server)
    raw.text(raw.connect_command())
    assert "connect" in await raw.reply()
    raw.send(Frame(Opcode.CLOSE, Close(4000, "bye").serialize()))
    assert await raw.close_code() == 4000


async def test_pipelined_messages_beyond_the_queue_are_all_answered(server: Running) -> None:
    """More messages than the connection queues (16) in one write: reading pauses and
    resumes, and every command gets its reply, in order."""
    raw = await Raw.open(server)
    data = raw_frame(Frame(Opcode.TEXT, raw.connect_command()))
    for i in range(2, 60):
        command = orjson.dumps({"id": i, "presence_stats": {"channel": "user:42"}})
        data += raw_frame(Frame(Opcode.TEXT, command))
    raw.writer.write(data)
    ids = []
    while len(ids) < 59:
        opcode, payload = await raw.frame()
        assert opcode is Opcode.TEXT
        ids += [orjson.loads(line)["id"] for line in payload.split(b"\n")]
    assert ids == list(range(1, 60))


async def test_request_and_first_frame_in_one_write(server: Running) -> None:
    """A client that sends its connect command right behind the upgrade request."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    key = base64.b64encode(os.urandom(16)).decode()
    command = orjson.dumps({"id": 1, "connect": {"token": token("42")}})
    writer.write(
        (
            "GET /connection/websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        + raw_frame(Frame(Opcode.TEXT, command))
    )
    await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
    assert "connect" in await Raw(reader, writer).reply()
