"""Engine interfaces: broker, history and presence, with the guarantees every
implementation (in-memory, Redis) must keep. One contract test suite checks them all.

Delivery model
--------------
- ``Broker.publish`` is **at most once** towards each node and **ordered per channel**:
  a node's :class:`BrokerEventHandler` sees one channel's publications in the order
  their offsets were assigned.
- With history on, appending to the channel's stream and publishing are **one atomic
  step**: the offset returned by ``publish`` is the one carried by the delivered
  publication, and history never holds a publication that was not published (nor the
  reverse).
- A node only receives publications of channels it subscribed to (``subscribe`` is
  reference-counted by the hub, not by the broker: one broker subscription per channel
  per node).
- When the link to a shared backend is lost and comes back, the broker resubscribes
  every channel and calls ``BrokerEventHandler.handle_reconnect``; publications of the
  gap are not replayed by the broker: clients recover them from history.

Idempotent publishing
---------------------
``Broker.publish_once`` takes an idempotency key, scoped to the channel: a second call
with the same (channel, key) within ``ttl`` seconds, from any node sharing the backend,
publishes and appends nothing and returns the first call's position. The check, the
append and the publication are **one atomic step** (two concurrent calls with one key
publish once). So a caller that lost a publish's answer (a backend retrying an API call,
the outbox consumer re-running a row whose deletion was not committed) can repeat it
without delivering twice. The embedded engine keeps the keys in a table bounded by
count (see :mod:`.idempotency`); the Redis engine in a key per (channel, key) that
expires after ``ttl``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from ..model import ClientInfo, Publication, RawJSON, StreamPosition
from ..protocol import encode_client_info
from ..values import immutable

__all__ = [
    "Broker",
    "BrokerEventHandler",
    "ControlMessage",
    "Engine",
    "HistoryOptions",
    "HistoryQuery",
    "HistoryResult",
    "Membership",
    "PresenceManager",
    "PresenceStats",
    "PublishItem",
]


@immutable
class HistoryOptions:
    """How much of a channel's stream to keep: ``size`` publications for ``ttl`` seconds.
    The stream position (epoch and top offset) outlives the entries by ``meta_ttl``."""

    size: int
    ttl: float
    meta_ttl: float = 86400.0


@immutable
class HistoryResult:
    """Publications in stream order (reverse order when asked) and the stream top."""

    publications: list[Publication]
    top: StreamPosition


@immutable
class HistoryQuery:
    """One read of :meth:`Broker.history_many`: the arguments of :meth:`Broker.history`."""

    channel: str
    since: StreamPosition | None = None
    limit: int = 0
    reverse: bool = False
    options: HistoryOptions | None = None


@immutable
class PublishItem:
    """One publication of :meth:`Broker.publish_many`: the arguments of
    :meth:`Broker.publish`, or of :meth:`Broker.publish_once` when ``key`` is set."""

    channel: str
    data: RawJSON
    info: ClientInfo | None = None
    tags: dict[str, str] | None = None
    history: HistoryOptions | None = None
    key: str | None = None
    ttl: float = 0.0
    """Seconds ``key`` is remembered."""


@immutable
class Membership:
    """A subscription arriving (:meth:`Engine.joined`) or going (:meth:`Engine.left`):
    add or remove ``info`` in the channel's presence when ``presence``, publish a join
    or leave event when ``announce``. ``info_json``: ``info`` already encoded (once per
    subscription, not once per use), or None to encode it here."""

    channel: str
    info: ClientInfo
    presence: bool
    announce: bool
    info_json: bytes | None = None

    def encoded_info(self) -> bytes:
        return self.info_json if self.info_json is not None else encode_client_info(self.info)


@dataclass(frozen=True, slots=True)
class PresenceStats:
    num_clients: int
    num_users: int


@dataclass(frozen=True, slots=True)
class ControlMessage:
    """A node-to-node command (disconnect a user, unsubscribe a user, revocation...).

    ``kind`` names the action, ``params`` carries its arguments as JSON-able values.
    """

    kind: str
    params: dict[str, str | float | int | None]


class BrokerEventHandler(Protocol):
    """What a broker calls on the node. Calls are made from the event loop and must not
    block: the hub fans out synchronously."""

    def handle_publication(self, channel: str, pub: Publication) -> None: ...

    def handle_join(self, channel: str, info: ClientInfo) -> None: ...

    def handle_leave(self, channel: str, info: ClientInfo) -> None: ...

    def handle_control(self, message: ControlMessage) -> None: ...

    def handle_reconnect(self) -> None:
        """The broker lost its link and has resubscribed every channel (and filled what
        history could fill). Control messages of the gap are lost: re-check state."""
        ...

    def handle_insufficient_state(self, channel: str) -> None:
        """Publications of ``channel`` were lost and history cannot fill the gap: the
        channel's subscribers must recover (resubscribe) to learn what they missed."""
        ...


@runtime_checkable
class Broker(Protocol):
    """Moves publications, join/leave events and control messages between nodes, and
    keeps each channel's history (see the module docstring for the guarantees)."""

    instant_subscribe: bool
    """True when :meth:`subscribe` completes without waiting on I/O (the embedded
    broker): several subscriptions are then awaited one after the other, there being
    nothing to overlap (a task each for ``asyncio.gather`` cost about 9 µs per connect)."""

    def set_handler(self, handler: BrokerEventHandler) -> None: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def subscribe(self, channel: str) -> None:
        """Start receiving the channel's events on this node (idempotent)."""
        ...

    async def unsubscribe(self, channel: str) -> None:
        """Stop receiving the channel's events on this node (idempotent)."""
        ...

    async def publish(
        self,
        channel: str,
        data: RawJSON,
        *,
        info: ClientInfo | None = None,
        tags: dict[str, str] | None = None,
        history: HistoryOptions | None = None,
    ) -> StreamPosition | None:
        """Publish to every node; with ``history``, append atomically and return the
        new stream position, else return ``None`` (no offset)."""
        ...

    async def publish_once(
        self,
        channel: str,
        data: RawJSON,
        key: str,
        ttl: float,
        *,
        info: ClientInfo | None = None,
        tags: dict[str, str] | None = None,
        history: HistoryOptions | None = None,
    ) -> tuple[StreamPosition | None, bool]:
        """:meth:`publish` unless ``key`` was used on ``channel`` within ``ttl``
        seconds (on any node sharing the backend): then nothing is published or
        appended. Returns the position (the first call's for a repeat; ``None``
        without history) and whether this call published (False: a repeat). The key
        check and the publish are atomic (see the module docstring)."""
        ...

    async def publish_many(
        self, items: Sequence[PublishItem]
    ) -> list[tuple[StreamPosition | None, bool]]:
        """Publish every item, in order, exactly as consecutive :meth:`publish` /
        :meth:`publish_once` calls would (same results, same per-channel order), in one
        round trip on a shared backend. Raises BackendUnavailable when the backend
        fails: then any prefix of the items may have been published (callers that
        repeat them give them keys)."""
        ...

    async def publish_join(self, channel: str, info: ClientInfo) -> None: ...

    async def publish_leave(self, channel: str, info: ClientInfo) -> None: ...

    async def publish_control(self, message: ControlMessage) -> None:
        """Deliver ``message`` to every node, this one included."""
        ...

    async def history(
        self,
        channel: str,
        *,
        since: StreamPosition | None = None,
        limit: int = 0,
        reverse: bool = False,
        options: HistoryOptions | None = None,
    ) -> HistoryResult:
        """Read the stream. ``limit`` 0: only the top; -1: everything kept. ``since``:
        publications after ``since.offset`` (before it with ``reverse``). The epoch is
        created when the channel's stream is first touched, so the top of an empty
        stream is ``(0, epoch)``."""
        ...

    async def history_many(self, queries: Sequence[HistoryQuery]) -> list[HistoryResult]:
        """``history`` for several channels at once (one round trip on a shared
        backend: what a connect with several channels needs); results in query order.
        A failure fails the whole call."""
        ...

    @property
    def ready(self) -> bool:
        """Whether the broker's links are up (``/readyz``)."""
        ...


@runtime_checkable
class PresenceManager(Protocol):
    """Who is subscribed to a channel, across nodes. Entries expire after ``ttl`` seconds
    unless refreshed, so that a crashed node's clients disappear."""

    async def add(self, channel: str, info: ClientInfo, ttl: float) -> None: ...

    async def remove(self, channel: str, client: str) -> None: ...

    async def presence(self, channel: str) -> dict[str, ClientInfo]: ...

    async def stats(self, channel: str) -> PresenceStats: ...

    async def close(self) -> None: ...


class Engine(Protocol):
    """A broker and a presence manager that share one backend (memory or Redis)."""

    @property
    def name(self) -> str: ...

    @property
    def broker(self) -> Broker: ...

    @property
    def presence(self) -> PresenceManager: ...

    async def joined(self, joins: Sequence[Membership], presence_ttl: float) -> None:
        """For each new subscription: ``presence.add(channel, info, presence_ttl)``
        when ``presence``, then ``broker.publish_join(channel, info)`` when
        ``announce`` (one round trip for all on a shared backend). Raises
        BackendUnavailable; some entries may have been recorded then."""
        ...

    async def left(self, leaves: Sequence[Membership]) -> None:
        """For each ended subscription: ``presence.remove(channel, info.client)`` when
        ``presence``, then ``broker.publish_leave(channel, info)`` when ``announce``
        (one round trip for all on a shared backend). Raises BackendUnavailable; some
        may have been done then (shared presence entries expire anyway)."""
        ...
