"""A Redis that answers pings but refuses commands (out of memory): clients get 100
(temporary), and the log says why, once per interval rather than once per failure."""

from __future__ import annotations

import logging

import pytest
import redis.asyncio as aioredis
from redis.exceptions import OutOfMemoryError

from .conftest import StartServer, ws_url
from .helpers import RawClient, api_answer, token
from .redis_server import redis_server


async def test_out_of_memory_redis_fails_connects_with_100_and_says_why(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    options = ["--maxmemory", "3mb", "--maxmemory-policy", "noeviction"]
    async with redis_server(extra=options) as redis_proc:
        server = await start_server(REDIS_URL=redis_proc.url)
        filler = aioredis.from_url(redis_proc.url)
        try:
            with pytest.raises(OutOfMemoryError):
                for i in range(100_000):
                    await filler.set(f"fill:{i}", b"x" * 1000)
            with caplog.at_level(logging.WARNING, logger="realtime_server.session"):
                for _ in range(5):
                    client = await RawClient.open(ws_url(server))
                    reply = await client.connect(token("1", channels=["document:oom"]))
                    assert reply["error"]["code"] == 100 and reply["error"]["temporary"]
                    await client.close()
            assert server.node.readiness().ready  # pings work: nothing else tells
            warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
            assert len(warnings) == 1, warnings
            assert "connect of client" in warnings[0] and "OOM" in warnings[0]
            caplog.clear()
            with caplog.at_level(logging.WARNING, logger="realtime_server.api"):
                for _ in range(3):
                    answer = await api_answer(
                        server, "publish", {"channel": "document:oom", "data": {}}
                    )
                    assert answer == {"error": {"code": 100, "message": "internal server error"}}
            warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
            assert len(warnings) == 1 and "HTTP API calls" in warnings[0], warnings
            assert "publish: " in warnings[0] and "OOM" in warnings[0]
            await filler.flushdb()
            client = await RawClient.open(ws_url(server))
            assert "connect" in await client.connect(token("1", channels=["document:oom"]))
        finally:
            await filler.aclose()
