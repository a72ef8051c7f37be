"""The demo's HTTP side on the WebSocket port: the page, its config and a token endpoint.

Routes (only with ``serve --demo``; without it they are 404 like any unknown path):

- ``/``: the demo page (``static/index.html``); ``/demo/app.js``, ``/demo/style.css``: its
  script and style sheet; ``/demo/config.json``: the simulated document and signers.
- ``/demo/token?user=viewer-…[&channel=document:…][&ttl=S]``: a connection token (or, with
  ``channel``, a subscription token for the demo document) minted with the demo secret.

The token endpoint stands in for the signing platform's backend. It mints tokens only
for demo viewers (``viewer-`` ids; never for the simulated signers) and only for the
demo document, and every user it minted for gets the simulation's notifications.
"""

from __future__ import annotations

import http
import logging
import re
import secrets
import time
import uuid
from dataclasses import replace
from importlib import resources
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qs, urlsplit

import jwt
import orjson
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from ..auth.keys import load_keys
from ..config import Settings
from .simulation import DOCUMENT, SIGNERS, Simulation

if TYPE_CHECKING:
    from ..node import Node

__all__ = ["Demo", "prepare_demo"]

logger = logging.getLogger("realtime_server.demo")

VIEWER_RE: Final = re.compile(r"viewer-[a-z0-9]{4,16}")
DEFAULT_TOKEN_TTL: Final = 120
"""Seconds a page's tokens live by default: short, so the page's refresh is exercised."""
MIN_TOKEN_TTL: Final = 3
MAX_VIEWERS: Final = 64
VIEWER_IDLE: Final = 1800.0
"""A viewer that asked for no token for this long gets no more notifications."""
SIMULATOR_TOKEN_TTL: Final = 600

_STATIC: Final = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/demo/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/demo/style.css": ("style.css", "text/css; charset=utf-8"),
}
_CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def _response(
    status: http.HTTPStatus, body: bytes, content_type: str, *extra: tuple[str, str]
) -> Response:
    headers = Headers(
        [
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
            ("X-Content-Type-Options", "nosniff"),
            ("Referrer-Policy", "no-referrer"),
            ("Connection", "close"),
            *extra,
        ]
    )
    return Response(status.value, status.phrase, headers, body)


def _json(status: http.HTTPStatus, value: Any) -> Response:
    return _response(status, orjson.dumps(value), "application/json")


def _error(status: http.HTTPStatus, message: str) -> Response:
    return _json(status, {"error": message})


def prepare_demo(
    settings: Settings, *, step: float = 2.5, announce: bool = True
) -> tuple[Settings, Demo]:
    """Settings for ``serve --demo`` and the demo they serve.

    The demo runs one process on the embedded engine. Without ``REALTIME_JWT_SECRET`` it
    generates a random secret (held in memory, never printed): tokens minted by anything
    else then do not work, which is fine for a demo.
    """
    changes: dict[str, Any] = {}
    if settings.redis_url:
        logger.info("demo: using the embedded engine (REALTIME_REDIS_URL ignored)")
        changes["redis_url"] = None
    if settings.workers != 1:
        changes["workers"] = 1
    if not settings.jwt_secret:
        changes.update(jwt_secret=secrets.token_hex(32), jwt_public_key=None, jwt_algorithms=None)
        logger.info("demo: generated a random JWT secret for this run")
    if changes:
        settings = replace(settings, **changes)
    return settings, Demo(settings, step=step, announce=announce)


class Demo:
    """Serves the demo routes and runs the simulation while the server runs."""

    def __init__(self, settings: Settings, *, step: float = 2.5, announce: bool = False) -> None:
        if not settings.jwt_secret:
            raise ValueError("the demo needs an HMAC secret (see prepare_demo)")
        self.settings = settings
        self.step = step
        self.announce = announce
        self._keys = load_keys(settings.jwt_secret, None, settings.jwt_algorithms)
        self._viewers: dict[str, float] = {}
        self._files = {
            path: (resources.files(__package__).joinpath("static", name).read_bytes(), ctype)
            for path, (name, ctype) in _STATIC.items()
        }
        self._config = orjson.dumps(
            {
                "document": DOCUMENT.to_json(),
                "signers": [s.to_json() for s in SIGNERS],
                "token_ttl": DEFAULT_TOKEN_TTL,
            }
        )
        self.simulation: Simulation | None = None
        self.url = ""

    # --- tokens ---------------------------------------------------------------------

    def mint(
        self,
        user: str,
        *,
        channel: str | None = None,
        info: dict[str, Any] | None = None,
        ttl: float = SIMULATOR_TOKEN_TTL,
    ) -> str:
        """A connection token for ``user`` (or, with ``channel``, a subscription token)."""
        now = int(time.time())
        ttl = min(int(ttl), int(self.settings.jwt_max_lifetime))
        claims: dict[str, Any] = {"sub": user, "iat": now, "exp": now + ttl}
        claims["jti"] = uuid.uuid4().hex
        if channel is not None:
            claims["channel"] = channel
        if info is not None:
            claims["info"] = info
        if self.settings.jwt_audience:
            claims["aud"] = self.settings.jwt_audience
        if self.settings.jwt_issuer:
            claims["iss"] = self.settings.jwt_issuer
        return jwt.encode(claims, self._keys.key, algorithm=self._keys.algorithms[0])

    def viewers(self) -> list[str]:
        """Demo viewers that asked for a token recently (they get notifications)."""
        cutoff = time.monotonic() - VIEWER_IDLE
        for user in [u for u, seen in self._viewers.items() if seen < cutoff]:
            del self._viewers[user]
        return list(self._viewers)

    def _seen(self, user: str) -> None:
        self._viewers.pop(user, None)
        self._viewers[user] = time.monotonic()
        while len(self._viewers) > MAX_VIEWERS:
            del self._viewers[next(iter(self._viewers))]

    def _token(self, query: dict[str, list[str]]) -> Response:
        user = (query.get("user") or [""])[0]
        if not VIEWER_RE.fullmatch(user):
            return _error(http.HTTPStatus.BAD_REQUEST, "user must be viewer-<4 to 16 of a-z0-9>")
        ttl = DEFAULT_TOKEN_TTL
        if query.get("ttl"):
            try:
                ttl = int(query["ttl"][0])
            except ValueError:
                return _error(http.HTTPStatus.BAD_REQUEST, "ttl must be an integer")
            ttl = max(MIN_TOKEN_TTL, min(ttl, 3600))
        channels = query.get("channel")
        channel = channels[0] if channels else None
        if channel is None:
            info = {"name": f"Viewer {user.removeprefix('viewer-')[:4]}", "role": "Demo viewer"}
            token = self.mint(user, info=info, ttl=ttl)
            self._seen(user)
        elif channel == DOCUMENT.channel:
            token = self.mint(user, channel=channel, ttl=ttl)
        else:
            return _error(http.HTTPStatus.FORBIDDEN, "the demo grants only the demo document")
        return _json(http.HTTPStatus.OK, {"token": token, "ttl": ttl})

    # --- HTTP ----------------------------------------------------------------------

    def respond(self, request: Request) -> Response:
        """The response to a GET of ``/`` or a ``/demo/...`` path."""
        parts = urlsplit(request.path)
        path = parts.path
        if path in self._files:
            body, ctype = self._files[path]
            extra = [("Content-Security-Policy", _CSP)] if path == "/" else []
            return _response(http.HTTPStatus.OK, body, ctype, *extra)
        if path == "/demo/config.json":
            return _response(http.HTTPStatus.OK, self._config, "application/json")
        if path == "/demo/token":
            return self._token(parse_qs(parts.query))
        return _response(http.HTTPStatus.NOT_FOUND, b"not found\n", "text/plain; charset=utf-8")

    # --- lifecycle -----------------------------------------------------------------

    async def start(self, node: Node, port: int) -> None:
        """Start the simulation against the server listening on ``port``."""
        host = self.settings.host
        if host in ("", "0.0.0.0"):  # noqa: S104 - reach a wildcard listener over loopback
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        if ":" in host:
            host = f"[{host}]"
        self.url = f"http://{host}:{port}/"
        self.simulation = Simulation(
            node,
            f"ws://{host}:{port}/connection/websocket",
            self.mint,
            self.viewers,
            step=self.step,
        )
        self.simulation.start()
        logger.info("demo page: %s (simulated document %s)", self.url, DOCUMENT.channel)
        if self.settings.host not in ("127.0.0.1", "::1", "localhost"):
            logger.warning(
                "demo: listening on %s; anyone who reaches this port can get demo tokens",
                self.settings.host,
            )
        if self.announce:
            print(f"realtime-server demo: open {self.url} in a browser", flush=True)

    async def stop(self) -> None:
        if self.simulation is not None:
            await self.simulation.stop()
            self.simulation = None
