"""The pub/sub envelope: how this server writes publications, joins and leaves on a
channel's Redis pub/sub channel, and how a message there is read back (pure).

A message is either plain JSON (from any program that can ``PUBLISH``: delivered as the
publication's data, without offset) or an envelope written by this server, which starts
with ``~`` (never the first character of JSON): ``~p<header JSON>\\n<data JSON>`` for a
publication (header ``{"o": offset, "e": epoch, "i": info, "t": tags}``), ``~j<info JSON>``
for a join, ``~l<info JSON>`` for a leave. The Lua scripts write the same.

Plain JSON is checked before it is delivered (it is embedded raw in the frames clients
parse). A server-written publication's data is not parsed again: it was JSON when it was
published, and parsing it on every node for every message was pure cost (Redis is
trusted: whoever can write there can do anything).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from ..model import ClientInfo, Publication, raw_json
from ..protocol import client_info_json, encode_client_info

__all__ = ["Decoded", "decode_message", "encode_join_leave", "encode_publication"]


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
