"""The load generator's client counts every delivery right, whatever the reads look like.

In process, no sockets: server frames (:func:`realtime_server.frames.text_frame`) are fed
to a :class:`~realtime_server.loadtest.clients.Conn`'s ``data_received`` the way the
event loop hands over reads (one whole frame per read, the common case its fast path
takes; several frames, parts of frames, several replies in one frame), and the
:class:`~realtime_server.loadtest.generator.Generator` that owns it counts.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator
from multiprocessing import Pipe
from typing import Any, cast

import orjson
import pytest

from realtime_server.frames import text_frame
from realtime_server.loadtest.clients import Conn, User
from realtime_server.loadtest.generator import Generator
from realtime_server.loadtest.stats import BUCKETS, Histogram, bucket_of
from realtime_server.loadtest.wsclient import CLOSED, CONNECTING, OPEN


class _Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def close(self) -> None:
        self.closed = True


class _Rig:
    """A generator with one steady user on ``user:u1`` and ``doc:1``, connected."""

    def __init__(self, loop: asyncio.AbstractEventLoop, ctrl: Any) -> None:
        self.loop = loop
        self.gen = Generator(ctrl)
        self.gen.reconnect = False
        self.user = User("u1", ("user:u1", "doc:1"), "token", True)
        self.conn = self.connect()

    def connect(self) -> Conn:
        """A new connection of the user, open (its connect answered)."""
        done: asyncio.Future[str | None] = self.loop.create_future()
        done.set_result(None)
        conn = Conn(self.gen, self.user, b"", b"", done)
        conn.transport = cast(Any, _Transport())
        conn.state = OPEN
        self.user.conn = conn
        self.gen.c.open_now += 1
        return conn

    def feed(self, *reads: bytes) -> None:
        for data in reads:
            self.conn.data_received(data)

    @property
    def written(self) -> list[bytes]:
        transport = self.conn.transport
        assert isinstance(transport, _Transport)
        return transport.written


@pytest.fixture
def rig() -> Iterator[_Rig]:
    loop = asyncio.new_event_loop()
    ctrl, other = Pipe()
    try:
        yield _Rig(loop, ctrl)
    finally:
        ctrl.close()
        other.close()
        loop.close()


def _pub(seq: int, channel: str = "doc:1", pad: int = 0, offset: int | None = None) -> bytes:
    data: dict[str, Any] = {"s": seq, "t": time.time_ns(), "type": "announcement"}
    if pad:
        data["pad"] = "x" * pad
    pub = {"data": data, "offset": seq if offset is None else offset}
    return orjson.dumps({"push": {"channel": channel, "pub": pub}})


def _client_payload(frame: bytes) -> tuple[int, bytes]:
    """The opcode and unmasked payload of a client frame (under 64 KiB)."""
    assert frame[0] & 0x80 and frame[1] & 0x80
    head = 4 if frame[1] & 0x7F == 126 else 2
    key, body = frame[head : head + 4], frame[head + 4 :]
    return frame[0] & 0x0F, bytes(b ^ key[i % 4] for i, b in enumerate(body))


def test_each_frame_size_is_counted(rig: _Rig) -> None:
    frames = [
        text_frame(_pub(1)),  # under 126 bytes: one length byte
        text_frame(_pub(2, pad=200)),  # a 16-bit length
        text_frame(_pub(3, pad=70_000)),  # a 64-bit length (not the fast path)
        text_frame(_pub(4)),
    ]
    assert len(frames[0]) < 128 and frames[1][1] == 126 and frames[2][1] == 127
    rig.feed(*frames)
    more = [text_frame(_pub(seq, pad=seq % 2 * 200)) for seq in range(5, 9)]
    rig.feed(more[0] + more[1], more[2] + more[3])  # two frames a read, each size
    c = rig.gen.c
    assert (c.received, c.gaps, c.duplicates, c.foreign) == (8, 0, 0, 0)
    assert c.latency.total == 8 and c.last_recv_ns > 0
    assert rig.user.cursors["doc:1"].nxt == 9
    assert rig.user.cursors["doc:1"].offset == 8


def test_a_frame_read_a_byte_at_a_time(rig: _Rig) -> None:
    for frame in (text_frame(_pub(1)), text_frame(_pub(2, pad=200)), text_frame(b"{}")):
        rig.feed(*(frame[i : i + 1] for i in range(len(frame))))
    assert rig.gen.c.received == 2 and len(rig.written) == 1


def test_gaps_and_duplicates_are_counted_per_channel(rig: _Rig) -> None:
    rig.feed(
        text_frame(_pub(1)),
        text_frame(_pub(4)),  # 2 and 3 lost
        text_frame(_pub(3)),  # late: a duplicate of what the gap counted
        text_frame(_pub(4)),  # a duplicate
        text_frame(_pub(5)),
        text_frame(_pub(2, channel="user:u1")),  # 1 lost on the other channel
    )
    c = rig.gen.c
    assert (c.received, c.gaps, c.duplicates) == (4, 3, 2)
    assert rig.user.cursors["doc:1"].nxt == 6 and rig.user.cursors["user:u1"].nxt == 3


def test_a_churn_user_counts_from_its_first_publication(rig: _Rig) -> None:
    churn = User("c1", ("user:c1",), "token", False)
    rig.user = churn
    rig.conn = rig.connect()
    rig.feed(text_frame(_pub(7, channel="doc:2")), text_frame(_pub(8, channel="doc:2")))
    rig.feed(text_frame(_pub(10, channel="doc:2")))
    c = rig.gen.c
    assert (c.received, c.churn_received, c.gaps, c.duplicates) == (3, 3, 1, 0)
    assert churn.cursors["doc:2"].nxt == 11


def test_several_replies_in_one_frame(rig: _Rig) -> None:
    lines = [
        _pub(1),
        orjson.dumps({"push": {"channel": "doc:1", "join": {"user": "u2"}}}),
        _pub(2),
        b"{}",
        orjson.dumps({"push": {"channel": "doc:1", "leave": {"user": "u2"}}}),
        orjson.dumps({"push": {"channel": "doc:1", "unsubscribe": {"code": 2000}}}),
        _pub(3, channel="user:u1"),
    ]
    rig.feed(text_frame(b"\n".join(lines)))
    c = rig.gen.c
    assert (c.received, c.gaps, c.joins, c.leaves, c.unsubscribe_pushes) == (3, 2, 1, 1, 1)
    assert [_client_payload(f) for f in rig.written] == [(1, b"{}")]


def test_pings_are_answered(rig: _Rig) -> None:
    rig.feed(text_frame(b"{}"), text_frame(b"{}") + text_frame(_pub(1)))
    assert [_client_payload(f) for f in rig.written] == [(1, b"{}"), (1, b"{}")]
    assert rig.gen.c.received == 1


def test_reads_that_split_and_join_frames(rig: _Rig) -> None:
    stream = b"".join(text_frame(_pub(seq, pad=seq * 13 % 300)) for seq in range(1, 201))
    rng = random.Random(7)
    pos = 0
    while pos < len(stream):
        cut = pos + rng.choice((1, 2, 3, 5, 60, 130, 400, 2000))
        rig.feed(stream[pos:cut])
        pos = cut
    c = rig.gen.c
    assert (c.received, c.gaps, c.duplicates) == (200, 0, 0)
    assert rig.conn._buf == b""


@pytest.mark.parametrize("payload", [b'{"push":{"channel":"doc:1","pub":', b"\xff{}"])
def test_a_malformed_frame_fails_the_connection(rig: _Rig, payload: bytes) -> None:
    rig.feed(text_frame(_pub(1)), text_frame(payload), text_frame(_pub(2)))
    c = rig.gen.c
    assert c.received == 1 and c.closes == {"1002": 1} and c.open_now == 0
    assert rig.conn.state == CLOSED and rig.user.conn is None
    transport = rig.conn.transport
    assert isinstance(transport, _Transport) and transport.closed


def test_a_publication_without_the_load_tests_data_is_foreign(rig: _Rig) -> None:
    for data in ({"x": 1}, [1, 2], "text", None):
        push = {"push": {"channel": "doc:1", "pub": {"data": data, "offset": 1}}}
        rig.feed(text_frame(orjson.dumps(push)))
    rig.feed(text_frame(_pub(1)))
    c = rig.gen.c
    assert (c.foreign, c.received, c.gaps) == (4, 1, 0)


def test_a_reconnect_recovers_from_the_last_offset(rig: _Rig) -> None:
    rig.conn.state = CLOSED
    conn = rig.connect()
    conn.state = CONNECTING  # its connect command is answered below
    rig.conn = conn
    missed = [{"data": {"s": 1, "t": time.time_ns()}, "offset": 11}]
    reply = {
        "id": 1,
        "connect": {
            "subs": {
                "doc:1": {"epoch": "e1", "offset": 10, "publications": missed},
                "user:u1": {},
            }
        },
    }
    rig.feed(text_frame(orjson.dumps(reply)))
    assert conn.state == OPEN
    rig.feed(text_frame(_pub(2, offset=12)), text_frame(_pub(3, offset=13)))
    c = rig.gen.c
    assert (c.recovered_pubs, c.received, c.gaps) == (1, 2, 0)
    rig.connect().on_upgraded()
    sent = rig.user.conn
    assert sent is not None and isinstance(sent.transport, _Transport)
    command = orjson.loads(_client_payload(sent.transport.written[-1])[1])
    assert command["connect"]["subs"] == {"doc:1": {"recover": True, "offset": 13, "epoch": "e1"}}


def test_histogram_records_into_the_buckets_of_bucket_of() -> None:
    rng = random.Random(3)
    values = [-5, 0, 1, 127, 128, 129, 5000, (1 << 40) - 1, 1 << 40, 1 << 45, 1 << 45]
    values += [rng.randrange(1 << rng.randrange(1, 44)) for _ in range(5000)]
    h = Histogram()
    expected = [0] * BUCKETS
    for v in values:
        h.record(v)
        expected[bucket_of(v)] += 1
    assert h.counts == expected and h.total == len(values) and h.max_us == 1 << 45
    again = Histogram.from_parts(h.to_bytes(), h.max_us)
    assert again.counts == h.counts and again.total == h.total
    earlier = h.copy()
    h.record(7)
    assert h.minus(earlier).total == 1 and earlier.total == len(values)
