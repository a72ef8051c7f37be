"""The floor: the cheapest Python WebSocket fan-out we know, to compare our server with.

A websockets asyncio server (uvloop, no compression, no keepalive pings: the same
options as ours) that keeps a set of open connections. Its publish trigger is the same
kind of request as our server's HTTP API, on the same HTTP stack (aiohttp): ``POST
/api/publish`` with ``X-API-Key`` and ``{"channel": ..., "data": ...}``, so that the
trigger costs the same on both sides. On each publish it builds the same ``pub`` push
our server sends (``{"push":{"channel":...,"pub":{"data":...,"offset":N}}}``) and writes
it to every open connection:

- ``--fanout write`` (default): one pre-serialized WebSocket frame (server frames are
  unmasked, so the same bytes serve everyone) appended to each transport: nothing
  per connection but a state check and ``transport.write``.
- ``--fanout broadcast``: ``websockets.asyncio.server.broadcast(conns, payload,
  text=True)``, the library's own API, which frames the payload once per connection.

``POST /api/batch`` (``{"commands": [{"publish": {...}}, ...]}``, our API's batch)
publishes each command's publication the same way, one after the other: the way a
server without coalescing answers a burst, each publication's frame written to every
connection (one ``write`` per publication per connection; ours writes a burst to a
connection in two).

A client's first message (the protocol's ``connect`` command) is answered with a
minimal connect reply and is not checked: the floor authenticates nobody.

Run: ``python bench/floor_server.py --port 9000 --api-port 9001``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from typing import Final

import orjson
import uvloop
from aiohttp import web
from common import API_KEY, HOST, raise_nofile
from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.protocol import State

__all__ = ["FloorServer", "main"]

_CONNECT_REPLY: Final = b'{"id":1,"connect":{"client":"floor","version":"0"}}'
_RESULT: Final = b'{"result":{}}'
_PUBLISHED: Final = b'{"publish":{}}'


class FloorServer:
    """Open connections and a publish handler; nothing else."""

    def __init__(self, fanout: str, api_key: str = API_KEY) -> None:
        self.conns: set[ServerConnection] = set()
        self.fanout = fanout
        self.offset = 0
        self._api_key = api_key

    async def handler(self, ws: ServerConnection) -> None:
        try:
            await ws.recv()  # the connect command; accepted as is
            await ws.send(_CONNECT_REPLY, text=True)
        except ConnectionClosed:
            return
        self.conns.add(ws)
        try:
            await ws.wait_closed()
        finally:
            self.conns.discard(ws)

    def publish(self, channel: str, data: object) -> None:
        self.offset += 1
        payload = b"".join(
            (
                b'{"push":{"channel":',
                orjson.dumps(channel),
                b',"pub":{"data":',
                orjson.dumps(data),
                b',"offset":',
                str(self.offset).encode(),
                b"}}}",
            )
        )
        if self.fanout == "broadcast":
            broadcast(self.conns, payload, text=True)
            return
        frame = Frame(Opcode.TEXT, payload).serialize(mask=False, extensions=[])
        for ws in self.conns:
            if ws.protocol.state is State.OPEN:
                ws.transport.write(frame)

    async def http_publish(self, request: web.Request) -> web.Response:
        if request.headers.get("X-API-Key") != self._api_key:
            return web.Response(status=401)
        params = orjson.loads(await request.read())
        self.publish(params["channel"], params["data"])
        return web.Response(body=_RESULT, content_type="application/json")

    async def http_batch(self, request: web.Request) -> web.Response:
        if request.headers.get("X-API-Key") != self._api_key:
            return web.Response(status=401)
        commands = orjson.loads(await request.read())["commands"]
        for command in commands:
            params = command["publish"]
            self.publish(params["channel"], params["data"])
        replies = b",".join([_PUBLISHED] * len(commands))
        body = b'{"result":{"replies":[' + replies + b"]}}"
        return web.Response(body=body, content_type="application/json")


async def serve_floor(port: int, api_port: int, fanout: str) -> None:
    floor = FloorServer(fanout)
    app = web.Application()
    app.router.add_post("/api/publish", floor.http_publish)
    app.router.add_post("/api/batch", floor.http_batch)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, HOST, api_port, reuse_address=True).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with serve(
        floor.handler,
        HOST,
        port,
        compression=None,
        ping_interval=None,
        ping_timeout=None,
        max_size=65536,
        max_queue=16,
        close_timeout=1,
        reuse_address=True,
    ) as server:
        await stop.wait()
        server.close(close_connections=False)
        for ws in list(floor.conns):
            ws.transport.abort()
    with contextlib.suppress(Exception):
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="WebSocket port")
    parser.add_argument("--api-port", type=int, required=True, help="publish trigger port")
    parser.add_argument("--fanout", choices=("write", "broadcast"), default="write")
    args = parser.parse_args(argv)
    raise_nofile()
    uvloop.run(serve_floor(args.port, args.api_port, args.fanout))
    return 0


if __name__ == "__main__":
    sys.exit(main())
