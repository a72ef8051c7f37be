"""The servers ``fanout.py`` compares, and how each one is started and spoken to.

- ``ours``: ``realtime-server serve``, embedded engine; ``ours-redis``: the same on the
  Redis engine (a private redis-server);
- ``floor``: ``floor_server.py``, one pre-built frame written to every connection;
  ``floor-bcast``: the same with ``websockets.broadcast``;
- ``starlette``: ``starlette_broadcaster.py``, Starlette + encode/broadcaster on Redis
  (a private redis-server);
- ``socketio-node``: ``peers/socketio/server.mjs``, Node.js socket.io 4.8;
- ``python-socketio``: ``python_socketio_server.py``, python-socketio 5 under uvicorn.

The first five speak the Centrifugo JSON protocol (the floor and the alternative only
as much as the benchmark needs), the socket.io peers Socket.IO.
Each takes a WebSocket port and an API port (free loopback ports), authenticates each
connection with the same HS256 token (``channels`` claim: ``document:bench``) and takes
the same publish trigger: ``POST /api/publish`` and ``POST /api/batch`` with ``X-API-Key``.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from common import API_KEY, JWT_SECRET, SERVER_ENV, SOCKETIO_NODE_DIR, WS_PATH

from realtime_server.loadtest.sioclient import SOCKETIO_PATH
from realtime_server.loadtest.spawn import Command, RedisProcess, ServerProcess, SpawnError

__all__ = [
    "ALTERNATIVE",
    "OURS_ENV",
    "PEERS",
    "SERVERS",
    "Server",
    "StartError",
    "delivery_allowance_s",
    "start_server",
    "wire",
]

BENCH_DIR: Final = Path(__file__).resolve().parent
SERVERS: Final = (
    "ours",
    "ours-redis",
    "floor",
    "floor-bcast",
    "starlette",
    "socketio-node",
    "python-socketio",
)
ALTERNATIVE: Final = "starlette"
"""The typical Python alternative: Starlette + encode/broadcaster on Redis."""
PEERS: Final = (ALTERNATIVE, "socketio-node", "python-socketio")
"""What other teams would build instead: the servers the ratio tables compare us with,
besides the floor."""
SOCKETIO: Final = frozenset({"socketio-node", "python-socketio"})
OURS_ENV: Final = {
    **SERVER_ENV,
    "REALTIME_CONNECT_TIMEOUT": "30",
    # Join/leave pushes would make opening N connections cost N^2/2 frames.
    "REALTIME_NAMESPACES": '{"document": {"join_leave": false}}',
}
_SLOW: Final = {"starlette": 150e-6, "python-socketio": 300e-6}
"""Server seconds per delivery a phase's deadline allows, for the slow peers (the
others: 60 us; a deadline only ends a run that lost deliveries)."""


class StartError(RuntimeError):
    """A server did not start."""


def wire(name: str) -> tuple[str, str]:
    """(the WebSocket path, the generator's protocol) for server ``name``."""
    if name in SOCKETIO:
        return SOCKETIO_PATH, "socketio"
    return WS_PATH, "centrifuge"


def delivery_allowance_s(name: str) -> float:
    return _SLOW.get(name, 60e-6)


@dataclass
class Server:
    """One server case's processes: the server (the load test's spawner) and, for the
    Redis-backed ones, a private redis-server."""

    name: str
    proc: ServerProcess
    redis: RedisProcess | None

    def stop(self) -> None:
        self.proc.stop(10.0)
        if self.redis is not None:
            self.redis.stop()


def _script(name: str, *extra: str) -> Command:
    def command(port: int, api_port: int) -> list[str]:
        script = str(BENCH_DIR / name)
        return [sys.executable, script, "--port", str(port), "--api-port", str(api_port), *extra]

    return command


def _node(port: int, api_port: int) -> list[str]:
    script = str(SOCKETIO_NODE_DIR / "server.mjs")
    return ["node", script, "--port", str(port), "--api-port", str(api_port)]


def start_server(
    name: str, workdir: Path, cpus: set[int] | None, load_cpus: set[int] | None
) -> Server:
    """Start server ``name`` (pinned to ``cpus``; its redis-server, if any, to
    ``load_cpus``) and wait until both its ports accept connections.

    Raises:
        StartError: it did not start (with its log's last lines).
    """
    redis: RedisProcess | None = None
    if name in ("ours-redis", "starlette"):
        # A private redis-server on the load generators' CPUs: its CPU time is not the
        # server's (one PUBLISH per publication, one message to the server).
        redis = RedisProcess(workdir)
        try:
            redis.start()
        except SpawnError as exc:
            raise StartError(str(exc)) from None
        if load_cpus and redis.proc is not None:
            os.sched_setaffinity(redis.proc.pid, load_cpus)
    env: dict[str, str] = {}
    command: Command | None = None
    if name in ("ours", "ours-redis"):
        env.update(OURS_ENV)
        if redis is not None:
            env["REALTIME_REDIS_URL"] = redis.url
    elif name == "starlette":
        assert redis is not None
        command = _script("starlette_broadcaster.py", "--redis-url", redis.url)
    elif name in SOCKETIO:
        # Credentials through the environment, never on a command line.
        env.update({"BENCH_JWT_SECRET": JWT_SECRET, "BENCH_API_KEY": API_KEY})
        command = _node if name == "socketio-node" else _script("python_socketio_server.py")
    else:
        fanout = "broadcast" if name == "floor-bcast" else "write"
        command = _script("floor_server.py", "--fanout", fanout)

    proc = ServerProcess(
        workdir, env, 1, sorted(cpus) if cpus else None, command=command, name=name
    )
    try:
        proc.start(20.0)
    except SpawnError as exc:
        if redis is not None:
            redis.stop()
        raise StartError(str(exc)) from None
    return Server(name, proc, redis)
