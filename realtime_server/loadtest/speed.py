"""How fast this machine runs Python right now (:func:`reference_us`): one figure that
makes CPU figures from different days comparable.

A shared virtual machine's speed drifts: on the 2-core development machine, every CPU
figure of the same build rose by a third from one day to the next, and by 15-25% within
a day. A CPU-per-connect or per-delivery figure alone cannot tell a slower build from a
slower machine; next to this one it can. :func:`reference_us` times a fixed pure-Python
workload shaped like the server's own work (function and method calls, attribute and
dict access, small objects, str and bytes handling, JSON), in this process, with nothing
else of the run going on yet: the best of several runs, so that a run the scheduler
interrupted does not count. The same Python on a machine reading 30% higher makes every
CPU figure read about 30% higher for the same code.
"""

from __future__ import annotations

import time
from typing import Final

import orjson

__all__ = ["reference_us"]

_RUNS: Final = 25


class _Item:
    __slots__ = ("key", "size", "value")

    def __init__(self, key: str, value: bytes) -> None:
        self.key = key
        self.value = value
        self.size = len(value)


def _step(i: int, table: dict[str, _Item]) -> int:
    key = f"document:{i % 97}:{i}"
    item = _Item(key, key.encode())
    table[key] = item
    return item.size + len(key.partition(":")[2])


def _workload() -> int:
    table: dict[str, _Item] = {}
    total = 0
    for i in range(400):
        total += _step(i, table)
    payload = orjson.dumps([{"key": item.key, "size": item.size} for item in table.values()])
    total += len(orjson.loads(payload))
    return total + sum(1 for key in table if key.endswith("7"))


def reference_us(runs: int = _RUNS) -> float:
    """Microseconds of the reference workload on this machine now (lower is faster)."""
    _workload()  # warm: first-call costs out
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        _workload()
        best = min(best, time.perf_counter() - start)
    return round(best * 1e6, 1)
