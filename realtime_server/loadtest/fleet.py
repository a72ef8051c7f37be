"""The load's processes as the runner and the benchmarks drive them: generator
processes (:class:`Generators`) and the publisher (:class:`PublisherProcess`), over
:class:`~.pipes.Pipes`."""

from __future__ import annotations

import time
from collections.abc import Callable

from .counters import Counters, FinalCounts
from .generator import generator_main
from .messages import (
    AskStats,
    ChurnStopped,
    Drop,
    Dropped,
    Final,
    GeneratorConfig,
    Open,
    Opened,
    Progress,
    Published,
    PublisherConfig,
    PublishResult,
    Ready,
    Run,
    SetReconnect,
    Setup,
    StartChurn,
    Stats,
    StopChurn,
    Stream,
    UserSpec,
)
from .pipes import Child, Pipes
from .publisher import publisher_main
from .stats import Histogram

__all__ = ["Generators", "PublisherProcess"]

Tick = Callable[[], None] | None


class Generators:
    """``count`` generator processes; ``stats`` holds each one's latest counters."""

    def __init__(self, pipes: Pipes, count: int, cpus: list[int] | None = None) -> None:
        self.pipes = pipes
        self.children: list[Child] = [
            pipes.start(f"generator {i}", i, generator_main, cpus) for i in range(count)
        ]
        self.stats: list[Counters] = [Counters() for _ in range(count)]
        self.shares: list[int] = [0] * count
        self._waiting = [False] * count
        pipes.on(Stats, self._on_stats)

    def _on_stats(self, child: Child, message: Stats) -> None:
        self.stats[child.index] = message.counters
        self._waiting[child.index] = False

    def setup(self, configs: list[GeneratorConfig], users: list[UserSpec]) -> None:
        """Give generator ``i`` ``configs[i]`` and every n-th user from the ``i``-th on;
        wait until each minted its users' tokens."""
        n = len(self.children)
        for i, child in enumerate(self.children):
            share = users[i::n]
            self.shares[i] = len(share)
            child.send(Setup(configs[i], share))
        self.pipes.expect(self.children, Ready, 60.0 + len(users) * 0.001)

    def open(
        self,
        counts: list[int],
        firsts: list[int],
        concurrency: int,
        rate: float = 0.0,
        tick: Tick = None,
    ) -> None:
        """Generator ``i`` opens ``counts[i]`` connections from its ``firsts[i]``-th
        user on, ``concurrency`` at a time, ``rate`` per second in all (0: no limit)."""
        per_gen = rate / len(self.children) if rate > 0 else 0.0
        for child, first, count in zip(self.children, firsts, counts, strict=True):
            child.send(Open(first, count, concurrency, per_gen))
        total = sum(counts)
        timeout = 60.0 + total * 0.02 + (total / rate if rate > 0 else 0.0)
        got = self.pipes.expect(self.children, Opened, timeout, tick)
        self.stats = [m.counters for m in got]

    def ask_stats(self) -> None:
        """Ask every generator that has no question pending for its counters."""
        for i, child in enumerate(self.children):
            if not self._waiting[i]:
                self._waiting[i] = True
                child.send(AskStats())

    def refresh(self, timeout: float = 10.0) -> None:
        """Fresh counters from every generator (waits for the answers)."""
        self.ask_stats()
        deadline = time.monotonic() + timeout
        while any(self._waiting) and time.monotonic() < deadline:
            self.pipes.pump(0.05)

    def total(self, value: Callable[[Counters], int]) -> int:
        return sum(value(s) for s in self.stats)

    def merged(self, table: Callable[[Counters], dict[str, int]]) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.stats:
            for k, v in table(s).items():
                out[k] = out.get(k, 0) + v
        return out

    def latency(self) -> Histogram:
        return Histogram.merged(s.latency for s in self.stats)

    def set_reconnect(self, on: bool) -> None:
        for child in self.children:
            child.send(SetReconnect(on))

    def drop(self) -> int:
        """Every generator resets its connections; how many were open."""
        for child in self.children:
            child.send(Drop())
        return sum(m.count for m in self.pipes.expect(self.children, Dropped, 30.0))

    def start_churn(self, rate: float, lifetime: float, documents: tuple[str, ...]) -> None:
        for child in self.children:
            child.send(StartChurn(rate / len(self.children), lifetime, documents))

    def stop_churn(self, tick: Tick = None) -> None:
        for child in self.children:
            child.send(StopChurn())
        self.pipes.expect(self.children, ChurnStopped, 10.0, tick)

    def final(self, published: dict[str, int]) -> list[FinalCounts]:
        for child in self.children:
            child.send(Final(published))
        return self.pipes.expect(self.children, FinalCounts, 60.0)

    def cpu_s(self) -> list[float]:
        """Each generator's CPU seconds so far."""
        return [c.cpu_s() for c in self.children]


class PublisherProcess:
    """The publisher process; ``published`` and ``errors`` follow its progress."""

    def __init__(self, pipes: Pipes, config: PublisherConfig, cpus: list[int] | None) -> None:
        self.pipes = pipes
        self.config = config
        self.child = pipes.start("publisher", 0, publisher_main, config, cpus)
        self.published = 0
        self.errors = 0
        pipes.on(Progress, self._on_progress)

    def _on_progress(self, child: Child, message: Progress) -> None:
        self.published, self.errors = message.published, message.errors

    def run(self, duration: float | None, streams: tuple[Stream, ...] | None = None) -> None:
        """Start a run (see :class:`~.messages.Run`); :meth:`done` or :meth:`wait`
        give its result."""
        self.published = self.errors = 0
        self.child.send(Run(duration, streams))

    def done(self) -> PublishResult | None:
        """The run's result if it arrived (read by an earlier pump), else None."""
        box = self.child.inbox.get(Published)
        return box.pop(0).result if box else None

    def wait(self, timeout: float, tick: Tick = None) -> PublishResult:
        return self.pipes.expect([self.child], Published, timeout, tick)[0].result

    def cpu_s(self) -> float:
        return self.child.cpu_s()
