"""The PostgreSQL outbox with a real PostgreSQL and real WebSocket clients: migrations,
commit and rollback, order and exactly once, the poll, poison rows, the other API
methods, ``outbox status``, and competing nodes (Redis engine)."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from realtime_server import codes
from realtime_server.app import Running
from realtime_server.errors import BackendUnavailable, CommandError
from realtime_server.outbox.rows import Result, run_rows
from realtime_server.outbox.schema import migrate

from .conftest import StartServer, connected
from .helpers import MS, make_settings, quiet_period
from .outbox_db import (
    app_connection,
    drained,
    migrated_database,
    publish_rows,
    wait_until,
)
from .pg import PgCluster, pg_cluster
from .procs import cli_env, run_cli

__all__ = ["pg_cluster"]  # the fixture, imported for this module

WAIT = 15000 * MS


@pytest.fixture
async def outbox_dsn(pg_cluster: PgCluster) -> str:
    return await migrated_database(pg_cluster)


async def numbers(client: Any, count: int, channel: str | None = None) -> list[int]:
    """The ``n`` of the next ``count`` publications (of ``channel`` if given)."""
    got: list[int] = []
    async with asyncio.timeout(WAIT):
        while len(got) < count:
            push = await client.push("pub", timeout=WAIT)
            if channel is None or push["channel"] == channel:
                got.append(push["pub"]["data"]["n"])
    return got


async def no_more_publications(client: Any) -> None:
    await quiet_period()
    with pytest.raises(TimeoutError):
        await client.push("pub", timeout=0.01)


async def http_get(server: Running, path: str) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{server.port}{path}") as resp,
    ):
        return resp.status, await resp.text()


# --- schema -----------------------------------------------------------------------------


async def test_migrate_creates_only_the_outbox_objects_once(pg_cluster: PgCluster) -> None:
    dsn = await pg_cluster.create_database()
    async with app_connection(dsn) as conn:
        await conn.execute("CREATE TABLE documents (id bigint PRIMARY KEY, status text)")
        assert await migrate(conn) == ["outbox 0001_outbox"]
        assert await migrate(conn) == []  # up to date: untouched
        tables = {
            r[0]
            for r in await conn.fetch(
                "SELECT relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = 'public' AND c.relkind = 'r'"
            )
        }
        assert tables == {
            "documents",
            "realtime_outbox",
            "realtime_outbox_failed",
            "realtime_outbox_migrations",
        }
        functions = await conn.fetch(
            "SELECT proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
            " WHERE n.nspname = 'public'"
        )
        assert [r[0] for r in functions] == ["realtime_publish"]
        columns = await conn.fetch(
            "SELECT column_name, data_type, column_default FROM information_schema.columns"
            " WHERE table_name = 'realtime_outbox' ORDER BY ordinal_position"
        )
        assert [(c[0], c[1]) for c in columns] == [
            ("id", "bigint"),
            ("method", "text"),
            ("payload", "jsonb"),
            ("partition", "integer"),
            ("created_at", "timestamp with time zone"),
        ]
        # realtime_publish queues a publish row and returns its id.
        queued = await conn.fetchval("SELECT realtime_publish('document:1', '{\"a\":1}')")
        row = await conn.fetchrow("SELECT method, payload::text, partition FROM realtime_outbox")
        assert queued >= 1
        assert (row[0], orjson.loads(row[1]), row[2]) == (
            "publish",
            {"channel": "document:1", "data": {"a": 1}},
            0,
        )


async def test_migrate_command_applies_the_outbox_schema(pg_cluster: PgCluster) -> None:
    dsn = await pg_cluster.create_database()
    env = cli_env(OUTBOX_URL=dsn)
    code, out, err = await run_cli("migrate", env=env)
    assert code == 0, err
    assert "applied outbox 0001_outbox (REALTIME_OUTBOX_URL)" in out
    assert dsn not in out + err
    code, out, _ = await run_cli("migrate", env=env)
    assert code == 0 and "outbox schema up to date" in out


# --- delivery -----------------------------------------------------------------------------


async def test_commit_delivers_and_rollback_never_does(
    start_server: StartServer, outbox_dsn: str
) -> None:
    server = await start_server(OUTBOX_URL=outbox_dsn)
    client = await connected(server, "42", channels=["document:7"])
    async with app_connection(outbox_dsn) as conn:
        await conn.execute("CREATE TABLE documents (id bigint PRIMARY KEY, status text)")
        await conn.execute("INSERT INTO documents VALUES (7, 'sent')")
        tx = conn.transaction()
        await tx.start()
        await conn.execute("UPDATE documents SET status = 'signed' WHERE id = 7")
        await conn.execute("SELECT realtime_publish('document:7', '{\"n\": 1}')")
        await tx.rollback()
        async with conn.transaction():
            await conn.execute("UPDATE documents SET status = 'declined' WHERE id = 7")
            await conn.execute("SELECT realtime_publish('document:7', '{\"n\": 2}')")
        assert await numbers(client, 1) == [2]
        await no_more_publications(client)
        await drained(conn)


async def test_a_thousand_rows_in_order_exactly_once(
    start_server: StartServer, outbox_dsn: str
) -> None:
    server = await start_server(OUTBOX_URL=outbox_dsn)
    client = await connected(server, "42", channels=["document:1"])
    async with app_connection(outbox_dsn) as conn:
        await publish_rows(conn, "document:1", range(1000), per_transaction=50)
        assert await numbers(client, 1000) == list(range(1000))
        await no_more_publications(client)
        await drained(conn)
    status, body = await http_get(server, "/metrics")
    assert status == 200 and "realtime_outbox_executed_total 1000" in body
    assert "realtime_outbox_oldest_age_seconds" in body


async def test_a_plain_insert_without_notify_is_found_by_the_poll(
    start_server: StartServer, outbox_dsn: str
) -> None:
    server = await start_server(OUTBOX_URL=outbox_dsn, OUTBOX_POLL_INTERVAL=0.2)
    client = await connected(server, "42", channels=["document:3"])
    async with app_connection(outbox_dsn) as conn:
        await conn.execute(
            "INSERT INTO realtime_outbox (payload) VALUES ($1::jsonb)",
            orjson.dumps({"channel": "document:3", "data": {"n": 5}}).decode(),
        )
        assert await numbers(client, 1) == [5]
        await drained(conn)


async def test_poison_rows_move_to_failed_and_the_partition_goes_on(
    start_server: StartServer, outbox_dsn: str
) -> None:
    server = await start_server(OUTBOX_URL=outbox_dsn)
    client = await connected(server, "42", channels=["document:1"])
    good = {"channel": "document:1", "data": {"n": 0}}
    rows: list[tuple[str, Any]] = [
        ("publish", good),
        ("nope", good),  # unknown method
        ("presence", {"channel": "document:1"}),  # an API method, but not one for rows
        ("publish", "just a string"),  # payload not an object
        ("publish", {"channel": "bad channel!", "data": 1}),  # 107
        ("publish", {"channel": "unknown:1", "data": 1}),  # 102
        ("publish", {"channel": "document:1"}),  # no data: 107
        ("broadcast", {"channels": ["document:1", "unknown:2"], "data": {"n": 1}}),
        ("publish", {"channel": "document:1", "data": {"n": 2}}),
    ]
    async with app_connection(outbox_dsn) as conn:
        async with conn.transaction():
            for method, payload in rows:
                await conn.execute(
                    "INSERT INTO realtime_outbox (method, payload) VALUES ($1, $2::jsonb)",
                    method,
                    orjson.dumps(payload).decode(),
                )
            await conn.execute("NOTIFY realtime_outbox, '0'")
        # The good rows arrive in order; the broadcast published its valid channel.
        assert await numbers(client, 3) == [0, 1, 2]
        await wait_until(lambda: server.node.metrics.counters["outbox_failed"][1]() == 7)
        failed = await conn.fetch("SELECT method, error FROM realtime_outbox_failed ORDER BY id")
        errors = [(r[0], r[1]) for r in failed]
        assert [m for m, _ in errors] == [
            "nope",
            "presence",
            "publish",
            "publish",
            "publish",
            "publish",
            "broadcast",
        ]
        assert "unknown method 'nope'" in errors[0][1]
        assert "payload must be a JSON object" in errors[2][1]
        assert errors[3][1].startswith("107") and errors[4][1].startswith("102")
        assert errors[5][1].startswith("107") and "data" in errors[5][1]
        assert "unknown:2: 102" in errors[6][1]
        await drained(conn)
    # Failed rows are not a trouble of the consumer: /readyz stays clean.
    assert server.node.readiness().degraded == {}
    code, out, err = await run_cli("outbox", "status", env=cli_env(OUTBOX_URL=outbox_dsn))
    assert code == 0, err
    assert "waiting: 0  failed: 7" in out


async def test_every_api_method_runs_from_a_row(start_server: StartServer, outbox_dsn: str) -> None:
    server = await start_server(OUTBOX_URL=outbox_dsn)
    target = await connected(server, "7", channels=["document:1"])
    leaving = await connected(server, "8", channels=["document:2"])
    revoked = await connected(server, "9", jti="revoke-me")
    invalid = await connected(server, "10")
    watcher = await connected(server, "42", channels=["document:5", "document:6"])
    rows: list[tuple[str, dict[str, Any]]] = [
        ("broadcast", {"channels": ["document:5", "document:6"], "data": {"n": 1}}),
        ("unsubscribe", {"user": "8", "channel": "document:2"}),
        ("disconnect", {"user": "7", "disconnect": {"code": 4000, "reason": "bye"}}),
        ("revoke_token", {"uid": "revoke-me"}),
        ("invalidate_user_tokens", {"user": "10"}),
    ]
    async with app_connection(outbox_dsn) as conn, conn.transaction():
        for method, payload in rows:
            await conn.execute(
                "INSERT INTO realtime_outbox (method, payload) VALUES ($1, $2::jsonb)",
                method,
                orjson.dumps(payload).decode(),
            )
        await conn.execute("NOTIFY realtime_outbox, '0'")
    pushes = [await watcher.push("pub") for _ in "ab"]
    assert sorted(p["channel"] for p in pushes) == ["document:5", "document:6"]
    unsubscribed = await leaving.push("unsubscribe")
    assert unsubscribed["channel"] == "document:2"
    assert (await target.closed())[0] == 4000
    assert (await revoked.closed())[0] == 4501
    assert (await invalid.closed())[0] == 4501


async def test_a_row_run_twice_is_delivered_once(
    start_server: StartServer, outbox_dsn: str
) -> None:
    """What a node killed between running a row and committing leaves behind: the row
    again. Its publish carries outbox:<id>, so the second run delivers nothing."""
    server = await start_server(OUTBOX_URL=outbox_dsn)
    client = await connected(server, "42", channels=["document:1"])
    async with app_connection(outbox_dsn) as conn:
        row_id = await conn.fetchval("SELECT realtime_publish('document:1', '{\"n\":1}')")
        assert await numbers(client, 1) == [1]
        await drained(conn)
        await conn.execute(
            "INSERT INTO realtime_outbox (id, payload) VALUES ($1, $2::jsonb)",
            row_id,
            orjson.dumps({"channel": "document:1", "data": {"n": 1}}).decode(),
        )
        await conn.execute("SELECT realtime_publish('document:1', '{\"n\":2}')")
        assert await numbers(client, 1) == [2]
        await no_more_publications(client)
        await drained(conn)


async def test_status_command(pg_cluster: PgCluster, outbox_dsn: str) -> None:
    async with app_connection(outbox_dsn) as conn:
        await publish_rows(conn, "document:1", range(3), partition=0)
        await publish_rows(conn, "document:2", range(2), partition=5)
    env = cli_env(OUTBOX_URL=outbox_dsn, OUTBOX_PARTITIONS="2")
    code, out, err = await run_cli("outbox", "status", env=env)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["PARTITION", "WAITING", "OLDEST"]
    assert lines[1].split()[:2] == ["0", "3"] and lines[1].split()[2].endswith("s")
    assert lines[2].split() == ["1", "0", "-"]
    assert lines[3].split()[:2] == ["5", "2"] and "not consumed" in lines[3]
    assert lines[4] == "waiting: 5  failed: 0"
    code, out, _ = await run_cli("outbox", "status", "--json", env=env)
    body = orjson.loads(out)
    assert body["waiting"] == 5 and body["failed"] == 0
    assert [p["partition"] for p in body["partitions"]] == [0, 1, 5]
    # Unset URL: usage error; a database without the schema: runtime failure.
    code, _, err = await run_cli("outbox", "status", env=cli_env())
    assert code == 2 and "REALTIME_OUTBOX_URL" in err
    bare = await pg_cluster.create_database()
    code, _, err = await run_cli("outbox", "status", env=cli_env(OUTBOX_URL=bare))
    assert code == 1 and "run realtime-server migrate" in err and bare not in err
    # realtime-server check reaches the outbox too.
    code, out, _ = await run_cli("check", env=env)
    assert code == 0 and "outbox: ok" in out
    code, out, _ = await run_cli("check", env=cli_env(OUTBOX_URL=bare))
    assert code == 1 and "outbox: tables missing (run realtime-server migrate)" in out


async def test_rows_outside_the_partitions_are_reported(
    start_server: StartServer, outbox_dsn: str
) -> None:
    server = await start_server(OUTBOX_URL=outbox_dsn, OUTBOX_POLL_INTERVAL=0.1)
    async with app_connection(outbox_dsn) as conn:
        await publish_rows(conn, "document:1", range(1), partition=3)
    await wait_until(lambda: "outbox" in server.node.readiness().degraded)
    readiness = server.node.readiness()
    assert readiness.ready
    assert "partition 3 are not consumed" in readiness.degraded["outbox"]


# --- competing nodes (Redis engine) ---------------------------------------------------------


async def test_two_nodes_compete_for_partitions(
    start_server: StartServer, outbox_dsn: str, redis_url: str, redis_prefix: str
) -> None:
    env = {
        "REDIS_URL": redis_url,
        "REDIS_PREFIX": redis_prefix,
        "OUTBOX_URL": outbox_dsn,
        "OUTBOX_PARTITIONS": 2,
    }
    a, b = [await start_server(**env) for _ in "ab"]
    channels = ["document:p0", "document:p1"]
    client = await connected(a, "42", channels=channels)

    def executed(node: Running) -> int:
        return int(node.node.metrics.counters["outbox_executed"][1]())

    sent = 0
    got: dict[str, list[int]] = {c: [] for c in channels}
    async with app_connection(outbox_dsn) as conn:
        # Waves until both nodes have run rows (each partition is worked by one node at
        # a time; which one is up to the locks).
        for _ in range(30):
            wave = range(sent, sent + 200)
            await asyncio.gather(
                publish_rows(conn, channels[0], wave, per_transaction=20, partition=0),
                publish_rows_on_new_connection(outbox_dsn, channels[1], wave, partition=1),
            )
            sent += 200
            for _ in range(400):
                push = await client.push("pub", timeout=WAIT)
                got[push["channel"]].append(push["pub"]["data"]["n"])
            if executed(a) and executed(b):
                break
        await no_more_publications(client)
        await drained(conn)
    assert got == {c: list(range(sent)) for c in channels}  # in order, exactly once
    assert executed(a) > 0 and executed(b) > 0
    assert executed(a) + executed(b) == 2 * sent


async def publish_rows_on_new_connection(
    dsn: str, channel: str, wave: range, partition: int
) -> None:
    async with app_connection(dsn) as conn:
        await publish_rows(conn, channel, wave, per_transaction=20, partition=partition)


async def test_idempotency_key_in_a_row_payload_is_kept(
    start_server: StartServer, outbox_dsn: str
) -> None:
    """A row may name its own key: then an API publish with that key (or another row)
    is not delivered twice either."""
    server = await start_server(OUTBOX_URL=outbox_dsn)
    client = await connected(server, "42", channels=["document:1"])
    key = uuid.uuid4().hex
    body = {"channel": "document:1", "data": {"n": 1}, "idempotency_key": key}
    async with app_connection(outbox_dsn) as conn:
        for _ in range(2):
            await conn.execute(
                "INSERT INTO realtime_outbox (payload) VALUES ($1::jsonb)",
                orjson.dumps(body).decode(),
            )
        await conn.execute("NOTIFY realtime_outbox, '0'")
        assert await numbers(client, 1) == [1]
        await wait_until(lambda: server.node.metrics.counters["outbox_executed"][1]() == 2)
        await no_more_publications(client)


def test_outbox_settings() -> None:
    settings = make_settings(OUTBOX_URL="postgresql://u:pw@db/app", OUTBOX_PARTITIONS=4)
    assert settings.outbox_partitions == 4 and settings.outbox_poll_interval == 1
    assert "pw" not in repr(settings)


# --- running rows (pure: a recording stand-in for the API) ---------------------------------


class RecordingRunner:
    """Stands in for the API (not for Redis or PostgreSQL): records the calls."""

    def __init__(self, fail_batch_at: int | None = None) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.fail_batch_at = fail_batch_at

    async def execute(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self.calls.append((method, params))
        return {}

    async def publish_batch(self, bodies: Any) -> list[Any]:
        self.calls.append(("publish_batch", [b["data"] for b in bodies]))
        if self.fail_batch_at is not None and len(self.calls) - 1 == self.fail_batch_at:
            raise BackendUnavailable("redis: ConnectionError")
        return [
            CommandError(codes.UNKNOWN_CHANNEL) if b["channel"] == "x:1" else {} for b in bodies
        ]


def row(row_id: int, method: str, payload: Any) -> tuple[int, str, str]:
    return row_id, method, orjson.dumps(payload).decode()


async def test_consecutive_publishes_run_together_in_order() -> None:
    runner = RecordingRunner()
    rows = [
        row(1, "publish", {"channel": "document:1", "data": 1}),
        row(2, "publish", {"channel": "x:1", "data": 2}),
        row(3, "nope", {}),
        row(4, "disconnect", {"user": "7"}),
        row(5, "publish", {"channel": "document:1", "data": 5, "idempotency_key": "mine"}),
    ]
    outcomes = await run_rows(runner, rows)
    assert [o.result for o in outcomes] == [
        Result.DONE,
        Result.FAILED,
        Result.FAILED,
        Result.DONE,
        Result.DONE,
    ]
    assert outcomes[1].error.startswith("102")
    assert runner.calls == [
        ("publish_batch", [1, 2]),
        ("disconnect", {"user": "7"}),
        ("publish_batch", [5]),
    ]


async def test_a_temporary_failure_stops_at_the_first_row_of_its_run() -> None:
    runner = RecordingRunner(fail_batch_at=2)
    rows = [
        row(1, "publish", {"channel": "document:1", "data": 1}),
        row(2, "revoke_token", {"uid": "j"}),
        row(3, "publish", {"channel": "document:1", "data": 3}),
        row(4, "publish", {"channel": "document:1", "data": 4}),
        row(5, "publish", {"channel": "document:1", "data": 5}),
    ]
    outcomes = await run_rows(runner, rows)
    assert [o.result for o in outcomes] == [Result.DONE, Result.DONE, Result.RETRY]
    assert "redis" in outcomes[2].error  # row 3 waits first in line; 4 and 5 too


async def test_the_readme_trigger_announces_status_changes(
    start_server: StartServer, outbox_dsn: str
) -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme[readme.index("A trigger that announces") :]
    trigger_sql = section[section.index("```sql") + 6 : section.index("```\n")]
    server = await start_server(OUTBOX_URL=outbox_dsn)
    client = await connected(server, "42", channels=["document:7"])
    async with app_connection(outbox_dsn) as conn:
        await conn.execute("CREATE TABLE documents (id bigint PRIMARY KEY, status text)")
        await conn.execute(trigger_sql)
        await conn.execute("INSERT INTO documents VALUES (7, 'sent')")
        await conn.execute("UPDATE documents SET status = 'sent' WHERE id = 7")  # unchanged
        await conn.execute("UPDATE documents SET status = 'signed' WHERE id = 7")
        assert (await client.push("pub"))["pub"]["data"] == {"status": "signed"}
        await no_more_publications(client)


async def test_an_unmigrated_database_is_reported_not_fatal(
    start_server: StartServer, pg_cluster: PgCluster
) -> None:
    bare = await pg_cluster.create_database()
    server = await start_server(OUTBOX_URL=bare, OUTBOX_POLL_INTERVAL=0.1)
    await wait_until(lambda: "outbox" in server.node.readiness().degraded)
    readiness = server.node.readiness()
    assert readiness.ready
    assert readiness.degraded["outbox"] == "tables missing (run realtime-server migrate)"
    client = await connected(server, "42", channels=["document:1"])
    await server.node.ops.publish("document:1", b'{"n": 1}')
    assert await numbers(client, 1) == [1]
    status, body = await http_get(server, "/metrics")
    assert status == 200
    assert "realtime_outbox_degraded 1" in body
