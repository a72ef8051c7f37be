"""The python-socketio peer: what a Python team using Socket.IO would build, served the
way the Starlette + broadcaster alternative is (uvicorn with uvicorn[standard]'s
defaults: uvloop, httptools, websockets-sansio), to compare our server with on the same
workload (``fanout.py --servers python-socketio``).

python-socketio 5.x's ``AsyncServer`` in ASGI mode, WebSocket transport only (no HTTP
long-polling, no per-message compression), pings every 10 minutes (they cannot be turned
off; the other servers' are off; ``--ping-interval`` sets it, and the time allowed for
the answer is the same, at most 60 s: the tests check that the generator answers).

A client connects with its HS256 token as the auth payload (``{"token": "<jwt>"}``);
the ``connect`` handler verifies it with PyJWT (HS256 pinned, ``exp`` required) and
refuses the connect (a connect error) otherwise, then enters the connection into one
room per channel of the token's ``channels`` claim (one room per document). ``POST
/api/publish`` (``{"channel", "data"}``) and ``POST /api/batch`` (``{"commands":
[{"publish": {...}}, ...]}``) with ``X-API-Key`` (a small Starlette app beside the
Socket.IO one) emit each publication to its room with ``sio.emit("pub", {"channel",
"data", "offset"}, room=channel)``: the library's own fan-out (one packet encoded once,
one task per recipient). Both routes are served on both ports (``--port``,
``--api-port``), as for the other servers. The secret and the API key come from the
environment (``BENCH_JWT_SECRET``, ``BENCH_API_KEY``; by default the benchmarks').

Run: ``python bench/python_socketio_server.py --port 9000 --api-port 9001``.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
from typing import Any, Final

from common import API_KEY, JWT_SECRET, raise_nofile, require_peer, serve_uvicorn

require_peer("python-socketio")  # one line naming what to install

import jwt  # noqa: E402 - after the check above
import orjson  # noqa: E402
import socketio  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import Response  # noqa: E402
from starlette.routing import Route  # noqa: E402

__all__ = ["build_app", "main"]

_RESULT: Final = b'{"result":{}}'
_BAD_REQUEST: Final = {"error": {"code": 107, "message": "bad request"}}
BATCH_MAX: Final = 100


def build_app(
    secret: str = JWT_SECRET, api_key: str = API_KEY, ping_interval: float = 600.0
) -> socketio.ASGIApp:
    sio = socketio.AsyncServer(
        async_mode="asgi",
        transports=["websocket"],
        ping_interval=ping_interval,
        ping_timeout=min(ping_interval, 60.0),
        max_http_buffer_size=65536,  # the same frame size limit as the others
        http_compression=False,
    )
    offsets = itertools.count(1)

    @sio.event
    async def connect(sid: str, environ: dict[str, Any], auth: object) -> None:
        token = auth.get("token") if isinstance(auth, dict) else None
        try:
            claims = jwt.decode(
                str(token), secret, algorithms=["HS256"], options={"require": ["exp"]}
            )
        except jwt.InvalidTokenError:
            raise socketio.exceptions.ConnectionRefusedError("invalid token") from None
        for channel in claims.get("channels") or ():
            await sio.enter_room(sid, str(channel))

    async def emit(body: object) -> bool:
        if not isinstance(body, dict) or not isinstance(body.get("channel"), str):
            return False
        channel = body["channel"]
        pub = {"channel": channel, "data": body.get("data"), "offset": next(offsets)}
        await sio.emit("pub", pub, room=channel)
        return True

    async def read(request: Request) -> object:
        try:
            return orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return None

    async def publish(request: Request) -> Response:
        if request.headers.get("x-api-key") != api_key:
            return Response(status_code=401)
        if not await emit(await read(request)):
            return Response(orjson.dumps(_BAD_REQUEST), media_type="application/json")
        return Response(_RESULT, media_type="application/json")

    async def batch(request: Request) -> Response:
        if request.headers.get("x-api-key") != api_key:
            return Response(status_code=401)
        body = await read(request)
        commands = body.get("commands") if isinstance(body, dict) else None
        if not isinstance(commands, list) or not 0 < len(commands) <= BATCH_MAX:
            return Response(orjson.dumps(_BAD_REQUEST), media_type="application/json")
        replies: list[object] = []
        for command in commands:
            ok = isinstance(command, dict) and await emit(command.get("publish"))
            replies.append({"publish": {}} if ok else _BAD_REQUEST)
        reply = orjson.dumps({"result": {"replies": replies}})
        return Response(reply, media_type="application/json")

    api = Starlette(
        routes=[
            Route("/api/publish", publish, methods=["POST"]),
            Route("/api/batch", batch, methods=["POST"]),
        ]
    )
    return socketio.ASGIApp(sio, other_asgi_app=api)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--port", type=int, required=True, help="WebSocket port")
    parser.add_argument("--api-port", type=int, required=True, help="publish trigger port")
    parser.add_argument(
        "--ping-interval", type=float, default=600.0, help="seconds between pings (600)"
    )
    args = parser.parse_args(argv)
    raise_nofile()
    app = build_app(
        os.environ.get("BENCH_JWT_SECRET") or JWT_SECRET,
        os.environ.get("BENCH_API_KEY") or API_KEY,
        args.ping_interval,
    )
    return serve_uvicorn(app, args.port, args.api_port)


if __name__ == "__main__":
    sys.exit(main())
