"""``serve --workers N``: several processes on one port, sharing Redis."""

from __future__ import annotations

import asyncio
import os
import signal
import time

from .helpers import MS, RawClient, token
from .procs import CLI, cli_env, run_cli
from .redis_server import free_port


async def test_workers_need_redis_and_fixed_ports() -> None:
    code, _, err = await run_cli("serve", "--workers", "2")
    assert code == 2 and "REALTIME_REDIS_URL" in err


async def test_two_workers_share_port_and_channels(redis_url: str, redis_prefix: str) -> None:
    port, api_port = free_port(), free_port()
    env = cli_env(
        REDIS_URL=redis_url,
        REDIS_PREFIX=redis_prefix,
        PORT=str(port),
        API_PORT=str(api_port),
        LOG_LEVEL="INFO",
    )
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        "serve",
        "--workers",
        "2",
        env=env,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert proc.stderr is not None
        listening = 0
        async with asyncio.timeout(40000 * MS):
            while listening < 2:
                line = await proc.stderr.readline()
                assert line, "workers exited early"
                listening += b"listening on ws://" in line
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
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the workers too
            await proc.wait()
