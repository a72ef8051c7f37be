"""The codec of the client protocol, without I/O: frame text in, typed commands out;
typed results and pushes in, JSON bytes out.

Every wire field name (``was_recovering``, ``conn_info``, ``positioned``...) lives in
this module; the rest of the server passes typed values (:mod:`realtime_server.model`,
the request and result classes here). It never imports asyncio or websockets and is
unit-tested with plain calls. The wire format is the Centrifugo client protocol v2 in
its JSON form (see ``docs/WIRE.md``): one frame holds one or more JSON objects
separated by ``\\n``; replies carry the command ``id``; pushes and pings carry none.

``data`` and ``info`` values stay raw JSON bytes from the publisher to the socket
(``orjson.Fragment``), so a publication is encoded once, whatever the number of
subscribers.
"""

from __future__ import annotations

from dataclasses import field
from typing import Any, Final

import orjson

from .codes import CLOSE_BAD_REQUEST, ErrorCode
from .errors import ProtocolViolation
from .model import ClientInfo, Publication, StreamPosition, raw_json
from .values import immutable

__all__ = [
    "METHODS",
    "PING",
    "REJECT_UNRECOVERED",
    "Command",
    "ConnectRequest",
    "HistoryRequest",
    "SubscribeRequest",
    "SubscribeResult",
    "client_info_json",
    "encode_client_info",
    "encode_connect_reply",
    "encode_error",
    "encode_join",
    "encode_leave",
    "encode_pub_push",
    "encode_refresh_reply",
    "encode_reply",
    "encode_sub_refresh_reply",
    "encode_subscribe_push",
    "encode_subscribe_reply",
    "encode_unsubscribe_push",
    "history_json",
    "parse_connect",
    "parse_frame",
    "parse_history",
    "parse_subscribe",
    "presence_json",
    "publication_json",
]

PING: Final = b"{}"
"""The server's ping, and the client's pong: an empty JSON object in its own line."""

METHODS: Final = frozenset(
    {
        "connect",
        "subscribe",
        "unsubscribe",
        "publish",
        "presence",
        "presence_stats",
        "history",
        "ping",
        "send",
        "rpc",
        "refresh",
        "sub_refresh",
    }
)

REJECT_UNRECOVERED: Final = 2
"""Subscribe ``flag`` bit: answer error 112 instead of subscribing unrecovered (the SDKs
set it with ``getState``); bit 1 (channel compaction) is always sent and ignored."""

_MAX_ID: Final = 2**32 - 1
_MAX_OFFSET: Final = 2**53 - 1


@immutable
class Command:
    """One command of a frame. ``method`` is ``""`` for a pong (``{}``)."""

    id: int
    method: str
    params: dict[str, Any]


@immutable
class ConnectRequest:
    token: str
    name: str = ""
    version: str = ""
    subs: dict[str, SubscribeRequest] = field(default_factory=dict)


@immutable
class SubscribeRequest:
    channel: str
    token: str = ""
    recover: bool = False
    offset: int = 0
    epoch: str = ""
    flag: int = 0

    @property
    def since(self) -> StreamPosition | None:
        """Where a recovering client is: publications after it are what it missed."""
        return StreamPosition(self.offset, self.epoch) if self.recover else None

    @property
    def reject_unrecovered(self) -> bool:
        return bool(self.flag & REJECT_UNRECOVERED)


@immutable
class HistoryRequest:
    channel: str
    limit: int = 0
    since: StreamPosition | None = None
    reverse: bool = False


def _bad(detail: str) -> ProtocolViolation:
    return ProtocolViolation(CLOSE_BAD_REQUEST, detail)


def parse_frame(text: str) -> list[Command]:
    """Split a text frame into commands, in order.

    Raises:
        ProtocolViolation: (3501) a line is not a JSON object, an ``id`` is not a
            uint32, or a line has zero or several methods, or an unknown one.
    """
    commands: list[Command] = []
    for line in text.split("\n"):
        if not line or line.isspace():
            continue
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            raise _bad("malformed JSON") from None
        if not isinstance(obj, dict):
            raise _bad("command is not an object")
        cmd_id = obj.pop("id", 0)
        if cmd_id is None:
            cmd_id = 0
        if type(cmd_id) is not int or not 0 <= cmd_id <= _MAX_ID:
            raise _bad("bad command id")
        if not obj:
            if cmd_id:
                raise _bad("command without method")
            commands.append(Command(0, "", {}))
            continue
        if len(obj) != 1:
            raise _bad("one method per command")
        ((method, params),) = obj.items()
        if method not in METHODS:
            raise _bad("unknown method")
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise _bad("method params must be an object")
        if method != "send" and cmd_id == 0:
            raise _bad("command without id")
        commands.append(Command(cmd_id, method, params))
    return commands


def _str(params: dict[str, Any], key: str, *, limit: int = 0) -> str:
    value = params.get(key, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _bad(f"{key} must be a string")
    if limit and len(value) > limit:
        raise _bad(f"{key} too long")
    return value


def _uint(params: dict[str, Any], key: str, *, maximum: int = _MAX_OFFSET) -> int:
    value = params.get(key, 0)
    if value is None:
        return 0
    if type(value) is not int or not 0 <= value <= maximum:
        raise _bad(f"{key} must be a non-negative integer")
    return value


def _bool(params: dict[str, Any], key: str) -> bool:
    value = params.get(key, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _bad(f"{key} must be a boolean")
    return value


def channel_of(params: dict[str, Any]) -> str:
    """The ``channel`` field of a command; its grammar is checked by the channel rules."""
    return _str(params, "channel")


def parse_subscribe(params: dict[str, Any]) -> SubscribeRequest:
    return SubscribeRequest(
        channel=channel_of(params),
        token=_str(params, "token"),
        recover=_bool(params, "recover"),
        offset=_uint(params, "offset"),
        epoch=_str(params, "epoch", limit=64),
        flag=_uint(params, "flag"),
    )


def parse_connect(params: dict[str, Any]) -> ConnectRequest:
    raw_subs = params.get("subs") or {}
    if not isinstance(raw_subs, dict):
        raise _bad("subs must be an object")
    subs: dict[str, SubscribeRequest] = {}
    for channel, sub in raw_subs.items():
        if not isinstance(sub, dict):
            raise _bad("subs entries must be objects")
        subs[channel] = SubscribeRequest(
            channel=channel,
            recover=_bool(sub, "recover"),
            offset=_uint(sub, "offset"),
            epoch=_str(sub, "epoch", limit=64),
        )
    return ConnectRequest(
        token=_str(params, "token"),
        name=_str(params, "name")[:64],
        version=_str(params, "version")[:64],
        subs=subs,
    )


def parse_history(params: dict[str, Any]) -> HistoryRequest:
    limit = params.get("limit", 0)
    if limit is None:
        limit = 0
    if type(limit) is not int or limit < -1:
        raise _bad("limit must be an integer >= -1")
    since_raw = params.get("since")
    since = None
    if since_raw is not None:
        if not isinstance(since_raw, dict):
            raise _bad("since must be an object")
        since = StreamPosition(_uint(since_raw, "offset"), _str(since_raw, "epoch", limit=64))
    return HistoryRequest(
        channel=channel_of(params),
        limit=limit,
        since=since,
        reverse=_bool(params, "reverse"),
    )


# --- encoding ---------------------------------------------------------------------


def client_info_json(info: ClientInfo) -> dict[str, Any]:
    """``ClientInfo`` as the wire (and the Redis envelopes) show it."""
    out: dict[str, Any] = {"user": info.user, "client": info.client}
    if info.conn_info is not None:
        out["conn_info"] = orjson.Fragment(info.conn_info)
    if info.chan_info is not None:
        out["chan_info"] = orjson.Fragment(info.chan_info)
    return out


def encode_client_info(info: ClientInfo) -> bytes:
    """``ClientInfo`` encoded (at its own size: it may be kept)."""
    return raw_json(client_info_json(info))


def publication_json(pub: Publication) -> dict[str, Any]:
    out: dict[str, Any] = {"data": orjson.Fragment(pub.data)}
    if pub.offset:
        out["offset"] = pub.offset
    if pub.info is not None:
        out["info"] = client_info_json(pub.info)
    if pub.tags:
        out["tags"] = pub.tags
    return out


@immutable
class SubscribeResult:
    """A subscription's result (a subscribe reply, or one entry of a connect's
    ``subs``): the stream position of a channel with history (None without), whether
    the client asked to recover and got everything it missed, and the token's ``ttl``."""

    position: StreamPosition | None = None
    recovering: bool = False
    recovered: bool = False
    publications: tuple[Publication, ...] = ()
    ttl: int | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.position is not None:
            out["recoverable"] = True
            out["positioned"] = True
            out["epoch"] = self.position.epoch
            out["offset"] = self.position.offset
            if self.recovering:
                out["was_recovering"] = True
                out["recovered"] = self.recovered
            if self.publications:
                out["publications"] = [publication_json(p) for p in self.publications]
        if self.ttl is not None:
            out["expires"] = True
            out["ttl"] = self.ttl
        return out


def encode_reply(cmd_id: int, method: str, result: dict[str, Any]) -> bytes:
    """A reply: the result object is always present, even when empty (SDKs index it)."""
    return orjson.dumps({"id": cmd_id, method: result})


def encode_connect_reply(
    cmd_id: int,
    *,
    client: str,
    version: str,
    subs: dict[str, SubscribeResult],
    ping: int | None,
    ttl: int,
) -> bytes:
    result: dict[str, Any] = {
        "client": client,
        "version": version,
        "subs": {name: sub.to_json() for name, sub in subs.items()},
    }
    if ping is not None:
        result["ping"] = ping
        result["pong"] = True
    result["expires"] = True
    result["ttl"] = ttl
    return encode_reply(cmd_id, "connect", result)


def encode_subscribe_reply(cmd_id: int, result: SubscribeResult) -> bytes:
    return encode_reply(cmd_id, "subscribe", result.to_json())


def encode_refresh_reply(cmd_id: int, *, client: str, version: str, ttl: int) -> bytes:
    result = {"client": client, "version": version, "expires": True, "ttl": ttl}
    return encode_reply(cmd_id, "refresh", result)


def encode_sub_refresh_reply(cmd_id: int, ttl: int | None) -> bytes:
    result: dict[str, Any] = {"expires": ttl is not None}
    if ttl is not None:
        result["ttl"] = ttl
    return encode_reply(cmd_id, "sub_refresh", result)


def presence_json(clients: dict[str, ClientInfo]) -> dict[str, Any]:
    """The ``presence`` result (client command and HTTP API)."""
    return {"presence": {cid: client_info_json(info) for cid, info in clients.items()}}


def history_json(publications: list[Publication], top: StreamPosition) -> dict[str, Any]:
    """The ``history`` result (client command and HTTP API)."""
    return {
        "publications": [publication_json(p) for p in publications],
        "epoch": top.epoch,
        "offset": top.offset,
    }


def encode_error(cmd_id: int, error: ErrorCode) -> bytes:
    body: dict[str, Any] = {"code": error.code, "message": error.message}
    if error.temporary:
        body["temporary"] = True
    return orjson.dumps({"id": cmd_id, "error": body})


def encode_pub_push(channel_json: bytes, pub: Publication) -> bytes:
    """A ``pub`` push. ``channel_json`` is the channel name already JSON-encoded.

    Hot path: called once per publication per channel on a node, never per subscriber.
    """
    if pub.info is None and not pub.tags:
        head = b'{"push":{"channel":' + channel_json + b',"pub":{"data":' + pub.data
        if pub.offset:
            return head + b',"offset":' + str(pub.offset).encode() + b"}}}"
        return head + b"}}}"
    body = orjson.dumps(publication_json(pub))
    return b'{"push":{"channel":' + channel_json + b',"pub":' + body + b"}}"


def _push(channel: str, kind: str, body: dict[str, Any]) -> bytes:
    return orjson.dumps({"push": {"channel": channel, kind: body}})


def encode_join(channel: str, info: ClientInfo) -> bytes:
    return _push(channel, "join", {"info": client_info_json(info)})


def encode_leave(channel: str, info: ClientInfo) -> bytes:
    return _push(channel, "leave", {"info": client_info_json(info)})


def encode_unsubscribe_push(channel: str, code: int, reason: str) -> bytes:
    return _push(channel, "unsubscribe", {"code": code, "reason": reason})


def encode_subscribe_push(channel: str, result: dict[str, Any]) -> bytes:
    return _push(channel, "subscribe", result)
