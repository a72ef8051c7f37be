"""A multi-map from a key (user id, token id) to the sessions holding it.

Most keys have exactly one session, so a key maps to that session itself and only
becomes a set when a second one arrives (profiled: a one-element set per connection and
index cost ~0.2 KiB each).
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

__all__ = ["MultiIndex"]

T = TypeVar("T", bound=Hashable)


class MultiIndex(Generic[T]):
    __slots__ = ("_map",)

    def __init__(self) -> None:
        self._map: dict[str, T | set[T]] = {}

    def add(self, key: str, item: T) -> None:
        current = self._map.get(key)
        if current is None:
            self._map[key] = item
        elif isinstance(current, set):
            current.add(item)
        elif current is not item:
            self._map[key] = {current, item}

    def remove(self, key: str, item: T) -> None:
        current = self._map.get(key)
        if current is None:
            return
        if isinstance(current, set):
            current.discard(item)
            if len(current) == 1:
                self._map[key] = next(iter(current))
            elif not current:
                del self._map[key]
        elif current is item:
            del self._map[key]

    def get(self, key: str) -> tuple[T, ...]:
        current = self._map.get(key)
        if current is None:
            return ()
        if isinstance(current, set):
            return tuple(current)
        return (current,)

    def count(self, key: str) -> int:
        current = self._map.get(key)
        if current is None:
            return 0
        return len(current) if isinstance(current, set) else 1

    def __contains__(self, key: object) -> bool:
        return key in self._map

    def __len__(self) -> int:
        return len(self._map)
