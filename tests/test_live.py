"""Live behaviour over real sockets: pings, expiry, revocation, slow clients, recovery."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from websockets.asyncio.client import connect

from realtime_server.app import Running

from .conftest import StartServer, connected, ws_url
from .helpers import MS, RawClient, sub_token, token


async def test_pings_and_pong_timeout(start_server: StartServer) -> None:
    server = await start_server(PING_INTERVAL=0.4, PONG_TIMEOUT=0.2)
    silent = await RawClient.open(ws_url(server))
    reply = await silent.connect(token("1"))
    assert reply["connect"]["ping"] == 1 and reply["connect"]["pong"] is True
    polite = await connected(server, "2")
    # the polite client answers every ping; the silent one never does
    for _ in range(3):
        assert await polite.recv() == {}
        await polite.ws.send("{}")
    assert await silent.closed() == (3012, "no pong")
    await server.node.ops.publish("user:2", b'"alive"')
    assert (await polite.push("pub"))["pub"]["data"] == "alive"


async def test_unrefreshed_token_closes_3005_refresh_keeps_alive(start_server: StartServer) -> None:
    server = await start_server(EXPIRY_GRACE=0.2)
    lapsing = await RawClient.open(ws_url(server))
    reply = await lapsing.connect(token("1", ttl=1))
    assert reply["connect"]["expires"] is True and reply["connect"]["ttl"] == 1
    refreshing = await RawClient.open(ws_url(server))
    await refreshing.connect(token("2", ttl=1))
    refreshed = await refreshing.call("refresh", {"token": token("2", ttl=60)})
    assert refreshed["refresh"]["expires"] is True and 50 <= refreshed["refresh"]["ttl"] < 60
    assert await lapsing.closed(timeout=3000 * MS) == (3005, "connection expired")
    await server.node.ops.publish("user:2", b"1")
    assert (await refreshing.push("pub"))["pub"]["data"] == 1


async def test_refresh_with_other_users_token_closes_3500(server: Running) -> None:
    client = await connected(server)
    await client.send({"refresh": {"token": token("other")}})
    assert (await client.closed())[0] == 3500


async def test_subscription_token_expiry_unsubscribes_2501(start_server: StartServer) -> None:
    server = await start_server(EXPIRY_GRACE=0.2)
    client = await connected(server)
    reply = await client.call(
        "subscribe", {"channel": "document:1", "token": sub_token("42", "document:1", ttl=1)}
    )
    assert reply["subscribe"]["expires"] is True
    push = await client.push("unsubscribe", timeout=3000 * MS)
    assert push == {
        "channel": "document:1",
        "unsubscribe": {"code": 2501, "reason": "subscription expired"},
    }


async def test_sub_refresh_extends_subscription(server: Running) -> None:
    client = await connected(server)
    await client.call(
        "subscribe", {"channel": "document:1", "token": sub_token("42", "document:1", ttl=5)}
    )
    reply = await client.call(
        "sub_refresh", {"channel": "document:1", "token": sub_token("42", "document:1", ttl=60)}
    )
    assert reply["sub_refresh"]["expires"] is True and 50 <= reply["sub_refresh"]["ttl"] < 60


async def test_revoke_jti_closes_4501_promptly_and_blocks_reconnect(server: Running) -> None:
    tok = token("42", jti="t-1")
    client = await RawClient.open(ws_url(server))
    await client.connect(tok)
    other = await connected(server, "42", jti="t-2")
    started = time.perf_counter()
    await server.node.revocations.revoke_token("t-1", time.time() + 3600)
    assert await client.closed() == (4501, "token revoked")
    assert time.perf_counter() - started < 1.0
    again = await RawClient.open(ws_url(server))
    await again.send({"connect": {"token": tok}})
    assert (await again.closed())[0] == 4501
    await server.node.ops.publish("user:42", b"1")
    assert (await other.push("pub"))["pub"]["data"] == 1


async def test_revoke_user_cutoff(server: Running) -> None:
    old = await connected(server, "42", iat=int(time.time()) - 100)
    bystander = await connected(server, "7", iat=int(time.time()) - 100)
    await server.node.revocations.revoke_user("42", time.time() - 10)
    assert (await old.closed())[0] == 4501
    fresh = await connected(server, "42")  # issued after the cutoff
    await server.node.ops.publish("user:7", b"1")
    await server.node.ops.publish("user:42", b"2")
    assert (await bystander.push("pub"))["pub"]["data"] == 1
    assert (await fresh.push("pub"))["pub"]["data"] == 2


async def test_revoked_subscription_token_closes_4501(server: Running) -> None:
    client = await connected(server)
    await client.call(
        "subscribe",
        {"channel": "document:1", "token": sub_token("42", "document:1", jti="s-1")},
    )
    await server.node.revocations.revoke_token("s-1", time.time() + 60)
    assert (await client.closed())[0] == 4501


async def test_slow_reader_closed_3008_others_served(start_server: StartServer) -> None:
    server = await start_server(OUTBOX_BYTES=65536)
    # max_queue=1: the client stops reading its socket after one message
    slow_ws = await connect(ws_url(server), max_queue=1, max_size=None, ping_interval=None)
    slow = RawClient(slow_ws)
    await slow.connect(token("slow", channels=["document:big"]))
    fast = await connected(server, "fast", channels=["document:big"])
    payload = b'"' + b"x" * 60000 + b'"'
    received = 0
    for _ in range(400):
        await server.node.ops.publish("document:big", payload)
        while True:  # the fast client keeps up
            msg = await fast.recv()
            if "push" in msg and "pub" in msg["push"]:
                received += 1
                break
        if slow_ws.protocol.close_rcvd is not None or server.node.metrics.slow_disconnects_total:
            break
    assert server.node.metrics.slow_disconnects_total == 1
    assert server.node.metrics.closes[3008] == 1
    assert received > 0
    # Its close frame could not be written (over the bound): aborted, no close frame
    # (tests/test_socket_release.py); the SDKs reconnect after 1006 as after 3008.
    assert await slow.closed(timeout=10000 * MS) == (None, "")


async def test_ping_flood_without_reading_closed_3008_others_served(
    start_server: StartServer,
) -> None:
    """websockets answers every ping by itself: a client sending pings and never
    reading must not make the server buffer the pongs without bound."""
    server = await start_server(OUTBOX_BYTES=65536)
    flooder_ws = await connect(ws_url(server), max_queue=1, max_size=None, ping_interval=None)
    flooder = RawClient(flooder_ws)
    await flooder.connect(token("flooder"))
    bystander = await connected(server, "bystander", channels=["document:1"])
    transport = flooder_ws.transport
    transport.pause_reading()  # never read again: pongs pile up on the server
    # A masked ping frame with 125 bytes of payload (mask of zeros: payload as is).
    ping = bytes([0x89, 0x80 | 125]) + b"\x00\x00\x00\x00" + b"p" * 125
    burst = ping * 1000
    sent = 0
    while not server.node.metrics.slow_disconnects_total and sent < 256 * 2**20:
        transport.write(burst)
        sent += len(burst)
        if transport.get_write_buffer_size() > 2**20:  # the server stopped reading us
            await asyncio.sleep(10 * MS)
        else:
            await asyncio.sleep(0)
    assert server.node.metrics.slow_disconnects_total == 1, f"no close after {sent} bytes"
    assert "flooder" not in {s.user for s in server.node.registry}
    await server.node.ops.publish("document:1", b'{"still":"served"}')
    assert (await bystander.push("pub"))["pub"]["data"] == {"still": "served"}
    transport.abort()


async def test_recovery_on_resubscribe(server: Running) -> None:
    client = await connected(server)
    tok = sub_token("42", "document:1")
    first = (await client.call("subscribe", {"channel": "document:1", "token": tok}))["subscribe"]
    assert first["recoverable"] is True and first["offset"] == 0 and first["epoch"]
    await server.node.ops.publish("document:1", b'{"n":1}')
    assert (await client.push("pub"))["pub"]["offset"] == 1
    await client.call("unsubscribe", {"channel": "document:1"})
    for n in (2, 3, 4):
        await server.node.ops.publish("document:1", b'{"n":%d}' % n)
    again = await client.call(
        "subscribe",
        {
            "channel": "document:1",
            "token": tok,
            "recover": True,
            "offset": 1,
            "epoch": first["epoch"],
        },
    )
    result = again["subscribe"]
    assert result["recovered"] is True and result["was_recovering"] is True
    assert result["offset"] == 1
    assert [p["data"]["n"] for p in result["publications"]] == [2, 3, 4]
    assert [p["offset"] for p in result["publications"]] == [2, 3, 4]
    await server.node.ops.publish("document:1", b'{"n":5}')
    assert (await client.push("pub"))["pub"]["offset"] == 5


async def test_recovery_fails_on_wrong_epoch_and_on_trimmed_history(
    start_server: StartServer,
) -> None:
    server = await start_server(NAMESPACES='{"document": {"history_size": 2}}')
    client = await connected(server)
    tok = sub_token("42", "document:1")
    bad_epoch = await client.call(
        "subscribe",
        {"channel": "document:1", "token": tok, "recover": True, "offset": 0, "epoch": "zzz"},
    )
    assert bad_epoch["subscribe"]["recovered"] is False
    assert "publications" not in bad_epoch["subscribe"]
    epoch = bad_epoch["subscribe"]["epoch"]
    await client.call("unsubscribe", {"channel": "document:1"})
    for n in range(5):
        await server.node.ops.publish("document:1", b"%d" % n)
    trimmed = await client.call(
        "subscribe",
        {"channel": "document:1", "token": tok, "recover": True, "offset": 1, "epoch": epoch},
    )
    assert trimmed["subscribe"]["recovered"] is False
    assert trimmed["subscribe"]["offset"] == 5


async def test_server_side_subscription_recovers_on_reconnect(server: Running) -> None:
    client = await connected(server)
    await server.node.ops.publish("user:42", b"1")
    pub = await client.push("pub")
    epoch = (await server.node.broker.history("user:42")).top.epoch
    await client.close()
    await server.node.ops.publish("user:42", b"2")
    await server.node.ops.publish("user:42", b"3")
    again = await RawClient.open(ws_url(server))
    reply = await again.connect(
        token("42"),
        subs={"user:42": {"recover": True, "offset": pub["pub"]["offset"], "epoch": epoch}},
    )
    sub = reply["connect"]["subs"]["user:42"]
    assert sub["recovered"] is True
    assert [p["data"] for p in sub["publications"]] == [2, 3]


async def test_recovery_too_big_for_the_outbound_buffer_is_refused(
    start_server: StartServer,
) -> None:
    """What a reply recovers is bounded by half of REALTIME_OUTBOX_BYTES: a client
    away long enough on busy channels is told recovered: false (it reloads) instead of
    getting a reply that makes it a slow reader on a slow link (3008 at once, to come
    back and ask for even more)."""
    server = await start_server(OUTBOX_BYTES=65536)  # room: 32 KiB per reply
    filler = b'"' + b"x" * 1000 + b'"'
    for channel in ("document:a", "document:b"):
        for _ in range(20):  # about 21 KiB each: one fits, not both
            await server.node.ops.publish(channel, filler)
    epochs = {c: (await server.node.broker.history(f"document:{c}")).top.epoch for c in "ab"}
    client = await RawClient.open(ws_url(server))
    reply = await client.connect(
        token("42", channels=["document:a", "document:b"]),
        subs={f"document:{c}": {"recover": True, "offset": 0, "epoch": epochs[c]} for c in "ab"},
    )
    subs = reply["connect"]["subs"]
    assert subs["document:a"]["recovered"] is True
    assert len(subs["document:a"]["publications"]) == 20
    assert subs["document:b"]["recovered"] is False and subs["document:b"]["offset"] == 20
    assert "publications" not in subs["document:b"]
    await server.node.ops.publish("document:b", b'"live"')
    pub = (await client.push("pub"))["pub"]
    assert (pub["data"], pub["offset"]) == ("live", 21)
    # A subscribe's reply has the same room: 40 publications of 1 KiB do not fit.
    for _ in range(20):
        await server.node.ops.publish("document:c", filler)
    epoch = (await server.node.broker.history("document:c")).top.epoch
    small = {"channel": "document:c", "token": sub_token("42", "document:c"), "recover": True}
    fits = await client.call("subscribe", {**small, "offset": 0, "epoch": epoch})
    assert fits["subscribe"]["recovered"] is True
    await client.call("unsubscribe", {"channel": "document:c"})
    for _ in range(20):
        await server.node.ops.publish("document:c", filler)
    too_big = await client.call("subscribe", {**small, "offset": 0, "epoch": epoch})
    assert too_big["subscribe"]["recovered"] is False
    assert too_big["subscribe"]["offset"] == 40
    assert server.node.metrics.slow_disconnects_total == 0


async def test_identity_provider_subjects_get_their_personal_channel(
    server: Running, caplog: pytest.LogCaptureFixture
) -> None:
    """Auth0's subjects (``auth0|...``) and plus-addressed emails name personal channels
    (they once connected without one, silently); a subject that cannot is logged once."""
    for user in ("auth0|5f7c8ec7c33c6c004bbafe82", "jane+signing@example.com"):
        client = await connected(server, user)
        await server.node.ops.publish(f"user:{user}", b'{"for":"you"}')
        pub = await client.push("pub")
        assert (pub["channel"], pub["pub"]["data"]) == (f"user:{user}", {"for": "you"})
    with caplog.at_level(logging.WARNING, logger="realtime_server.commands"):
        for user in ("j\u00e4ne", "a b"):
            reply = await (await RawClient.open(ws_url(server))).connect(token(user))
            assert reply["connect"]["subs"] == {}
    warnings = [r.getMessage() for r in caplog.records if r.name == "realtime_server.commands"]
    assert len(warnings) == 1 and "connected without a personal channel" in warnings[0]


async def test_presence_join_leave_history(server: Running) -> None:
    alice = await connected(server, "alice", info={"name": "Alice"})
    bob = await connected(server, "bob")
    for client, user in ((alice, "alice"), (bob, "bob")):
        reply = await client.call(
            "subscribe",
            {
                "channel": "document:9",
                "token": sub_token(user, "document:9", info={"role": "signer"}),
            },
        )
        assert "subscribe" in reply
    join = await alice.push("join")
    if join["join"]["info"]["user"] == "alice":
        join = await alice.push("join")
    assert join["join"]["info"]["user"] == "bob"
    assert join["join"]["info"]["chan_info"] == {"role": "signer"}
    presence = (await bob.call("presence", {"channel": "document:9"}))["presence"]["presence"]
    assert {i["user"] for i in presence.values()} == {"alice", "bob"}
    alice_info = next(i for i in presence.values() if i["user"] == "alice")
    assert alice_info["conn_info"] == {"name": "Alice"}
    stats = (await bob.call("presence_stats", {"channel": "document:9"}))["presence_stats"]
    assert stats == {"num_clients": 2, "num_users": 2}
    await bob.close()
    leave = await alice.push("leave")
    assert leave["leave"]["info"]["user"] == "bob"
    for n in range(3):
        await server.node.ops.publish("document:9", b"%d" % n)
    hist = (await alice.call("history", {"channel": "document:9", "limit": 2}))["history"]
    assert [p["data"] for p in hist["publications"]] == [0, 1]
    assert hist["offset"] == 3
    rev = await alice.call(
        "history",
        {
            "channel": "document:9",
            "limit": -1,
            "reverse": True,
            "since": {"offset": 3, "epoch": hist["epoch"]},
        },
    )
    assert [p["data"] for p in rev["history"]["publications"]] == [1, 0]
    wrong = await alice.call(
        "history", {"channel": "document:9", "limit": 1, "since": {"offset": 0, "epoch": "x"}}
    )
    assert wrong["error"]["code"] == 112


async def test_batched_connect_and_subscribe_in_one_frame(server: Running) -> None:
    client = await RawClient.open(ws_url(server))
    ids = await client.send(
        {"connect": {"token": token("42")}},
        {"subscribe": {"channel": "document:3", "token": sub_token("42", "document:3")}},
        {"presence_stats": {"channel": "document:3"}},
    )
    replies = [await client.reply(i) for i in ids]
    assert "connect" in replies[0] and "subscribe" in replies[1]
    assert replies[2]["presence_stats"]["num_clients"] == 1


async def test_client_publish_allowed_by_namespace(start_server: StartServer) -> None:
    server = await start_server(NAMESPACES='{"chat": {"allow_publish": true}}')
    client = await connected(server)
    await client.call("subscribe", {"channel": "chat:1", "token": sub_token("42", "chat:1")})
    assert await client.call("publish", {"channel": "chat:1", "data": {"m": 1}}) == {
        "id": client.next_id - 1,
        "publish": {},
    }
    pub = await client.push("pub")
    assert pub["pub"]["data"] == {"m": 1} and pub["pub"]["info"]["user"] == "42"


async def test_many_clients_one_publication(server: Running) -> None:
    clients = [await connected(server, f"u{i}", channels=["document:all"]) for i in range(50)]
    await server.node.ops.publish("document:all", b'{"status":"completed"}')
    results = await asyncio.gather(*(c.push("pub") for c in clients))
    assert all(r["pub"]["data"] == {"status": "completed"} for r in results)
