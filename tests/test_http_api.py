"""The public port's HTTP routes and the HTTP server API on its own port."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest

from realtime_server.api import MAX_BODY
from realtime_server.app import Running

from .conftest import StartServer, api_url, ws_url
from .helpers import API_KEY, MS, RawClient, sub_token, token


async def get(server: Running, path: str) -> tuple[int, str, str]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{server.port}{path}") as resp,
    ):
        return resp.status, resp.headers.get("Content-Type", ""), await resp.text()


async def api(
    server: Running, method: str, body: Any, key: str | None = API_KEY
) -> tuple[int, Any]:
    headers = {"X-API-Key": key} if key is not None else {}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{api_url(server)}/api/{method}", json=body, headers=headers) as resp,
    ):
        return resp.status, await resp.json(content_type=None)


async def test_health_ready_metrics_404_426(server: Running) -> None:
    assert (await get(server, "/healthz"))[0] == 200
    status, ctype, body = await get(server, "/readyz")
    assert status == 200 and ctype == "application/json" and '"ready":true' in body
    client = await RawClient.open(ws_url(server))
    await client.connect(token("42"))
    status, ctype, body = await get(server, "/metrics")
    assert status == 200 and ctype.startswith("text/plain")
    assert "realtime_connections 1" in body
    assert "realtime_subscriptions 1" in body
    assert (await get(server, "/nope"))[0] == 404
    assert (await get(server, "/connection/websocket"))[0] == 426


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("HEAD", "/healthz", 200),  # curl -I, health checkers
        ("HEAD", "/readyz", 200),
        ("HEAD", "/nope", 404),
        ("HEAD", "/connection/websocket", 426),
        ("POST", "/connection/websocket", 426),
        ("POST", "/healthz", 405),
        ("DELETE", "/metrics", 405),
        ("OPTIONS", "/connection/websocket", 426),
        ("PUT", "/nope", 404),
    ],
)
async def test_other_methods_get_an_answer(
    server: Running, method: str, path: str, status: int
) -> None:
    """websockets parses GET only (it would close without a response): every other
    method is answered as the routes say, then the connection is closed."""
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, f"http://127.0.0.1:{server.port}{path}", data=b"x") as resp,
    ):
        assert resp.status == status
        body = await resp.read()
        if method == "HEAD":
            assert body == b"" and int(resp.headers["Content-Length"]) > 0
        else:
            assert body
        if status == 405:
            assert resp.headers["Allow"] == "GET, HEAD"
    assert (await get(server, "/healthz"))[0] == 200  # and GET still works


async def test_readyz_503_while_draining(server: Running) -> None:
    server.node.draining = True
    status, _, body = await get(server, "/readyz")
    assert status == 503 and "draining" in body


@pytest.mark.parametrize("key", [None, "", "wrong", API_KEY + "x"])
async def test_api_requires_key(server: Running, key: str | None) -> None:
    status, body = await api(server, "info", {}, key=key)
    assert status == 401 and body["error"]["code"] == 101


async def test_api_bad_requests(server: Running) -> None:
    assert (await api(server, "nosuch", {}))[0] == 404
    assert (await api(server, "publish", [1, 2]))[0] == 400
    status, body = await api(server, "publish", {"channel": "bad channel", "data": 1})
    assert status == 200 and body["error"]["code"] == 107
    status, body = await api(server, "publish", {"channel": "nope:1", "data": 1})
    assert body["error"]["code"] == 102
    status, body = await api(server, "publish", {"channel": "document:1"})
    assert body["error"]["code"] == 107
    huge = {"channel": "document:1", "data": "x" * MAX_BODY}
    assert await api(server, "publish", huge) == (
        413,
        {"error": {"code": 107, "message": f"body over {MAX_BODY} bytes"}},
    )
    fits = {"channel": "document:1", "data": "x" * (MAX_BODY - 100)}
    status, body = await api(server, "publish", fits)
    assert status == 200 and body["result"]["offset"] == 1


async def test_api_publish_broadcast_history(server: Running) -> None:
    client = await RawClient.open(ws_url(server))
    await client.connect(token("42", channels=["document:1"]))
    status, body = await api(server, "publish", {"channel": "document:1", "data": {"s": "viewed"}})
    assert status == 200 and body["result"]["offset"] == 1 and body["result"]["epoch"]
    assert (await client.push("pub"))["pub"] == {"data": {"s": "viewed"}, "offset": 1}
    _, body = await api(
        server, "broadcast", {"channels": ["document:1", "user:42", "bad"], "data": 7}
    )
    responses = body["result"]["responses"]
    assert responses[0]["result"]["offset"] == 2 and responses[1]["result"]["offset"] == 1
    assert responses[2]["error"]["code"] == 107
    _, body = await api(server, "history", {"channel": "document:1", "limit": -1})
    assert [p["data"] for p in body["result"]["publications"]] == [{"s": "viewed"}, 7]


async def test_api_batch_runs_commands_in_order_and_coalesces_writes(server: Running) -> None:
    """Centrifugo's batch: replies in order, a failing command does not stop the
    others; ten publications of one batch reach a subscriber in two frames."""
    client = await RawClient.open(ws_url(server))
    await client.connect(token("42", channels=["document:1"]))
    commands: list[dict[str, object]] = [
        {"publish": {"channel": "document:1", "data": i}} for i in range(10)
    ]
    commands.insert(3, {"publish": {"channel": "bad channel", "data": 0}})
    status, body = await api(server, "batch", {"commands": commands})
    replies = body["result"]["replies"]
    assert status == 200 and len(replies) == 11
    assert replies[3]["error"]["code"] == 107
    offsets = [r["publish"]["offset"] for r in replies if "publish" in r]
    assert offsets == list(range(1, 11))
    frames = []
    while sum(frames) < 10:
        frame = await asyncio.wait_for(client.ws.recv(), 2000 * MS)
        pubs = sum('"pub"' in line for line in str(frame).split("\n"))
        if pubs:  # (not the join push of its own subscription)
            frames.append(pubs)
    assert frames == [1, 9]
    for bad in ({"commands": []}, {"commands": [{"batch": {}}]}, {"commands": [{"a": 1, "b": 2}]}):
        assert (await api(server, "batch", bad))[1]["error"]["code"] == 107


async def test_api_presence_disconnect_unsubscribe(server: Running) -> None:
    client = await RawClient.open(ws_url(server))
    await client.connect(token("42"))
    await client.call(
        "subscribe", {"channel": "document:2", "token": sub_token("42", "document:2")}
    )
    _, body = await api(server, "presence", {"channel": "document:2"})
    assert [i["user"] for i in body["result"]["presence"].values()] == ["42"]
    _, body = await api(server, "presence_stats", {"channel": "document:2"})
    assert body["result"] == {"num_clients": 1, "num_users": 1}
    _, body = await api(server, "info", {})
    assert body["result"]["nodes"][0]["num_clients"] == 1
    _, body = await api(server, "unsubscribe", {"user": "42", "channel": "document:2"})
    assert body == {"result": {}}
    push = await client.push("unsubscribe")
    assert push == {
        "channel": "document:2",
        "unsubscribe": {"code": 2000, "reason": "server unsubscribe"},
    }
    _, body = await api(
        server, "disconnect", {"user": "42", "disconnect": {"code": 4100, "reason": "bye"}}
    )
    assert body == {"result": {}}
    assert await client.closed() == (4100, "bye")


async def test_api_revocation(server: Running) -> None:
    a = await RawClient.open(ws_url(server))
    await a.connect(token("1", jti="j1"))
    b = await RawClient.open(ws_url(server))
    await b.connect(token("2", iat=int(time.time()) - 5))
    _, body = await api(server, "revoke_token", {"uid": "j1", "expire_at": int(time.time()) + 60})
    assert body == {"result": {}}
    assert (await a.closed())[0] == 4501
    _, body = await api(server, "invalidate_user_tokens", {"user": "2"})
    assert body == {"result": {}}
    assert (await b.closed())[0] == 4501


async def test_api_off_without_key(start_server: StartServer) -> None:
    server = await start_server(API_KEY=None)
    assert server.api is None
