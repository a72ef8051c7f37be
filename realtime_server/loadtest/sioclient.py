"""The generator's Socket.IO mode: the same simulated users and counting, over Socket.IO
v5 on Engine.IO v4, WebSocket transport only (the benchmarks' socket.io peers).

A connection upgrades at ``/socket.io/?EIO=4&transport=websocket`` (the generator's
path), then, one Engine.IO packet per WebSocket text frame:

- the server opens with ``0{"sid": ..., "pingInterval": ...}``; the client connects to
  the default namespace with its token as the auth payload: ``40{"token": "<jwt>"}``;
- the server accepts with ``40{"sid": ...}`` (the connection is open) or refuses with
  ``44{"message": ...}`` (a failure, not retried: ``socket.io connect error: ...``);
- publications arrive as events ``42["pub", {"channel": ..., "data": {...}, "offset":
  N}]``: the same data as the Centrifugo protocol's ``pub`` (sequence number ``s``, send
  time ``t``), counted the same way;
- Engine.IO pings ``2`` are answered ``3``; a namespace disconnect ``41`` closes the
  connection (counted as a close with code 1000).

No long-polling, no binary packets, no acknowledgements: the peers send none of them.
Client-side subscriptions (the churn scenario's) do not exist in this mode.
"""

from __future__ import annotations

from typing import Final

import orjson

from .clients import Conn
from .wsclient import CLOSED, abort_with_reset, client_frame

__all__ = ["SOCKETIO_PATH", "SocketIOConn"]

SOCKETIO_PATH: Final = "/socket.io/?EIO=4&transport=websocket"
"""Where a Socket.IO server takes WebSocket-only Engine.IO v4 connections."""

_PONG: Final = client_frame(b"3")


class SocketIOConn(Conn):
    """One connection of a user, speaking Socket.IO (see the module docstring)."""

    __slots__ = ()

    def on_upgraded(self) -> None:
        """Nothing yet: the client speaks after the server's open packet."""

    def on_text(self, payload: bytes, now_ns: int) -> None:
        if payload.startswith(b"42"):
            self._event(payload, now_ns)
        elif payload == b"2":
            self.transport_write(_PONG)
        elif payload.startswith(b"40"):
            if self.done.done():
                return  # a second connect ack: nothing to do
            self.opened(now_ns)
        elif payload.startswith(b"0"):
            self.send_text(b"40" + orjson.dumps({"token": self.user.token}))
        elif payload.startswith(b"44"):
            self.fail(f"socket.io connect error: {_message(payload[2:])}"[:80])
        elif payload.startswith(b"41"):
            self._disconnected()
        # 1 (close: the WebSocket close frame follows), 3, 6 (noop): nothing to do

    def _event(self, payload: bytes, now: int) -> None:
        try:
            event = orjson.loads(payload[2:])
        except orjson.JSONDecodeError:
            self.fail("malformed socket.io event from server")
            return
        if type(event) is list and len(event) == 2 and event[0] == "pub":
            body = event[1]
            if type(body) is dict:
                self.owner.pub(self.user, str(body.get("channel", "")), body, now, True)
                return
        self.owner.c.foreign += 1

    def _disconnected(self) -> None:
        if not self.done.done():
            self.fail("socket.io disconnect before connect")
            return
        self.state = CLOSED
        self.owner.closed(self, 1000)
        abort_with_reset(self.transport)


def _message(body: bytes) -> str:
    """The ``message`` of a connect error's body, else the body itself."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body.decode("utf-8", "replace")
    message = parsed.get("message") if isinstance(parsed, dict) else None
    return message if isinstance(message, str) else body.decode("utf-8", "replace")
