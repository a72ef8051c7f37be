"""The load test harness (``realtime-server loadtest``) counts right.

Small runs (a few hundred connections, a few seconds) against a server started in the
test (in process, in the test's event loop; the harness runs in a thread, its generator
and publisher processes beside it): every publication it claims was delivered was, a
run where nothing is lost reports nothing lost, and a run where one delivery is thrown
away on purpose (the generators' test hook) reports exactly that one as lost.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from realtime_server.loadtest import LoadTest, LoadTestError, Options
from realtime_server.loadtest.options import check_target
from realtime_server.loadtest.stats import Histogram

from .conftest import StartServer, api_url, ws_url
from .helpers import API_KEY, SECRET
from .procs import cli_env, run_cli

pytestmark = pytest.mark.timeout(90)


async def _run(start_server: StartServer, **options: Any) -> dict[str, Any]:
    server = await start_server()
    opts = Options(
        url=ws_url(server),
        api_url=api_url(server),
        secret=SECRET,
        api_key=API_KEY,
        progress=False,
        procs=2,
        drain=3.0,
        **options,
    )
    return await asyncio.to_thread(LoadTest(opts).run)


def _check_counts(r: dict[str, Any], users: int) -> None:
    c, p, d = r["connections"], r["publications"], r["deliveries"]
    assert c["opened"] == users and c["failed"] == {}
    assert c["missing_subscriptions"] == 0
    assert p["published"] > 0 and p["errors"] == {}
    assert d["expected"] > 0
    assert d["duplicates"] == 0
    assert r["latency_ms"]["p50"] > 0


async def test_nothing_lost_is_reported_as_nothing_lost(start_server: StartServer) -> None:
    """A reconnect storm (every user disconnected with 3001 through the server API while
    publications flow): each missed publication comes back by recovery, none is lost,
    and live + recovered deliveries are exactly what was published to each user."""
    r = await _run(
        start_server,
        scenario="reconnect-storm",
        users=200,
        documents=40,
        doc_rate=40.0,
        user_rate=40.0,
        duration=4.0,
        storm_at=1.0,
        reconnect_delay=0.5,
        drop="api",
    )
    _check_counts(r, 200)
    d, storm = r["deliveries"], r["storm"]
    assert d["lost"] == 0 and d["gaps"] == 0 and d["never_arrived"] == 0
    assert d["received"] + d["recovered"] == d["expected"]
    assert storm["dropped"] == 200 and storm["reconnected"] == 200
    assert storm["all_back_s"] is not None
    assert r["connections"]["closed"] == {"3001": 200}
    # 40 documents x 5 participants + 200 personal channels, recovered on reconnect
    assert storm["subscriptions_recovered"] == 400 and storm["subscriptions_not_recovered"] == 0
    assert storm["missed_recovered"] == d["recovered"] > 0


async def test_a_delivery_dropped_on_purpose_is_reported_lost(start_server: StartServer) -> None:
    r = await _run(
        start_server,
        scenario="signing-day",
        users=150,
        documents=30,
        doc_rate=30.0,
        user_rate=30.0,
        duration=2.0,
        discard=1,
    )
    _check_counts(r, 150)
    d = r["deliveries"]
    assert d["discarded_by_test_hook"] == 1
    assert d["lost"] == 1
    assert d["received"] == d["expected"] - 1
    assert d["recovered"] == 0


def test_targets_outside_loopback_are_refused() -> None:
    assert check_target("ws://127.0.0.1:8000/connection/websocket", False, "--url") == (
        "127.0.0.1",
        8000,
    )
    assert check_target("ws://[::1]:8000/x", False, "--url") == ("::1", 8000)
    assert check_target("http://localhost:8001", False, "--api-url")[1] == 8001
    for url in ("ws://10.0.0.7:8000/", "http://example.com:8001", "redis://192.168.1.2/0"):
        with pytest.raises(LoadTestError, match="not a loopback address"):
            check_target(url, False, "--url")
    assert check_target("ws://10.0.0.7:8000/", True, "--url") == ("10.0.0.7", 8000)
    with pytest.raises(LoadTestError, match="TLS"):
        check_target("wss://127.0.0.1/", False, "--url")


async def test_command_refuses_a_remote_target_before_any_traffic() -> None:
    env = cli_env(JWT_SECRET=SECRET, API_KEY=API_KEY)
    code, out, err = await run_cli(
        "loadtest", "--url", "ws://10.255.255.1:8000/connection/websocket",
        "--api-url", "http://127.0.0.1:1", "--users", "5", "--duration", "1", env=env,
    )  # fmt: skip
    assert code == 2, err
    assert "not a loopback address" in err and "--allow-remote" in err
    assert out == ""
    code, _, err = await run_cli("loadtest", "--spawn", "--duration", "99999", env=env)
    assert code == 2 and "--duration" in err


def test_histogram_percentiles_are_close() -> None:
    rng = random.Random(5)
    values = sorted(int(rng.expovariate(1 / 5000)) for _ in range(20000))
    h = Histogram()
    for v in values:
        h.record(v)
    for q in (0.5, 0.9, 0.99):
        exact = values[int(q * len(values)) - 1]
        assert abs(h.percentile(q) - exact) <= max(2, exact * 0.02)
    assert h.maximum() == values[-1]
    merged = Histogram.merged([h, h])
    assert merged.total == 2 * h.total and merged.percentile(0.5) == h.percentile(0.5)
