"""``serve --workers N``: several processes on one port, sharing Redis."""

from __future__ import annotations

import asyncio
import signal
import time

from .helpers import MS, RawClient, token
from .procs import run_cli, workers_process


async def test_workers_need_redis_and_fixed_ports() -> None:
    code, _, err = await run_cli("serve", "--workers", "2")
    assert code == 2 and "REALTIME_REDIS_URL" in err


async def test_two_workers_share_port_and_channels(redis_url: str, redis_prefix: str) -> None:
    async with workers_process(redis_url, redis_prefix) as workers:
        proc, env, port = workers.proc, workers.env, workers.port
        await workers.wait_logged(b"listening on ws://")
        url = f"ws://127.0.0.1:{port}/connection/websocket"
        clients = []
        for i in range(8):
            client = await RawClient.open(url)
            assert "connect" in await client.connect(token(f"u{i}", channels=["document:w"]))
            clients.append(client)
        code, _, err = await run_cli("publish", "document:w", '{"n":1}', env=env)
        assert code == 0, err
        for client in clients:
            assert (await client.push("pub"))["pub"]["data"] == {"n": 1}
        # a user's tokens revoked through Redis: closed on whichever worker holds them
        doomed = []
        for _ in range(6):
            client = await RawClient.open(url)
            assert "connect" in await client.connect(token("doomed", iat=int(time.time()) - 5))
            doomed.append(client)
        code, _, err = await run_cli("revoke", "--user", "doomed", env=env)
        assert code == 0, err
        for client in doomed:
            assert (await client.closed())[0] == 4501
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15000 * MS) == 0
        for client in clients:
            assert (await client.closed())[0] == 3001
