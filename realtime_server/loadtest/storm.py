"""The reconnect storm: every client dropped at once, and the time until all are back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import orjson

__all__ = ["Storm", "disconnect_all"]


@dataclass
class Storm:
    """A storm in progress: ``dropped`` connections went at ``t0`` (monotonic) /
    ``t0_ns`` (wall clock, as the generators' timestamps)."""

    drop: str
    """How: ``api`` (disconnect 3001 through the server API), ``restart``, ``network``."""
    dropped: int
    reconnects_before: int
    """The generators' reconnect count when it began."""
    t0: float
    t0_ns: int
    drop_s: float
    """How long dropping everyone took."""
    reconnected: int = 0
    all_back_s: float | None = None
    """Seconds from the drop to the last client back; None until all are."""

    @property
    def complete(self) -> bool:
        return self.all_back_s is not None or self.dropped == 0

    def track(self, reconnects: int, last_reconnect_ns: int) -> None:
        """Update from the generators' counters (their sums, and their latest reconnect)."""
        self.reconnected = reconnects - self.reconnects_before
        if self.all_back_s is None and self.dropped and self.reconnected >= self.dropped:
            self.all_back_s = max(0.0, (last_reconnect_ns - self.t0_ns) / 1e9)

    @classmethod
    def begin(cls, drop: str, reconnects: int, dropper: Callable[[], int]) -> Storm:
        """Drop every client now with ``dropper`` (returns how many were dropped)."""
        t0_ns, t0 = time.time_ns(), time.monotonic()
        dropped = dropper()
        return cls(drop, dropped, reconnects, t0, t0_ns, time.monotonic() - t0)


async def disconnect_all(api_url: str, api_key: str, users: list[str]) -> int:
    """The server API's ``disconnect`` (code 3001) for every user, 64 at a time; returns
    how many calls failed."""
    import aiohttp

    url = api_url.rstrip("/") + "/api/disconnect"
    headers = {"X-API-Key": api_key, "Content-Type": "application/json"}
    errors = 0
    it = iter(users)
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=64), timeout=aiohttp.ClientTimeout(total=10)
    ) as session:

        async def worker() -> None:
            nonlocal errors
            for user in it:
                body = orjson.dumps(
                    {"user": user, "disconnect": {"code": 3001, "reason": "loadtest storm"}}
                )
                try:
                    async with session.post(url, data=body, headers=headers) as resp:
                        answer = await resp.read()
                        if resp.status != 200 or answer.startswith(b'{"error"'):
                            errors += 1
                except (aiohttp.ClientError, TimeoutError):
                    errors += 1

        await asyncio.gather(*(worker() for _ in range(64)))
    return errors
