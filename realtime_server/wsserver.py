"""A listening WebSocket port: asyncio's server with :class:`~.wsconn.WsConnection`s.

What the application needs of it: the bound sockets, and a bounded shutdown (stop
accepting, close every connection with a code, wait until they are gone).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

from .wsconn import WsConnection
from .wsendpoint import Endpoint

__all__ = ["WsServer", "listen"]


class WsServer:
    """The listening socket of one :class:`~.wsconn.Endpoint`."""

    def __init__(self, server: asyncio.AbstractServer, endpoint: Endpoint[WsConnection]) -> None:
        self.server = server
        self.endpoint = endpoint

    @property
    def sockets(self) -> tuple[Any, ...]:
        return tuple(getattr(self.server, "sockets", ()) or ())

    @property
    def all_connections(self) -> Iterator[WsConnection]:
        """Every socket of the port, open or not yet (a snapshot)."""
        return iter(list(self.endpoint.connections))

    @property
    def handler_tasks(self) -> set[asyncio.Task[None]]:
        return {c.handler_task for c in self.endpoint.connections if c.handler_task is not None}

    def close(self, close_connections: bool = True, code: int = 1001, reason: str = "") -> None:
        """Stop accepting; with ``close_connections``, close every open connection with
        ``code`` (in the background: :meth:`wait_closed` waits for them) and abort the
        ones still in their handshake."""
        self.server.close()
        if not close_connections:
            return
        loop = asyncio.get_running_loop()
        for conn in list(self.endpoint.connections):
            if conn.request is None:
                conn.transport.abort()
            else:
                task = loop.create_task(conn.close(code, reason))
                _closing.add(task)
                task.add_done_callback(_closing.discard)

    async def wait_closed(self) -> None:
        """Until every connection of the port is gone."""
        await self.endpoint.wait_idle()


_closing: set[asyncio.Task[None]] = set()  # strong references to background closes


async def listen(endpoint: Endpoint[WsConnection], **options: Any) -> WsServer:
    """``loop.create_server`` with ``options`` (host, port, backlog, reuse_address,
    reuse_port, sock...) for connections of ``endpoint``."""
    loop = endpoint.loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: WsConnection(endpoint), **options)
    return WsServer(server, endpoint)
