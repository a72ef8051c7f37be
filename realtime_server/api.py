"""HTTP server API for backends and operators, on its own port (aiohttp).

``POST /api/<method>`` with ``X-API-Key: <REALTIME_API_KEY>`` (or ``Authorization:
apikey <KEY>``) and a JSON object body. Answers ``{"result": {...}}`` or ``{"error":
{"code": N, "message": "..."}}`` with status 200, in the shape of Centrifugo's server
API so that its client libraries (``cent``) work unchanged. A missing or wrong key gets
401 (compared in constant time); a body that is not a JSON object gets 400; an unknown
method 404.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from . import codes
from .codes import ErrorCode
from .config import Settings
from .errors import BackendUnavailable, CommandError
from .node import Node
from .protocol import StreamPosition, parse_history

__all__ = ["bound_port", "build_api", "start_api", "stop_api"]

logger = logging.getLogger("realtime_server.api")

Method = Callable[[Node, dict[str, Any]], Awaitable[dict[str, Any]]]


def _bad(detail: str) -> CommandError:
    return CommandError(codes.BAD_REQUEST, detail)


def _str(params: dict[str, Any], key: str, *, required: bool = True) -> str:
    value = params.get(key)
    if value is None or value == "":
        if required:
            raise _bad(f"{key} required")
        return ""
    if not isinstance(value, str):
        raise _bad(f"{key} must be a string")
    return value


def _number(params: dict[str, Any], key: str, default: float | None = None) -> float:
    value = params.get(key)
    if value is None:
        if default is None:
            raise _bad(f"{key} required")
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(f"{key} must be a number")
    return float(value)


def _position(pos: StreamPosition | None) -> dict[str, Any]:
    return {} if pos is None else {"offset": pos.offset, "epoch": pos.epoch}


def _tags(params: dict[str, Any]) -> dict[str, str] | None:
    tags = params.get("tags")
    if tags is None:
        return None
    if not isinstance(tags, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in tags.items()
    ):
        raise _bad("tags must map strings to strings")
    return tags


async def publish(node: Node, params: dict[str, Any]) -> dict[str, Any]:
    channel = _str(params, "channel")
    if "data" not in params:
        raise _bad("data required")
    pos = await node.publish(channel, orjson.dumps(params["data"]), tags=_tags(params))
    return _position(pos)


async def broadcast(node: Node, params: dict[str, Any]) -> dict[str, Any]:
    channels = params.get("channels")
    if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
        raise _bad("channels must be a list of strings")
    if "data" not in params:
        raise _bad("data required")
    data = orjson.dumps(params["data"])
    tags = _tags(params)
    responses: list[dict[str, Any]] = []
    for channel in channels:
        try:
            pos = await node.publish(channel, data, tags=tags)
            responses.append({"result": _position(pos)})
        except CommandError as exc:
            responses.append({"error": {"code": exc.error.code, "message": exc.error.message}})
    return {"responses": responses}


async def disconnect(node: Node, params: dict[str, Any]) -> dict[str, Any]:
    user = _str(params, "user")
    spec = params.get("disconnect") or {}
    if not isinstance(spec, dict):
        raise _bad("disconnect must be an object")
    code = spec.get("code", codes.CLOSE_SHUTDOWN.code)
    reason = spec.get("reason", "disconnect")
    if type(code) is not int or not 3000 <= code <= 4999:
        raise _bad("disconnect.code must be in 3000-4999")
    if not isinstance(reason, str) or len(reason.encode()) > 123:
        raise _bad("disconnect.reason must be a string of at most 123 bytes")
    await node.disconnect_user(user, code, reason, _str(params, "client", required=False))
    return {}


async def unsubscribe(node: Node, params: dict[str, Any]) -> dict[str, Any]:
    await node.unsubscribe_user(_str(params, "user"), _str(params, "channel"))
    return {}


async def presence(node: Node, params: dict[str, Any]) -> dict[str, Any]:
    clients = await node.presence(_str(params, "channel"))
    return {"presence": {cid: info.to_json() for cid, info in clients.items()}}


async def presence_stats(node: Node, params: dict[str, Any]) -> dict[str, Any]:
    stats = await node.presence_stats(_str(params, "channel"))
    return {"num_clients": stats.num_clients, "num_users": stats.num_users}


async def history(node: Node, params: dict[str, Any]) -> dict[str, Any]:
    _str(params, "channel")
    try:
        req = parse_history(params)
    except Exception:
        raise _bad("malformed history request") from None
    return await node.history(req)


async def info(node: Node, params: dict[str, Any]) -> dict[str, Any]:
    return node.info()


async def revoke_token(node: Node, params: dict[str, Any]) -> dict[str, Any]:
    jti = _str(params, "uid", required=False) or _str(params, "jti")
    default_expiry = time.time() + node.settings.jwt_max_lifetime
    expires_at = _number(params, "expire_at", default_expiry) or default_expiry
    await node.revocations.revoke_token(jti, expires_at)
    return {}


async def invalidate_user_tokens(node: Node, params: dict[str, Any]) -> dict[str, Any]:
    user = _str(params, "user")
    issued_before = _number(params, "issued_before", time.time()) or time.time()
    await node.revocations.revoke_user(user, issued_before)
    return {}


METHODS: dict[str, Method] = {
    "publish": publish,
    "broadcast": broadcast,
    "disconnect": disconnect,
    "unsubscribe": unsubscribe,
    "presence": presence,
    "presence_stats": presence_stats,
    "history": history,
    "info": info,
    "revoke_token": revoke_token,
    "invalidate_user_tokens": invalidate_user_tokens,
}


def _json(body: dict[str, Any], status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def _error(error: ErrorCode, status: int = 200, message: str | None = None) -> web.Response:
    return _json({"error": {"code": error.code, "message": message or error.message}}, status)


def build_api(node: Node, api_key: str) -> web.Application:
    expected = api_key.encode()

    def authorized(request: web.Request) -> bool:
        given = request.headers.get("X-API-Key")
        if given is None:
            auth = request.headers.get("Authorization", "")
            scheme, _, value = auth.partition(" ")
            given = value.strip() if scheme.lower() == "apikey" else ""
        return hmac.compare_digest(given.encode(), expected)

    async def handle(request: web.Request) -> web.Response:
        if not authorized(request):
            return _error(codes.UNAUTHORIZED, 401)
        method = METHODS.get(request.match_info["method"])
        if method is None:
            return _error(codes.METHOD_NOT_FOUND, 404)
        try:
            params = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return _error(codes.BAD_REQUEST, 400, "body must be a JSON object")
        if not isinstance(params, dict):
            return _error(codes.BAD_REQUEST, 400, "body must be a JSON object")
        try:
            return _json({"result": await method(node, params)})
        except CommandError as exc:
            return _error(exc.error, message=str(exc) or None)
        except BackendUnavailable:
            return _error(codes.INTERNAL)
        except Exception:
            logger.exception("API method %s failed", request.match_info["method"])
            return _error(codes.INTERNAL)

    app = web.Application(client_max_size=1024 * 1024)
    app.router.add_post("/api/{method}", handle)
    return app


async def start_api(
    node: Node, settings: Settings, port: int | None = None, reuse_port: bool = False
) -> web.AppRunner:
    assert settings.api_key
    runner = web.AppRunner(build_api(node, settings.api_key), access_log=None)
    await runner.setup()
    site = web.TCPSite(
        runner,
        settings.api_host,
        settings.api_port if port is None else port,
        reuse_address=True,
        reuse_port=reuse_port or None,
        backlog=settings.backlog,  # aiohttp's default is 128 (loadtest stream)
    )
    await site.start()
    return runner


def bound_port(runner: object) -> int:
    assert isinstance(runner, web.AppRunner)
    for address in runner.addresses:
        return int(address[1])
    raise RuntimeError("API not listening")


async def stop_api(runner: object) -> None:
    assert isinstance(runner, web.AppRunner)
    await runner.cleanup()
