"""Live revocations in memory: what a node remembers of the shared revocation list, to
write it back when Redis lost it, and the embedded store's own list.

Pure bookkeeping: revoked ``jti``s and users' "issued before" cutoffs, each with the
time after which it cannot matter any more (``keep_until``, seconds since the epoch);
entries past it are forgotten. Memory is bounded by the revocations of one token
lifetime: forgotten entries are purged whenever the mirror has doubled since the last
purge.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["MirroredUser", "RevocationMirror"]


@dataclass(frozen=True, slots=True)
class MirroredUser:
    """A user's cutoff: tokens issued before ``cutoff`` are revoked until ``keep_until``."""

    cutoff: float
    keep_until: float


class RevocationMirror:
    """Live revocations, by ``jti`` and by user (see the module docstring)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._jtis: dict[str, float] = {}
        self._users: dict[str, MirroredUser] = {}
        self._clock = clock
        self._purge_at = 1024

    def __len__(self) -> int:
        return len(self._jtis) + len(self._users)

    def add_jti(self, jti: str, keep_until: float) -> None:
        self._jtis[jti] = max(keep_until, self._jtis.get(jti, 0.0))
        self._maybe_purge()

    def add_user(self, user: str, cutoff: float, keep_until: float) -> None:
        known = self._users.get(user)
        if known is not None:
            cutoff = max(cutoff, known.cutoff)
            keep_until = max(keep_until, known.keep_until)
        self._users[user] = MirroredUser(cutoff, keep_until)
        self._maybe_purge()

    def jti_until(self, jti: str) -> float | None:
        """Until when ``jti`` is revoked, if it was (perhaps in the past)."""
        return self._jtis.get(jti)

    def user(self, user: str) -> MirroredUser | None:
        """The user's cutoff, if one was set (perhaps no longer mattering)."""
        return self._users.get(user)

    def jtis(self) -> dict[str, float]:
        """Revoked ``jti`` -> ``keep_until``, those that still matter."""
        now = self._clock()
        return {jti: until for jti, until in self._jtis.items() if until > now}

    def users(self) -> dict[str, MirroredUser]:
        """User -> cutoff, those that still matter."""
        now = self._clock()
        return {user: entry for user, entry in self._users.items() if entry.keep_until > now}

    def _maybe_purge(self) -> None:
        if len(self) < self._purge_at:
            return
        self._jtis = self.jtis()
        self._users = self.users()
        self._purge_at = max(1024, 2 * len(self))
