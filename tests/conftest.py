"""Fixtures: a real server on a free loopback port, in the test's event loop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import pytest

from realtime_server.app import Running, running
from realtime_server.server import WEBSOCKET_PATH

from .helpers import make_settings


def ws_url(server: Running) -> str:
    return f"ws://127.0.0.1:{server.port}{WEBSOCKET_PATH}"


def api_url(server: Running) -> str:
    return f"http://127.0.0.1:{server.api_port}"


StartServer = Callable[..., Awaitable[Running]]


@pytest.fixture
async def start_server(loop_guard: None) -> AsyncIterator[StartServer]:
    """Factory: ``await start_server(PING_INTERVAL=1)`` starts a server with those
    settings; every server is stopped at the end of the test."""
    async with AsyncExitStack() as stack:

        async def start(**env: Any) -> Running:
            return await stack.enter_async_context(running(make_settings(**env)))

        yield start


@pytest.fixture
async def server(start_server: StartServer) -> Running:
    return await start_server()


@pytest.fixture
async def loop_guard() -> AsyncIterator[None]:
    """Fail the test on exceptions nobody retrieved (unobserved tasks, callbacks)."""
    errors: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx))
    yield
    loop.set_exception_handler(previous)
    assert not errors, f"unhandled loop errors: {errors}"
