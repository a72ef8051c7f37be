"""The subscribe proxy: the backend decides who may subscribe to a channel.

For a namespace with ``subscribe_proxy`` and a ``subscribe`` without a subscription
token, the node asks ``REALTIME_SUBSCRIBE_PROXY_URL``, in Centrifugo's HTTP
subscribe-proxy shape, so that a backend written for Centrifugo answers unchanged.

Request: ``POST``, JSON body ``{"client", "transport": "websocket", "protocol": "json",
"encoding": "json", "user", "channel", "data"?}`` (``data``: what the client sent with
its subscribe, if anything), with the WebSocket handshake's headers named in
``REALTIME_PROXY_HTTP_HEADERS`` (kept per connection only when that is set).

Answer (status 200, a JSON object), read in Centrifugo's order:

- ``{"disconnect": {"code": 4000-4999, "reason"}}``: the connection is closed with that
  code (the SDKs reconnect after 4000-4499, not after 4500-4999);
- ``{"error": {"code": 103 or 400-1999, "message", "temporary"?}}``: the client gets that
  error reply;
- ``{"result": {...}}``: subscribed; ``info`` (any JSON), or ``b64info`` (base64 of JSON),
  becomes the subscription's ``chan_info``. ``expire_at``, ``data`` and ``override`` are
  not supported (ignored).

Anything else fails closed with error 100 ``temporary`` (the SDK retries with backoff),
never a subscription: no answer within ``REALTIME_PROXY_TIMEOUT`` (waiting for one of
the ``REALTIME_PROXY_MAX_CONCURRENCY`` slots included), a connection error, a status
other than 200, a body that is not JSON or over :data:`MAX_ANSWER_BYTES`, a code out of
those ranges, or an object with none of the three members (Centrifugo subscribes on
``{}``; we do not).

Headers, data and answers are never logged; failures are logged at most once a minute
per kind of failure, with a count.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol

import aiohttp
import orjson

from . import __version__, codes
from .codes import CloseCode, ErrorCode
from .errors import CommandError, ProtocolViolation
from .events import EventType
from .metrics import Histogram
from .model import RawJSON, raw_json
from .proxy_settings import header_names

if TYPE_CHECKING:
    from .config import Settings
    from .metrics import Metrics
    from .wsconn import WsConnection

__all__ = [
    "MAX_ANSWER_BYTES",
    "Allowed",
    "Denied",
    "Disconnect",
    "Failed",
    "ProxyDecision",
    "Record",
    "SubscribeProxy",
    "Subscriber",
    "parse_answer",
]

logger = logging.getLogger("realtime_server.proxy")

MAX_ANSWER_BYTES: Final = 64 * 1024
"""Largest answer read: ``chan_info`` is kept per subscription and sent to others."""
_LATENCY_BOUNDS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
_LOG_EVERY: Final = 60.0


@dataclass(frozen=True, slots=True)
class Allowed:
    """Subscribe; ``chan_info`` (JSON text) when the backend gave ``info``."""

    chan_info: RawJSON | None = None
    name = "allowed"


@dataclass(frozen=True, slots=True)
class Denied:
    """Answer the subscribe with this error (103 or an application code 400-1999)."""

    error: ErrorCode
    name = "denied"


@dataclass(frozen=True, slots=True)
class Disconnect:
    """Close the connection with this code (4000-4999)."""

    close: CloseCode
    name = "disconnect"


@dataclass(frozen=True, slots=True)
class Failed:
    """No usable answer: error 100 temporary. ``kind`` is the metric label: timeout,
    connection, status, invalid, too_large, closed."""

    kind: str
    name = "failed"


ProxyDecision = Allowed | Denied | Disconnect | Failed


class Subscriber(Protocol):
    """Who asks to subscribe: a session (its verified user, its id, its connection,
    whose request keeps the handshake headers named in ``REALTIME_PROXY_HTTP_HEADERS``)."""

    @property
    def user(self) -> str: ...

    @property
    def client_id(self) -> str: ...

    @property
    def conn(self) -> WsConnection: ...


Record = Callable[..., None]
"""The event log's record call: ``record(kind, actor, *, channel, code, **details)``."""


def _reason(value: object) -> str:
    """A close reason the SDKs can show: printable ASCII, at most 100 bytes (a close
    frame holds 123), and never JSON text (centrifuge-js would try to parse it)."""
    text = value if isinstance(value, str) else ""
    text = "".join(c for c in text if " " <= c <= "~")[:100].strip()
    if not text:
        return "disconnect"
    try:
        orjson.loads(text)
    except orjson.JSONDecodeError:
        return text
    return "disconnect"


def _code(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _allowed(result: dict[str, Any]) -> ProxyDecision:
    info = result.get("info")
    if info is not None:
        # Kept per subscription: copied to its own size (orjson's result holds a 4 KiB
        # buffer; main's model.raw_json does the same).
        return Allowed(raw_json(info))
    b64info = result.get("b64info")
    if b64info is None or b64info == "":
        return Allowed()
    if not isinstance(b64info, str):
        return Failed("invalid")
    try:
        raw = base64.b64decode(b64info, validate=True)
        orjson.loads(raw)  # chan_info is embedded in JSON frames: it must be JSON
    except (binascii.Error, orjson.JSONDecodeError):
        return Failed("invalid")
    return Allowed(raw)


def parse_answer(status: int, body: bytes) -> ProxyDecision:
    """The decision an HTTP answer carries (pure; see the module docstring)."""
    if status != 200:
        return Failed("status")
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError:
        return Failed("invalid")
    if not isinstance(answer, dict):
        return Failed("invalid")
    disconnect = answer.get("disconnect")
    if disconnect is not None:
        code = _code(disconnect.get("code")) if isinstance(disconnect, dict) else None
        if code is None or not 4000 <= code <= 4999:
            return Failed("invalid")
        assert isinstance(disconnect, dict)
        return Disconnect(CloseCode(code, _reason(disconnect.get("reason")), code < 4500))
    error = answer.get("error")
    if error is not None:
        code = _code(error.get("code")) if isinstance(error, dict) else None
        if code is None or not (code == codes.PERMISSION_DENIED.code or 400 <= code <= 1999):
            return Failed("invalid")
        assert isinstance(error, dict)
        message = error.get("message")
        if not isinstance(message, str) or not message:
            message = codes.PERMISSION_DENIED.message if code == 103 else "error"
        return Denied(ErrorCode(code, message[:256], error.get("temporary") is True))
    result = answer.get("result")
    if isinstance(result, dict):
        return _allowed(result)
    return Failed("invalid")


class _TooLarge(Exception):
    pass


async def _read_capped(resp: aiohttp.ClientResponse) -> bytes:
    if resp.content_length is not None and resp.content_length > MAX_ANSWER_BYTES:
        raise _TooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(16384):
        size += len(chunk)
        if size > MAX_ANSWER_BYTES:  # leaving the block drops the connection
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


class SubscribeProxy:
    """The client of the subscribe proxy: one pooled aiohttp session per process, at
    most ``max_concurrency`` calls in flight. :meth:`start` in the running loop,
    :meth:`close` at the end."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 1.0,
        header_names: frozenset[str] | None = None,
        max_concurrency: int = 100,
    ) -> None:
        self.url = url
        self.timeout = timeout
        self.header_names = header_names
        """Handshake headers forwarded (lower case); None: none, and none are kept."""
        self.max_concurrency = max_concurrency
        self._slots = asyncio.Semaphore(max_concurrency)
        self._session: aiohttp.ClientSession | None = None
        self.calls_total = 0
        self.inflight = 0
        self.errors: Counter[str] = Counter()
        self.decisions: Counter[str] = Counter()
        self.latency = Histogram(_LATENCY_BOUNDS)
        self._logged: dict[str, tuple[float, int]] = {}  # kind -> (last logged, since)

    @classmethod
    def from_settings(cls, settings: Settings) -> SubscribeProxy:
        assert settings.subscribe_proxy_url is not None
        return cls(
            settings.subscribe_proxy_url,
            timeout=settings.proxy_timeout,
            header_names=header_names(settings.proxy_http_headers),
            max_concurrency=settings.proxy_max_concurrency,
        )

    async def start(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.max_concurrency),
                timeout=aiohttp.ClientTimeout(total=None),  # asyncio.timeout per call
                # No cookie jar: a Set-Cookie in one user's answer must never ride along
                # with another user's request.
                cookie_jar=aiohttp.DummyCookieJar(),
                headers={"User-Agent": f"realtime-server/{__version__}"},
            )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def bind(self, metrics: Metrics) -> None:
        metrics.counter("subscribe_proxy_calls", "Subscribe-proxy calls.", lambda: self.calls_total)
        metrics.counter_by(
            "subscribe_proxy_errors",
            "Subscribe-proxy calls without a usable answer (error 100), by kind.",
            "kind",
            lambda: self.errors,
        )
        metrics.counter_by(
            "subscribe_proxy_decisions",
            "Subscribe-proxy answers, by decision.",
            "decision",
            lambda: self.decisions,
        )
        metrics.gauge(
            "subscribe_proxy_inflight", "Subscribe-proxy calls in flight.", lambda: self.inflight
        )
        metrics.histogram(
            "subscribe_proxy_seconds", "Subscribe-proxy call duration, seconds.", self.latency
        )

    # --- one call --------------------------------------------------------------------

    async def ask(
        self,
        *,
        client: str,
        user: str,
        channel: str,
        data: Any = None,
        headers: Iterable[tuple[str, str]] = (),
    ) -> ProxyDecision:
        """Ask the backend about one subscription. Never raises (but for cancellation):
        every failure is a :class:`Failed` decision."""
        started = time.perf_counter()
        self.calls_total += 1
        decision = await self._call(client, user, channel, data, headers)
        self.latency.observe(time.perf_counter() - started)
        self.decisions[decision.name] += 1
        if isinstance(decision, Failed):
            self.errors[decision.kind] += 1
            self._log_failure(decision.kind)
        return decision

    async def _call(
        self,
        client: str,
        user: str,
        channel: str,
        data: Any,
        headers: Iterable[tuple[str, str]],
    ) -> ProxyDecision:
        session = self._session
        if session is None:
            return Failed("closed")
        request: dict[str, Any] = {
            "client": client,
            "transport": "websocket",
            "protocol": "json",
            "encoding": "json",
            "user": user,
            "channel": channel,
        }
        if data is not None:
            request["data"] = data
        names = self.header_names
        sent = [(k, v) for k, v in headers if names is not None and k.lower() in names]
        sent.append(("Content-Type", "application/json"))
        try:
            async with asyncio.timeout(self.timeout), self._slots:
                self.inflight += 1
                try:
                    async with session.post(
                        self.url,
                        data=orjson.dumps(request),
                        headers=sent,
                        allow_redirects=False,
                    ) as resp:
                        return parse_answer(resp.status, await _read_capped(resp))
                finally:
                    self.inflight -= 1
        except TimeoutError:
            return Failed("timeout")
        except _TooLarge:
            return Failed("too_large")
        except (aiohttp.ClientError, OSError, ValueError):
            return Failed("connection")

    def _log_failure(self, kind: str) -> None:
        now = time.monotonic()
        last, since = self._logged.get(kind, (-_LOG_EVERY, 0))
        if now - last < _LOG_EVERY:
            self._logged[kind] = (last, since + 1)
            return
        self._logged[kind] = (now, 0)
        more = f" ({since} more since the last report)" if since else ""
        logger.warning("subscribe proxy: %s; subscriptions get error 100 meanwhile%s", kind, more)

    # --- the subscribe command's use ------------------------------------------------------

    async def authorize(self, s: Subscriber, channel: str, data: Any, record: Record) -> Allowed:
        """Ask about ``s`` subscribing to ``channel`` and record the decision in the
        event log (``subscribe_proxy``) with ``record`` (the node's event-log call:
        ``record(kind, actor, *, channel, code, **details)``).

        Raises:
            CommandError: the backend's error, or 100 (temporary) on a failure.
            ProtocolViolation: the backend's disconnect code.
        """
        request = s.conn.request
        headers = request.headers.raw_items() if request is not None else ()
        started = time.perf_counter()
        decision = await self.ask(
            client=s.client_id, user=s.user, channel=channel, data=data, headers=headers
        )
        details: dict[str, Any] = {
            "decision": decision.name,
            "ms": round((time.perf_counter() - started) * 1000, 1),
        }
        code: int | None = None
        if isinstance(decision, Denied):
            code = decision.error.code
        elif isinstance(decision, Disconnect):
            code = decision.close.code
        elif isinstance(decision, Failed):
            code = codes.INTERNAL.code
            details["failure"] = decision.kind  # not "kind": node.log's first parameter
        record(EventType.SUBSCRIBE_PROXY, s, channel=channel, code=code, **details)
        if isinstance(decision, Allowed):
            return decision
        if isinstance(decision, Denied):
            raise CommandError(decision.error)
        if isinstance(decision, Disconnect):
            raise ProtocolViolation(decision.close)
        raise CommandError(codes.INTERNAL)
