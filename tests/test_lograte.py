"""RateLimitedLog: the first failure at once, then one line per interval with a count."""

from __future__ import annotations

import logging

import pytest

from realtime_server import lograte
from realtime_server.lograte import RateLimitedLog


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


def test_first_at_once_then_one_per_interval_with_the_count(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    monkeypatch.setattr(lograte, "time", clock)
    log = RateLimitedLog(logging.getLogger("t.lograte"), "things", interval=10.0)
    with caplog.at_level(logging.WARNING, logger="t.lograte"):
        log.failed("a", RuntimeError("down"))
        for _ in range(3):
            clock.now += 1
            log.failed("b", RuntimeError("still down"))
        clock.now += 7  # 10 s after the first report
        log.failed("c", RuntimeError("refused"))
        clock.now += 10
        log.failed("d", RuntimeError("again"))
    assert [r.getMessage() for r in caplog.records] == [
        "things failing with error 100 (temporary): a: down",
        "things failing with error 100 (temporary): c: refused (3 more since the last report)",
        "things failing with error 100 (temporary): d: again",
    ]
