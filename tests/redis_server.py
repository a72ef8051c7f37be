"""Private ``redis-server`` processes on free loopback ports, and a cuttable TCP proxy."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from realtime_server.loadtest.spawn import redis_command

from .helpers import MS
from .prereq import need_program

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_INSTALL = "apt-get install redis-server (or brew install redis)"


def require_redis_server() -> str:
    """redis-server's path; skips the running test (fails it on CI) without it."""
    return need_program("redis-server", REDIS_INSTALL, REDIS_SERVER)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A throwaway redis-server (no persistence) that tests can stop and restart."""

    def __init__(self, port: int | None = None, extra: list[str] | None = None) -> None:
        self.port = port or free_port()
        self.extra = list(extra or [])
        self.proc: asyncio.subprocess.Process | None = None
        self._dir = tempfile.mkdtemp(prefix="rt-redis-")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            *redis_command(
                require_redis_server(),
                self.port,
                self._dir,
                "--enable-debug-command",
                "local",
                *self.extra,
            ),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        async with asyncio.timeout(10000 * MS):
            while True:
                try:
                    reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                except OSError:
                    if self.proc.returncode is not None:
                        raise RuntimeError("redis-server exited") from None
                    await asyncio.sleep(0.02)  # the server has no readiness event to await
                    continue
                writer.write(b"PING\r\n")
                ok = await reader.readline()
                writer.close()
                if ok.startswith(b"+PONG"):
                    return

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        self.proc = None

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    async def close(self) -> None:
        await self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)


@asynccontextmanager
async def redis_server(extra: list[str] | None = None) -> AsyncIterator[RedisServer]:
    server = RedisServer(extra=extra)
    try:
        await server.start()
        yield server
    finally:
        await server.close()


class TcpProxy:
    """Forwards 127.0.0.1:port to a target; ``cut()`` drops every connection and
    refuses new ones until ``restore()``."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.cut_off = False
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.cut_off:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            self._writers.difference_update((writer, up_writer))

    def cut(self) -> None:
        self.cut_off = True
        for writer in list(self._writers):
            writer.transport.abort()

    def restore(self) -> None:
        self.cut_off = False

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


class RedisCluster:
    """Three cluster-enabled redis-servers on loopback, joined with ``redis-cli --cluster
    create`` (no replicas)."""

    def __init__(self, masters: int = 3) -> None:
        self.servers: list[RedisServer] = []
        for _ in range(masters):
            port = free_port()
            while port > 55535 or not _port_free(port + 10000):  # the cluster bus port
                port = free_port()
            self.servers.append(
                RedisServer(
                    port, extra=["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"]
                )
            )

    @property
    def url(self) -> str:
        return self.servers[0].url

    async def start(self) -> None:
        for server in self.servers:
            server.extra.extend(["--cluster-config-file", f"{server._dir}/nodes.conf"])
            await server.start()
        cli = need_program("redis-cli", REDIS_INSTALL)
        proc = await asyncio.create_subprocess_exec(
            cli,
            "--cluster",
            "create",
            *[f"127.0.0.1:{s.port}" for s in self.servers],
            "--cluster-replicas",
            "0",
            "--cluster-yes",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 30000 * MS)
        if proc.returncode != 0:
            raise RuntimeError("redis-cli --cluster create failed: " + out.decode()[-500:])
        async with asyncio.timeout(20000 * MS):
            for server in self.servers:
                while b"cluster_state:ok" not in await _command(server.port, b"CLUSTER INFO"):
                    await asyncio.sleep(0.05)  # the cluster has no event to await

    async def close(self) -> None:
        for server in self.servers:
            await server.close()


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


async def _command(port: int, line: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(line + b"\r\n")
        header = await reader.readline()
        if header.startswith(b"$"):
            return await reader.readexactly(int(header[1:]) + 2)
        return header
    finally:
        writer.close()


@asynccontextmanager
async def redis_cluster() -> AsyncIterator[RedisCluster]:
    cluster = RedisCluster()
    try:
        await cluster.start()
        yield cluster
    finally:
        await cluster.close()
