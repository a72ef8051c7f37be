"""Redis engine figures: revocation latency (one node, two nodes) and time to
resubscribe after a Redis restart.

    .venv/bin/python bench/redis_bench.py [--revocations 200] [--channels 200] [--json]

Starts a private redis-server and one or two server processes on free loopback ports.
Revocation latency is measured from the HTTP ``revoke_token`` call returning (on node A)
to the client (on node A, or on node B) receiving the 4501 close frame. Resubscribe time
is measured from the restarted redis-server accepting connections to ``/readyz``
answering 200 again, with N channels held by the node.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from realtime_server.loadtest.spawn import RedisProcess, ServerProcess

SECRET = "bench-secret-" + uuid.uuid4().hex
API_KEY = "bench-key-" + uuid.uuid4().hex


def token(user: str, jti: str | None = None, channels: list[str] | None = None) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {"sub": user, "iat": now, "exp": now + 3600}
    if jti:
        claims["jti"] = jti
    if channels:
        claims["channels"] = channels
    return jwt.encode(claims, SECRET, algorithm="HS256")


def progress(text: str) -> None:
    print(f"\r\033[K{text}", end="", file=sys.stderr, flush=True)


class Server:
    """Our server on the Redis engine (the load test's spawner)."""

    def __init__(self, workdir: Path, redis: RedisProcess) -> None:
        env = {
            "REALTIME_JWT_SECRET": SECRET,
            "REALTIME_API_KEY": API_KEY,
            "REALTIME_REDIS_URL": redis.url,
            "REALTIME_MAX_CONNECTIONS_PER_USER": "0",
        }
        self.proc = ServerProcess(workdir, env)
        self.port, self.api_port = self.proc.port, self.proc.api_port

    async def start(self) -> None:
        await asyncio.to_thread(self.proc.start, 15.0)

    async def ready(self) -> bool:
        try:
            async with (
                aiohttp.ClientSession() as http,
                http.get(
                    f"http://127.0.0.1:{self.port}/readyz", timeout=aiohttp.ClientTimeout(total=1)
                ) as resp,
            ):
                return resp.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def wait_ready(self, within: float) -> float:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if await self.ready():
                return time.monotonic()
            await asyncio.sleep(0.005)
        raise RuntimeError("server not ready")

    async def stop(self) -> None:
        await asyncio.to_thread(self.proc.stop)


async def open_client(port: int, tok: str) -> ClientConnection:
    ws = await connect(f"ws://127.0.0.1:{port}/connection/websocket", ping_interval=None)
    await ws.send(orjson.dumps({"id": 1, "connect": {"token": tok}}).decode())
    reply = orjson.loads(await ws.recv())
    if "connect" not in reply:
        raise RuntimeError(f"connect failed: {reply}")
    return ws


async def close_code(ws: ClientConnection) -> int | None:
    try:
        while True:
            await ws.recv()
    except ConnectionClosed:
        rcvd = ws.protocol.close_rcvd
        return rcvd.code if rcvd else None


async def revocation_latency(api: Server, target: Server, count: int, label: str) -> list[float]:
    latencies: list[float] = []
    async with aiohttp.ClientSession() as http:
        for i in range(count):
            jti = uuid.uuid4().hex
            ws = await open_client(target.port, token(f"user{i}", jti=jti))
            closed = asyncio.ensure_future(close_code(ws))
            async with http.post(
                f"http://127.0.0.1:{api.api_port}/api/revoke_token",
                data=orjson.dumps({"uid": jti, "expire_at": int(time.time()) + 3600}),
                headers={"X-API-Key": API_KEY},
            ) as resp:
                await resp.read()
            returned = time.perf_counter()
            code = await asyncio.wait_for(closed, 5)
            latencies.append((time.perf_counter() - returned) * 1000)
            if code != 4501:
                raise RuntimeError(f"expected close 4501, got {code}")
            progress(f"{label}: {i + 1}/{count} revocations")
    return latencies


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--revocations", type=int, default=200)
    parser.add_argument("--channels", type=int, default=200)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rt-bench-redis-") as tmp:
        return await measure(args, Path(tmp))


async def measure(args: argparse.Namespace, workdir: Path) -> int:
    redis = RedisProcess(workdir)
    await asyncio.to_thread(redis.start)
    a, b = Server(workdir, redis), Server(workdir, redis)
    results: dict[str, Any] = {}
    try:
        await a.start()
        await b.start()
        one = await revocation_latency(a, a, args.revocations, "one node")
        two = await revocation_latency(a, b, args.revocations, "two nodes")
        results["revocation_ms"] = {
            "one_node": {"p50": pct(one, 0.5), "p99": pct(one, 0.99), "max": max(one)},
            "two_nodes": {"p50": pct(two, 0.5), "p99": pct(two, 0.99), "max": max(two)},
        }
        # hold channels on node A, restart Redis, time until A is ready again
        restarts = []
        told = 0
        runs = 3
        for attempt in range(runs):
            chans = [f"document:r{attempt}-{i}" for i in range(args.channels)]
            holders = [
                await open_client(a.port, token(f"h{i}", channels=[c])) for i, c in enumerate(chans)
            ]
            progress(f"redis restart {attempt + 1}/{runs} with {len(chans)} channels")
            await asyncio.to_thread(redis.kill)
            deadline = time.monotonic() + 10
            while await a.ready() and time.monotonic() < deadline:  # noqa: ASYNC110 - polling /readyz is the measurement
                await asyncio.sleep(0.01)
            await asyncio.to_thread(redis.start)
            started = redis.ready_at
            ready_at = await a.wait_ready(20)
            restarts.append((ready_at - started) * 1000)
            codes = await asyncio.gather(
                *(asyncio.wait_for(close_code(h), 5) for h in holders), return_exceptions=True
            )
            told += sum(1 for c in codes if c == 3010)
        results["resubscribe_after_restart_ms"] = {
            "channels": args.channels,
            "runs": restarts,
            "median": statistics.median(restarts),
        }
        results["clients_told_to_recover"] = f"{told}/{args.channels * runs}"
    finally:
        progress("")
        await a.stop()
        await b.stop()
        await asyncio.to_thread(redis.stop)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    rev = results["revocation_ms"]
    print("| measurement | p50 | p99 | max |")
    print("|---|---|---|---|")
    for key, label in (
        ("one_node", "revocation, one node (ms)"),
        ("two_nodes", "revocation, two nodes (ms)"),
    ):
        r = rev[key]
        print(f"| {label} | {r['p50']:.2f} | {r['p99']:.2f} | {r['max']:.2f} |")
    rs = results["resubscribe_after_restart_ms"]
    print(
        f"\nresubscribe after Redis restart ({rs['channels']} channels held): "
        f"median {rs['median']:.0f} ms over {len(rs['runs'])} restarts "
        f"({', '.join(f'{x:.0f}' for x in rs['runs'])} ms); "
        f"server-side subscribers told to recover (3010, Redis lost the streams): "
        f"{results['clients_told_to_recover']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
