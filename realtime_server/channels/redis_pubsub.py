"""A small fixed set of Redis pub/sub connections ("shards") and their read loops.

Each realtime channel maps to one shard (CRC32 of its name), so its messages arrive in
order on one connection. Each shard has exactly one read loop that blocks on the socket
(no polling). When the link fails (Redis restart, ``CLIENT KILL TYPE pubsub``, network),
the shard reconnects with full-jitter exponential backoff, resubscribes every channel it
holds in one command, then calls ``on_up`` before reading further, so the broker can
fill the gap from history. A periodic PING on the link detects a silent peer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from ..errors import BackendUnavailable
from .redis_client import connect_redis, describe_redis_error

__all__ = ["PubSubShard", "PubSubShards"]

logger = logging.getLogger("realtime_server.redis")

MessageHandler = Callable[[bytes, bytes], Awaitable[None] | None]
_SUBSCRIBE_CHUNK = 500


class PubSubShard:
    """One pub/sub connection, its channels and its read loop."""

    def __init__(
        self,
        url: str,
        index: int,
        anchor: str,
        on_message: Callable[[bytes, bytes], Awaitable[None]],
        on_up: Callable[[PubSubShard], Awaitable[None]],
        timeout: float,
        ping_interval: float = 5.0,
        sharded: bool = False,
    ) -> None:
        self.index = index
        self.channels: set[str] = set()
        self.ready = False
        self._url = url
        self._anchor = anchor
        self._on_message = on_message
        self._on_up = on_up
        self._timeout = timeout
        self._ping_interval = ping_interval
        self._sharded = sharded
        self._client = connect_redis(url, timeout)
        self._pubsub: PubSub | None = None
        self._waiters: dict[bytes, list[asyncio.Future[None]]] = {}
        self._ready_event = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._pinger: asyncio.Task[None] | None = None
        self._pong: asyncio.Event = asyncio.Event()
        self.reconnects = 0

    # --- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._run(), name=f"redis-pubsub-{self.index}")
        self._pinger = loop.create_task(self._ping_loop(), name=f"redis-ping-{self.index}")

    async def wait_ready(self, within: float) -> bool:
        try:
            async with asyncio.timeout(within):
                await self._ready_event.wait()
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        for task in (self._pinger, self._task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self._drop_link()
        await self._client.aclose()

    # --- subscriptions ---------------------------------------------------------------

    async def subscribe(self, name: str) -> None:
        """Subscribe and wait for Redis to confirm (so a history read after this call
        cannot miss a publication). Raises BackendUnavailable while the link is down."""
        self.channels.add(name)
        pubsub = self._pubsub
        if not self.ready or pubsub is None:
            self.channels.discard(name)
            raise BackendUnavailable("redis pub/sub link down")
        key = name.encode()
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(key, []).append(waiter)
        try:
            async with asyncio.timeout(self._timeout):
                if self._sharded:
                    await pubsub.ssubscribe(name)
                else:
                    await pubsub.subscribe(name)
                await waiter
        except (RedisError, OSError, TimeoutError, ConnectionError) as exc:
            self.channels.discard(name)
            raise BackendUnavailable(f"redis subscribe: {type(exc).__name__}") from None
        finally:
            waiters = self._waiters.get(key)
            if waiters is not None and waiter in waiters:
                waiters.remove(waiter)
                if not waiters:
                    del self._waiters[key]

    async def unsubscribe(self, name: str) -> None:
        self.channels.discard(name)
        pubsub = self._pubsub
        if not self.ready or pubsub is None:
            return  # not subscribed on a fresh link anyway
        try:
            async with asyncio.timeout(self._timeout):
                if self._sharded:
                    await pubsub.sunsubscribe(name)
                else:
                    await pubsub.unsubscribe(name)
        except (RedisError, OSError, TimeoutError, ConnectionError):
            logger.debug("unsubscribe of %s failed; the link will be rebuilt", name)

    # --- the link ----------------------------------------------------------------------

    async def _drop_link(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        self.ready = False
        self._ready_event.clear()
        for waiters in self._waiters.values():
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(ConnectionError("pub/sub link lost"))
        if pubsub is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pubsub.aclose(), self._timeout)

    async def _connect(self) -> PubSub:
        pubsub = self._client.pubsub()
        names = sorted(self.channels)
        expected = len(names) + 1
        async with asyncio.timeout(self._timeout * 2):
            await pubsub.subscribe(self._anchor)
            for i in range(0, len(names), _SUBSCRIBE_CHUNK):
                chunk = names[i : i + _SUBSCRIBE_CHUNK]
                if self._sharded:
                    await pubsub.ssubscribe(*chunk)
                else:
                    await pubsub.subscribe(*chunk)
            confirmed = 0
            while confirmed < expected:
                msg = await pubsub.get_message(timeout=self._timeout)
                if msg is not None and msg["type"] in ("subscribe", "ssubscribe"):
                    confirmed += 1
        return pubsub

    async def _run(self) -> None:
        attempt = 0
        while True:
            try:
                pubsub = await self._connect()
                self._pubsub = pubsub
                self.ready = True
                if attempt:
                    self.reconnects += 1
                    logger.info(
                        "redis pub/sub shard %d resubscribed %d channels",
                        self.index,
                        len(self.channels),
                    )
                attempt = 0
                await self._on_up(self)
                self._ready_event.set()
                await self._read(pubsub)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure of the link: rebuild it
                if self.ready or attempt == 0:
                    logger.warning(  # address and cause, never the password
                        "redis pub/sub shard %d link down: %s",
                        self.index,
                        describe_redis_error(self._url, exc, self._timeout),
                    )
                await self._drop_link()
                delay = random.uniform(0, min(2.0, 0.05 * 2**attempt))
                attempt += 1
                await asyncio.sleep(delay)

    async def _read(self, pubsub: PubSub) -> None:
        on_message = self._on_message
        while True:
            msg: dict[str, Any] | None = await pubsub.get_message(timeout=None)
            if msg is None:
                continue
            kind = msg["type"]
            if kind in ("message", "smessage"):
                await on_message(msg["channel"], msg["data"])
            elif kind in ("subscribe", "ssubscribe"):
                for waiter in self._waiters.pop(msg["channel"], ()):
                    if not waiter.done():
                        waiter.set_result(None)
            elif kind == "pong":
                self._pong.set()

    async def _ping_loop(self) -> None:
        """Detect a peer that went silent without closing the socket."""
        while True:
            await asyncio.sleep(self._ping_interval)
            pubsub = self._pubsub
            if pubsub is None or not self.ready:
                continue
            self._pong.clear()
            try:
                async with asyncio.timeout(self._timeout):
                    await pubsub.ping()
                    await self._pong.wait()
            except (RedisError, OSError, TimeoutError, ConnectionError):
                logger.warning("redis pub/sub shard %d: no pong, rebuilding link", self.index)
                if self._task is not None and pubsub is self._pubsub:
                    with contextlib.suppress(Exception):
                        conn = pubsub.connection
                        if conn is not None:
                            await conn.disconnect()


class PubSubShards:
    """A fixed number of shards; a channel always maps to the same one."""

    def __init__(self, shards: list[PubSubShard], pick: Callable[[str], int] | None = None) -> None:
        self.shards = shards
        self._pick = pick

    def for_channel(self, name: str) -> PubSubShard:
        if self._pick is not None:
            return self.shards[self._pick(name)]
        return self.shards[zlib.crc32(name.encode()) % len(self.shards)]

    @property
    def ready(self) -> bool:
        return bool(self.shards) and all(s.ready for s in self.shards)

    def start(self) -> None:
        for shard in self.shards:
            shard.start()

    async def wait_ready(self, within: float) -> bool:
        results = await asyncio.gather(*(s.wait_ready(within) for s in self.shards))
        return all(results)

    async def close(self) -> None:
        await asyncio.gather(*(s.close() for s in self.shards))
