"""Operations on channels, users and tokens, shared by the HTTP server API, the client
commands (publish, presence, history) and the demo.

Each checks the channel's namespace (107 malformed, 102 unknown, 108 when the namespace
does not offer it), runs on the engine and records what the audit trail needs. Values
in and out are typed (:mod:`model`, :mod:`channels.engine`); the wire shapes are the
callers' business.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from . import codes
from .auth.revocation import RevocationStore
from .channels.engine import (
    ControlMessage,
    Engine,
    HistoryResult,
    PresenceStats,
    PublishItem,
)
from .channels.namespaces import NamespaceOptions, Namespaces
from .cluster import NodeDirectory
from .errors import CommandError
from .events import EventType
from .journal import Journal
from .model import ClientInfo, RawJSON, StreamPosition
from .protocol import HistoryRequest

__all__ = ["Operations"]


class Operations:
    """The server's operations, as backends and clients reach them."""

    def __init__(
        self,
        *,
        name: str,
        engine: Engine,
        namespaces: Namespaces,
        revocations: RevocationStore,
        journal: Journal,
        directory: NodeDirectory,
        max_token_lifetime: float,
        idempotency_ttl: float,
    ) -> None:
        self.name = name
        self._engine = engine
        self._broker = engine.broker
        self._namespaces = namespaces
        self._revocations = revocations
        self._journal = journal
        self._directory = directory
        self._max_token_lifetime = max_token_lifetime
        self._idempotency_ttl = idempotency_ttl

    def options(self, channel: str) -> NamespaceOptions:
        """The channel's namespace options. Raises CommandError (107, 102)."""
        return self._namespaces.resolve(channel)[1]

    async def publish(
        self,
        channel: str,
        data: RawJSON,
        *,
        info: ClientInfo | None = None,
        tags: dict[str, str] | None = None,
        publisher: str = "api",
        idempotency_key: str | None = None,
    ) -> StreamPosition | None:
        """Publish ``data`` (encoded JSON) to ``channel``; returns the stream position
        when the channel keeps history. Raises :class:`CommandError` (107/102).

        With ``idempotency_key``, a repeat of the key on the channel within
        ``REALTIME_IDEMPOTENCY_TTL`` (on any node) delivers and records nothing and
        returns the first call's position."""
        options = self.options(channel)
        if idempotency_key is None:
            position = await self._broker.publish(
                channel, data, info=info, tags=tags, history=options.history_options()
            )
        else:
            position, published = await self._broker.publish_once(
                channel,
                data,
                idempotency_key,
                self._idempotency_ttl,
                info=info,
                tags=tags,
                history=options.history_options(),
            )
            if not published:
                return position
        self._record_publication(channel, position, info, len(data), publisher)
        return position

    async def publish_many(
        self, items: Sequence[PublishItem], publisher: str = "outbox"
    ) -> list[StreamPosition | CommandError | None]:
        """:meth:`publish` for each item, in order, in one round trip to a shared engine
        (a batch of the outbox's publish rows). Each item's history and key TTL come from
        its namespace and ``REALTIME_IDEMPOTENCY_TTL``. An item whose channel is refused
        gets its CommandError (102/107) and publishes nothing; the others keep their
        order. Raises BackendUnavailable: then any prefix may have been published (items
        repeated with their keys are delivered once)."""
        results: list[StreamPosition | CommandError | None] = [None] * len(items)
        ready: list[PublishItem] = []
        where: list[int] = []
        for i, item in enumerate(items):
            try:
                options = self.options(item.channel)
            except CommandError as exc:
                results[i] = exc
                continue
            history = options.history_options()
            ready.append(replace(item, history=history, ttl=self._idempotency_ttl))
            where.append(i)
        published = await self._broker.publish_many(ready)
        for i, item, (position, first) in zip(where, ready, published, strict=True):
            results[i] = position
            if first:  # a repeated key delivered nothing: nothing to record
                self._record_publication(
                    item.channel, position, item.info, len(item.data), publisher
                )
        return results

    def _record_publication(
        self,
        channel: str,
        position: StreamPosition | None,
        info: ClientInfo | None,
        size: int,
        publisher: str,
    ) -> None:
        self._journal.record(
            EventType.PUBLICATION,
            channel=channel,
            offset=position.offset if position is not None else None,
            user=info.user if info is not None else None,
            size=size,
            publisher=publisher,
        )

    async def disconnect_user(self, user: str, code: int, reason: str, client: str = "") -> None:
        """Close the user's connections (one of them with ``client``) on every node."""
        await self._broker.publish_control(
            ControlMessage(
                "disconnect", {"user": user, "code": code, "reason": reason, "client": client}
            )
        )

    async def unsubscribe_user(self, user: str, channel: str) -> None:
        """Unsubscribe the user's connections from ``channel`` on every node."""
        self.options(channel)
        await self._broker.publish_control(
            ControlMessage("unsubscribe", {"user": user, "channel": channel})
        )

    async def presence(self, channel: str) -> dict[str, ClientInfo]:
        if not self.options(channel).presence:
            raise CommandError(codes.NOT_AVAILABLE)
        return await self._engine.presence.presence(channel)

    async def presence_stats(self, channel: str) -> PresenceStats:
        if not self.options(channel).presence:
            raise CommandError(codes.NOT_AVAILABLE)
        return await self._engine.presence.stats(channel)

    async def history(self, req: HistoryRequest) -> HistoryResult:
        """Publications of the channel's stream, and its top. 108 without history; 112
        when ``since`` names another epoch."""
        hopts = self.options(req.channel).history_options()
        if hopts is None:
            raise CommandError(codes.NOT_AVAILABLE)
        if req.reverse and req.since is not None and req.since.offset == 0:
            raise CommandError(codes.BAD_REQUEST)
        limit = req.limit
        if limit < 0 or limit > hopts.size:
            limit = hopts.size
        found = await self._broker.history(
            req.channel, since=req.since, limit=limit, reverse=req.reverse, options=hopts
        )
        if req.since is not None and req.since.epoch and req.since.epoch != found.top.epoch:
            raise CommandError(codes.UNRECOVERABLE_POSITION)
        return found

    async def revoke_token(self, jti: str, expires_at: float | None = None) -> None:
        """Revoke one token until its ``exp`` (default: the longest token lifetime)."""
        if expires_at is None:
            expires_at = time.time() + self._max_token_lifetime
        await self._revocations.revoke_token(jti, expires_at)

    async def revoke_user(self, user: str, issued_before: float | None = None) -> None:
        """Revoke every token of ``user`` issued before a time (default: now)."""
        await self._revocations.revoke_user(
            user, issued_before if issued_before is not None else time.time()
        )

    def info(self) -> dict[str, Any]:
        """Every live node with its counts (this one first: :mod:`cluster`)."""
        return {"nodes": self._directory.nodes()}
