"""Run ``realtime-server`` as a real process (for CLI, signal and multi-process tests)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from .helpers import MS, overlay_env

CLI = [sys.executable, "-m", "realtime_server"]
_WS_RE = re.compile(r"listening on ws://[^:]+:(\d+)/")
_API_RE = re.compile(r"HTTP server API on http://[^:]+:(\d+)/api")


def cli_env(**env: str | None) -> dict[str, str]:
    """The environment of a server or CLI process of a test (see ``overlay_env``)."""
    inherited = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("REALTIME_") and k != "PYTHONASYNCIODEBUG"
    }
    return overlay_env(inherited, **env)


async def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: str | None = None
) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        *args,
        env=env or cli_env(),
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30000 * MS)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@dataclass
class ServerProcess:
    proc: asyncio.subprocess.Process
    port: int = 0
    api_port: int = 0
    log: list[str] = field(default_factory=list)
    _reader: asyncio.Task[None] | None = None
    _logged: asyncio.Condition = field(default_factory=asyncio.Condition)

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/connection/websocket"

    @property
    def api_env(self) -> dict[str, str]:
        return {"REALTIME_API_URL": f"http://127.0.0.1:{self.api_port}"}

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        async for line in self.proc.stderr:
            self.log.append(line.decode(errors="replace"))
            async with self._logged:
                self._logged.notify_all()

    async def wait_log(self, text: str, timeout: float = 10000 * MS) -> str:
        """The first log line containing ``text``, awaiting it if not logged yet."""
        async with asyncio.timeout(timeout), self._logged:
            while True:
                for line in self.log:
                    if text in line:
                        return line
                await self._logged.wait()

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 10000 * MS) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        try:
            code = await asyncio.wait_for(self.proc.wait(), timeout)
        finally:
            if self.proc.returncode is None:
                self.proc.kill()
                await self.proc.wait()
            if self._reader is not None:
                await asyncio.wait_for(self._reader, 5000 * MS)
        return code


@asynccontextmanager
async def server_process(
    *args: str,
    command: Sequence[str] = ("serve",),
    os_env: Mapping[str, str] | None = None,
    wrapper: Sequence[str] = (),
    **env: str | None,
) -> AsyncIterator[ServerProcess]:
    """Start ``realtime-server serve`` (or ``command``, e.g. none at all) with ``args``
    on free ports; wait until it says it listens. ``env`` holds REALTIME_* suffixes,
    ``os_env`` other variables (``PYTHONPATH``); ``wrapper``: a command that runs it
    (``prlimit --nofile=256:256``)."""
    proc = await asyncio.create_subprocess_exec(
        *wrapper,
        *CLI,
        *command,
        *args,
        env={**cli_env(**{"LOG_LEVEL": "INFO", **env}), **(os_env or {})},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    server = ServerProcess(proc)
    try:
        assert proc.stderr is not None
        async with asyncio.timeout(15000 * MS):
            while not server.port or (env.get("API_KEY", "") is not None and not server.api_port):
                raw = await proc.stderr.readline()
                if not raw:
                    raise RuntimeError("server exited: " + "".join(server.log))
                line = raw.decode(errors="replace")
                server.log.append(line)
                if m := _WS_RE.search(line):
                    server.port = int(m.group(1))
                if m := _API_RE.search(line):
                    server.api_port = int(m.group(1))
                if "API off" in line:
                    break
        server._reader = asyncio.get_running_loop().create_task(server._read())
        yield server
    finally:
        await server.stop(signal.SIGKILL if proc.returncode is None else signal.SIGTERM)


@dataclass
class Workers:
    """``serve --workers 2`` started by :func:`workers_process`."""

    proc: asyncio.subprocess.Process
    env: dict[str, str]
    port: int
    api_port: int

    async def wait_logged(self, marker: bytes, count: int = 2) -> None:
        """Until ``count`` stderr lines (one per worker) contain ``marker``."""
        assert self.proc.stderr is not None
        seen = 0
        async with asyncio.timeout(40000 * MS):
            while seen < count:
                line = await self.proc.stderr.readline()
                assert line, "workers exited early"
                seen += marker in line


@asynccontextmanager
async def workers_process(redis_url: str, redis_prefix: str, *args: str) -> AsyncIterator[Workers]:
    """``realtime-server serve --workers 2 *args`` on free ports with a Redis, in its own
    process group: the workers are killed with it if the test did not stop them."""
    from .redis_server import free_port

    port, api_port = free_port(), free_port()
    env = cli_env(
        REDIS_URL=redis_url,
        REDIS_PREFIX=redis_prefix,
        PORT=str(port),
        API_PORT=str(api_port),
        LOG_LEVEL="INFO",
    )
    proc = await asyncio.create_subprocess_exec(
        *CLI, "serve", "--workers", "2", *args,
        env=env, stderr=asyncio.subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    try:
        yield Workers(proc, env, port, api_port)
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the workers too
            await proc.wait()
