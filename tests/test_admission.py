"""Descriptor exhaustion (issue 11, item 1): connection caps keep the publishing path up.

A server process allowed 256 (then 512) open files is flooded with 400 sockets that
never authenticate (half bare TCP, half a WebSocket handshake without ``connect``):
the HTTP API still publishes, ``/healthz`` answers, legitimate clients connect and
receive. In process: the caps themselves (503 when every slot is authenticated,
health routes still served, the oldest unauthenticated socket dropped for a newcomer,
metrics and the episode log).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from typing import Any

import aiohttp
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from realtime_server.limits import connection_limits, reserve

from .conftest import StartServer, connected, ws_url
from .helpers import API_KEY, MS, RawClient, token
from .procs import ServerProcess, server_process

_UPGRADE = (
    b"GET /connection/websocket HTTP/1.1\r\n"
    b"Host: 127.0.0.1\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n"
)


async def _flood(port: int, n: int) -> list[asyncio.StreamWriter]:
    """``n`` sockets that never authenticate: every other one sends a WebSocket
    handshake (and then nothing), the others send nothing at all."""
    writers: list[asyncio.StreamWriter] = []
    for i in range(n):
        try:
            _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            continue  # refused by a server out of descriptors (main before the fix)
        if i % 2:
            writer.write(_UPGRADE)
        writers.append(writer)
    return writers


async def _get(url: str) -> tuple[int, str]:
    timeout = aiohttp.ClientTimeout(total=3000 * MS)
    async with aiohttp.ClientSession(timeout=timeout) as http, http.get(url) as response:
        return response.status, await response.text()


async def _publish(server: ServerProcess, channel: str, data: Any) -> dict[str, Any]:
    timeout = aiohttp.ClientTimeout(total=3000 * MS)
    async with (
        aiohttp.ClientSession(timeout=timeout) as http,
        http.post(
            f"http://127.0.0.1:{server.api_port}/api/publish",
            json={"channel": channel, "data": data},
            headers={"X-API-Key": API_KEY},
        ) as response,
    ):
        assert response.status == 200
        body: dict[str, Any] = await response.json()
        return body


async def _legitimate(url: str, user: str) -> RawClient:
    client = await RawClient.open(url, open_timeout=5000 * MS)
    reply = await client.connect(token(user))
    assert "connect" in reply, reply
    return client


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="needs prlimit (util-linux)")
@pytest.mark.parametrize("nofile", [256, 512])
async def test_flood_of_unauthenticated_sockets_under_a_descriptor_limit(nofile: int) -> None:
    async with server_process(wrapper=["prlimit", f"--nofile={nofile}:{nofile}"]) as server:
        flood = await _flood(server.port, 400)
        try:
            base = f"http://127.0.0.1:{server.port}"
            assert (await _get(f"{base}/healthz"))[0] == 200
            clients = []
            for i in range(28):  # one after the other, as users arrive
                clients.append(await _legitimate(server.ws_url, f"legit{i}"))
            # ... and a burst of them at once, still during the flood.
            clients += await asyncio.gather(
                *(_legitimate(server.ws_url, f"burst{i}") for i in range(8))
            )
            more = await _flood(server.port, 100)  # the flood goes on
            flood += more
            for i, client in enumerate(clients):
                user = f"legit{i}" if i < 28 else f"burst{i - 28}"
                body = await _publish(server, f"user:{user}", {"n": i})
                assert "result" in body, body
                assert (await client.push("pub"))["pub"]["data"] == {"n": i}
            status, metrics = await _get(f"{base}/metrics")
            assert status == 200
            assert 'realtime_port_refusals_total{reason="unauthenticated_dropped"}' in metrics
            assert (await _get(f"{base}/readyz"))[0] == 200
            for client in clients:
                await client.close()
        finally:
            for writer in flood:
                writer.transport.abort()
        assert server.proc.returncode is None
    log = "".join(server.log)
    assert "open files: soft limit" in log
    assert "connection limit reached" in log
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]


def test_default_caps_leave_the_reserve() -> None:
    limits = connection_limits(256)
    assert limits.max_connections == 256 - reserve()
    assert limits.max_unauthenticated == limits.max_connections // 2
    assert connection_limits(20000).max_connections == 20000 - reserve()
    assert connection_limits(64).max_connections == 16  # never below a usable floor
    explicit = connection_limits(1 << 20, max_connections=5000, max_unauthenticated=9000)
    assert (explicit.max_connections, explicit.max_unauthenticated) == (5000, 5000)


async def test_every_slot_authenticated_gets_503_health_still_served(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "realtime_server.admission")
    server = await start_server(MAX_CONNECTIONS=3, MAX_UNAUTHENTICATED=2)
    clients = [await connected(server, f"u{i}") for i in range(3)]
    with pytest.raises(InvalidStatus) as refused:
        await connect(ws_url(server), open_timeout=2000 * MS)
    assert refused.value.response.status_code == 503
    base = f"http://127.0.0.1:{server.port}"
    assert (await _get(f"{base}/healthz"))[0] == 200
    assert (await _get(f"{base}/readyz"))[0] == 200
    _status, metrics = await _get(f"{base}/metrics")
    assert 'realtime_port_refusals_total{reason="max_connections"} 1' in metrics
    assert "realtime_port_sockets 3" in metrics
    assert "connection limit reached" in caplog.text
    # Room again: a connection closes, the next one is let in; the episode ends.
    await clients.pop().close()
    async with asyncio.timeout(2000 * MS):
        while server.node.metrics.gauges["port_sockets"][1]() > 2:
            await asyncio.sleep(5 * MS)
    clients.append(await connected(server, "again"))
    await clients.pop().close()
    await clients.pop().close()
    async with asyncio.timeout(2000 * MS):
        while "episode over" not in caplog.text:
            await asyncio.sleep(5 * MS)
    assert caplog.text.count("connection limit reached") == 1
    for client in clients:
        await client.close()


async def test_oldest_unauthenticated_socket_makes_room(start_server: StartServer) -> None:
    server = await start_server(MAX_CONNECTIONS=10, MAX_UNAUTHENTICATED=3)
    idle = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(3)]
    handshaken = await connect(ws_url(server))  # a WebSocket that never sends connect
    # The oldest idle socket was dropped for it: it sees the end of the stream.
    oldest_reader = idle[0][0]
    assert await asyncio.wait_for(oldest_reader.read(), 2000 * MS) == b""
    client = await connected(server, "real")  # drops the next oldest, then authenticates
    await server.node.ops.publish("user:real", b'"hello"')
    assert (await client.push("pub"))["pub"]["data"] == "hello"
    refusals = server.node.metrics.labelled["port_refusals"][2]()
    assert refusals["unauthenticated_dropped"] == 2
    assert refusals["max_connections"] == 0
    # Authenticated connections are never dropped for newcomers.
    others = [await connected(server, f"o{i}") for i in range(8)]
    assert client.ws.protocol.close_rcvd is None
    await server.node.ops.publish("user:real", b'"still"')
    assert (await client.push("pub"))["pub"]["data"] == "still"
    for c in (*others, client):
        await c.close()
    await handshaken.close()
    for _reader, writer in idle:
        writer.transport.abort()
