"""The listen backlog (``REALTIME_BACKLOG``): applied to the WebSocket and API ports of
every worker, and the kernel's cap (``net.core.somaxconn``) named in the log.

The backlog of a listening socket is what ``ss -ltn`` shows as its Send-Q.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from realtime_server.listen import effective_backlog, somaxconn

from .conftest import StartServer
from .procs import server_process, workers_process

pytestmark = pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2)")


def listen_backlogs(port: int) -> list[int]:
    """The backlog of each socket listening on ``port`` (one per worker)."""
    out = subprocess.run(
        ["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=True
    ).stdout
    return [int(line.split()[2]) for line in out.splitlines() if line.strip()]


async def test_both_ports_listen_with_the_configured_backlog(start_server: StartServer) -> None:
    server = await start_server(BACKLOG=77)
    assert server.api_port is not None
    assert listen_backlogs(server.port) == [77]
    assert listen_backlogs(server.api_port) == [77]


async def test_the_default_backlog_is_sized_for_storms(start_server: StartServer) -> None:
    server = await start_server()
    assert server.api_port is not None
    expected = effective_backlog(4096)
    assert expected > 128  # asyncio's default is 100, aiohttp's 128
    assert listen_backlogs(server.port) == [expected]
    assert listen_backlogs(server.api_port) == [expected]


async def test_a_backlog_above_somaxconn_is_logged_as_capped() -> None:
    cap = somaxconn()
    if cap is None or cap >= 65535:
        pytest.skip("net.core.somaxconn does not cap 65535 here")
    async with server_process(BACKLOG="65535") as server:
        assert listen_backlogs(server.port) == [cap]
        assert any(
            f"listen backlog 65535 capped at {cap} by net.core.somaxconn" in line
            for line in server.log
        ), server.log


def test_effective_backlog_reads_the_kernel_cap(tmp_path: Path) -> None:
    cap = tmp_path / "somaxconn"
    cap.write_text("512\n")
    assert effective_backlog(4096, str(cap)) == 512
    assert effective_backlog(100, str(cap)) == 100
    assert effective_backlog(4096, str(tmp_path / "missing")) == 4096
    assert somaxconn(str(tmp_path / "missing")) is None


async def test_every_worker_listens_with_the_backlog(redis_url: str, redis_prefix: str) -> None:
    async with workers_process(redis_url, redis_prefix, "--backlog", "55") as workers:
        await workers.wait_logged(b"HTTP server API on")
        assert listen_backlogs(workers.port) == [55, 55]
        assert listen_backlogs(workers.api_port) == [55, 55]
