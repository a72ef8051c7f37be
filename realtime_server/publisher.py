"""Publishing from Python backends.

``Publisher`` takes the same configuration as the server:

- with ``REALTIME_REDIS_URL`` it talks to Redis directly (no server in the path): the
  same atomic append-and-publish script as the server, and the same revocation store;
- on the embedded engine the only way into the server's memory is its HTTP server API,
  so it calls that (``REALTIME_API_KEY`` set on both sides).

The result of :meth:`publish` is the new stream position, or ``None`` for a channel
without history.

    async with Publisher(Settings.from_env()) as publisher:
        position = await publisher.publish("document:42", {"status": "signed"})
"""

from __future__ import annotations

import time
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import orjson

from . import codes
from .auth.redis_revocation import RedisRevocationStore
from .channels.namespaces import Namespaces
from .channels.redis_broker import RedisBroker
from .config import Settings
from .errors import BackendUnavailable, CommandError, ConfigError, RealtimeError, describe_cause
from .model import StreamPosition
from .redis.client import RedisCommands
from .redis.names import RedisNames

__all__ = ["PublishError", "Publisher"]


class PublishError(RealtimeError):
    """The server refused the call; ``code`` is the protocol error code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{message} ({code})")
        self.code = code


class Publisher:
    """Publish and revoke, through Redis or through a running server's HTTP API."""

    def __init__(self, settings: Settings | None = None, *, timeout: float = 5.0) -> None:
        self.settings = settings if settings is not None else Settings.from_env()
        self._redis: _RedisBackend | None = None
        if self.settings.redis_url:
            self._redis = _RedisBackend(self.settings)
        elif not self.settings.api_key:
            raise ConfigError(
                "REALTIME_API_KEY must be set to publish through the server API "
                "(or REALTIME_REDIS_URL to publish through Redis)"
            )
        self._url = self.settings.api_base_url() + "/api/"
        self._where = _without_credentials(self.settings.api_base_url())
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Publisher:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.close()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """Call one server API method; returns its ``result``."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        assert self.settings.api_key is not None
        headers = {"X-API-Key": self.settings.api_key, "Content-Type": "application/json"}
        try:
            async with self._session.post(
                self._url + method, data=orjson.dumps(params), headers=headers
            ) as response:
                body = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise BackendUnavailable(
                f"server API at {self._where} (REALTIME_API_URL) unreachable: "
                f"{describe_cause(exc, self._timeout.total)} (is a server running there with "
                "REALTIME_API_KEY set?)"
            ) from None
        if status == 401:
            raise PublishError(
                codes.UNAUTHORIZED.code,
                f"server API at {self._where} refused REALTIME_API_KEY: not the key the "
                "server was started with",
            )
        try:
            reply = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise PublishError(
                100, f"unexpected HTTP {status} from the server API at {self._where}"
            ) from None
        if isinstance(reply, dict) and isinstance(reply.get("error"), dict):
            error = reply["error"]
            raise PublishError(int(error.get("code", 100)), str(error.get("message", "error")))
        result = reply.get("result") if isinstance(reply, dict) else None
        if status != 200 or not isinstance(result, dict):
            raise PublishError(
                100, f"unexpected HTTP {status} from the server API at {self._where}"
            )
        return result

    async def publish(
        self, channel: str, data: Any, *, idempotency_key: str | None = None
    ) -> StreamPosition | None:
        """Publish ``data``; with ``idempotency_key``, a repeat within
        ``REALTIME_IDEMPOTENCY_TTL`` seconds delivers nothing and returns the first
        call's position (retry safely when an answer was lost)."""
        if self._redis is not None:
            return await self._redis.publish(channel, data, idempotency_key)
        params: dict[str, Any] = {"channel": channel, "data": data}
        if idempotency_key is not None:
            params["idempotency_key"] = idempotency_key
        result = await self.call("publish", params)
        if "offset" in result:
            return StreamPosition(int(result["offset"]), str(result.get("epoch", "")))
        return None

    async def revoke_token(self, jti: str, expires_at: float | None = None) -> None:
        if self._redis is not None:
            default = time.time() + self.settings.jwt_max_lifetime
            await self._redis.revocations.revoke_token(jti, expires_at or default)
            return
        params: dict[str, Any] = {"uid": jti}
        if expires_at is not None:
            params["expire_at"] = expires_at
        await self.call("revoke_token", params)

    async def invalidate_user_tokens(self, user: str, issued_before: float | None = None) -> None:
        if self._redis is not None:
            cutoff = issued_before if issued_before is not None else time.time()
            await self._redis.revocations.revoke_user(user, cutoff)
            return
        params: dict[str, Any] = {"user": user}
        if issued_before is not None:
            params["issued_before"] = issued_before
        await self.call("invalidate_user_tokens", params)


def _without_credentials(url: str) -> str:
    """``url`` for messages: any ``user:password@`` removed."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


class _RedisBackend:
    """Publishes with the server's own Lua script; needs no running server."""

    def __init__(self, settings: Settings) -> None:
        assert settings.redis_url is not None
        commands = RedisCommands(
            settings.redis_url, RedisNames(settings.redis_prefix), settings.redis_timeout
        )
        self.broker = RedisBroker(commands, shards=1)  # never started: publish only
        self.revocations = RedisRevocationStore(commands, settings.jwt_max_lifetime)
        self.namespaces: Namespaces = settings.namespaces()
        self.idempotency_ttl = settings.idempotency_ttl

    async def publish(
        self, channel: str, data: Any, idempotency_key: str | None
    ) -> StreamPosition | None:
        try:
            _, options = self.namespaces.resolve(channel)
        except CommandError as exc:
            raise PublishError(exc.error.code, exc.error.message) from None
        if idempotency_key is not None:
            position, _ = await self.broker.publish_once(
                channel,
                orjson.dumps(data),
                idempotency_key,
                self.idempotency_ttl,
                history=options.history_options(),
            )
            return position
        return await self.broker.publish(
            channel, orjson.dumps(data), history=options.history_options()
        )

    async def close(self) -> None:
        await self.broker.close()
