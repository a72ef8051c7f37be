"""One status line on stderr for long runs (the load test and the benchmarks)."""

from __future__ import annotations

import sys
import time

__all__ = ["ProgressLine"]


class ProgressLine:
    """Rewritten in place on a terminal (at most every ``tty_every`` seconds); a new
    line at most every 5 s when stderr is not a terminal (logs stay short)."""

    def __init__(self, enabled: bool = True, tty_every: float = 0.0) -> None:
        self.enabled = enabled
        self._tty = sys.stderr.isatty()
        self._every = tty_every if self._tty else 5.0
        self._last = 0.0
        self._width = 0

    def __call__(self, text: str, *, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < self._every:
            return
        self._last = now
        if self._tty:
            sys.stderr.write("\r" + text.ljust(self._width))
            self._width = len(text)
        else:
            sys.stderr.write(text + "\n")
        sys.stderr.flush()

    def done(self, text: str | None = None) -> None:
        """Show ``text`` (if given) and end the line."""
        if text is not None:
            self(text, force=True)
        if self.enabled and self._tty and self._width:
            sys.stderr.write("\n")
            sys.stderr.flush()
            self._width = 0
