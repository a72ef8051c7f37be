"""CPU per recorded event, in process: ``Journal.record`` and the batching writer.

Replays a connect churn as the server records it (per connection: connect, subscribe
``user:<id>``, disconnect, unsubscribe: four events, the same details as the server's)
through a :class:`~realtime_server.journal.Journal` in front of the real recorder
(SQLite by default, or PostgreSQL with ``--database-url``), paced at ``--rate``
connections per second, until every event is written. It reports the process's CPU
(all threads: the event loop and the store's thread) per event and per connection,
split into the loop's share (``record``, the writer task, asyncpg's encoding) and the
rest (SQLite's thread), minus the same paced loop with the log off. Medians of
``--repeat`` runs; every run checks the rows are all stored.

    .venv/bin/python bench/eventcost.py [--connections N] [--rate R] [--busy SHARE]
        [--users U] [--prefill EVENTS] [--repeat R] [--database-url URL] [--profile FILE]

``--users U``: the connections' users spread over U users (default: a new user per
connection, whose index entries all go at the end); ``--prefill EVENTS``: the SQLite
log holds that many events already (the indexes of a log that has run a while: each
new row then dirties pages all over them).

``--busy``: the share of every 1 ms tick the loop spends on other work (spinning in
pure Python in 20 us slices, a loop iteration after each), as a server's loop does:
the store's thread then competes for the GIL as it does in a server.

``--profile FILE`` writes a cProfile of one extra run's event loop (pstats format).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final, cast

ROOT: Final = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from realtime_server.events.buffer import BufferedRecorder  # noqa: E402
from realtime_server.events.model import Event, EventRecorder, EventType  # noqa: E402
from realtime_server.events.postgres import PostgresStore  # noqa: E402
from realtime_server.events.sqlite import SqliteStore  # noqa: E402
from realtime_server.events.store import EventStore  # noqa: E402
from realtime_server.journal import Journal  # noqa: E402

TICK: Final = 0.001
SLICE: Final = 0.00002
EVENTS_PER_CONNECTION: Final = 4


@dataclass(frozen=True, slots=True)
class Load:
    """``connections`` at ``rate`` per second, the loop ``busy`` (share) besides; their
    users all different (``users`` 0), or spread over ``users`` users."""

    connections: int
    rate: float
    busy: float
    users: int = 0

    def user(self, i: int) -> str:
        """The user of connection ``i``: spread (a multiplicative hash), not in order,
        so that the stores' user and channel indexes see keys as from real users."""
        return f"user-{(i * 2654435761) % self.users if self.users else i}"


@dataclass(slots=True)
class Actor:
    user: str
    client_id: str


def churn(journal: Journal, i: int, user: str) -> None:
    """What a connection's life records (commands.py, subscriptions.py, node.py)."""
    s = Actor(user, f"c5d1e0b2-1f0a-4b8e-9e55-{i:012d}")
    journal.record(EventType.CONNECT, s, remote="127.0.0.1", name="js", version="1.4.0")
    journal.record(EventType.SUBSCRIBE, s, channel=f"user:{s.user}", offset=None, server_side=True)
    now = time.time()
    journal.record(EventType.DISCONNECT, s, code=3000, duration=1.234, by="client", at=now)
    journal.record(EventType.UNSUBSCRIBE, s, channel=f"user:{s.user}", reason="disconnect")


def switches() -> int:
    """Context switches the process's threads made by waiting (Linux): mostly the
    store's thread and the loop handing the GIL to each other."""
    total = 0
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(OSError):
            for line in (task / "status").read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches"):
                    total += int(line.split(":")[1])
    return total


def spin(seconds: float) -> None:
    """Keep the loop busy (pure Python, holding the GIL) for ``seconds`` of CPU."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        sum(range(100))


async def paced(journal: Journal, load: Load) -> None:
    """``load.rate`` connections per second, in ticks of 1 ms; ``load.busy`` of each
    tick spent spinning in slices of 20 us, a loop iteration after each (as a server's
    loop wakes for every frame it reads: each iteration gives up the GIL)."""
    per_tick = max(1, round(load.rate * TICK))
    slices = round(load.busy * TICK / SLICE)
    loop = asyncio.get_running_loop()
    start = loop.time()
    for n, i in enumerate(range(0, load.connections, per_tick)):
        for j in range(i, min(i + per_tick, load.connections)):
            churn(journal, j, load.user(j))
        for _ in range(slices):
            spin(SLICE)
            await asyncio.sleep(0)
        delay = start + (n + 1) * TICK - loop.time()
        await asyncio.sleep(max(0.0, delay))


async def _written(recorder: BufferedRecorder, target: int) -> None:
    """Until ``target`` events are written (the writer's progress signals nothing)."""
    async with asyncio.timeout(120):
        while True:
            if recorder.written >= target:
                return
            await asyncio.sleep(0.005)


async def one_run(
    store: EventStore, spill: Path, load: Load, profile: Path | None
) -> dict[str, float]:
    recorder = BufferedRecorder(store, spill)
    await recorder.start()
    journal = Journal("bench-node", recorder)
    events = load.connections * EVENTS_PER_CONNECTION
    profiler = cProfile.Profile() if profile is not None else None
    try:
        cpu0, loop0, sw0 = time.process_time(), time.thread_time(), switches()
        if profiler is not None:
            profiler.enable()
        await paced(journal, load)
        await _written(recorder, events)
        if profiler is not None:
            profiler.disable()
        cpu, loop_cpu = time.process_time() - cpu0, time.thread_time() - loop0
        sw = switches() - sw0
        if recorder.dropped or recorder.spilled:
            raise SystemExit(f"dropped {recorder.dropped}, spilled {recorder.spilled}")
    finally:
        await recorder.close()
    if profiler is not None and profile is not None:
        profiler.dump_stats(profile)
    return {"cpu": cpu, "loop": loop_cpu, "switches": sw}


async def baseline(load: Load) -> dict[str, float]:
    journal = Journal("bench-node")
    cpu0, loop0, sw0 = time.process_time(), time.thread_time(), switches()
    await paced(journal, load)
    return {
        "cpu": time.process_time() - cpu0,
        "loop": time.thread_time() - loop0,
        "switches": switches() - sw0,
    }


class Collect:
    """A recorder keeping what it is given (to prefill a store)."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def record(self, event: Event) -> None:
        self.events.append(event)


async def prefill(path: Path, load: Load, rows: int) -> None:
    """``rows`` events of connections like the measured ones, written straight to the
    store at ``path`` (not measured): the indexes' size in a log that has run a while."""
    store = SqliteStore(path, timeout=60.0)
    await store.connect()
    await store.migrate()
    collect = Collect()
    journal = Journal("bench-old", cast(EventRecorder, collect))
    start = time.perf_counter()
    for i in range(-rows // EVENTS_PER_CONNECTION, 0):
        churn(journal, i, load.user(i))
        if len(collect.events) >= 1000:
            await store.write_batch(collect.events)
            collect.events.clear()
    await store.write_batch(collect.events)
    await store.close()
    print(f"  prefilled {rows:,} events in {time.perf_counter() - start:.0f} s")


def sqlite_rows(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute("SELECT count(*) FROM events").fetchone()[0])


async def new_store(args: argparse.Namespace, workdir: Path, run: int) -> EventStore:
    store: EventStore
    if args.database_url:
        store = PostgresStore(args.database_url, timeout=30.0)
    else:
        path = workdir / f"events-{run}.db"
        if args.prefill:
            shutil.copyfile(workdir / "prefill.db", path)
        store = SqliteStore(path, timeout=30.0)
    await store.connect()
    await store.migrate()
    return store


async def main_async(args: argparse.Namespace) -> None:
    load = Load(args.connections, args.rate, args.busy, args.users)
    events = load.connections * EVENTS_PER_CONNECTION
    kind = "postgres" if args.database_url else "sqlite"
    users = f"{load.users:,} users" if load.users else "a new user each"
    print(
        f"{kind}: {load.connections:,} connections ({events:,} events, {users}) at"
        f" {load.rate:,.0f} connections/s, the loop {load.busy:.0%} busy besides"
    )
    if args.prefill and args.database_url:
        raise SystemExit("--prefill: SQLite only")
    rows: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="rt-eventcost-", dir=args.tmp) as tmp:
        workdir = Path(tmp)
        if args.prefill:
            await prefill(workdir / "prefill.db", load, args.prefill)
        for run in range(args.repeat):
            base = await baseline(load)
            store = await new_store(args, workdir, run)
            got = await one_run(store, workdir / f"spill-{run}", load, None)
            if kind == "sqlite":
                stored = sqlite_rows(workdir / f"events-{run}.db") - args.prefill
                if stored != events:
                    raise SystemExit(f"run {run + 1}: {stored} rows of {events}")
            total = 1e6 * (got["cpu"] - base["cpu"]) / events
            loop = 1e6 * (got["loop"] - base["loop"]) / events
            sw = (got["switches"] - base["switches"]) / events
            rows.append({"total": total, "loop": loop, "thread": total - loop, "switches": sw})
            print(
                f"  run {run + 1}: {total:6.2f} us/event (loop {loop:.2f}, other threads"
                f" {total - loop:.2f}); {total * EVENTS_PER_CONNECTION:.1f} us per connection;"
                f" {sw:.3f} context switches per event"
            )
        if args.profile is not None:
            store = await new_store(args, workdir, args.repeat)
            await one_run(store, workdir / "spill-profile", load, args.profile)
            print(f"  profile of the loop: {args.profile}")

    def med(key: str) -> float:
        return statistics.median(r[key] for r in rows)

    print(
        f"median: {med('total'):.2f} us/event (loop {med('loop'):.2f}, other threads"
        f" {med('thread'):.2f}); {med('total') * EVENTS_PER_CONNECTION:.1f} us per connection;"
        f" {med('switches'):.3f} context switches per event"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=50_000, help="(50000)")
    parser.add_argument("--rate", type=float, default=2000.0, help="connections/s (2000)")
    parser.add_argument(
        "--users", type=int, default=0, help="users the connections spread over (0: all new)"
    )
    parser.add_argument(
        "--prefill", type=int, default=0, help="SQLite: events in the log before each run (0)"
    )
    parser.add_argument("--tmp", help="folder for the SQLite files (the system's temp)")
    parser.add_argument(
        "--busy", type=float, default=0.5, help="share of the loop spent on other work (0.5)"
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs (3)")
    parser.add_argument("--database-url", help="PostgreSQL instead of a SQLite file")
    parser.add_argument("--profile", type=Path, help="cProfile of one more run, to FILE")
    args = parser.parse_args()
    import uvloop

    uvloop.run(main_async(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
