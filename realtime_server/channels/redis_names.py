"""Names of everything the Redis engine keeps in Redis, and the pub/sub envelope (pure).

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
=========================  ====================================================

Messages on a channel's pub/sub channel are either plain JSON (from any program that
can ``PUBLISH``: delivered as the publication's data, without offset) or an envelope
written by this server, which starts with ``~`` (never the first character of JSON):
``~p<header JSON>\\n<data JSON>`` for a publication (header ``{"o": offset, "e": epoch,
"i": info, "t": tags}``), ``~j<info JSON>`` for a join, ``~l<info JSON>`` for a leave.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from ..model import ClientInfo, Publication, raw_json
from ..protocol import client_info_json, encode_client_info

__all__ = ["Decoded", "RedisNames", "decode_message", "encode_join_leave", "encode_publication"]


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

    def realtime_channel(self, redis_channel: bytes | str) -> str | None:
        """The realtime channel of a pub/sub channel name, or None if not ours."""
        name = redis_channel.decode() if isinstance(redis_channel, bytes) else redis_channel
        if name.startswith(self.prefix + "{") and name.endswith("}"):
            return name[len(self.prefix) + 1 : -1]
        return None


def encode_publication(pub: Publication, epoch: str = "") -> bytes:
    """The envelope of a publication (the Lua script builds the same for history)."""
    header: dict[str, Any] = {}
    if pub.offset:
        header["o"] = pub.offset
        header["e"] = epoch
    if pub.info is not None:
        header["i"] = client_info_json(pub.info)
    if pub.tags:
        header["t"] = pub.tags
    return b"~p" + orjson.dumps(header) + b"\n" + pub.data


def encode_join_leave(kind: str, info: ClientInfo) -> bytes:
    return (b"~j" if kind == "join" else b"~l") + encode_client_info(info)


def _client_info(value: Any) -> ClientInfo | None:
    if not isinstance(value, dict):
        return None
    conn_info = value.get("conn_info")
    chan_info = value.get("chan_info")
    return ClientInfo(
        str(value.get("user", "")),
        str(value.get("client", "")),
        raw_json(conn_info) if conn_info is not None else None,
        raw_json(chan_info) if chan_info is not None else None,
    )


@dataclass(frozen=True, slots=True)
class Decoded:
    """A decoded pub/sub message: ``kind`` is "pub", "join" or "leave"."""

    kind: str
    pub: Publication | None = None
    epoch: str = ""
    info: ClientInfo | None = None


def decode_message(payload: bytes) -> Decoded | None:
    """Decode a message of a channel's pub/sub channel; None when malformed."""
    try:
        if payload[:2] == b"~p":
            head, sep, data = payload[2:].partition(b"\n")
            if not sep:
                return None
            header = orjson.loads(head)
            if not isinstance(header, dict):
                return None
            orjson.loads(data)  # the data must be JSON: it is embedded raw downstream
            tags = header.get("t")
            pub = Publication(
                data,
                int(header.get("o") or 0),
                _client_info(header.get("i")),
                tags if isinstance(tags, dict) and tags else None,
            )
            return Decoded("pub", pub, str(header.get("e") or ""))
        if payload[:2] in (b"~j", b"~l"):
            info = _client_info(orjson.loads(payload[2:]))
            if info is None:
                return None
            return Decoded("join" if payload[:2] == b"~j" else "leave", info=info)
        orjson.loads(payload)  # plain JSON from any publisher
        return Decoded("pub", Publication(payload.strip()))
    except (orjson.JSONDecodeError, ValueError, TypeError):
        return None
