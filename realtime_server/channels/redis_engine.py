"""The Redis engine: broker, history and presence shared by every node."""

from __future__ import annotations

from .redis_broker import RedisBroker
from .redis_client import RedisCommands
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
