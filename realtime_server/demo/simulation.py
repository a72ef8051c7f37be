"""The demo's simulated signing flow.

One document (:data:`DOCUMENT`) goes round after round through "sent", then each signer
"viewed" and "signed" (every third round the last signer "declined"), then "completed".
Every step is a publication on ``document:<id>`` through :meth:`Node.publish`, so it is
kept in history and recoverable like any backend publication; signed, declined, sent and
completed also notify every demo viewer on their ``user:<id>`` channel.

A signer who is "viewing" is a real WebSocket client of the server itself, over loopback:
it connects with its own token (``info`` carries its name and role) and subscribes to
the document with a subscription token, so presence and join/leave are the server's
own, exactly as a signing UI would cause them. It leaves by closing its connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

if TYPE_CHECKING:
    from ..node import Node

__all__ = ["DOCUMENT", "SIGNERS", "Document", "Signer", "Simulation"]

logger = logging.getLogger("realtime_server.demo")


@dataclass(frozen=True, slots=True)
class Signer:
    id: str
    name: str
    role: str

    def to_json(self) -> dict[str, str]:
        return {"id": self.id, "name": self.name, "role": self.role}


@dataclass(frozen=True, slots=True)
class Document:
    id: str
    title: str

    @property
    def channel(self) -> str:
        return f"document:{self.id}"

    def to_json(self) -> dict[str, str]:
        return {"id": self.id, "title": self.title, "channel": self.channel}


DOCUMENT = Document("demo-contract", "Service agreement #1042")
SIGNERS = (
    Signer("signer-alice", "Alice Martin", "Buyer"),
    Signer("signer-bob", "Bob Okafor", "Seller"),
    Signer("signer-carol", "Carol Jensen", "Witness"),
)
DECLINE_EVERY = 3
"""Every third round the last signer declines instead of signing."""
_CLOSE_TIMEOUT = 2.0
"""Seconds a simulated signer waits for its closing handshake (and its reader) when the
demo stops: the server is in this process, on loopback; websockets' default, 10 s, let
a stuck close hold up the server's shutdown for longer than a supervisor waits."""

Mint = Callable[..., str]
"""``mint(user, channel=None, info=None)``: a connection (or subscription) token."""


def _now_ms() -> int:
    return int(time.time() * 1000)


class SimulatedSigner:
    """One signer's browser tab: a protocol client over loopback that answers pings."""

    def __init__(self, url: str, signer: Signer, mint: Mint, channel: str) -> None:
        self.url = url
        self.signer = signer
        self.mint = mint
        self.channel = channel
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None

    async def open(self, wait: float) -> None:
        """Connect and subscribe; returns once the subscription is confirmed (within
        ``wait`` seconds)."""
        signer = self.signer
        info = {"name": signer.name, "role": signer.role}
        ws = await connect(
            self.url,
            open_timeout=wait,
            close_timeout=_CLOSE_TIMEOUT,
            ping_interval=None,
            max_size=None,
            proxy=None,
            user_agent_header="realtime-server-demo",
        )
        self._ws = ws
        connect_cmd = {"id": 1, "connect": {"token": self.mint(signer.id, info=info)}}
        token = self.mint(signer.id, channel=self.channel)
        subscribe_cmd = {"id": 2, "subscribe": {"channel": self.channel, "token": token}}
        # One frame, as the SDKs send connect and their pending subscriptions.
        await ws.send(b"\n".join((orjson.dumps(connect_cmd), orjson.dumps(subscribe_cmd))).decode())
        subscribed = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self._read(ws, subscribed))
        try:
            await asyncio.wait_for(subscribed, wait)
        except BaseException:
            await self.close()
            raise

    async def _read(self, ws: ClientConnection, subscribed: asyncio.Future[None]) -> None:
        try:
            async for frame in ws:
                for line in str(frame).split("\n"):
                    if not line:
                        continue
                    message: dict[str, Any] = orjson.loads(line)
                    if not message:  # a server ping: answer with a pong
                        await ws.send("{}")
                    elif message.get("id") in (1, 2) and "error" in message:
                        raise RuntimeError(f"demo signer refused: {message['error']}")
                    elif message.get("id") == 2 and not subscribed.done():
                        subscribed.set_result(None)
        except ConnectionClosed:
            pass
        except Exception as exc:
            if not subscribed.done():
                subscribed.set_exception(exc)
            else:
                logger.warning("demo signer %s: %s", self.signer.id, exc)
            await ws.close()
        finally:
            if not subscribed.done():
                subscribed.set_exception(ConnectionError("demo signer connection closed"))

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(self._reader, _CLOSE_TIMEOUT)


class Simulation:
    """Runs the signing flow in a background task until :meth:`stop`."""

    def __init__(
        self,
        node: Node,
        url: str,
        mint: Mint,
        viewers: Callable[[], list[str]],
        *,
        step: float = 2.5,
        document: Document = DOCUMENT,
        signers: tuple[Signer, ...] = SIGNERS,
    ) -> None:
        self.node = node
        self.url = url
        self.mint = mint
        self.viewers = viewers
        self.step = step
        self.document = document
        self.signers = signers
        self.round = 0
        self._open: set[SimulatedSigner] = set()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="demo-simulation")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._close_all()

    async def _close_all(self) -> None:
        signers, self._open = list(self._open), set()
        await asyncio.gather(*(s.close() for s in signers), return_exceptions=True)

    async def _run(self) -> None:
        while True:
            try:
                await self.run_round()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning("demo round failed; starting over", exc_info=True)
            finally:
                await self._close_all()
            await asyncio.sleep(self.step * 2)

    async def _pause(self, steps: float = 1.0) -> None:
        await asyncio.sleep(self.step * steps)

    async def run_round(self) -> None:
        """One pass: sent, every signer views and signs (or declines), completed."""
        self.round += 1
        doc = self.document
        names = ", ".join(s.name.split()[0] for s in self.signers)
        await self._publish(
            "sent",
            f"“{doc.title}” sent for signature to {names}",
            signers=[s.to_json() for s in self.signers],
        )
        await self._notify("sent", f"“{doc.title}” was sent for signature")
        await self._pause()
        previous: SimulatedSigner | None = None
        declined = False
        for index, signer in enumerate(self.signers):
            viewing = await self._view(signer)
            await self._publish("viewed", f"{signer.name} opened the document", signer=signer)
            if previous is not None:  # the previous signer closes the tab a little later
                await self._leave(previous)
                previous = None
            await self._pause()
            last = index == len(self.signers) - 1
            if last and self.round % DECLINE_EVERY == 0:
                await self._publish("declined", f"{signer.name} declined to sign", signer=signer)
                await self._notify("declined", f"{signer.name} declined “{doc.title}”")
                await self._pause()
                await self._leave(viewing)
                declined = True
                break
            await self._publish("signed", f"{signer.name} signed", signer=signer)
            await self._notify("signed", f"{signer.name} signed “{doc.title}”")
            await self._pause()
            previous = viewing
        if previous is not None:
            await self._leave(previous)
        if not declined:
            await self._publish("completed", "All parties signed: the document is completed")
            await self._notify("completed", f"“{doc.title}” is completed")

    async def _view(self, signer: Signer) -> SimulatedSigner:
        client = SimulatedSigner(self.url, signer, self.mint, self.document.channel)
        self._open.add(client)
        await client.open(wait=max(5.0, self.step * 4))
        return client

    async def _leave(self, client: SimulatedSigner) -> None:
        self._open.discard(client)
        await client.close()

    async def _publish(
        self, status: str, text: str, *, signer: Signer | None = None, **extra: Any
    ) -> None:
        event: dict[str, Any] = {
            "type": status,
            "round": self.round,
            "document": self.document.to_json(),
            "text": text,
            "at": _now_ms(),
        }
        if signer is not None:
            event["signer"] = signer.to_json()
        event.update(extra)
        await self.node.ops.publish(self.document.channel, orjson.dumps(event), publisher="demo")

    async def _notify(self, status: str, text: str) -> None:
        note = {
            "type": "notification",
            "status": status,
            "text": text,
            "document": self.document.id,
            "round": self.round,
            "at": _now_ms(),
        }
        data = orjson.dumps(note)
        for user in self.viewers():
            await self.node.ops.publish(f"user:{user}", data, publisher="demo")
