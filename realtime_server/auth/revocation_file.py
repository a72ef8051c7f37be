"""The embedded engine's revocations on disk, so that a restart keeps them
(``REALTIME_REVOCATIONS_PATH``).

JSON lines, one revocation each, appended and fsync'd before the revocation is
acknowledged. Read once at start, and rewritten (atomically) with only the revocations
that still matter then and whenever the lines appended since outnumber them (the store
decides, :meth:`JsonLinesRevocationFile.rewrite`): it never grows far past one token
lifetime's worth. Appends and rewrites take turns (a lock), and a rewrite reads what
to keep once it has its turn, so no acknowledged revocation is left out. A line torn
by a crash mid-append, or otherwise unreadable, is skipped and counted.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import Any

import orjson

from .revocation import Revocation

__all__ = ["JsonLinesRevocationFile"]

logger = logging.getLogger("realtime_server.revocation")


def _line(revocation: Revocation) -> bytes:
    fields: dict[str, Any] = {"kind": revocation.kind, "keep_until": revocation.keep_until}
    if revocation.kind == "jti":
        fields["jti"] = revocation.jti
    else:
        fields["user"] = revocation.user
        fields["issued_before"] = revocation.issued_before
    return orjson.dumps(fields) + b"\n"


def _parse(raw: bytes) -> Revocation | None:
    try:
        fields = orjson.loads(raw)
        keep_until = float(fields["keep_until"])
        if fields["kind"] == "jti":
            return Revocation("jti", jti=str(fields["jti"]), keep_until=keep_until)
        if fields["kind"] == "user":
            return Revocation(
                "user",
                user=str(fields["user"]),
                issued_before=float(fields["issued_before"]),
                keep_until=keep_until,
            )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        pass
    return None


class JsonLinesRevocationFile:
    """One process's revocation file (see the module docstring); implements
    :class:`.revocation.RevocationFile`."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.appended = 0
        """Lines appended since the file was last written whole."""
        self._turn = asyncio.Lock()

    def load(self, now: float) -> list[Revocation]:
        """The revocations that still matter at ``now``; rewrites the file with only
        those. Raises OSError when the file cannot be read or rewritten."""
        kept: list[Revocation] = []
        skipped = 0
        try:
            with open(self.path, "rb") as f:
                for raw in f:
                    if not raw.strip():
                        continue
                    revocation = _parse(raw)
                    if revocation is None:
                        skipped += 1
                    elif revocation.keep_until is not None and revocation.keep_until > now:
                        kept.append(revocation)
        except FileNotFoundError:  # created by the first revocation, in a folder made now
            folder = os.path.dirname(os.path.abspath(self.path))
            os.makedirs(folder, exist_ok=True)
            if not os.access(folder, os.W_OK | os.X_OK):
                raise PermissionError(f"{folder} is not writable") from None
            return kept
        if skipped:
            logger.warning("%s: skipped %d unreadable revocation lines", self.path, skipped)
        self._rewrite(kept)
        return kept

    def _rewrite(self, revocations: list[Revocation]) -> None:
        self.appended = 0
        folder = os.path.dirname(os.path.abspath(self.path))
        temporary = f"{self.path}.tmp"
        with open(temporary, "wb") as f:
            f.write(b"".join(_line(r) for r in revocations))
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, self.path)
        directory = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    async def append(self, revocation: Revocation) -> None:
        """Append one revocation, on disk when this returns. Raises OSError."""
        async with self._turn:
            await asyncio.to_thread(self._append, _line(revocation))
            self.appended += 1

    async def rewrite(self, live: Callable[[], list[Revocation]]) -> None:
        """Write the file whole with ``live()``, read once no append is under way.
        Raises OSError (the file is left as it was)."""
        async with self._turn:
            await asyncio.to_thread(self._rewrite, live())

    def _append(self, line: bytes) -> None:
        with open(self.path, "ab") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
