"""``realtime-server outbox status`` and ``migrate``'s outbox part: read-only views of
the outbox and applying its migrations, from the command line.

Both read ``REALTIME_OUTBOX_URL`` like ``serve`` does; it may hold a password and is
never printed. Exit codes follow the main command line: 0 success, 1 database
unreachable or not migrated, 2 bad usage (the URL unset).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import asdict, dataclass
from typing import Any

import orjson

from ..config import Settings
from ..errors import ConfigError
from .db import TIMEOUT, OutboxUnavailable, connect, unavailable
from .schema import migrate

__all__ = [
    "OutboxStatus",
    "PartitionStatus",
    "check_outbox",
    "format_status",
    "migrate_outbox",
    "register",
]

MIGRATE_TIMEOUT = 600.0
"""Seconds one migration statement may take."""


@dataclass(frozen=True, slots=True)
class PartitionStatus:
    partition: int
    waiting: int
    oldest_age: float | None
    """Seconds the oldest waiting row has waited; None when the partition is empty."""
    consumed: bool
    """False for a partition outside 0..REALTIME_OUTBOX_PARTITIONS-1 (no node reads it)."""


@dataclass(frozen=True, slots=True)
class OutboxStatus:
    partitions: list[PartitionStatus]
    failed: int
    """Rows in ``realtime_outbox_failed``."""

    @property
    def waiting(self) -> int:
        return sum(p.waiting for p in self.partitions)


async def read_status(conn: Any, partitions: int) -> OutboxStatus:
    """Counts every row (a full scan: an operator's command, not a hot path)."""
    rows = await conn.fetch(
        "SELECT partition, count(*), extract(epoch FROM clock_timestamp()"
        " - min(created_at))::float8 FROM realtime_outbox GROUP BY partition",
        timeout=TIMEOUT * 6,
    )
    found = {r[0]: (int(r[1]), float(r[2])) for r in rows}
    failed = await conn.fetchval("SELECT count(*) FROM realtime_outbox_failed", timeout=TIMEOUT)
    out: list[PartitionStatus] = []
    for p in sorted(set(range(partitions)) | set(found)):
        waiting, age = found.get(p, (0, None))
        out.append(PartitionStatus(p, waiting, age, 0 <= p < partitions))
    return OutboxStatus(out, int(failed))


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{max(seconds, 0.0):.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}min"
    return f"{seconds / 3600:.1f}h"


def format_status(status: OutboxStatus, partitions: int) -> str:
    lines = [f"{'PARTITION':<10} {'WAITING':>8}  OLDEST"]
    for p in status.partitions:
        note = "" if p.consumed else f"  not consumed (REALTIME_OUTBOX_PARTITIONS={partitions})"
        lines.append(f"{p.partition:<10} {p.waiting:>8}  {_age(p.oldest_age)}{note}")
    lines.append(f"waiting: {status.waiting}  failed: {status.failed}")
    if status.failed:
        lines.append("failed rows are in realtime_outbox_failed (column error says why)")
    return "\n".join(lines)


def _dsn(settings: Settings) -> str:
    if not settings.outbox_url:
        raise ConfigError("REALTIME_OUTBOX_URL is not set")
    return settings.outbox_url


async def _with_connection(dsn: str, budget: float, use: Any) -> Any:
    conn = await connect(dsn, budget)
    try:
        return await use(conn)
    except Exception as exc:
        raise unavailable(exc) from None
    finally:
        conn.terminate()


async def check_outbox(dsn: str) -> str | None:
    """``realtime-server check``: None when the outbox database answers and holds the
    outbox tables, else why not (no secrets)."""

    async def probe(conn: Any) -> None:
        await conn.execute(
            "SELECT 1 FROM realtime_outbox, realtime_outbox_failed LIMIT 0", timeout=TIMEOUT
        )

    try:
        await _with_connection(dsn, TIMEOUT, probe)
    except OutboxUnavailable as exc:
        return str(exc).removeprefix("outbox: ")
    return None


def migrate_outbox(settings: Settings) -> list[str]:
    """Apply the outbox migrations in ``REALTIME_OUTBOX_URL``; labels applied."""
    dsn = _dsn(settings)
    applied: list[str] = asyncio.run(_with_connection(dsn, MIGRATE_TIMEOUT, migrate))
    return applied


def cmd_status(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    dsn = _dsn(settings)
    partitions = settings.outbox_partitions

    async def read(conn: Any) -> OutboxStatus:
        return await read_status(conn, partitions)

    status: OutboxStatus = asyncio.run(_with_connection(dsn, TIMEOUT, read))
    if args.json:
        body = asdict(status) | {"waiting": status.waiting}
        sys.stdout.write(orjson.dumps(body).decode() + "\n")
    else:
        print(format_status(status, partitions))
    return 0


def register(sub: Any) -> None:
    """Add ``outbox status`` to the main parser's subparsers."""
    outbox = sub.add_parser(
        "outbox",
        help="the PostgreSQL outbox (REALTIME_OUTBOX_URL)",
        description="Inspect the transactional outbox in the database at "
        "REALTIME_OUTBOX_URL: rows an application committed for this server to publish.",
    )
    actions = outbox.add_subparsers(dest="outbox_command", metavar="ACTION", required=True)
    status = actions.add_parser(
        "status",
        help="rows waiting per partition, the oldest one's age, rows failed",
        description="Print the rows waiting in each partition, the age of the oldest one "
        "and the number of rows moved to realtime_outbox_failed (exit 1 when the database "
        "cannot be reached).",
    )
    status.add_argument("--json", action="store_true", help="one JSON object instead")
    status.set_defaults(func=cmd_status)
