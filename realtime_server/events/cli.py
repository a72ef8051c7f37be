"""Event-log commands: ``migrate``, ``audit document|user ID``, ``events cleanup``.

They read the store from the environment like ``serve`` does (``REALTIME_DATABASE_URL``,
else ``REALTIME_SQLITE_PATH``); the database URL may hold a password and is never
printed. Exit codes follow the main command line: 0 success, 1 store unreachable or
failing, 2 bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from ..config import Settings
from ..errors import ConfigError
from .audit import format_json, format_table, format_time, parse_time, read_events
from .factory import build_store
from .store import EventStore, StoreUnavailable

__all__ = ["register"]

T = TypeVar("T")

EXIT_OK = 0


MIGRATE_TIMEOUT = 600.0
"""Seconds one migration statement may take from ``realtime-server migrate`` (``serve``
gives it ``REALTIME_EVENTS_TIMEOUT``: run long migrations with this command first)."""


def _with_store(
    settings: Settings,
    use: Callable[[EventStore], Awaitable[T]],
    *,
    readonly: bool,
    timeout: float | None = None,
) -> T:
    store = build_store(settings, readonly=readonly, timeout=timeout)

    async def go() -> T:
        try:
            await store.connect()
            return await use(store)
        except StoreUnavailable as exc:  # say which database, as ``check`` does
            where = "REALTIME_DATABASE_URL" if settings.database_url else _where(settings)
            raise type(exc)(f"event log ({where}): {exc}") from None
        finally:
            await store.close()

    return asyncio.run(go())


def _where(settings: Settings) -> str:
    return "PostgreSQL" if settings.database_url else f"SQLite {settings.sqlite_path}"


def cmd_migrate(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    applied = _with_store(
        settings, lambda store: store.migrate(), readonly=False, timeout=MIGRATE_TIMEOUT
    )
    if applied:
        for label in applied:
            print(f"applied {label} ({_where(settings)})")
    else:
        print(f"event log schema up to date ({_where(settings)})")
    if settings.outbox_url:  # the outbox's own objects, in the application's database
        from ..outbox.status import migrate_outbox

        outbox = migrate_outbox(settings)
        for label in outbox:
            print(f"applied {label} (REALTIME_OUTBOX_URL)")
        if not outbox:
            print("outbox schema up to date (REALTIME_OUTBOX_URL)")
    return EXIT_OK


def cmd_audit(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    since = parse_time(args.since, "--since") if args.since is not None else None
    until = parse_time(args.until, "--until") if args.until is not None else None
    if args.limit is not None and args.limit < 1:
        raise ConfigError("--limit: must be at least 1")
    subject = args.subject
    events = _with_store(
        settings,
        lambda store: read_events(
            store, subject, args.id, since=since, until=until, limit=args.limit
        ),
        readonly=True,
    )
    if args.json:
        sys.stdout.write(format_json(events))
    elif events:
        print(format_table(events, subject, args.id))
    else:
        print(f"no events for {subject} {args.id}", file=sys.stderr)
    return EXIT_OK


def cmd_cleanup(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    days: float = args.retain
    if not days >= 0 or days == float("inf"):
        raise ConfigError("--retain: a number of days >= 0")
    before = time.time() - days * 86400
    deleted = _with_store(settings, lambda store: store.delete_before(before), readonly=False)
    print(f"deleted {deleted} events older than {format_time(before)} ({_where(settings)})")
    return EXIT_OK


def register(sub: Any) -> None:
    """Add the event-log commands to the main parser's subparsers."""
    migrate = sub.add_parser(
        "migrate",
        help="apply the event-log schema migrations (and the outbox's, with REALTIME_OUTBOX_URL)",
        description="Apply the event log's pending schema migrations, each once, under a "
        "lock: PostgreSQL at REALTIME_DATABASE_URL, else the SQLite file at "
        "REALTIME_SQLITE_PATH. serve does the same at start unless "
        "REALTIME_EVENTS_MIGRATE=false; run this first for long migrations. With "
        "REALTIME_OUTBOX_URL, the outbox's tables and function are created in that "
        "database too.",
    )
    migrate.set_defaults(func=cmd_migrate)

    audit = sub.add_parser(
        "audit",
        help="print the events of a document or a user, in order",
        description="Print what happened on a document, or what a user did and received, "
        "in order, from the event log (REALTIME_DATABASE_URL, else REALTIME_SQLITE_PATH; "
        "read-only).",
    )
    kinds = audit.add_subparsers(dest="subject", metavar="SUBJECT", required=True)
    for subject, text in (
        ("document", "what happened on document ID (channel document:ID)"),
        ("user", "what user ID did, and what was published to user:ID"),
    ):
        parser = kinds.add_parser(subject, help=text, description=text[0].upper() + text[1:] + ".")
        parser.add_argument("id", metavar="ID")
        parser.add_argument(
            "--since", metavar="TIME", help="from TIME, inclusive (ISO 8601 or unix seconds)"
        )
        parser.add_argument(
            "--until", metavar="TIME", help="before TIME, exclusive (ISO 8601 or unix seconds)"
        )
        parser.add_argument("--limit", type=int, metavar="N", help="at most N events")
        parser.add_argument(
            "--json", action="store_true", help="JSON lines (one event per line) instead"
        )
        parser.set_defaults(func=cmd_audit)

    events = sub.add_parser(
        "events",
        help="event-log maintenance",
        description="Event-log maintenance (REALTIME_DATABASE_URL, else REALTIME_SQLITE_PATH).",
    )
    actions = events.add_subparsers(dest="events_command", metavar="ACTION", required=True)
    cleanup = actions.add_parser(
        "cleanup",
        help="delete events older than --retain DAYS",
        description="Delete events older than --retain DAYS, in chunks (run it from cron).",
    )
    cleanup.add_argument(
        "--retain", type=float, required=True, metavar="DAYS", help="days of events to keep"
    )
    cleanup.set_defaults(func=cmd_cleanup)
