"""``bench/instructions.py``'s in-process connects run against the current server.

The benchmark counts instructions under valgrind (by hand, not here); its driver is
plain Python that reaches into the server (``app.running``, ``WsConnection``, the event
log's recorder). This runs the driver itself for a few connects, with the SQLite log,
so that a change to those pieces breaks a test rather than the benchmark.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench"


def test_the_instruction_counts_driver_connects(tmp_path: Path) -> None:
    sys.path.insert(0, str(BENCH))
    try:
        import instructions
    finally:
        sys.path.remove(str(BENCH))
    frames_file = tmp_path / "frames.json"
    instructions.write_frames(frames_file, instructions._frames(3, documents=True))
    env = instructions.driver_env(tmp_path / "events.db")
    # Never the default spill file in the working directory: one left there by an
    # earlier run (a write timed out under valgrind) was replayed into this log.
    assert Path(env["REALTIME_EVENTS_SPILL_PATH"]).parent == tmp_path
    done = subprocess.run(
        [sys.executable, str(BENCH / "instructions.py"), "--drive", str(frames_file), "3"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    # every connect's events were written before the driver ended (3 connects, 3 each)
    import sqlite3

    with sqlite3.connect(tmp_path / "events.db") as db:
        kinds = [row[0] for row in db.execute("SELECT type FROM events")]
    assert kinds.count("connect") == 3 and kinds.count("subscribe") == 6
