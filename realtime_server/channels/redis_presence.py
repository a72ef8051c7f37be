"""Presence in Redis: a hash of client -> info and a zset of expiry times per channel.

Entries expire ``ttl`` seconds after they were last added; nodes re-add their clients'
entries periodically, so the clients of a crashed node disappear within ``ttl``.
"""

from __future__ import annotations

import time

from ..model import ClientInfo
from ..protocol import encode_client_info
from ..redis.client import RedisCommands
from ..redis.envelope import decode_message
from .engine import PresenceStats

__all__ = ["RedisPresence"]


class RedisPresence:
    """Implements :class:`engine.PresenceManager` on Redis."""

    def __init__(self, commands: RedisCommands) -> None:
        self.commands = commands
        self.names = commands.names

    def _keys(self, channel: str) -> list[str]:
        return [self.names.presence(channel), self.names.presence_expiry(channel)]

    async def add(self, channel: str, info: ClientInfo, ttl: float) -> None:
        now_ms = int(time.time() * 1000)
        args: list[bytes | str | int] = [
            info.client,
            encode_client_info(info),
            now_ms + int(ttl * 1000),
            int(ttl * 2000),
        ]
        await self.commands.script(self.commands.presence_add_script, self._keys(channel), args)

    async def remove(self, channel: str, client: str) -> None:
        script = self.commands.presence_remove_script
        await self.commands.script(script, self._keys(channel), [client])

    async def presence(self, channel: str) -> dict[str, ClientInfo]:
        script = self.commands.presence_get_script
        now_ms = int(time.time() * 1000)
        flat = await self.commands.script(script, self._keys(channel), [now_ms])
        clients: dict[str, ClientInfo] = {}
        for i in range(0, len(flat), 2):
            decoded = decode_message(b"~j" + flat[i + 1])
            if decoded is not None and decoded.info is not None:
                clients[flat[i].decode()] = decoded.info
        return clients

    async def stats(self, channel: str) -> PresenceStats:
        clients = await self.presence(channel)
        return PresenceStats(len(clients), len({i.user for i in clients.values()}))

    async def close(self) -> None:
        return None
