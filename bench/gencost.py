"""The load generator's CPU per delivery, in process: its Python path, no sockets.

Builds N server frames of publication pushes (the broadcast scenario's data: ``s``,
``t``, ``type``, plus ``--pad`` bytes), then feeds them to one connection's
``data_received`` (:class:`~realtime_server.loadtest.clients.Conn`, over a transport
that drops what is written) as the event loop hands over reads, ``--per-frame`` pushes
per frame (the server coalesces pushes that wait together). Each repeat starts with a
fresh generator and checks every publication was counted, none lost or duplicated.
The figure is the process's CPU time per delivery: the minimum and the median of
``--repeat`` runs (the machine is shared; the minimum is the least disturbed).

    .venv/bin/python bench/gencost.py [--deliveries N] [--pad BYTES] [--per-frame K]
        [--repeat R]

The generator must stay well below the server's cost per delivery (see
``realtime_server/loadtest/wsclient.py``); the kernel's share (reads, ACKs) is not in
this figure.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

import orjson

from realtime_server.frames import text_frame
from realtime_server.loadtest.clients import Conn, User
from realtime_server.loadtest.generator import Generator
from realtime_server.loadtest.wsclient import OPEN


class _Sink:
    """A transport that drops what is written."""

    def write(self, data: bytes) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


def _frames(deliveries: int, pad: int, per_frame: int) -> list[bytes]:
    pushes = []
    for seq in range(1, deliveries + 1):
        data: dict[str, Any] = {"s": seq, "t": time.time_ns(), "type": "announcement"}
        if pad:
            data["pad"] = "x" * pad
        pub = {"data": data, "offset": seq}
        pushes.append(orjson.dumps({"push": {"channel": "lt-run:doc:0", "pub": pub}}))
    return [
        text_frame(b"\n".join(pushes[i : i + per_frame])) for i in range(0, deliveries, per_frame)
    ]


def _run(frames: list[bytes], deliveries: int, loop: asyncio.AbstractEventLoop) -> float:
    gen = Generator(None)  # type: ignore[arg-type]  # no control pipe: nothing is sent
    user = User("u1", ("user:u1", "lt-run:doc:0"), "token", True)
    done: asyncio.Future[str | None] = loop.create_future()
    conn = Conn(gen, user, b"", b"", done)
    conn.transport = _Sink()  # type: ignore[assignment]
    conn.state = OPEN
    feed = conn.data_received
    start = time.process_time()
    for frame in frames:
        feed(frame)
    spent = time.process_time() - start
    c = gen.c
    assert c.received == deliveries and c.gaps == 0 and c.duplicates == 0, c
    return spent / deliveries * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deliveries", type=int, default=200_000)
    parser.add_argument("--pad", type=int, default=0, help="bytes added to each data")
    parser.add_argument("--per-frame", type=int, default=1, help="pushes per frame")
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    frames = _frames(args.deliveries, args.pad, args.per_frame)
    loop = asyncio.new_event_loop()
    try:
        runs = [_run(frames, args.deliveries, loop) for _ in range(args.repeat)]
    finally:
        loop.close()
    print(
        f"{len(frames[0])}-byte frames, {args.per_frame} push(es) each: "
        f"{min(runs):.2f} us per delivery (min of {args.repeat}), "
        f"median {statistics.median(runs):.2f}"
    )


if __name__ == "__main__":
    main()
