"""The embedded engine's memory of idempotency keys: a table bounded by count.

Each entry maps (channel, key) to the position the first publish returned, until it
expires ``ttl`` seconds later. Entries are kept in insertion order; expired ones are
dropped from the front as new ones arrive (amortised, no timer).

Past ``max_entries`` live entries the oldest is forgotten before its time (counted in
:attr:`RecentKeys.evicted`): a repeat of that key would publish again. The oldest entry
is the one closest to expiring, and callers that repeat (a backend retrying a publish
whose answer it lost, the outbox re-running its last batch) repeat recent keys, so the
default bound (100,000 keys, a few tens of MiB) only matters past ~330 keyed publishes
per second sustained over the 300 s default TTL.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Final

from ..model import StreamPosition

__all__ = ["MAX_ENTRIES", "RecentKeys"]

MAX_ENTRIES: Final = 100_000
"""Default bound of :class:`RecentKeys` (entries)."""

_Key = tuple[str, str]


class RecentKeys:
    """Remembered (channel, key) -> position, each for its TTL, at most ``max_entries``."""

    __slots__ = ("_clock", "_entries", "evicted", "max_entries")

    def __init__(self, clock: Callable[[], float], max_entries: int = MAX_ENTRIES) -> None:
        self._clock = clock
        self._entries: OrderedDict[_Key, tuple[float, StreamPosition | None]] = OrderedDict()
        self.max_entries = max_entries
        self.evicted = 0
        """Entries forgotten before their expiry because the table was full."""

    def __len__(self) -> int:
        return len(self._entries)

    def seen(self, channel: str, key: str) -> tuple[bool, StreamPosition | None]:
        """Whether (channel, key) is remembered, and the position stored with it."""
        found = self._entries.get((channel, key))
        if found is None:
            return False, None
        expires, position = found
        if expires <= self._clock():
            del self._entries[(channel, key)]
            return False, None
        return True, position

    def remember(self, channel: str, key: str, position: StreamPosition | None, ttl: float) -> None:
        """Store (channel, key) -> position for ``ttl`` seconds."""
        now = self._clock()
        entries = self._entries
        entries[(channel, key)] = (now + ttl, position)
        entries.move_to_end((channel, key))
        # Drop expired entries from the front (insertion order is expiry order for one
        # TTL; with mixed TTLs a later one may wait behind a longer-lived one).
        while entries:
            oldest = next(iter(entries.values()))
            if oldest[0] > now:
                break
            entries.popitem(last=False)
        while len(entries) > self.max_entries:
            entries.popitem(last=False)
            self.evicted += 1
