"""The result of a run, as the JSON-ready dict ``--json`` prints and :mod:`.report`
renders, built from what the phases measured."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from .counters import Counters, FinalCounts
from .limits import Limits
from .messages import PublishResult
from .netstat import ListenCounters
from .scenarios import Plan
from .stats import Histogram
from .storm import Storm

__all__ = ["FEW_CONNECTS", "ConnectPhase", "PublishPhase", "Run", "ServerSample", "build_result"]

FEW_CONNECTS: Final = 3000
"""Below this many measured connects, the server CPU per connect is noted as noisy
(measured on a 2-core machine: 1,000 connects gave 240-550 µs in six runs of the same
build, 5,000 gave 316-343)."""


@dataclass(frozen=True, slots=True)
class ServerSample:
    """CPU seconds so far and resident memory of the server's process tree."""

    cpu_s: float
    rss_kib: int


@dataclass(frozen=True, slots=True)
class ConnectPhase:
    requested: int
    opened: int
    opened_measured: int
    """Opened after the warm-up: the ones the memory and CPU per connection are over."""
    window_s: float
    before: ServerSample | None
    after: ServerSample | None


@dataclass(frozen=True, slots=True)
class PublishPhase:
    """From the first publication to the end of the drain."""

    started_ns: int
    ended_ns: int
    cpu0: ServerSample | None
    cpu1: ServerSample | None
    busy_s: float
    """CPU seconds the whole machine was busy."""
    load_s: float
    """CPU seconds of the load's processes (generators, publisher, a spawned Redis)."""
    generator_cpu_s: list[float]
    """Each generator process's CPU seconds."""

    @property
    def span_s(self) -> float:
        return max(1e-9, (self.ended_ns - self.started_ns) / 1e9)


@dataclass(frozen=True)
class Run:
    """Everything a run measured, and what it was."""

    plan: Plan
    target: dict[str, Any]
    duration_s: float
    server_pid: int | None
    connect: ConnectPhase
    publish: PublishPhase
    published: PublishResult
    finals: list[FinalCounts]
    storm: Storm | None
    limits: Limits
    listen: tuple[ListenCounters, ListenCounters] | None
    notes: list[str]


def _ms(h: Histogram, q: float) -> float:
    return round(h.percentile(q) / 1000, 2)


def _per(value: float, count: int, scale: float = 1e6, digits: int = 2) -> float | None:
    return round(value / count * scale, digits) if count else None


class _Totals:
    def __init__(self, finals: list[FinalCounts]) -> None:
        self.counters = [f.counters for f in finals]

    def __call__(self, value: Callable[[Counters], int]) -> int:
        return sum(value(c) for c in self.counters)

    def merged(self, table: Callable[[Counters], dict[str, int]]) -> dict[str, int]:
        out: dict[str, int] = {}
        for c in self.counters:
            for k, v in table(c).items():
                out[k] = out.get(k, 0) + v
        return out

    def hist(self, value: Callable[[Counters], Histogram]) -> Histogram:
        return Histogram.merged(value(c) for c in self.counters)


def _server(r: Run, deliveries: int) -> dict[str, Any]:
    server: dict[str, Any] = {"pid": r.server_pid}
    p, cp = r.publish, r.connect
    if p.cpu0 is not None and p.cpu1 is not None:
        cpu = p.cpu1.cpu_s - p.cpu0.cpu_s
        server["cpu_s"] = round(cpu, 3)
        server["cpu_us_per_delivery"] = _per(cpu, deliveries)
        server["cpu_us_per_publication"] = _per(cpu, r.published.published, digits=1)
        server["cpu_busy_percent"] = round(100 * cpu / p.span_s, 1)
    if cp.before is not None and cp.after is not None:
        measured = max(1, cp.opened_measured)
        server["rss_kib_before"] = cp.before.rss_kib
        server["rss_kib_after"] = cp.after.rss_kib
        server["rss_kib_per_conn"] = round((cp.after.rss_kib - cp.before.rss_kib) / measured, 2)
        server["cpu_us_per_connect"] = round((cp.after.cpu_s - cp.before.cpu_s) / measured * 1e6, 1)
        server["connects_measured"] = cp.opened_measured
    return server


def _connections(r: Run, t: _Totals) -> dict[str, Any]:
    cp = r.connect
    connect_lat = t.hist(lambda c: c.connect_latency)
    return {
        "requested": cp.requested,
        "opened": cp.opened,
        "failed": t.merged(lambda c: c.failed),
        "connect_rate_per_s": round(cp.opened_measured / cp.window_s, 1) if cp.window_s else None,
        "connect_p50_ms": _ms(connect_lat, 0.5),
        "connect_p99_ms": _ms(connect_lat, 0.99),
        "closed": t.merged(lambda c: c.closes),
        "reconnects": t(lambda c: c.reconnects),
        "reconnect_failed": t.merged(lambda c: c.reconnect_failed),
        "missing_subscriptions": t(lambda c: c.missing_subs),
        "open_at_end": t(lambda c: c.open_now),
        "source_addresses": len(r.limits.sources) or 1,
        "by_source": t.merged(lambda c: c.by_source),
    }


def _publications(done: PublishResult) -> dict[str, Any]:
    seconds = max(1e-9, (done.ended_ns - done.started_ns) / 1e9)
    return {
        "published": done.published,
        "errors": done.errors,
        "rate_per_s": round(done.published / seconds, 1),
        "publish_p50_ms": _ms(done.rtt, 0.5),
        "publish_p99_ms": _ms(done.rtt, 0.99),
        "behind_schedule_s": round(done.behind_s, 3),
    }


def _deliveries(r: Run, t: _Totals) -> dict[str, Any]:
    received = t(lambda c: c.received)
    last_recv = max((c.last_recv_ns for c in t.counters), default=0)
    start = r.publish.started_ns
    window = (last_recv - start) / 1e9 if last_recv > start else 0.0
    return {
        "received": received,
        "expected": sum(f.expected for f in r.finals),
        "lost": t(lambda c: c.gaps) + sum(f.tail for f in r.finals),
        "gaps": t(lambda c: c.gaps),
        "never_arrived": sum(f.tail for f in r.finals),
        "duplicates": t(lambda c: c.duplicates),
        "recovered": t(lambda c: c.recovered_pubs),
        "per_s": round(received / window, 1) if window else 0.0,
        "window_s": round(window, 3),
        "other_pushes": {"join": t(lambda c: c.joins), "leave": t(lambda c: c.leaves)},
        "discarded_by_test_hook": t(lambda c: c.discarded),
    }


def _generators(r: Run, received: int) -> dict[str, Any]:
    cpu = r.publish.generator_cpu_s
    busiest = max(cpu, default=0.0) / r.publish.span_s
    return {
        "processes": len(cpu),
        "cpu_s": round(sum(cpu), 3),
        "cpu_us_per_delivery": _per(sum(cpu), received),
        "busiest_percent": round(100 * busiest, 1),
    }


def _limits(r: Run) -> dict[str, Any]:
    lim = r.limits
    out: dict[str, Any] = {
        "open_files_per_generator": lim.generator_limit,
        "generator_needs": lim.generator_needs,
        "server_open_files": lim.server_limit,
        "server_needs": lim.server_needs,
        "ephemeral_ports": lim.ports,
        "source_addresses": list(lim.sources),
    }
    return out


def _listen(r: Run) -> dict[str, Any] | None:
    if r.listen is None:
        return None
    before, after = r.listen
    grew = after.minus(before)
    return {
        "overflows": grew.overflows,
        "drops": grew.drops,
        "before": {"overflows": before.overflows, "drops": before.drops},
        "after": {"overflows": after.overflows, "drops": after.drops},
    }


def build_result(r: Run) -> dict[str, Any]:
    """The result dict (see the README's load-test section for what each figure means)."""
    t = _Totals(r.finals)
    deliveries = _deliveries(r, t)
    received = deliveries["received"]
    p = r.publish
    server = _server(r, received + deliveries["recovered"])
    other = max(0.0, p.busy_s - p.load_s - (server.get("cpu_s") or 0.0))
    latency = t.hist(lambda c: c.latency)
    result: dict[str, Any] = {
        "scenario": r.plan.scenario,
        "plan": r.plan.describe(),
        "target": r.target,
        "duration_s": r.duration_s,
        "connections": _connections(r, t),
        "publications": _publications(r.published),
        "deliveries": deliveries,
        "latency_ms": {
            "p50": _ms(latency, 0.50),
            "p90": _ms(latency, 0.90),
            "p99": _ms(latency, 0.99),
            "p999": _ms(latency, 0.999),
            "max": round(latency.maximum() / 1000, 2),
        },
        "server": server,
        "generators": _generators(r, received),
        "limits": _limits(r),
        "listen_queue": _listen(r),
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg": [round(x, 2) for x in os.getloadavg()],
            "python": sys.version.split()[0],
            "other_load_cpus": round(other / p.span_s, 2),
            "loadtest_cpu_us_per_delivery": _per(p.load_s, received),
        },
        "notes": r.notes,
    }
    if r.plan.churn_rate > 0:
        sub_lat = t.hist(lambda c: c.subscribe_latency)
        result["churn"] = {
            "rate_per_s": r.plan.churn_rate,
            "lifetime_s": r.plan.churn_lifetime,
            "opened": t(lambda c: c.churn_opened),
            "failed": t.merged(lambda c: c.churn_failed),
            "closed": t(lambda c: c.churn_closed),
            "received": t(lambda c: c.churn_received),
            "subscribe_p50_ms": _ms(sub_lat, 0.5),
            "subscribe_p99_ms": _ms(sub_lat, 0.99),
        }
    if r.storm is not None:
        st = r.storm
        result["storm"] = {
            "drop": st.drop,
            "dropped": st.dropped,
            "reconnected": st.reconnected,
            "all_back_s": None if st.all_back_s is None else round(st.all_back_s, 3),
            "drop_took_s": round(st.drop_s, 3),
            "subscriptions_recovered": t(lambda c: c.recovered_ok),
            "subscriptions_not_recovered": t(lambda c: c.recovered_failed),
            "missed_recovered": deliveries["recovered"],
            "missed_lost": deliveries["lost"],
        }
    if other / p.span_s > 0.15:
        r.notes.append(
            f"other work on the machine took {other / p.span_s:.0%} of a CPU during the "
            "publications (noise)"
        )
    measured = server.get("connects_measured")
    if measured is not None and measured < FEW_CONNECTS:
        r.notes.append(
            f"server CPU per connect is over {measured:,} connects only: on a small machine "
            "it varies by a third between runs (more --users, or bench/connect.py, measure "
            "it steadily)"
        )
    if result["generators"]["busiest_percent"] >= 90:
        r.notes.append(
            f"a generator process was busy {result['generators']['busiest_percent']:.0f}% of "
            "a core: the generators, not the server, may have been the limit (add --procs)"
        )
    return result
