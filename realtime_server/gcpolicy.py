"""The garbage-collector settings of a long-running process holding many connections.

CPython's default thresholds (700, 10, 10) run a young collection every 700 net
allocations and a full one each time the long-lived heap has grown by a quarter. At
10,000 connections a full pass walks every connection's objects: 0.3-0.5 s of CPU per
pass, seven or eight of them while connections ramp up (about 1.9 s of CPU for 10,000
connects: a third of the connect cost, and the whole latency tail).

A closed connection leaves no cyclic garbage (:mod:`.wsconn` breaks the cycles
websockets leaves), so nearly everything is freed by reference counting and the
collector only has to find the rare cycle. Young collections every 50,000 net
allocations, the middle generation every 20 of those, and full passes only when the
usual "a quarter more long-lived objects" rule also holds: measured 0.17 s of GC CPU for
the same 10,000 connects, no full pass, no leak under churn (a forced full collection
afterwards found nothing to free).
"""

from __future__ import annotations

import gc
from typing import Final

__all__ = ["THRESHOLDS", "freeze_startup", "tune"]

THRESHOLDS: Final = (50_000, 20, 10)


def tune() -> None:
    """Apply :data:`THRESHOLDS` (called once per process, before connections arrive)."""
    gc.set_threshold(*THRESHOLDS)


def freeze_startup() -> None:
    """Move everything allocated so far (modules, settings, the node) out of the
    collector's passes: it lives as long as the process."""
    gc.freeze()
