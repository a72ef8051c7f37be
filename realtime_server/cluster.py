"""Every live node, as their announcements tell: what the server API's ``info`` lists.

Each node announces itself through the engine's control channel (a
:class:`~realtime_server.channels.engine.ControlMessage` of kind ``node``, as Centrifugo
does) every ``REALTIME_NODE_INFO_INTERVAL`` seconds: a per-process uid, its name,
version, engine, counts and uptime. Every node keeps a directory of what it hears:

- a node not heard for :data:`FORGET_AFTER` of its own intervals is dropped (a crashed
  or unreachable process);
- a node that stops cleanly says so, and is dropped at once (an announcement of its that
  arrives after that one is ignored);
- a node heard for the first time makes this node announce itself at once, so that a
  node starting learns of the others within a round trip rather than an interval.

With the embedded engine the control channel reaches this process only: the directory
lists this node. This node's own entry is always computed when asked, so its counts are
current; the others' are as of their last announcement.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from .channels.engine import ControlMessage

__all__ = ["FORGET_AFTER", "NODE_KIND", "NodeCounts", "NodeDirectory"]

logger = logging.getLogger("realtime_server.cluster")

NODE_KIND: Final = "node"
"""The control message kind of an announcement."""
FORGET_AFTER: Final = 3
"""Intervals without an announcement after which a node is dropped."""
_COUNTS: Final = ("num_clients", "num_users", "num_channels", "num_subs")
_LEAVE_TIMEOUT: Final = 1.0

Params = dict[str, str | float | int | None]


@dataclass(frozen=True, slots=True)
class NodeCounts:
    """What a node reports about its load."""

    num_clients: int
    num_users: int
    num_channels: int
    num_subs: int


@dataclass(slots=True)
class _Heard:
    info: dict[str, Any]
    expires: float


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _parse(params: Mapping[str, object]) -> tuple[dict[str, Any], float] | None:
    """An announcement's public fields and interval; None when malformed (a message
    from another program or version is ignored, never trusted)."""
    uid, name, version, engine = (params.get(k) for k in ("uid", "name", "version", "engine"))
    interval, uptime = params.get("interval"), params.get("uptime")
    if not all(isinstance(v, str) and v for v in (uid, name, version, engine)):
        return None
    numbers = [params.get(k) for k in _COUNTS]
    if not all(_count(n) for n in (*numbers, uptime)):
        return None
    if not isinstance(interval, int | float) or not 0 < interval <= 3600:
        return None
    info: dict[str, Any] = {"uid": uid, "name": name, "version": version}
    info.update(zip(_COUNTS, numbers, strict=True))
    info["uptime"] = uptime
    info["engine"] = engine
    return info, float(interval)


class NodeDirectory:
    """This node's announcer and its view of the other nodes.

    ``publish`` sends a control message to every node (the broker's
    ``publish_control``); it may raise while the engine is unreachable (announcing is
    retried on the next interval). ``counts`` is read at each announcement and each
    :meth:`nodes` call: it must be cheap and must not block.
    """

    def __init__(
        self,
        *,
        name: str,
        version: str,
        engine: str,
        counts: Callable[[], NodeCounts],
        publish: Callable[[ControlMessage], Awaitable[None]],
        interval: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.uid = uuid.uuid4().hex
        self.name = name
        self.version = version
        self.engine = engine
        self.interval = interval
        self._counts = counts
        self._publish = publish
        self._clock = clock
        self._started = clock()
        self._others: dict[str, _Heard] = {}
        self._gone: dict[str, float] = {}  # uid -> until when its announcements are stale
        self._wake = asyncio.Event()
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # --- this node ------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """This node's entry, as ``info`` shows it."""
        counts = self._counts()
        return {
            "uid": self.uid,
            "name": self.name,
            "version": self.version,
            "num_clients": counts.num_clients,
            "num_users": counts.num_users,
            "num_channels": counts.num_channels,
            "num_subs": counts.num_subs,
            "uptime": int(self._clock() - self._started),
            "engine": self.engine,
        }

    def _announcement(self, *, leaving: bool = False) -> ControlMessage:
        params: Params = dict(self.snapshot())
        params["interval"] = self.interval
        if leaving:
            params["leaving"] = 1
        return ControlMessage(NODE_KIND, params)

    def start(self) -> None:
        """Announce now, then every interval (and at once on hearing a new node)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="node-announcer")

    async def stop(self) -> None:
        """Stop announcing and tell the others this node leaves (bounded; a failure
        only means they drop it after three intervals instead)."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        try:
            async with asyncio.timeout(_LEAVE_TIMEOUT):
                await self._publish(self._announcement(leaving=True))
        except Exception:  # the engine is down or closing: they will time us out
            logger.debug("could not announce leaving", exc_info=True)

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self._publish(self._announcement())
            except Exception:  # engine unreachable: the next round retries
                logger.debug("node announcement failed", exc_info=True)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await self._wake.wait()

    # --- the others -----------------------------------------------------------------------

    def hear(self, params: Mapping[str, object]) -> None:
        """Record another node's announcement (ours, echoed back, is ignored)."""
        parsed = _parse(params)
        if parsed is None:
            logger.debug("ignored a malformed node announcement")
            return
        info, interval = parsed
        uid = info["uid"]
        if uid == self.uid:
            return
        now = self._clock()
        if params.get("leaving"):
            self._others.pop(uid, None)
            # An announcement it sent just before may arrive after this one (its messages
            # travel over several connections): it must not bring the node back.
            self._gone[uid] = now + FORGET_AFTER * interval
        elif self._gone.get(uid, 0.0) <= now:
            if uid not in self._others:
                self._wake.set()  # introduce ourselves to the newcomer now
            self._others[uid] = _Heard(info, now + FORGET_AFTER * interval)
        self._changed.set()
        self._changed = asyncio.Event()

    def nodes(self) -> list[dict[str, Any]]:
        """Every live node: this one first, then the others by name."""
        now = self._clock()
        for uid in [uid for uid, heard in self._others.items() if heard.expires <= now]:
            del self._others[uid]
        for uid in [uid for uid, until in self._gone.items() if until <= now]:
            del self._gone[uid]
        others = sorted((h.info for h in self._others.values()), key=lambda i: i["name"])
        return [self.snapshot(), *others]

    async def changed(self) -> None:
        """Wait for the next announcement heard (for tests and tools watching)."""
        await self._changed.wait()
