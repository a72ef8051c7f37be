"""Server pings (``{}``) and pong deadlines for every connected session, from one task.

Sessions are spread over buckets, one per tick (at most a second). Each tick pings the
sessions of one bucket, so every session gets a ping every ``interval`` seconds whatever
its other traffic (centrifuge-python only counts pings as proof of life). A session
that sent nothing since its last ping when ``pong_timeout`` has passed is closed with
3012. One task and a few sets replace a timer per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from typing import TYPE_CHECKING

from . import codes
from .frames import text_frame
from .protocol import PING

if TYPE_CHECKING:
    from .session import Session

__all__ = ["Keepalive"]

_PING_FRAME = text_frame(PING)


class Keepalive:
    def __init__(self, interval: float, pong_timeout: float) -> None:
        self.interval = interval
        self.enabled = interval > 0
        tick = min(1.0, interval / 4) if self.enabled else 1.0
        self._tick = tick
        self._buckets: list[set[Session]] = [set() for _ in range(max(1, round(interval / tick)))]
        self._check_after = max(1, math.ceil(pong_timeout / tick))
        self._count = 0
        self._task: asyncio.Task[None] | None = None

    def add(self, session: Session) -> None:
        if not self.enabled:
            return
        # The bucket pinged last: this session's first ping comes one interval from now.
        index = (self._count - 1) % len(self._buckets)
        session.ping_bucket = index
        self._buckets[index].add(session)

    def remove(self, session: Session) -> None:
        if session.ping_bucket >= 0:
            self._buckets[session.ping_bucket].discard(session)
            session.ping_bucket = -1

    def start(self) -> None:
        if self.enabled and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_tick = loop.time()
        buckets = self._buckets
        n = len(buckets)
        while True:
            next_tick += self._tick
            await asyncio.sleep(max(0.0, next_tick - loop.time()))
            count = self._count
            self._count = count + 1
            if self._check_after < n:
                for session in list(buckets[(count - self._check_after) % n]):
                    if session.awaiting_pong:
                        session.close(codes.CLOSE_NO_PONG)
            for session in list(buckets[count % n]):
                if session.awaiting_pong:
                    session.close(codes.CLOSE_NO_PONG)
                elif session.deliver(PING, _PING_FRAME):
                    session.awaiting_pong = True
