"""Revocations in Redis, announced on the control channel to every node.

- ``Prevoked:jti:<jti>``: set until the token's own ``exp`` (Redis expiry).
- ``Prevoked:user:<user>``: the user's latest "issued before" cutoff, kept for the
  maximum token lifetime.
- ``Prevocations``: the list's marker (a random value, no expiry), written once the
  list in Redis is complete.

``is_revoked`` reads both keys and the marker in one round trip (an MGET, on the shared
command link on a single Redis); a Redis failure raises :class:`BackendUnavailable`
(the caller refuses the connection temporarily).

**A Redis that lost its data** (restarted without persistence, flushed, failed over to
a replica that had not caught up) has no revocations, and would let revoked tokens in.
Every node therefore keeps the live revocations in memory too
(:class:`~.revocation_mirror.RevocationMirror`: read from Redis at start, then from
every announcement) and checks the marker with every read:

- marker missing: the list is lost. The check fails as temporary (error 100: the SDKs
  retry; never an unchecked token) and the node writes what it remembers back, then the
  marker;
- marker changed: another node found the list lost and wrote its own memory back; this
  node adds what it remembers (in the background: the checks go on);
- the link came back (:meth:`RedisRevocationStore.reassert`): Redis may be back from an
  older snapshot, marker included, without the latest revocations; the node writes back
  what it remembers.

On a Redis Cluster the marker lives on one shard: a shard that loses its data without
that one is not noticed.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import orjson

from ..errors import BackendUnavailable
from ..lograte import RateLimitedLog
from ..redis.client import RedisCommands
from .revocation import KEEP_MARGIN, Revocation, RevocationListener
from .revocation_mirror import RevocationMirror

__all__ = ["RedisRevocationStore"]

logger = logging.getLogger("realtime_server.revocation")

_LOST = (
    "the revocation list is missing from Redis (restarted without its data, or flushed)"
    " and could not be written back yet"
)
_RESTORE_CHUNK = 1000
_LOAD_BACKOFF_CAP = 2.0


class RedisRevocationStore:
    """Implements :class:`revocation.RevocationStore` on Redis."""

    def __init__(
        self,
        commands: RedisCommands,
        max_lifetime: float = 86400.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.commands = commands
        self.names = commands.names
        self._max_lifetime = max_lifetime
        self._clock = clock
        self._mirror = RevocationMirror(clock)
        self._marker: bytes | None = None  # the list's marker as this node last saw it
        self._loaded = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._restoring: asyncio.Task[None] | None = None
        self._reported = False  # the current loss is in the log
        self._failures = RateLimitedLog(logger, "revocation checks")

    @property
    def remote(self) -> bool:
        return True

    def set_listener(self, listener: RevocationListener) -> None:
        """Announcements reach nodes through the broker's control channel."""
        return None

    # --- this node's memory of the list ------------------------------------------------

    def start(self) -> None:
        """Read the list into memory and mark it complete, in the background (retried
        until Redis answers)."""
        self._spawn(self._load())

    async def started(self) -> None:
        """Wait until the list has been read (tests)."""
        await self._loaded.wait()

    def heard(self, revocation: Revocation) -> None:
        now = self._clock()
        keep_until = revocation.keep_until
        if revocation.kind == "jti" and revocation.jti is not None:
            until = keep_until or now + self._max_lifetime + KEEP_MARGIN
            self._mirror.add_jti(revocation.jti, until)
        elif revocation.user is not None and revocation.issued_before is not None:
            cutoff = revocation.issued_before
            until = keep_until or max(now, cutoff) + self._max_lifetime + KEEP_MARGIN
            self._mirror.add_user(revocation.user, cutoff, until)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _load(self) -> None:
        delay = 0.05
        while True:
            try:
                await self._read_list()
                await self._mark_complete()
                break
            except Exception as exc:  # never a dead background task: tried again
                if isinstance(exc, BackendUnavailable):  # Redis not up: the broker says so
                    logger.debug("revocation list not read yet: %s", exc)
                else:
                    logger.warning("reading the revocation list failed (retrying): %r", exc)
                await asyncio.sleep(delay)
                delay = min(_LOAD_BACKOFF_CAP, delay * 2)
        policy = await self.commands.eviction()
        if policy is not None:
            logger.warning(
                "Redis may evict keys (maxmemory-policy %s with a maxmemory set): revoked"
                " tokens (keys with a TTL) and history can vanish unseen; set"
                " maxmemory-policy noeviction",
                policy,
            )
        self._loaded.set()

    async def _read_list(self) -> None:
        jti_prefix = self.names.revoked_jti("")
        user_prefix = self.names.revoked_user("")
        now = self._clock()
        async for keys in self.commands.scan_keys(self.names.revoked_pattern):
            names = [k.decode() if isinstance(k, bytes) else str(k) for k in keys]
            jtis = [n for n in names if n.startswith(jti_prefix)]
            users = [n for n in names if n.startswith(user_prefix)]
            ttls = await asyncio.gather(*(self.commands.call("PTTL", n) for n in jtis))
            for name, ttl in zip(jtis, ttls, strict=True):
                if int(ttl) > 0:
                    self._mirror.add_jti(name[len(jti_prefix) :], now + int(ttl) / 1000)
            if not users:
                continue
            values = await self.commands.mget(users)
            ttls = await asyncio.gather(*(self.commands.call("PTTL", n) for n in users))
            for name, value, ttl in zip(users, values, ttls, strict=True):
                if value is not None and int(ttl) > 0:
                    user = name[len(user_prefix) :]
                    self._mirror.add_user(user, float(value), now + int(ttl) / 1000)

    async def _mark_complete(self) -> None:
        """Write the marker unless it is there; remember the one in force."""
        key = self.names.revocations
        await self.commands.call("SET", key, secrets.token_hex(8), "NX")
        self._marker = await self.commands.call("GET", key)

    def _lost(self, marker: bytes | None) -> bool:
        """Whether the list is lost (the marker is missing); a marker another node
        wrote since this node last looked has this node's memory added."""
        if marker is None:
            return True
        if marker != self._marker and self._loaded.is_set():
            self._restore_soon()
        return False

    async def _written_back(self) -> None:
        """Have the list written back from memory (once for every waiting caller);
        bounded by the Redis timeout."""
        self._restore_soon()
        restoring = self._restoring
        assert restoring is not None
        try:
            await asyncio.wait_for(asyncio.shield(restoring), self.commands.timeout)
        except TimeoutError:
            raise BackendUnavailable(_LOST) from None

    def reassert(self) -> None:
        """After a lost link: Redis may be back from an older snapshot (an RDB file
        after a crash), the marker in it and the latest revocations not. Every entry
        this node remembers is written back (idempotent: ``SET NX``, the latest cutoff),
        in the background."""
        if self._loaded.is_set():
            self._restore_soon(reassert=True)

    def _restore_soon(self, reassert: bool = False) -> None:
        if self._restoring is None or self._restoring.done():
            self._restoring = self._spawn(self._restore(reassert))

    async def _restore(self, reassert: bool = False) -> None:
        jtis = self._mirror.jtis()
        users = self._mirror.users()
        if reassert:
            logger.info(
                "Redis link restored: writing back the %d revoked tokens and %d user cutoffs"
                " this node remembers (Redis may have lost its latest writes)",
                len(jtis),
                len(users),
            )
        elif not self._reported:
            self._reported = True
            seen = self._marker
            logger.log(
                logging.WARNING if seen is not None else logging.INFO,
                "revocation list %s: writing back the %d revoked tokens and %d user"
                " cutoffs this node remembers",
                "lost in Redis (restarted without its data, flushed, or failed over)"
                if seen is not None
                else "not marked complete in Redis yet (a new Redis, or one that lost"
                " its data while no server ran)",
                len(jtis),
                len(users),
            )
        now = self._clock()
        script = self.commands.revoke_user_script
        names = self.names

        async def write_jti(jti: str, until: float) -> None:
            ttl_ms = int((until - now) * 1000) + 1
            await self.commands.call("SET", names.revoked_jti(jti), b"1", "PX", ttl_ms, "NX")

        async def write_user(user: str, cutoff: float, until: float) -> None:
            args: list[str | int] = [repr(cutoff), int(until - now) + 1]
            await self.commands.script(script, [names.revoked_user(user)], args)

        writes: list[Callable[[], Awaitable[None]]] = [
            functools.partial(write_jti, jti, until) for jti, until in jtis.items()
        ]
        writes += [
            functools.partial(write_user, u, e.cutoff, e.keep_until) for u, e in users.items()
        ]
        try:
            for start in range(0, len(writes), _RESTORE_CHUNK):
                chunk = writes[start : start + _RESTORE_CHUNK]
                done = await asyncio.gather(*(write() for write in chunk), return_exceptions=True)
                failed = next((r for r in done if isinstance(r, BaseException)), None)
                if failed is not None:
                    raise failed
            await self._mark_complete()
        except Exception as exc:  # BackendUnavailable, mostly: asked again by the next check
            self._failures.failed("writing the revocation list back", exc)
            return
        self._reported = False
        logger.info("revocation list written back (%d entries)", len(writes))

    # --- checks --------------------------------------------------------------------------

    def _token_keys(self, jti: str | None, user: str) -> list[str]:
        """A token's two keys: its user's cutoff, and its ``jti`` (none: a key never set)."""
        return [
            self.names.revoked_user(user),
            self.names.revoked_jti(jti) if jti is not None else "",
        ]

    async def _read(self, keys: list[str]) -> list[bytes | None]:
        """The values of ``keys``, read in one MGET with the marker; if the list is
        lost, once more after it was written back. Raises BackendUnavailable while it
        stays lost."""
        with_marker = [self.names.revocations, *keys]
        values = await self.commands.mget(with_marker)
        if self._lost(values[0]):
            await self._written_back()
            values = await self.commands.mget(with_marker)
            if values[0] is None:
                raise BackendUnavailable(_LOST)
        return values[1:]

    async def is_revoked(self, jti: str | None, user: str, iat: float | None) -> bool:
        cutoff, entry = await self._read(self._token_keys(jti, user))
        return _revoked(cutoff, entry, iat)

    def checking(self, jti: str | None, user: str, iat: float | None) -> Awaitable[bool]:
        """:meth:`is_revoked` with its MGET queued now on the shared command link (it
        leaves with what the caller queues next in this iteration: a connect's history
        read); asked when awaited when the link is not up (or on a cluster)."""
        sent = self.commands.mget_soon([self.names.revocations, *self._token_keys(jti, user)])
        if sent is None:
            return self.is_revoked(jti, user, iat)
        verdict: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        unavailable = self.commands.unavailable

        def answered(reply: asyncio.Future[list[bytes | None]]) -> None:
            failure = None if reply.cancelled() else reply.exception()  # always retrieved
            if verdict.done():
                return  # its caller gave up
            if reply.cancelled():
                verdict.cancel()
            elif failure is not None:
                verdict.set_exception(unavailable(failure))
            else:
                marker, cutoff, entry = reply.result()
                if self._lost(marker):  # asked again once the list is written back
                    self._spawn(_settle(verdict, self.is_revoked(jti, user, iat)))
                else:
                    verdict.set_result(_revoked(cutoff, entry, iat))

        sent.add_done_callback(answered)
        return verdict

    async def revoked_many(self, tokens: list[tuple[str | None, str, float | None]]) -> list[bool]:
        """``is_revoked`` for many tokens, in one MGET (one per shard on a cluster)."""
        if not tokens:
            return []
        keys = [key for jti, user, _ in tokens for key in self._token_keys(jti, user)]
        flat = await self._read(keys)
        return [_revoked(flat[2 * i], flat[2 * i + 1], iat) for i, (_, _, iat) in enumerate(tokens)]

    # --- revoking ------------------------------------------------------------------------

    async def revoke_token(self, jti: str, expires_at: float) -> None:
        keep_until = expires_at + KEEP_MARGIN
        ttl_ms = int((keep_until - self._clock()) * 1000)
        if ttl_ms > 0:
            key = self.names.revoked_jti(jti)
            await self.commands.call("SET", key, b"1", "PX", ttl_ms)
        revocation = Revocation("jti", jti=jti, keep_until=keep_until)
        self.heard(revocation)
        await self._announce(revocation)

    async def revoke_user(self, user: str, issued_before: float) -> None:
        script = self.commands.revoke_user_script
        key = self.names.revoked_user(user)
        now = self._clock()
        keep = max(0.0, issued_before - now) + self._max_lifetime + KEEP_MARGIN
        args: list[str | int] = [repr(float(issued_before)), int(keep)]
        cutoff = await self.commands.script(script, [key], args)
        revocation = Revocation(
            "user", user=user, issued_before=float(cutoff), keep_until=now + int(keep)
        )
        self.heard(revocation)
        await self._announce(revocation)

    async def _announce(self, revocation: Revocation) -> None:
        payload = orjson.dumps(
            {
                "kind": "revoke",
                "params": {
                    "type": revocation.kind,
                    "jti": revocation.jti,
                    "user": revocation.user,
                    "issued_before": revocation.issued_before,
                    "keep_until": revocation.keep_until,
                },
            }
        )
        control = self.names.control  # classic pub/sub: reaches every node of a cluster
        await self.commands.call("PUBLISH", control, payload)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


async def _settle(verdict: asyncio.Future[bool], answer: Awaitable[bool]) -> None:
    """Give ``verdict`` what ``answer`` says, unless its caller gave up."""
    try:
        result = await answer
    except BackendUnavailable as exc:
        if not verdict.done():
            verdict.set_exception(exc)
        return
    if not verdict.done():
        verdict.set_result(result)


def _revoked(cutoff: bytes | None, jti_entry: bytes | None, iat: float | None) -> bool:
    """The verdict from a user's cutoff and the token's ``jti`` entry (None: unset)."""
    if jti_entry is not None:
        return True
    if cutoff is not None:
        return iat is None or iat < float(cutoff)
    return False
