"""HTTP server API for backends and operators, on its own port (aiohttp).

``POST /api/<method>`` with ``X-API-Key: <REALTIME_API_KEY>`` (or ``Authorization:
apikey <KEY>``) and a JSON object body. Answers ``{"result": {...}}`` or ``{"error":
{"code": N, "message": "..."}}`` with status 200, in the shape of Centrifugo's server
API so that its client libraries (``cent``) work unchanged. A missing or wrong key gets
401 (compared in constant time); a body that is not a JSON object gets 400, one over
1 MiB 413 (both with error 107); an unknown method 404.

:func:`execute` runs one method on its parsed body; the HTTP handler and the outbox
consumer (:mod:`realtime_server.outbox`) both call it, so a row of the outbox behaves
exactly as the same call of the API.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson
from aiohttp import web

from . import codes
from .channels.engine import PublishItem
from .codes import ErrorCode
from .config import Settings
from .errors import BackendUnavailable, CommandError
from .lograte import RateLimitedLog
from .model import StreamPosition
from .operations import Operations
from .protocol import history_json, parse_history, presence_json

__all__ = [
    "IDEMPOTENCY_KEY_MAX",
    "MAX_BODY",
    "METHODS",
    "bound_port",
    "build_api",
    "execute",
    "publish_batch",
    "start_api",
    "stop_api",
]

logger = logging.getLogger("realtime_server.api")

Method = Callable[[Operations, dict[str, Any]], Awaitable[dict[str, Any]]]

MAX_BODY = 1024 * 1024
"""Largest request body, in bytes (more: 413 with error 107)."""

IDEMPOTENCY_KEY_MAX = 256
"""Longest accepted ``idempotency_key``, in characters (it is kept in the engine for
``REALTIME_IDEMPOTENCY_TTL`` seconds)."""


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


def _idempotency_key(params: dict[str, Any]) -> str | None:
    """The optional ``idempotency_key`` (absent or empty: none)."""
    key = _str(params, "idempotency_key", required=False)
    if len(key) > IDEMPOTENCY_KEY_MAX:
        raise _bad(f"idempotency_key longer than {IDEMPOTENCY_KEY_MAX} characters")
    return key or None


def _publish_item(params: dict[str, Any]) -> PublishItem:
    """A ``publish`` body, checked (107 when malformed)."""
    channel = _str(params, "channel")
    if "data" not in params:
        raise _bad("data required")
    return PublishItem(
        channel, orjson.dumps(params["data"]), tags=_tags(params), key=_idempotency_key(params)
    )


async def publish(ops: Operations, params: dict[str, Any]) -> dict[str, Any]:
    item = _publish_item(params)
    pos = await ops.publish(item.channel, item.data, tags=item.tags, idempotency_key=item.key)
    return _position(pos)


async def publish_batch(
    ops: Operations, bodies: Sequence[dict[str, Any]]
) -> list[dict[str, Any] | CommandError]:
    """``publish`` for each body, in order, in one round trip to a shared engine (the
    outbox's runs of publish rows): each body's result, or the CommandError that
    refused it (nothing published for it).

    Raises:
        BackendUnavailable: Redis failed; any prefix of the bodies may have been
            published (the outbox gives each a key, so repeating them is safe).
    """
    results: list[dict[str, Any] | CommandError] = [{}] * len(bodies)
    items: list[PublishItem] = []
    where: list[int] = []
    for i, body in enumerate(bodies):
        try:
            items.append(_publish_item(body))
            where.append(i)
        except CommandError as exc:
            results[i] = exc
    published = await ops.publish_many(items, publisher="outbox")
    for i, outcome in zip(where, published, strict=True):
        results[i] = outcome if isinstance(outcome, CommandError) else _position(outcome)
    return results


async def broadcast(ops: Operations, params: dict[str, Any]) -> dict[str, Any]:
    channels = params.get("channels")
    if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
        raise _bad("channels must be a list of strings")
    if "data" not in params:
        raise _bad("data required")
    data = orjson.dumps(params["data"])
    tags = _tags(params)
    # The key applies per channel (as in Centrifugo): retrying a partly failed
    # broadcast with the same key publishes only to the channels that failed.
    key = _idempotency_key(params)
    responses: list[dict[str, Any]] = []
    for channel in channels:
        try:
            pos = await ops.publish(channel, data, tags=tags, idempotency_key=key)
            responses.append({"result": _position(pos)})
        except CommandError as exc:
            responses.append({"error": {"code": exc.error.code, "message": exc.error.message}})
    return {"responses": responses}


async def disconnect(ops: Operations, params: dict[str, Any]) -> dict[str, Any]:
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
    await ops.disconnect_user(user, code, reason, _str(params, "client", required=False))
    return {}


async def unsubscribe(ops: Operations, params: dict[str, Any]) -> dict[str, Any]:
    await ops.unsubscribe_user(_str(params, "user"), _str(params, "channel"))
    return {}


async def presence(ops: Operations, params: dict[str, Any]) -> dict[str, Any]:
    return presence_json(await ops.presence(_str(params, "channel")))


async def presence_stats(ops: Operations, params: dict[str, Any]) -> dict[str, Any]:
    stats = await ops.presence_stats(_str(params, "channel"))
    return {"num_clients": stats.num_clients, "num_users": stats.num_users}


async def history(ops: Operations, params: dict[str, Any]) -> dict[str, Any]:
    _str(params, "channel")
    try:
        req = parse_history(params)
    except Exception:
        raise _bad("malformed history request") from None
    found = await ops.history(req)
    return history_json(found.publications, found.top)


async def info(ops: Operations, params: dict[str, Any]) -> dict[str, Any]:
    return ops.info()


async def revoke_token(ops: Operations, params: dict[str, Any]) -> dict[str, Any]:
    jti = _str(params, "uid", required=False) or _str(params, "jti")
    expires_at = _number(params, "expire_at", 0.0) or None
    await ops.revoke_token(jti, expires_at)
    return {}


async def invalidate_user_tokens(ops: Operations, params: dict[str, Any]) -> dict[str, Any]:
    user = _str(params, "user")
    issued_before = _number(params, "issued_before", 0.0) or None
    await ops.revoke_user(user, issued_before)
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


BATCH_MAX = 100
"""Most commands in one ``batch`` call."""


async def batch(ops: Operations, params: dict[str, Any]) -> dict[str, Any]:
    """Centrifugo's ``batch``: ``{"commands": [{"publish": {...}}, ...]}``, run in
    order; ``{"replies": [{"publish": {...}} or {"error": {...}}, ...]}``. Publications
    of one batch reach each subscriber in one loop iteration, so its writes coalesce
    (:mod:`writer`). A failing command does not stop the others; a backend outage
    (BackendUnavailable) fails the whole call, as for a single command."""
    commands = params.get("commands")
    if not isinstance(commands, list) or not 0 < len(commands) <= BATCH_MAX:
        raise _bad(f"commands must be a list of 1 to {BATCH_MAX} commands")
    replies: list[dict[str, Any]] = []
    for command in commands:
        if not isinstance(command, dict) or len(command) != 1:
            raise _bad("each command is an object with one method")
        ((method, body),) = command.items()
        if method == "batch" or not isinstance(body, dict):
            raise _bad("a command's method is an API method other than batch, its body an object")
        try:
            replies.append({method: await execute(ops, method, body)})
        except CommandError as exc:
            replies.append(
                {"error": {"code": exc.error.code, "message": str(exc) or exc.error.message}}
            )
    return {"replies": replies}


METHODS["batch"] = batch


async def execute(ops: Operations, method: str, params: dict[str, Any]) -> dict[str, Any]:
    """Run API ``method`` with its JSON body ``params``; its ``result`` object.

    Raises:
        CommandError: an unknown method (104) or a call refused (107, 102, 108...).
        BackendUnavailable: Redis could not be reached (a temporary failure).
    """
    run = METHODS.get(method)
    if run is None:
        raise CommandError(codes.METHOD_NOT_FOUND, f"unknown method {method[:64]!r}")
    return await run(ops, params)


def _json(body: dict[str, Any], status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def _error(error: ErrorCode, status: int = 200, message: str | None = None) -> web.Response:
    return _json({"error": {"code": error.code, "message": message or error.message}}, status)


def build_api(ops: Operations, api_key: str) -> web.Application:
    expected = api_key.encode()
    unavailable = RateLimitedLog(logger, "HTTP API calls")

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
        method = request.match_info["method"]
        if method not in METHODS:
            return _error(codes.METHOD_NOT_FOUND, 404)
        try:
            params = orjson.loads(await request.read())
        except web.HTTPRequestEntityTooLarge:
            return _error(codes.BAD_REQUEST, 413, f"body over {MAX_BODY} bytes")
        except orjson.JSONDecodeError:
            return _error(codes.BAD_REQUEST, 400, "body must be a JSON object")
        if not isinstance(params, dict):
            return _error(codes.BAD_REQUEST, 400, "body must be a JSON object")
        try:
            return _json({"result": await execute(ops, method, params)})
        except CommandError as exc:
            return _error(exc.error, message=str(exc) or None)
        except BackendUnavailable as exc:
            unavailable.failed(method, exc)
            return _error(codes.INTERNAL)
        except Exception:
            logger.exception("API method %s failed", method)
            return _error(codes.INTERNAL)

    app = web.Application(client_max_size=MAX_BODY)
    app.router.add_post("/api/{method}", handle)
    return app


async def start_api(
    ops: Operations, settings: Settings, port: int | None = None, reuse_port: bool = False
) -> web.AppRunner:
    assert settings.api_key
    runner = web.AppRunner(build_api(ops, settings.api_key), access_log=None)
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
