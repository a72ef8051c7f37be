"""What every WebSocket connection of one listening port shares (:class:`Endpoint`)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Final, Generic, TypeVar

from websockets.http11 import Request, Response
from websockets.server import ServerProtocol

from .admission import ConnectionGate

__all__ = ["CLOSE_TIMEOUT", "Endpoint", "MakeProtocol"]

C = TypeVar("C")

CLOSE_TIMEOUT: Final = 1.5
"""Seconds a close may take, from the decision to the socket's release: the peer's close
frame and the end of the TCP connection (websockets' default is 10 s). A responsive
client answers within a round trip; one that does not is aborted."""

MakeProtocol = Callable[..., ServerProtocol]
"""Makes a connection's protocol, called with ``max_size`` (the endpoint's), and
``state=OPEN`` for a connection accepted by :func:`~.handshake.fast_accept`."""


class Endpoint(Generic[C]):
    """What every connection of one listening socket shares: the protocol's settings,
    the routes answering plain HTTP requests, the handler of an open connection, the
    caps, and the set of live connections (for shutdown)."""

    __slots__ = (
        "admits",
        "close_timeout",
        "connections",
        "gate",
        "handler",
        "idle",
        "keep_headers",
        "loop",
        "make_protocol",
        "max_queue",
        "max_size",
        "on_flood",
        "on_stale",
        "open_timeout",
        "origins",
        "other_method",
        "routes",
        "subprotocol",
        "write_cap",
        "ws_path",
    )

    def __init__(
        self,
        *,
        make_protocol: MakeProtocol,
        routes: Callable[[C, Request], Response | None],
        handler: Callable[[C], Coroutine[Any, Any, None]],
        open_timeout: float,
        write_cap: int,
        on_flood: Callable[[C], None] | None = None,
        other_method: Callable[[C, str, str], bytes] | None = None,
        gate: ConnectionGate | None = None,
        keep_headers: frozenset[str] | None = None,
        max_queue: int = 16,
        max_size: int | None = 2**20,
        close_timeout: float = CLOSE_TIMEOUT,
        ws_path: str | None = None,
        origins: Sequence[str | None] | None = None,
        subprotocol: str = "",
        admits: Callable[[C], bool] | None = None,
        on_stale: Callable[[C], None] | None = None,
    ) -> None:
        self.make_protocol = make_protocol
        self.routes = routes
        self.handler = handler
        self.open_timeout = open_timeout
        self.write_cap = write_cap
        self.on_flood = on_flood
        self.other_method = other_method
        self.gate = gate
        self.keep_headers = keep_headers
        """Lower-case request header names kept after the handshake (the subscribe
        proxy's); None keeps none."""
        self.max_queue = max_queue
        self.max_size = max_size
        """The largest message accepted, in bytes: given to ``make_protocol``, and obeyed
        by the frames read without the protocol (:mod:`.clientframes`)."""
        self.close_timeout = close_timeout
        # The fast handshake (handshake.py): on ``ws_path`` only, for the origins and the
        # subprotocol ``make_protocol``'s protocol accepts, when ``admits`` the socket.
        self.ws_path = ws_path
        self.origins = origins
        self.subprotocol = subprotocol
        self.admits = admits
        self.on_stale = on_stale
        """Called when an open connection has not authenticated (:meth:`C.
        authenticated`) within ``open_timeout`` of its accept; a socket still in its
        handshake then is aborted."""
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]  # listen()
        self.connections: set[C] = set()
        self.idle: asyncio.Event | None = None
        """Set once no connection is left (created by :meth:`wait_idle`)."""

    async def wait_idle(self) -> None:
        """Until every connection is gone."""
        if not self.connections:
            return
        if self.idle is None:
            self.idle = asyncio.Event()
        await self.idle.wait()

    def forget(self, conn: C) -> None:
        """``conn``'s socket is gone."""
        self.connections.discard(conn)
        if not self.connections and self.idle is not None:
            self.idle.set()
