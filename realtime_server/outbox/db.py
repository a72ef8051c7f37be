"""PostgreSQL connections for the outbox (asyncpg), bounded in time, and errors described
without the connection string (it may hold a password).

asyncpg waits forever by default: every connect and statement here has a timeout, and a
connection whose call failed is terminated rather than reused (its state is unknown).
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

from ..errors import BackendUnavailable, database_failure

__all__ = ["APPLICATION_NAME", "TIMEOUT", "OutboxUnavailable", "connect", "unavailable"]

TIMEOUT: Final = 5.0
"""Seconds one connect or statement of the outbox may take."""

APPLICATION_NAME: Final = "realtime-server outbox"


class OutboxUnavailable(BackendUnavailable):
    """The outbox database could not be reached, or is not migrated."""


async def connect(dsn: str, budget: float = TIMEOUT) -> Any:
    """One asyncpg connection whose statements take at most ``budget`` seconds each,
    made within :data:`TIMEOUT` (a long budget, ``migrate``'s, is for statements: an
    unreachable or frozen server fails the connect as fast as ever); raises
    :class:`OutboxUnavailable`."""
    import asyncpg  # type: ignore[import-untyped]

    connect_budget = min(budget, TIMEOUT)
    try:
        async with asyncio.timeout(connect_budget):
            return await asyncpg.connect(
                dsn,
                timeout=connect_budget,
                command_timeout=budget,
                server_settings={"application_name": APPLICATION_NAME},
            )
    except Exception as exc:
        raise unavailable(exc) from None


def unavailable(exc: BaseException) -> OutboxUnavailable:
    if isinstance(exc, OutboxUnavailable):
        return exc
    if getattr(exc, "sqlstate", None) in ("42P01", "42883"):  # undefined table / function
        return OutboxUnavailable("outbox: tables missing (run realtime-server migrate)")
    return OutboxUnavailable(f"outbox: {database_failure(exc)}")
