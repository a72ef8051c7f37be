"""What the load test refuses, what makes it fail, and what it spreads and reports:
``serve`` never imports it; a run that measured nothing exits non-zero and says why;
descriptor limits that cannot hold a run are refused in one line; connections spread
over several loopback source addresses; the kernel's listen-queue drops are read and
fail a reconnect storm.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import sys
import threading
import time
from typing import Any

import pytest

from realtime_server.loadtest import LoadTest, Options, UsageError
from realtime_server.loadtest.limits import source_addresses
from realtime_server.loadtest.netstat import ListenCounters, parse_netstat, read_listen_counters
from realtime_server.loadtest.procfs import read_proc, thread_cpu_s
from realtime_server.loadtest.report import render
from realtime_server.loadtest.verdict import failures

from .conftest import StartServer, api_url, ws_url
from .helpers import API_KEY, MS, SECRET
from .procs import CLI, cli_env, run_cli

pytestmark = pytest.mark.timeout(120)


# --- serve never imports the load test --------------------------------------------------------


async def test_the_command_line_registers_loadtest_without_importing_it() -> None:
    code = (
        "import realtime_server.cli, sys; realtime_server.cli.build_parser(); "
        "print(any(m.startswith('realtime_server.loadtest') for m in sys.modules))"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 20000 * MS)
    assert out.decode().strip() == "False"


async def test_a_running_server_has_imported_no_load_test_module() -> None:
    """``-X importtime`` lists every module the process imports, on stderr."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-X", "importtime", *CLI[1:], "serve",
        env=cli_env(LOG_LEVEL="INFO"), stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    imported: list[str] = []
    try:
        async with asyncio.timeout(20000 * MS):
            while True:
                line = (await proc.stderr.readline()).decode(errors="replace")
                assert line, "the server exited: " + "".join(imported[-20:])
                imported.append(line)
                if "HTTP server API on" in line:
                    break
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.communicate(), 20000 * MS)
    modules = [line.rsplit("|", 1)[-1].strip() for line in imported if "import time:" in line]
    assert "realtime_server.server" in modules  # the listing works
    assert not [m for m in modules if "loadtest" in m]


async def test_loadtest_help_is_the_load_tests_own() -> None:
    code, out, _ = await run_cli("loadtest", "--help")
    assert code == 0
    assert "--source-addresses" in out and "--max-error-share" in out


# --- a run that measured nothing fails -------------------------------------------------------


def _args(server: Any, *extra: str) -> list[str]:
    return [
        "loadtest", "--url", ws_url(server), "--api-url", api_url(server),
        "--scenario", "broadcast", "--users", "20", "--duration", "1", "--drain", "1",
        "--procs", "1", "--quiet", *extra,
    ]  # fmt: skip


async def test_a_run_whose_publications_all_failed_exits_non_zero(
    start_server: StartServer,
) -> None:
    server = await start_server()
    env = cli_env(JWT_SECRET=SECRET, API_KEY="not-the-api-key")
    code, out, err = await run_cli(*_args(server), env=env)
    assert code == 1, err
    assert "FAILED: nothing was published (api: HTTP 401:" in err
    assert "| publish errors" in out and "api: HTTP 401" in out  # the table still printed


async def test_a_run_whose_connections_all_failed_exits_non_zero(
    start_server: StartServer,
) -> None:
    server = await start_server()
    env = cli_env(JWT_SECRET="another-secret-than-the-servers-0123456789", API_KEY=API_KEY)
    code, _, err = await run_cli(*_args(server, "--json"), env=env)
    assert code == 1, err
    assert "FAILED: no connection opened (close 3500: 20)" in err
    assert "FAILED: nothing was delivered" not in err  # nobody was there to deliver to


async def test_a_clean_run_exits_zero(start_server: StartServer) -> None:
    server = await start_server()
    env = cli_env(JWT_SECRET=SECRET, API_KEY=API_KEY)
    code, _, err = await run_cli(*_args(server), env=env)
    assert code == 0, err
    assert "FAILED" not in err


def _result(**over: Any) -> dict[str, Any]:
    result: dict[str, Any] = {
        "connections": {"requested": 200, "opened": 200, "failed": {}, "reconnect_failed": {}},
        "publications": {"published": 100, "errors": {}},
        "deliveries": {"received": 900, "recovered": 0},
        "listen_queue": {"overflows": 0, "drops": 0},
    }
    for key, value in over.items():
        section, _, field = key.partition("__")
        if field:
            result[section][field] = value
        else:
            result[section] = value
    return result


def test_failures_beyond_the_share_fail_the_run() -> None:
    assert failures(_result(), 0.01) == []
    assert (
        failures(_result(connections__failed={"timeout (TCP)": 2}, connections__opened=198), 0.01)
        == []
    )
    [found] = failures(_result(connections__failed={"timeout (TCP)": 3}), 0.01)
    assert found == "connections: 3 of 200 failed (1.5%; timeout (TCP): 3)"
    [found] = failures(_result(publications__errors={"api: HTTP 503": 2}), 0.01)
    assert found.startswith("publications: 2 of 102 failed")
    assert failures(_result(publications__errors={"api: HTTP 503": 2}), 0.05) == []
    assert failures(_result(deliveries__received=0), 0.01) == ["nothing was delivered"]
    # listen-queue drops fail a reconnect storm only
    grew = {"overflows": 22, "drops": 22}
    assert failures(_result(listen_queue=grew), 0.01) == []
    storm = {"dropped": 200, "reconnected": 200, "all_back_s": 1.5}
    [found] = failures(_result(listen_queue=grew, storm=storm), 0.01)
    assert "ListenOverflows +22, ListenDrops +22" in found
    lagging = {"dropped": 200, "reconnected": 150, "all_back_s": None}
    [found] = failures(_result(storm=lagging), 0.01)
    assert found == "reconnect storm: 50 of 200 clients were not back by the end of the run"


# --- limits ------------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="needs prlimit (util-linux)")
async def test_a_run_the_open_file_limit_cannot_hold_is_refused_in_one_line() -> None:
    async def under_limit(*args: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            "prlimit", "--nofile=300:300", *CLI, "loadtest", "--spawn", "--quiet", *args,
            env=cli_env(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 30000 * MS)
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    code, out, err = await under_limit("--users", "1000", "--procs", "1")
    assert code == 2 and out == ""
    [line] = err.strip().splitlines()
    assert line.startswith("realtime-server loadtest: open-file limit 300 per generator")
    assert "1,000 connections each need 1,064" in line

    code, out, err = await under_limit("--users", "1000", "--procs", "8")
    assert code == 2 and out == ""
    [line] = err.strip().splitlines()
    assert line.startswith("realtime-server loadtest: open-file limit 300 of the server")
    assert "need 1,128 descriptors" in line


def test_source_addresses_cover_the_run() -> None:
    assert source_addresses(0, "127.0.0.1", 10_000, 28_232) == ()
    assert source_addresses(0, "127.0.0.1", 64_000, 28_232) == (
        "127.0.0.1", "127.0.0.2", "127.0.0.3",
    )  # fmt: skip
    assert source_addresses(2, "localhost", 10, 28_232) == ("127.0.0.1", "127.0.0.2")
    with pytest.raises(Exception, match="IPv4 loopback"):
        source_addresses(2, "::1", 10, 28_232)
    with pytest.raises(Exception, match="source addresses"):
        source_addresses(0, "::1", 64_000, 28_232)


def _established_peers(port: int) -> set[str]:
    """Remote addresses of the established IPv4 connections to local ``port``."""
    peers = set()
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            local, remote, state = fields[1], fields[2], fields[3]
            if state == "01" and int(local.split(":")[1], 16) == port:
                raw = bytes.fromhex(remote.split(":")[0])[::-1]  # little-endian on x86
                peers.add(socket.inet_ntoa(raw))
    return peers


async def test_connections_are_spread_over_source_addresses(start_server: StartServer) -> None:
    server = await start_server()
    opts = Options(
        url=ws_url(server), api_url=api_url(server), secret=SECRET, api_key=API_KEY,
        scenario="broadcast", users=60, rate=20.0, duration=1.0, drain=1.0, procs=2,
        source_addresses=3, progress=False,
    )  # fmt: skip
    run = asyncio.ensure_future(asyncio.to_thread(LoadTest(opts).run))
    seen: set[str] = set()
    while not run.done():  # what the server's side of the sockets shows, sampled
        seen |= _established_peers(server.port)
        await asyncio.wait([run], timeout=50 * MS)
    r = await run
    assert seen == {"127.0.0.1", "127.0.0.2", "127.0.0.3"}
    assert r["connections"]["by_source"] == {"127.0.0.1": 20, "127.0.0.2": 20, "127.0.0.3": 20}
    assert r["limits"]["source_addresses"] == ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
    assert r["failures"] == [] and r["deliveries"]["lost"] == 0
    assert r["listen_queue"] is not None  # a server on this machine: the kernel's counts read
    g = r["generators"]
    assert g["processes"] == 2 and g["cpu_us_per_delivery"] > 0
    # the machine's speed before and after the load (speed.py), in the JSON and the table
    before, after = r["machine"]["reference_us"]
    assert 0 < before < 1e6 and 0 < after < 1e6
    assert f"reference workload {before:,.0f} -> {after:,.0f} us" in render(r)


# --- the kernel's listen-queue drops -------------------------------------------------------------


NETSTAT = """\
TcpExt: SyncookiesSent SyncookiesRecv ListenOverflows ListenDrops TCPTimeouts
TcpExt: 0 0 22 25 7
IpExt: InNoRoutes InTruncatedPkts
IpExt: 0 0
MPTcpExt: MPCapableSYNRX
MPTcpExt: 0
"""


def test_netstat_is_parsed(tmp_path: Any) -> None:
    parsed = parse_netstat(NETSTAT)
    assert parsed["TcpExt"]["ListenOverflows"] == 22 and parsed["TcpExt"]["ListenDrops"] == 25
    assert parsed["IpExt"] == {"InNoRoutes": 0, "InTruncatedPkts": 0}
    assert parse_netstat("TcpExt: A B\nTcpExt: 1\n") == {}  # mismatched: skipped
    path = tmp_path / "netstat"
    path.write_text(NETSTAT)
    assert read_listen_counters(str(path)) == ListenCounters(22, 25)
    assert read_listen_counters(str(tmp_path / "missing")) is None
    assert ListenCounters(30, 31).minus(ListenCounters(22, 25)) == ListenCounters(8, 6)


def _overflow_a_listener() -> None:
    """Make the kernel count listen-queue overflows: SYNs to a socket listening with a
    backlog of 0 that never accepts (this machine's counters grow)."""
    before = read_listen_counters()
    assert before is not None
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        clients = [socket.socket() for _ in range(6)]
        try:
            for c in clients:
                c.setblocking(False)
                c.connect_ex(listener.getsockname())
            deadline = time.monotonic() + 5000 * MS
            while (now := read_listen_counters()) == before and time.monotonic() < deadline:
                time.sleep(0.01)  # the kernel counts as the SYNs arrive; no event to await
            assert now != before
        finally:
            for c in clients:
                c.close()


async def test_listen_queue_drops_during_a_reconnect_storm_fail_it(
    start_server: StartServer,
) -> None:
    """The kernel's counters are the machine's: drops at any listening socket while a
    storm runs (here one made on purpose as the storm begins) fail the run, loudly.
    (A real storm into a small backlog does the same, slowly: every dropped SYN costs
    its client 1, 3, 7... seconds; bench/README.md has the figures.)"""
    server = await start_server()
    opts = Options(
        url=ws_url(server), api_url=api_url(server), secret=SECRET, api_key=API_KEY,
        scenario="reconnect-storm", users=60, documents=12, doc_rate=20.0, user_rate=20.0,
        duration=2.0, storm_at=0.5, drop="network", reconnect_delay=0.2, drain=1.0, procs=1,
        progress=False,
    )  # fmt: skip

    def log(text: str) -> None:
        if text.startswith("storm:"):
            _overflow_a_listener()

    r = await asyncio.to_thread(LoadTest(opts, log=log).run)
    listen = r["listen_queue"]
    assert listen is not None and listen["overflows"] > 0
    assert r["storm"]["all_back_s"] is not None
    [found] = r["failures"]
    assert found.startswith("the kernel dropped connections at a full accept queue")


# --- tokens signed with a private key ----------------------------------------------------------


async def test_tokens_can_be_signed_with_a_private_key(start_server: StartServer) -> None:
    """``--jwt-algorithm RS256``: the secret variable holds a PEM private key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    server = await start_server(JWT_SECRET=None, JWT_PUBLIC_KEY=public, JWT_ALGORITHMS="RS256")
    opts = Options(
        url=ws_url(server), api_url=api_url(server), secret=private, algorithm="RS256",
        api_key=API_KEY, scenario="broadcast", users=10, duration=1.0, drain=1.0, procs=1,
        progress=False,
    )  # fmt: skip
    r = await asyncio.to_thread(LoadTest(opts).run)
    assert r["connections"]["opened"] == 10 and r["failures"] == []
    spawned = Options(spawn=True, algorithm="RS256", secret=private)
    with pytest.raises(UsageError, match="needs a running server"):
        LoadTest(spawned).validate()


async def test_the_connect_cost_names_its_sample_and_a_small_one_is_noted(
    start_server: StartServer,
) -> None:
    server = await start_server()  # in this process: its CPU is this process's
    env = cli_env(JWT_SECRET=SECRET, API_KEY=API_KEY)
    code, out, err = await run_cli(
        *_args(server, "--json", "--server-pid", str(os.getpid())), env=env
    )
    assert code == 0, err
    result = json.loads(out)
    measured = result["server"]["connects_measured"]
    assert 0 < measured <= 20  # the warm-up connects are not in it
    # /proc counts CPU in 10 ms clock ticks: 20 connects (about 10 ms of work) may fall
    # within one tick and read 0, which is why the small sample is noted.
    assert result["server"]["cpu_us_per_connect"] >= 0
    assert any(f"over {measured:,} connects only" in note for note in result["notes"])


def test_the_reference_workload_is_its_best_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """A run the scheduler interrupted does not set the machine's speed figure."""
    from realtime_server.loadtest import speed

    pauses = iter([0.0, 0.2, 0.0, 0.0])  # the warm-up, one interrupted run, two quick ones
    monkeypatch.setattr(speed, "_workload", lambda: time.sleep(next(pauses)))
    assert speed.reference_us(runs=3) < 100_000


def test_thread_cpu_counts_one_thread_only() -> None:
    """``thread_cpu_s(pid, pid)`` is the main thread's CPU: a busy second thread's
    shows in the process's figure (``read_proc``) and not in it."""
    pid = os.getpid()

    def spin() -> None:
        started = time.thread_time()
        while time.thread_time() - started < 0.3:
            sum(range(1000))

    process, main = read_proc(pid).cpu_s, thread_cpu_s(pid, pid)
    worker = threading.Thread(target=spin)
    worker.start()
    worker.join()
    process_used = read_proc(pid).cpu_s - process
    main_used = thread_cpu_s(pid, pid) - main
    assert process_used >= 0.25  # the spinning thread's (10 ms clock ticks)
    assert main_used < process_used - 0.2
