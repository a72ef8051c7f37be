"""Wire-level errors and close codes, with a raw WebSocket client against a real server."""

from __future__ import annotations

import jwt
import pytest

from realtime_server.app import Running

from .conftest import StartServer, connected, ws_url
from .helpers import MS, RawClient, sub_token, token


@pytest.mark.parametrize(
    "frame",
    [
        b"\x00binary",
        "not json",
        "[1,2]",
        '{"id":1,"connect":{}}\n{"id":"x","ping":{}}',
        '{"id":1}',
        '{"id":1,"nosuchmethod":{}}',
        '{"id":1,"subscribe":{"channel":"user:42"},"publish":{}}',
        '{"subscribe":{"channel":"user:42"}}',
    ],
)
async def test_malformed_frames_close_3501(server: Running, frame: str | bytes) -> None:
    client = await RawClient.open(ws_url(server))
    await client.ws.send(frame)
    assert (await client.closed())[0] == 3501


async def test_command_before_connect_closes_3501(server: Running) -> None:
    client = await RawClient.open(ws_url(server))
    await client.send({"subscribe": {"channel": "user:42"}})
    assert await client.closed() == (3501, "bad request")


async def test_malformed_after_connect_closes_3501_and_others_unaffected(server: Running) -> None:
    bad = await connected(server, "1")
    good = await connected(server, "2")
    await bad.ws.send("{oops")
    assert (await bad.closed())[0] == 3501
    await server.node.ops.publish("user:2", b'{"still":"here"}')
    assert (await good.push("pub"))["pub"]["data"] == {"still": "here"}


async def test_connect_timeout_closes_3502(start_server: StartServer) -> None:
    server = await start_server(CONNECT_TIMEOUT=200 * MS)
    client = await RawClient.open(ws_url(server))
    assert await client.closed() == (3502, "stale")


async def test_oversized_message_closes_1009(start_server: StartServer) -> None:
    server = await start_server(MAX_MESSAGE_SIZE=2048)
    client = await connected(server)
    await client.ws.send('{"id":9,"publish":{"channel":"user:42","data":"' + "x" * 4096 + '"}}')
    assert (await client.closed())[0] == 1009


async def test_forged_token_closes_3500(server: Running) -> None:
    client = await RawClient.open(ws_url(server))
    await client.send(
        {"connect": {"token": token("42", secret="another-secret-xxxxxxxxxxxxxxxxxx")}}
    )
    assert await client.closed() == (3500, "invalid token")


async def test_alg_none_token_closes_3500(server: Running) -> None:
    unsigned = jwt.encode({"sub": "42", "exp": 9999999999}, None, algorithm="none")
    client = await RawClient.open(ws_url(server))
    await client.send({"connect": {"token": unsigned}})
    assert (await client.closed())[0] == 3500


async def test_expired_token_gets_109_and_may_retry(server: Running) -> None:
    client = await RawClient.open(ws_url(server))
    reply = await client.connect(token("42", ttl=-60))
    assert reply["error"] == {"code": 109, "message": "token expired"}
    reply = await client.connect(token("42"))
    assert reply["connect"]["client"]


async def test_token_without_exp_is_invalid(server: Running) -> None:
    client = await RawClient.open(ws_url(server))
    await client.send({"connect": {"token": token("42", exp=None)}})
    assert (await client.closed())[0] == 3500


async def test_token_lifetime_over_maximum_is_invalid(start_server: StartServer) -> None:
    server = await start_server(JWT_MAX_LIFETIME=60)
    client = await RawClient.open(ws_url(server))
    await client.send({"connect": {"token": token("42", ttl=3600)}})
    assert (await client.closed())[0] == 3500


async def test_connection_token_with_channel_claim_is_invalid(server: Running) -> None:
    client = await RawClient.open(ws_url(server))
    await client.send({"connect": {"token": sub_token("42", "document:1")}})
    assert (await client.closed())[0] == 3500


async def test_connect_twice_closes_3501(server: Running) -> None:
    client = await connected(server)
    await client.send({"connect": {"token": token("42")}})
    assert (await client.closed())[0] == 3501


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"channel": "user:other"}, 103),
        ({"channel": "document:1"}, 103),
        ({"channel": "document:*"}, 107),
        ({"channel": "document:a..b"}, 107),
        ({"channel": "nope:1"}, 102),
        ({"channel": "user:42"}, 105),
        ({"channel": ""}, 107),
        ({"channel": "document:é"}, 107),
    ],
)
async def test_subscribe_errors(server: Running, params: dict[str, str], code: int) -> None:
    client = await connected(server)
    reply = await client.call("subscribe", params)
    assert reply["error"]["code"] == code
    assert reply["error"]["message"]


async def test_subscription_token_for_other_channel_closes_3500(server: Running) -> None:
    client = await connected(server)
    await client.send(
        {"subscribe": {"channel": "document:1", "token": sub_token("42", "document:2")}}
    )
    assert (await client.closed())[0] == 3500


async def test_subscription_token_of_other_user_closes_3500(server: Running) -> None:
    client = await connected(server)
    await client.send(
        {"subscribe": {"channel": "document:1", "token": sub_token("7", "document:1")}}
    )
    assert (await client.closed())[0] == 3500


async def test_forged_subscription_token_gets_103(server: Running) -> None:
    client = await connected(server)
    forged = sub_token("42", "document:1", secret="another-secret-xxxxxxxxxxxxxxxxxx")
    reply = await client.call("subscribe", {"channel": "document:1", "token": forged})
    assert reply["error"]["code"] == 103


async def test_expired_subscription_token_gets_109(server: Running) -> None:
    client = await connected(server)
    expired = sub_token("42", "document:1", ttl=-60)
    reply = await client.call("subscribe", {"channel": "document:1", "token": expired})
    assert reply["error"]["code"] == 109


async def test_other_commands(server: Running) -> None:
    client = await connected(server)
    assert (await client.call("rpc", {"method": "x", "data": {}}))["error"]["code"] == 104
    reply = await client.call("publish", {"channel": "user:42", "data": {}})
    assert reply["error"]["code"] == 103
    assert (await client.call("presence", {"channel": "user:42"}))["error"]["code"] == 108
    assert (await client.call("history", {"channel": "document:9"}))["error"]["code"] == 103
    assert (await client.call("unsubscribe", {"channel": "document:9"})) == {
        "id": client.next_id - 1,
        "unsubscribe": {},
    }
    # send has no id and gets no reply: the next reply is the ping's
    await client.send({"send": {"data": {"x": 1}}})
    (ping_id,) = await client.send({"ping": {}})
    assert await client.recv() == {"id": ping_id, "ping": {}}


async def test_channel_limit_at_connect_closes_3505(start_server: StartServer) -> None:
    server = await start_server(MAX_CHANNELS=2)
    client = await RawClient.open(ws_url(server))
    await client.send({"connect": {"token": token("42", channels=["document:1", "document:2"])}})
    assert await client.closed() == (3505, "channel limit")


async def test_channel_limit_on_subscribe_gets_106(start_server: StartServer) -> None:
    server = await start_server(MAX_CHANNELS=2)
    client = await connected(server, channels=["document:1"])
    reply = await client.call(
        "subscribe", {"channel": "document:2", "token": sub_token("42", "document:2")}
    )
    assert reply["error"]["code"] == 106


async def test_connection_limit_per_user_closes_3504(start_server: StartServer) -> None:
    server = await start_server(MAX_CONNECTIONS_PER_USER=1)
    await connected(server)
    second = await RawClient.open(ws_url(server))
    await second.send({"connect": {"token": token("42")}})
    assert await second.closed() == (3504, "connection limit")


async def test_rate_limit_111_then_3013(start_server: StartServer) -> None:
    server = await start_server(RATE_LIMIT=1, RATE_BURST=3, RATE_STRIKES=5)
    client = await connected(server)
    bystander = await connected(server, "7")
    await client.send(*[{"ping": {}} for _ in range(4)])
    replies = [await client.recv() for _ in range(4)]
    assert [("error" in r) for r in replies] == [False, False, True, True]
    assert replies[-1]["error"] == {"code": 111, "message": "too many requests", "temporary": True}
    await client.send(*[{"ping": {}} for _ in range(10)])
    assert (await client.closed())[0] == 3013
    await server.node.ops.publish("user:7", b"1")
    assert (await bystander.push("pub"))["pub"]["data"] == 1


async def test_channels_claim_subscribes_at_connect_but_not_foreign_user(server: Running) -> None:
    client = await RawClient.open(ws_url(server))
    reply = await client.connect(token("42", channels=["document:5", "user:99", "bad channel"]))
    assert set(reply["connect"]["subs"]) == {"user:42", "document:5"}


async def test_non_websocket_subprotocol_offer_refused(server: Running) -> None:
    with pytest.raises(Exception):  # noqa: B017 - handshake refused (InvalidStatus)
        await RawClient.open(ws_url(server), subprotocols=["centrifuge-protobuf"])
    ok = await RawClient.open(ws_url(server), subprotocols=["centrifuge-json"])
    assert ok.ws.subprotocol == "centrifuge-json"


async def test_failed_connect_in_a_batch_skips_the_rest_without_closing(server: Running) -> None:
    client = await RawClient.open(ws_url(server))
    connect_id, _ = await client.send(
        {"connect": {"token": token("42", ttl=-60)}},
        {"subscribe": {"channel": "document:1", "token": sub_token("42", "document:1")}},
    )
    assert (await client.reply(connect_id))["error"]["code"] == 109
    reply = await client.connect(token("42"))
    assert "connect" in reply
