"""Composition root: build the engine, verifier and node from settings; serve the
WebSocket port and the HTTP server API; drain on SIGTERM.

Shutdown (SIGTERM or SIGINT): stop accepting connections, close every client with 3001
(the SDKs reconnect, to another node behind a load balancer), wait at most
``REALTIME_SHUTDOWN_TIMEOUT`` seconds for them to go, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import codes, gcpolicy
from .auth.keys import load_keys
from .auth.revocation import MemoryRevocationStore, RevocationStore
from .auth.tokens import TokenVerifier
from .channels.engine import Engine
from .channels.memory import MemoryEngine
from .config import Settings
from .errors import ConfigError
from .limits import raise_open_file_limit
from .listen import effective_backlog
from .node import Node
from .server import WEBSOCKET_PATH, start_websocket_server
from .wsserver import WsServer

if TYPE_CHECKING:
    from .auth.jwks_fetch import JwksRefresher
    from .demo import Demo

__all__ = ["Running", "build_node", "build_verifier", "run", "running"]

logger = logging.getLogger("realtime_server")


def build_verifier(settings: Settings) -> TokenVerifier:
    """The token verifier; with ``REALTIME_JWT_JWKS_URL``, its key source is a
    :class:`JwksRefresher` (not started: no I/O here)."""
    keys = load_keys(
        settings.jwt_secret,
        settings.jwt_public_key,
        settings.jwt_algorithms,
        settings.jwt_jwks_url,
    )
    source = None
    if keys.jwks_url is not None:
        from .auth.jwks_fetch import JwksRefresher

        source = JwksRefresher.from_settings(settings, keys.jwks_algorithms)
    return TokenVerifier(
        keys,
        source=source,
        audience=settings.jwt_audience,
        issuer=settings.jwt_issuer,
        leeway=settings.jwt_leeway,
        max_lifetime=settings.jwt_max_lifetime,
        max_length=settings.jwt_max_length,
    )


def build_engine(settings: Settings) -> tuple[Engine, RevocationStore]:
    """The Redis engine when ``REALTIME_REDIS_URL`` is set, else the embedded one."""
    if settings.redis_url:
        from .auth.redis_revocation import RedisRevocationStore
        from .channels.redis_engine import RedisEngine

        engine = RedisEngine(
            settings.redis_url,
            settings.redis_prefix,
            settings.redis_timeout,
            settings.redis_shards,
        )
        return engine, RedisRevocationStore(engine.commands, settings.jwt_max_lifetime)
    return MemoryEngine(), embedded_revocations(settings)


def embedded_revocations(settings: Settings) -> MemoryRevocationStore:
    """The embedded engine's revocations, with those ``REALTIME_REVOCATIONS_PATH``
    kept from earlier runs. Raises ConfigError when that file cannot be used."""
    path = settings.revocations_path
    if not path:
        return MemoryRevocationStore(settings.jwt_max_lifetime)
    from .auth.revocation_file import JsonLinesRevocationFile

    store = MemoryRevocationStore(settings.jwt_max_lifetime, file=JsonLinesRevocationFile(path))
    try:
        kept = store.load()
    except OSError as exc:
        raise ConfigError(
            f"REALTIME_REVOCATIONS_PATH: cannot keep revocations in {path}: {exc.strerror or exc}"
        ) from None
    if kept:
        logger.info("%d revocations kept from earlier runs (%s)", kept, path)
    return store


def build_node(settings: Settings) -> Node:
    verifier = build_verifier(settings)
    engine, revocations = build_engine(settings)
    from .events.factory import build_recorder

    events = build_recorder(settings)
    proxy = None
    if settings.subscribe_proxy_url:
        from .proxy import SubscribeProxy

        proxy = SubscribeProxy.from_settings(settings)
    node = Node(settings, engine, revocations, verifier, events=events, subscribe_proxy=proxy)
    events.bind_metrics(node.metrics)
    refresher = _refresher(node)
    if refresher is not None:
        refresher.bind(node.health, node.metrics)
    if proxy is not None:
        proxy.bind(node.metrics)
    return node


def _refresher(node: Node) -> JwksRefresher | None:
    """The verifier's key-set refresher, if a key set is configured (aiohttp is only
    imported then)."""
    if node.verifier.source is None:
        return None
    from .auth.jwks_fetch import JwksRefresher

    source = node.verifier.source
    return source if isinstance(source, JwksRefresher) else None


async def start_identity(node: Node) -> None:
    """Start the key-set refresher (its first fetch is awaited, bounded by
    ``REALTIME_JWT_JWKS_TIMEOUT``) and the subscribe proxy's session, when configured."""
    refresher = _refresher(node)
    if refresher is not None:
        await refresher.start()
    if node.subscribe_proxy is not None:
        await node.subscribe_proxy.start()


async def close_identity(node: Node) -> None:
    refresher = _refresher(node)
    if refresher is not None:
        await refresher.close()
    if node.subscribe_proxy is not None:
        await node.subscribe_proxy.close()


@dataclass
class Running:
    """A started server: its node, WebSocket server and (optional) API runner."""

    node: Node
    ws: WsServer
    api: object | None

    @property
    def port(self) -> int:
        return int(self.ws.sockets[0].getsockname()[1])

    @property
    def api_port(self) -> int | None:
        if self.api is None:
            return None
        from .api import bound_port

        return bound_port(self.api)

    async def stop(self, grace: float) -> None:
        """Drain: stop accepting, close clients with 3001, wait for them (bounded)."""
        node = self.node
        node.shutdown_clients(codes.CLOSE_SHUTDOWN)
        self.ws.close(
            close_connections=True,
            code=codes.CLOSE_SHUTDOWN.code,
            reason=codes.CLOSE_SHUTDOWN.reason,
        )
        try:
            await asyncio.wait_for(self.ws.wait_closed(), grace)
        except TimeoutError:
            logger.warning("clients still connected after %.1fs; exiting anyway", grace)
        if self.api is not None:
            from .api import stop_api

            await stop_api(self.api)
        await node.close()
        await close_identity(node)


@contextlib.asynccontextmanager
async def running(
    settings: Settings, reuse_port: bool = False, demo: Demo | None = None
) -> AsyncIterator[Running]:
    """Start a whole server (for ``serve`` and for tests), stop it on exit. ``demo``
    (``serve --demo``) adds the demo page and runs its simulation while serving."""
    node = build_node(settings)
    await node.start()
    try:
        await start_identity(node)
    except BaseException:
        await node.close()
        await close_identity(node)
        raise
    ws = await start_websocket_server(node, demo=demo, reuse_port=reuse_port)
    api = None
    if settings.api_key:
        from .api import start_api

        api = await start_api(node.ops, settings, reuse_port=reuse_port)
    server = Running(node, ws, api)
    outbox = None
    try:
        if settings.outbox_url:  # consume the outbox (runs rows on this node)
            from .outbox import attach

            outbox = attach(node, settings)
            await outbox.start()
        if demo is not None:
            await demo.start(node, server.port)
        yield server
    finally:
        if demo is not None:
            await demo.stop()
        if outbox is not None:  # before the node closes: rows run on it
            await outbox.close()
        await server.stop(settings.shutdown_timeout)


async def run(settings: Settings, reuse_port: bool = False, demo: Demo | None = None) -> int:
    """Serve until SIGTERM/SIGINT; returns the process exit code. ``reuse_port``: share
    the ports with sibling worker processes (SO_REUSEPORT)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    raise_open_file_limit()  # logged; the connection caps derive from it (limits.py)
    watchdog = None
    if reuse_port:  # a worker: stop if the supervising parent dies without telling us
        watchdog = loop.create_task(_watch_parent(os.getppid(), stop))
    async with running(settings, reuse_port=reuse_port, demo=demo) as server:
        gcpolicy.tune()
        gcpolicy.time_pauses()
        gcpolicy.freeze_startup()
        host = settings.host if ":" not in settings.host else f"[{settings.host}]"
        logger.info(
            "realtime-server %s listening on ws://%s:%d%s (engine %s, node %s)",
            server.node.version,
            host,
            server.port,
            WEBSOCKET_PATH,
            server.node.engine.name,
            server.node.name,
        )
        _log_backlog(settings.backlog)
        if server.api is not None:
            logger.info("HTTP server API on http://%s:%d/api", settings.api_host, server.api_port)
        else:
            logger.info("HTTP server API off (set REALTIME_API_KEY to enable it)")
        await stop.wait()
        logger.info("shutting down: closing %d clients with 3001", len(server.node.registry))
        gcpolicy.stop_timing()
    if watchdog is not None:
        watchdog.cancel()
    logger.info("stopped")
    return 0


def _log_backlog(requested: int) -> None:
    """Say when the kernel caps the listen backlog (loadtest stream: issue 16)."""
    effective = effective_backlog(requested)
    if effective < requested:
        logger.warning(
            "listen backlog %d capped at %d by net.core.somaxconn: a reconnect storm may "
            "drop SYNs (raise it: sysctl -w net.core.somaxconn=%d)",
            requested,
            effective,
            requested,
        )


async def _watch_parent(parent: int, stop: asyncio.Event) -> None:
    while os.getppid() == parent:  # noqa: ASYNC110 - no event tells us the parent died
        await asyncio.sleep(1.0)
    logger.warning("supervisor process %d is gone; shutting down", parent)
    stop.set()
