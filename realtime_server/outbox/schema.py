"""The outbox's versioned migrations and the SQL the consumer and ``outbox status`` run.

``migrations/NNNN_name.sql`` is version NNNN. :func:`migrate` applies the versions
missing from ``realtime_outbox_migrations`` (version, name, applied_at) in one
transaction under an advisory lock, so two nodes or operators running it together apply
each version once. It runs in the application's database and creates nothing there but
the outbox's own objects (tables ``realtime_outbox``, ``realtime_outbox_failed``, the
function ``realtime_publish`` and the version table); ``realtime-server migrate`` runs it
when ``REALTIME_OUTBOX_URL`` is set.
"""

from __future__ import annotations

from typing import Any, Final

from ..events.migrate import Migration
from ..events.migrate import load_migrations as load_event_style_migrations

__all__ = [
    "CHANNEL",
    "LOCK_CLASS",
    "MOVE_FAILED",
    "POLL",
    "SELECT_ROWS",
    "Migration",
    "load_migrations",
    "migrate",
]

CHANNEL: Final = "realtime_outbox"
"""The ``LISTEN``/``NOTIFY`` channel; a notification's payload is the partition."""

LOCK_CLASS: Final = 0x72746F62  # "rtob"
"""First key of the advisory locks: ``(LOCK_CLASS, partition)`` is a partition's lock,
``(LOCK_CLASS, -1)`` the migration lock."""

_MIGRATION_LOCK_KEY: Final = -1

SELECT_ROWS: Final = (
    # The first rows of partition $1, if this transaction gets the partition's lock
    # (none otherwise: another node is working it). The lock is taken inside the
    # statement, after its snapshot: a row the previous holder deleted and committed in
    # between would still be visible, but FOR UPDATE re-checks each row when locking it
    # and skips deleted ones, so no row is run twice by two holders in turn.
    "SELECT id, method, payload::text FROM realtime_outbox"  # noqa: S608 - constants
    f" WHERE partition = $1 AND (SELECT pg_try_advisory_xact_lock({LOCK_CLASS}, $1))"
    " ORDER BY id LIMIT $2 FOR UPDATE"
)

MOVE_FAILED: Final = (
    "WITH moved AS (DELETE FROM realtime_outbox WHERE id = ANY($1::bigint[])"
    " RETURNING id, method, payload, partition, created_at)"
    " INSERT INTO realtime_outbox_failed (id, method, payload, partition, created_at, error)"
    " SELECT m.id, m.method, m.payload, m.partition, m.created_at, e.error"
    " FROM moved m JOIN unnest($1::bigint[], $2::text[]) AS e(id, error) ON e.id = m.id"
    # A row re-queued with its id (to keep its idempotency key) may fail again.
    " ON CONFLICT (id) DO UPDATE SET error = excluded.error, failed_at = now()"
)

POLL: Final = (
    # Per configured partition, the age of its first row (NULL: empty); then the first
    # row of any partition outside 0..$1-1, which no node consumes. Index probes only.
    "SELECT p, extract(epoch FROM clock_timestamp() - (SELECT created_at FROM"
    " realtime_outbox o WHERE o.partition = p ORDER BY o.id LIMIT 1))::float8"
    " FROM generate_series(0, $1 - 1) AS p"
    " UNION ALL SELECT * FROM (SELECT partition, extract(epoch FROM clock_timestamp()"
    " - created_at)::float8 FROM realtime_outbox WHERE partition >= $1"
    " ORDER BY partition, id LIMIT 1) AS above"
    " UNION ALL SELECT * FROM (SELECT partition, extract(epoch FROM clock_timestamp()"
    " - created_at)::float8 FROM realtime_outbox WHERE partition < 0"
    " ORDER BY partition, id LIMIT 1) AS below"
)


def load_migrations() -> list[Migration]:
    """The outbox migrations shipped with the package, in version order (PostgreSQL
    only; loaded as the event log's are)."""
    return load_event_style_migrations("postgres", "realtime_server.outbox", "outbox ")


async def migrate(conn: Any) -> list[str]:
    """Apply the missing migrations on ``conn`` (an asyncpg connection); the labels of
    those applied (empty when up to date)."""
    applied: list[str] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1, $2)", LOCK_CLASS, _MIGRATION_LOCK_KEY)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS realtime_outbox_migrations (version integer PRIMARY KEY,"
            " name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        rows = await conn.fetch("SELECT version FROM realtime_outbox_migrations")
        done = {r[0] for r in rows}
        for migration in load_migrations():
            if migration.version in done:
                continue
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO realtime_outbox_migrations (version, name) VALUES ($1, $2)",
                migration.version,
                migration.name,
            )
            applied.append(migration.label)
    return applied
