"""Redis connections for the engine: a command client with timeouts and the Lua scripts.

Every call is bounded by the timeout and turns any connection failure into
:class:`BackendUnavailable`, so a slow or dead Redis never stalls the event loop or lets
an unchecked token in. On a single Redis the commands of the hot paths (:meth:`call`,
:meth:`script`, :meth:`mget`, :meth:`script_pipeline`) share one pipelined connection
of our own (:mod:`.command_link`); on a Redis Cluster, and for the rest, redis-py
(:meth:`RedisCommands.run`) carries them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.connection import BlockingConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    AuthenticationError,
    NoScriptError,
    RedisClusterException,
    RedisError,
    ResponseError,
)

from ..errors import BackendUnavailable, describe_cause
from .command_link import CommandLink
from .link import LinkOptions
from .names import RedisNames
from .url import redis_address

__all__ = [
    "LuaScript",
    "RedisCommands",
    "ScriptCall",
    "connect_redis",
    "describe_redis_error",
    "load_script",
]

T = TypeVar("T")

ScriptArg = bytes | str | int


class LuaScript:
    """A Lua script run by SHA (``EVALSHA``) and loaded on the first ``NOSCRIPT``.

    Not bound to a client (the command client changes when a cluster is detected), and
    cheaper per call than redis-py's ``AsyncScript`` (whose ``isinstance`` check against
    its pipeline class goes through a slow typing-Protocol check on every call).
    """

    __slots__ = ("sha", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()

    async def run(self, client: Any, keys: Sequence[str], args: Sequence[ScriptArg]) -> Any:
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            await client.script_load(self.source)
            return await client.evalsha(self.sha, len(keys), *keys, *args)


@dataclass(frozen=True, slots=True)
class ScriptCall:
    """One call of a batch script (:meth:`RedisCommands.run_batch`): its keys, which
    share one hash slot on a cluster (a channel's ``{C}`` tag), and its arguments."""

    keys: Sequence[str]
    args: Sequence[ScriptArg]


def load_script(package: str, name: str) -> LuaScript:
    """A ``.lua`` file shipped in ``package`` (loaded into Redis once, run by SHA)."""
    source = resources.files(package).joinpath("lua", name).read_text(encoding="utf-8")
    return LuaScript(source)


class _Pool(BlockingConnectionPool):
    """redis-py's blocking pool without the deprecated-arguments check it wraps around
    ``get_connection`` (it inspects the call's arguments on every command: a few
    percent of the server's CPU in a connect storm). We never pass those arguments."""

    get_connection = getattr(
        BlockingConnectionPool.get_connection,
        "__wrapped__",
        BlockingConnectionPool.get_connection,
    )


def connect_redis(url: str, timeout: float, retries: int = 0, **kwargs: Any) -> aioredis.Redis:
    """A client with bounded connect/read timeouts. ``retries`` immediate retries on a
    connection error let a command survive a pooled connection that died with a
    restart (callers bound the whole call with a timeout anyway)."""
    # A blocking pool: under a connect or disconnect storm, callers wait (within their
    # timeout) for one of a bounded set of connections instead of failing at once
    # (redis-py's default pool raises MaxConnectionsError past 100).
    pool = _Pool.from_url(
        url,
        max_connections=POOL_SIZE,
        timeout=timeout,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), retries),
        health_check_interval=0,
        **kwargs,
    )
    return aioredis.Redis(connection_pool=pool)


POOL_SIZE = 64
"""Command connections per process (pub/sub links are separate)."""


def describe_redis_error(url: str, exc: BaseException, timeout: float) -> str:
    """One line for a failed Redis call: the address (never the password), the
    variable to change and the cause, e.g. ``redis at 127.0.0.1:6390
    (REALTIME_REDIS_URL) unreachable: Connection refused``."""
    where = f"redis at {redis_address(url)} (REALTIME_REDIS_URL)"
    if isinstance(exc, BackendUnavailable) and str(exc).startswith("redis "):
        # Our own link's words (link.py: "redis AUTH refused: WRONGPASS"): written
        # to name the step and the server's error code, never a credential.
        return f"{where}: {str(exc)[len('redis ') :]}"
    if isinstance(exc, AuthenticationError | ResponseError):
        # The server's own words (NOAUTH, WRONGPASS...): they never echo a password.
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return f"{where} refused the command: {text}"
    return f"{where} unreachable: {describe_cause(exc, timeout)}"


class RedisCommands:
    """The command side of the Redis engine (shared by broker, presence, revocation and
    the standalone publisher).

    On first use it asks the server whether it is a Redis Cluster node
    (``INFO cluster``); if so it switches to a cluster client, so that scripts run on the
    shard owning their channel's hash tag, and publications use sharded pub/sub
    (``SPUBLISH``).
    """

    def __init__(self, url: str, names: RedisNames, timeout: float = 2.0) -> None:
        self.url = url
        self.names = names
        self.timeout = timeout
        self.cluster = False
        self._detected = False
        self._detect_lock = asyncio.Lock()
        self.client: Any = connect_redis(url, timeout, retries=1)
        self._link: CommandLink | None = None
        pkg = "realtime_server.redis"
        self.publish_script = load_script(pkg, "publish.lua")
        self.history_script = load_script(pkg, "history.lua")
        self.presence_add_script = load_script(pkg, "presence_add.lua")
        self.presence_join_script = load_script(pkg, "presence_join.lua")
        self.presence_get_script = load_script(pkg, "presence_get.lua")
        self.presence_remove_script = load_script(pkg, "presence_remove.lua")
        self.presence_leave_script = load_script(pkg, "presence_leave.lua")
        self.revoke_user_script = load_script(pkg, "revoke_user.lua")

    async def detect(self) -> None:
        """Switch to a cluster client when the URL points at a Redis Cluster."""
        if self._detected:
            return
        async with self._detect_lock:
            if self._detected:
                return
            info = await self.client.info("cluster")
            if int(info.get("cluster_enabled", 0)) == 1:
                from redis.asyncio.cluster import RedisCluster

                cluster = RedisCluster.from_url(
                    self.url,
                    socket_timeout=self.timeout,
                    socket_connect_timeout=self.timeout,
                )
                try:
                    await cluster.initialize()
                except BaseException as exc:
                    with contextlib.suppress(Exception):
                        await cluster.aclose()
                    if isinstance(exc, RedisClusterException):  # not a RedisError
                        # A cluster still forming ("All slots are not covered"): the
                        # caller retries, with the single-node client kept meanwhile.
                        raise RedisError(f"cluster not ready: {exc}") from None
                    raise
                single, self.client = self.client, cluster
                await single.aclose()
                self.cluster = True
            self._detected = True

    @property
    def detected(self) -> bool:
        """Whether :attr:`cluster` is known (set by the first successful call)."""
        return self._detected

    def primaries(self) -> list[tuple[str, str]]:
        """(name, URL) of the cluster's primary nodes (credentials kept from the URL)."""
        from urllib.parse import urlsplit, urlunsplit

        parts = urlsplit(self.url)
        auth = parts.netloc.rpartition("@")[0]
        urls = []
        for node in self.client.get_primaries():
            netloc = f"{auth}@{node.host}:{node.port}" if auth else f"{node.host}:{node.port}"
            url = urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))
            urls.append((f"{node.host}:{node.port}", url))
        return urls

    def primary_of(self, key: str) -> str:
        """Name (host:port) of the primary owning ``key``'s slot."""
        node = self.client.get_node_from_key(key)
        return f"{node.host}:{node.port}"

    async def publish(self, channel: str, payload: bytes) -> None:
        """PUBLISH, or SPUBLISH on a cluster (the channel's shard)."""
        if not self._detected:
            await self.run(self.detect)
        await self.call("SPUBLISH" if self.cluster else "PUBLISH", channel, payload)

    def _command_link(self) -> CommandLink:
        link = self._link
        if link is None:
            link = self._link = CommandLink(LinkOptions.from_url(self.url), self.timeout)
        return link

    def unavailable(self, exc: BaseException) -> BackendUnavailable:
        """The BackendUnavailable a failed command raises (address and cause)."""
        return BackendUnavailable(describe_redis_error(self.url, exc, self.timeout))

    async def call(self, *args: ScriptArg) -> Any:
        """One command (with the timeout; failures become BackendUnavailable). On a
        single Redis it goes on the shared command link, in one write with the other
        commands of this loop iteration; on a cluster redis-py routes it by its keys."""
        if not self._detected:
            await self.run(self.detect)
        if self.cluster:
            return await self.run(lambda: self.client.execute_command(*args))
        try:
            return await self._command_link().call(*args)
        except (RedisError, OSError, TimeoutError) as exc:
            raise self.unavailable(exc) from None

    async def mget(self, keys: Sequence[str]) -> list[bytes | None]:
        """The values of ``keys`` (None where unset), in one round trip (one per shard
        holding some of them on a cluster)."""
        if not self._detected:
            await self.run(self.detect)
        if self.cluster:  # the keys live on different shards
            return list(await self.run(lambda: self.client.mget_nonatomic(keys)))
        return list(await self.call("MGET", *keys))

    async def scan_keys(self, pattern: str) -> AsyncIterator[list[bytes]]:
        """Every key matching ``pattern``, a ``SCAN`` page at a time (on every primary
        of a cluster); each page bounded by the timeout."""
        if not self._detected:
            await self.run(self.detect)
        if not self.cluster:
            cursor: Any = 0
            while True:
                cursor, keys = await self.call("SCAN", cursor, "MATCH", pattern, "COUNT", 1000)
                yield list(keys)
                if int(cursor) == 0:
                    return
        for node in self.client.get_primaries():
            cursor = 0
            while True:

                async def page(at: int = cursor, primary: Any = node) -> Any:
                    client = self.client
                    return await client.scan(at, pattern, 1000, target_nodes=primary)

                cursors, keys = await self.run(page)
                yield list(keys)
                cursor = cursors[node.name]
                if int(cursor) == 0:
                    break

    async def eviction(self) -> str | None:
        """The policy by which Redis may evict keys (``maxmemory-policy``, when a
        ``maxmemory`` is set and the policy is not ``noeviction``), else None; None too
        when Redis does not say (``CONFIG`` is disabled on many managed services)."""
        try:
            found = await self.call("CONFIG", "GET", "maxmemory*")
            if isinstance(found, dict):  # redis-py's parsed form
                pairs = {_text(k): _text(v) for k, v in found.items()}
            else:
                items = [_text(x) for x in found]
                pairs = dict(zip(items[::2], items[1::2], strict=True))
        except (BackendUnavailable, TypeError, ValueError):
            return None
        policy = pairs.get("maxmemory-policy", "noeviction")
        if policy == "noeviction" or pairs.get("maxmemory", "0") in ("", "0"):
            return None
        return policy

    def mget_soon(self, keys: Sequence[str]) -> asyncio.Future[list[bytes | None]] | None:
        """MGET queued now on the shared command link, so that it leaves in one write
        with the commands queued after it in this iteration; None when that cannot be
        (a cluster, or the link not up yet: call :meth:`mget`). The future fails with
        the link's errors: :meth:`unavailable` describes them."""
        link = self._link
        if not self._detected or self.cluster or link is None or not link.connected:
            return None
        return link.send(("MGET", *keys))

    async def script(
        self,
        script: LuaScript,
        keys: Sequence[str],
        args: Sequence[ScriptArg],
        *,
        lazy: bool = False,
    ) -> Any:
        """Run one script (with the timeout; failures become BackendUnavailable).
        ``lazy``: best-effort work after a reply, which may wait a moment on a single
        Redis to leave in one write with other commands (:mod:`.command_link`)."""
        if not self._detected:
            await self.run(self.detect)
        if self.cluster:
            return await self.run(lambda: script.run(self.client, keys, args))
        link = self._command_link()
        try:
            try:
                return await link.call("EVALSHA", script.sha, len(keys), *keys, *args, lazy=lazy)
            except NoScriptError:
                await link.call("SCRIPT", "LOAD", script.source)
                return await link.call("EVALSHA", script.sha, len(keys), *keys, *args)
        except (RedisError, OSError, TimeoutError) as exc:
            raise self.unavailable(exc) from None

    async def run_batch(
        self, script: LuaScript, calls: Sequence[ScriptCall], *, lazy: bool = False
    ) -> list[Any]:
        """Run a batch script (``history.lua``, ``presence_join.lua``) for several
        calls in one round trip; one result per call, in order.

        A batch script takes the keys and arguments of any number of calls one after
        the other (a fixed count of each per call) and returns a list of their results.
        On a single Redis every call goes into one ``EVALSHA``. On a cluster a script
        may only touch keys of one hash slot, so each call (one channel's keys, which
        share its ``{C}`` tag) runs on its own, on the shard of its keys, concurrently.
        Any failure raises BackendUnavailable (some calls may have run then).
        ``lazy`` as for :meth:`script`."""
        if not calls:
            return []
        if not self._detected:
            await self.run(self.detect)
        if len(calls) == 1 or not self.cluster:
            keys = [key for call in calls for key in call.keys]
            args = [arg for call in calls for arg in call.args]
            return list(await self.script(script, keys, args, lazy=lazy))
        return await self.run(lambda: self._concurrent(script, calls))

    async def script_pipeline(self, script: LuaScript, calls: Sequence[ScriptCall]) -> list[Any]:
        """Run ``script`` once per call, in order, in one round trip: a pipeline (not a
        transaction) on one connection, so Redis runs the calls one after the other,
        as many separate calls would. Single Redis only (on a cluster, call
        :meth:`script` per call). Raises BackendUnavailable when Redis fails or a call
        errs: then any prefix of the calls may have run."""
        if not self._detected:
            await self.run(self.detect)
        link = self._command_link()
        results: list[Any] = []
        pending = list(calls)
        while pending:
            batch = pending
            try:
                await link.connect()
            except (RedisError, OSError, TimeoutError) as exc:
                raise self.unavailable(exc) from None
            sent = [
                link.send(("EVALSHA", script.sha, len(c.keys), *c.keys, *c.args)) for c in batch
            ]
            replies = await asyncio.gather(*sent, return_exceptions=True)
            pending = []
            for i, reply in enumerate(replies):
                if isinstance(reply, NoScriptError):  # not run: load it, go on from here
                    await self.call("SCRIPT", "LOAD", script.source)
                    pending = batch[i:]
                    break
                if isinstance(reply, ResponseError):
                    raise BackendUnavailable(f"redis: {type(reply).__name__}")
                if isinstance(reply, BaseException):
                    raise self.unavailable(reply)
                results.append(reply)
        return results

    async def _concurrent(self, script: LuaScript, calls: Sequence[ScriptCall]) -> list[Any]:
        client = self.client
        replies = await asyncio.gather(
            *(script.run(client, call.keys, call.args) for call in calls),
            return_exceptions=True,
        )
        results = []
        for reply in replies:
            if isinstance(reply, BaseException):
                raise reply
            results.append(reply[0])
        return results

    async def run(self, call: Callable[[], Awaitable[T]]) -> T:
        """Run one Redis call with the timeout; failures become BackendUnavailable."""
        try:
            async with asyncio.timeout(self.timeout):
                if not self._detected:
                    await self.detect()
                return await call()
        except (RedisError, RedisClusterException, OSError, TimeoutError) as exc:
            # RedisClusterException (no RedisError): a cluster none of whose nodes answer
            raise BackendUnavailable(describe_redis_error(self.url, exc, self.timeout)) from None

    async def ping(self) -> bool:
        try:
            await self.call("PING")
        except BackendUnavailable:
            return False
        return True

    async def close(self) -> None:
        if self._link is not None:
            await self._link.close()
        await self.client.aclose()


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
