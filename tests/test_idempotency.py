"""``idempotency_key`` on the HTTP API's ``publish`` and ``broadcast``: a repeat within
``REALTIME_IDEMPOTENCY_TTL`` returns the first result and delivers nothing, on the
embedded engine and across nodes on Redis. (The engine guarantee itself is in the
contract suite, tests/test_engine_contract.py.)"""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from realtime_server.app import Running
from realtime_server.channels.idempotency import RecentKeys
from realtime_server.config import Settings
from realtime_server.model import StreamPosition
from realtime_server.publisher import Publisher

from .conftest import StartServer, api_url, connected
from .helpers import API_KEY, RawClient, make_settings, quiet_period

NO_HISTORY = '{"user": {"history_size": 0}}'


async def call(server: Running, method: str, body: dict[str, Any]) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{api_url(server)}/api/{method}", json=body, headers={"X-API-Key": API_KEY}
        ) as resp,
    ):
        assert resp.status == 200
        reply: dict[str, Any] = await resp.json()
        return reply


async def pubs_then_quiet(client: RawClient, n: int) -> list[Any]:
    """The data of the next ``n`` publications, then checks that no other arrives."""
    got = [(await client.push("pub"))["pub"]["data"] for _ in range(n)]
    await quiet_period()
    assert not any("pub" in m["push"] for m in client.skipped), client.skipped
    with pytest.raises(TimeoutError):
        await client.push("pub", timeout=0.01)
    return got


async def test_publish_repeat_returns_the_first_result_and_delivers_nothing(
    server: Running,
) -> None:
    client = await connected(server, "42", channels=["document:7"])
    body = {"channel": "document:7", "data": {"n": 1}, "idempotency_key": "sig-1"}
    first = await call(server, "publish", body)
    again = await call(server, "publish", {**body, "data": {"n": 2}})
    assert first == again == {"result": {"offset": 1, "epoch": first["result"]["epoch"]}}
    assert await pubs_then_quiet(client, 1) == [{"n": 1}]
    other = await call(server, "publish", {**body, "idempotency_key": "sig-2"})
    assert other["result"]["offset"] == 2
    assert await pubs_then_quiet(client, 1) == [{"n": 1}]
    plain = [await call(server, "publish", {"channel": "document:7", "data": 3}) for _ in "ab"]
    assert [r["result"]["offset"] for r in plain] == [3, 4]  # no key: every call publishes


async def test_broadcast_applies_the_key_per_channel(server: Running) -> None:
    client = await connected(server, "42", channels=["document:1", "document:2", "document:3"])
    body: dict[str, Any] = {"channels": ["document:1", "bad channel"], "data": "x"}
    body["idempotency_key"] = "b-1"
    first = (await call(server, "broadcast", body))["result"]["responses"]
    assert first[0]["result"]["offset"] == 1 and first[1]["error"]["code"] == 107
    # The retry of a partly failed broadcast: document:1 is not published again.
    body["channels"] = ["document:1", "document:2", "document:3"]
    retry = (await call(server, "broadcast", body))["result"]["responses"]
    assert retry[0] == first[0]
    assert [r["result"]["offset"] for r in retry[1:]] == [1, 1]
    assert await pubs_then_quiet(client, 3) == ["x", "x", "x"]


@pytest.mark.parametrize("key", [17, ["k"], "k" * 257], ids=["number", "list", "too-long"])
async def test_malformed_idempotency_key_is_refused(server: Running, key: object) -> None:
    for method, body in (
        ("publish", {"channel": "document:7", "data": 1}),
        ("broadcast", {"channels": ["document:7"], "data": 1}),
    ):
        reply = await call(server, method, {**body, "idempotency_key": key})
        assert reply["error"]["code"] == 107, reply
    assert (await call(server, "history", {"channel": "document:7"}))["result"]["offset"] == 0


async def test_a_key_is_remembered_across_nodes_on_redis(
    start_server: StartServer, redis_url: str, redis_prefix: str
) -> None:
    env = {"REDIS_URL": redis_url, "REDIS_PREFIX": redis_prefix, "NAMESPACES": NO_HISTORY}
    a, b = [await start_server(**env) for _ in "ab"]
    on_b = await connected(b, "42", channels=["document:7"])
    on_a = await connected(a, "43")  # user:43 keeps no history here: the key still holds
    body = {"channel": "document:7", "data": {"s": "signed"}, "idempotency_key": "retry-me"}
    first = await call(a, "publish", body)
    assert await call(b, "publish", body) == first
    assert await pubs_then_quiet(on_b, 1) == [{"s": "signed"}]
    plain = {"channel": "user:43", "data": 1, "idempotency_key": "once"}
    assert await call(a, "publish", plain) == await call(b, "publish", plain) == {"result": {}}
    assert await pubs_then_quiet(on_a, 1) == [1]
    # The Python publisher (straight to Redis) shares the keys too.
    settings = make_settings(**env)
    async with Publisher(settings) as publisher:
        position = await publisher.publish("document:7", "x", idempotency_key="retry-me")
    assert position == StreamPosition(1, first["result"]["epoch"])
    assert await pubs_then_quiet(on_b, 0) == []


def test_memory_table_is_bounded_and_forgets_the_oldest_first() -> None:
    now = [0.0]
    table = RecentKeys(lambda: now[0], max_entries=3)
    for i in range(5):
        table.remember("ch", f"k{i}", StreamPosition(i, "e"), ttl=10.0)
    assert len(table) == 3 and table.evicted == 2
    assert table.seen("ch", "k0") == (False, None)  # evicted before its time
    assert table.seen("ch", "k4") == (True, StreamPosition(4, "e"))
    now[0] = 10.0
    assert table.seen("ch", "k4") == (False, None)  # expired
    table.remember("ch", "k5", None, ttl=10.0)
    assert len(table) == 1  # expired entries dropped as new ones arrive


def test_idempotency_ttl_setting() -> None:
    assert Settings().idempotency_ttl == 300
    assert make_settings(IDEMPOTENCY_TTL=5).idempotency_ttl == 5
