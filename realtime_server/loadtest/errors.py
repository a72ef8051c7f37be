"""The load test's two failures: refused before anything started, or failed on the way."""

from __future__ import annotations

__all__ = ["LoadTestError", "UsageError"]


class LoadTestError(RuntimeError):
    """A step of the load test failed, ran out of time, or was refused."""


class UsageError(LoadTestError):
    """The options cannot make a run (bad values, a target that is not loopback, limits
    that cannot hold it): refused before any process starts (exit code 2)."""
