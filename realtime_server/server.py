"""WebSocket wiring: the HTTP routes of the public port and the per-connection handler.

Routes: ``/connection/websocket`` (WebSocket; a plain HTTP request there gets 426),
``/healthz``, ``/readyz``, ``/metrics``; anything else 404. JSON only: a client offering
only other subprotocols (``centrifuge-protobuf``) is refused at the handshake; one
offering ``centrifuge-json`` gets it selected; none offered is the SDK default.
"""

from __future__ import annotations

import functools
import http
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, NegotiationError
from websockets.http11 import Request, Response
from websockets.server import ServerProtocol
from websockets.typing import Origin, Subprotocol

from . import codes
from .admission import Admission, ConnectionGate
from .errors import ProtocolViolation
from .limits import connection_limits, listen_backlog, open_file_limit, reserve
from .node import Node
from .session import Session, SessionState
from .wsconn import WsConnection
from .wsendpoint import Endpoint
from .wsserver import WsServer, listen

if TYPE_CHECKING:
    from .demo import Demo

__all__ = ["WEBSOCKET_PATH", "start_websocket_server"]

logger = logging.getLogger("realtime_server.server")

WEBSOCKET_PATH = "/connection/websocket"
_JSON_SUBPROTOCOL = Subprotocol("centrifuge-json")
# Violations before any connect command was handled (others are logged by the command).
_PRE_CONNECT = frozenset({codes.CLOSE_BAD_REQUEST.code, codes.CLOSE_STALE.code})
_WEBSOCKETS_LOGGER = logging.getLogger("websockets.server")
_GET_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})


def _response(status: http.HTTPStatus, body: bytes, content_type: str) -> Response:
    headers = Headers(
        [
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
            ("Connection", "close"),
        ]
    )
    return Response(status.value, status.phrase, headers, body)


class JsonProtocol(ServerProtocol):
    """websockets' server protocol, JSON only: no subprotocol offered, or
    ``centrifuge-json`` among those offered (selected); anything else is refused (400)."""

    def select_subprotocol(self, subprotocols: Sequence[Subprotocol]) -> Subprotocol | None:
        if not subprotocols:
            return None
        if _JSON_SUBPROTOCOL in subprotocols:
            return _JSON_SUBPROTOCOL
        raise NegotiationError("only JSON (no subprotocol, or centrifuge-json) is supported")


class _Routes:
    def __init__(
        self, node: Node, demo: Demo | None = None, gate: ConnectionGate | None = None
    ) -> None:
        self.node = node
        self.demo = demo  # serve --demo: the page at / and its /demo/... routes
        self.gate = gate

    def __call__(self, conn: WsConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if path == WEBSOCKET_PATH:
            upgrade = request.headers.get("Upgrade", "")
            if upgrade.lower() != "websocket":
                return _response(
                    http.HTTPStatus.UPGRADE_REQUIRED,
                    b"WebSocket upgrade required\n",
                    "text/plain; charset=utf-8",
                )
            if self.admits(conn):
                return None
            if self.node.draining:
                return _response(
                    http.HTTPStatus.SERVICE_UNAVAILABLE, b"draining\n", "text/plain; charset=utf-8"
                )
            if self.gate is not None:
                self.gate.refuse()  # every slot authenticated (admission.py)
            return _response(
                http.HTTPStatus.SERVICE_UNAVAILABLE,
                b"connection limit reached\n",
                "text/plain; charset=utf-8",
            )
        if path == "/healthz":
            return _response(http.HTTPStatus.OK, b"ok\n", "text/plain; charset=utf-8")
        if path == "/readyz":
            readiness = self.node.readiness()
            ok = readiness.ready
            status = http.HTTPStatus.OK if ok else http.HTTPStatus.SERVICE_UNAVAILABLE
            return _response(status, readiness.to_json(), "application/json")
        if path == "/metrics":
            return _response(
                http.HTTPStatus.OK, self.node.metrics.render(), "text/plain; version=0.0.4"
            )
        if self.demo is not None and (path == "/" or path.startswith("/demo/")):
            return self.demo.respond(request)
        return _response(http.HTTPStatus.NOT_FOUND, b"not found\n", "text/plain; charset=utf-8")

    def admits(self, conn: WsConnection) -> bool:
        """Whether a WebSocket upgrade on the WebSocket path goes through (the fast
        handshake asks; else :meth:`__call__` answers it with a 503)."""
        return not self.node.draining and conn.admission is not Admission.REFUSED

    def other_method(self, conn: WsConnection, method: str, target: str) -> bytes:
        """The response to a request websockets cannot parse (only GET is): HEAD gets
        the GET response without its body (``curl -I``, health checkers), any other
        method 426 on the WebSocket path, 405 on the other routes, else 404."""
        path = target.split("?", 1)[0]
        if method == "HEAD":
            response = self(conn, Request(target, Headers()))
            assert response is not None  # no Upgrade header: never a handshake
            return Response(
                response.status_code, response.reason_phrase, response.headers, b""
            ).serialize()
        if path == WEBSOCKET_PATH:
            response = _response(
                http.HTTPStatus.UPGRADE_REQUIRED,
                b"WebSocket upgrade required\n",
                "text/plain; charset=utf-8",
            )
        elif path in _GET_ROUTES or (
            self.demo is not None and (path == "/" or path.startswith("/demo/"))
        ):
            response = _response(
                http.HTTPStatus.METHOD_NOT_ALLOWED,
                b"method not allowed\n",
                "text/plain; charset=utf-8",
            )
            response.headers["Allow"] = "GET, HEAD"
        else:
            response = _response(
                http.HTTPStatus.NOT_FOUND, b"not found\n", "text/plain; charset=utf-8"
            )
        return response.serialize()


def _stale(conn: WsConnection) -> None:
    """No successful connect within the connect timeout: close with 3502."""
    session: Session | None = conn.session
    if session is None:
        conn.transport.abort()
    elif session.state is SessionState.CONNECTING:
        session.reject(codes.CLOSE_STALE.code, codes.CLOSE_STALE.reason)
        session.close(codes.CLOSE_STALE)


def _flooded(conn: WsConnection) -> None:
    """The client sent frames (pings) whose automatic replies it does not read."""
    session: Session | None = conn.session
    if session is None or session.state is SessionState.CLOSED:
        conn.transport.abort()
        return
    session.close_slow()


def make_handler(node: Node) -> Any:
    async def handler(conn: WsConnection) -> None:
        session = Session(node, conn)
        conn.session = session  # cleared when the connection is lost
        try:
            # The connect deadline is the connection's own timer (wsconn.py:
            # ``on_stale``). ``next_message()`` and a bare future rather than ``async
            # for`` or ``recv()``, in this coroutine rather than one more: nothing but
            # the task, this coroutine and the future parked per idle connection; and
            # the last frame (the connect command, its token) not held while idle.
            waiting = True
            while True:
                message = conn.next_message()  # ConnectionClosed once it is gone
                if message is None:
                    await conn.readable()
                    continue
                await session.feed(message)
                del message
                if waiting and session.state is SessionState.CONNECTED:
                    waiting = False
                    conn.authenticated()  # no deadline, out of the unauthenticated cap
        except ProtocolViolation as exc:
            if session.state is SessionState.CONNECTING and exc.close.code in _PRE_CONNECT:
                session.reject(exc.close.code, exc.close.reason)
            session.close(exc.close)
        except ConnectionClosed:
            pass
        finally:
            await node.session_ended(session)
            code = session.close_code
            if code is not None:
                # Close here rather than let the server close with 1000 first.
                session.flush()
                await conn.close(code.code, code.reason)

    return handler


def _gate_metrics(node: Node, gate: ConnectionGate) -> None:
    metrics = node.metrics
    metrics.gauge(
        "port_sockets",
        "Sockets on the WebSocket port counted against REALTIME_MAX_CONNECTIONS.",
        lambda: gate.sockets,
    )
    metrics.gauge(
        "port_sockets_unauthenticated",
        "Of those, sockets without a successful connect (REALTIME_MAX_UNAUTHENTICATED).",
        lambda: gate.unauthenticated,
    )
    metrics.gauge(
        "max_connections", "The cap on WebSocket-port sockets.", lambda: gate.limits.max_connections
    )
    metrics.counter_by(
        "port_refusals",
        "Sockets refused (503) or dropped at the connection caps, by reason.",
        "reason",
        lambda: gate.refusals,
    )


async def start_websocket_server(
    node: Node, demo: Demo | None = None, reuse_port: bool = False, **kwargs: Any
) -> WsServer:
    """Listen on the configured host and port (``port=0`` in kwargs picks a free one);
    ``demo`` adds the demo page's routes (``serve --demo``)."""
    settings = node.settings
    nofile = open_file_limit().soft
    backlog = listen_backlog(settings.backlog, nofile)
    if backlog < settings.backlog:
        logger.warning(
            "listen backlog %d instead of REALTIME_BACKLOG %d: the open-file limit %d keeps "
            "a backlog's worth of descriptors in reserve (raise ulimit -n)",
            backlog,
            settings.backlog,
            nofile,
        )
    limits = connection_limits(
        nofile, settings.max_connections, settings.max_unauthenticated, backlog
    )
    gate = ConnectionGate(limits)
    _gate_metrics(node, gate)
    logger.info(
        "connection caps: %d sockets, %d of them unauthenticated (open-file limit %d)",
        limits.max_connections,
        limits.max_unauthenticated,
        nofile,
    )
    if limits.max_connections > nofile - reserve(backlog):
        logger.warning(
            "REALTIME_MAX_CONNECTIONS %d leaves fewer than %d of the %d descriptors for the "
            "API, Redis, Postgres and health checks",
            limits.max_connections,
            reserve(backlog),
            nofile,
        )
    routes = _Routes(node, demo, gate)
    origins: list[Origin | None] | None = None
    allowed = settings.origins()
    if allowed is not None:
        origins = [Origin(o) for o in allowed]
        origins.append(None)  # non-browser SDKs send no Origin
    proxy = node.subscribe_proxy  # the handshake headers it forwards (None: keep none)
    endpoint = Endpoint(
        make_protocol=functools.partial(
            JsonProtocol,
            origins=origins,
            logger=_WEBSOCKETS_LOGGER,  # not looked up (under logging's lock) per connection
        ),
        routes=routes,
        handler=make_handler(node),
        open_timeout=settings.connect_timeout,
        write_cap=settings.outbox_bytes,
        max_size=settings.max_message_size,
        on_flood=_flooded,
        other_method=routes.other_method,
        gate=gate,
        keep_headers=proxy.header_names if proxy is not None else None,
        ws_path=WEBSOCKET_PATH,
        origins=origins,
        subprotocol=_JSON_SUBPROTOCOL,
        admits=routes.admits,
        on_stale=_stale,
    )
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "reuse_address": True,
        "reuse_port": reuse_port or None,
        # Room for a reconnect storm's SYNs (asyncio's default is 100), within the
        # descriptors kept in reserve for it (limits.listen_backlog).
        "backlog": backlog,
    }
    options.update(kwargs)
    return await listen(endpoint, **options)
