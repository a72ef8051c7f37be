"""Readiness: what keeps this node from serving clients, and what is merely degraded.

``/readyz`` answers 503 only when the node cannot serve clients (draining, the Redis
engine unreachable, no verification keys yet): a load balancer then sends clients
elsewhere. A problem of a component that clients do not wait on (the event log, the
outbox, a key-set refresh) is listed under ``degraded`` with 200, since draining every
node for it would stop all clients at once.

Components register a check, a function returning None when fine or a short
description (never a secret) when not.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import orjson

__all__ = ["Check", "Health", "Readiness"]

Check = Callable[[], str | None]


@dataclass(frozen=True, slots=True)
class Readiness:
    problems: dict[str, str]
    """Why the node cannot serve clients (``/readyz`` 503); empty when it can."""
    degraded: dict[str, str]
    """Components in trouble that clients do not wait on (``/readyz`` still 200)."""

    @property
    def ready(self) -> bool:
        return not self.problems

    def to_json(self) -> bytes:
        return orjson.dumps(
            {"ready": self.ready, "problems": self.problems, "degraded": self.degraded}
        )


class Health:
    """The node's readiness checks, by component name."""

    def __init__(self) -> None:
        self._required: dict[str, Check] = {}
        self._watched: dict[str, Check] = {}

    def require(self, name: str, check: Check) -> None:
        """A component clients need: a failing check makes the node not ready."""
        self._required[name] = check

    def watch(self, name: str, check: Check) -> None:
        """A component clients do not wait on: a failing check is listed as degraded."""
        self._watched[name] = check

    def readiness(self) -> Readiness:
        return Readiness(_failing(self._required), _failing(self._watched))


def _failing(checks: dict[str, Check]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, check in checks.items():
        problem = check()
        if problem is not None:
            out[name] = problem
    return out
