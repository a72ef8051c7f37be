"""Errors a newcomer meets are one line naming the variable, the address and the cause,
never a traceback and never a password: each runs the real command line against a
closed port or a real server."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .helpers import MS
from .pg import PgCluster, pg_cluster, require_postgres
from .procs import cli_env, run_cli, server_process
from .redis_server import redis_server

__all__ = ["pg_cluster"]  # the fixture, imported for this module

PASSWORD = "hunter2-do-not-print"


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port that refuses connections (bound, not listening) for the test."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


def one_line(text: str) -> str:
    assert text.strip() and text.strip().count("\n") == 0, text
    assert "Traceback" not in text and PASSWORD not in text
    return text.strip()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (f"http://user:{PASSWORD}@127.0.0.1:6379/0", "scheme: 'http://'"),
        (f"redis://:{PASSWORD}@127.0.0.1:port/0", "port"),
        (f"redis://:{PASSWORD}@127.0.0.1:6379/zero", "database"),
        ("127.0.0.1:6379", "scheme: none"),
    ],
)
async def test_malformed_redis_url_is_a_configuration_error(url: str, expected: str) -> None:
    for command in (("check",), ("serve",), ("publish", "document:1", "{}")):
        code, out, err = await run_cli(*command, env=cli_env(REDIS_URL=url))
        line = one_line(err)
        assert code == 2 and "REALTIME_REDIS_URL" in line and expected in line, line
        assert PASSWORD not in out


async def test_closed_redis_port_names_address_variable_and_cause(closed_port: int) -> None:
    env = cli_env(REDIS_URL=f"redis://:{PASSWORD}@127.0.0.1:{closed_port}/0", REDIS_TIMEOUT="1")
    expected = (f"127.0.0.1:{closed_port}", "REALTIME_REDIS_URL", "Connection refused")
    for command in (("publish", "document:1", "{}"), ("revoke", "--jti", "abc")):
        code, out, err = await run_cli(*command, env=env)
        line = one_line(err)
        assert code == 1 and all(part in line for part in expected), line

    code, out, err = await run_cli("check", env=env)
    assert code == 1 and PASSWORD not in out + err
    [line] = [x for x in out.splitlines() if "REALTIME_REDIS_URL" in x]
    assert all(part in line for part in expected), out


async def test_serve_with_a_closed_redis_port_says_where_and_why(closed_port: int) -> None:
    async with server_process(
        REDIS_URL=f"redis://:{PASSWORD}@127.0.0.1:{closed_port}/0", REDIS_TIMEOUT="0.2"
    ) as srv:
        line = await srv.wait_log("REALTIME_REDIS_URL")
        assert f"127.0.0.1:{closed_port}" in line and "Connection refused" in line
        assert PASSWORD not in "".join(srv.log)


async def test_publish_to_an_unreachable_api_names_url_and_cause(closed_port: int) -> None:
    env = cli_env(API_URL=f"http://127.0.0.1:{closed_port}")
    code, _, err = await run_cli("publish", "document:1", "{}", env=env)
    line = one_line(err)
    assert code == 1 and f"http://127.0.0.1:{closed_port}" in line
    assert "REALTIME_API_URL" in line and "Connection refused" in line


async def test_wrong_or_missing_api_key_names_the_variable() -> None:
    async with server_process() as srv:
        env = cli_env(**srv.api_env, API_KEY="not-the-servers-key")
        code, _, err = await run_cli("publish", "document:1", "{}", env=env)
        line = one_line(err)
        assert code == 1 and "REALTIME_API_KEY" in line and srv.api_env["REALTIME_API_URL"] in line
        assert "not-the-servers-key" not in line
        code, _, err = await run_cli("revoke", "--jti", "x", env=env)
        assert code == 1 and "REALTIME_API_KEY" in one_line(err)
    code, _, err = await run_cli("publish", "document:1", "{}", env=cli_env(API_KEY=None))
    assert code == 2 and "REALTIME_API_KEY" in one_line(err)


async def test_check_reaches_postgres_for_real(closed_port: int) -> None:
    """A pool that opens no connection is not a reachable database."""
    env = cli_env(
        DATABASE_URL=f"postgresql://u:{PASSWORD}@127.0.0.1:{closed_port}/db", EVENTS_TIMEOUT="2"
    )
    code, out, err = await run_cli("check", env=env)
    assert code == 1 and PASSWORD not in out + err
    [line] = [x for x in out.splitlines() if "event log" in x]
    assert "REALTIME_DATABASE_URL" in line and "unreachable" in line, out


async def test_audit_from_another_folder_says_where_it_looked(tmp_path: Path) -> None:
    env = cli_env()
    del env["REALTIME_SQLITE_PATH"]  # the default, relative to the working directory
    code, _, err = await run_cli("audit", "user", "42", env=env, cwd=str(tmp_path))
    line = one_line(err)
    assert code == 1 and os.path.join(str(tmp_path), "realtime-events.db") in line
    assert "REALTIME_SQLITE_PATH" in line and not (tmp_path / "realtime-events.db").exists()


async def test_broker_link_restored_only_after_a_real_loss() -> None:
    async with redis_server() as redis, server_process(REDIS_URL=redis.url) as srv:
        await srv.wait_log("listening on")
        assert not any("link restored" in line for line in srv.log), srv.log
        await redis.restart()
        await srv.wait_log("broker link restored", timeout=15000 * MS)


def _shadow(tmp_path: Path, *modules: str) -> dict[str, str]:
    """An environment where importing ``modules`` fails as if they were not installed."""
    for module in modules:
        (tmp_path / module).mkdir()
        (tmp_path / module / "__init__.py").write_text(
            f"raise ModuleNotFoundError({f'No module named {module!r}'!r}, name={module!r})\n"
        )
    env = cli_env()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tmp_path), env.get("PYTHONPATH")]))
    return env


async def test_a_missing_package_is_one_line_naming_what_to_install(
    tmp_path: Path, closed_port: int
) -> None:
    env = _shadow(tmp_path, "redis", "asyncpg", "uvloop")
    env["REALTIME_REDIS_URL"] = f"redis://127.0.0.1:{closed_port}/0"
    code, _, err = await run_cli("publish", "document:1", "{}", env=env)
    assert code == 1 and "redis[hiredis]" in one_line(err) and "requirements/main.txt" in err
    del env["REALTIME_REDIS_URL"]
    env["REALTIME_DATABASE_URL"] = f"postgresql://u:{PASSWORD}@127.0.0.1:{closed_port}/db"
    code, _, err = await run_cli("migrate", env=env)
    assert code == 1 and "asyncpg" in one_line(err)


async def test_serve_without_uvloop_says_so_and_serves(tmp_path: Path) -> None:
    async with server_process() as srv:  # the reference: uvloop present, nothing said
        assert not any("uvloop" in line for line in srv.log)
    env = _shadow(tmp_path, "uvloop")
    async with server_process(os_env={"PYTHONPATH": env["PYTHONPATH"]}) as srv:
        line = await srv.wait_log("uvloop")
        assert "pip install uvloop" in line and srv.port


async def test_bench_baseline_without_its_packages_is_one_line(tmp_path: Path) -> None:
    env = _shadow(tmp_path, "starlette", "broadcaster", "uvicorn")
    bench = Path(__file__).parent.parent / "bench"
    for script in ("compare.py", "starlette_broadcaster.py"):
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(bench / script),
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(proc.communicate(), 30000 * MS)
        line = one_line(err.decode())
        assert proc.returncode != 0 and "make bench-deps" in line and "starlette" in line


async def test_commands_give_up_on_a_frozen_postgres_at_the_connect_timeout(
    tmp_path: Path,
) -> None:
    """A hung PostgreSQL (SIGSTOP: its port accepts, nothing answers) fails migrate,
    audit and outbox status at the connect timeout, naming what, not after migrate's
    600 s statement budget (it once waited that long)."""
    require_postgres()
    async with PgCluster() as pg:
        dsn = await pg.create_database()
        sqlite = str(tmp_path / "events.db")
        events = "event log (REALTIME_DATABASE_URL): "
        cases = [
            (("migrate",), {"DATABASE_URL": dsn}, events),
            (("audit", "document", "7"), {"DATABASE_URL": dsn}, events),
            (("migrate",), {"OUTBOX_URL": dsn, "SQLITE_PATH": sqlite}, "outbox: "),
        ]
        pg.signal_all(signal.SIGSTOP)
        try:
            for args, env, names in cases:
                started = time.monotonic()
                code, _, err = await run_cli(*args, env=cli_env(EVENTS_TIMEOUT="1", **env))
                took = time.monotonic() - started
                assert code == 1 and names in one_line(err), err
                assert "did not answer in time" in err
                assert took < 15, (args, took)  # 1 s (the event log), 5 s (the outbox)
        finally:
            pg.signal_all(signal.SIGCONT)


async def test_check_leaves_no_event_log_behind(tmp_path: Path) -> None:
    """check reports a SQLite log serve would create, without creating it; a path it
    could never create is an error naming why."""
    code, out, _ = await run_cli("check", env=cli_env(), cwd=str(tmp_path))
    assert code == 0 and "not created yet; serve creates it" in out, out
    assert await asyncio.to_thread(os.listdir, tmp_path) == []
    await asyncio.to_thread((tmp_path / "file").write_text, "")
    code, out, _ = await run_cli("check", env=cli_env(SQLITE_PATH=str(tmp_path / "file" / "e.db")))
    assert code == 1 and f"cannot be created ({tmp_path / 'file'} is not a folder)" in out, out


async def test_a_database_that_answers_no_is_refused_not_unreachable(
    pg_cluster: PgCluster,
) -> None:
    """PostgreSQL answered (a missing database, a wrong password, no privilege): the line
    says it refused, with its reason, rather than sending the user to check the network."""
    env = cli_env(DATABASE_URL=pg_cluster.dsn("no_such_database"), EVENTS_TIMEOUT="2")
    code, _, err = await run_cli("migrate", env=env)
    line = one_line(err)
    assert code == 1 and "event log (REALTIME_DATABASE_URL): PostgreSQL refused" in line
    assert 'database "no_such_database" does not exist' in line and "unreachable" not in line
