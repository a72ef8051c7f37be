"""What the runner and its child processes say to each other over their pipes.

Orders go down, replies come up; every message is a small frozen dataclass (pickled by
``multiprocessing``). A generator answers ``Setup`` with ``Ready``, ``Open`` with
``Opened``, ``AskStats`` with ``Stats``, ``Drop`` with ``Dropped``, ``StopChurn`` with
``ChurnStopped``, ``Final`` with ``Final``'s counts, and ``Exit`` with ``Bye``. The
publisher answers ``Run`` with ``Progress`` every half second, then ``Published``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .counters import Counters, FinalCounts
from .stats import Histogram

__all__ = [
    "AskStats",
    "Bye",
    "ChurnStopped",
    "Drop",
    "Dropped",
    "Exit",
    "Final",
    "FinalCounts",
    "GeneratorConfig",
    "Open",
    "Opened",
    "Progress",
    "PublishResult",
    "Published",
    "PublisherConfig",
    "Ready",
    "Run",
    "SetReconnect",
    "Setup",
    "StartChurn",
    "Stats",
    "Stop",
    "StopChurn",
    "Stream",
    "UserSpec",
]


# --- configuration ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UserSpec:
    """A simulated user: its id and the channels of its token's ``channels`` claim."""

    name: str
    channels: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class GeneratorConfig:
    """Everything a generator process needs to mint tokens and open connections."""

    index: int
    host: str
    port: int
    path: str
    secret: str
    algorithm: str = "HS256"
    audience: str | None = None
    issuer: str | None = None
    token_ttl: int = 3600
    open_timeout: float = 30.0
    reconnect: bool = True
    reconnect_delay: float = 2.0
    reconnect_window: float = 62.0
    user_channel: bool = True
    """Whether the server subscribes ``user:<sub>`` at connect (ours does; the floor not)."""
    sources: tuple[str, ...] = ()
    """Local addresses the connections are bound to, in turn; () lets the kernel choose."""
    prefix: str = ""
    protocol: str = "centrifuge"
    """``centrifuge`` (the Centrifugo JSON protocol: ours, the floor, the alternative) or
    ``socketio`` (Socket.IO v5 over Engine.IO v4, WebSocket only: the benchmarks'
    socket.io peers; :mod:`.sioclient`)."""
    discard: int = 0
    """Test hook: throw away this many live deliveries, as if lost."""


@dataclass(frozen=True, slots=True)
class Stream:
    """Publications to ``channels`` in turn at ``rate`` per second (0: back to back);
    ``kind`` shapes their data; at most ``count`` of them when given.

    ``batch`` > 1: the publications go ``batch`` at a time in one request (the API's
    ``/api/batch``; the other paths send a batch's publications one after the other), a
    batch every ``batch / rate`` seconds, so that the offered publications per second
    stay ``rate``; ``count`` still counts publications (the last batch may be smaller)."""

    channels: tuple[str, ...]
    rate: float
    kind: str
    count: int | None = None
    batch: int = 1


@dataclass(frozen=True, slots=True)
class PublisherConfig:
    via: str
    """``api``, ``redis`` (plain PUBLISH) or ``python`` (the Publisher class)."""
    streams: tuple[Stream, ...]
    api_url: str = ""
    api_key: str = ""
    redis_url: str = ""
    redis_prefix: str = "rt:"
    settings_env: dict[str, str] = field(default_factory=dict)
    """The environment of :meth:`Settings.from_env` for ``python``."""
    inflight: int = 32
    timeout: float = 10.0


# --- orders to a generator -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Setup:
    config: GeneratorConfig
    users: list[UserSpec]


@dataclass(frozen=True, slots=True)
class Open:
    """Open the connections of users ``first .. first + count - 1`` (in setup order)."""

    first: int
    count: int
    concurrency: int
    rate: float = 0.0
    """Connections per second from this generator (0: as fast as they go)."""


@dataclass(frozen=True, slots=True)
class AskStats:
    pass


@dataclass(frozen=True, slots=True)
class SetReconnect:
    on: bool


@dataclass(frozen=True, slots=True)
class Drop:
    """Reset every open connection (a network failure); each reconnects later."""


@dataclass(frozen=True, slots=True)
class StartChurn:
    rate: float
    lifetime: float
    documents: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class StopChurn:
    pass


@dataclass(frozen=True, slots=True)
class Final:
    """The publisher's per-channel counts: report losses. Also stops reconnecting."""

    published: dict[str, int]


@dataclass(frozen=True, slots=True)
class Exit:
    pass


# --- replies from a generator --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ready:
    users: int


@dataclass(frozen=True, slots=True)
class Opened:
    counters: Counters


@dataclass(frozen=True, slots=True)
class Stats:
    counters: Counters


@dataclass(frozen=True, slots=True)
class Dropped:
    count: int


@dataclass(frozen=True, slots=True)
class ChurnStopped:
    pass


@dataclass(frozen=True, slots=True)
class Bye:
    pass


# --- the publisher ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Run:
    """Publish for ``duration`` seconds (None: until every stream's count is reached),
    the configured streams or ``streams`` (the benchmarks' phases)."""

    duration: float | None
    streams: tuple[Stream, ...] | None = None


@dataclass(frozen=True, slots=True)
class Stop:
    pass


@dataclass(frozen=True, slots=True)
class Progress:
    published: int
    errors: int


@dataclass(frozen=True, slots=True)
class PublishResult:
    counts: dict[str, int]
    """Sequence number of the last publication per channel, over every run so far."""
    published: int
    errors: dict[str, int]
    rtt: Histogram
    """Publish round trip (request sent to answer), microseconds."""
    behind_s: float
    """How far the publisher fell behind its schedule at worst."""
    started_ns: int
    ended_ns: int


@dataclass(frozen=True, slots=True)
class Published:
    result: PublishResult
