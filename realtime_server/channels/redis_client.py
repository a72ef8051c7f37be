"""Redis connections for the engine: a command client with timeouts and the Lua scripts.

Every call goes through :meth:`RedisCommands.run`, which bounds it with a timeout and
turns any connection failure into :class:`BackendUnavailable`, so a slow or dead Redis
never stalls the event loop or lets an unchecked token in.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from ..errors import BackendUnavailable
from .redis_names import RedisNames

__all__ = ["RedisCommands", "connect_redis", "load_script"]

T = TypeVar("T")


def load_script(client: aioredis.Redis, package: str, name: str) -> AsyncScript:
    """Register a ``.lua`` file shipped in ``package`` (loaded once, run by SHA)."""
    source = resources.files(package).joinpath("lua", name).read_text(encoding="utf-8")
    return client.register_script(source)


def connect_redis(url: str, timeout: float, retries: int = 0, **kwargs: Any) -> aioredis.Redis:
    """A client with bounded connect/read timeouts. ``retries`` immediate retries on a
    connection error let a command survive a pooled connection that died with a
    restart (callers bound the whole call with a timeout anyway)."""
    return aioredis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), retries),
        health_check_interval=0,
        **kwargs,
    )


class RedisCommands:
    """The command side of the Redis engine (shared by broker, presence, revocation and
    the standalone publisher)."""

    def __init__(self, url: str, names: RedisNames, timeout: float = 2.0) -> None:
        self.url = url
        self.names = names
        self.timeout = timeout
        self.client = connect_redis(url, timeout, retries=1)
        pkg = "realtime_server.channels"
        self.publish_script = load_script(self.client, pkg, "publish.lua")
        self.history_script = load_script(self.client, pkg, "history.lua")
        self.presence_add_script = load_script(self.client, pkg, "presence_add.lua")
        self.presence_get_script = load_script(self.client, pkg, "presence_get.lua")
        self.presence_remove_script = load_script(self.client, pkg, "presence_remove.lua")
        self.revoke_user_script = load_script(
            self.client, "realtime_server.auth", "revoke_user.lua"
        )

    async def run(self, call: Callable[[], Awaitable[T]]) -> T:
        """Run one Redis call with the timeout; failures become BackendUnavailable."""
        try:
            async with asyncio.timeout(self.timeout):
                return await call()
        except (RedisError, OSError, TimeoutError) as exc:
            raise BackendUnavailable(f"redis: {type(exc).__name__}") from None

    async def ping(self) -> bool:
        try:
            await self.run(self.client.ping)
        except BackendUnavailable:
            return False
        return True

    async def close(self) -> None:
        await self.client.aclose()
