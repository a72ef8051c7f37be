"""Revocations outlive a restart: of Redis without its data (a restart without
persistence, a flush), and of the embedded engine's process.

Revocations are keys in Redis; a Redis that comes back empty forgets them. Every node
keeps the live revocations in memory too (read from Redis at start, then from the
announcements) and a marker key tells a complete list from a lost one: while the marker
is missing, revocation checks wait for the node to write what it remembers back, and
fail as temporary (error 100, never an unchecked token) if that cannot be done. The
embedded engine keeps them in a file (REALTIME_REVOCATIONS_PATH). Private redis-server
and server processes."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from websockets.exceptions import ConnectionClosed

from realtime_server.app import Running, running
from realtime_server.auth.redis_revocation import RedisRevocationStore
from realtime_server.redis.client import RedisCommands
from realtime_server.redis.names import RedisNames

from .conftest import StartServer, connected, ws_url
from .helpers import MS, RawClient, make_settings, token
from .procs import cli_env, run_cli, server_process
from .redis_server import redis_server


async def refused_as_revoked(server: Running, user: str, **claims: object) -> bool:
    """Connect with a token; True when refused as revoked (4501), False when accepted.
    A temporary refusal (error 100: the list is being restored) is retried, as the SDKs
    do, for at most 5 s."""
    async with asyncio.timeout(5000 * MS):
        while True:
            client = await RawClient.open(ws_url(server))
            try:
                reply = await client.connect(token(user, **claims))
            except ConnectionClosed as closed:
                assert closed.rcvd is not None
                assert (closed.rcvd.code, closed.rcvd.reason) == (4501, "token revoked")
                return True
            await client.close()
            if "connect" in reply:
                return False
            assert reply["error"]["code"] == 100 and reply["error"]["temporary"], reply
            await asyncio.sleep(20 * MS)  # the SDKs' backoff, shortened


async def wait_ready(server: Running) -> None:
    async with asyncio.timeout(5000 * MS):
        while not server.node.broker.ready:
            await asyncio.sleep(10 * MS)  # readiness has no event to await


async def test_revocations_survive_a_redis_restart_without_its_data(
    start_server: StartServer,
) -> None:
    async with redis_server() as redis_proc:
        server = await start_server(REDIS_URL=redis_proc.url, REDIS_TIMEOUT=0.5)
        issued = time.time() - 10
        victim = await connected(server, "42", jti="stolen-1")
        await server.node.revocations.revoke_token("stolen-1", time.time() + 600)
        assert (await victim.closed())[0] == 4501
        await server.node.revocations.revoke_user("43", time.time() - 5)
        # A revocation by another process (the CLI, the outbox) reaches the node too.
        commands = RedisCommands(redis_proc.url, RedisNames("rt:"), 1.0)
        await RedisRevocationStore(commands).revoke_token("stolen-2", time.time() + 600)
        await commands.close()
        assert await refused_as_revoked(server, "44", jti="stolen-2")

        await redis_proc.restart()  # no persistence: every key is gone
        await wait_ready(server)
        assert await refused_as_revoked(server, "42", jti="stolen-1")
        assert await refused_as_revoked(server, "43", iat=int(issued))
        assert await refused_as_revoked(server, "44", jti="stolen-2")
        assert not await refused_as_revoked(server, "42", jti="fresh")
        assert not await refused_as_revoked(server, "43")  # issued after the cutoff


async def test_a_flushed_redis_is_refilled_before_any_token_is_let_in(
    start_server: StartServer,
) -> None:
    """FLUSHALL keeps the links up: no reconnect tells the nodes; the marker does. The
    first node to look writes the list back; the other adds what it remembers."""
    async with redis_server() as redis_proc:
        server = await start_server(REDIS_URL=redis_proc.url)
        other = await start_server(REDIS_URL=redis_proc.url)
        await other.node.revocations.started()
        await server.node.revocations.revoke_token("stolen-1", time.time() + 600)
        admin = aioredis.Redis.from_url(redis_proc.url)
        try:
            marker = await admin.get("rt:revocations")
            await admin.flushall()
            assert await refused_as_revoked(server, "42", jti="stolen-1")
            assert await admin.exists("rt:revoked:jti:stolen-1") == 1
            assert await admin.get("rt:revocations") not in (None, marker)
            assert await refused_as_revoked(other, "42", jti="stolen-1")
            assert not await refused_as_revoked(other, "42")
        finally:
            await admin.aclose()


async def test_revocations_after_the_snapshot_redis_restarted_from_are_written_back(
    start_server: StartServer,
) -> None:
    """A Redis crash with RDB persistence: it comes back from its last snapshot, marker
    included, without the revocations made since. The node writes back what it
    remembers once its link returns."""
    async with redis_server() as redis_proc:
        server = await start_server(REDIS_URL=redis_proc.url, REDIS_TIMEOUT=0.5)
        await server.node.revocations.started()
        await server.node.revocations.revoke_token("before", time.time() + 600)
        admin = aioredis.Redis.from_url(redis_proc.url)
        try:
            await admin.save()  # the snapshot: the marker and "before"
        finally:
            await admin.aclose()
        await server.node.revocations.revoke_token("after", time.time() + 600)
        await server.node.revocations.revoke_user("43", time.time() - 5)
        await redis_proc.restart()  # SIGKILL, then the snapshot is loaded
        await wait_ready(server)
        assert await refused_as_revoked(server, "42", jti="before")
        assert await refused_as_revoked(server, "42", jti="after")
        assert await refused_as_revoked(server, "43", iat=int(time.time() - 10))
        assert not await refused_as_revoked(server, "42", jti="fresh")


async def test_a_node_started_later_remembers_earlier_revocations(
    start_server: StartServer,
) -> None:
    async with redis_server() as redis_proc:
        settings = make_settings(REDIS_URL=redis_proc.url, REDIS_TIMEOUT=0.5)
        async with running(settings) as first:
            await first.node.revocations.revoke_token("stolen-1", time.time() + 600)
            await first.node.revocations.revoke_user("43", time.time() - 5)
            second = await start_server(REDIS_URL=redis_proc.url, REDIS_TIMEOUT=0.5)
            await second.node.revocations.started()  # read the list from Redis
        await redis_proc.restart()
        await wait_ready(second)
        assert await refused_as_revoked(second, "42", jti="stolen-1")
        assert await refused_as_revoked(second, "43", iat=int(time.time() - 10))
        assert not await refused_as_revoked(second, "45")


async def test_the_embedded_engine_keeps_revocations_across_a_crash(tmp_path: Path) -> None:
    """Acknowledged is on disk: SIGKILL right after the CLI's revoke returns."""
    kept = {"REVOCATIONS_PATH": str(tmp_path / "revocations.jsonl")}
    async with server_process(**kept) as first:
        victim = await RawClient.open(first.ws_url)
        assert "connect" in await victim.connect(token("42", jti="stolen-1"))
        env = cli_env(**first.api_env)
        assert (await run_cli("revoke", "--jti", "stolen-1", env=env))[0] == 0
        assert (await victim.closed())[0] == 4501
        assert (await run_cli("revoke", "--user", "43", env=env))[0] == 0
        await first.stop(signal.SIGKILL)
    async with server_process(**kept) as second:
        assert await second.wait_log("2 revocations kept from earlier runs")
        for user, claims, revoked in (
            ("42", {"jti": "stolen-1"}, True),
            ("43", {"iat": int(time.time() - 10)}, True),
            ("42", {}, False),
        ):
            client = await RawClient.open(second.ws_url)
            try:
                reply = await client.connect(token(user, **claims))
            except ConnectionClosed as closed:
                assert closed.rcvd is not None and closed.rcvd.code == 4501
                assert revoked
            else:
                assert "connect" in reply and not revoked, reply
                await client.close()


async def test_an_unusable_revocation_file_stops_the_server_at_start(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    env = cli_env(REVOCATIONS_PATH=str(tmp_path / "a-file" / "revocations.jsonl"))
    code, _, err = await run_cli("serve", env=env)
    assert code == 2
    assert "REALTIME_REVOCATIONS_PATH: cannot keep revocations in" in err
    assert "a-file" in err
    code, out, _ = await run_cli("check", env=env)
    assert code == 1
    assert "(REALTIME_REVOCATIONS_PATH): cannot be created" in out and "is not a folder" in out


@pytest.mark.parametrize(
    ("extra", "warned"),
    [
        (["--maxmemory", "100mb", "--maxmemory-policy", "volatile-lru"], True),
        (["--maxmemory", "100mb", "--maxmemory-policy", "noeviction"], False),
        (["--maxmemory-policy", "allkeys-lru"], False),  # no maxmemory: nothing is evicted
    ],
)
async def test_a_redis_that_may_evict_revocations_is_named_at_start(
    start_server: StartServer,
    caplog: pytest.LogCaptureFixture,
    extra: list[str],
    warned: bool,
) -> None:
    async with redis_server(extra) as redis_proc:
        with caplog.at_level(logging.WARNING, logger="realtime_server.revocation"):
            server = await start_server(REDIS_URL=redis_proc.url)
            await server.node.revocations.started()  # the policy is read before
        lines = [r.getMessage() for r in caplog.records if "may evict" in r.getMessage()]
        assert len(lines) == int(warned), lines
        if warned:
            assert "maxmemory-policy volatile-lru" in lines[0]
