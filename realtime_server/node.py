"""The node: one server process's components, wired together, and their lifecycle.

Who owns what:

- :mod:`session`: one connection (state machine, writes, command loop);
- :mod:`registry`: the connected sessions, by client, user and token;
- :mod:`subscriptions`: every subscription, broker reference counts to live;
- :mod:`hub`: the channel -> subscribers index and encode-once fan-out;
- :mod:`commands`: the client commands; :mod:`operations`: what the HTTP API, the
  commands and the demo do to channels, users and tokens;
- :mod:`control`: control messages, revocations, lost publications;
- :mod:`keepalive`, :mod:`expiry`: pings and token deadlines;
- :mod:`journal`: the event log's entry point; :mod:`health`: readiness.

The node builds them, starts and stops them, routes the broker's events
(:class:`BrokerEventHandler`) and is the :class:`SessionHost` of every session.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from . import __version__, codes, gcpolicy
from .auth.revocation import RevocationStore
from .auth.tokens import TokenVerifier
from .channels.engine import ControlMessage, Engine
from .cluster import NodeCounts, NodeDirectory
from .codes import CloseCode
from .commands import Commands
from .config import Settings
from .control import Control
from .errors import CommandError
from .events import EventRecorder, EventType
from .expiry import EXPIRY_TICK, ExpiryWheel
from .health import Health, Readiness
from .hub import Hub
from .journal import Journal
from .keepalive import Keepalive
from .lograte import RateLimitedLog
from .metrics import Metrics
from .model import ClientInfo, Publication
from .operations import Operations
from .protocol import Command, encode_join, encode_leave
from .records import Ended
from .registry import Registry
from .session import Session
from .subscriptions import Subscriptions
from .writer import Writer

if TYPE_CHECKING:
    from .proxy import SubscribeProxy

__all__ = ["Node"]

logger = logging.getLogger("realtime_server.node")


class Node:
    """One server process's view of clients and channels."""

    version = __version__

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        revocations: RevocationStore,
        verifier: TokenVerifier,
        events: EventRecorder | None = None,
        subscribe_proxy: SubscribeProxy | None = None,
    ) -> None:
        self._settings = settings
        self.name = settings.node()
        self.engine = engine
        self.broker = engine.broker
        self.revocations = revocations
        self.verifier = verifier
        self.subscribe_proxy = subscribe_proxy
        """The subscribe proxy's client (``REALTIME_SUBSCRIBE_PROXY_URL``), or None."""
        self.namespaces = settings.namespaces()
        self._metrics = Metrics(self.name)
        self._journal = Journal(self.name, events)
        self.events = self._journal.recorder
        self._expiry = ExpiryWheel(EXPIRY_TICK)  # token deadlines of sessions, subscriptions
        self._writer = Writer()
        self._unavailable_log = RateLimitedLog(
            logging.getLogger("realtime_server.session"), "client commands"
        )
        self._refusal_log = RateLimitedLog(
            logging.getLogger("realtime_server.session"), "connect refused:", level=logging.INFO
        )
        self.hub = Hub(self._metrics)
        self.registry = Registry(self._metrics)
        self.keepalive = Keepalive(settings.ping_interval, settings.pong_timeout)
        self.draining = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self.directory = NodeDirectory(  # every live node, for info (cluster.py)
            name=self.name,
            version=self.version,
            engine=engine.name,
            counts=lambda: NodeCounts(
                len(self.registry),
                self.registry.num_users,
                self.hub.num_channels,
                self.hub.num_subscriptions,
            ),
            publish=self.broker.publish_control,
            interval=settings.node_info_interval,
        )
        self.subscriptions = Subscriptions(
            engine, self.hub, self.registry, self._journal, settings.presence_ttl, self.spawn
        )
        self.ops = Operations(
            name=self.name,
            engine=engine,
            namespaces=self.namespaces,
            revocations=revocations,
            journal=self._journal,
            directory=self.directory,
            max_token_lifetime=settings.jwt_max_lifetime,
            idempotency_ttl=settings.idempotency_ttl,
        )
        self.control = Control(
            self.directory,
            self.registry,
            self.hub,
            self.subscriptions,
            revocations,
            self._journal,
            self._metrics,
            self.spawn,
        )
        self.commands = Commands(
            settings,
            verifier,
            revocations,
            self.registry,
            self.subscriptions,
            self.ops,
            self._journal,
            subscribe_proxy,
            ready=lambda: self.broker.ready,
        )
        self.broker.set_handler(self)
        revocations.set_listener(self.control.handle_revocation)
        self.health = Health()
        self.health.require("node", lambda: "draining" if self.draining else None)
        self.health.require("broker", lambda: None if self.broker.ready else "unreachable")
        self.health.watch("event_log", self.events.problem)
        self._metrics.gauge(
            "subscriptions",
            "Channel subscriptions of connected clients.",
            lambda: self.hub.num_subscriptions,
        )
        self._metrics.gauge(
            "channels", "Channels with local subscribers.", lambda: self.hub.num_channels
        )
        self._metrics.histogram(
            "gc_pause_seconds",
            "Garbage collections (each stops the event loop), by duration.",
            gcpolicy.PAUSES,
        )
        self._metrics.counter(
            "coalesced_frames",
            "Frames that carried what a client got in one loop iteration after its first "
            "message (bursts, several channels).",
            lambda: self._writer.frames,
        )
        self._metrics.counter(
            "coalesced_messages",
            "Messages sent in coalesced frames.",
            lambda: self._writer.messages,
        )

    # --- what sessions use (SessionHost) ---------------------------------------------

    @property
    def settings(self) -> Settings:
        return self._settings

    @property
    def metrics(self) -> Metrics:
        return self._metrics

    @property
    def journal(self) -> Journal:
        return self._journal

    @property
    def expiry(self) -> ExpiryWheel:
        return self._expiry

    @property
    def writer(self) -> Writer:
        return self._writer

    @property
    def unavailable_log(self) -> RateLimitedLog:
        return self._unavailable_log

    @property
    def refusal_log(self) -> RateLimitedLog:
        return self._refusal_log

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run ``coro`` in the background, keeping a reference and logging failures."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("background task failed", exc_info=task.exception())

    async def dispatch(self, session: Session, cmd: Command) -> None:
        await self.commands.dispatch(session, cmd)

    def session_opened(self, session: Session) -> None:
        self.registry.register(session)
        self.keepalive.add(session)

    def session_closed(self, session: Session) -> None:
        self.keepalive.remove(session)
        self.subscriptions.session_closed(session)
        self.registry.unregister(session)

    def end_subscription(self, session: Session, channel: str, why: Ended) -> None:
        self.subscriptions.end_later(session, channel, why)

    async def session_ended(self, session: Session) -> None:
        """After a connection ended: the disconnect is recorded (at the time it was
        decided), then its subscriptions are ended and settled."""
        session.lost()
        if session.connected_at:
            code = session.close_code
            self._journal.record(
                EventType.DISCONNECT,
                session,
                code=code.code if code is not None else session.conn.close_code,
                duration=round(session.closed_at - session.connected_at, 3),
                by="server" if code is not None else "client",
                at=session.closed_at,
            )
        await self.subscriptions.end_session(session)

    # --- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        await self.events.start()
        await self.broker.start()
        self.revocations.start()  # a shared list is read into memory (background)
        self.directory.start()  # announces this node to the others
        self.keepalive.start()
        self.spawn(self._refresh_presence())

    async def _refresh_presence(self) -> None:
        while True:
            await asyncio.sleep(self._settings.presence_ttl / 3)
            await self.subscriptions.refresh_presence()

    async def close(self) -> None:
        self._expiry.close()
        await self.keepalive.stop()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.directory.stop()  # tells the others this node leaves
        await self.broker.close()
        await self.engine.presence.close()
        await self.revocations.close()
        await self.events.close()

    def shutdown_clients(self, code: CloseCode = codes.CLOSE_SHUTDOWN) -> None:
        """Stop serving: every session is closed with ``code`` (3001 by default)."""
        self.draining = True
        for session in self.registry:
            session.close(code)

    def readiness(self) -> Readiness:
        """What keeps this node from serving clients, and what is degraded."""
        return self.health.readiness()

    # --- broker events (BrokerEventHandler) --------------------------------------------

    def handle_publication(self, channel: str, pub: Publication) -> None:
        self.hub.publish(channel, pub)

    def handle_join(self, channel: str, info: ClientInfo) -> None:
        if self._announces(channel):
            self.hub.push(channel, encode_join(channel, info))

    def handle_leave(self, channel: str, info: ClientInfo) -> None:
        if self._announces(channel):
            self.hub.push(channel, encode_leave(channel, info))

    def _announces(self, channel: str) -> bool:
        """Join/leave pushes only while the channel's local subscribers are within its
        namespace's bound (each costs a push to every one of them)."""
        try:
            options = self.namespaces.resolve(channel)[1]
        except CommandError:
            return False
        return options.announces(self.hub.count(channel))

    def handle_control(self, message: ControlMessage) -> None:
        self.control.handle_control(message)

    def handle_reconnect(self) -> None:
        """Revocations announced while the link was down were missed: re-check every
        live token against the store."""
        logger.info("broker link restored; re-checking %d connections", len(self.registry))
        self.revocations.reassert()  # Redis may be back from an older snapshot
        self.spawn(self.control.recheck_revocations())

    def handle_insufficient_state(self, channel: str) -> None:
        self.control.lost_publications(channel)
