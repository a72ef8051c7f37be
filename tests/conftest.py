"""Fixtures: a real server on a free loopback port, in the test's event loop."""

from __future__ import annotations

import asyncio
import gc
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from typing import Any

import pytest

from realtime_server.app import Running, running
from realtime_server.loadtest.spawn import redis_command
from realtime_server.server import WEBSOCKET_PATH

from .helpers import RawClient, make_settings, token
from .prereq import MISSING, ON_CI
from .redis_server import free_port, require_redis_server

# The contract suites and the core's unit tests run on both event loops: the standard
# one and uvloop, which `serve` uses in production.
BOTH_LOOPS = frozenset(
    {
        "test_engine_contract.py",
        "test_events_contract.py",
        "test_subscriptions.py",
        "test_core_adversity.py",
        "test_live.py",
    }
)


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    if item.path.name not in BOTH_LOOPS:
        return {"asyncio": asyncio.new_event_loop}
    import uvloop

    return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


def ws_url(server: Running) -> str:
    return f"ws://127.0.0.1:{server.port}{WEBSOCKET_PATH}"


async def connected(server: Running, user: str = "42", **claims: object) -> RawClient:
    """A client connected to ``server`` as ``user`` (token claims from ``claims``)."""
    client = await RawClient.open(ws_url(server))
    reply = await client.connect(token(user, **claims))
    assert "connect" in reply, reply
    return client


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
def no_collector() -> Iterator[None]:
    """The garbage collector off for the test: what is freed was freed by reference
    counting (used to check that closed connections leave no reference cycles)."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


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


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """One private redis-server for the session's Redis tests (each test uses its own
    key prefix); fault tests start their own."""
    server = require_redis_server()
    port = free_port()
    data_dir = tempfile.mkdtemp(prefix="rt-redis-")
    proc = subprocess.Popen(
        redis_command(server, port, data_dir),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("private redis-server did not start") from None
                time.sleep(0.02)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def redis_prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}:"


def pytest_report_header() -> str:
    return f"CI={'true: a missing prerequisite fails' if ON_CI else 'unset: missing ones skip'}"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """One line per missing prerequisite (the tests needing it were skipped)."""
    if MISSING:
        terminalreporter.section("missing prerequisites: the tests needing them were skipped")
        for line in MISSING:
            terminalreporter.line(line)
