"""The connected sessions of this node, by client id, by user and by token id.

A session is registered once its ``connect`` succeeded and unregistered when it closes
(synchronously, in the same step as its state change: no await between them). The
token index covers the connection token and every subscription token the session
holds, so a revocation by ``jti`` finds its sessions in one lookup.
"""

from __future__ import annotations

from collections.abc import Iterator

from .metrics import Metrics
from .multimap import MultiMap
from .session import Session

__all__ = ["Registry"]


class Registry:
    """Connected sessions and their indexes."""

    __slots__ = ("_by_id", "_by_jti", "_by_user", "_metrics")

    def __init__(self, metrics: Metrics) -> None:
        self._by_id: dict[str, Session] = {}
        self._by_user: MultiMap[str, Session] = MultiMap()
        self._by_jti: MultiMap[str, Session] = MultiMap()
        self._metrics = metrics
        metrics.gauge("connections", "Connected clients.", lambda: len(self._by_id))

    def register(self, s: Session) -> None:
        self._by_id[s.client_id] = s
        self._by_user.add(s.user, s)
        self.index_token(s, s.token_jti)
        self._metrics.connections_total += 1

    def unregister(self, s: Session) -> None:
        """Forget the session (nothing if it was never registered)."""
        if self._by_id.pop(s.client_id, None) is None:
            return
        self._by_user.remove(s.user, s)
        self.unindex_token(s, s.token_jti)
        for sub in s.subs.values():
            self.unindex_token(s, sub.token_jti)

    def index_token(self, s: Session, jti: str | None) -> None:
        if jti is not None:
            self._by_jti.add(jti, s)

    def unindex_token(self, s: Session, jti: str | None) -> None:
        if jti is not None:
            self._by_jti.remove(jti, s)

    def replace_token(self, s: Session, old: str | None, new: str | None) -> None:
        self.unindex_token(s, old)
        self.index_token(s, new)

    def get(self, client_id: str) -> Session | None:
        return self._by_id.get(client_id)

    def of_user(self, user: str) -> tuple[Session, ...]:
        return self._by_user.get(user)

    def with_token(self, jti: str) -> tuple[Session, ...]:
        return self._by_jti.get(jti)

    def user_connections(self, user: str) -> int:
        return self._by_user.count(user)

    @property
    def num_users(self) -> int:
        return len(self._by_user)

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[Session]:
        """The sessions (a snapshot: closing one while iterating is safe)."""
        return iter(tuple(self._by_id.values()))

    def __contains__(self, client_id: object) -> bool:
        return client_id in self._by_id
