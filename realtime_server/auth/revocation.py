"""Token revocation: the interface every store implements, and the in-memory store of
the embedded engine.

Two kinds of revocation:

- one token, by ``jti``, remembered until that token's own ``exp`` (after which the
  token is refused as expired anyway);
- every token of a user issued before a time (``iat`` cutoff), remembered for the
  maximum token lifetime. A token without ``iat`` cannot prove it was issued after the
  cutoff and counts as revoked.

Every revocation is announced to every node (``listener``), which closes the matching
live connections with 4501.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from ..errors import BackendUnavailable
from .revocation_mirror import RevocationMirror

__all__ = [
    "KEEP_MARGIN",
    "MemoryRevocationStore",
    "Revocation",
    "RevocationFile",
    "RevocationListener",
    "RevocationStore",
]

logger = logging.getLogger("realtime_server.revocation")

KEEP_MARGIN = 60.0
"""Seconds revocations are kept past the last moment their tokens could be accepted
(covers the verifier's leeway and clock skew between nodes)."""


@dataclass(frozen=True, slots=True)
class Revocation:
    """One revocation: ``kind`` "jti" (with ``jti``) or "user" (with ``user`` and
    ``issued_before``, seconds since the epoch). ``keep_until``: when it stops mattering
    (seconds since the epoch), where the announcement said."""

    kind: Literal["jti", "user"]
    jti: str | None = None
    user: str | None = None
    issued_before: float | None = None
    keep_until: float | None = None

    def matches(self, jti: str | None, user: str, iat: float | None) -> bool:
        """Whether a token with these claims is revoked by this revocation."""
        if self.kind == "jti":
            return jti is not None and jti == self.jti
        if user != self.user or self.issued_before is None:
            return False
        return iat is None or iat < self.issued_before


RevocationListener = Callable[[Revocation], None]


class RevocationFile(Protocol):
    """Where the embedded store keeps its revocations across restarts
    (:class:`~.revocation_file.JsonLinesRevocationFile`)."""

    path: str
    appended: int
    """Revocations appended since the file was last written whole."""

    def load(self, now: float) -> list[Revocation]:
        """The revocations that still matter at ``now``. Raises OSError."""
        ...

    async def append(self, revocation: Revocation) -> None:
        """Keep one more; on disk when this returns. Raises OSError."""
        ...

    async def rewrite(self, live: Callable[[], list[Revocation]]) -> None:
        """Write the file whole with ``live()`` (read once no append is under way).
        Raises OSError."""
        ...


@runtime_checkable
class RevocationStore(Protocol):
    """Where revocations are kept and how they are announced.

    ``is_revoked`` raises :class:`~realtime_server.errors.BackendUnavailable` when the
    store cannot be reached in time: callers must then refuse the token (temporarily),
    never let it in unchecked.

    ``remote``: whether ``is_revoked`` asks another process (a round trip), so that a
    caller may send it along with its own reads rather than on its own.
    """

    @property
    def remote(self) -> bool: ...

    def set_listener(self, listener: RevocationListener) -> None: ...

    def start(self) -> None:
        """Begin what the store does in the background (a shared store reads the list
        into this node's memory, to write it back should the store lose it)."""
        ...

    def heard(self, revocation: Revocation) -> None:
        """A revocation announced by any node (or by another process)."""
        ...

    def reassert(self) -> None:
        """The link to a shared store came back: it may have lost recent writes (a
        restart from an older snapshot). Write back what this node remembers."""
        ...

    async def is_revoked(self, jti: str | None, user: str, iat: float | None) -> bool: ...

    def checking(self, jti: str | None, user: str, iat: float | None) -> Awaitable[bool]:
        """``is_revoked``, asked now when the store can: a remote store's request then
        leaves with whatever the caller sends next in this loop iteration."""
        ...

    async def revoked_many(self, tokens: list[tuple[str | None, str, float | None]]) -> list[bool]:
        """``is_revoked`` for many ``(jti, user, iat)`` at once (one round trip)."""
        ...

    async def revoke_token(self, jti: str, expires_at: float) -> None: ...

    async def revoke_user(self, user: str, issued_before: float) -> None: ...

    async def close(self) -> None: ...


class MemoryRevocationStore:
    """Revocations in process memory (the embedded engine), and in ``file`` when given
    (a :class:`RevocationFile`: a restart keeps them; compacted as it grows).

    Entries are dropped once they cannot matter any more: a ``jti`` after its token's
    expiry, a user cutoff after ``max_lifetime`` seconds.
    """

    def __init__(
        self,
        max_lifetime: float = 86400.0,
        clock: Callable[[], float] = time.time,
        margin: float = KEEP_MARGIN,
        file: RevocationFile | None = None,
    ) -> None:
        self._mirror = RevocationMirror(clock)  # purged as it grows
        self._max_lifetime = max_lifetime
        self._margin = margin
        self._clock = clock
        self._listener: RevocationListener | None = None
        self._file = file
        self._written = 0  # revocations in the file when it was last written whole

    def load(self) -> int:
        """Read the revocations the file keeps (at start); how many still matter.
        Raises OSError."""
        if self._file is None:
            return 0
        kept = self._file.load(self._clock())
        for revocation in kept:
            self._keep(revocation)
        self._written = len(kept)
        return len(kept)

    def _keep(self, revocation: Revocation) -> None:
        until = revocation.keep_until or 0.0
        if revocation.kind == "jti" and revocation.jti is not None:
            self._mirror.add_jti(revocation.jti, until)
        elif revocation.user is not None and revocation.issued_before is not None:
            self._mirror.add_user(revocation.user, revocation.issued_before, until)

    async def _persist(self, revocation: Revocation) -> None:
        """On disk before the caller hears it is done; in force in memory whatever."""
        if self._file is None:
            return
        file = self._file
        try:
            await file.append(revocation)
        except OSError as exc:
            raise BackendUnavailable(
                f"revocation in force, but not kept across a restart: {file.path}: {exc}"
            ) from None
        if file.appended > max(1024, self._written):
            try:  # only what still matters: the file stays about one token lifetime's
                await file.rewrite(self._live)
            except OSError as exc:  # the appended lines are still there: nothing lost
                logger.warning("could not compact %s: %s", file.path, exc)

    def _live(self) -> list[Revocation]:
        """What memory holds that still matters, as revocations (for the file)."""
        kept = [Revocation("jti", jti=j, keep_until=u) for j, u in self._mirror.jtis().items()]
        kept += [
            Revocation("user", user=user, issued_before=e.cutoff, keep_until=e.keep_until)
            for user, e in self._mirror.users().items()
        ]
        self._written = len(kept)
        return kept

    @property
    def remote(self) -> bool:
        return False

    def set_listener(self, listener: RevocationListener) -> None:
        self._listener = listener

    def start(self) -> None:
        return None

    def heard(self, revocation: Revocation) -> None:
        return None  # this process made it: it is here already

    def reassert(self) -> None:
        return None  # nothing shared to lose

    async def is_revoked(self, jti: str | None, user: str, iat: float | None) -> bool:
        now = self._clock()
        if jti is not None:
            until = self._mirror.jti_until(jti)
            if until is not None and until >= now:
                return True
        entry = self._mirror.user(user)
        if entry is not None and entry.keep_until >= now:
            return iat is None or iat < entry.cutoff
        return False

    def checking(self, jti: str | None, user: str, iat: float | None) -> Awaitable[bool]:
        return self.is_revoked(jti, user, iat)

    async def revoked_many(self, tokens: list[tuple[str | None, str, float | None]]) -> list[bool]:
        return [await self.is_revoked(jti, user, iat) for jti, user, iat in tokens]

    async def revoke_token(self, jti: str, expires_at: float) -> None:
        revocation = Revocation("jti", jti=jti, keep_until=expires_at + self._margin)
        self._keep(revocation)
        self._announce(revocation)
        await self._persist(revocation)

    async def revoke_user(self, user: str, issued_before: float) -> None:
        now = self._clock()
        known = self._mirror.user(user)
        cutoff = max(issued_before, known.cutoff) if known is not None else issued_before
        # A token issued just before the cutoff lives until cutoff + max lifetime.
        forget_at = max(now, cutoff) + self._max_lifetime + self._margin
        revocation = Revocation("user", user=user, issued_before=cutoff, keep_until=forget_at)
        self._keep(revocation)
        self._announce(revocation)
        await self._persist(revocation)

    def _announce(self, revocation: Revocation) -> None:
        if self._listener is not None:
            self._listener(revocation)

    async def close(self) -> None:
        return None
