"""Instructions per connect: the connect's cost in a unit this machine's speed does not move.

CPU time per connect (``bench/connect.py``, ``loadtest --scenario churn``) follows the
machine: on the shared 2-core development VM the same build read a third more on one
day than the day before, and twice as much from one minute to the next. This counts the
instructions the server executes instead, under valgrind (``cachegrind``, no cache
simulation), which does not depend on how fast the machine is: two builds compare on
any day, to within about 1% (``server``, ``server+docs``: 0.4% between runs).

The connects run in process: the real server (``app.running``, memory engine, settings
as in the other benchmarks) and real connection objects, fed the upgrade request and
the ``connect`` frame through fake transports (no sockets: the kernel's share is not
counted, nor uvloop's I/O). Each kind runs twice, with ``--base`` and with ``--connects``
connects; the difference over the extra connects is the figure (start-up, imports and
the warm-up cancel out). Tokens are made beforehand, outside the count.

- ``server``: a user channel only, the event log off;
- ``server+docs``: each token also grants a ``document:`` channel shared by 5 users
  (presence, join/leave pushes to the others): the churn scenario's connect, log off;
- ``server+docs+sqlite``: the same with the SQLite event log, every event written
  before the count ends. Its writer thread batches by timing, and valgrind runs one
  thread at a time: this one moved between 807,000 and 907,000 in two runs of the same
  build (``bench/eventcost.py`` measures the log's own cost steadily).

    .venv/bin/python bench/instructions.py [--servers server,server+docs,...]
        [--connects N] [--base N] [--json]

Needs valgrind (``apt-get install valgrind``); about 20 s per kind.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Final

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import JWT_SECRET, SERVER_ENV, WS_PATH

KINDS: Final = ("server", "server+docs", "server+docs+sqlite")
PARTICIPANTS: Final = 5
_REFS: Final = re.compile(r"I\s+refs:\s+([\d,]+)")


# --- the connects (run under valgrind as ``instructions.py --drive FRAMES N``) -----------


class _Transport:
    """Takes the server's writes; the connect is answered at the first text frame."""

    def __init__(self, answered: asyncio.Future[None]) -> None:
        self.answered = answered
        self.closing = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def write(self, data: bytes) -> None:
        if data[:1] == b"\x81" and not self.answered.done():
            self.answered.set_result(None)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        pass


async def _drive(frames: list[bytes]) -> None:
    from realtime_server import gcpolicy
    from realtime_server.app import running
    from realtime_server.config import Settings
    from realtime_server.loadtest.wsclient import upgrade_request
    from realtime_server.wsconn import WsConnection

    async with running(Settings.from_env()) as server:
        gcpolicy.tune()  # as `serve` runs
        gcpolicy.freeze_startup()
        loop = asyncio.get_running_loop()
        endpoint = server.ws.endpoint
        request, _ = upgrade_request("127.0.0.1", 80, WS_PATH)
        kept = []
        for frame in frames:
            answered = loop.create_future()
            conn = WsConnection(endpoint)
            conn.connection_made(_Transport(answered))  # type: ignore[arg-type]
            conn.data_received(request + frame)
            await answered
            kept.append(conn)
        await server.node.journal.recorder.close()  # every event written: all counted
        sys.stdout.flush()
        os._exit(0)  # the connections stay open: no shutdown to count


# --- the counts ---------------------------------------------------------------------------


def _frames(n: int, documents: bool) -> list[bytes]:
    import jwt

    from realtime_server.loadtest.wsclient import client_frame

    now = int(time.time())
    frames = []
    for i in range(n):
        claims: dict[str, Any] = {"sub": f"u{i}", "exp": now + 86400}
        if documents:
            claims["channels"] = [f"document:d{i // PARTICIPANTS}"]
        token = jwt.encode(claims, JWT_SECRET, algorithm="HS256")
        frames.append(client_frame(json.dumps({"id": 1, "connect": {"token": token}}).encode()))
    return frames


def write_frames(path: Path, frames: list[bytes]) -> None:
    """``frames`` for ``--drive`` (bytes as latin-1 text in JSON)."""
    path.write_text(json.dumps([f.decode("latin-1") for f in frames]))


def driver_env(sqlite_path: Path | None) -> dict[str, str]:
    """The environment of a ``--drive`` run: the benchmarks' server settings, a free
    port, the SQLite event log at ``sqlite_path`` (None: the log off) with its spill
    file beside it."""
    env = {
        **os.environ,
        **SERVER_ENV,
        "REALTIME_PORT": "0",
        "REALTIME_EVENTS_ENABLED": "false" if sqlite_path is None else "true",
        "PYTHONHASHSEED": "0",  # the same dict layouts every run
        "REALTIME_REVOCATIONS_PATH": "",  # memory only: nothing left in the working folder
    }
    if sqlite_path is not None:
        env["REALTIME_SQLITE_PATH"] = str(sqlite_path)
        # Its own spill file, never the default one in the working directory (a spill
        # left there by another run would be replayed into this log, and counted), and
        # a store timeout valgrind's slowness cannot reach (a timed-out batch spills).
        env["REALTIME_EVENTS_SPILL_PATH"] = str(sqlite_path.with_suffix(".spill.jsonl"))
        env["REALTIME_EVENTS_TIMEOUT"] = "120"
    env.pop("REALTIME_API_KEY", None)
    return env


def _count(kind: str, frames_file: Path, n: int, workdir: Path) -> int:
    sqlite = workdir / f"events-{kind}-{n}.db" if kind.endswith("+sqlite") else None
    env = driver_env(sqlite)
    command = [
        "valgrind",
        "--tool=cachegrind",
        "--cache-sim=no",
        "--cachegrind-out-file=/dev/null",
        sys.executable,
        str(Path(__file__).resolve()),
        "--drive",
        str(frames_file),
        str(n),
    ]
    done = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=900, check=False
    )
    found = _REFS.search(done.stderr)
    if done.returncode != 0 or found is None:
        tail = "\n".join(done.stderr.splitlines()[-15:])
        raise SystemExit(f"instructions: the {kind} run failed ({done.returncode}):\n{tail}")
    return int(found.group(1).replace(",", ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", default="server,server+docs")
    parser.add_argument("--connects", type=int, default=500)
    parser.add_argument("--base", type=int, default=100)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--drive", nargs=2, metavar=("FRAMES", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.drive:
        import uvloop

        frames = [f.encode("latin-1") for f in json.loads(Path(args.drive[0]).read_text())]
        uvloop.run(_drive(frames[: int(args.drive[1])]))
        return
    kinds = [k for k in args.servers.split(",") if k]
    unknown = set(kinds) - set(KINDS)
    if unknown:
        parser.error(f"unknown servers {sorted(unknown)}; choose from {', '.join(KINDS)}")
    if not 0 < args.base < args.connects:
        parser.error("--base must be above 0 and below --connects")
    if shutil.which("valgrind") is None:
        sys.exit("instructions: valgrind not found (apt-get install valgrind)")
    extra = args.connects - args.base
    table: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-instructions-") as tmp:
        workdir = Path(tmp)
        for kind in kinds:
            frames_file = workdir / f"{kind}.frames"
            write_frames(frames_file, _frames(args.connects, "docs" in kind))
            counts = []
            for n in (args.base, args.connects):
                print(f"{kind}: {n} connects under valgrind...", file=sys.stderr, flush=True)
                counts.append(_count(kind, frames_file, n, workdir))
            table[kind] = {"instructions_per_connect": (counts[1] - counts[0]) / extra}
    if args.json:
        print(json.dumps(table, indent=2))
        return
    print(f"instructions per connect, in process, over {extra} connects ({args.base} -> "
          f"{args.connects}); the machine's speed does not move them")  # fmt: skip
    print("| server | instructions per connect |")
    print("|---|---:|")
    for kind, row in table.items():
        print(f"| {kind} | {row['instructions_per_connect']:,.0f} |")


if __name__ == "__main__":
    main()
