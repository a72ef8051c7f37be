"""The spill file: events the store could not take, on local disk until it can.

An append-only file of JSON lines (one event each, see ``store.event_to_json``), each
appended batch flushed and ``fsync``'d before its events leave memory. Replay renames
the file to ``<path>.replaying`` first, so new spills go to a fresh file while the old
one is read in chunks; once every chunk is stored the replay file is deleted. A crash
at any point replays from the start of the file again: writes are idempotent on event
ids, so no event is stored twice. A torn last line (a crash in the middle of an
append, before its fsync returned) is skipped and counted.

Every method does blocking file I/O: the batching writer runs them on a thread.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import orjson

from .model import Event
from .store import event_from_json, event_to_json

__all__ = ["SpillFile"]

logger = logging.getLogger("realtime_server.events")


class SpillFile:
    """``path`` (being appended to) and ``path.replaying`` (being replayed)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.replay_path = self.path.with_name(self.path.name + ".replaying")
        self.pending = 0
        """Events in the files, not yet known to be stored."""
        self._offset = 0  # bytes of the replay file already stored

    def count(self) -> int:
        """Count the events on disk (at start); sets :attr:`pending`.

        Also ends a torn last line of the spill file with a newline, so that the next
        append starts a line of its own instead of gluing onto the torn one.
        """
        total = 0
        for path in (self.replay_path, self.path):
            try:
                with path.open("rb") as f:
                    last = b"\n"
                    for line in f:
                        if line.strip():
                            total += 1
                        last = line[-1:]
            except FileNotFoundError:
                continue
            if last != b"\n" and path == self.path:
                with path.open("ab") as f:
                    f.write(b"\n")
        self.pending = total
        return total

    def append(self, events: Sequence[Event]) -> None:
        """Append ``events`` durably (flushed and fsync'd). Raises ``OSError``."""
        if not events:
            return
        data = b"".join(
            orjson.dumps(
                event_to_json(e),
                default=str,
                option=orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS,
            )
            for e in events
        )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        self.pending += len(events)

    def begin_replay(self) -> bool:
        """Make the replay file ready (renaming the spill file if no replay is under
        way); returns whether there is anything to replay."""
        if self.replay_path.exists():
            return True
        if not self.path.exists():
            self.pending = 0
            return False
        os.replace(self.path, self.replay_path)
        self._offset = 0
        return True

    def read_chunk(self, limit: int) -> tuple[list[Event], int, int]:
        """Up to ``limit`` events from the replay file after what was stored.

        Returns the events, the file offset after them (pass it to :meth:`advance`
        once they are stored) and the number of unreadable lines skipped.
        """
        events: list[Event] = []
        bad = 0
        try:
            f = self.replay_path.open("rb")
        except FileNotFoundError:  # replayed and deleted by another process sharing it
            return events, self._offset, bad
        with f:
            f.seek(self._offset)
            position = self._offset
            while len(events) < limit:
                line = f.readline()
                if not line:
                    break
                position += len(line)
                if not line.strip():
                    continue
                try:
                    events.append(event_from_json(orjson.loads(line)))
                except (ValueError, KeyError, TypeError):
                    bad += 1
        if bad:
            logger.error("event spill %s: skipped %d unreadable lines", self.replay_path, bad)
        return events, position, bad

    def advance(self, offset: int, stored: int) -> None:
        self._offset = offset
        self.pending = max(0, self.pending - stored)

    def finish_replay(self) -> None:
        """Delete the fully stored replay file."""
        self.replay_path.unlink(missing_ok=True)
        self._offset = 0
        if not self.path.exists():
            self.pending = 0
