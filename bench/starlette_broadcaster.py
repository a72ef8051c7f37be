"""The alternative: what a Python team would typically build, Starlette + encode/broadcaster
on Redis, served by uvicorn (uvloop, httptools, websockets-sansio: uvicorn[standard]'s
defaults), to compare our server with on the same workload.

The usual pattern from broadcaster's README: each WebSocket endpoint runs two tasks, one
reading the socket, one doing ``async with broadcast.subscribe(channel)`` and
``await websocket.send_text(event.message)`` for every event. A publication goes through
Redis (``broadcast.publish``): one Redis message per publication, then broadcaster's
listener puts it in every subscriber's ``asyncio.Queue``: one task wake-up and one
``send`` per delivery.

Protocol: a client's first message (the ``connect`` command) has its token verified
(HS256, like ours; this is what a real app does before subscribing anyone), and is
answered with a connect reply; the connection is then subscribed to each channel of
the token's ``channels`` claim. ``POST /api/publish`` with ``X-API-Key`` and
``{"channel": ..., "data": ...}`` builds the same push our server sends
(``{"push":{"channel":...,"pub":{"data":...,"offset":N}}}``) and publishes it; ``POST
/api/batch`` (``{"commands": [{"publish": {...}}, ...]}``) publishes each command's
publication in turn. The routes are served on both ports (``--port``, ``--api-port``),
so that the benchmark drives it like the others.

**Fixes applied** (two small subclasses; nothing else of broadcaster is changed):

1. encode/broadcaster 0.3.1 delivers nothing with redis-py 8: its
   ``RedisBackend.subscribe`` sets the listener's ready event *before* awaiting the
   ``SUBSCRIBE``, so the listener starts ``pubsub.listen()`` while redis-py still counts
   no subscribed channel, ``listen()`` returns at once, the listener clears the event and
   waits forever. :class:`FixedRedisBackend` awaits the subscription first, then sets
   the event.
2. Its ``Broadcast.subscribe`` loses subscribers that subscribe to a new channel at the
   same time (see :class:`FixedBroadcast`): fixed, so that every connection counts.

Run: ``python bench/starlette_broadcaster.py --port 9000 --api-port 9001 --redis-url
redis://127.0.0.1:6379/0``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import sys
from collections.abc import AsyncIterator
from typing import Any, Final

from common import API_KEY, JWT_SECRET, raise_nofile, require_bench_deps, serve_uvicorn

require_bench_deps("starlette_broadcaster")  # one line naming what to install

import anyio  # noqa: E402 - after the check above
import jwt  # noqa: E402
import orjson  # noqa: E402
from broadcaster import Broadcast  # noqa: E402
from broadcaster._backends.redis import RedisBackend  # noqa: E402
from broadcaster._base import Event, Subscriber  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import Response  # noqa: E402
from starlette.routing import Route, WebSocketRoute  # noqa: E402
from starlette.websockets import WebSocket, WebSocketDisconnect  # noqa: E402

__all__ = ["FixedRedisBackend", "build_app", "main"]

_RESULT: Final = b'{"result":{}}'


class FixedBroadcast(Broadcast):
    """broadcaster's ``Broadcast`` with its first-subscriber race fixed.

    In 0.3.1, ``subscribe`` checks whether the channel has subscribers, awaits the
    backend's ``SUBSCRIBE`` if not, then *assigns* ``{queue}`` as the channel's set: when
    several connections subscribe to a new channel at the same time, each one's
    assignment replaces the others', and those connections never get anything (5 of
    300 in our first run). Here the set is created before the await. Otherwise the
    same code.
    """

    @contextlib.asynccontextmanager
    async def subscribe(self, channel: str) -> AsyncIterator[Subscriber]:
        queue: asyncio.Queue[Event | None] = asyncio.Queue()
        try:
            subscribers = self._subscribers.get(channel)
            if subscribers is None:
                self._subscribers[channel] = {queue}
                await self._backend.subscribe(channel)
            else:
                subscribers.add(queue)
            yield Subscriber(queue)
        finally:
            self._subscribers[channel].remove(queue)
            if not self._subscribers.get(channel):
                del self._subscribers[channel]
                await self._backend.unsubscribe(channel)
            await queue.put(None)


class FixedRedisBackend(RedisBackend):
    """broadcaster's Redis backend, subscribing before it tells its listener to start
    (the one change needed for redis-py 8; see the module docstring)."""

    async def subscribe(self, channel: str) -> None:
        await self._pubsub.subscribe(channel)
        self._ready.set()


def build_app(redis_url: str, secret: str = JWT_SECRET, api_key: str = API_KEY) -> Starlette:
    broadcast = FixedBroadcast(backend=FixedRedisBackend(redis_url))
    offsets = itertools.count(1)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await broadcast.connect()
        try:
            yield
        finally:
            await broadcast.disconnect()

    async def websocket_endpoint(websocket: WebSocket) -> None:
        await websocket.accept()
        try:
            first = orjson.loads(await websocket.receive_text())
            token = first["connect"]["token"]
            claims = jwt.decode(token, secret, algorithms=["HS256"], options={"require": ["exp"]})
        except (WebSocketDisconnect, orjson.JSONDecodeError, KeyError, TypeError):
            return
        except jwt.InvalidTokenError:
            await websocket.close(3500, "invalid token")
            return
        reply = {"id": first.get("id", 1), "connect": {"client": str(id(websocket))}}
        await websocket.send_text(orjson.dumps(reply).decode())
        channels: list[str] = list(claims.get("channels") or [])

        async def receiver(scope: anyio.CancelScope) -> None:
            try:
                async for _ in websocket.iter_text():
                    pass
            except (WebSocketDisconnect, RuntimeError, OSError):
                pass
            finally:
                scope.cancel()

        async def sender(channel: str, scope: anyio.CancelScope) -> None:
            try:
                async with broadcast.subscribe(channel=channel) as subscriber:
                    async for event in subscriber:  # type: ignore[union-attr]
                        await websocket.send_text(event.message)
            except (WebSocketDisconnect, RuntimeError, OSError):
                scope.cancel()

        async with anyio.create_task_group() as group:
            group.start_soon(receiver, group.cancel_scope)
            for channel in channels:
                group.start_soon(sender, channel, group.cancel_scope)

    async def publish_one(params: dict[str, Any]) -> None:
        channel = params["channel"]
        payload = b"".join(
            (
                b'{"push":{"channel":',
                orjson.dumps(channel),
                b',"pub":{"data":',
                orjson.dumps(params["data"]),
                b',"offset":',
                str(next(offsets)).encode(),
                b"}}}",
            )
        )
        await broadcast.publish(channel=channel, message=payload.decode())

    async def publish(request: Request) -> Response:
        if request.headers.get("x-api-key") != api_key:
            return Response(status_code=401)
        await publish_one(orjson.loads(await request.body()))
        return Response(_RESULT, media_type="application/json")

    async def batch(request: Request) -> Response:
        if request.headers.get("x-api-key") != api_key:
            return Response(status_code=401)
        commands = orjson.loads(await request.body())["commands"]
        for command in commands:
            await publish_one(command["publish"])
        replies = b",".join([b'{"publish":{}}'] * len(commands))
        body = b'{"result":{"replies":[' + replies + b"]}}"
        return Response(body, media_type="application/json")

    return Starlette(
        routes=[
            WebSocketRoute("/connection/websocket", websocket_endpoint),
            Route("/api/publish", publish, methods=["POST"]),
            Route("/api/batch", batch, methods=["POST"]),
        ],
        lifespan=lifespan,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--port", type=int, required=True, help="WebSocket port")
    parser.add_argument("--api-port", type=int, required=True, help="publish trigger port")
    parser.add_argument("--redis-url", required=True)
    args = parser.parse_args(argv)
    raise_nofile()
    return serve_uvicorn(build_app(args.redis_url), args.port, args.api_port)


if __name__ == "__main__":
    sys.exit(main())
