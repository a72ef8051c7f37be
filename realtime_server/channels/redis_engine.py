"""The Redis engine: broker, history and presence shared by every node."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from ..redis.client import LuaScript, RedisCommands, ScriptArg, ScriptCall
from ..redis.names import RedisNames
from .engine import Membership
from .redis_broker import RedisBroker
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

    async def joined(self, joins: Sequence[Membership], presence_ttl: float) -> None:
        """One ``presence_join.lua`` call for every subscription (one per channel,
        concurrently, on a cluster: its keys and pub/sub channel share the channel's
        hash slot)."""
        expire_at = int(time.time() * 1000) + int(presence_ttl * 1000)
        key_ttl = int(presence_ttl * 2000)

        def args(m: Membership) -> list[ScriptArg]:
            info = m.encoded_info()
            return [m.info.client, info, expire_at, key_ttl, "1" if m.presence else "0"]

        await self._run(self.commands.presence_join_script, joins, args)

    async def left(self, leaves: Sequence[Membership]) -> None:
        """One ``presence_leave.lua`` call for every ended subscription, as
        :meth:`joined`."""

        def args(m: Membership) -> list[ScriptArg]:
            info = m.encoded_info() if m.announce else b""
            return [m.info.client, info, "1" if m.presence else "0"]

        await self._run(self.commands.presence_leave_script, leaves, args)

    async def _run(
        self,
        script: LuaScript,
        members: Sequence[Membership],
        args: Callable[[Membership], list[ScriptArg]],
    ) -> None:
        """A presence script per membership: its presence keys, ``args(m)``, then the
        pub/sub channel to announce on ("" for none) and whether to SPUBLISH. Lazy on
        the command link: after the reply, it may wait a moment to share a write."""
        members = [m for m in members if m.presence or m.announce]
        if not members:
            return
        commands = self.commands
        if not commands.detected:  # PUBLISH or SPUBLISH: know which before building
            await commands.run(commands.detect)
        names = commands.names
        sharded = "1" if commands.cluster else "0"
        calls = [
            ScriptCall(
                [names.presence(m.channel), names.presence_expiry(m.channel)],
                [*args(m), names.channel(m.channel) if m.announce else "", sharded],
            )
            for m in members
        ]
        await commands.run_batch(script, calls, lazy=True)
