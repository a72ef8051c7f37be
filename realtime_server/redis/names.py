"""Names of everything the server keeps in Redis (pure).

For a realtime channel ``C`` and the prefix ``P`` (``REALTIME_REDIS_PREFIX``, default
``rt:``), with ``{C}`` a Redis Cluster hash tag so that one channel's keys and pub/sub
channel live on one shard:

=========================  ====================================================
``P{C}``                    pub/sub channel (``PUBLISH``, or ``SPUBLISH`` on a cluster)
``P{C}:s``                  history stream (Redis stream, entry id ``<offset>-1``)
``P{C}:m``                  stream meta hash: ``s`` top offset, ``e`` epoch
``P{C}:p`` / ``P{C}:pz``    presence hash (client -> info) / expiry zset
``P{C}:i:<key>``            a publish's idempotency key: ``<offset>:<epoch>`` (TTL)
``Pcontrol``                node-to-node control channel (JSON)
``Prevoked:jti:<jti>``      a revoked token, expiring with the token
``Prevoked:user:<user>``    a user's "issued before" cutoff (unix seconds)
``Prevocations``            the revocation list's marker: set while the list is whole
=========================  ====================================================

The pub/sub messages on ``P{C}`` are :mod:`.envelope`'s.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["RedisNames"]


@dataclass(frozen=True, slots=True)
class RedisNames:
    prefix: str = "rt:"

    def channel(self, channel: str) -> str:
        return f"{self.prefix}{{{channel}}}"

    def stream(self, channel: str) -> str:
        return f"{self.prefix}{{{channel}}}:s"

    def meta(self, channel: str) -> str:
        return f"{self.prefix}{{{channel}}}:m"

    def presence(self, channel: str) -> str:
        return f"{self.prefix}{{{channel}}}:p"

    def presence_expiry(self, channel: str) -> str:
        return f"{self.prefix}{{{channel}}}:pz"

    def idempotency(self, channel: str, key: str) -> str:
        """Where a publish's idempotency key is remembered (the channel's hash slot)."""
        return f"{self.prefix}{{{channel}}}:i:{key}"

    @property
    def control(self) -> str:
        return f"{self.prefix}control"

    def revoked_jti(self, jti: str) -> str:
        return f"{self.prefix}revoked:jti:{jti}"

    def revoked_user(self, user: str) -> str:
        return f"{self.prefix}revoked:user:{user}"

    @property
    def revoked_pattern(self) -> str:
        """A ``SCAN`` pattern matching every revocation key (the prefix escaped)."""
        escaped = "".join("\\" + c if c in "*?[]\\" else c for c in self.prefix)
        return f"{escaped}revoked:*"

    @property
    def revocations(self) -> str:
        """The revocation list's marker (see :mod:`..auth.redis_revocation`)."""
        return f"{self.prefix}revocations"

    def realtime_channel(self, redis_channel: bytes | str) -> str | None:
        """The realtime channel of a pub/sub channel name, or None if not ours."""
        name = redis_channel.decode() if isinstance(redis_channel, bytes) else redis_channel
        if name.startswith(self.prefix + "{") and name.endswith("}"):
            return name[len(self.prefix) + 1 : -1]
        return None
