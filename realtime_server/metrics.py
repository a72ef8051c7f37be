"""Counters and gauges for ``/metrics`` (Prometheus text exposition, version 0.0.4).

Plain integer attributes: the hot path increments them without locks or lookups
(one ``+=`` per publication, never per subscriber).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping

__all__ = ["Metrics"]


class Metrics:
    """The node's counters. Gauges are read through callables at scrape time."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.connections_total = 0
        self.connect_rejected: Counter[int] = Counter()
        self.closes: Counter[int] = Counter()
        self.commands_total = 0
        self.command_errors: Counter[int] = Counter()
        self.publications_total = 0
        self.deliveries_total = 0
        self.drops_total = 0
        self.slow_disconnects_total = 0
        self.rate_limited_total = 0
        self.revocations_total = 0
        self.gauges: dict[str, tuple[str, Callable[[], float]]] = {}
        self.counters: dict[str, tuple[str, Callable[[], float]]] = {}
        self.labeled: dict[str, tuple[str, str, Callable[[], Mapping[str, float]]]] = {}

    def gauge(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        self.gauges[name] = (help_text, read)

    def counter(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        """A monotonic count read at scrape time (exposed as ``realtime_<name>_total``)."""
        self.counters[name] = (help_text, read)

    def counter_by(
        self, name: str, help_text: str, label: str, read: Callable[[], Mapping[str, float]]
    ) -> None:
        """Monotonic counts by ``label`` value, read at scrape time
        (``realtime_<name>_total{<label>="..."}``)."""
        self.labeled[name] = (help_text, label, read)

    def render(self) -> bytes:
        lines: list[str] = []

        def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
            lines.append(f"# HELP realtime_{name} {help_text}")
            lines.append(f"# TYPE realtime_{name} {kind}")
            for labels, value in samples:
                lines.append(f"realtime_{name}{labels} {value:g}")

        for name, (help_text, read) in sorted(self.gauges.items()):
            metric(name, "gauge", help_text, [("", read())])
        for name, (help_text, read) in sorted(self.counters.items()):
            metric(f"{name}_total", "counter", help_text, [("", read())])
        for name, (help_text, label, read_by) in sorted(self.labeled.items()):
            samples = [(f'{{{label}="{k}"}}', v) for k, v in sorted(read_by().items())]
            metric(f"{name}_total", "counter", help_text, samples)
        metric(
            "connections_total",
            "counter",
            "Connections accepted (connect succeeded).",
            [("", self.connections_total)],
        )
        metric(
            "connect_rejected_total",
            "counter",
            "Connect attempts refused, by code.",
            [(f'{{code="{c}"}}', n) for c, n in sorted(self.connect_rejected.items())],
        )
        metric(
            "closes_total",
            "counter",
            "Connections closed by the server, by close code.",
            [(f'{{code="{c}"}}', n) for c, n in sorted(self.closes.items())],
        )
        metric(
            "commands_total", "counter", "Client commands processed.", [("", self.commands_total)]
        )
        metric(
            "command_errors_total",
            "counter",
            "Error replies sent, by error code.",
            [(f'{{code="{c}"}}', n) for c, n in sorted(self.command_errors.items())],
        )
        metric(
            "publications_total",
            "counter",
            "Publications fanned out by this node.",
            [("", self.publications_total)],
        )
        metric(
            "deliveries_total",
            "counter",
            "Frames written to subscribers by fan-out.",
            [("", self.deliveries_total)],
        )
        metric(
            "drops_total",
            "counter",
            "Deliveries skipped (subscriber closing or over its outbox bound).",
            [("", self.drops_total)],
        )
        metric(
            "slow_disconnects_total",
            "counter",
            "Clients closed with 3008 (slow).",
            [("", self.slow_disconnects_total)],
        )
        metric(
            "rate_limited_total",
            "counter",
            "Commands refused with 111.",
            [("", self.rate_limited_total)],
        )
        metric(
            "revocations_total",
            "counter",
            "Revocations received by this node.",
            [("", self.revocations_total)],
        )
        return ("\n".join(lines) + "\n").encode()
