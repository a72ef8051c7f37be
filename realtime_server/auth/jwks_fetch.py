"""Fetching the identity provider's key set, and keeping it fresh.

:class:`JwksRefresher` is the only network of token verification; the verifier reads
its :attr:`~JwksRefresher.current` set (it is the verifier's
:class:`~.tokens.KeySource`). One per process, shared by every connection, with one
aiohttp session.

- The set is fetched when the node starts and every ``REALTIME_JWT_JWKS_REFRESH``
  seconds; after a failure, sooner (from ``REALTIME_JWT_JWKS_MIN_INTERVAL``, doubling
  up to the refresh period), so that a node that started while the provider was down
  does not wait five minutes to become ready.
- A token whose ``kid`` is not in the set triggers a refetch at most once per
  ``REALTIME_JWT_JWKS_MIN_INTERVAL`` (any fetch counts): a flood of made-up ``kid`` s
  costs the provider one request per interval. Connects arriving while a fetch is in
  flight wait for that fetch (a key rotation makes many clients present the new
  ``kid`` at once); the others are refused at once.
- Each fetch: GET, no redirects, at most :data:`MAX_BYTES` read (streamed; the
  connection is dropped past it), ``REALTIME_JWT_JWKS_TIMEOUT`` seconds in all.
- A failed fetch (timeout, connection, status other than 200, a redirect, too large,
  not a usable key set) keeps the last good set. It is counted by kind, logged once
  per episode of failures, and shown under ``degraded`` in ``/readyz``; before any set
  was fetched, ``/readyz`` answers 503 (tokens that need the set get error 100).

Nothing logged here holds more of the URL than its host.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final

import aiohttp

from .. import __version__
from .jwks import JwksError, JwkSet, check_jwks_url, parse_jwks

if TYPE_CHECKING:
    from ..config import Settings
    from ..health import Health
    from ..metrics import Metrics

__all__ = ["MAX_BYTES", "JwksFetchError", "JwksRefresher", "check_key_set", "fetch_key_set"]

logger = logging.getLogger("realtime_server.jwks")

MAX_BYTES: Final = 1 << 20
"""Largest key-set document read (1 MiB; providers serve 1-5 KiB)."""
_CHUNK: Final = 64 * 1024


class JwksFetchError(Exception):
    """A fetch failed. ``kind`` (the metric label) and ``detail`` are safe to log."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


def _session(timeout: float) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=timeout),
        connector=aiohttp.TCPConnector(limit=4),
        cookie_jar=aiohttp.DummyCookieJar(),  # nothing the provider sets is sent back
        headers={"User-Agent": f"realtime-server/{__version__}", "Accept": "application/json"},
    )


async def _read(session: aiohttp.ClientSession, url: str, within: float, max_bytes: int) -> bytes:
    try:
        async with (
            asyncio.timeout(within),
            session.get(url, allow_redirects=False) as resp,
        ):
            if 300 <= resp.status < 400:
                raise JwksFetchError("redirect", f"HTTP {resp.status} (not followed)")
            if resp.status != 200:
                raise JwksFetchError("status", f"HTTP {resp.status}")
            if resp.content_length is not None and resp.content_length > max_bytes:
                raise JwksFetchError("too_large", f"more than {max_bytes} bytes")
            chunks: list[bytes] = []
            size = 0
            async for chunk in resp.content.iter_chunked(_CHUNK):
                size += len(chunk)
                if size > max_bytes:  # leaving the block drops the connection
                    raise JwksFetchError("too_large", f"more than {max_bytes} bytes")
                chunks.append(chunk)
            return b"".join(chunks)
    except TimeoutError:
        raise JwksFetchError("timeout", f"no complete answer within {within:g} s") from None
    except (aiohttp.ClientError, OSError) as exc:
        raise JwksFetchError("connection", type(exc).__name__) from None


async def fetch_key_set(
    session: aiohttp.ClientSession,
    url: str,
    allowed: Iterable[str],
    within: float,
    max_bytes: int = MAX_BYTES,
) -> JwkSet:
    """GET ``url`` and parse it as a key set (one attempt, ``within`` seconds).

    Raises:
        JwksFetchError: on any failure (``invalid`` when the body is not a usable set).
    """
    body = await _read(session, url, within, max_bytes)
    try:
        return parse_jwks(body, allowed)
    except JwksError as exc:
        raise JwksFetchError("invalid", exc.args[0]) from None


class JwksRefresher:
    """The current key set of one process, refreshed in the background (see the module
    docstring). Call :meth:`start` in the running loop, :meth:`close` at the end."""

    def __init__(
        self,
        url: str,
        allowed: Iterable[str],
        *,
        refresh: float = 300.0,
        min_interval: float = 10.0,
        timeout: float = 5.0,
        max_bytes: int = MAX_BYTES,
    ) -> None:
        self.url = url
        self.host = check_jwks_url(url)
        self.allowed = frozenset(allowed)
        self.refresh = refresh
        self.min_interval = min_interval
        self.timeout = timeout
        self.max_bytes = max_bytes
        self._current: JwkSet | None = None
        self.fetched_at: float | None = None
        """Wall-clock time of the last successful fetch."""
        self.fetches_total = 0
        self.refetches_total = 0
        """Fetches caused by an unknown ``kid``."""
        self.failures: Counter[str] = Counter()
        self.failing: str | None = None
        """The kind of the last failure while an episode of failures lasts, else None."""
        self._failing_since = 0.0
        self._consecutive = 0
        self._last_attempt = -math.inf  # monotonic
        self._inflight: asyncio.Task[bool] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(cls, settings: Settings, allowed: Iterable[str]) -> JwksRefresher:
        assert settings.jwt_jwks_url is not None
        return cls(
            settings.jwt_jwks_url,
            allowed,
            refresh=settings.jwt_jwks_refresh,
            min_interval=settings.jwt_jwks_min_interval,
            timeout=settings.jwt_jwks_timeout,
        )

    @property
    def current(self) -> JwkSet | None:
        return self._current

    # --- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Open the session, make the first fetch (awaited, bounded by the timeout; a
        failure is logged, not raised) and start the refresh loop."""
        if self._session is not None:
            return
        self._session = _session(self.timeout)
        await asyncio.shield(self._begin_fetch())
        self._task = asyncio.get_running_loop().create_task(self._refresh_loop())

    async def close(self) -> None:
        tasks = [t for t in (self._task, self._inflight) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._task = self._inflight = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _refresh_loop(self) -> None:
        while True:
            if self.failing is None:
                delay = self.refresh
            else:  # retry sooner, backing off
                delay = min(self.refresh, self.min_interval * 2.0 ** min(self._consecutive - 1, 16))
            # Jitter: the nodes of a deployment start together; they need not fetch together.
            await asyncio.sleep(max(delay, 0.001) * random.uniform(0.9, 1.0))
            await asyncio.shield(self._inflight or self._begin_fetch())

    # --- the key source (tokens.KeySource) ---------------------------------------------

    async def refetch_unknown(self) -> bool:
        if self._session is None:
            return False
        task = self._inflight
        if task is None:
            if time.monotonic() - self._last_attempt < self.min_interval:
                return False  # fetched recently: the kid is made up, or not published yet
            self.refetches_total += 1
            task = self._begin_fetch()
        # Shielded: a connect that goes away does not cancel the fetch others wait for.
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
            return False  # the fetch was cancelled (the node is closing), not this connect

    def _begin_fetch(self) -> asyncio.Task[bool]:
        self._last_attempt = time.monotonic()
        task = asyncio.get_running_loop().create_task(self._fetch())
        self._inflight = task
        task.add_done_callback(self._fetch_done)
        return task

    def _fetch_done(self, task: asyncio.Task[bool]) -> None:
        if self._inflight is task:
            self._inflight = None
        if not task.cancelled() and task.exception() is not None:
            logger.error("key set fetch failed unexpectedly", exc_info=task.exception())

    async def _fetch(self) -> bool:
        session = self._session
        if session is None:
            return False
        self.fetches_total += 1
        try:
            keys = await fetch_key_set(
                session, self.url, self.allowed, self.timeout, self.max_bytes
            )
        except JwksFetchError as exc:
            self._failed(exc)
            return False
        self._apply(keys)
        return True

    def _failed(self, exc: JwksFetchError) -> None:
        self.failures[exc.kind] += 1
        self._consecutive += 1
        if self.failing is None:  # once per episode
            self._failing_since = time.time()
            if self._current is None:
                logger.warning(
                    "key set from %s: fetch failed (%s); tokens signed by the provider get "
                    "error 100 until a fetch succeeds",
                    self.host,
                    exc,
                )
            else:
                logger.warning(
                    "key set from %s: refresh failed (%s); keeping the last good set (%d keys)",
                    self.host,
                    exc,
                    len(self._current),
                )
        self.failing = exc.kind

    def _apply(self, keys: JwkSet) -> None:
        previous = self._current
        if self.failing is not None:
            logger.info(
                "key set from %s: fetched again after %d failed attempts",
                self.host,
                self._consecutive,
            )
        self._current = keys
        self.fetched_at = time.time()
        self.failing = None
        self._consecutive = 0
        if previous is None or previous.kids != keys.kids or previous.skipped != keys.skipped:
            logger.info(
                "key set from %s: %d keys (kids %s)%s",
                self.host,
                len(keys),
                ", ".join(keys.kids) or "none",
                f"; skipped {'; '.join(keys.skipped)}" if keys.skipped else "",
            )

    # --- health and metrics ------------------------------------------------------------

    def missing(self) -> str | None:
        """Readiness (required): None once a set was fetched."""
        if self._current is not None:
            return None
        return f"no key set fetched yet from {self.host}" + (
            f" ({self.failing})" if self.failing else ""
        )

    def problem(self) -> str | None:
        """Degraded (watched): the refresh fails while an older set is in use."""
        if self.failing is None or self._current is None or self.fetched_at is None:
            return None
        now = time.time()
        return (
            f"key set refresh from {self.host} failing ({self.failing}) for "
            f"{now - self._failing_since:.0f} s; using the set fetched "
            f"{now - self.fetched_at:.0f} s ago"
        )

    def age(self) -> float:
        """Seconds since the current set was fetched; -1 before any was."""
        return -1.0 if self.fetched_at is None else max(0.0, time.time() - self.fetched_at)

    def bind(self, health: Health, metrics: Metrics) -> None:
        """Register the readiness checks and the metrics of the key set."""
        health.require("jwks", self.missing)
        health.watch("jwks", self.problem)
        metrics.counter(
            "jwks_fetches",
            "Key-set fetches (at start, scheduled, and on an unknown kid).",
            lambda: self.fetches_total,
        )
        metrics.counter(
            "jwks_unknown_kid_refetches",
            "Key-set fetches caused by a token with an unknown kid.",
            lambda: self.refetches_total,
        )
        metrics.counter_by(
            "jwks_fetch_failures",
            "Key-set fetches that failed, by kind.",
            "kind",
            lambda: self.failures,
        )
        metrics.gauge(
            "jwks_keys",
            "Keys in the current key set.",
            lambda: len(self._current) if self._current is not None else 0,
        )
        metrics.gauge(
            "jwks_age_seconds",
            "Seconds since the current key set was fetched (-1: none yet).",
            self.age,
        )


async def check_key_set(url: str, allowed: Iterable[str], within: float) -> tuple[bool, str]:
    """One fetch for ``realtime-server check``: (ok, a line naming the host, the key
    count and the kids, or why it failed)."""
    host = check_jwks_url(url)
    async with _session(within) as session:
        try:
            keys = await fetch_key_set(session, url, allowed, within)
        except JwksFetchError as exc:
            return False, f"key set ({host}): unreachable ({exc})"
    line: list[Any] = [
        f"key set ({host}): ok, {len(keys)} key{'s' if len(keys) != 1 else ''}",
        f"kids {', '.join(keys.kids) or 'none'}",
    ]
    if keys.skipped:
        line.append(f"skipped {'; '.join(keys.skipped)}")
    return True, "; ".join(line)
