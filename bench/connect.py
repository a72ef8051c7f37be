"""Connect benchmark: server CPU per WebSocket connect, from the bare loop to the product.

Each server runs in its own process; a client process opens N connections, C at a time,
each doing the HTTP upgrade, sending a ``connect`` command (with an HS256 token) and
waiting for the reply, and keeps them open. The figure is the server's CPU time (all its
threads, from ``/proc``) over those N connects, divided by N; the table also shows the
kernel's share of it (system time) and the event loop's thread's (the rest is the
other threads': the SQLite event log's writer):

- ``bare``: an ``asyncio.Protocol`` that answers the upgrade and the first frame with
  fixed bytes, no validation: what the event loop and the kernel cost;
- ``bare+docs``: the same, and each reply also writes a fixed 130-byte join push to the
  connections that arrived before it in its group of 5 (``server+docs``' writes: the
  floor of the churn scenario's connect, what the kernel and the loop cost for it);
- ``websockets``: websockets' asyncio server, a handler that reads one message and
  sends one (what realtime-server was built on before issue 15);
- ``transport``: realtime-server's own connection (``wsconn.py``: websockets'
  Sans-I/O protocol under a lean protocol class), the same handler;
- ``server``: ``realtime-server serve``, memory engine, event log off: the token
  verified, the session registered, its ``user:`` channel subscribed;
- ``server+sqlite``: the same with the embedded SQLite event log (the default);
- ``server+docs``: the same as ``server+sqlite``, and each token also grants a
  ``document:`` channel shared by 5 users (presence, join/leave pushes to the others):
  the connect of ``loadtest --scenario churn``, measured without its load;
- ``server+redis``: ``server+docs`` on the Redis engine (a private ``redis-server``;
  its CPU is not counted, as in the load test's figure).

    .venv/bin/python bench/connect.py [--connects N] [--concurrency C] [--repeat R]
        [--servers bare,websockets,transport,server,server+sqlite,server+docs,server+redis] [--json]

Loopback only; every process is stopped at the end, on failure and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Final

from websockets.utils import accept_key

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    HOST,
    JWT_SECRET,
    SERVER_ENV,
    WS_PATH,
    ignore_sigint,
    raise_nofile,
    read_proc,
    thread_cpu_s,
)

from realtime_server.gcpolicy import tune
from realtime_server.loadtest.spawn import RedisProcess, ServerProcess
from realtime_server.loadtest.speed import reference_us

SERVERS: Final = (
    "bare",
    "bare+docs",
    "websockets",
    "transport",
    "server",
    "server+sqlite",
    "server+docs",
    "server+redis",
)
DOCUMENTS: Final = ("server+docs", "server+redis")
_JOIN: Final = (
    b'{"push":{"channel":"document:d0000-000","join":{"info":{"user":"u0000-000",'
    b'"client":"' + b"0" * 36 + b'"}}}}'
)
"""A join push of about the size ``server+docs`` writes (130 bytes framed; its are 131)."""
_JOIN_FRAME: Final = b"\x81\x7e" + len(_JOIN).to_bytes(2, "big") + _JOIN
PARTICIPANTS: Final = 5
"""Users per document in ``server+docs``."""
_REPLY: Final = b'{"id":1,"connect":{"client":"c","version":"0","ping":25,"pong":true}}'
_REPLY_FRAME: Final = b"\x81" + bytes([len(_REPLY)]) + _REPLY


# --- the servers (run as ``connect.py --serve KIND --port P --api-port A``) -------------


async def _serve(kind: str, port: int, api_port: int) -> None:
    loop = asyncio.get_running_loop()
    # Something on the API port: the spawner waits for both ports.
    await loop.create_server(asyncio.Protocol, HOST, api_port)
    if kind == "bare":
        await loop.create_server(_Bare, HOST, port, backlog=4096)
    elif kind == "bare+docs":
        group: list[Any] = []
        await loop.create_server(lambda: _Bare(group), HOST, port, backlog=4096)
    elif kind == "websockets":
        from websockets.asyncio.server import ServerConnection, serve

        async def handler(ws: ServerConnection) -> None:
            await ws.recv()
            await ws.send(_REPLY.decode())
            async for _ in ws:
                pass

        await serve(handler, HOST, port, compression=None, ping_interval=None, backlog=4096)
    else:
        from websockets.server import ServerProtocol

        from realtime_server.wsconn import WsConnection
        from realtime_server.wsendpoint import Endpoint
        from realtime_server.wsserver import listen

        async def own(conn: WsConnection) -> None:
            await conn.recv()
            conn.transport.write(_REPLY_FRAME)
            while True:
                await conn.recv()

        endpoint = Endpoint(
            make_protocol=ServerProtocol,
            routes=lambda conn, request: None,
            handler=own,
            open_timeout=10.0,
            write_cap=1 << 20,
            ws_path=WS_PATH,
        )
        await listen(endpoint, host=HOST, port=port, backlog=4096)
    await asyncio.Future()


class _Bare(asyncio.Protocol):
    def __init__(self, group: list[Any] | None = None) -> None:
        self.group = group  # bare+docs: the transports of the current group of 5

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.upgraded = False

    def data_received(self, data: bytes) -> None:
        if not self.upgraded:
            head, _, _ = data.partition(b"\r\n\r\n")
            key = b""
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"sec-websocket-key":
                    key = value.strip()
            accept = accept_key(key.decode()).encode()
            self.transport.write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
            )
            self.upgraded = True
            return
        self.transport.write(_REPLY_FRAME)
        group = self.group
        if group is not None:
            for other in group:
                other.write(_JOIN_FRAME)
            group.append(self.transport)
            if len(group) == PARTICIPANTS:
                group.clear()


# --- the client (``connect.py --client``) ---------------------------------------------


class _Client(asyncio.Protocol):
    def __init__(self, request: bytes, frame: bytes, done: asyncio.Future[None]) -> None:
        self.request, self.frame, self.done = request, frame, done
        self.upgraded = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if not self.upgraded:
            if b"\r\n\r\n" not in data:
                return
            self.upgraded = True
            self.transport.write(self.frame)
            data = data.split(b"\r\n\r\n", 1)[1]
        if data and not self.done.done():
            self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(ConnectionError("closed before the connect reply"))


def _claims(i: int, now: int, documents: bool) -> dict[str, Any]:
    claims: dict[str, Any] = {"sub": f"u{os.getpid()}-{i}", "exp": now + 3600}
    if documents:
        claims["channels"] = [f"document:d{os.getpid()}-{i // PARTICIPANTS}"]
    return claims


async def _clients(
    port: int, n: int, concurrency: int, pid: int, documents: bool
) -> dict[str, float]:
    import jwt

    from realtime_server.loadtest.wsclient import client_frame, upgrade_request

    loop = asyncio.get_running_loop()
    now = int(time.time())
    warm = max(20, n // 20)
    frames = [
        client_frame(
            json.dumps(
                {
                    "id": 1,
                    "connect": {
                        "token": jwt.encode(
                            _claims(i, now, documents), JWT_SECRET, algorithm="HS256"
                        )
                    },
                }
            ).encode()
        )
        for i in range(n + warm)
    ]
    request, _ = upgrade_request(HOST, port, WS_PATH)
    gate = asyncio.Semaphore(concurrency)
    transports: list[Any] = []

    async def one(frame: bytes) -> None:
        async with gate:
            done: asyncio.Future[None] = loop.create_future()
            transport, _ = await loop.create_connection(
                lambda: _Client(request, frame, done), HOST, port
            )
            await done
            transports.append(transport)

    await asyncio.gather(*(one(f) for f in frames[:warm]))
    before, started, loop_before = read_proc(pid), time.perf_counter(), thread_cpu_s(pid, pid)
    await asyncio.gather(*(one(f) for f in frames[warm:]))
    after, ended, loop_after = read_proc(pid), time.perf_counter(), thread_cpu_s(pid, pid)
    for transport in transports:
        transport.abort()
    return {
        "us": (after.cpu_s - before.cpu_s) / n * 1e6,
        "sys_us": (after.sys_s - before.sys_s) / n * 1e6,
        "loop_us": (loop_after - loop_before) / n * 1e6,
        "rate": n / (ended - started),
    }


# --- the orchestrator -------------------------------------------------------------------


def _server(kind: str, workdir: Path, redis: RedisProcess | None) -> ServerProcess:
    if kind.startswith("server"):
        env = {
            **SERVER_ENV,
            "REALTIME_EVENTS_ENABLED": "false" if kind == "server" else "true",
        }
        if redis is not None:
            env["REALTIME_REDIS_URL"] = redis.url
        return ServerProcess(workdir, env)
    script = str(Path(__file__).resolve())
    return ServerProcess(
        workdir,
        {},
        command=lambda port, api: [
            sys.executable,
            script,
            "--serve",
            kind,
            "--port",
            str(port),
            "--api-port",
            str(api),
        ],
        name=kind,
    )


def _measure(kind: str, args: argparse.Namespace, workdir: Path) -> dict[str, float]:
    redis = RedisProcess(workdir) if kind == "server+redis" else None
    proc: ServerProcess | None = None
    try:
        if redis is not None:
            redis.start()
        proc = _server(kind, workdir, redis)
        proc.start()
        out = subprocess.run(
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "--client",
                "--port",
                str(proc.port),
                "--connects",
                str(args.connects),
                "--concurrency",
                str(args.concurrency),
                "--pid",
                str(proc.pid),
                *(["--documents"] if kind in DOCUMENTS else []),
            ],
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
        return dict(json.loads(out.stdout))
    finally:
        if proc is not None:
            proc.stop()
        if redis is not None:
            redis.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connects", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--servers", default=",".join(SERVERS))
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--serve", choices=("bare", "bare+docs", "websockets", "transport"))
    parser.add_argument("--client", action="store_true")
    parser.add_argument("--port", type=int)
    parser.add_argument("--api-port", type=int)
    parser.add_argument("--pid", type=int)
    parser.add_argument("--documents", action="store_true")
    args = parser.parse_args()
    import uvloop

    raise_nofile()
    if args.serve:
        ignore_sigint()
        tune()  # the product's collector thresholds, for every server alike
        uvloop.run(_serve(args.serve, args.port, args.api_port))
        return
    if args.client:
        print(
            json.dumps(
                uvloop.run(
                    _clients(args.port, args.connects, args.concurrency, args.pid, args.documents)
                )
            )
        )
        return
    kinds = [k for k in args.servers.split(",") if k]
    unknown = set(kinds) - set(SERVERS)
    if unknown:
        parser.error(f"unknown servers {sorted(unknown)}; choose from {', '.join(SERVERS)}")
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in kinds}
    speed = [reference_us()]  # the machine's speed before and after (loadtest/speed.py)
    with tempfile.TemporaryDirectory(prefix="bench-connect-") as tmp:
        for round_ in range(args.repeat):
            for kind in kinds:  # interleaved: drift hits every server alike
                result = _measure(kind, args, Path(tmp))
                runs[kind].append(result)
                print(
                    f"round {round_ + 1}/{args.repeat} {kind}: {result['us']:.0f} us/connect",
                    file=sys.stderr,
                )
    speed.append(reference_us())
    table: dict[str, Any] = {
        k: {
            "us_per_connect": statistics.median(r["us"] for r in v),
            "us_range": [min(r["us"] for r in v), max(r["us"] for r in v)],
            "connects_per_s": statistics.median(r["rate"] for r in v),
            "sys_us_per_connect": statistics.median(r["sys_us"] for r in v),
            "loop_us_per_connect": statistics.median(r["loop_us"] for r in v),
        }
        for k, v in runs.items()
    }
    if args.json:
        print(json.dumps({**table, "reference_us": speed}, indent=2))
        return
    print(
        f"{args.connects} connects, {args.concurrency} at a time, median of {args.repeat}; "
        f"reference workload {speed[0]:.0f} -> {speed[1]:.0f} us (the machine's speed: "
        "CPU figures scale with it)"
    )
    print(
        "| server | server CPU µs per connect (range) | of which the kernel "
        "| of which the event loop's thread | connects/s |"
    )
    print("|---|---|---:|---:|---|")
    for kind, row in table.items():
        low, high = row["us_range"]
        print(
            f"| {kind} | {row['us_per_connect']:.0f} ({low:.0f}-{high:.0f}) "
            f"| {row['sys_us_per_connect']:.0f} | {row['loop_us_per_connect']:.0f} "
            f"| {row['connects_per_s']:,.0f} |"
        )


if __name__ == "__main__":
    main()
