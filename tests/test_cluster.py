"""``info`` lists every live node: announcements through the engine's control channel
(cluster.py), on the embedded engine, between nodes on one private Redis, between real
server processes, and the directory's own rules (forget after three intervals)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from typing import Any

import aiohttp

from realtime_server.app import Running, running
from realtime_server.channels.engine import ControlMessage
from realtime_server.cluster import FORGET_AFTER, NODE_KIND, NodeCounts, NodeDirectory

from .conftest import StartServer, connected
from .helpers import API_KEY, MS, api, make_settings
from .procs import server_process

WAIT = 5000 * MS


async def until(server: Running, ready: Callable[[list[dict[str, Any]]], bool]) -> list[Any]:
    """The node list of ``server`` once ``ready`` holds, awaiting announcements."""
    directory = server.node.directory
    async with asyncio.timeout(WAIT):
        while not ready(nodes := directory.nodes()):
            await directory.changed()
    return nodes


def by_name(nodes: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {n["name"]: n for n in nodes}


async def test_embedded_engine_lists_this_node_with_its_counts(server: Running) -> None:
    await connected(server, "42", channels=["document:1"])
    await connected(server, "42")
    [node] = (await api(server, "info", {}))["nodes"]
    assert node["name"] == server.node.name and node["uid"] == server.node.directory.uid
    assert node["num_clients"] == 2 and node["num_users"] == 1
    assert node["num_channels"] == 2 and node["num_subs"] == 3
    assert node["engine"] == "memory" and node["version"] and node["uptime"] >= 0


async def test_nodes_on_one_redis_list_each_other_with_counts(
    start_server: StartServer, redis_url: str, redis_prefix: str
) -> None:
    env = {"REDIS_URL": redis_url, "REDIS_PREFIX": redis_prefix, "NODE_INFO_INTERVAL": "0.2"}
    a = await start_server(NODE_NAME="node-a", **env)
    b = await start_server(NODE_NAME="node-b", **env)
    # b announced at start; a, hearing a newcomer, introduced itself at once.
    await until(a, lambda nodes: len(nodes) == 2)
    await until(b, lambda nodes: len(nodes) == 2)

    await connected(b, "7", channels=["document:9"])
    nodes = await until(a, lambda nodes: by_name(nodes)["node-b"]["num_clients"] == 1)
    seen = by_name(nodes)
    assert seen["node-b"]["num_subs"] == 2 and seen["node-b"]["num_users"] == 1
    assert seen["node-a"]["num_clients"] == 0 and nodes[0]["name"] == "node-a"
    assert seen["node-b"]["uid"] == b.node.directory.uid and seen["node-b"]["engine"] == "redis"


async def test_a_node_that_stops_is_dropped_at_once(
    start_server: StartServer, redis_url: str, redis_prefix: str
) -> None:
    env = {"REDIS_URL": redis_url, "REDIS_PREFIX": redis_prefix}  # the default 3 s interval
    a = await start_server(NODE_NAME="stays", **env)
    async with running(make_settings(NODE_NAME="leaves", **env)):
        await until(a, lambda nodes: len(nodes) == 2)
    nodes = await until(a, lambda nodes: len(nodes) == 1)  # well before 3 intervals
    assert nodes[0]["name"] == "stays"


async def test_two_server_processes_list_both_through_the_api(
    redis_url: str, redis_prefix: str
) -> None:
    env = {"REDIS_URL": redis_url, "REDIS_PREFIX": redis_prefix, "NODE_INFO_INTERVAL": "0.2"}
    async with (
        server_process(NODE_NAME="proc-a", **env) as a,
        server_process(NODE_NAME="proc-b", **env) as b,
        aiohttp.ClientSession(headers={"X-API-Key": API_KEY}) as http,
    ):

        async def names(port: int) -> list[str]:
            async with http.post(f"http://127.0.0.1:{port}/api/info", json={}) as response:
                body = await response.json()
            return [n["name"] for n in body["result"]["nodes"]]

        async with asyncio.timeout(WAIT):
            # another process's announcements cannot be awaited from here: poll the API
            # of each (a seeing b says nothing of b having heard a's next announcement)
            for port in (a.api_port, b.api_port):
                while sorted(await names(port)) != ["proc-a", "proc-b"]:
                    await asyncio.sleep(0.05)
        await b.stop(signal.SIGKILL)  # a crash: no leaving announcement
        async with asyncio.timeout(WAIT):
            while await names(a.api_port) != ["proc-a"]:  # dropped after 3 x 0.2 s
                await asyncio.sleep(0.05)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def directory(clock: Clock, sent: list[ControlMessage], name: str = "me") -> NodeDirectory:
    async def publish(message: ControlMessage) -> None:
        sent.append(message)

    return NodeDirectory(
        name=name,
        version="1.0",
        engine="redis",
        counts=lambda: NodeCounts(1, 1, 2, 3),
        publish=publish,
        interval=2.0,
        clock=clock,
    )


async def test_directory_forgets_a_silent_node_after_three_intervals() -> None:
    clock, sent = Clock(), []
    mine, theirs = directory(clock, sent), directory(clock, [], name="other")
    announcement = theirs._announcement()
    assert announcement.kind == NODE_KIND
    mine.hear(announcement.params)
    assert [n["name"] for n in mine.nodes()] == ["me", "other"]
    clock.now += FORGET_AFTER * theirs.interval - 0.01
    assert len(mine.nodes()) == 2
    clock.now += 0.02
    assert [n["name"] for n in mine.nodes()] == ["me"]


async def test_directory_ignores_itself_and_malformed_announcements() -> None:
    clock, sent = Clock(), []
    mine = directory(clock, sent)
    mine.hear(mine._announcement().params)  # our own, echoed back by the engine
    good = directory(clock, [], name="other")._announcement().params
    for broken in (
        {},
        {**good, "uid": ""},
        {**good, "num_clients": -1},
        {**good, "num_subs": "3"},
        {**good, "interval": 0},
        {**good, "uptime": True},
    ):
        mine.hear(broken)
    assert [n["name"] for n in mine.nodes()] == ["me"]


async def test_a_late_announcement_does_not_bring_back_a_node_that_left() -> None:
    clock, sent = Clock(), []
    mine, theirs = directory(clock, sent), directory(clock, [], name="other")
    late = theirs._announcement()  # sent before it left, delivered after its leaving
    mine.hear(theirs._announcement().params)
    mine.hear(theirs._announcement(leaving=True).params)
    mine.hear(late.params)
    assert [n["name"] for n in mine.nodes()] == ["me"]
    clock.now += FORGET_AFTER * theirs.interval  # long after: a uid is never reused anyway
    assert [n["name"] for n in mine.nodes()] == ["me"] and not mine._gone


async def test_hearing_a_newcomer_announces_at_once() -> None:
    clock, sent = Clock(), []
    mine = directory(clock, sent)
    mine.interval = 3600  # only a newcomer can make it announce again
    mine.start()
    try:
        async with asyncio.timeout(WAIT):
            while not sent:
                await asyncio.sleep(0)  # the first announcement: the task's first step
        newcomer = directory(clock, [], name="new")._announcement().params
        mine.hear(newcomer)
        async with asyncio.timeout(WAIT):
            while len(sent) < 2:
                await asyncio.sleep(0)
        mine.hear(newcomer)  # known now: no further announcement
        for _ in range(10):
            await asyncio.sleep(0)
        assert len(sent) == 2
    finally:
        await mine.stop()
    assert sent[-1].params.get("leaving") == 1
