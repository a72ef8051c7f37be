"""Revocations in Redis, announced on the control channel to every node.

- ``Prevoked:jti:<jti>``: set until the token's own ``exp`` (Redis expiry).
- ``Prevoked:user:<user>``: the user's latest "issued before" cutoff, kept for the
  maximum token lifetime.

``is_revoked`` reads both keys in one round trip (an MGET, on the shared command link
on a single Redis); a Redis failure raises :class:`BackendUnavailable` (the caller
refuses the connection temporarily).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable

import orjson

from ..redis.client import RedisCommands
from .revocation import KEEP_MARGIN, Revocation, RevocationListener

__all__ = ["RedisRevocationStore"]


class RedisRevocationStore:
    """Implements :class:`revocation.RevocationStore` on Redis."""

    def __init__(self, commands: RedisCommands, max_lifetime: float = 86400.0) -> None:
        self.commands = commands
        self.names = commands.names
        self._max_lifetime = max_lifetime

    @property
    def remote(self) -> bool:
        return True

    def set_listener(self, listener: RevocationListener) -> None:
        """Announcements reach nodes through the broker's control channel."""
        return None

    def _keys(self, jti: str | None, user: str) -> list[str]:
        keys = [self.names.revoked_user(user)]
        if jti is not None:
            keys.append(self.names.revoked_jti(jti))
        return keys

    async def is_revoked(self, jti: str | None, user: str, iat: float | None) -> bool:
        return _revoked(await self.commands.mget(self._keys(jti, user)), jti, iat)

    def checking(self, jti: str | None, user: str, iat: float | None) -> Awaitable[bool]:
        """:meth:`is_revoked` with its MGET queued now on the shared command link (it
        leaves with what the caller queues next in this iteration: a connect's history
        read); asked when awaited when the link is not up (or on a cluster)."""
        sent = self.commands.mget_soon(self._keys(jti, user))
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
                verdict.set_result(_revoked(reply.result(), jti, iat))

        sent.add_done_callback(answered)
        return verdict

    async def revoked_many(self, tokens: list[tuple[str | None, str, float | None]]) -> list[bool]:
        """``is_revoked`` for many tokens, in one MGET (one per shard on a cluster)."""
        if not tokens:
            return []
        keys: list[str] = []
        for jti, user, _ in tokens:
            keys.append(self.names.revoked_user(user))
            keys.append(self.names.revoked_jti(jti) if jti is not None else "")
        flat = await self.commands.mget(keys)
        return [
            _revoked(flat[2 * i : 2 * i + 2], jti, iat) for i, (jti, _, iat) in enumerate(tokens)
        ]

    async def revoke_token(self, jti: str, expires_at: float) -> None:
        ttl_ms = int((expires_at + KEEP_MARGIN - time.time()) * 1000)
        if ttl_ms > 0:
            key = self.names.revoked_jti(jti)
            await self.commands.call("SET", key, b"1", "PX", ttl_ms)
        await self._announce(Revocation("jti", jti=jti))

    async def revoke_user(self, user: str, issued_before: float) -> None:
        script = self.commands.revoke_user_script
        key = self.names.revoked_user(user)
        keep = max(0.0, issued_before - time.time()) + self._max_lifetime + KEEP_MARGIN
        args: list[str | int] = [repr(float(issued_before)), int(keep)]
        cutoff = await self.commands.script(script, [key], args)
        await self._announce(Revocation("user", user=user, issued_before=float(cutoff)))

    async def _announce(self, revocation: Revocation) -> None:
        payload = orjson.dumps(
            {
                "kind": "revoke",
                "params": {
                    "type": revocation.kind,
                    "jti": revocation.jti,
                    "user": revocation.user,
                    "issued_before": revocation.issued_before,
                },
            }
        )
        control = self.names.control  # classic pub/sub: reaches every node of a cluster
        await self.commands.call("PUBLISH", control, payload)

    async def close(self) -> None:
        return None


def _revoked(values: list[bytes | None], jti: str | None, iat: float | None) -> bool:
    cutoff = values[0]
    if jti is not None and values[1] is not None:
        return True
    if cutoff is not None:
        return iat is None or iat < float(cutoff)
    return False
