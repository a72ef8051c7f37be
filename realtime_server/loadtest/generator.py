"""Load generator processes: many protocol clients in one process, counting what arrives.

Each generator is a ``multiprocessing`` child (spawned) running uvloop. It gets its share
of users from the runner, mints their connection tokens before anything is measured,
opens their connections (``connect`` with the token; the token's ``channels`` claim
subscribes the documents server-side, and the server adds ``user:<sub>``), answers the
server's pings, and counts every publication it receives.

Counting: every publication's data carries ``s``, its sequence number in its channel
(1, 2, 3... per channel, assigned by the publisher), and ``t``, the publisher's
``time.time_ns()`` just before sending. Per user and channel the generator keeps the
next sequence number it expects: a higher one means the ones in between were lost
(``gaps``), a lower one is a duplicate. At the end the runner sends how many
publications each channel got; what a user that was subscribed from the start has not
received by then is lost too (``tail``). Publish-to-receive latency is ``now - t`` per
live delivery (same machine, same clock), in a :class:`~.stats.Histogram`.

After a disconnect (close code not terminal) a client reconnects after a random delay
and asks to recover each channel it has a stream position for (``connect.subs`` with
``recover``, ``offset``, ``epoch``), as the SDKs do; recovered publications are counted
apart from live ones.

Orders over the pipe (tuples): ``setup``, ``open``, ``stats``, ``drop``, ``churn``,
``stop-churn``, ``final``, ``exit``; see :meth:`Generator.handle`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
import uuid
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, Final

import jwt
import orjson

from .. import gcpolicy
from .children import forward_orders
from .procfs import raise_nofile
from .stats import Histogram
from .wsclient import CLOSED, OPEN, FrameClient, abort_with_reset, client_frame, upgrade_request

__all__ = ["generator_main", "is_terminal"]

_PONG: Final = client_frame(b"{}")
_CHURN_FAIL_PREFIX: Final = "churn "


def is_terminal(code: int) -> bool:
    """Close codes after which the SDKs do not reconnect (3500-3999, 4500-4999)."""
    return 3500 <= code <= 3999 or 4500 <= code <= 4999


class Counters:
    """Everything one generator counts; sent to the runner as a dict."""

    def __init__(self) -> None:
        self.opened = 0
        self.attempts = 0
        self.failed: dict[str, int] = {}
        self.closes: dict[str, int] = {}
        self.reconnects = 0
        self.reconnect_failed: dict[str, int] = {}
        self.open_now = 0
        self.first_open_ns = 0
        self.last_open_ns = 0
        self.last_reconnect_ns = 0
        self.received = 0
        self.recovered_pubs = 0
        self.duplicates = 0
        self.gaps = 0
        self.foreign = 0
        self.joins = 0
        self.leaves = 0
        self.unsubscribe_pushes = 0
        self.missing_subs = 0
        self.recovered_ok = 0
        self.recovered_failed = 0
        self.discarded = 0
        self.last_recv_ns = 0
        self.latency = Histogram()
        self.connect_latency = Histogram()
        self.churn_opened = 0
        self.churn_failed: dict[str, int] = {}
        self.churn_closed = 0
        self.churn_received = 0
        self.subscribe_latency = Histogram()

    def fail(self, table: dict[str, int], reason: str) -> None:
        table[reason] = table.get(reason, 0) + 1

    def snapshot(self, full: bool = False) -> dict[str, Any]:
        out = {k: v for k, v in vars(self).items() if not isinstance(v, Histogram)}
        out["latency"] = self.latency.state()
        if full:
            out["connect_latency"] = self.connect_latency.state()
            out["subscribe_latency"] = self.subscribe_latency.state()
        return {k: (dict(v) if isinstance(v, dict) else v) for k, v in out.items()}


class User:
    """One simulated user: its token, channels and stream positions, across reconnects."""

    __slots__ = (
        "channels",
        "conn",
        "connected",
        "expected",
        "nxt",
        "pos",
        "steady",
        "sub_channel",
        "sub_token",
        "token",
        "user",
    )

    def __init__(self, user: str, channels: tuple[str, ...], token: str, steady: bool) -> None:
        self.user = user
        self.channels = channels  # server-side subscriptions expected at connect
        self.expected = frozenset(channels)
        self.token = token
        self.steady = steady
        # Next sequence number expected per channel; steady users were subscribed
        # before the first publication, so they expect 1 everywhere.
        self.nxt: dict[str, int] = dict.fromkeys(channels, 1) if steady else {}
        self.pos: dict[str, tuple[int, str]] = {}
        self.conn: Conn | None = None
        self.connected = 0
        self.sub_channel: str | None = None  # churn users: a client-side subscription
        self.sub_token: str | None = None


class Conn(FrameClient):
    """One connection of a :class:`User`."""

    __slots__ = ("done", "gen", "started_ns", "sub_sent_ns", "user")

    def __init__(
        self,
        gen: Generator,
        user: User,
        request: bytes,
        accept: bytes,
        done: asyncio.Future[str | None],
    ) -> None:
        super().__init__(request, accept)
        self.gen = gen
        self.user = user
        self.done = done  # result None once connected, else the failure reason
        self.started_ns = time.time_ns()
        self.sub_sent_ns = 0

    def on_upgraded(self) -> None:
        u = self.user
        params: dict[str, Any] = {"token": u.token, "name": "loadtest"}
        if u.pos:
            params["subs"] = {
                ch: {"recover": True, "offset": off, "epoch": ep} for ch, (off, ep) in u.pos.items()
            }
        self.send_text(orjson.dumps({"id": 1, "connect": params}))

    def on_fail(self, reason: str) -> None:
        if not self.done.done():
            self.done.set_result(reason)
        else:  # an open connection we gave up on (malformed traffic)
            self.gen.closed(self, 1002)

    def on_close(self, code: int) -> None:
        if not self.done.done():
            self.done.set_result(f"close {code}")
            return
        self.gen.closed(self, code)

    def on_text(self, payload: bytes, now_ns: int) -> None:
        if b"\n" in payload:
            for line in payload.split(b"\n"):
                if line and self.state != CLOSED:
                    self._message(line, now_ns)
        else:
            self._message(payload, now_ns)

    def _message(self, payload: bytes, now: int) -> None:
        if payload.startswith(b'{"push"'):
            push = orjson.loads(payload)["push"]
            pub = push.get("pub")
            if pub is not None:
                self.gen.pub(self.user, push.get("channel", ""), pub, now, True)
            elif "join" in push:
                self.gen.c.joins += 1
            elif "leave" in push:
                self.gen.c.leaves += 1
            elif "unsubscribe" in push:
                self.gen.c.unsubscribe_pushes += 1
            return
        if payload == b"{}":
            self.transport_write(_PONG)
            return
        try:
            reply = orjson.loads(payload)
        except orjson.JSONDecodeError:
            self.fail("malformed frame from server")
            return
        if not isinstance(reply, dict):
            return
        ident = reply.get("id")
        if ident == 1:
            if isinstance(reply.get("connect"), dict):
                self._connected(reply["connect"], now)
            else:
                code = (reply.get("error") or {}).get("code", "?")
                self.fail(f"error {code}")
        elif ident == 2:
            self.gen.subscribed(self, reply, now)

    def _connected(self, result: dict[str, Any], now: int) -> None:
        u, gen = self.user, self.gen
        subs = result.get("subs") or {}
        missing = [ch for ch in u.expected if ch not in subs]
        if missing:
            gen.c.missing_subs += len(missing)
        for ch, res in subs.items():
            if not isinstance(res, dict):
                continue
            if res.get("was_recovering"):
                if res.get("recovered"):
                    gen.c.recovered_ok += 1
                else:
                    gen.c.recovered_failed += 1
            if "epoch" in res:
                u.pos[ch] = (int(res.get("offset") or 0), str(res["epoch"]))
            for pub in res.get("publications") or ():
                gen.pub(u, ch, pub, now, False)
        self.state = OPEN
        gen.c.connect_latency.record((now - self.started_ns) // 1000)
        if not self.done.done():
            self.done.set_result(None)
        if u.sub_channel is not None:
            self.sub_sent_ns = time.time_ns()
            cmd = {"id": 2, "subscribe": {"channel": u.sub_channel, "token": u.sub_token}}
            self.send_text(orjson.dumps(cmd))


class Generator:
    """One generator process."""

    def __init__(self, ctrl: Connection) -> None:
        self.ctrl = ctrl
        self.c = Counters()
        self.users: list[User] = []
        self.cfg: dict[str, Any] = {}
        self._signing_key: Any = None  # the secret, or a parsed private key (setup)
        self.reconnect = True
        self.discard = 0
        self._queue: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._churn: asyncio.Task[None] | None = None
        self._churn_users: set[User] = set()
        self._stopping = False
        self._rng = random.Random()

    # --- tokens -------------------------------------------------------------------------

    def _mint(self, claims: dict[str, Any]) -> str:
        cfg = self.cfg
        now = int(time.time())
        claims.update({"iat": now, "exp": now + int(cfg["token_ttl"]), "jti": uuid.uuid4().hex})
        if cfg.get("audience"):
            claims["aud"] = cfg["audience"]
        if cfg.get("issuer"):
            claims["iss"] = cfg["issuer"]
        return jwt.encode(claims, self._signing_key, algorithm=cfg["algorithm"])

    def setup(self, cfg: dict[str, Any], users: list[tuple[str, tuple[str, ...]]]) -> None:
        self.cfg = cfg
        self._signing_key = cfg["secret"]
        if not str(cfg["algorithm"]).startswith("HS"):
            # A PEM private key (--jwt-algorithm): parsed once, not by PyJWT on every
            # token (an RSA key's load-time check took ~30 ms; the churn loop fell behind).
            from cryptography.hazmat.primitives.serialization import load_pem_private_key

            self._signing_key = load_pem_private_key(str(cfg["secret"]).encode(), None)
        self.reconnect = bool(cfg.get("reconnect", True))
        self.discard = int(cfg.get("discard", 0))
        for name, docs in users:
            claims: dict[str, Any] = {"sub": name}
            if docs:
                claims["channels"] = list(docs)
            channels = (f"user:{name}", *docs) if cfg.get("user_channel", True) else docs
            self.users.append(User(name, channels, self._mint(claims), True))

    # --- counting (hot path) --------------------------------------------------------------

    def pub(self, u: User, channel: str, pub: dict[str, Any], now: int, live: bool) -> None:
        c = self.c
        data = pub.get("data")
        if type(data) is not dict or "s" not in data:
            c.foreign += 1
            return
        if self.discard and live and u.steady:  # test hook: lose deliveries on purpose
            self.discard -= 1
            c.discarded += 1
            return
        seq = data["s"]
        nxt = u.nxt.get(channel)
        if nxt is None:  # a churn user's first publication on the channel
            nxt = seq
        if seq >= nxt:
            if seq > nxt:
                c.gaps += seq - nxt
            u.nxt[channel] = seq + 1
        else:
            c.duplicates += 1
            return
        offset = pub.get("offset")
        if offset:
            p = u.pos.get(channel)
            if p is not None:
                u.pos[channel] = (offset, p[1])
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
            self._later(self._rng.uniform(0.0, float(self.cfg["reconnect_delay"])), u)

    def subscribed(self, conn: Conn, reply: dict[str, Any], now: int) -> None:
        c = self.c
        if isinstance(reply.get("subscribe"), dict):
            c.subscribe_latency.record((now - conn.sub_sent_ns) // 1000)
            res = reply["subscribe"]
            if "epoch" in res and conn.user.sub_channel:
                conn.user.pos[conn.user.sub_channel] = (int(res.get("offset") or 0), res["epoch"])
        else:
            code = (reply.get("error") or {}).get("code", "?")
            c.fail(c.churn_failed, f"subscribe error {code}")

    # --- connections -------------------------------------------------------------------

    async def connect(self, u: User) -> str | None:
        """Open one connection for ``u``; None when connected, else the failure reason."""
        cfg = self.cfg
        loop = asyncio.get_running_loop()
        request, accept = upgrade_request(cfg["host"], cfg["port"], cfg["path"])
        done: asyncio.Future[str | None] = loop.create_future()
        self.c.attempts += 1
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(
                    lambda: Conn(self, u, request, accept, done), cfg["host"], cfg["port"]
                ),
                cfg["open_timeout"],
            )
        except TimeoutError:
            return "timeout (TCP)"
        except OSError as exc:
            return _os_reason(exc)
        try:
            reason = await asyncio.wait_for(done, cfg["open_timeout"])
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
        return None

    async def _open_steady(self, users: list[User], concurrency: int, rate: float) -> None:
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
                    if reason is None or not _retryable(reason):
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

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reconnect(self, u: User) -> None:
        """Reconnect ``u`` with recovery; retry transient failures for a while."""
        c = self.c
        deadline = time.monotonic() + float(self.cfg["reconnect_window"])
        backoff = 0.2
        while not self._stopping and u.conn is None:
            reason = await self.connect(u)
            if reason is None:
                c.reconnects += 1
                c.last_reconnect_ns = time.time_ns()
                return
            if not _retryable(reason) or time.monotonic() > deadline:
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
                    self._later(self._rng.uniform(0.0, float(self.cfg["reconnect_delay"])), u)
        return dropped

    # --- churn ---------------------------------------------------------------------------

    async def _churn_loop(self, rate: float, lifetime: float, docs: list[str]) -> None:
        loop = asyncio.get_running_loop()
        n = 0
        start = loop.time()
        index = self.cfg["index"]
        while not self._stopping:
            n += 1
            delay = start + n / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            name = f"{self.cfg['prefix']}churn-{index}-{n}"
            doc = docs[self._rng.randrange(len(docs))] if docs else None
            u = User(name, (f"user:{name}",), self._mint({"sub": name}), False)
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

    def final(self, published: dict[str, int]) -> dict[str, Any]:
        """Losses given how many publications each channel got."""
        tail = 0
        expected = 0
        for u in self.users:
            for ch in u.channels:
                count = published.get(ch, 0)
                expected += count
                got = u.nxt.get(ch, 1) - 1
                if count > got:
                    tail += count - got
        out = self.c.snapshot(full=True)
        out["tail"] = tail
        out["expected"] = expected
        return out

    # --- control -------------------------------------------------------------------------

    def send(self, *message: Any) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.ctrl.send(message)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        forward_orders(self.ctrl, loop, self._queue)
        try:
            while True:
                order = await self._queue.get()
                if order[0] == "exit":
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
        self.send("bye")

    def handle(self, order: tuple[Any, ...]) -> None:
        kind = order[0]
        if kind == "setup":  # ("setup", cfg, users) -> ("ready", minted)
            self.setup(order[1], order[2])
            self.send("ready", len(self.users))
        elif kind == "open":  # ("open", first, count, concurrency, rate) -> ("opened", stats)
            _, first, count, concurrency, rate = order
            users = self.users[first : first + count]

            async def go() -> None:
                await self._open_steady(users, concurrency, rate)
                self.send("opened", self.c.snapshot())

            self._spawn(go())
        elif kind == "stats":  # -> ("stats", snapshot)
            self.send("stats", self.c.snapshot())
        elif kind == "reconnect":  # ("reconnect", on)
            self.reconnect = bool(order[1])
        elif kind == "drop":  # -> ("dropped", n)
            self.send("dropped", self.drop())
        elif kind == "churn":  # ("churn", rate, lifetime, docs)
            if order[1] > 0:
                self._churn = asyncio.get_running_loop().create_task(
                    self._churn_loop(order[1], order[2], order[3])
                )
        elif kind == "stop-churn":
            self.stop_churn()
            self.send("churn-stopped")
        elif kind == "final":  # ("final", published) -> ("final", counts)
            self.reconnect = False
            self.send("final", self.final(order[1]))


def _os_reason(exc: OSError) -> str:
    name = os.strerror(exc.errno) if exc.errno else type(exc).__name__
    return f"socket: {name}"[:80]


def _retryable(reason: str) -> bool:
    """Failures worth another try: the network and the server's temporary errors."""
    transient = ("socket:", "timeout", "connection lost", "error 100", "HTTP/1.1 5")
    return reason.startswith(transient) or (
        reason.startswith("close ") and not is_terminal(_int(reason[6:]))
    )


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        return 0


def generator_main(ctrl: Connection, cpus: list[int] | None = None) -> None:
    """Entry point of a generator process (``multiprocessing`` spawn target)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the runner stops us in order
    raise_nofile()
    gcpolicy.tune()  # thousands of long-lived client objects, as in the server
    if cpus:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, cpus)
    run: Callable[[Any], Any]
    try:
        import uvloop

        run = uvloop.run
    except ImportError:  # pragma: no cover
        run = asyncio.run
    with contextlib.suppress(BrokenPipeError, EOFError, ConnectionResetError):
        run(Generator(ctrl).run())
