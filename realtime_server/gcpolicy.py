"""The garbage-collector settings of a long-running process holding many connections.

CPython's default thresholds (700, 10, 10) run a young collection every 700 net
allocations and a full one each time the long-lived heap has grown by a quarter. At
10,000 connections a full pass walks every connection's objects: 0.3-0.5 s of CPU per
pass, seven or eight of them while connections ramp up (about 1.9 s of CPU for 10,000
connects: a third of the connect cost, and the whole latency tail).

A closed connection leaves no cyclic garbage (:mod:`.wsconn`'s connections hold no
cycles), so nearly everything is freed by reference counting and the
collector only has to find the rare cycle. Young collections every 50,000 net
allocations, the middle generation every 20 of those, and full passes only when the
usual "a quarter more long-lived objects" rule also holds: measured 0.17 s of GC CPU for
the same 10,000 connects, no full pass, no leak under churn (a forced full collection
afterwards found nothing to free).
"""

from __future__ import annotations

import gc
import logging
import time
from typing import Any, Final

from .metrics import Histogram

__all__ = ["PAUSES", "THRESHOLDS", "freeze_startup", "stop_timing", "time_pauses", "tune"]

logger = logging.getLogger("realtime_server.gc")

THRESHOLDS: Final = (50_000, 20, 10)

PAUSES: Final = Histogram((0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0))
"""Every collection's duration, in seconds (``realtime_gc_pause_seconds``): a
collection stops the event loop, so it is the latency every client sees then."""
SLOW_PAUSE: Final = 0.05
"""A collection longer than this is logged (with its generation and what it freed)."""

_started: list[float] = [0.0]


def _watch(phase: str, info: dict[str, Any]) -> None:
    """``gc.callbacks`` hook: time each collection (cheap; runs only around one)."""
    if phase == "start":
        _started[0] = time.perf_counter()
        return
    pause = time.perf_counter() - _started[0]
    PAUSES.observe(pause)
    if pause > SLOW_PAUSE:
        logger.warning(
            "garbage collection of generation %s took %.0f ms (%d collected)",
            info.get("generation"),
            pause * 1000,
            info.get("collected", 0),
        )


def tune() -> None:
    """Apply :data:`THRESHOLDS` (once per process, before connections arrive; the
    server and the load test's generators)."""
    gc.set_threshold(*THRESHOLDS)


def time_pauses() -> None:
    """Time every collection (:data:`PAUSES`, ``/metrics``) and log the slow ones: the
    server's, once per process."""
    if _watch not in gc.callbacks:
        gc.callbacks.append(_watch)


def stop_timing() -> None:
    """Stop timing collections (the server stopped: the collections of its shutdown
    stop no client and are not worth a warning)."""
    if _watch in gc.callbacks:
        gc.callbacks.remove(_watch)


def freeze_startup() -> None:
    """Move everything allocated so far (modules, settings, the node) out of the
    collector's passes: it lives as long as the process."""
    gc.freeze()
