"""The Redis engine: broker, history and presence shared by every node."""

from __future__ import annotations

import time
from collections.abc import Sequence

import orjson

from .engine import Joined
from .redis_broker import RedisBroker
from .redis_client import RedisCommands, ScriptArg, ScriptCall
from .redis_names import RedisNames
from .redis_presence import RedisPresence

__all__ = ["RedisEngine"]


class RedisEngine:
    """Implements :class:`engine.Engine` on one Redis (``REALTIME_REDIS_URL``)."""

    name = "redis"

    def __init__(
        self, url: str, prefix: str = "rt:", timeout: float = 2.0, shards: int = 2
    ) -> None:
        self.commands = RedisCommands(url, RedisNames(prefix), timeout)
        self.broker = RedisBroker(self.commands, shards)
        self.presence = RedisPresence(self.commands)

    async def joined(self, joins: Sequence[Joined], presence_ttl: float) -> None:
        """One ``presence_join.lua`` call for every subscription (one per channel,
        concurrently, on a cluster: its keys and pub/sub channel share the channel's
        hash slot)."""
        joins = [j for j in joins if j.presence or j.join]
        if not joins:
            return
        commands = self.commands
        if not commands.detected:  # PUBLISH or SPUBLISH: know which before building
            await commands.run(commands.detect)
        names = commands.names
        expire_at = int(time.time() * 1000) + int(presence_ttl * 1000)
        key_ttl = int(presence_ttl * 2000)
        sharded = "1" if commands.cluster else "0"
        calls = []
        for j in joins:
            args: list[ScriptArg] = [
                j.info.client,
                orjson.dumps(j.info.to_json()),
                expire_at,
                key_ttl,
                "1" if j.presence else "0",
                names.channel(j.channel) if j.join else "",
                sharded,
            ]
            keys = [names.presence(j.channel), names.presence_expiry(j.channel)]
            calls.append(ScriptCall(keys, args))
        await commands.run_batch(commands.presence_join_script, calls)
