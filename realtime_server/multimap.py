"""A multi-map whose keys mostly hold one value: the one-value-or-a-set store.

A user mostly has one connection, a ``user:<id>`` channel one subscriber, a token one
session, an expiry bucket of a quiet moment one deadline. Such a key maps to the value
itself and only becomes a set when a second value arrives, and back when one is left
(profiled: a one-element set per idle connection and index cost about 0.2 KiB).

Values are compared by identity-or-equality as sets do; a value is never a ``set``.
:meth:`MultiMap.raw` exposes the stored form for hot loops (fan-out) that must not
build a tuple per call.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from typing import Generic, TypeVar

__all__ = ["MultiMap"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")  # hashable (set members); not bound: protocols of objects hashed by identity


class MultiMap(Generic[K, V]):
    __slots__ = ("_map",)

    def __init__(self) -> None:
        self._map: dict[K, V | set[V]] = {}

    def add(self, key: K, value: V) -> None:
        current = self._map.get(key)
        if current is None:
            self._map[key] = value
        elif isinstance(current, set):
            current.add(value)
        elif current is not value:
            self._map[key] = {current, value}

    def remove(self, key: K, value: V) -> bool:
        """Forget ``value`` under ``key``; returns whether it was there."""
        current = self._map.get(key)
        if current is None:
            return False
        if isinstance(current, set):
            if value not in current:
                return False
            current.discard(value)
            if len(current) == 1:
                self._map[key] = next(iter(current))
            elif not current:
                del self._map[key]
            return True
        if current is value:
            del self._map[key]
            return True
        return False

    def pop(self, key: K) -> tuple[V, ...]:
        """Remove ``key`` and return its values."""
        current = self._map.pop(key, None)
        if current is None:
            return ()
        return tuple(current) if isinstance(current, set) else (current,)

    def get(self, key: K) -> tuple[V, ...]:
        current = self._map.get(key)
        if current is None:
            return ()
        return tuple(current) if isinstance(current, set) else (current,)

    def raw(self, key: K) -> V | set[V] | None:
        """The stored form: None, the single value, or the set (do not modify it)."""
        return self._map.get(key)

    def count(self, key: K) -> int:
        current = self._map.get(key)
        if current is None:
            return 0
        return len(current) if isinstance(current, set) else 1

    def total(self) -> int:
        """Values under every key."""
        return sum(len(v) if isinstance(v, set) else 1 for v in self._map.values())

    def values(self) -> Iterator[V]:
        for current in self._map.values():
            if isinstance(current, set):
                yield from current
            else:
                yield current

    def clear(self) -> None:
        self._map.clear()

    def keys(self) -> Iterator[K]:
        return iter(self._map)

    def __contains__(self, key: object) -> bool:
        return key in self._map

    def __len__(self) -> int:
        """Keys holding at least one value."""
        return len(self._map)
