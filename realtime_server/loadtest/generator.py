"""Load generator processes: many protocol clients in one process, counting what arrives.

Each generator is a ``multiprocessing`` child (spawned) running uvloop. It gets its share
of users (:class:`~.messages.Setup`), mints their connection tokens before anything is
measured, opens their connections (``connect`` with the token; the token's ``channels``
claim subscribes the documents server-side, and the server adds ``user:<sub>``), answers
the server's pings, and counts every publication it receives (:class:`~.counters.Counters`).
The protocol is Centrifugo's JSON protocol, or Socket.IO for the benchmarks' socket.io
peers (``GeneratorConfig.protocol``, :mod:`.sioclient`).

Counting: every publication's data carries ``s``, its sequence number in its channel
(1, 2, 3... per channel, assigned by the publisher), and ``t``, the publisher's
``time.time_ns()`` just before sending. Per user and channel the generator keeps the
next sequence number it expects: a higher one means the ones in between were lost
(``gaps``), a lower one is a duplicate. At the end the runner sends how many
publications each channel got; what a user that was subscribed from the start has not
received by then is lost too (``tail``). Publish-to-receive latency is ``now - t`` per
live delivery (same machine, same clock), in a :class:`~.stats.Histogram`.

After a disconnect (close code not terminal) a client reconnects after a random delay
and asks to recover each channel it has a stream position for; recovered publications
are counted apart from live ones. Orders and replies: :mod:`.messages`.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections.abc import Coroutine
from multiprocessing.connection import Connection
from typing import Any

import jwt

from .. import gcpolicy
from .clients import Conn, User, create_connection, is_terminal, os_reason, retryable
from .counters import Counters, FinalCounts
from .messages import (
    AskStats,
    Bye,
    ChurnStopped,
    Drop,
    Dropped,
    Exit,
    Final,
    GeneratorConfig,
    Open,
    Opened,
    Ready,
    SetReconnect,
    Setup,
    StartChurn,
    Stats,
    StopChurn,
)
from .pipes import child_setup, forward_orders, run_loop
from .procfs import raise_nofile
from .sioclient import SocketIOConn
from .wsclient import CLOSED, OPEN, abort_with_reset, upgrade_request

__all__ = ["Generator", "generator_main"]


class Generator:
    """One generator process."""

    def __init__(self, ctrl: Connection) -> None:
        self.ctrl = ctrl
        self.c = Counters()
        self.users: list[User] = []
        self.cfg = GeneratorConfig(index=0, host="", port=0, path="", secret="")
        self._signing_key: Any = None  # the secret, or a parsed private key (setup)
        self.reconnect = True
        self.discard = 0
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._churn: asyncio.Task[None] | None = None
        self._churn_users: set[User] = set()
        self._stopping = False
        self._rng = random.Random()
        self._next_source = 0

    # --- tokens and users ---------------------------------------------------------------

    def _mint(self, claims: dict[str, Any]) -> str:
        cfg = self.cfg
        now = int(time.time())
        claims.update({"iat": now, "exp": now + cfg.token_ttl, "jti": uuid.uuid4().hex})
        if cfg.audience:
            claims["aud"] = cfg.audience
        if cfg.issuer:
            claims["iss"] = cfg.issuer
        return jwt.encode(claims, self._signing_key, algorithm=cfg.algorithm)

    def _source(self) -> str | None:
        sources = self.cfg.sources
        if not sources:
            return None
        source = sources[self._next_source % len(sources)]
        self._next_source += 1
        return source

    def setup(self, order: Setup) -> None:
        self.cfg = cfg = order.config
        self._signing_key = cfg.secret
        if not cfg.algorithm.startswith("HS"):
            # A PEM private key (--jwt-algorithm): parsed once, not by PyJWT on every
            # token (an RSA key's load-time check took ~30 ms; the churn loop fell behind).
            from cryptography.hazmat.primitives.serialization import load_pem_private_key

            self._signing_key = load_pem_private_key(cfg.secret.encode(), None)
        self.reconnect = cfg.reconnect
        self.discard = cfg.discard
        for spec in order.users:
            claims: dict[str, Any] = {"sub": spec.name}
            if spec.channels:
                claims["channels"] = list(spec.channels)
            channels = (f"user:{spec.name}", *spec.channels) if cfg.user_channel else spec.channels
            self.users.append(User(spec.name, channels, self._mint(claims), True, self._source()))

    # --- counting (hot path) --------------------------------------------------------------

    def pub(self, u: User, channel: str, pub: dict[str, Any], now: int, live: bool) -> None:
        c = self.c
        try:
            data = pub["data"]
            seq = data["s"]
        except (KeyError, TypeError):  # no data, data no object or without "s"
            c.foreign += 1
            return
        if self.discard and live and u.steady:  # test hook: lose deliveries on purpose
            self.discard -= 1
            c.discarded += 1
            return
        cur = u.cursors.get(channel)
        if cur is None:  # a churn user's first publication on the channel
            cur = u.cursor(channel)
        nxt = cur.nxt
        if seq != nxt:
            if seq < nxt:
                c.duplicates += 1
                return
            if nxt:
                c.gaps += seq - nxt
        cur.nxt = seq + 1
        offset = pub.get("offset")
        if offset:
            cur.offset = offset
        if live:
            c.received += 1
            c.last_recv_ns = now
            c.latency.record((now - data["t"]) // 1000)
            if not u.steady:
                c.churn_received += 1
        else:
            c.recovered_pubs += 1

    def closed(self, conn: Conn, code: int) -> None:
        """An open connection closed (``code``: close frame code, or 1006)."""
        c, u = self.c, conn.user
        c.open_now -= 1
        if u.conn is conn:
            u.conn = None
        if not u.steady:
            c.churn_closed += 1
            self._churn_users.discard(u)
            return
        c.fail(c.closes, str(code))
        if self.reconnect and not self._stopping and not is_terminal(code):
            self._later(self._rng.uniform(0.0, self.cfg.reconnect_delay), u)

    def subscribed(self, conn: Conn, reply: dict[str, Any], now: int) -> None:
        c = self.c
        if isinstance(reply.get("subscribe"), dict):
            c.subscribe_latency.record((now - conn.sub_sent_ns) // 1000)
            res = reply["subscribe"]
            if "epoch" in res and conn.user.sub_channel:
                conn.user.position(conn.user.sub_channel, int(res.get("offset") or 0), res["epoch"])
        else:
            code = (reply.get("error") or {}).get("code", "?")
            c.fail(c.churn_failed, f"subscribe error {code}")

    # --- connections -------------------------------------------------------------------

    async def connect(self, u: User) -> str | None:
        """Open one connection for ``u``; None when connected, else the failure reason."""
        cfg = self.cfg
        loop = asyncio.get_running_loop()
        request, accept = upgrade_request(cfg.host, cfg.port, cfg.path)
        done: asyncio.Future[str | None] = loop.create_future()
        kind = SocketIOConn if cfg.protocol == "socketio" else Conn
        self.c.attempts += 1
        try:
            _, conn = await asyncio.wait_for(
                create_connection(
                    loop, lambda: kind(self, u, request, accept, done), cfg.host, cfg.port, u.source
                ),
                cfg.open_timeout,
            )
        except TimeoutError:
            return "timeout (TCP)"
        except OSError as exc:
            return os_reason(exc)
        try:
            reason = await asyncio.wait_for(done, cfg.open_timeout)
        except TimeoutError:
            reason = "timeout (connect reply)"
        if reason is not None:
            conn.close_now()
            return reason
        if self._stopping:
            conn.close_now()
            return "stopping"
        u.conn = conn
        u.connected += 1
        self.c.open_now += 1
        if u.source is not None:
            self.c.fail(self.c.by_source, u.source)
        return None

    async def open_steady(self, users: list[User], concurrency: int, rate: float) -> None:
        """Open ``users``' connections, ``concurrency`` at a time, at most ``rate`` per
        second; each is tried three times when the failure is transient."""
        c = self.c
        it = iter(users)
        loop = asyncio.get_running_loop()
        pace = [loop.time()]

        async def worker() -> None:
            for u in it:
                if self._stopping:
                    return
                if rate > 0:
                    slot = max(pace[0], loop.time())
                    pace[0] = slot + 1.0 / rate
                    delay = slot - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                if not c.first_open_ns:
                    c.first_open_ns = time.time_ns()
                reason: str | None = "not tried"
                for attempt in range(3):
                    reason = await self.connect(u)
                    if reason is None or not retryable(reason):
                        break
                    await asyncio.sleep(0.2 * (attempt + 1))
                if reason is None:
                    c.opened += 1
                    c.last_open_ns = time.time_ns()
                else:
                    c.fail(c.failed, reason)

        await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))

    def _later(self, delay: float, u: User) -> None:
        loop = asyncio.get_running_loop()
        loop.call_later(delay, self._spawn, self._reconnect(u))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reconnect(self, u: User) -> None:
        """Reconnect ``u`` with recovery; retry transient failures for a while."""
        c = self.c
        deadline = time.monotonic() + self.cfg.reconnect_window
        backoff = 0.2
        while not self._stopping and u.conn is None:
            reason = await self.connect(u)
            if reason is None:
                c.reconnects += 1
                c.last_reconnect_ns = time.time_ns()
                return
            if not retryable(reason) or time.monotonic() > deadline:
                c.fail(c.reconnect_failed, reason)
                return
            await asyncio.sleep(self._rng.uniform(backoff / 2, backoff))
            backoff = min(backoff * 2, 2.0)

    def drop(self) -> int:
        """Reset every open connection (a network failure); each reconnects later."""
        dropped = 0
        for u in self.users:
            conn = u.conn
            if conn is not None and conn.state == OPEN:
                conn.close_now()
                u.conn = None
                self.c.open_now -= 1
                dropped += 1
                self.c.fail(self.c.closes, "reset by loadtest")
                if self.reconnect:
                    self._later(self._rng.uniform(0.0, self.cfg.reconnect_delay), u)
        return dropped

    # --- churn ---------------------------------------------------------------------------

    async def _churn_loop(self, rate: float, lifetime: float, docs: tuple[str, ...]) -> None:
        loop = asyncio.get_running_loop()
        n = 0
        start = loop.time()
        while not self._stopping:
            n += 1
            delay = start + n / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            name = f"{self.cfg.prefix}churn-{self.cfg.index}-{n}"
            doc = docs[self._rng.randrange(len(docs))] if docs else None
            u = User(name, (f"user:{name}",), self._mint({"sub": name}), False, self._source())
            if doc is not None:
                u.sub_channel = doc
                u.sub_token = self._mint({"sub": name, "channel": doc})
            self._spawn(self._churn_one(u, lifetime))

    async def _churn_one(self, u: User, lifetime: float) -> None:
        c = self.c
        reason = await self.connect(u)
        if reason is not None:
            c.fail(c.churn_failed, reason)
            return
        c.churn_opened += 1
        self._churn_users.add(u)
        await asyncio.sleep(lifetime)
        conn = u.conn
        if conn is not None and conn.state != CLOSED:
            conn.send_close(1000)  # the server answers with its close frame; then reset
            await asyncio.sleep(2.0)
            if u.conn is conn and conn.state != CLOSED:
                conn.close_now()
                self.closed(conn, 1000)

    def stop_churn(self) -> None:
        if self._churn is not None:
            self._churn.cancel()
            self._churn = None

    # --- final counts ---------------------------------------------------------------------

    def final(self, published: dict[str, int]) -> FinalCounts:
        """Losses given how many publications each channel got."""
        tail = 0
        expected = 0
        for u in self.users:
            for ch in u.channels:
                count = published.get(ch, 0)
                expected += count
                got = u.cursors[ch].nxt - 1
                if count > got:
                    tail += count - got
        return FinalCounts(self.c, expected, tail)

    # --- control -------------------------------------------------------------------------

    def send(self, message: object) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.ctrl.send(message)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        forward_orders(self.ctrl, loop, self._queue)
        try:
            while True:
                order = await self._queue.get()
                if isinstance(order, Exit):
                    break
                self.handle(order)
        finally:
            self._stopping = True
            self.stop_churn()
            for u in [*self.users, *self._churn_users]:
                if u.conn is not None:
                    abort_with_reset(u.conn.transport)
            for task in list(self._tasks):
                task.cancel()
            await asyncio.sleep(0.1)
        self.send(Bye())

    def handle(self, order: object) -> None:
        if isinstance(order, AskStats):
            self.send(Stats(self.c))
        elif isinstance(order, Setup):
            self.setup(order)
            self.send(Ready(len(self.users)))
        elif isinstance(order, Open):
            users = self.users[order.first : order.first + order.count]

            async def go(o: Open = order) -> None:
                await self.open_steady(users, o.concurrency, o.rate)
                self.send(Opened(self.c))

            self._spawn(go())
        elif isinstance(order, SetReconnect):
            self.reconnect = order.on
        elif isinstance(order, Drop):
            self.send(Dropped(self.drop()))
        elif isinstance(order, StartChurn):
            if order.rate > 0:
                self._churn = asyncio.get_running_loop().create_task(
                    self._churn_loop(order.rate, order.lifetime, order.documents)
                )
        elif isinstance(order, StopChurn):
            self.stop_churn()
            self.send(ChurnStopped())
        elif isinstance(order, Final):
            self.reconnect = False
            self.send(self.final(order.published))


def generator_main(ctrl: Connection, cpus: list[int] | None = None) -> None:
    """Entry point of a generator process (``multiprocessing`` spawn target)."""
    child_setup(cpus)
    raise_nofile()
    gcpolicy.tune()  # thousands of long-lived client objects, as in the server
    run_loop(Generator(ctrl).run())
