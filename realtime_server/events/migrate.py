"""Versioned schema migrations of the event log, shipped as package data.

``migrations/NNNN_name.sql`` is the PostgreSQL text of version NNNN and
``migrations/NNNN_name.sqlite.sql`` its SQLite variant. Each store applies the versions
missing from its ``schema_migrations`` table (version, name, applied_at) in one
transaction, under a lock (a PostgreSQL advisory lock, SQLite's write lock), so two
nodes starting together apply each version once. Applying is idempotent: an up-to-date
schema is left untouched. ``realtime-server migrate`` runs it; so does ``serve`` when
``REALTIME_EVENTS_MIGRATE`` is on.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from importlib import resources
from typing import Final, Literal

__all__ = ["Migration", "load_migrations", "split_sqlite_script"]

Dialect = Literal["postgres", "sqlite"]

_NAME: Final = re.compile(r"^(\d{4})_([a-z0-9_]+)(\.sqlite)?\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str
    prefix: str = ""
    """What the label starts with (``"outbox "`` for the outbox's)."""

    @property
    def label(self) -> str:
        return f"{self.prefix}{self.version:04d}_{self.name}"


def load_migrations(
    dialect: Dialect, package: str = "realtime_server.events", prefix: str = ""
) -> list[Migration]:
    """The migrations of ``dialect`` shipped in ``package``'s ``migrations/`` folder (the
    event log's, or the outbox's), in version order."""
    found: dict[int, Migration] = {}
    folder = resources.files(package).joinpath("migrations")
    for entry in folder.iterdir():
        match = _NAME.match(entry.name)
        if match is None:
            continue
        if bool(match.group(3)) != (dialect == "sqlite"):
            continue
        version = int(match.group(1))
        if version in found:
            raise RuntimeError(f"two {dialect} migrations with version {version:04d}")
        text = entry.read_text(encoding="utf-8")
        found[version] = Migration(version, match.group(2), text, prefix)
    return [found[v] for v in sorted(found)]


def split_sqlite_script(sql: str) -> list[str]:
    """``sql`` as single statements, so that they run inside one explicit transaction
    (``executescript`` would commit first)."""
    statements: list[str] = []
    current: list[str] = []
    for line in sql.splitlines(keepends=True):
        if not current and (not line.strip() or line.lstrip().startswith("--")):
            continue
        current.append(line)
        text = "".join(current)
        if sqlite3.complete_statement(text):
            statements.append(text.strip())
            current = []
    if "".join(current).strip():
        raise ValueError("incomplete SQL statement at the end of a migration")
    return statements
