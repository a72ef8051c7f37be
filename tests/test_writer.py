"""Coalesced writes (realtime_server/writer.py): what a connection gets in one loop
iteration after its first message reaches it as one frame, built once for every
connection that got the same messages, bounded, and in order with replies and the close
frame."""

from __future__ import annotations

import asyncio

import orjson

from realtime_server.app import Running
from realtime_server.channels.engine import ControlMessage
from realtime_server.frames import text_frame
from realtime_server.writer import MAX_BATCH_MESSAGES, Writer

from .conftest import connected
from .helpers import MS, sub_token


class Sink:
    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def write_frame(self, frame: bytes) -> None:
        self.frames.append(frame)


async def test_what_follows_a_first_write_goes_out_as_one_shared_frame() -> None:
    writer = Writer()
    a, b, c = Sink(), Sink(), Sink()
    burst = [b'{"n":%d}' % i for i in range(3)]
    for payload in burst:
        for sink in (a, b):
            writer.queue(sink, payload)
    writer.queue(c, burst[0])
    assert a.frames == b.frames == c.frames == []  # nothing before the iteration ends
    epoch = writer.epoch
    await asyncio.sleep(0)
    assert writer.epoch is not epoch  # the iteration ended
    assert len(a.frames) == len(b.frames) == 1
    assert a.frames[0] is b.frames[0]  # built once for both
    assert a.frames[0] == text_frame(b"\n".join(burst))
    assert c.frames == [text_frame(burst[0])]
    assert (writer.frames, writer.messages) == (3, 7)


async def test_a_full_batch_is_written_at_once() -> None:
    writer = Writer()
    sink = Sink()
    for i in range(MAX_BATCH_MESSAGES):
        writer.queue(sink, b"%d" % i)
    assert len(sink.frames) == 1  # written without waiting for the iteration to end
    writer.queue(sink, b'"big"' + b" " * 70_000)
    writer.queue(sink, b"1")
    assert len(sink.frames) == 2  # past the byte bound too
    await asyncio.sleep(0)
    assert sink.frames[1].endswith(b"\n1")


async def test_a_burst_reaches_a_client_in_two_frames(server: Running) -> None:
    """The first publication at once, as the frame fan-out built for everyone; the four
    behind it in the same iteration as one frame."""
    client = await connected(server, "42")
    channel = "document:7"
    await client.call("subscribe", {"channel": channel, "token": sub_token("42", channel)})
    written = server.node.writer.frames
    # Five publications in one loop iteration (the embedded broker delivers at once).
    await asyncio.gather(*(server.node.ops.publish(channel, b"%d" % i) for i in range(5)))
    pubs: list[list[int]] = []
    while sum(map(len, pubs)) < 5:
        frame = await asyncio.wait_for(client.ws.recv(), 2000 * MS)
        lines = [orjson.loads(line) for line in str(frame).split("\n")]
        if "pub" in lines[0].get("push", {}):  # (not this client's own join push)
            pubs.append([m["push"]["pub"]["data"] for m in lines])
    assert pubs == [[0], [1, 2, 3, 4]]
    assert server.node.writer.frames == written + 1


async def test_what_was_queued_before_a_close_goes_out_before_the_close_frame(
    server: Running,
) -> None:
    client = await connected(server, "42")
    channel = "document:7"
    await client.call("subscribe", {"channel": channel, "token": sub_token("42", channel)})
    control = server.node.control
    control.handle_control(ControlMessage("unsubscribe", {"user": "42", "channel": channel}))
    control.handle_control(ControlMessage("disconnect", {"user": "42", "code": 4100}))
    push = await client.push("unsubscribe")
    assert push["unsubscribe"]["code"] == 2000
    assert (await client.closed())[0] == 4100


async def test_coalescing_and_gc_pauses_are_on_metrics(server: Running) -> None:
    import gc

    from realtime_server import gcpolicy

    thresholds, callbacks = gc.get_threshold(), list(gc.callbacks)
    gcpolicy.time_pauses()
    try:
        before = gcpolicy.PAUSES.count
        gc.collect()
        assert gcpolicy.PAUSES.count > before
    finally:  # the test process keeps its own collector settings
        gc.set_threshold(*thresholds)
        gc.callbacks[:] = callbacks
    text = server.node.metrics.render().decode()
    assert "realtime_gc_pause_seconds_count" in text
    assert "realtime_coalesced_frames_total" in text
