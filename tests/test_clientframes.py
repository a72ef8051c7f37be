"""Client frames read without websockets' parser (clientframes.py, wsconn.py) read as
websockets reads them.

Two checks, each against websockets itself: :func:`plain_frame` accepts only frames
websockets' parser turns into the same single message; and a connection opened by the
fast handshake (which reads plain frames itself and hands the rest of the stream to
websockets) receives the same messages, writes the same bytes and ends with the same
close code as one whose every byte goes through websockets, for any sequence of frames,
valid or hostile, split over reads anywhere.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import struct
from collections.abc import Callable, Coroutine
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.utils import apply_mask

from realtime_server.clientframes import plain_frame
from realtime_server.loadtest.wsclient import upgrade_request
from realtime_server.wsconn import WsConnection
from realtime_server.wsendpoint import Endpoint

MAX_SIZE = 300
PATH = "/connection/websocket"


def frame_bytes(
    first: int, payload: bytes, *, masked: bool = True, width: int | None = None
) -> bytes:
    """A frame with header byte ``first``; ``width`` forces the length's encoding
    (7, 16 or 64 bits) whatever the length."""
    n = len(payload)
    width = width or (7 if n < 126 else 16 if n < 65536 else 64)
    mask_bit = 0x80 if masked else 0
    if width == 7:
        head = bytes((first, mask_bit | n))
    elif width == 16:
        head = bytes((first, mask_bit | 126)) + struct.pack("!H", n)
    else:
        head = bytes((first, mask_bit | 127)) + struct.pack("!Q", n)
    if not masked:
        return head + payload
    key = os.urandom(4)
    return head + key + apply_mask(payload, key)


# --- plain_frame against websockets' parser ---------------------------------------------

_FIRST_BYTES = st.sampled_from(
    [0x81, 0x82, 0x01, 0x02, 0x80, 0x88, 0x89, 0x8A, 0xC1, 0xA1, 0x91, 0x83, 0x8B, 0x00]
)


@settings(max_examples=400, deadline=None)
@given(
    first=_FIRST_BYTES,
    payload=st.binary(max_size=400),
    masked=st.booleans(),
    width=st.sampled_from([None, 16, 64]),
    cut=st.integers(min_value=0, max_value=8),
    prefix=st.binary(max_size=3),
)
def test_plain_frames_are_what_websockets_reads(
    first: int, payload: bytes, masked: bool, width: int | None, cut: int, prefix: bytes
) -> None:
    data = prefix + frame_bytes(first, payload, masked=masked, width=width)
    if cut:
        data = data[: max(len(prefix), len(data) - cut)]
    found = plain_frame(data, len(prefix), MAX_SIZE)
    if found is None:
        return
    message, text, end = found
    protocol = ServerProtocol(state=State.OPEN, max_size=MAX_SIZE)
    protocol.receive_data(data[len(prefix) : end])
    events = protocol.events_received()
    assert protocol.parser_exc is None and protocol.state is State.OPEN
    assert len(events) == 1
    (event,) = events
    assert isinstance(event, Frame) and event.fin
    assert event.opcode is (Opcode.TEXT if text else Opcode.BINARY)
    assert event.data == message
    assert end == len(prefix) + len(frame_bytes(first, payload, masked=masked, width=width))


def test_the_common_frames_are_plain() -> None:
    """What clients send (masked text commands, 7- and 16-bit lengths, binary) is read
    here; a test that can fail if the fast reader stopped reading anything."""
    for first, size in ((0x81, 0), (0x81, 40), (0x81, 125), (0x81, 126), (0x82, 300)):
        payload = os.urandom(size)
        data = frame_bytes(first, payload)
        assert plain_frame(data, 0, MAX_SIZE) == (payload, first == 0x81, len(data))
    for refused in (
        frame_bytes(0x81, b"x" * (MAX_SIZE + 1)),  # too big: websockets answers 1009
        frame_bytes(0x81, b"x", masked=False),  # 1002
        frame_bytes(0x01, b"x"),  # a fragment
        frame_bytes(0x89, b"x"),  # a ping
        frame_bytes(0xC1, b"x"),  # a reserved bit
        frame_bytes(0x81, b"x", width=64),
        frame_bytes(0x81, b"hello")[:-1],  # not all here yet
    ):
        assert plain_frame(refused, 0, MAX_SIZE) is None


# --- a whole connection, both ways ------------------------------------------------------


class _Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closing = False
        self.aborted = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def write(self, data: bytes) -> None:
        self.written.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = self.aborted = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.closing = True

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def _opened(
    make: Callable[..., ServerProtocol],
    handler: Callable[[WsConnection], Coroutine[Any, Any, None]],
    direct: bool,
) -> tuple[WsConnection, _Transport]:
    """A connection after its upgrade: by the fast handshake when ``direct``, else by
    websockets' (no WebSocket path set), with its protocol made at once."""
    endpoint: Endpoint[WsConnection] = Endpoint(
        make_protocol=make,
        routes=lambda conn, request: None,
        handler=handler,
        open_timeout=60.0,
        write_cap=1 << 20,
        max_size=MAX_SIZE,
        ws_path=PATH if direct else None,
    )
    endpoint.loop = asyncio.get_running_loop()
    conn = WsConnection(endpoint)
    transport = _Transport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    request, _ = upgrade_request("127.0.0.1", 80, PATH)
    conn.data_received(request)
    return conn, transport


def _split(stream: bytes, cuts: list[int]) -> list[bytes]:
    """``stream`` in reads split at ``cuts``."""
    bounds = [0, *sorted({c for c in cuts if 0 < c < len(stream)}), len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(bounds) if b > a]


def _as_handed_over(stream: bytes, cuts: list[int]) -> list[bytes]:
    """The reads that give websockets alone what the fast path gives it: each frame the
    fast path reads, alone (websockets would read it the same, as the first test
    checks); from the first frame it does not read (not plain, or split by a read
    boundary), the rest of the stream as it arrived."""
    reads: list[bytes] = []
    pos = 0
    boundaries = sorted(set(cuts))
    while pos < len(stream):
        found = plain_frame(stream, pos, MAX_SIZE)
        if found is None or any(pos < c < found[2] for c in boundaries):
            break
        reads.append(stream[pos : found[2]])
        pos = found[2]
    return reads + _split(stream[pos:], [c - pos for c in boundaries if c > pos])


async def _run(reads: list[bytes], direct: bool) -> tuple[Any, ...]:
    """Feed ``reads`` after an upgrade; return what the handler received, what was
    written after the 101, whether the socket was aborted, and the close code."""
    received: list[str | bytes] = []

    async def handler(conn: WsConnection) -> None:
        try:
            while True:
                received.append(await conn.recv())
        except ConnectionClosed:
            pass

    conn, transport = _opened(ServerProtocol, handler, direct)
    assert conn._direct is direct
    handshake = len(transport.written)
    for data in reads:
        if not transport.closing:
            conn.data_received(data)
        for _ in range(3):
            await asyncio.sleep(0)  # the handler reads what arrived
    writable = conn.writable
    conn.connection_lost(None)
    for _ in range(3):
        await asyncio.sleep(0)
    return received, transport.written[handshake:], transport.aborted, writable, conn.close_code


_FRAMES = st.one_of(
    st.builds(
        lambda s, w: frame_bytes(0x81, s.encode(), width=w),
        st.text(max_size=60),
        st.sampled_from([None, 16]),
    ),
    st.builds(lambda b: frame_bytes(0x82, b), st.binary(max_size=60)),
    st.builds(lambda b: frame_bytes(0x81, b), st.binary(max_size=20)),  # maybe bad UTF-8
    st.builds(lambda b: frame_bytes(0x01, b), st.binary(max_size=20)),  # fragment start
    st.builds(lambda b: frame_bytes(0x80, b), st.binary(max_size=20)),  # last fragment
    st.builds(lambda b: frame_bytes(0x89, b), st.binary(max_size=20)),  # ping
    st.builds(lambda b: frame_bytes(0x8A, b), st.binary(max_size=20)),  # pong
    st.just(frame_bytes(0x88, struct.pack("!H", 1000))),  # close
    st.just(frame_bytes(0x81, b"x" * (MAX_SIZE + 1))),  # too big
    st.just(frame_bytes(0x81, b"{}", masked=False)),
    st.just(frame_bytes(0xC1, b"{}")),  # a reserved bit
    st.just(frame_bytes(0x81, b"{}", width=64)),
)


@settings(max_examples=150, deadline=None)
@given(
    frames=st.lists(_FRAMES, max_size=8),
    cuts=st.lists(st.integers(min_value=0, max_value=600), max_size=4),
)
async def test_a_connection_reads_as_websockets_does(frames: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(frames)
    ours = await _run(_split(stream, cuts), direct=True)
    theirs = await _run(_as_handed_over(stream, cuts), direct=False)
    assert ours == theirs


async def test_a_plain_connection_makes_no_protocol_object() -> None:
    """Plain frames only: websockets' protocol is made when the connection ends, not
    before (a test that fails if the fast path stopped being taken)."""
    made: list[ServerProtocol] = []

    def make(**kwargs: Any) -> ServerProtocol:
        made.append(ServerProtocol(**kwargs))
        return made[-1]

    received: list[str | bytes] = []

    async def handler(conn: WsConnection) -> None:
        received.append(await conn.recv())
        received.append(await conn.recv())
        await conn.recv()  # idle until the connection goes

    conn, _ = _opened(make, handler, direct=True)
    conn.data_received(frame_bytes(0x81, b'{"id":1}'))
    conn.data_received(frame_bytes(0x81, b'{"id":2}'))
    task = conn.handler_task
    assert task is not None
    while len(received) < 2:
        await asyncio.sleep(0)
    assert received == ['{"id":1}', '{"id":2}']
    assert not made and conn.writable
    conn.connection_lost(None)
    assert len(made) == 1 and conn.close_code == 1006 and not conn.writable
    await asyncio.wait_for(task, 5)  # its close returns: the socket is gone


async def test_no_data_frame_follows_a_close() -> None:
    """Once the client's close frame is read, or its stream failed the connection, the
    connection is no longer writable (the session writes nothing more), whichever
    reader read it."""
    for frames in (
        [frame_bytes(0x88, struct.pack("!H", 1000))],
        [frame_bytes(0x81, b"{}"), frame_bytes(0x88, b"")],
        [frame_bytes(0x81, b"{}", masked=False)],
        [frame_bytes(0x81, b"\xff")],
        [frame_bytes(0x89, b""), frame_bytes(0x80, b"")],
    ):
        for direct in (True, False):
            for reads in ([b"".join(frames)], frames):
                _, written, _, writable, _ = await _run(reads, direct)
                assert not writable, (frames, direct)
                assert written and written[-1][0] == 0x88  # our close frame, last
    _, _, _, writable, _ = await _run([frame_bytes(0x81, b"{}")], True)
    assert writable
