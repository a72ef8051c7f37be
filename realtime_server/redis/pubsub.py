"""A small fixed set of Redis pub/sub connections ("shards"), each owned by one task.

Each realtime channel maps to one shard (CRC32 of its name; on a cluster, the primary
owning its slot), so its messages arrive in order on one connection.

**One owner per connection.** A shard's connection is ours (asyncio streams, RESP
parsed by ``hiredis``; :mod:`.link` dials it), and only its owner task reads it:
it connects, subscribes every channel the shard holds, then reads and dispatches every
reply. Other coroutines never read: :meth:`PubSubShard.subscribe` and
:meth:`~PubSubShard.unsubscribe` update :attr:`~PubSubShard.channels` and queue the
command in the same synchronous step, and ``subscribe`` then awaits a future that the
owner resolves when Redis confirms. Queued commands are written at the end of the
loop iteration or, while earlier ones are unconfirmed, once the last confirmation is
read; consecutive SUBSCRIBEs (or UNSUBSCRIBEs) queued meanwhile leave as one command
(Redis confirms each channel all the same): under a connect storm one write carries
many connects' channels instead of one write each. Redis answers commands in
order on a connection, so replies are matched to commands by a FIFO of expected
replies, never by name alone. (redis-py's ``PubSub`` ran those commands itself while the
read loop waited in ``get_message``, and its reconnect raced that loop: "read() called
while another coroutine is already waiting", a leaked subscription, issue 11.)

The invariant this gives: once the commands written so far are processed, Redis holds
on the connection exactly the anchor channel plus :attr:`~PubSubShard.channels`. Messages
of other channels are dropped: once ``unsubscribe`` returned, nothing of that channel
is dispatched, even what Redis still sent before it read the UNSUBSCRIBE. A
subscribe that fails (link lost, timeout, error reply) is undone in the same place:
removed from ``channels`` and, while the link is up, unsubscribed. A new connection
subscribes a snapshot of ``channels`` taken when its commands are written; later
changes are written after it, in order.

**Link health.** Any data from Redis proves the link alive (a counter per read, nothing
per message). When a link has been silent for :data:`PING_IDLE` seconds it is pinged;
a pong missing for :data:`PONG_LATE` seconds makes the shard not ready (``/readyz``
503, connects get error 100) until anything arrives, and after ``timeout`` seconds the
link is rebuilt. A lost link is redialed with full-jitter backoff capped at
:data:`BACKOFF_CAP` seconds, resubscribed, then ``on_up`` runs before reading further,
so the broker can fill the gap from history.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
import zlib
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import hiredis

from ..errors import BackendUnavailable
from .client import describe_redis_error
from .link import LinkOptions, encode_command, open_link

__all__ = ["BACKOFF_CAP", "PING_IDLE", "PONG_LATE", "PubSubShard", "PubSubShards"]

logger = logging.getLogger("realtime_server.redis")

PING_IDLE: Final = 0.1
"""Seconds of silence on a link before it is pinged (no ping while data flows)."""
PONG_LATE: Final = 0.25
"""Seconds a pong may take before the shard stops being ready (a hung Redis shows in
``/readyz`` within about ``PING_IDLE`` to twice that, plus this)."""
BACKOFF_CAP: Final = 0.25
"""Most seconds between two attempts to redial a lost link."""
_READ_SIZE: Final = 1 << 16

_MESSAGES: Final = frozenset({b"message", b"smessage"})
_CONFIRMATIONS: Final = frozenset(
    {b"subscribe", b"ssubscribe", b"unsubscribe", b"sunsubscribe", b"pong"}
)


class _State(enum.Enum):
    DOWN = 0
    """No connection (or one being dialed and authenticated)."""
    SYNCING = 1
    """Connected; the shard's channels are being subscribed."""
    READY = 2


@dataclass(slots=True)
class _Expected:
    """A reply Redis owes us, in the order of the commands written."""

    kind: bytes
    name: bytes
    waiter: asyncio.Future[None] | None
    command: int
    """Which command asked for it (an error reply answers a whole command)."""


class PubSubShard:
    """One pub/sub connection, its channels and its owner task (module docstring)."""

    def __init__(
        self,
        url: str,
        index: int,
        anchor: str,
        on_message: Callable[[bytes, bytes], Awaitable[None]],
        on_up: Callable[[PubSubShard], Awaitable[None]],
        timeout: float,
        sharded: bool = False,
    ) -> None:
        self.index = index
        self.channels: set[str] = set()
        self.reconnects = 0
        self._url = url
        self._options = LinkOptions.from_url(url)
        self._anchor = anchor
        self._on_message = on_message
        self._on_up = on_up
        self._timeout = timeout
        self._sharded = sharded
        self._subscribe = b"SSUBSCRIBE" if sharded else b"SUBSCRIBE"
        self._unsubscribe = b"SUNSUBSCRIBE" if sharded else b"UNSUBSCRIBE"
        self._confirm_subscribe = b"ssubscribe" if sharded else b"subscribe"
        self._confirm_unsubscribe = b"sunsubscribe" if sharded else b"unsubscribe"
        self._state = _State.DOWN
        self._writer: asyncio.StreamWriter | None = None
        self._expected: deque[_Expected] = deque()
        self._queued: list[tuple[bytes, list[str]]] = []  # commands not written yet
        self._unsent = 0  # the replies they will get (the tail of _expected)
        self._commands = 0
        self._flush_soon = False
        self._deadlines: deque[tuple[float, asyncio.Future[None]]] = deque()
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._late = False
        self._received = 0  # reads since the connection opened (the watchdog's clock)
        self._ready_event = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def ready(self) -> bool:
        """Subscribed, and Redis answered within :data:`PONG_LATE` of a ping."""
        return self._state is _State.READY and not self._late

    # --- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._run(), name=f"redis-pubsub-{self.index}")

    async def wait_ready(self, within: float) -> bool:
        try:
            async with asyncio.timeout(within):
                await self._ready_event.wait()
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None
        self._teardown(ConnectionError("closed"))

    # --- subscriptions (any coroutine; never reads the connection) ------------------

    async def subscribe(self, name: str) -> None:
        """Subscribe and wait for Redis to confirm (so a history read after this call
        cannot miss a publication). Raises BackendUnavailable while the link is down
        or not answering, or when Redis does not confirm in time; the subscription is
        then undone."""
        if not self.ready:
            raise BackendUnavailable("redis pub/sub link down")
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self.channels.add(name)
        self._write(self._subscribe, self._confirm_subscribe, (name,), waiter)
        self._deadlines.append((loop.time() + self._timeout, waiter))
        if self._deadline_timer is None:
            self._deadline_timer = loop.call_at(self._deadlines[0][0], self._expire)
        try:
            await waiter
        except BaseException as exc:
            self._undo(name)
            if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt | SystemExit):
                raise
            if isinstance(exc, TimeoutError):
                raise BackendUnavailable("redis subscribe timed out") from None
            raise BackendUnavailable(f"redis subscribe: {exc}") from None

    def _expire(self) -> None:
        """Fail the subscribes Redis did not confirm in time (one timer for all of them:
        cheaper than a timeout per subscribe; the deadlines come in order)."""
        self._deadline_timer = None
        deadlines = self._deadlines
        loop = asyncio.get_running_loop()
        now = loop.time()
        while deadlines and (deadlines[0][1].done() or deadlines[0][0] <= now + 0.001):
            waiter = deadlines.popleft()[1]
            if not waiter.done():
                waiter.set_exception(TimeoutError("no confirmation in time"))
        if deadlines:
            self._deadline_timer = loop.call_at(deadlines[0][0], self._expire)

    async def unsubscribe(self, name: str) -> None:
        """Forget ``name`` (never raises). While a link holds the shard's channels it is
        unsubscribed there too; a link being dialed will not subscribe it."""
        self._undo(name)

    def _undo(self, name: str) -> None:
        self.channels.discard(name)
        if self._state is not _State.DOWN:
            self._write(self._unsubscribe, self._confirm_unsubscribe, (name,), None)

    def _write(
        self,
        command: bytes,
        confirmation: bytes,
        names: tuple[str, ...],
        waiter: asyncio.Future[None] | None,
    ) -> None:
        """Queue one command and the replies it will get (the last one resolves
        ``waiter``). Synchronous: never interleaved with another command. Joins the
        command queued last when it is the same (not SSUBSCRIBE: one slot each)."""
        writer = self._writer
        if writer is None or writer.transport.is_closing():
            if waiter is not None and not waiter.done():
                waiter.set_exception(ConnectionError("pub/sub link lost"))
            return
        queued = self._queued
        if queued and queued[-1][0] == command and not self._sharded:
            queued[-1][1].extend(names)
        else:
            self._commands += 1
            queued.append((command, list(names)))
            if not self._flush_soon:
                self._flush_soon = True
                asyncio.get_running_loop().call_soon(self._flush)
        expected, number = self._expected, self._commands
        last = len(names) - 1
        for i, name in enumerate(names):
            entry = _Expected(confirmation, name.encode(), waiter if i == last else None, number)
            expected.append(entry)
        self._unsent += len(names)

    def _flush(self) -> None:
        """End of the iteration: write what is queued, unless commands written
        earlier are unconfirmed (the owner writes it when their last reply is in)."""
        self._flush_soon = False
        if len(self._expected) == self._unsent:
            self._send()

    def _send(self) -> None:
        queued, self._queued = self._queued, []
        self._unsent = 0
        writer = self._writer
        if queued and writer is not None and not writer.transport.is_closing():
            writer.write(b"".join(encode_command(command, *names) for command, names in queued))

    # --- the owner task ----------------------------------------------------------------

    async def _run(self) -> None:
        attempt = 0
        while True:
            watchdog: asyncio.Task[None] | None = None
            try:
                reader, parser = await self._connect()
                if attempt:
                    self.reconnects += 1
                    logger.info(
                        "redis pub/sub shard %d resubscribed %d channels",
                        self.index,
                        len(self.channels),
                    )
                attempt = 0
                await self._on_up(self)
                self._ready_event.set()
                watchdog = asyncio.get_running_loop().create_task(
                    self._watch(), name=f"redis-watchdog-{self.index}"
                )
                await self._pump(reader, parser, None)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure of the link: rebuild it
                if self._state is not _State.DOWN or attempt == 0:
                    logger.warning(  # address and cause, never the password
                        "redis pub/sub shard %d link down: %s",
                        self.index,
                        describe_redis_error(self._url, exc, self._timeout),
                    )
                self._teardown(exc)
                delay = random.uniform(0, min(BACKOFF_CAP, 0.02 * 2**attempt))
                attempt += 1
                await asyncio.sleep(delay)
            finally:
                if watchdog is not None:
                    watchdog.cancel()

    async def _connect(self) -> tuple[asyncio.StreamReader, hiredis.Reader]:
        """Dial, then subscribe the anchor and a snapshot of the channels; return once
        Redis confirmed them all (READY). Messages meanwhile are dropped: ``on_up``
        fills every channel's gap from history next."""
        reader, writer = await open_link(self._options, self._timeout)
        self._writer = writer
        self._received = 0
        self._late = False
        names = sorted(self.channels)  # the snapshot; later changes are written after
        self._state = _State.SYNCING
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._write(b"SUBSCRIBE", b"subscribe", (self._anchor,), None if names else done)
        if self._sharded:  # one slot per SSUBSCRIBE on a cluster: one command each
            for name in names:
                self._write(self._subscribe, self._confirm_subscribe, (name,), None)
            if names:
                self._expected[-1].waiter = done
        elif names:
            self._write(self._subscribe, self._confirm_subscribe, tuple(names), done)
        parser = hiredis.Reader()
        try:
            async with asyncio.timeout(self._timeout * 2):
                await self._pump(reader, parser, done)
        finally:
            done.cancel()  # when the sync failed: nobody is left to retrieve it
        self._state = _State.READY
        return reader, parser

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        parser: hiredis.Reader,
        until: asyncio.Future[None] | None,
    ) -> None:
        """Read and dispatch replies. Syncing (``until`` given): messages are dropped,
        an error reply fails the sync, and it returns as soon as ``until`` is resolved
        (what follows stays in ``parser``). Else it runs until the link fails
        (raises)."""
        on_message = self._on_message
        expected = self._expected
        channels = self.channels
        anchor = self._anchor.encode()
        while True:
            while (reply := parser.gets()) is not False:
                if isinstance(reply, list) and reply:
                    kind = reply[0]
                    if kind in _MESSAGES:
                        # Only channels still held: Redis may run a publication sent
                        # on another connection after an UNSUBSCRIBE sent here before
                        # the UNSUBSCRIBE itself.
                        name = reply[1]
                        if until is None and (name == anchor or name.decode() in channels):
                            await on_message(name, reply[2])
                    elif kind in _CONFIRMATIONS:
                        _confirm(expected, kind, reply[1])
                    # anything else (pmessage...) is not ours
                elif isinstance(reply, hiredis.ReplyError):
                    if until is not None or len(expected) == self._unsent:
                        raise ConnectionError(f"error reply: {reply}")
                    command = expected[0].command
                    while len(expected) > self._unsent and expected[0].command == command:
                        waiter = expected.popleft().waiter  # the whole command failed
                        if waiter is not None and not waiter.done():
                            waiter.set_exception(BackendUnavailable(f"redis: {reply}"))
                else:
                    raise ConnectionError("unexpected reply on a pub/sub link")
                if until is not None and until.done():
                    return
            if self._queued and len(expected) == self._unsent:
                self._send()  # all confirmed: what queued up meanwhile, in one write
            data = await reader.read(_READ_SIZE)
            if not data:
                raise ConnectionError("connection closed by redis")
            self._received += 1
            parser.feed(data)

    async def _watch(self) -> None:
        """Ping a silent link; not ready while a pong is late; rebuild a dead link."""
        writer = self._writer
        ping = encode_command("PING")
        seen = self._received
        while True:
            await asyncio.sleep(PING_IDLE)
            if self._received != seen:
                seen = self._received
                continue
            if writer is None or writer is not self._writer or writer.transport.is_closing():
                return
            self._send()  # with anything queued (a hung Redis answers neither)
            self._expected.append(_Expected(b"pong", b"", None, 0))
            writer.write(ping)
            waited = 0.0
            while self._received == seen:
                step = PONG_LATE if waited < PONG_LATE else PING_IDLE
                await asyncio.sleep(step)
                waited += step
                if self._received != seen:
                    break
                if waited >= PONG_LATE and not self._late:
                    self._late = True
                    logger.warning(
                        "redis pub/sub shard %d: no answer for %.2f s; not ready",
                        self.index,
                        waited,
                    )
                if waited >= self._timeout:
                    logger.warning(
                        "redis pub/sub shard %d: no answer for %.1f s; rebuilding the link",
                        self.index,
                        waited,
                    )
                    writer.transport.abort()  # the owner's read fails and redials
                    return
            if self._late:
                self._late = False
                logger.info("redis pub/sub shard %d answering again", self.index)
            seen = self._received

    def _teardown(self, exc: BaseException) -> None:
        """Forget the link: not ready; every pending subscribe fails and is undone (so
        the next link does not subscribe it)."""
        self._state = _State.DOWN
        self._ready_event.clear()
        self._late = False
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.transport.abort()
        expected, self._expected = self._expected, deque()
        self._queued, self._unsent = [], 0
        for item in expected:
            waiter = item.waiter
            if waiter is not None and not waiter.done():
                if item.kind == self._confirm_subscribe:  # a subscribe() still waiting
                    self.channels.discard(item.name.decode())  # before any redial's snapshot
                waiter.set_exception(ConnectionError(f"pub/sub link lost: {_text(exc)}"))


def _confirm(expected: deque[_Expected], kind: bytes, name: Any) -> None:
    """A confirmation arrived: it answers the oldest command not yet answered."""
    if not expected:
        raise ConnectionError("unexpected confirmation on a pub/sub link")
    head = expected.popleft()
    if head.kind != kind or (kind != b"pong" and head.name != name):
        raise ConnectionError("pub/sub replies out of step with the commands")
    waiter = head.waiter
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


def _text(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


class PubSubShards:
    """A fixed number of shards; a channel always maps to the same one."""

    def __init__(self, shards: list[PubSubShard], pick: Callable[[str], int] | None = None) -> None:
        self.shards = shards
        self._pick = pick

    def for_channel(self, name: str) -> PubSubShard:
        if self._pick is not None:
            return self.shards[self._pick(name)]
        return self.shards[zlib.crc32(name.encode()) % len(self.shards)]

    @property
    def ready(self) -> bool:
        return bool(self.shards) and all(s.ready for s in self.shards)

    def start(self) -> None:
        for shard in self.shards:
            shard.start()

    async def wait_ready(self, within: float) -> bool:
        results = await asyncio.gather(*(s.wait_ready(within) for s in self.shards))
        return all(results)

    async def close(self) -> None:
        await asyncio.gather(*(s.close() for s in self.shards))
