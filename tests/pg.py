"""A private PostgreSQL cluster for tests: ``initdb`` into a temporary folder, a free
loopback port, a unix socket in that folder, trust authentication; stopped and deleted
at the end, also on failure.

``initdb`` and ``postgres`` refuse to run as root: as root, they run as the
``postgres`` user (``runuser``) in a folder that user owns. Binaries come from
``REALTIME_TEST_PG_BIN``, else ``pg_config --bindir``, else the newest
``/usr/lib/postgresql/*/bin``; tests using the cluster are skipped when none is found
(and fail on CI: ``tests/prereq.py``).

Use :func:`pg_cluster` (a session fixture shared by every module that imports it) or
``async with PgCluster() as pg:`` for a cluster of one's own (the outage tests stop and
restart theirs).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import pytest

from realtime_server.loadtest.procfs import tree_pids

__all__ = ["PgCluster", "find_bindir", "pg_cluster", "require_postgres"]

_COMMAND_TIMEOUT = 60.0


def find_bindir() -> Path | None:
    """Where ``initdb``, ``pg_ctl`` and ``postgres`` are, or None."""
    env = os.environ.get("REALTIME_TEST_PG_BIN")
    candidates: list[Path] = [Path(env)] if env else []
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            )
            candidates.append(Path(out.stdout.strip()))
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    candidates.extend(versions)
    for folder in candidates:
        if (folder / "initdb").exists() and (folder / "pg_ctl").exists():
            return folder
    return None


def require_postgres() -> None:
    """Skip the running test (fail it on CI) when the server binaries are missing."""
    if find_bindir() is None:
        from .prereq import missing

        missing(
            "PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install "
            "postgresql (or brew install postgresql), or set REALTIME_TEST_PG_BIN"
        )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgCluster:
    """One throwaway cluster. Methods block (subprocess calls, bounded); the ``a*``
    variants run them on a thread for use inside a running event loop."""

    def __init__(self, bindir: Path | None = None, *, durable: bool = False) -> None:
        """``durable=False`` (tests) turns fsync off: the machine does not crash during a
        test, so committed rows survive even an immediate shutdown. Benchmarks use
        ``durable=True`` (PostgreSQL's defaults)."""
        self.durable = durable
        found = bindir or find_bindir()
        if found is None:
            raise RuntimeError("PostgreSQL server binaries not found")
        self.bindir = found
        self.root: Path | None = None
        self.port = 0
        self.running = False
        self._as_postgres = os.geteuid() == 0

    @property
    def data(self) -> Path:
        assert self.root is not None
        return self.root / "data"

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = [str(self.bindir / args[0]), *args[1:]]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=_COMMAND_TIMEOUT, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({result.returncode}): {result.stderr.strip()}")
        return result

    def init(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="rt-pg-"))
        atexit.register(self.destroy)  # a safety net if a test run ends abruptly
        if self._as_postgres:
            entry = pwd.getpwnam("postgres")
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        )
        self.port = _free_port()

    def start(self) -> None:
        assert self.root is not None
        settings = [
            f"-p {self.port}",
            f"-k {self.root}",
            "-c listen_addresses=127.0.0.1",
            "-c max_connections=50",
            "-c shared_buffers=64MB",
        ]
        if not self.durable:
            settings += ["-c fsync=off", "-c full_page_writes=off"]
        options = " ".join(settings)
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.root / "postgres.log"),
            "-o",
            options,
            "-w",
            "-t",
            "30",
            "start",
        )
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        """``fast`` (clean) or ``immediate`` (like a crash: connections cut mid-batch)."""
        if not self.running:
            return
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop")
        self.running = False

    def restart(self) -> None:
        self.stop()
        self.start()

    def destroy(self) -> None:
        """Stop (if running) and delete the folder; never raises."""
        try:
            if self.running:
                self.stop("immediate")
        except (RuntimeError, OSError, subprocess.SubprocessError):
            pass
        finally:
            if self.root is not None:
                shutil.rmtree(self.root, ignore_errors=True)
                self.root = None

    def processes(self) -> list[int]:
        """The postmaster and its children (backends, writers): the cluster's pids."""
        pid_file = self.data / "postmaster.pid"
        return tree_pids(int(pid_file.read_text().split("\n", 1)[0]))

    def signal_all(self, sig: int) -> None:
        """Send ``sig`` to every process of the cluster (SIGSTOP freezes it: a hung
        host whose sockets stay open; SIGCONT thaws it)."""
        for pid in self.processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def log(self) -> str:
        if self.root is None:
            return ""
        try:
            return (self.root / "postgres.log").read_text(errors="replace")
        except OSError:
            return ""

    async def astop(self, mode: str = "fast") -> None:
        await asyncio.to_thread(self.stop, mode)

    async def astart(self) -> None:
        await asyncio.to_thread(self.start)

    async def create_database(self) -> str:
        """A fresh database; returns its DSN."""
        import asyncpg  # type: ignore[import-untyped]

        name = "t_" + uuid.uuid4().hex[:12]
        conn = await asyncpg.connect(self.dsn(), timeout=10)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"', timeout=30)
        finally:
            await conn.close(timeout=5)
        return self.dsn(name)

    async def __aenter__(self) -> PgCluster:
        try:
            await asyncio.to_thread(self.init)
            await asyncio.to_thread(self.start)
        except BaseException:
            await asyncio.to_thread(self.destroy)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.destroy)


_shared: PgCluster | None = None
_users = 0


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """One cluster for the whole session, whichever modules import this fixture
    (each importing module gets its own fixture definition: a reference count keeps one
    cluster and stops it after the last user). Skips when PostgreSQL is not installed."""
    global _shared, _users
    require_postgres()
    if _shared is None:
        cluster = PgCluster()
        try:
            cluster.init()
            cluster.start()
        except BaseException:
            cluster.destroy()
            raise
        _shared = cluster
    _users += 1
    try:
        yield _shared
    finally:
        _users -= 1
        if _users == 0 and _shared is not None:
            _shared.destroy()
            _shared = None
