"""The subscribe proxy end to end: a real backend (aiohttp on 127.0.0.1) answering in
Centrifugo's shape, a real server, real WebSocket clients.

The backend answers by channel: ``document:allowed`` subscribes with ``info``,
``document:denied`` refuses with 103, ``document:slow`` never answers in time, and so
on (:data:`ANSWERS`).
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aiohttp import web

from realtime_server.app import Running
from realtime_server.codes import ErrorCode
from realtime_server.config import Settings
from realtime_server.errors import ConfigError
from realtime_server.events import EventType
from realtime_server.proxy import (
    Allowed,
    Denied,
    Disconnect,
    Failed,
    SubscribeProxy,
    parse_answer,
)

from .conftest import StartServer, ws_url
from .helpers import MS, RawClient, make_settings, quiet_period, recorded, sub_token, token

INFO = {"role": "signer", "name": "Ada"}
ANSWERS: dict[str, Any] = {
    "allowed": {"result": {"info": INFO}},
    "plain": {"result": {}},
    "b64": {"result": {"b64info": base64.b64encode(orjson.dumps(INFO)).decode()}},
    "denied": {"error": {"code": 103, "message": "permission denied"}},
    "app-error": {"error": {"code": 1001, "message": "not a participant", "temporary": True}},
    "disconnect": {"disconnect": {"code": 4001, "reason": "signing session ended"}},
    "bad-code": {"error": {"code": 3000, "message": "x"}},
    "bad-disconnect": {"disconnect": {"code": 3500, "reason": "x"}},
    "empty": {},
    "huge": {"result": {"info": "x" * 100_000}},
}


class Backend:
    """The signing backend's subscribe-proxy endpoint."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, Any], dict[str, str]]] = []
        self.inflight = 0
        self.max_inflight = 0
        self.gate = asyncio.Event()
        self.gate.set()
        self.arrived = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/proxy/subscribe", self.subscribe)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        assert site._server is not None
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/proxy/subscribe"

    async def close(self) -> None:
        self.gate.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def subscribe(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append((body, dict(request.headers)))
        self.arrived.set()
        self.inflight += 1
        self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            await self.gate.wait()
        finally:
            self.inflight -= 1
        name = body["channel"].split(":", 1)[1]
        if name == "slow":
            await asyncio.sleep(3000 * MS)  # past the proxy timeout
        if name == "500":
            return web.Response(status=500, text="internal error")
        if name == "garbage":
            return web.Response(text="<html>oops</html>", content_type="text/html")
        if name == "redirect":
            raise web.HTTPFound("/elsewhere")
        answer = ANSWERS.get(name, {"result": {}})
        response = web.Response(body=orjson.dumps(answer), content_type="application/json")
        if name == "set-cookie":  # a backend framework setting its session cookie
            response.set_cookie("backend_session", "user-" + body["user"])
        return response


@pytest.fixture
async def backend() -> AsyncIterator[Backend]:
    b = Backend()
    await b.start()
    try:
        yield b
    finally:
        await b.close()


PROXIED = '{"document": {"subscribe_proxy": true}, "memo": {}}'


async def proxied_server(start_server: StartServer, backend: Backend, **env: Any) -> Running:
    env.setdefault("PROXY_TIMEOUT", 500 * MS)
    return await start_server(NAMESPACES=PROXIED, SUBSCRIBE_PROXY_URL=backend.url, **env)


async def client_of(server: Running, user: str = "42", **kwargs: Any) -> RawClient:
    client = await RawClient.open(ws_url(server), **kwargs)
    reply = await client.connect(token(user))
    assert "connect" in reply, reply
    return client


async def test_allowed_subscribes_with_info_as_chan_info(
    backend: Backend, start_server: StartServer
) -> None:
    server = await proxied_server(start_server, backend)
    events = recorded(server)
    client = await client_of(server)
    reply = await client.call("subscribe", {"channel": "document:allowed", "data": {"doc": 7}})
    assert "subscribe" in reply, reply
    ((body, _headers),) = backend.requests
    assert body == {
        "client": body["client"],
        "transport": "websocket",
        "protocol": "json",
        "encoding": "json",
        "user": "42",
        "channel": "document:allowed",
        "data": {"doc": 7},
    }
    assert body["client"] in server.node.registry
    presence = await client.call("presence", {"channel": "document:allowed"})
    (entry,) = presence["presence"]["presence"].values()
    assert entry["chan_info"] == INFO
    proxy_events = [e for e in events if e.type is EventType.SUBSCRIBE_PROXY]
    assert len(proxy_events) == 1
    event = proxy_events[0]
    assert event.channel == "document:allowed" and event.user == "42" and event.code is None
    assert event.details is not None and event.details["decision"] == "allowed"
    assert [e.type for e in events if e.channel == "document:allowed"] == [
        EventType.SUBSCRIBE_PROXY,
        EventType.SUBSCRIBE,
    ]
    await client.close()


async def test_b64info_and_no_data(backend: Backend, start_server: StartServer) -> None:
    server = await proxied_server(start_server, backend)
    client = await client_of(server)
    assert "subscribe" in await client.call("subscribe", {"channel": "document:b64"})
    assert "data" not in backend.requests[0][0]
    presence = await client.call("presence", {"channel": "document:b64"})
    (entry,) = presence["presence"]["presence"].values()
    assert entry["chan_info"] == INFO
    await client.close()


@pytest.mark.parametrize(
    ("channel", "error"),
    [
        ("denied", {"code": 103, "message": "permission denied"}),
        ("app-error", {"code": 1001, "message": "not a participant", "temporary": True}),
    ],
)
async def test_errors_are_passed_through(
    backend: Backend, start_server: StartServer, channel: str, error: dict[str, Any]
) -> None:
    server = await proxied_server(start_server, backend)
    events = recorded(server)
    client = await client_of(server)
    reply = await client.call("subscribe", {"channel": f"document:{channel}"})
    assert reply["error"] == error
    assert "ping" in await client.call("ping", {})  # the connection stays
    (event,) = [e for e in events if e.type is EventType.SUBSCRIBE_PROXY]
    assert event.code == error["code"] and event.details is not None
    assert event.details["decision"] == "denied"
    (rejected,) = [e for e in events if e.type is EventType.SUBSCRIBE_REJECTED]
    assert rejected.code == error["code"]
    await client.close()


async def test_disconnect_closes_with_its_code(backend: Backend, start_server: StartServer) -> None:
    server = await proxied_server(start_server, backend)
    events = recorded(server)
    client = await client_of(server)
    await client.send({"subscribe": {"channel": "document:disconnect"}})
    assert await client.closed() == (4001, "signing session ended")
    (event,) = [e for e in events if e.type is EventType.SUBSCRIBE_PROXY]
    assert event.code == 4001 and event.details is not None
    assert event.details["decision"] == "disconnect"


@pytest.mark.parametrize(
    ("channel", "kind"),
    [
        ("slow", "timeout"),
        ("500", "status"),
        ("garbage", "invalid"),
        ("redirect", "status"),
        ("empty", "invalid"),
        ("bad-code", "invalid"),
        ("bad-disconnect", "invalid"),
        ("huge", "too_large"),
    ],
)
async def test_failures_are_temporary_errors_never_subscriptions(
    backend: Backend, start_server: StartServer, channel: str, kind: str
) -> None:
    server = await proxied_server(start_server, backend)
    events = recorded(server)
    client = await client_of(server)
    name = f"document:{channel}"
    reply = await client.call("subscribe", {"channel": name})
    assert reply["error"] == {"code": 100, "message": "internal server error", "temporary": True}
    assert name not in next(iter(server.node.registry)).subs
    assert not server.node.hub.has_local(name)
    (event,) = [e for e in events if e.type is EventType.SUBSCRIBE_PROXY]
    assert event.code == 100 and event.details is not None
    assert event.details["decision"] == "failed" and event.details["failure"] == kind
    metrics = server.node.metrics.render().decode()
    assert f'realtime_subscribe_proxy_errors_total{{kind="{kind}"}} 1' in metrics
    assert "realtime_subscribe_proxy_calls_total 1" in metrics
    assert 'realtime_subscribe_proxy_seconds_bucket{le="+Inf"} 1' in metrics
    await client.close()


async def test_a_subscription_token_bypasses_the_proxy(
    backend: Backend, start_server: StartServer
) -> None:
    server = await proxied_server(start_server, backend)
    client = await client_of(server)
    ok = sub_token("42", "document:denied")
    assert "subscribe" in await client.call(
        "subscribe", {"channel": "document:denied", "token": ok}
    )
    bad = sub_token("42", "document:allowed", secret="another-secret-0123456789abcdef-0123")
    reply = await client.call("subscribe", {"channel": "document:allowed", "token": bad})
    assert reply["error"]["code"] == 103
    assert backend.requests == []
    await client.close()


async def test_namespaces_without_the_option_still_need_a_token(
    backend: Backend, start_server: StartServer
) -> None:
    server = await proxied_server(start_server, backend)
    client = await client_of(server)
    reply = await client.call("subscribe", {"channel": "memo:1"})
    assert reply["error"]["code"] == 103
    assert backend.requests == []
    await client.close()


HANDSHAKE = [("Cookie", "sb-access=abc"), ("Authorization", "Bearer xyz"), ("X-Doc", "7")]


async def test_configured_headers_are_forwarded_and_only_those(
    backend: Backend, start_server: StartServer
) -> None:
    server = await proxied_server(start_server, backend, PROXY_HTTP_HEADERS="cookie, X-Doc")
    client = await client_of(server, additional_headers=HANDSHAKE)
    assert "subscribe" in await client.call("subscribe", {"channel": "document:plain"})
    ((_body, headers),) = backend.requests
    assert headers["Cookie"] == "sb-access=abc" and headers["X-Doc"] == "7"
    assert "Authorization" not in headers
    assert headers["Content-Type"] == "application/json"
    (session,) = server.node.registry
    request = session.conn.request
    assert request is not None
    assert sorted(k for k, _ in request.headers.raw_items()) == ["Cookie", "X-Doc"]
    await client.close()


async def test_no_headers_kept_or_forwarded_unless_configured(
    backend: Backend, start_server: StartServer
) -> None:
    server = await proxied_server(start_server, backend)
    client = await client_of(server, additional_headers=HANDSHAKE)
    assert "subscribe" in await client.call("subscribe", {"channel": "document:plain"})
    ((_body, headers),) = backend.requests
    assert "Cookie" not in headers and "Authorization" not in headers and "X-Doc" not in headers
    (session,) = server.node.registry
    request = session.conn.request
    assert request is not None and len(request.headers) == 0
    await client.close()


async def test_cookies_set_by_the_backend_are_never_sent_back(
    backend: Backend, start_server: StartServer
) -> None:
    # "localhost", not an IP address: aiohttp's default jar would keep this cookie.
    url = backend.url.replace("127.0.0.1", "localhost")
    server = await start_server(NAMESPACES=PROXIED, SUBSCRIBE_PROXY_URL=url)
    first, second = await client_of(server, "1"), await client_of(server, "2")
    assert "subscribe" in await first.call("subscribe", {"channel": "document:set-cookie"})
    assert "subscribe" in await second.call("subscribe", {"channel": "document:plain"})
    assert [body["user"] for body, _ in backend.requests] == ["1", "2"]
    assert "Cookie" not in backend.requests[1][1]
    await first.close()
    await second.close()


async def test_concurrent_calls_are_bounded(backend: Backend, start_server: StartServer) -> None:
    server = await proxied_server(
        start_server, backend, PROXY_MAX_CONCURRENCY=2, PROXY_TIMEOUT=10000 * MS
    )
    clients = [await client_of(server, f"u{i}") for i in range(4)]
    backend.gate.clear()
    calls = [
        asyncio.ensure_future(c.call("subscribe", {"channel": "document:plain"})) for c in clients
    ]
    async with asyncio.timeout(5000 * MS):
        while backend.inflight < 2:
            backend.arrived.clear()
            await backend.arrived.wait()
    await quiet_period()  # nothing more may arrive while two are in flight
    assert backend.inflight == 2 and len(backend.requests) == 2
    backend.gate.set()
    replies = await asyncio.gather(*calls)
    assert all("subscribe" in r for r in replies), replies
    assert backend.max_inflight == 2 and len(backend.requests) == 4
    for c in clients:
        await c.close()


async def test_unreachable_backend_is_a_connection_failure(start_server: StartServer) -> None:
    server = await start_server(NAMESPACES=PROXIED, SUBSCRIBE_PROXY_URL="http://127.0.0.1:9/proxy")
    client = await client_of(server)
    reply = await client.call("subscribe", {"channel": "document:1"})
    assert reply["error"]["code"] == 100 and reply["error"]["temporary"] is True
    metrics = server.node.metrics.render().decode()
    assert 'realtime_subscribe_proxy_errors_total{kind="connection"} 1' in metrics
    await client.close()


# --- answers (pure) ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (200, b'{"result": {}}', Allowed()),
        (200, b'{"result": {"info": null}}', Allowed()),
        (200, b'{"result": {"info": [1, "a"]}}', Allowed(b'[1,"a"]')),
        (200, b'{"result": {"b64info": "bm90IGpzb24="}}', Failed("invalid")),
        (200, b'{"result": {"b64info": "***"}}', Failed("invalid")),
        (200, b'{"result": null}', Failed("invalid")),
        (200, b'{"result": []}', Failed("invalid")),
        (200, b"{}", Failed("invalid")),
        (200, b"[]", Failed("invalid")),
        (200, b"", Failed("invalid")),
        (200, b'{"error": {"code": 400}}', Denied(ErrorCode(400, "error"))),
        (200, b'{"error": {"code": 103}}', Denied(ErrorCode(103, "permission denied"))),
        (200, b'{"error": {"code": 1999, "message": "m"}}', Denied(ErrorCode(1999, "m"))),
        (200, b'{"error": {"code": 2000, "message": "m"}}', Failed("invalid")),
        (200, b'{"error": {"code": 100}}', Failed("invalid")),
        (200, b'{"error": {"code": true}}', Failed("invalid")),
        (200, b'{"error": {"code": "103"}}', Failed("invalid")),
        (200, b'{"error": "nope"}', Failed("invalid")),
        (200, b'{"disconnect": {"code": 4999, "reason": "bye"}}', None),
        (200, b'{"disconnect": {"code": 4000}}', None),
        (200, b'{"disconnect": {"code": 5000}}', Failed("invalid")),
        (200, b'{"disconnect": {"code": 4000}, "result": {}}', None),
        (201, b'{"result": {}}', Failed("status")),
        (403, b'{"error": {"code": 103}}', Failed("status")),
    ],
)
def test_parse_answer(status: int, body: bytes, expected: object) -> None:
    decision = parse_answer(status, body)
    if expected is None:
        assert isinstance(decision, Disconnect)
        assert 4000 <= decision.close.code <= 4999
        assert decision.close.reconnect == (decision.close.code < 4500)
        return
    assert decision == expected


@pytest.mark.parametrize(
    ("reason", "sent"),
    [
        ("bye", "bye"),
        ("", "disconnect"),
        ("123", "disconnect"),  # JSON text: centrifuge-js would parse it
        ('{"a":1}', "disconnect"),
        ("é" * 10 + "ok", "ok"),
        ("x" * 500, "x" * 100),
    ],
)
def test_disconnect_reasons_are_safe(reason: str, sent: str) -> None:
    decision = parse_answer(200, orjson.dumps({"disconnect": {"code": 4000, "reason": reason}}))
    assert isinstance(decision, Disconnect) and decision.close.reason == sent


# --- configuration -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"NAMESPACES": PROXIED}, "REALTIME_NAMESPACES"),
        (
            {
                "NAMESPACES": '{"user": {"subscribe_proxy": true}}',
                "SUBSCRIBE_PROXY_URL": "http://a/",
            },
            "REALTIME_NAMESPACES",
        ),
        ({"SUBSCRIBE_PROXY_URL": "ftp://a/"}, "REALTIME_SUBSCRIBE_PROXY_URL"),
        ({"SUBSCRIBE_PROXY_URL": "http://u:pw@a/"}, "REALTIME_SUBSCRIBE_PROXY_URL"),
        ({"PROXY_HTTP_HEADERS": "Cookie,Bad Header"}, "REALTIME_PROXY_HTTP_HEADERS"),
        ({"PROXY_HTTP_HEADERS": "Host"}, "REALTIME_PROXY_HTTP_HEADERS"),
        ({"PROXY_HTTP_HEADERS": "Sec-WebSocket-Key"}, "REALTIME_PROXY_HTTP_HEADERS"),
        ({"PROXY_TIMEOUT": "0"}, "REALTIME_PROXY_TIMEOUT"),
    ],
)
def test_bad_proxy_configuration(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError, match=variable) as info:
        make_settings(**env)
    assert "pw" not in str(info.value)


def test_header_names_are_kept_lower_case_and_none_by_default() -> None:
    assert (
        SubscribeProxy.from_settings(make_settings(SUBSCRIBE_PROXY_URL="http://a/")).header_names
        is None
    )
    settings: Settings = make_settings(
        SUBSCRIBE_PROXY_URL="http://a/", PROXY_HTTP_HEADERS="Cookie, Authorization"
    )
    assert SubscribeProxy.from_settings(settings).header_names == {"cookie", "authorization"}
