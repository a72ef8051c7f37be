"""``realtime-server migrate``, ``audit document|user``, ``events cleanup`` against
SQLite and PostgreSQL: output, ordering, ``--json``, ``--since/--until``, exit codes.

The commands run in-process (``cli.main``) for speed; one test runs the real entry
point as a process."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from realtime_server.cli import main
from realtime_server.errors import ConfigError
from realtime_server.events.audit import format_table, format_time, parse_time, read_events
from realtime_server.events.buffer import BufferedRecorder
from realtime_server.events.model import Event, EventType
from realtime_server.events.postgres import PostgresStore
from realtime_server.events.sqlite import SqliteStore
from realtime_server.events.store import EventStore

from .conftest import StartServer, ws_url
from .helpers import MS, RawClient, sub_token, token
from .pg import PgCluster, pg_cluster
from .procs import cli_env, run_cli

__all__ = ["pg_cluster"]

NOW = time.time()
T0 = NOW - 3600.0

EVENTS = [
    Event(EventType.CONNECT, "n1", user="7", client="c-seven-1", time=T0, details={"remote": "1"}),
    Event(
        EventType.SUBSCRIBE,
        "n1",
        user="7",
        client="c-seven-1",
        channel="document:42",
        offset=0,
        time=T0 + 10,
        details={"server_side": False},
    ),
    Event(
        EventType.PUBLICATION,
        "n1",
        channel="document:42",
        offset=1,
        time=T0 + 20,
        details={"size": 19, "publisher": "api"},
    ),
    Event(
        EventType.SUBSCRIBE_REJECTED,
        "n1",
        user="8",
        client="c-eight-1",
        channel="document:42",
        code=103,
        time=T0 + 15,
        details={"reason": "permission denied"},
    ),
    Event(EventType.PUBLICATION, "n1", channel="user:7", offset=1, time=T0 + 30),
    Event(EventType.PUBLICATION, "n1", channel="document:43", offset=1, time=T0 + 5),
    Event(EventType.CONNECT, "n1", user="9", client="old", time=NOW - 40 * 86400),
]


@pytest.fixture(params=["sqlite", "postgres"])
def store_env(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, str]]:
    """The environment selecting an empty (unmigrated) store of each kind."""
    for name in list(os.environ):
        if name.startswith("REALTIME_"):
            monkeypatch.delenv(name)
    if request.param == "sqlite":
        env = {"REALTIME_SQLITE_PATH": str(tmp_path / "events.db")}
    else:
        cluster: PgCluster = request.getfixturevalue("pg_cluster")
        env = {"REALTIME_DATABASE_URL": asyncio.run(cluster.create_database())}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    yield env


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def store_for(env: dict[str, str]) -> EventStore:
    if "REALTIME_DATABASE_URL" in env:
        return PostgresStore(env["REALTIME_DATABASE_URL"])
    return SqliteStore(env["REALTIME_SQLITE_PATH"])


def write(env: dict[str, str], events: list[Event]) -> None:
    async def go() -> None:
        store = store_for(env)
        await store.connect()
        try:
            await store.write_batch(events)
        finally:
            await store.close()

    asyncio.run(go())


def test_migrate_then_audit_document_table(
    store_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = cli(capsys, "migrate")
    assert code == 0 and "applied 0001_events" in out
    code, out, _ = cli(capsys, "migrate")
    assert code == 0 and "up to date" in out
    write(store_env, EVENTS)
    code, out, err = cli(capsys, "audit", "document", "42")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["TIME", "EVENT", "USER", "CLIENT", "DETAILS"]
    assert [line.split()[1] for line in lines[1:]] == [
        "subscribe",
        "subscribe_rejected",
        "publication",
    ]
    assert lines[1].startswith(format_time(T0 + 10)) and " 7 " in lines[1]
    assert "code=103" in lines[2] and 'reason="permission denied"' in lines[2]
    assert "offset=1" in lines[3] and "publisher=api" in lines[3] and "size=19" in lines[3]
    assert "document:43" not in out


def test_audit_user_json_since_until(
    store_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(capsys, "migrate")[0] == 0
    write(store_env, EVENTS)
    code, out, _ = cli(capsys, "audit", "user", "7", "--json")
    assert code == 0
    found = [orjson.loads(line) for line in out.splitlines()]
    assert [(e["type"], e["channel"]) for e in found] == [
        ("connect", None),
        ("subscribe", "document:42"),
        ("publication", "user:7"),  # what the user received
    ]
    assert found[0]["time"] == format_time(T0) and found[0]["details"] == {"remote": "1"}
    assert found[1]["document"] == "42" and found[0]["id"] == str(EVENTS[0].id)

    since = format_time(T0 + 10)  # inclusive, ISO 8601
    until = str(T0 + 30)  # exclusive, unix seconds
    code, out, _ = cli(capsys, "audit", "user", "7", "--json", "--since", since, "--until", until)
    assert code == 0
    assert [orjson.loads(line)["type"] for line in out.splitlines()] == ["subscribe"]
    code, out, err = cli(capsys, "audit", "document", "nothing-here")
    assert code == 0 and out == "" and "no events" in err


def test_events_cleanup_retain_days(
    store_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(capsys, "migrate")[0] == 0
    write(store_env, EVENTS)
    code, out, _ = cli(capsys, "events", "cleanup", "--retain", "30")
    assert code == 0 and "deleted 1 events" in out
    code, out, _ = cli(capsys, "audit", "user", "9", "--json")
    assert code == 0 and out == ""
    code, out, _ = cli(capsys, "audit", "user", "7", "--json")
    assert len(out.splitlines()) == 3


def test_exit_codes(store_env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(capsys, "audit", "document", "42")
    assert code == 1 and ("run realtime-server migrate" in err or "no event log" in err)
    assert cli(capsys, "migrate")[0] == 0
    code, _, err = cli(capsys, "audit", "document", "42", "--since", "yesterday-ish")
    assert code == 2 and "--since" in err
    code, _, err = cli(capsys, "audit", "document", "42", "--limit", "0")
    assert code == 2
    with pytest.raises(SystemExit) as exc:
        main(["audit"])
    assert exc.value.code == 2


def test_unreachable_postgres_exits_1_without_the_password(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))  # bound, not listening: refused
        port = s.getsockname()[1]
        monkeypatch.setenv(
            "REALTIME_DATABASE_URL", f"postgresql://audit:hunter2-secret@127.0.0.1:{port}/db"
        )
        monkeypatch.setenv("REALTIME_EVENTS_TIMEOUT", "2")
        code, out, err = cli(capsys, "audit", "document", "42")
    assert code == 1 and "PostgreSQL" in err
    assert "hunter2" not in err + out


def test_missing_sqlite_file_exits_1_and_is_not_created(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("REALTIME_DATABASE_URL", raising=False)
    monkeypatch.setenv("REALTIME_SQLITE_PATH", str(tmp_path / "absent.db"))
    code, _, err = cli(capsys, "audit", "user", "1")
    assert code == 1 and "no event log" in err
    assert not (tmp_path / "absent.db").exists()


def test_parse_time_forms() -> None:
    assert parse_time("1700000000", "--since") == 1700000000.0
    assert parse_time("1700000000.5", "--since") == 1700000000.5
    assert parse_time("2023-11-14T22:13:20Z", "--since") == 1700000000.0
    assert parse_time("2023-11-14T23:13:20+01:00", "--since") == 1700000000.0
    assert parse_time("2023-11-14T22:13:20", "--since") == 1700000000.0  # UTC
    assert parse_time("2023-11-14", "--since") == 1699920000.0
    for bad in ("", "soon", "nan", "inf"):
        with pytest.raises(ConfigError):
            parse_time(bad, "--since")


async def test_entry_point_process(tmp_path: Path) -> None:
    env = cli_env(SQLITE_PATH=str(tmp_path / "events.db"), DATABASE_URL=None)
    code, out, err = await run_cli("migrate", env=env)
    assert code == 0 and "applied" in out, err
    store = SqliteStore(tmp_path / "events.db")
    await store.connect()
    await store.write_batch(EVENTS)
    await store.close()
    code, out, err = await run_cli("audit", "document", "42", "--json", env=env)
    assert code == 0, err
    assert [orjson.loads(line)["offset"] for line in out.splitlines()] == [0, None, 1]
    code, _, err = await run_cli("audit", "document", "42", "--until", "later", env=env)
    assert code == 2 and "--until" in err and err.count("\n") == 1


async def test_embedded_server_logs_to_sqlite_and_audit_reads_it(
    start_server: StartServer, tmp_path: Path
) -> None:
    path = tmp_path / "events.db"
    server = await start_server(SQLITE_PATH=path, EVENTS_SPILL_PATH=tmp_path / "spill.jsonl")
    recorder = server.node.events
    assert isinstance(recorder, BufferedRecorder)
    client = await RawClient.open(ws_url(server))
    reply = await client.connect(token("5"))
    sub = await client.call(
        "subscribe", {"channel": "document:7", "token": sub_token("5", "document:7")}
    )
    assert "subscribe" in sub
    refused = await client.call("subscribe", {"channel": "document:8", "token": "nope"})
    assert "error" in refused
    await server.node.ops.publish("document:7", b'{"status":"signed"}', publisher="api")
    await client.push("pub")
    await client.close()
    async with asyncio.timeout(5000 * MS):
        # connect, 2 subscribes, a refusal, a publication, disconnect, 2 unsubscribes
        while recorder.written < 8:
            await asyncio.sleep(20 * MS)  # the writer's progress signals nothing
    readiness = server.node.readiness()
    assert readiness.ready and readiness.degraded == {}
    assert "realtime_event_log_written" in server.node.metrics.render().decode()

    store = SqliteStore(path, readonly=True)
    await store.connect()
    try:
        document = await read_events(store, "document", "7")
        user = await read_events(store, "user", "5")
    finally:
        await store.close()
    assert [e.type.value for e in document] == ["subscribe", "publication", "unsubscribe"]
    assert document[1].offset == 1 and document[1].details == {
        "size": 19,
        "publisher": "api",
    }
    assert [e.type.value for e in user] == [
        "connect",
        "subscribe",  # user:5, server-side
        "subscribe",  # document:7
        "subscribe_rejected",
        "disconnect",
        "unsubscribe",
        "unsubscribe",
    ]
    assert {e.client for e in user} == {reply["connect"]["client"]}
    table = format_table(document, "document", "7")
    assert "publisher=api" in table and "signed" not in table  # no payload is stored
