"""Local fan-out when a channel goes from one subscriber to several and back.

A channel with a single local subscriber is held as that session itself (no one-entry
dict per ``user:`` channel); these check, over real sockets, that deliveries, counts
and metrics stay right through every transition.
"""

from __future__ import annotations

import asyncio

from realtime_server.app import Running

from .conftest import ws_url
from .helpers import MS, RawClient, token


async def _tab(server: Running, user: str) -> tuple[RawClient, asyncio.Task[None]]:
    """A connected client and the server's handler task for it."""
    before = set(server.ws.handler_tasks)
    client = await RawClient.open(ws_url(server))
    (task,) = set(server.ws.handler_tasks) - before
    assert "connect" in await client.connect(token(user))
    return client, task


async def _publish(server: Running, data: int, *receivers: RawClient) -> None:
    metrics = server.node.metrics
    delivered = metrics.deliveries_total
    await server.node.ops.publish("user:7", str(data).encode())
    for client in receivers:
        assert (await client.push("pub"))["pub"]["data"] == data
    assert metrics.deliveries_total - delivered == len(receivers)


async def test_user_channel_from_one_tab_to_several_and_back(server: Running) -> None:
    hub = server.node.hub
    a, task_a = await _tab(server, "7")
    assert len(hub.subscribers("user:7")) == 1 and hub.num_subscriptions == 1
    await _publish(server, 1, a)

    b, _ = await _tab(server, "7")
    assert len(hub.subscribers("user:7")) == 2 and hub.num_subscriptions == 2
    await _publish(server, 2, a, b)

    await a.close()
    await asyncio.wait_for(asyncio.shield(task_a), 2000 * MS)  # server done with a
    assert len(hub.subscribers("user:7")) == 1 and hub.num_subscriptions == 1
    await _publish(server, 3, b)

    c, _ = await _tab(server, "7")
    other, _ = await _tab(server, "8")
    assert len(hub.subscribers("user:7")) == 2
    assert hub.num_subscriptions == 3 and hub.num_channels == 2
    await _publish(server, 4, b, c)
    for client in (b, c, other):
        await client.close()
