"""Warnings about failures that repeat per request, at most one every few seconds.

A backend that refuses commands while it still answers pings (Redis out of memory, a
read-only replica) fails every connect and publish with error 100, and nothing else
says why: the links are up and ``/readyz`` is 200. Logging each failure would flood the
log in a connect storm; logging none leaves operators blind. :class:`RateLimitedLog`
writes the first failure at once, then at most one line per ``interval`` seconds, with
the latest reason and how many failures it stands for.
"""

from __future__ import annotations

import logging
import time

__all__ = ["RateLimitedLog"]


class RateLimitedLog:
    """At most one line per ``interval`` seconds from one place in the code (a warning,
    unless ``level`` says otherwise)."""

    __slots__ = ("_last", "_level", "_logger", "_suppressed", "interval", "what")

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        interval: float = 10.0,
        level: int = logging.WARNING,
    ) -> None:
        self._logger = logger
        self._level = level
        self.what = what
        self.interval = interval
        self._last = -interval  # the first failure is reported at once
        self._suppressed = 0

    def failed(self, detail: str, reason: BaseException) -> None:
        """Report one failure (``detail``: the command, ``reason``: why)."""
        self.note(f"failing with error 100 (temporary): {detail}: {reason}")

    def note(self, text: str) -> None:
        """Report one occurrence: ``<what> <text>``, unless one was reported within
        the interval (then it is counted in the next report)."""
        now = time.monotonic()
        if now - self._last < self.interval:
            self._suppressed += 1
            return
        more, self._suppressed, self._last = self._suppressed, 0, now
        self._logger.log(
            self._level,
            "%s %s%s",
            self.what,
            text,
            f" ({more} more since the last report)" if more else "",
        )
