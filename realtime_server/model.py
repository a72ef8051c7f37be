"""Domain values shared by the engines, the auth checks, the event log and the codec.

These carry no wire names: how they look on the wire is the codec's business
(:mod:`realtime_server.protocol`). ``data`` and ``info`` values are kept as raw JSON
bytes (:data:`RawJSON`) from the publisher to the socket, so a publication is encoded
once, whatever the number of subscribers.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ClientInfo", "Publication", "RawJSON", "StreamPosition"]

RawJSON = bytes
"""A JSON value already encoded as UTF-8 bytes (``data``, ``info``)."""


@dataclass(frozen=True, slots=True)
class StreamPosition:
    """A position in a channel's stream: ``offset`` (increasing by one per publication)
    within the stream incarnation ``epoch``."""

    offset: int
    epoch: str


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """Who a connection is, as shown to others in presence, join/leave and publications:
    the user, the client id, and the raw ``info`` claims of the connection token
    (``conn_info``) and of the subscription token or proxy answer (``chan_info``)."""

    user: str
    client: str
    conn_info: RawJSON | None = None
    chan_info: RawJSON | None = None


@dataclass(frozen=True, slots=True)
class Publication:
    """A message in a channel. ``offset`` is 0 for publications without a stream position
    (plain Redis publishers, channels without history)."""

    data: RawJSON
    offset: int = 0
    info: ClientInfo | None = None
    tags: dict[str, str] | None = None
