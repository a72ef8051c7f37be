"""Shared test helpers: settings, tokens, a raw protocol client, scaled timeouts."""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
import uuid
from typing import Any

import aiohttp
import jwt
import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from realtime_server.app import Running
from realtime_server.config import Settings
from realtime_server.events import Event

SECRET = "test-secret-for-hs256-0123456789abcdef"
API_KEY = "test-api-key-0123456789"
SCALE = float(os.environ.get("REALTIME_TEST_TIMEOUT_SCALE", "1"))
MS = 0.001 * SCALE
"""One millisecond, scaled by REALTIME_TEST_TIMEOUT_SCALE for slow machines."""

BASE_ENV = {
    "REALTIME_JWT_SECRET": SECRET,
    "REALTIME_API_KEY": API_KEY,
    "REALTIME_HOST": "127.0.0.1",
    "REALTIME_PORT": "0",
    "REALTIME_API_HOST": "127.0.0.1",
    "REALTIME_API_PORT": "0",
    "REALTIME_SHUTDOWN_TIMEOUT": "2",
    "REALTIME_LOG_LEVEL": "WARNING",
}


_EVENTS_DIR = tempfile.mkdtemp(prefix="rt-test-events-")


def event_log_env() -> dict[str, str]:
    """A fresh SQLite event log, spill file and revocation file, never in the working
    directory."""
    name = uuid.uuid4().hex[:12]
    return {
        "REALTIME_SQLITE_PATH": os.path.join(_EVENTS_DIR, f"{name}.db"),
        "REALTIME_EVENTS_SPILL_PATH": os.path.join(_EVENTS_DIR, f"{name}.spill.jsonl"),
        "REALTIME_REVOCATIONS_PATH": os.path.join(_EVENTS_DIR, f"{name}.revocations.jsonl"),
    }


def overlay_env(base: dict[str, str], **env: object) -> dict[str, str]:
    """``base`` plus the test settings (BASE_ENV, a private event log) plus ``env``,
    whose keys are REALTIME_* variable suffixes (``PING_INTERVAL=1``); None removes."""
    merged = dict(base)
    merged.update(BASE_ENV)
    merged.update(event_log_env())
    for key, value in env.items():
        name = key if key.startswith("REALTIME_") else f"REALTIME_{key.upper()}"
        if value is None:
            merged.pop(name, None)
        else:
            merged[name] = str(value)
    return merged


def make_settings(**env: object) -> Settings:
    """Test settings; keyword names are REALTIME_* variable suffixes (``PING_INTERVAL=1``)."""
    return Settings.from_env(env=overlay_env({}, **env))


def token(
    user: str,
    *,
    ttl: float = 3600,
    secret: str = SECRET,
    algorithm: str = "HS256",
    **claims: Any,
) -> str:
    """A connection token (or, with ``channel=...``, a subscription token)."""
    now = int(time.time())
    payload: dict[str, Any] = {"sub": user, "iat": now, "exp": now + ttl, "jti": uuid.uuid4().hex}
    for key, value in claims.items():
        if value is None:
            payload.pop(key, None)
        else:
            payload[key] = value
    return jwt.encode(payload, secret, algorithm=algorithm)


def sub_token(user: str, channel: str, **claims: Any) -> str:
    return token(user, channel=channel, **claims)


class RawClient:
    """A bare protocol client over a real WebSocket, for exact wire checks."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.next_id = 1
        self.skipped: list[dict[str, Any]] = []

    @classmethod
    async def open(cls, url: str, **kwargs: Any) -> RawClient:
        return cls(await connect(url, max_size=None, ping_interval=None, **kwargs))

    async def send(self, *commands: dict[str, Any]) -> list[int]:
        """Send commands in one frame (ids assigned where missing); returns the ids."""
        ids = []
        lines = []
        for cmd in commands:
            if "id" not in cmd and "send" not in cmd and cmd:
                cmd = {"id": self.next_id, **cmd}
                self.next_id += 1
            ids.append(cmd.get("id", 0))
            lines.append(orjson.dumps(cmd).decode())
        await self.ws.send("\n".join(lines))
        return ids

    async def recv(self, timeout: float = 2000 * MS) -> dict[str, Any]:
        """Next message (frames with several lines are split)."""
        if not hasattr(self, "_buffer"):
            self._buffer: list[dict[str, Any]] = []
        while not self._buffer:
            frame = await asyncio.wait_for(self.ws.recv(), timeout)
            assert isinstance(frame, str), "server sent a binary frame"
            self._buffer.extend(orjson.loads(line) for line in frame.split("\n") if line)
        return self._buffer.pop(0)

    async def reply(self, cmd_id: int, timeout: float = 2000 * MS) -> dict[str, Any]:
        """Next reply with ``id``; pushes received before it are kept for :meth:`push`."""
        while True:
            msg = await self.recv(timeout)
            if msg.get("id") == cmd_id:
                return msg
            if "push" in msg:
                self.skipped.append(msg)

    async def push(self, kind: str, timeout: float = 2000 * MS) -> dict[str, Any]:
        """Next push of ``kind`` (pub, join, leave, unsubscribe...), in arrival order."""
        for i, msg in enumerate(self.skipped):
            if kind in msg["push"]:
                del self.skipped[i]
                return dict(msg["push"])
        while True:
            msg = await self.recv(timeout)
            push = msg.get("push")
            if push and kind in push:
                return dict(push)

    async def call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        (cmd_id,) = await self.send({method: params})
        return await self.reply(cmd_id)

    async def connect(self, tok: str, **params: Any) -> dict[str, Any]:
        return await self.call("connect", {"token": tok, **params})

    async def closed(self, timeout: float = 3000 * MS) -> tuple[int | None, str]:
        """Wait for the server to close; returns (code, reason)."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    frame = await self.ws.recv()
                    for line in str(frame).split("\n"):
                        if line and "push" in (msg := orjson.loads(line)):
                            self.skipped.append(msg)
        except ConnectionClosed:
            pass
        rcvd = self.ws.protocol.close_rcvd
        return (rcvd.code, rcvd.reason) if rcvd else (None, "")

    async def close(self) -> None:
        await self.ws.close()


QUIET = 500 * MS
"""A window in which nothing may happen, for negative checks."""


async def quiet_period() -> None:
    """Let a short window pass in which nothing may happen (a negative check, not a
    synchronisation: every positive step awaits an event)."""
    await asyncio.sleep(QUIET)


async def api_answer(server: Running, method: str, params: dict[str, Any]) -> dict[str, Any]:
    """Call the server's HTTP API (which must answer 200); its whole answer,
    ``{"result": ...}`` or ``{"error": ...}``."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"http://127.0.0.1:{server.api_port}/api/{method}",
            json=params,
            headers={"X-API-Key": API_KEY},
        ) as response,
    ):
        assert response.status == 200, await response.text()
        body: dict[str, Any] = await response.json()
    return body


async def api(server: Running, method: str, params: dict[str, Any]) -> dict[str, Any]:
    """Call the server's HTTP API (which must answer without error); its ``result``."""
    body = await api_answer(server, method, params)
    assert "error" not in body, body
    result: dict[str, Any] = body["result"]
    return result


def claims(tok: str) -> dict[str, Any]:
    """A token's claims, unverified (to compare with what the server saw)."""
    decoded: dict[str, Any] = jwt.decode(tok, options={"verify_signature": False})
    return decoded


def recorded(server: Running) -> list[Event]:
    """Every event the server's node records from now on (its recorder still gets
    them)."""
    events: list[Event] = []
    recorder = server.node.events
    original = recorder.record

    def record(event: Event) -> None:
        events.append(event)
        original(event)

    recorder.record = record  # type: ignore[method-assign]
    return events
