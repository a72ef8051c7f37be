"""Servers a load test or a benchmark starts for itself: ``realtime-server serve`` (or
any server taking the same two ports, such as the benchmarks' floor) and a private
``redis-server``, on free loopback ports, stopped at the end (and sent SIGTERM by the
kernel if the load test dies: ``PR_SET_PDEATHSIG``)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from .procfs import free_port, wait_port

__all__ = ["HOST", "RedisProcess", "ServerProcess", "SpawnError", "log_problems", "redis_command"]

HOST = "127.0.0.1"


class SpawnError(RuntimeError):
    """A process the load test needed did not start."""


def log_problems(log: Path, most: int) -> list[str]:
    """The first warnings and errors of a server log file."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return []
    found = [
        line.strip()[:200]
        for line in text.splitlines()
        if " WARNING " in line or " ERROR " in line or "Traceback" in line
    ]
    return found[:most]


def _child_setup(cpus: list[int] | None) -> Callable[[], None]:
    def setup() -> None:
        with contextlib.suppress(Exception):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PDEATHSIG
        if cpus:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(0, cpus)

    return setup


def _stop(proc: subprocess.Popen[bytes] | None, timeout: float = 10.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def redis_command(binary: str, port: int, data_dir: str | Path, *extra: str) -> list[str]:
    """The command line of a throwaway ``redis-server``: loopback only, nothing kept on
    disk (the load test's, the benchmarks' and the tests' private servers)."""
    return [
        binary, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no",
        "--dir", str(data_dir), "--loglevel", "warning", *extra,
    ]  # fmt: skip


class RedisProcess:
    """A throwaway ``redis-server`` (no persistence) on a free loopback port."""

    def __init__(self, workdir: Path, binary: str | None = None) -> None:
        self.binary = binary or shutil.which("redis-server") or "/usr/bin/redis-server"
        self.port = free_port()
        self.dir = workdir / f"redis-{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready_at = 0.0
        """When it last answered its first PING (monotonic)."""

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def start(self) -> None:
        if not os.path.exists(self.binary):
            raise SpawnError(f"redis-server not found ({self.binary})")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(  # noqa: S603 - a fixed command line
            redis_command(self.binary, self.port, self.dir),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_child_setup(None),
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((HOST, self.port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        self.ready_at = time.monotonic()
                        return
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.005)  # the benchmarks time a restart from here
        self.stop()
        raise SpawnError("redis-server did not start")

    def stop(self) -> None:
        _stop(self.proc, 5.0)
        self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)

    def kill(self) -> None:
        """SIGKILL, as a crash would (``start`` brings it back on the same port, empty)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None


Command = Callable[[int, int], list[str]]
"""The command line of a server given its WebSocket port and its API port."""


class ServerProcess:
    """A server with the given environment on fixed free ports (so that a restart comes
    back on the same ones): ``realtime-server serve`` by default, else ``command``.

    It is ready when both ports accept connections and, for ``realtime-server serve``
    logging at INFO (the default here), when every worker logged that it listens.
    """

    def __init__(
        self,
        workdir: Path,
        env: dict[str, str],
        workers: int = 1,
        cpus: list[int] | None = None,
        command: Command | None = None,
        name: str = "server",
    ) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.api_port = free_port()
        while self.api_port == self.port:
            self.api_port = free_port()
        self.workers = workers
        self.cpus = cpus
        self.command = command
        base = {k: v for k, v in os.environ.items() if not k.startswith("REALTIME_")}
        if command is None:
            base.update(
                {
                    "REALTIME_HOST": HOST,
                    "REALTIME_PORT": str(self.port),
                    "REALTIME_API_HOST": HOST,
                    "REALTIME_API_PORT": str(self.api_port),
                    "REALTIME_LOG_LEVEL": "INFO",
                    "REALTIME_SHUTDOWN_TIMEOUT": "3",
                    "REALTIME_SQLITE_PATH": str(workdir / f"events-{self.port}.db"),
                    "REALTIME_EVENTS_SPILL_PATH": str(workdir / f"events-{self.port}.spill.jsonl"),
                    "REALTIME_REVOCATIONS_PATH": str(workdir / f"revocations-{self.port}.jsonl"),
                    "REALTIME_WORKERS": str(workers),
                }
            )
        base.update(env)
        self.env = base
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / f"{name}-{self.port}.log"
        self.starts = 0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def ws_url(self) -> str:
        return f"ws://{HOST}:{self.port}/connection/websocket"

    @property
    def api_url(self) -> str:
        return f"http://{HOST}:{self.api_port}"

    def start(self, timeout: float = 30.0) -> None:
        """Start it and wait until it serves.

        Raises:
            SpawnError: when it exits or is not ready within ``timeout`` (with its log's
            last lines).
        """
        self.starts += 1
        if self.command is None:
            cmd = [sys.executable, "-m", "realtime_server", "serve"]
        else:
            cmd = self.command(self.port, self.api_port)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(  # noqa: S603 - our own command lines
                cmd,
                env=self.env,
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
                preexec_fn=_child_setup(self.cpus),
            )
        deadline = time.monotonic() + timeout
        want = self.workers * self.starts
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            logged = not self._logs_start() or (
                self._count("listening on") >= want and self._count("HTTP server API") >= want
            )
            if logged and wait_port(HOST, self.port, 5) and wait_port(HOST, self.api_port, 5):
                return
            time.sleep(0.05)
        tail = self.tail()
        self.stop()
        raise SpawnError(f"{self.log.stem} did not start:\n{tail}")

    def _logs_start(self) -> bool:
        level = self.env.get("REALTIME_LOG_LEVEL", "INFO").upper()
        return self.command is None and level in ("INFO", "DEBUG")

    def _count(self, text: str) -> int:
        try:
            return self.log.read_text(errors="replace").count(text)
        except OSError:
            return 0

    def stop(self, timeout: float = 15.0) -> None:
        _stop(self.proc, timeout)

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def problems(self, most: int = 5) -> list[str]:
        """The server's first warnings and errors."""
        return log_problems(self.log, most)
