"""Identity-provider keys end to end: a real key-set server on 127.0.0.1, a real server,
real WebSocket connects with tokens signed by ``cryptography`` keys.

Fetches are triggered through the refresher's public key-source call
(``refetch_unknown``, which returns once the fetch is applied) or by connects, never by
waiting for the clock, except where the background retry itself is under test.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator

import aiohttp
import pytest
from websockets.exceptions import ConnectionClosed

from realtime_server.app import Running
from realtime_server.auth.jwks_fetch import JwksRefresher

from .conftest import StartServer, ws_url
from .helpers import MS, RawClient, token
from .jwks_helpers import JwksServer, Signer, ec_signer, ed_signer, rsa_signer
from .procs import cli_env, run_cli


@pytest.fixture
async def jwks() -> AsyncIterator[JwksServer]:
    server = JwksServer()
    await server.start()
    try:
        yield server
    finally:
        await server.close()


def refresher(server: Running) -> JwksRefresher:
    source = server.node.verifier.source
    assert isinstance(source, JwksRefresher)
    return source


async def connect(server: Running, tok: str) -> tuple[RawClient, dict[str, object]]:
    client = await RawClient.open(ws_url(server))
    return client, await client.connect(tok)


async def refused_with(server: Running, tok: str) -> int | None:
    """The close code a connect with ``tok`` ends with."""
    client = await RawClient.open(ws_url(server))
    try:
        reply = await client.connect(tok)
    except ConnectionClosed:
        reply = {}
    assert "connect" not in reply, reply
    return (await client.closed())[0]


async def readyz(server: Running) -> tuple[int, dict[str, object]]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{server.port}/readyz") as response,
    ):
        return response.status, await response.json()


async def until(predicate: object, timeout: float = 5000 * MS) -> None:
    """Poll a state no event announces (the refresher's background retry)."""
    assert callable(predicate)
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(10 * MS)


async def test_provider_tokens_of_each_algorithm_connect(
    jwks: JwksServer, start_server: StartServer
) -> None:
    rs, ps, es, ed = rsa_signer("rs"), rsa_signer("ps", alg="PS256"), ec_signer(), ed_signer()
    jwks.publish(rs, ps, es, ed)
    server = await start_server(JWT_JWKS_URL=jwks.url)
    assert jwks.hits == 1  # fetched once, at start
    for signer, user in ((rs, "a"), (ps, "b"), (es, "c"), (ed, "d")):
        client, reply = await connect(server, signer.sign(user))
        assert set(reply["connect"]["subs"]) == {f"user:{user}"}
        await client.close()
    client, reply = await connect(server, token("hs"))  # the secret still works alongside
    assert "connect" in reply
    await client.close()
    assert jwks.hits == 1  # no connect reached the network
    status, body = await readyz(server)
    assert status == 200 and body["degraded"] == {}
    metrics = server.node.metrics.render().decode()
    assert "realtime_jwks_keys 4" in metrics and "realtime_jwks_fetches_total 1" in metrics
    assert "realtime_jwks_age_seconds " in metrics


async def test_jwks_only_refuses_hmac_tokens(jwks: JwksServer, start_server: StartServer) -> None:
    jwks.publish(ec_signer())
    server = await start_server(JWT_JWKS_URL=jwks.url, JWT_SECRET=None)
    assert await refused_with(server, token("hs")) == 3500


async def test_rotation_new_kid_fetched_on_connect_and_removed_key_refused(
    jwks: JwksServer, start_server: StartServer
) -> None:
    old, new = rsa_signer("2024"), ec_signer("2025")
    jwks.publish(old)
    server = await start_server(JWT_JWKS_URL=jwks.url, JWT_JWKS_MIN_INTERVAL=0)
    client, reply = await connect(server, old.sign("u1"))
    assert "connect" in reply
    jwks.publish(old, new)  # the provider rotates in a new key
    client2, reply = await connect(server, new.sign("u2"))
    assert "connect" in reply, reply  # the connect waited for one refetch
    assert jwks.hits == 2 and refresher(server).refetches_total == 1
    jwks.publish(new)  # ... and drops the old one
    assert await refresher(server).refetch_unknown()
    assert await refused_with(server, old.sign("u3")) == 3500
    assert jwks.hits == 4  # the old kid caused one more (rate-limited) refetch
    # Connections made with the removed key are not closed by a rotation.
    assert "ping" in await client.call("ping", {})
    await client.close()
    await client2.close()


async def test_scheduled_refresh(jwks: JwksServer, start_server: StartServer) -> None:
    old, new = ec_signer("a"), ec_signer("b")
    jwks.publish(old)
    server = await start_server(JWT_JWKS_URL=jwks.url, JWT_JWKS_REFRESH=1)
    jwks.publish(new)
    source = refresher(server)
    await until(lambda: source.current is not None and "b" in source.current.kids)
    assert refresher(server).refetches_total == 0
    client, reply = await connect(server, new.sign())
    assert "connect" in reply
    await client.close()


async def test_made_up_kid_flood_costs_one_fetch_per_interval(
    jwks: JwksServer, start_server: StartServer
) -> None:
    legit = ec_signer("real")
    jwks.publish(legit)
    server = await start_server(JWT_JWKS_URL=jwks.url, JWT_JWKS_MIN_INTERVAL=60)
    attacker = ec_signer("x")

    async def flood(n: int) -> list[int | None]:
        async def one() -> int | None:
            attacker.kid = uuid.uuid4().hex
            return await refused_with(server, attacker.sign())

        return list(await asyncio.gather(*(one() for _ in range(n))))

    assert await flood(30) == [3500] * 30
    assert jwks.hits == 1  # within the interval of the start's fetch: no refetch at all
    refresher(server)._last_attempt -= 60  # the interval has passed
    assert await flood(30) == [3500] * 30
    assert jwks.hits == 2  # one refetch for the whole flood
    assert refresher(server).refetches_total == 1
    client, reply = await connect(server, legit.sign())
    assert "connect" in reply
    await client.close()


async def test_endpoint_down_keeps_the_last_good_set(
    jwks: JwksServer, start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    es = ec_signer("k")
    jwks.publish(es)
    server = await start_server(JWT_JWKS_URL=jwks.url, JWT_JWKS_MIN_INTERVAL=0)
    source = refresher(server)
    jwks.mode = "500"
    with caplog.at_level(logging.WARNING, logger="realtime_server.jwks"):
        assert not await source.refetch_unknown()
        assert not await source.refetch_unknown()
    assert len([r for r in caplog.records if "refresh failed" in r.getMessage()]) == 1
    client, reply = await connect(server, es.sign())  # the last good set is in use
    assert "connect" in reply
    await client.close()
    status, body = await readyz(server)
    assert status == 200 and "failing (status)" in str(body["degraded"]["jwks"])
    metrics = server.node.metrics.render().decode()
    assert 'realtime_jwks_fetch_failures_total{kind="status"} 2' in metrics
    jwks.mode = "ok"
    assert await source.refetch_unknown()
    status, body = await readyz(server)
    assert status == 200 and body["degraded"] == {}


async def test_before_any_set_connects_get_100_and_readyz_503(
    jwks: JwksServer, start_server: StartServer
) -> None:
    es = ec_signer("k")
    jwks.publish(es)
    jwks.mode = "500"
    server = await start_server(JWT_JWKS_URL=jwks.url, JWT_JWKS_MIN_INTERVAL=0.05)
    status, body = await readyz(server)
    assert status == 503 and "no key set" in str(body["problems"]["jwks"])
    client, reply = await connect(server, es.sign())
    assert reply["error"] == {"code": 100, "message": "internal server error", "temporary": True}
    await client.close()
    client, reply = await connect(server, token("hs"))  # HS tokens do not need the set
    assert "connect" in reply
    await client.close()
    jwks.mode = "ok"  # the background retry (backing off from 0.05 s) recovers
    await until(lambda: refresher(server).current is not None)
    status, _ = await readyz(server)
    assert status == 200
    client, reply = await connect(server, es.sign())
    assert "connect" in reply
    await client.close()


@pytest.mark.parametrize(
    ("mode", "kind"),
    [("hang", "timeout"), ("huge", "too_large"), ("garbage", "invalid"), ("redirect", "redirect")],
)
async def test_bad_answers_are_failures(
    jwks: JwksServer, start_server: StartServer, mode: str, kind: str
) -> None:
    jwks.publish(ec_signer("k"))
    jwks.mode = mode
    server = await start_server(
        JWT_JWKS_URL=jwks.url, JWT_JWKS_TIMEOUT=500 * MS, JWT_JWKS_MIN_INTERVAL=60
    )
    source = refresher(server)
    assert source.current is None and source.failures == {kind: 1}
    assert source.failing == kind
    if mode == "huge":
        assert not jwks.huge_completed  # the reader stopped at the cap
    if mode == "redirect":
        assert jwks.elsewhere_hits == 0  # never followed
    status, _ = await readyz(server)
    assert status == 503


async def test_check_command_prints_the_key_set(jwks: JwksServer) -> None:
    jwks.publish(ec_signer("one"), ed_signer("two"), Signer(ec_signer().private, "ES256", "x"))
    jwks.document["keys"].append({"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"})
    code, out, err = await run_cli("check", env=cli_env(JWT_JWKS_URL=jwks.url))
    assert code == 0, err
    line = next(line for line in out.splitlines() if line.startswith("key set"))
    assert line.startswith("key set (127.0.0.1): ok, 3 keys; kids one, two, x")
    assert "kid hmac: key type oct not used" in line
    jwks.mode = "500"
    code, out, _ = await run_cli("check", env=cli_env(JWT_JWKS_URL=jwks.url))
    assert code == 1 and "key set (127.0.0.1): unreachable (status: HTTP 500)" in out


async def test_serve_refuses_plain_http_to_a_remote_host() -> None:
    code, _, err = await run_cli(
        "serve", env=cli_env(JWT_JWKS_URL="http://idp.example.com/jwks.json")
    )
    assert code == 2 and "REALTIME_JWT_JWKS_URL" in err and "https" in err
