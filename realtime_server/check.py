"""``realtime-server check``: reach every configured backend, one line each.

Each line names the backend, its address (never a password) and, on failure, the
variable to change and the cause. Connecting alone proves nothing for PostgreSQL (its
pool opens no connection until one is needed): the event log is checked with a real
query.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence

from .config import Settings
from .errors import BackendUnavailable, RealtimeError

__all__ = ["reach_backends", "store_name"]


def store_name(settings: Settings) -> str:
    """The event store as the lines name it (an absolute path for SQLite)."""
    if settings.database_url:
        return "PostgreSQL (REALTIME_DATABASE_URL)"
    return f"SQLite {os.path.abspath(settings.sqlite_path)} (REALTIME_SQLITE_PATH)"


async def reach_backends(
    settings: Settings, store: str, jwks_algorithms: Sequence[str] = ()
) -> int:
    """Print one line per configured backend; returns how many could not be reached."""
    failures = 0
    if settings.jwt_jwks_url:  # the identity provider's key set
        from .auth.jwks_fetch import check_key_set

        ok, line = await check_key_set(
            settings.jwt_jwks_url, jwks_algorithms, settings.jwt_jwks_timeout
        )
        print(line)
        failures += not ok
    if settings.redis_url:
        failures += await _reach_redis(settings, settings.redis_url)
    if settings.events_enabled:
        failures += await _reach_event_log(settings, store)
    if not settings.redis_url and settings.revocations_path:
        failures += await asyncio.to_thread(_revocation_file, settings.revocations_path)
    if settings.outbox_url:
        from .outbox.status import check_outbox

        problem = await check_outbox(settings.outbox_url)
        print(f"outbox: {problem or 'ok'}")
        failures += problem is not None
    return failures


async def _reach_redis(settings: Settings, url: str) -> int:
    from .redis.client import RedisCommands
    from .redis.names import RedisNames
    from .redis.url import redis_address

    commands = RedisCommands(url, RedisNames(settings.redis_prefix), settings.redis_timeout)
    try:
        await commands.run(commands.client.ping)
        print(f"redis at {redis_address(url)}: ok")
        return 0
    except BackendUnavailable as exc:  # names the address, the variable and the cause
        print(str(exc))
        return 1
    finally:
        await commands.close()


async def _reach_event_log(settings: Settings, name: str) -> int:
    from .events.factory import build_store
    from .events.store import EventQuery, NotInitialised

    if not settings.database_url:
        missing = await asyncio.to_thread(_sqlite_to_be_created, settings.sqlite_path, name)
        if missing is not None:
            return missing
    store = build_store(settings)
    try:
        await store.connect()
        await store.query(EventQuery(document="", limit=1))
        print(f"event log, {name}: ok")
        return 0
    except NotInitialised:
        if settings.events_migrate:  # serve applies the schema at start
            print(f"event log, {name}: reachable; schema applied when serve starts")
            return 0
        print(f"event log, {name}: schema not applied (run realtime-server migrate)")
        return 1
    except RealtimeError as exc:  # StoreUnavailable: one line, no credentials
        print(f"event log, {name}: {exc}")
        return 1
    finally:
        await store.close()


def _revocation_file(path: str) -> int:
    """Where the embedded engine keeps revocations, and whether it can (read only)."""
    name = f"revocations, {os.path.abspath(path)} (REALTIME_REVOCATIONS_PATH)"
    if os.path.exists(path):
        usable = os.path.isfile(path) and os.access(path, os.R_OK | os.W_OK)
        print(f"{name}: {'ok' if usable else 'not a readable and writable file'}")
        return 0 if usable else 1
    return _to_be_created(path, name, "none yet; the first revocation creates it")


def _to_be_created(path: str, name: str, later: str) -> int:
    """A file not there yet: ``<name>: <later>`` when ``serve`` can create it (it makes
    missing folders), else why not; how many failures that is (0 or 1)."""
    folder = os.path.dirname(os.path.abspath(path))
    while not os.path.isdir(folder):
        parent = os.path.dirname(folder)
        if parent == folder or os.path.exists(folder):
            print(f"{name}: cannot be created ({folder} is not a folder)")
            return 1
        folder = parent
    if not os.access(folder, os.W_OK | os.X_OK):
        print(f"{name}: cannot be created ({folder} is not writable)")
        return 1
    print(f"{name}: {later}")
    return 0


def _sqlite_to_be_created(path: str, name: str) -> int | None:
    """No SQLite file yet: say that ``serve`` creates it, if it can, without creating
    it here (a check leaves nothing behind); None when the file exists."""
    if os.path.exists(path):
        return None
    return _to_be_created(path, f"event log, {name}", "not created yet; serve creates it")
