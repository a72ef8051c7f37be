"""Subscribe latency through the subscribe proxy, next to a subscription token.

A real server process (``REALTIME_NAMESPACES={"document": {"subscribe_proxy": true}}``)
asks a backend run by this script (aiohttp on 127.0.0.1) that answers
``{"result": {}}`` after ``--backend-ms`` (1 ms). ``--clients`` connections subscribe
to ``--channels`` documents each, ``--concurrency`` subscribes in flight in all, first
with subscription tokens (the proxy is not asked), then without (the proxy is asked),
alternating ``--repeat`` rounds. Reported: subscribe round trip p50/p99/max as the
client sees it, and the server's CPU per subscribe.

    .venv/bin/python bench/proxy_subscribe.py [--clients N] [--channels M]
        [--concurrency C] [--backend-ms MS] [--repeat R] [--json]

Only 127.0.0.1; the server is stopped at the end, on failure and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import jwt
import orjson
from aiohttp import web
from common import HOST, JWT_SECRET, WS_PATH, free_port, read_proc, wait_port
from websockets.asyncio.client import ClientConnection, connect


def _token(user: str, **claims: Any) -> str:
    now = int(time.time())
    payload = {"sub": user, "iat": now, "exp": now + 3600, "jti": uuid.uuid4().hex, **claims}
    return jwt.encode(payload, JWT_SECRET, algorithm="HS256")


@contextlib.asynccontextmanager
async def backend(delay: float) -> AsyncIterator[tuple[str, list[int], set[object]]]:
    calls = [0]
    peers: set[object] = set()

    async def subscribe(request: web.Request) -> web.Response:
        await request.read()
        calls[0] += 1
        peers.add(request.transport.get_extra_info("peername") if request.transport else None)
        await asyncio.sleep(delay)
        return web.Response(body=b'{"result":{}}', content_type="application/json")

    app = web.Application()
    app.router.add_post("/subscribe", subscribe)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, HOST, 0)
    await site.start()
    assert site._server is not None
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://{HOST}:{port}/subscribe", calls, peers
    finally:
        await runner.cleanup()


@contextlib.contextmanager
def server(proxy_url: str, workdir: str) -> Any:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("REALTIME_")}
    env.update(
        {
            "REALTIME_HOST": HOST,
            "REALTIME_PORT": str(port),
            "REALTIME_JWT_SECRET": JWT_SECRET,
            "REALTIME_NAMESPACES": '{"document": {"subscribe_proxy": true, "presence": false, '
            '"join_leave": false}}',
            "REALTIME_SUBSCRIBE_PROXY_URL": proxy_url,
            "REALTIME_MAX_CHANNELS": "100000",
            "REALTIME_RATE_LIMIT": "100000",
            "REALTIME_RATE_BURST": "100000",
            "REALTIME_SQLITE_PATH": os.path.join(workdir, "events.db"),
            "REALTIME_EVENTS_SPILL_PATH": os.path.join(workdir, "events.spill.jsonl"),
            "REALTIME_REVOCATIONS_PATH": os.path.join(workdir, "revocations.jsonl"),
            "REALTIME_LOG_LEVEL": "WARNING",
        }
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "realtime_server", "serve"], env=env, stdin=subprocess.DEVNULL
    )
    try:
        if not wait_port(port, 20.0):
            raise RuntimeError("the server did not start")
        yield proc.pid, port
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Client:
    def __init__(self, ws: ClientConnection, user: str) -> None:
        self.ws = ws
        self.user = user
        self.next_id = 1
        self.waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        async for frame in self.ws:
            for line in str(frame).split("\n"):
                if not line:
                    continue
                msg = orjson.loads(line)
                future = self.waiting.pop(msg.get("id", 0), None)
                if future is not None:
                    future.set_result(msg)
                elif not msg:
                    await self.ws.send("{}")  # pong

    async def call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        cmd_id = self.next_id
        self.next_id += 1
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.waiting[cmd_id] = future
        await self.ws.send(orjson.dumps({"id": cmd_id, method: params}).decode())
        return await asyncio.wait_for(future, 30)


async def round_(
    clients: list[Client], channels: int, concurrency: int, with_token: bool, tag: str
) -> list[float]:
    slots = asyncio.Semaphore(concurrency)
    latencies: list[float] = []

    async def one(c: Client, name: str) -> None:
        params: dict[str, Any] = {"channel": name}
        if with_token:
            params["token"] = _token(c.user, channel=name)
        async with slots:
            start = time.perf_counter()
            reply = await c.call("subscribe", params)
            latencies.append(time.perf_counter() - start)
        if "subscribe" not in reply:
            raise RuntimeError(f"subscribe refused: {reply}")

    await asyncio.gather(
        *(one(c, f"document:{tag}-{c.user}-{i}") for c in clients for i in range(channels))
    )
    return latencies


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 2)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, list[dict[str, Any]]] = {"token": [], "proxy": []}
    with tempfile.TemporaryDirectory(prefix="rt-bench-proxy-") as tmp:
        async with backend(args.backend_ms / 1000) as (url, calls, peers):
            with server(url, tmp) as (pid, port):
                clients = []
                for i in range(args.clients):
                    user = f"u{i}"
                    ws = await connect(f"ws://{HOST}:{port}{WS_PATH}", max_size=None)
                    client = Client(ws, user)
                    reply = await client.call("connect", {"token": _token(user)})
                    assert "connect" in reply, reply
                    clients.append(client)
                for r in range(args.repeat):
                    for mode in ("token", "proxy"):
                        before_calls = calls[0]
                        cpu_before = read_proc(pid).cpu_s
                        lat = await round_(
                            clients, args.channels, args.concurrency, mode == "token", f"{mode}{r}"
                        )
                        cpu = read_proc(pid).cpu_s - cpu_before
                        results[mode].append(
                            {
                                "subscribes": len(lat),
                                "proxy_calls": calls[0] - before_calls,
                                "p50_ms": _pct(lat, 0.5),
                                "p99_ms": _pct(lat, 0.99),
                                "max_ms": round(max(lat) * 1000, 2),
                                "server_cpu_us_per_subscribe": round(cpu / len(lat) * 1e6, 1),
                            }
                        )
                for c in clients:
                    await c.ws.close()
                    c.reader.cancel()
    summary: dict[str, Any] = {
        mode: {
            key: statistics.median(r[key] for r in runs)
            for key in ("p50_ms", "p99_ms", "max_ms", "server_cpu_us_per_subscribe")
        }
        | {"runs": runs}
        for mode, runs in results.items()
    }
    summary["backend_connections"] = len(peers)  # the pooled session's connections
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--channels", type=int, default=40)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--backend-ms", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    report = asyncio.run(run(args))
    if args.json:
        print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
        return 0
    n = args.clients * args.channels
    print(
        f"{n} subscribes per round, {args.concurrency} in flight, backend answers after "
        f"{args.backend_ms:g} ms; medians of {args.repeat} rounds:"
    )
    for mode in ("token", "proxy"):
        r = report[mode]
        print(
            f"  {mode:6} p50 {r['p50_ms']} ms  p99 {r['p99_ms']} ms  max {r['max_ms']} ms  "
            f"server CPU {r['server_cpu_us_per_subscribe']} us per subscribe"
        )
    print(f"  the server opened {report['backend_connections']} connection(s) to the backend")
    return 0


if __name__ == "__main__":
    sys.exit(main())
