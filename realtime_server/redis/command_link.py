"""Our own connection for commands on a single Redis: shared, pipelined, batched.

redis-py spends 60 to 150 us of CPU on each command (a pooled connection checked out
and back, its retry wrapper, its parser plumbing, a timeout per call): the three or
four commands of a connect were most of what the Redis engine added to a connect's
CPU (issue 15). Every caller shares this one connection instead:

- a command is packed (``hiredis``) and appended to the outgoing buffer together with
  the future its reply resolves, in one synchronous step; the buffer is written at the
  end of the event-loop iteration, or, while commands written earlier are still
  unanswered, as soon as the last of their replies is read: so the commands of
  concurrent callers leave together, one write per round trip however many callers
  (a write to a local socket costs about as much CPU as the Python around it);
- a *lazy* command (best-effort work after a reply: presence, join, leave) waits up
  to :data:`LAZY_DELAY` for other commands to leave with, rather than costing a write
  (and a read) of its own;
- Redis answers in order, so replies resolve the futures first in, first out (a
  caller that gave up leaves its future cancelled, and its reply is dropped);
- every command is answered within ``timeout`` seconds or the link is aborted: one
  timer watches the oldest unanswered command, and when Redis is that late every
  command in flight fails with TimeoutError (a hung or unreachable Redis);
- a lost link fails the commands in flight (ConnectionError); the next command dials
  again, AUTH and SELECT first (as :mod:`.link` does for the pub/sub connections).

Error replies raise redis-py's exceptions (``NoScriptError`` for NOSCRIPT,
``ResponseError`` otherwise), so callers treat both clients alike. No blocking
commands here (one slow command holds up all of them), nor MULTI.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import hiredis
from redis.exceptions import NoScriptError, ResponseError

from ..errors import BackendUnavailable
from .link import LinkOptions, dial

__all__ = ["LAZY_DELAY", "CommandLink"]

Arg = bytes | str | int | float

LAZY_DELAY = 0.002
"""Seconds a lazy command may wait for company before it is written."""

_EARLY = 0.001
"""Seconds a timer may fire before its time (the loop's clock resolution)."""


class _Protocol(asyncio.Protocol):
    __slots__ = ("_link", "transport")

    def __init__(self, link: CommandLink) -> None:
        self._link = link
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a stream transport

    def data_received(self, data: bytes) -> None:
        self._link._received(self, data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._link._lost(self)


def _reply_error(reply: hiredis.ReplyError) -> ResponseError:
    text = str(reply)
    return NoScriptError(text) if text.startswith("NOSCRIPT") else ResponseError(text)


class CommandLink:
    """One pipelined command connection (see the module docstring)."""

    def __init__(self, options: LinkOptions, timeout: float) -> None:
        self._options = options
        self._timeout = timeout
        self._protocol: _Protocol | None = None
        self._ready = False
        """Connected, AUTH and SELECT done: commands may be sent."""
        self._parser = hiredis.Reader()
        self._waiting: deque[tuple[asyncio.Future[Any], float]] = deque()
        self._out: list[bytes] = []
        self._flush_soon = False
        """A write is scheduled for this loop iteration's end."""
        self._flush_later: asyncio.TimerHandle | None = None
        self._in_flight = 0
        """Commands written and not answered yet."""
        self._dialing: asyncio.Task[None] | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        """The loop of the connection (set when dialing)."""

    @property
    def connected(self) -> bool:
        return self._ready

    async def call(self, *args: Arg, lazy: bool = False) -> Any:
        """Send one command and return its reply (raises ResponseError for an error
        reply, TimeoutError or ConnectionError when Redis does not answer). ``lazy``:
        it may wait up to :data:`LAZY_DELAY` to leave with other commands."""
        if not self._ready:
            await self.connect()
            return await self.send(args, lazy)
        return await self._queue(args, lazy)

    async def connect(self) -> None:
        """Dial unless connected (one dial, shared by the callers waiting for it)."""
        if self._ready:
            return
        task = self._dialing
        if task is None:
            task = self._dialing = asyncio.get_running_loop().create_task(self._dial())
            task.add_done_callback(self._dialed)
        await asyncio.shield(task)
        if not self._ready:  # lost again right after the dial
            raise ConnectionError("redis command connection lost")

    def send(self, args: Sequence[Arg], lazy: bool = False) -> asyncio.Future[Any]:
        """Queue one command now (after :meth:`connect`); the future gets its reply.
        Commands sent in one synchronous step are consecutive on the connection."""
        if not self._ready:
            future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            future.set_exception(ConnectionError("redis command connection lost"))
            return future
        return self._queue(args, lazy)

    def _queue(self, args: Sequence[Arg], lazy: bool = False) -> asyncio.Future[Any]:
        loop = self._loop
        assert loop is not None  # queued only on a connection (dialed in this loop)
        future: asyncio.Future[Any] = loop.create_future()
        if not lazy:
            if not self._flush_soon:
                self._flush_soon = True
                loop.call_soon(self._flush)
        elif self._flush_later is None and not self._flush_soon:
            self._flush_later = loop.call_later(LAZY_DELAY, self._flush)
        self._out.append(hiredis.pack_command(tuple(args)))  # type: ignore[arg-type]
        now = loop.time()
        if self._watchdog is None:
            self._watchdog = loop.call_at(now + self._timeout, self._watch)
        self._waiting.append((future, now))
        return future

    def _flush(self) -> None:
        """At the end of an iteration, or a lazy command's delay: write what is
        queued, unless earlier commands are unanswered (their last reply writes it)."""
        self._flush_soon = False
        later, self._flush_later = self._flush_later, None
        if later is not None:
            later.cancel()
        if not self._in_flight:
            self._write()

    def _write(self) -> None:
        out = self._out
        if not out:
            return
        self._out = []
        protocol = self._protocol
        if protocol is not None and protocol.transport is not None:
            self._in_flight += len(out)
            protocol.transport.write(b"".join(out))

    def _watch(self) -> None:
        """The oldest unanswered command is ``timeout`` seconds old: abort the link."""
        self._watchdog = None
        if not self._waiting:
            return
        loop = asyncio.get_running_loop()
        due = self._waiting[0][1] + self._timeout
        if loop.time() >= due - _EARLY:
            self._abort(lambda: TimeoutError("redis did not answer in time"))
        else:
            self._watchdog = loop.call_at(due, self._watch)

    # --- the connection -------------------------------------------------------------

    async def _dial(self) -> None:
        self._loop = asyncio.get_running_loop()
        options = self._options
        protocol = _Protocol(self)
        async with asyncio.timeout(self._timeout):
            await dial(options, lambda: protocol)
            self._protocol = protocol
            self._parser = hiredis.Reader()
            try:
                steps: list[tuple[str, tuple[str, ...]]] = []
                if options.password is not None:
                    auth: tuple[str, ...] = (options.password,)
                    if options.username:
                        auth = (options.username, options.password)
                    steps.append(("AUTH", ("AUTH", *auth)))
                if options.db:
                    steps.append(("SELECT", ("SELECT", str(options.db))))
                replies = [(what, self._queue(args)) for what, args in steps]
                for what, reply in replies:
                    try:
                        await reply
                    except ResponseError as exc:
                        # The error's first word (WRONGPASS...), never the password.
                        word = str(exc).split(" ", 1)[0]
                        raise BackendUnavailable(f"redis {what} refused: {word}") from None
            except BaseException:
                if self._protocol is protocol:
                    self._abort(lambda: ConnectionError("redis handshake failed"))
                raise
        self._ready = True

    def _dialed(self, task: asyncio.Task[None]) -> None:
        self._dialing = None
        if not task.cancelled():
            task.exception()  # retrieved: the callers got it

    def _received(self, protocol: _Protocol, data: bytes) -> None:
        if protocol is not self._protocol:
            return
        parser = self._parser
        parser.feed(data)
        waiting = self._waiting
        try:
            while (reply := parser.gets()) is not False:
                self._in_flight -= 1
                future = waiting.popleft()[0]
                if future.done():
                    continue  # its caller gave up
                if isinstance(reply, hiredis.ReplyError):
                    future.set_exception(_reply_error(reply))
                else:
                    future.set_result(reply)
        except (hiredis.ProtocolError, IndexError):
            self._abort(lambda: ConnectionError("redis replies out of step with the commands"))
            return
        if not self._in_flight and self._out:
            self._write()  # what queued up meanwhile leaves now, in one write

    def _lost(self, protocol: _Protocol) -> None:
        if protocol is self._protocol:
            self._abort(lambda: ConnectionError("redis closed the command connection"))

    def _abort(self, failure: Callable[[], BaseException]) -> None:
        """Drop the connection; every command in flight fails with ``failure()``."""
        protocol, self._protocol = self._protocol, None
        self._ready = False
        self._out = []
        self._in_flight = 0
        if protocol is not None and protocol.transport is not None:
            protocol.transport.abort()
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        waiting, self._waiting = self._waiting, deque()
        for future, _ in waiting:
            if not future.done():
                future.set_exception(failure())

    async def close(self) -> None:
        task = self._dialing
        if task is not None:
            task.cancel()
        self._abort(lambda: ConnectionError("redis command connection closed"))
