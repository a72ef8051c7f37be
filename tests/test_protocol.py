"""Unit tests of the sans-I/O protocol core (realtime_server/protocol.py): no sockets.

Shapes follow docs/WIRE.md (sections 2 to 4 and 9).
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from realtime_server.codes import (
    BAD_REQUEST,
    INTERNAL,
    PERMISSION_DENIED,
    TOO_MANY_REQUESTS,
    UNSUBSCRIBE_EXPIRED,
    UNSUBSCRIBE_SERVER,
)
from realtime_server.errors import ProtocolViolation
from realtime_server.model import ClientInfo, Publication, StreamPosition
from realtime_server.protocol import (
    METHODS,
    PING,
    Command,
    encode_client_info,
    encode_error,
    encode_join,
    encode_leave,
    encode_pub_push,
    encode_reply,
    encode_subscribe_push,
    encode_unsubscribe_push,
    parse_connect,
    parse_frame,
    parse_history,
    parse_subscribe,
)

MAX_UINT32 = 2**32 - 1
MAX_SAFE = 2**53 - 1

# Deterministic and without a local example database: the suite must be repeatable.
PROPERTY = settings(max_examples=60, derandomize=True, database=None, deadline=None)


def violation(call: Any, *args: Any) -> ProtocolViolation:
    """Run ``call(*args)``, expecting a 3501 bad request violation; return it."""
    with pytest.raises(ProtocolViolation) as info:
        call(*args)
    assert info.value.close.code == 3501
    return info.value


def lines(*objs: object) -> str:
    return "\n".join(orjson.dumps(o).decode() for o in objs)


# --- parse_frame ------------------------------------------------------------------------


def test_single_command() -> None:
    assert parse_frame('{"id":1,"connect":{"token":"t"}}') == [
        Command(1, "connect", {"token": "t"})
    ]


def test_batch_is_split_on_newlines_in_order() -> None:
    text = lines(
        {"id": 1, "connect": {"token": "t"}},
        {"id": 2, "subscribe": {"channel": "document:1"}},
        {"id": 3, "subscribe": {"channel": "document:2"}},
    )
    cmds = parse_frame(text)
    assert [(c.id, c.method) for c in cmds] == [(1, "connect"), (2, "subscribe"), (3, "subscribe")]
    assert cmds[2].params == {"channel": "document:2"}


@pytest.mark.parametrize(
    "text",
    [
        '{"id":1,"publish":{}}\n',
        '\n{"id":1,"publish":{}}',
        '{"id":1,"publish":{}}\n\n\n',
        '  \n{"id":1,"publish":{}}\n \t \n',
        '{"id":1,"publish":{}}\r\n',
    ],
)
def test_blank_lines_and_trailing_newline_are_tolerated(text: str) -> None:
    assert parse_frame(text) == [Command(1, "publish", {})]


@pytest.mark.parametrize("text", ["", "\n", "\n\n  \n"])
def test_empty_frame_has_no_commands(text: str) -> None:
    assert parse_frame(text) == []


def test_pong_is_an_empty_object() -> None:
    assert parse_frame("{}") == [Command(0, "", {})]
    assert parse_frame(PING.decode()) == [Command(0, "", {})]


def test_pong_between_commands() -> None:
    cmds = parse_frame(lines({"id": 1, "presence": {}}, {}, {"id": 2, "history": {}}))
    assert [c.method for c in cmds] == ["presence", "", "history"]


def test_send_has_no_id() -> None:
    assert parse_frame('{"send":{"data":{"x":1}}}') == [Command(0, "send", {"data": {"x": 1}})]


def test_null_params_become_empty() -> None:
    assert parse_frame('{"id":7,"publish":null}') == [Command(7, "publish", {})]


@pytest.mark.parametrize("method", sorted(METHODS - {"send"}))
def test_every_known_method_with_an_id(method: str) -> None:
    assert parse_frame(orjson.dumps({"id": 9, method: {}}).decode()) == [Command(9, method, {})]


@pytest.mark.parametrize("cmd_id", [1, 42, MAX_UINT32])
def test_id_range_accepted(cmd_id: int) -> None:
    assert parse_frame(lines({"id": cmd_id, "rpc": {}}))[0].id == cmd_id


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("{", id="truncated"),
        pytest.param("not json", id="text"),
        pytest.param('{"id":1,"connect":{}}{}', id="two-objects-one-line"),
        pytest.param("{'id': 1}", id="single-quotes"),
        pytest.param('{"id":1,"connect":{"token":"\\ud800"}}', id="lone-surrogate"),
        pytest.param("\x00", id="nul"),
        pytest.param("[]", id="array"),
        pytest.param('[{"id":1,"connect":{}}]', id="array-of-commands"),
        pytest.param("1", id="number"),
        pytest.param('"connect"', id="string"),
        pytest.param("null", id="null"),
        pytest.param('{"id":-1,"connect":{}}', id="negative-id"),
        pytest.param('{"id":4294967296,"connect":{}}', id="id-above-uint32"),
        pytest.param('{"id":1.0,"connect":{}}', id="float-id"),
        pytest.param('{"id":"1","connect":{}}', id="string-id"),
        pytest.param('{"id":true,"connect":{}}', id="bool-id"),
        pytest.param('{"id":5}', id="id-without-method"),
        pytest.param('{"id":1,"connect":{},"subscribe":{}}', id="two-methods"),
        pytest.param('{"id":1,"teleport":{}}', id="unknown-method"),
        pytest.param('{"id":1,"CONNECT":{}}', id="method-case"),
        pytest.param('{"id":1,"connect":[]}', id="params-array"),
        pytest.param('{"id":1,"connect":"token"}', id="params-string"),
        pytest.param('{"connect":{"token":"t"}}', id="connect-without-id"),
        pytest.param('{"id":0,"subscribe":{"channel":"a:b"}}', id="id-zero"),
        pytest.param('{"publish":{"channel":"a:b"}}', id="publish-without-id"),
        pytest.param('{"id":1,"connect":{}}\n{"id":2,"bogus":{}}', id="bad-second-line"),
    ],
)
def test_protocol_violations_close_3501(text: str) -> None:
    violation(parse_frame, text)


@PROPERTY
@given(st.text(max_size=200))
def test_any_text_parses_or_violates(text: str) -> None:
    """Whatever a client sends, the parser answers commands or a 3501 violation."""
    try:
        cmds = parse_frame(text)
    except ProtocolViolation as exc:
        assert exc.close.code == 3501
        return
    for cmd in cmds:
        assert cmd.method in METHODS or cmd.method == ""
        assert isinstance(cmd.params, dict)


_json_scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20)
_json_values = st.recursive(
    _json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@PROPERTY
@given(
    st.lists(
        st.tuples(
            st.integers(1, MAX_UINT32),
            st.sampled_from(sorted(METHODS - {"send"})),
            st.dictionaries(st.text(max_size=8), _json_values, max_size=4),
        ),
        min_size=1,
        max_size=5,
    )
)
def test_batches_round_trip(commands: list[tuple[int, str, dict[str, Any]]]) -> None:
    text = lines(*({"id": i, m: p} for i, m, p in commands))
    assert parse_frame(text) == [Command(i, m, p) for i, m, p in commands]


# --- parse_connect ----------------------------------------------------------------------


def test_connect_defaults() -> None:
    req = parse_connect({})
    assert (req.token, req.name, req.version, req.subs) == ("", "", "", {})


def test_connect_fields() -> None:
    req = parse_connect(
        {
            "token": "tok",
            "name": "js",
            "version": "1.2",
            "data": {"a": [1, 2]},
            "subs": {
                "user:42": {"recover": True, "offset": 6, "epoch": "SE"},
                "document:1": {},
            },
        }
    )
    assert (req.token, req.name, req.version) == ("tok", "js", "1.2")
    # connect ``data`` is accepted and ignored (no connect proxy)
    sub = req.subs["user:42"]
    assert (sub.channel, sub.recover, sub.offset, sub.epoch) == ("user:42", True, 6, "SE")
    empty = req.subs["document:1"]
    assert (empty.recover, empty.offset, empty.epoch) == (False, 0, "")


def test_connect_null_fields_are_absent() -> None:
    req = parse_connect({"token": None, "name": None, "subs": None})
    assert (req.token, req.name, req.subs) == ("", "", {})


def test_connect_long_name_and_version_are_cut() -> None:
    req = parse_connect({"name": "n" * 500, "version": "v" * 500})
    assert len(req.name) <= 64 and len(req.version) <= 64


@pytest.mark.parametrize(
    "params",
    [
        pytest.param({"token": 123}, id="token-number"),
        pytest.param({"token": ["a"]}, id="token-list"),
        pytest.param({"name": 1}, id="name-number"),
        pytest.param({"subs": ["user:1"]}, id="subs-list"),
        pytest.param({"subs": "user:1"}, id="subs-string"),
        pytest.param({"subs": {"user:1": True}}, id="sub-entry-bool"),
        pytest.param({"subs": {"user:1": {"offset": -1}}}, id="sub-offset-negative"),
        pytest.param({"subs": {"user:1": {"offset": 1.5}}}, id="sub-offset-float"),
        pytest.param({"subs": {"user:1": {"offset": MAX_SAFE + 1}}}, id="sub-offset-huge"),
        pytest.param({"subs": {"user:1": {"recover": "yes"}}}, id="sub-recover-string"),
        pytest.param({"subs": {"user:1": {"epoch": 5}}}, id="sub-epoch-number"),
        pytest.param({"subs": {"user:1": {"epoch": "e" * 65}}}, id="sub-epoch-long"),
    ],
)
def test_connect_malformed(params: dict[str, Any]) -> None:
    violation(parse_connect, params)


# --- parse_subscribe --------------------------------------------------------------------


def test_subscribe_fields() -> None:
    req = parse_subscribe(
        {
            "channel": "document:1",
            "token": "st",
            "recover": True,
            "offset": 11,
            "epoch": "E1",
            "flag": 1,
            "positioned": True,
            "join_leave": True,
        }
    )
    assert (req.channel, req.token, req.recover, req.offset, req.epoch, req.flag) == (
        "document:1",
        "st",
        True,
        11,
        "E1",
        1,
    )


def test_subscribe_defaults() -> None:
    req = parse_subscribe({"channel": "user:1"})
    assert (req.token, req.recover, req.offset, req.epoch, req.flag) == ("", False, 0, "", 0)


def test_subscribe_offset_up_to_2_53() -> None:
    assert parse_subscribe({"channel": "a:b", "offset": MAX_SAFE}).offset == MAX_SAFE


@pytest.mark.parametrize(
    "params",
    [
        pytest.param({"channel": 5}, id="channel-number"),
        pytest.param({"channel": ["a:b"]}, id="channel-list"),
        pytest.param({"channel": "a:b", "token": 1}, id="token-number"),
        pytest.param({"channel": "a:b", "recover": 1}, id="recover-int"),
        pytest.param({"channel": "a:b", "offset": -1}, id="offset-negative"),
        pytest.param({"channel": "a:b", "offset": "3"}, id="offset-string"),
        pytest.param({"channel": "a:b", "offset": True}, id="offset-bool"),
        pytest.param({"channel": "a:b", "offset": MAX_SAFE + 1}, id="offset-huge"),
        pytest.param({"channel": "a:b", "epoch": 1}, id="epoch-number"),
        pytest.param({"channel": "a:b", "epoch": "x" * 65}, id="epoch-long"),
        pytest.param({"channel": "a:b", "flag": -1}, id="flag-negative"),
    ],
)
def test_subscribe_malformed(params: dict[str, Any]) -> None:
    violation(parse_subscribe, params)


# --- parse_history ----------------------------------------------------------------------


def test_history_defaults() -> None:
    req = parse_history({"channel": "document:1"})
    assert (req.channel, req.limit, req.since, req.reverse) == ("document:1", 0, None, False)


def test_history_fields() -> None:
    req = parse_history(
        {
            "channel": "document:1",
            "limit": 10,
            "since": {"offset": 3, "epoch": "E"},
            "reverse": True,
        }
    )
    assert (req.limit, req.since, req.reverse) == (10, StreamPosition(3, "E"), True)


def test_history_limit_minus_one_means_all() -> None:
    assert parse_history({"channel": "a:b", "limit": -1}).limit == -1


def test_history_null_fields_are_absent() -> None:
    req = parse_history({"channel": "a:b", "limit": None, "since": None, "reverse": None})
    assert (req.limit, req.since, req.reverse) == (0, None, False)


def test_history_since_without_epoch() -> None:
    req = parse_history({"channel": "a:b", "limit": 5, "since": {"offset": 2}})
    assert req.since == StreamPosition(2, "")


@pytest.mark.parametrize(
    "params",
    [
        pytest.param({"limit": -2}, id="limit-below-minus-one"),
        pytest.param({"limit": 1.5}, id="limit-float"),
        pytest.param({"limit": "10"}, id="limit-string"),
        pytest.param({"limit": True}, id="limit-bool"),
        pytest.param({"since": 3}, id="since-number"),
        pytest.param({"since": [3, "E"]}, id="since-list"),
        pytest.param({"since": {"offset": -1, "epoch": "E"}}, id="since-offset-negative"),
        pytest.param({"since": {"offset": 1, "epoch": 7}}, id="since-epoch-number"),
        pytest.param({"reverse": "true"}, id="reverse-string"),
        pytest.param({"channel": 1}, id="channel-number"),
    ],
)
def test_history_malformed(params: dict[str, Any]) -> None:
    violation(parse_history, {"channel": "a:b", **params})


# --- encoders ---------------------------------------------------------------------------


def decode(raw: bytes) -> Any:
    assert isinstance(raw, bytes)
    assert b"\n" not in raw, "one message must stay on one line of a batch"
    return orjson.loads(raw)


@pytest.mark.parametrize("method", ["publish", "unsubscribe", "subscribe", "connect", "refresh"])
def test_reply_keeps_an_empty_result(method: str) -> None:
    assert decode(encode_reply(5, method, {})) == {"id": 5, method: {}}


def test_reply_with_result() -> None:
    out = decode(encode_reply(3, "presence_stats", {"num_clients": 2, "num_users": 1}))
    assert out == {"id": 3, "presence_stats": {"num_clients": 2, "num_users": 1}}


def test_error_without_temporary() -> None:
    out = decode(encode_error(3, PERMISSION_DENIED))
    assert out == {"id": 3, "error": {"code": 103, "message": "permission denied"}}


def test_error_bad_request() -> None:
    out = decode(encode_error(8, BAD_REQUEST))
    assert out == {"id": 8, "error": {"code": 107, "message": "bad request"}}


@pytest.mark.parametrize("error", [INTERNAL, TOO_MANY_REQUESTS])
def test_temporary_error(error: Any) -> None:
    out = decode(encode_error(4, error))
    assert out == {
        "id": 4,
        "error": {"code": error.code, "message": error.message, "temporary": True},
    }


def channel_json(channel: str) -> bytes:
    return orjson.dumps(channel)


def test_pub_push_plain() -> None:
    out = decode(encode_pub_push(channel_json("document:1"), Publication(b'{"n":1}')))
    assert out == {"push": {"channel": "document:1", "pub": {"data": {"n": 1}}}}


def test_pub_push_with_offset() -> None:
    out = decode(encode_pub_push(channel_json("user:42"), Publication(b'{"n":1}', offset=7)))
    assert out == {"push": {"channel": "user:42", "pub": {"data": {"n": 1}, "offset": 7}}}


def test_pub_push_with_info_and_tags() -> None:
    info = ClientInfo("u2", "c2", conn_info=b'{"name":"Ann"}', chan_info=b"[1,2]")
    pub = Publication(b'"text"', offset=11, info=info, tags={"k": "v"})
    out = decode(encode_pub_push(channel_json("document:1"), pub))
    assert out == {
        "push": {
            "channel": "document:1",
            "pub": {
                "data": "text",
                "offset": 11,
                "info": {
                    "user": "u2",
                    "client": "c2",
                    "conn_info": {"name": "Ann"},
                    "chan_info": [1, 2],
                },
                "tags": {"k": "v"},
            },
        }
    }


def test_pub_push_info_without_offset() -> None:
    pub = Publication(b"null", info=ClientInfo("u", "c"))
    out = decode(encode_pub_push(channel_json("document:1"), pub))
    assert out["push"]["pub"] == {"data": None, "info": {"user": "u", "client": "c"}}


def test_pub_push_tags_only_and_empty_tags() -> None:
    tagged = decode(encode_pub_push(channel_json("a:b"), Publication(b"1", tags={"t": "x"})))
    assert tagged["push"]["pub"] == {"data": 1, "tags": {"t": "x"}}
    empty = decode(encode_pub_push(channel_json("a:b"), Publication(b"1", tags={})))
    assert empty["push"]["pub"] == {"data": 1}


@pytest.mark.parametrize(
    "data",
    [b'{"a":{"b":[1,2,{"c":null}]}}', b"[]", b'"quoted \\" string"', b"3.5", b"true", b"null"],
)
def test_pub_data_is_embedded_not_stringified(data: bytes) -> None:
    out = decode(encode_pub_push(channel_json("a:b"), Publication(data, offset=1)))
    assert out["push"]["pub"]["data"] == orjson.loads(data)
    with_info = Publication(data, offset=1, info=ClientInfo("u", "c"))
    out = decode(encode_pub_push(channel_json("a:b"), with_info))
    assert out["push"]["pub"]["data"] == orjson.loads(data)


def test_pub_push_channel_needing_escapes() -> None:
    out = decode(encode_pub_push(channel_json('odd"name'), Publication(b"1")))
    assert out["push"]["channel"] == 'odd"name'


_tags = st.none() | st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3)
_infos = st.none() | st.builds(
    ClientInfo,
    st.text(max_size=8),
    st.text(max_size=8),
    st.none() | _json_values.map(orjson.dumps),
    st.none() | _json_values.map(orjson.dumps),
)


@PROPERTY
@given(_json_values, st.integers(0, MAX_SAFE), _infos, _tags, st.text(max_size=20))
def test_pub_push_matches_publication_json(
    data: Any, offset: int, info: ClientInfo | None, tags: dict[str, str] | None, channel: str
) -> None:
    """The hand-written fast path and the general path encode the same message."""
    pub = Publication(orjson.dumps(data), offset, info, tags)
    out = decode(encode_pub_push(channel_json(channel), pub))
    expected: dict[str, Any] = {"data": data}
    if offset:
        expected["offset"] = offset
    if info is not None:
        expected["info"] = orjson.loads(encode_client_info(info))
    if tags:
        expected["tags"] = tags
    assert out == {"push": {"channel": channel, "pub": expected}}


def test_join_and_leave_include_info() -> None:
    info = ClientInfo("42", "client-1", conn_info=b'{"name":"Ann"}')
    expected_info = {"user": "42", "client": "client-1", "conn_info": {"name": "Ann"}}
    assert decode(encode_join("document:1", info)) == {
        "push": {"channel": "document:1", "join": {"info": expected_info}}
    }
    assert decode(encode_leave("document:1", info)) == {
        "push": {"channel": "document:1", "leave": {"info": expected_info}}
    }


def test_join_info_always_has_user_and_client() -> None:
    out = decode(encode_join("document:1", ClientInfo("", "c")))
    assert out["push"]["join"] == {"info": {"user": "", "client": "c"}}


@pytest.mark.parametrize("code_reason", [UNSUBSCRIBE_SERVER, UNSUBSCRIBE_EXPIRED])
def test_unsubscribe_push_has_code_and_reason(code_reason: tuple[int, str]) -> None:
    code, reason = code_reason
    out = decode(encode_unsubscribe_push("document:1", code, reason))
    assert out == {
        "push": {"channel": "document:1", "unsubscribe": {"code": code, "reason": reason}}
    }


def test_subscribe_push() -> None:
    result = {"recoverable": True, "positioned": True, "epoch": "E", "offset": 3}
    out = decode(encode_subscribe_push("document:1", result))
    assert out == {"push": {"channel": "document:1", "subscribe": result}}


def test_pushes_carry_no_id() -> None:
    info = ClientInfo("u", "c")
    for raw in (
        encode_pub_push(channel_json("a:b"), Publication(b"1", 1)),
        encode_join("a:b", info),
        encode_leave("a:b", info),
        encode_unsubscribe_push("a:b", 2000, "server unsubscribe"),
        encode_subscribe_push("a:b", {}),
    ):
        assert "id" not in decode(raw)


def test_ping_is_an_empty_object() -> None:
    assert decode(PING) == {}
