"""What one generator process counts, sent whole to the runner (pickled) on request."""

from __future__ import annotations

from dataclasses import dataclass, field

from .stats import Histogram

__all__ = ["Counters", "FinalCounts"]


@dataclass(slots=True)
class Counters:
    """One generator's counters. Tables (``failed``, ``closes``...) map a reason or a
    close code to how many times it happened."""

    opened: int = 0
    """Steady connections opened by ``Open`` orders."""
    attempts: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    """Steady connections that could not be opened (after retries), by reason."""
    closes: dict[str, int] = field(default_factory=dict)
    """Open connections closed by the server or the network, by close code."""
    reconnects: int = 0
    reconnect_failed: dict[str, int] = field(default_factory=dict)
    open_now: int = 0
    first_open_ns: int = 0
    last_open_ns: int = 0
    last_reconnect_ns: int = 0
    received: int = 0
    """Live deliveries of publications (recovered ones are ``recovered_pubs``)."""
    recovered_pubs: int = 0
    duplicates: int = 0
    gaps: int = 0
    foreign: int = 0
    """Publications without the load test's sequence number (someone else's)."""
    joins: int = 0
    leaves: int = 0
    unsubscribe_pushes: int = 0
    missing_subs: int = 0
    recovered_ok: int = 0
    recovered_failed: int = 0
    discarded: int = 0
    last_recv_ns: int = 0
    by_source: dict[str, int] = field(default_factory=dict)
    """Connections opened (steady, reconnects and churn) per local source address."""
    latency: Histogram = field(default_factory=Histogram)
    """Publish-to-receive latency of live deliveries, microseconds."""
    connect_latency: Histogram = field(default_factory=Histogram)
    churn_opened: int = 0
    churn_failed: dict[str, int] = field(default_factory=dict)
    churn_closed: int = 0
    churn_received: int = 0
    subscribe_latency: Histogram = field(default_factory=Histogram)

    @staticmethod
    def fail(table: dict[str, int], reason: str) -> None:
        table[reason] = table.get(reason, 0) + 1


@dataclass(frozen=True, slots=True)
class FinalCounts:
    """A generator's counters at the end, with what its steady users should have got."""

    counters: Counters
    expected: int
    """Publications to the channels of users subscribed from the start."""
    tail: int
    """Of those, the ones that never arrived (beyond the last one received)."""
