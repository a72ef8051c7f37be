"""What other nodes and the revocation store ask of this node's sessions.

- Control messages (through the broker, from any node's operations): disconnect a
  user's connections, unsubscribe a user from a channel, revocations, and other nodes'
  announcements (:mod:`cluster`).
- Revocations: every local session holding a revoked token is closed with 4501 at once;
  after the broker's link came back (announcements of the gap were lost), every live
  token is checked against the store again.
- Lost publications (a Redis restart without its data): client-side subscribers are
  told to resubscribe (unsubscribe push 2500); connections with a server-side
  subscription are closed with 3010, spread over a few seconds with jitter so that the
  clients do not all reconnect in the same instant.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Coroutine
from typing import Any

from . import codes
from .auth.revocation import Revocation, RevocationStore
from .channels.engine import ControlMessage
from .cluster import NODE_KIND, NodeDirectory
from .codes import CloseCode
from .errors import BackendUnavailable
from .events import EventType
from .hub import Hub
from .journal import Journal
from .metrics import Metrics
from .records import Ended
from .registry import Registry
from .session import Session
from .subscriptions import Subscriptions

__all__ = ["Control", "close_spread"]

logger = logging.getLogger("realtime_server.control")

_RECHECK_CHUNK = 1000


def close_spread(count: int) -> float:
    """Seconds over which ``count`` connections closed together are spread: 1 ms per
    connection, at least half a second, at most five (10,000 clients: 5 s)."""
    return min(5.0, max(0.5, count / 1000))


class Control:
    """Handles control messages, revocations and lost publications for this node."""

    def __init__(
        self,
        directory: NodeDirectory,
        registry: Registry,
        hub: Hub,
        subscriptions: Subscriptions,
        revocations: RevocationStore,
        journal: Journal,
        metrics: Metrics,
        spawn: Callable[[Coroutine[Any, Any, Any]], None],
    ) -> None:
        self._directory = directory
        self._registry = registry
        self._hub = hub
        self._subscriptions = subscriptions
        self._revocations = revocations
        self._journal = journal
        self._metrics = metrics
        self._spawn = spawn

    # --- control messages ------------------------------------------------------------

    def handle_control(self, message: ControlMessage) -> None:
        if message.kind == NODE_KIND:  # another node's announcement (cluster.py)
            self._directory.hear(message.params)
            return
        params = message.params
        user = str(params.get("user") or "")
        if message.kind == "revoke":
            kind = params.get("type")
            if kind in ("jti", "user"):
                before = params.get("issued_before")
                keep_until = params.get("keep_until")
                revocation = Revocation(
                    "jti" if kind == "jti" else "user",
                    jti=str(params["jti"]) if params.get("jti") is not None else None,
                    user=str(params["user"]) if params.get("user") is not None else None,
                    issued_before=float(before) if before is not None else None,
                    keep_until=float(keep_until) if keep_until is not None else None,
                )
                self._revocations.heard(revocation)  # written back should Redis lose it
                self.handle_revocation(revocation)
        elif message.kind == "disconnect":
            code = CloseCode(
                int(params.get("code") or codes.CLOSE_SHUTDOWN.code),
                str(params.get("reason") or "disconnect"),
                reconnect=True,
            )
            client = params.get("client")
            for s in self._registry.of_user(user):
                if not client or client == s.client_id:
                    s.close(code)
        elif message.kind == "unsubscribe":
            channel = str(params.get("channel") or "")
            for s in self._registry.of_user(user):
                self._subscriptions.end_later(s, channel, Ended.SERVER)

    # --- revocations -------------------------------------------------------------------

    def handle_revocation(self, revocation: Revocation) -> None:
        """Close every local session holding a token the revocation covers."""
        self._metrics.revocations_total += 1
        if revocation.kind == "jti":
            targets = set(self._registry.with_token(revocation.jti or ""))
        else:
            targets = {
                s for s in self._registry.of_user(revocation.user or "") if _covered(revocation, s)
            }
        for s in targets:
            s.close(codes.CLOSE_TOKEN_REVOKED)
        # The user is known from the revocation, or from the sessions holding the token.
        user = revocation.user
        if user is None and targets:
            user = next(iter(targets)).user
        self._journal.record(
            EventType.TOKEN_REVOKED,
            user=user,
            revocation=revocation.kind,
            jti=revocation.jti,
            issued_before=revocation.issued_before,
            closed=len(targets),
        )

    async def recheck_revocations(self) -> None:
        """Close every session whose token was revoked while we could not hear it.
        Retried with backoff while the store is unreachable."""
        for attempt in range(8):
            try:
                await self._recheck()
                return
            except BackendUnavailable:
                await asyncio.sleep(min(5.0, 0.1 * 2**attempt))
        logger.warning("could not re-check revocations: revocation store unreachable")

    async def _recheck(self) -> None:
        tokens: list[tuple[str | None, str, float | None]] = []
        owners: list[Session] = []
        for s in self._registry:
            tokens.append((s.token_jti, s.user, s.token_iat))
            owners.append(s)
            for sub in s.subs.values():
                if sub.token_jti is not None or sub.token_iat is not None:
                    tokens.append((sub.token_jti, s.user, sub.token_iat))
                    owners.append(s)
        for start in range(0, len(tokens), _RECHECK_CHUNK):
            chunk = tokens[start : start + _RECHECK_CHUNK]
            revoked = await self._revocations.revoked_many(chunk)
            for owner, is_revoked in zip(
                owners[start : start + _RECHECK_CHUNK], revoked, strict=True
            ):
                if is_revoked:
                    owner.close(codes.CLOSE_TOKEN_REVOKED)

    # --- lost publications -------------------------------------------------------------

    def lost_publications(self, channel: str) -> None:
        """Publications of ``channel`` were lost: its subscribers must recover."""
        closing: list[Session] = []
        for subscriber in self._hub.subscribers(channel):
            assert isinstance(subscriber, Session)
            sub = subscriber.subs.get(channel)
            if sub is None:
                continue
            if sub.server_side:
                closing.append(subscriber)
            else:  # the SDK resubscribes with its position and learns it did not recover
                self._subscriptions.end_later(subscriber, channel, Ended.INSUFFICIENT_STATE)
        if not closing:
            return
        loop = asyncio.get_running_loop()
        spread = close_spread(len(closing))
        for s in closing:
            loop.call_later(random.uniform(0, spread), s.close, codes.CLOSE_INSUFFICIENT_STATE)


def _covered(revocation: Revocation, s: Session) -> bool:
    """Whether the session's connection token or one of its subscription tokens is
    covered by a revocation of the user's tokens."""
    if revocation.matches(s.token_jti, s.user, s.token_iat):
        return True
    return any(
        sub.token_jti is not None and revocation.matches(sub.token_jti, s.user, sub.token_iat)
        for sub in s.subs.values()
    )
