"""Closed connections release their sockets promptly (issue 11, item 2).

- A slow consumer closed with 3008 whose buffer is over the bound cannot get its close
  frame written: it is aborted at once (it kept its socket for good before: websockets
  waited for the buffer to drain, without a deadline).
- A peer that never answers the closing handshake (frozen, not reading) is aborted
  after the close timeout (about 1.5 s; websockets' 5 s before).
- The ``disconnect`` event carries the time of the decision, not the socket's end.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from typing import Any

import pytest
from websockets.asyncio.client import connect

from realtime_server.events import EventType
from realtime_server.session import Session
from realtime_server.wsendpoint import CLOSE_TIMEOUT

from .conftest import StartServer, ws_url
from .helpers import MS, RawClient, recorded, token
from .procs import server_process


def _server_conn(server: Any, user: str) -> Any:
    (session,) = [s for s in server.node.registry if s.user == user]
    return session.conn


async def test_non_reading_3008_client_is_aborted_at_once(start_server: StartServer) -> None:
    server = await start_server(OUTBOX_BYTES=65536)
    events = recorded(server)
    slow_ws = await connect(ws_url(server), max_size=None, ping_interval=None)
    slow = RawClient(slow_ws)
    await slow.connect(token("slow"))
    conn = _server_conn(server, "slow")
    slow_ws.transport.pause_reading()  # never reads again
    payload = b'"' + b"x" * 60000 + b'"'
    for _ in range(2000):  # the kernel's buffers fill first (a few MB on loopback)
        await server.node.ops.publish("user:slow", payload)
        if server.node.metrics.slow_disconnects_total:
            break
        await asyncio.sleep(0)
    assert server.node.metrics.slow_disconnects_total == 1
    decided = time.time()
    # Released within a few loop iterations, not after a timeout (never, before).
    await asyncio.wait_for(asyncio.shield(conn.lost_waiter()), 300 * MS)
    assert conn.transport.is_closing()
    assert time.time() - decided < 0.3 * max(1.0, MS * 1000)
    assert "slow" not in {s.user for s in server.node.registry}
    await _wait_for(lambda: any(e.type is EventType.DISCONNECT for e in events))
    (disconnect,) = [e for e in events if e.type is EventType.DISCONNECT]
    assert disconnect.code == 3008
    slow_ws.transport.abort()


async def _wait_for(check: Any, timeout: float = 2000 * MS) -> None:
    """For the handler's finish step, which runs once the socket is gone."""
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(5 * MS)


async def test_frozen_3012_client_aborted_after_close_timeout_event_at_decision(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await start_server(PING_INTERVAL=0.4, PONG_TIMEOUT=0.2)
    events = recorded(server)
    decisions: dict[int, float] = {}
    original_close = Session.close

    def close(session: Session, code: Any) -> None:
        decisions.setdefault(code.code, time.time())
        original_close(session, code)

    monkeypatch.setattr(Session, "close", close)
    frozen_ws = await connect(ws_url(server), max_size=None, ping_interval=None)
    frozen = RawClient(frozen_ws)
    await frozen.connect(token("frozen"))
    connected_at = time.time()
    conn = _server_conn(server, "frozen")
    frozen_ws.transport.pause_reading()  # frozen: reads nothing, answers nothing
    await asyncio.wait_for(asyncio.shield(conn.lost_waiter()), 5000 * MS)
    released = time.time()
    decided = decisions[3012]
    # Aborted after the close timeout (5 s before), not at once (it could answer).
    assert CLOSE_TIMEOUT - 0.1 <= released - decided <= CLOSE_TIMEOUT + 500 * MS
    await _wait_for(lambda: any(e.type is EventType.DISCONNECT for e in events))
    (disconnect,) = [e for e in events if e.type is EventType.DISCONNECT]
    assert disconnect.code == 3012
    assert abs(disconnect.time - decided) < 50 * MS, disconnect.time - decided
    assert disconnect.details is not None
    duration = disconnect.details["duration"]
    assert abs(duration - (decided - connected_at)) < 100 * MS
    frozen_ws.transport.abort()


def _socket_count(pid: int) -> int:
    fds = f"/proc/{pid}/fd"
    count = 0
    for name in os.listdir(fds):
        try:
            if os.readlink(f"{fds}/{name}").startswith("socket:"):
                count += 1
        except FileNotFoundError:
            continue
    return count


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
async def test_sigstopped_client_socket_released_in_a_server_process() -> None:
    """A real server process and a real frozen client process (SIGSTOP): the server's
    descriptor count is back where it was within the close timeout of the 3012."""
    async with server_process(PING_INTERVAL="0.4", PONG_TIMEOUT="0.2") as server:
        pid = server.proc.pid
        baseline = _socket_count(pid)
        # A client process: connects, then is frozen by the test.
        script = (
            "import asyncio, json, sys\n"
            "from websockets.asyncio.client import connect\n"
            "async def main():\n"
            "    async with connect(sys.argv[1], ping_interval=None) as ws:\n"
            "        await ws.send(json.dumps({'id': 1, 'connect': {'token': sys.argv[2]}}))\n"
            "        await ws.recv()\n"
            "        print('connected', flush=True)\n"
            "        await asyncio.sleep(60)\n"
            "asyncio.run(main())\n"
        )
        client = subprocess.Popen(  # noqa: ASYNC220 - a peer process we freeze
            [sys.executable, "-c", script, server.ws_url, token("stopped")],
            stdout=subprocess.PIPE,
        )
        try:
            assert client.stdout is not None
            line = await asyncio.to_thread(client.stdout.readline)
            assert line.strip() == b"connected"
            assert _socket_count(pid) == baseline + 1
            os.kill(client.pid, signal.SIGSTOP)
            frozen_at = time.monotonic()
            # 3012 after about ping interval + pong timeout, then the close timeout.
            deadline = frozen_at + 0.4 + 0.2 + 1.0 + CLOSE_TIMEOUT + 1.0 * max(1.0, MS * 1000)
            while _socket_count(pid) > baseline and time.monotonic() < deadline:
                await asyncio.sleep(50 * MS)
            assert _socket_count(pid) == baseline, "the frozen client's socket is still held"
        finally:
            os.kill(client.pid, signal.SIGCONT)
            client.kill()
            client.wait()
            assert client.stdout is not None
            client.stdout.close()
