"""Token-expiry deadlines of every session and subscription, on one loop timer.

A ``loop.call_later`` per connection cost about 0.5 KiB per idle connection (a uvloop
``TimerHandle`` with its libuv timer, the bound method and the arguments). Here a
deadline is rounded *up* to a tick (``tick`` seconds of the loop's clock) and the entry
goes in that tick's bucket; one timer is armed for the earliest bucket. Buckets are a
:class:`MultiMap` (most connections of a burst share a bucket; a lone connection pays
no set). An entry records its bucket
(``expiry_key``), so cancelling is a dict lookup and rescheduling moves it.

An entry fires once, unless cancelled or rescheduled first: at its deadline (give or
take the loop clock's resolution) or at most one tick (plus the loop's latency) after
it. ``expire()`` is called synchronously from the timer callback; it may reschedule or
cancel any entry, itself included (an entry scheduled from there fires on a later
callback, never in the same one).
"""

from __future__ import annotations

import asyncio
import heapq
import math
from typing import Protocol

from .multimap import MultiMap

__all__ = ["EXPIRY_TICK", "Expiring", "ExpiryWheel"]

EXPIRY_TICK = 0.05
"""Seconds per bucket of the node's token-expiry deadlines: an unrefreshed token is
acted on ``REALTIME_EXPIRY_GRACE`` seconds after its ``exp``, at most this much later."""

_NONE = -1
_FIRING = -2  # taken out of its bucket by the timer, expire() not called yet


class Expiring(Protocol):
    """Something with a deadline in an :class:`ExpiryWheel` (its bucket, or -1);
    hashable by identity."""

    expiry_key: int

    def expire(self) -> None: ...


class ExpiryWheel:
    """Deadlines bucketed by tick, one loop timer for the earliest bucket."""

    __slots__ = ("_armed", "_buckets", "_keys", "_last_key", "_loop", "_tick", "_timer")

    def __init__(self, tick: float) -> None:
        if tick <= 0:
            raise ValueError("tick must be positive")
        self._tick = tick
        self._buckets: MultiMap[int, Expiring] = MultiMap()
        self._keys: list[int] = []  # heap of bucket keys; may hold keys of empty buckets
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._armed = _NONE  # the key the timer is set for
        self._last_key = _NONE  # the last key scheduled, shared by the entries using it

    @property
    def tick(self) -> float:
        return self._tick

    def __len__(self) -> int:
        """Entries waiting (not cancelled, not fired)."""
        return self._buckets.total()

    def schedule(self, entry: Expiring, delay: float) -> None:
        """Fire ``entry.expire()`` ``delay`` seconds from now (rounded up to a tick),
        replacing any deadline it had."""
        if entry.expiry_key != _NONE:
            self.cancel(entry)  # out of its bucket, or no longer due to fire
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()  # cached: a system call each
        key = math.ceil((loop.time() + max(0.0, delay)) / self._tick)
        if key == self._last_key:
            key = self._last_key  # one int object per bucket, not one per entry (32 B)
        else:
            self._last_key = key
        buckets = self._buckets
        if key not in buckets:
            heapq.heappush(self._keys, key)
            if self._timer is None or key < self._armed:
                self._arm(loop, key)
        buckets.add(key, entry)
        entry.expiry_key = key

    def cancel(self, entry: Expiring) -> None:
        """Forget ``entry``'s deadline (nothing if it has none)."""
        key = entry.expiry_key
        entry.expiry_key = _NONE
        if key < 0:
            return
        buckets = self._buckets
        buckets.remove(key, entry)
        if not buckets:
            self.close()
        elif len(self._keys) > 2 * len(buckets) + 64:
            # Keys of emptied buckets stay in the heap until due; sequential churn (each
            # connection gone before the next arrives) would pile them up: compact.
            keys = self._keys
            keys[:] = buckets.keys()  # in place: _fire may hold this list
            heapq.heapify(keys)

    def close(self) -> None:
        """Stop the timer and drop every entry (none of them will fire)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._armed = _NONE
        for entry in self._buckets.values():
            entry.expiry_key = _NONE
        self._buckets.clear()
        self._keys.clear()

    def _arm(self, loop: asyncio.AbstractEventLoop, key: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._armed = key
        self._timer = loop.call_at(key * self._tick, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._armed = _NONE
        loop = asyncio.get_running_loop()
        # Timers may run a little early (the loop's clock resolution): a bucket is due
        # when its time is within a hundredth of a tick.
        due = math.floor(loop.time() / self._tick + 0.01)
        keys = self._keys
        buckets = self._buckets
        fired: list[Expiring] = []
        while keys and keys[0] <= due:
            for entry in buckets.pop(heapq.heappop(keys)):
                entry.expiry_key = _FIRING
                fired.append(entry)
        for entry in fired:
            # An earlier entry's expire() may have cancelled or rescheduled this one.
            if entry.expiry_key == _FIRING:
                entry.expiry_key = _NONE
                try:
                    entry.expire()
                except Exception as exc:  # one failing entry must not strand the others
                    loop.call_exception_handler(
                        {"message": "expiry callback failed", "exception": exc, "entry": entry}
                    )
        while keys and keys[0] not in buckets:  # keys of buckets emptied by cancel()
            heapq.heappop(keys)
        if keys and (self._timer is None or self._armed != keys[0]):
            self._arm(loop, keys[0])
