"""What an idle authenticated connection costs in the session, hub and timer code.

Issue 5's target is under 16 KiB of server memory per idle connection (bench/fanout.py
measures the process RSS). Most of it is websockets' and the loop's; this test pins the
share of the modules that keep per-connection state of their own, so that a timer, set
or dict per connection creeping back shows up here rather than in a benchmark: Python
allocations still alive with N idle connections open, attributed to the innermost frame
of ``realtime_server`` that made them (a loop timer counts for the session code that
asked for it).
"""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from collections import Counter

from realtime_server.app import Running

from .conftest import StartServer, ws_url
from .helpers import RawClient, token

N = 120
OURS = ("session.py", "hub.py", "expiry.py", "keepalive.py", "index.py")
BUDGET = 600
"""Bytes per idle connection in those modules: measured 480 (the client id 85, the
``subs`` dict 64, a ``ClientInfo`` 64, the rate limiter's floats 45, index, hub, ping and
expiry bucket entries 40-55 each); 1,200 before the expiry wheel (a loop timer per
connection, 0.5 KiB), the lazy ``pending`` set (0.2 KiB) and single-session hub entries
(a one-entry dict per ``user:`` channel, 0.2 KiB)."""


def _by_module(snapshot: tracemalloc.Snapshot) -> Counter[str]:
    sizes: Counter[str] = Counter()
    for stat in snapshot.statistics("traceback"):
        for frame in reversed(stat.traceback):  # innermost first
            if "/realtime_server/" in frame.filename:
                sizes[frame.filename.rsplit("/realtime_server/", 1)[1]] += stat.size
                break
    return sizes


async def _open(server: Running, n: int, prefix: str) -> list[RawClient]:
    clients = []
    for i in range(n):
        client = await RawClient.open(ws_url(server))
        reply = await client.connect(token(f"{prefix}{i}", channels=["document:1"]))
        assert set(reply["connect"]["subs"]) == {f"user:{prefix}{i}", "document:1"}
        clients.append(client)
    return clients


async def test_idle_connection_state_in_session_hub_and_timers(start_server: StartServer) -> None:
    # As in bench/fanout.py: no join pushes (N^2/2 frames nobody reads), presence kept.
    server = await start_server(NAMESPACES='{"document": {"join_leave": false}}')
    warm = await _open(server, 5, "warm")  # first-use allocations stay out
    tracemalloc.start(12)
    try:
        gc.collect()
        before = _by_module(tracemalloc.take_snapshot())
        clients = await _open(server, N, "idle")
        gc.collect()
        after = _by_module(tracemalloc.take_snapshot())
    finally:
        tracemalloc.stop()
    per_conn = {m: (after[m] - before[m]) / N for m in after.keys() | before.keys()}
    ours = sum(v for m, v in per_conn.items() if m in OURS)
    assert ours < BUDGET, sorted(per_conn.items(), key=lambda kv: -kv[1])
    sessions = list(server.node.registry)
    assert len(sessions) == N + len(warm)
    # no set kept for channels being set up, every deadline in the node's one wheel
    assert all(s._pending is None and s.expiry_key >= 0 for s in sessions)
    assert len(server.node.expiry) == len(sessions)
    await asyncio.gather(*(client.close() for client in clients + warm))
