"""``serve --demo`` without a browser: routes, token endpoint, settings, and the simulated
signing flow seen by a raw protocol client (publications, presence join/leave,
notifications). The page itself runs in Chromium in tests/test_browser.py."""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import jwt
import pytest

from realtime_server.app import Running, running
from realtime_server.demo import DOCUMENT, SIGNERS, Demo, prepare_demo

from .conftest import ws_url
from .helpers import MS, SECRET, RawClient, make_settings
from .procs import run_cli

VIEWER = "viewer-test1234"


@pytest.fixture
async def demo(loop_guard: None) -> AsyncIterator[tuple[Running, Demo]]:
    settings, site = prepare_demo(
        make_settings(JWT_SECRET=None, API_KEY=None, EVENTS_ENABLED="false"),
        step=0.05,
        announce=False,
    )
    async with running(settings, demo=site) as server:
        yield server, site


async def _get(server: Running, path: str) -> tuple[int, dict[str, str], bytes]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{server.port}{path}") as response,
    ):
        return response.status, dict(response.headers), await response.read()


async def _token(server: Running, **query: str) -> dict[str, Any]:
    path = "/demo/token?" + "&".join(f"{k}={v}" for k, v in query.items())
    status, _, body = await _get(server, path)
    assert status == 200, body
    result: dict[str, Any] = json.loads(body)
    return result


async def test_plain_serve_has_no_demo(server: Running) -> None:
    for path in ("/", "/demo/app.js", "/demo/config.json", f"/demo/token?user={VIEWER}"):
        status, _, _ = await _get(server, path)
        assert status == 404, path


async def test_page_and_assets_are_local(demo: tuple[Running, Demo]) -> None:
    server, _ = demo
    status, headers, page = await _get(server, "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    csp = headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    assert b'src="/demo/app.js"' in page and b'href="/demo/style.css"' in page
    for path, ctype in (("/demo/app.js", "text/javascript"), ("/demo/style.css", "text/css")):
        status, headers, body = await _get(server, path)
        assert status == 200 and headers["Content-Type"].startswith(ctype), path
        assert headers["X-Content-Type-Options"] == "nosniff"
        # Nothing is fetched from elsewhere: no absolute http(s) URLs in the assets.
        assert not re.search(rb"https?://", body), path
    assert not re.search(rb"https?://", page)
    status, _, config = await _get(server, "/demo/config.json")
    assert status == 200 and DOCUMENT.channel.encode() in config
    assert (await _get(server, "/demo/unknown"))[0] == 404
    assert (await _get(server, "/elsewhere"))[0] == 404  # other paths keep 404


async def test_token_endpoint_mints_only_demo_tokens(demo: tuple[Running, Demo]) -> None:
    server, site = demo
    verifier = server.node.verifier
    connection = await _token(server, user=VIEWER)
    claims = verifier.verify_connection(connection["token"], time.time())
    assert claims.sub == VIEWER and claims.jti
    assert VIEWER in site.viewers()  # viewers get the simulation's notifications
    subscription = await _token(server, user=VIEWER, channel=DOCUMENT.channel)
    sub_claims = verifier.verify_subscription(subscription["token"], time.time())
    assert (sub_claims.sub, sub_claims.channel) == (VIEWER, DOCUMENT.channel)
    # Bounded lifetimes.
    assert (await _token(server, user=VIEWER, ttl="1"))["ttl"] == 3
    assert (await _token(server, user=VIEWER, ttl="999999"))["ttl"] == 3600

    for query, expected in (
        ("user=signer-alice", 400),  # never a simulated signer
        ("user=alice", 400),
        ("", 400),
        (f"user={VIEWER}&channel=document:other", 403),
        (f"user={VIEWER}&channel=user:{VIEWER}", 403),
        (f"user={VIEWER}&ttl=soon", 400),
    ):
        status, _, _ = await _get(server, "/demo/token?" + query)
        assert status == expected, query
    # Not signed with anything a client could guess: the test secret does not verify it.
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(connection["token"], SECRET, algorithms=["HS256"])


async def test_simulation_publishes_presence_and_notifications(
    demo: tuple[Running, Demo],
) -> None:
    server, _ = demo
    connection = await _token(server, user=VIEWER)
    subscription = await _token(server, user=VIEWER, channel=DOCUMENT.channel)
    client = await RawClient.open(ws_url(server))
    try:
        reply = await client.connect(connection["token"])
        assert f"user:{VIEWER}" in reply["connect"]["subs"]
        reply = await client.call(
            "subscribe", {"channel": DOCUMENT.channel, "token": subscription["token"]}
        )
        assert reply["subscribe"]["recoverable"] is True

        kinds: set[str] = set()
        joined: set[str] = set()
        left: set[str] = set()
        notified = False
        signer_ids = {s.id for s in SIGNERS}
        while not (
            {"sent", "viewed", "signed"} <= kinds
            and joined & signer_ids
            and left & signer_ids
            and notified
        ):
            message = await client.recv(timeout=5000 * MS)
            push = message.get("push")
            if not push:
                continue
            if "pub" in push and push["channel"] == DOCUMENT.channel:
                event = push["pub"]["data"]
                assert event["document"]["id"] == DOCUMENT.id and event["round"] >= 1
                kinds.add(event["type"])
            elif "pub" in push and push["channel"] == f"user:{VIEWER}":
                assert push["pub"]["data"]["type"] == "notification"
                notified = True
            elif "join" in push:
                info = push["join"]["info"]
                joined.add(info["user"])
                if info["user"] in signer_ids:
                    assert info["conn_info"]["name"] in {s.name for s in SIGNERS}
            elif "leave" in push:
                left.add(push["leave"]["info"]["user"])
        presence = await client.call("presence", {"channel": DOCUMENT.channel})
        users = {info["user"] for info in presence["presence"]["presence"].values()}
        assert VIEWER in users and users <= signer_ids | {VIEWER}
    finally:
        await client.close()


async def test_prepare_demo_settings() -> None:
    settings, site = prepare_demo(
        make_settings(JWT_SECRET=None, REDIS_URL="redis://127.0.0.1:1/0"), announce=False
    )
    assert settings.jwt_secret and len(settings.jwt_secret) == 64
    assert settings.jwt_secret not in repr(settings)
    assert settings.redis_url is None and settings.workers == 1
    assert site.simulation is None  # starts with the server
    kept, _ = prepare_demo(make_settings(), announce=False)
    assert kept.jwt_secret == SECRET  # a configured secret is used as it is


async def test_cli_demo_options() -> None:
    code, out, _ = await run_cli("serve", "--help")
    assert code == 0 and "--demo" in out and "--demo-step" in out
    code, _, err = await run_cli("serve", "--demo", "--demo-step", "0")
    assert code == 2 and "--demo-step" in err
