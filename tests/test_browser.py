"""Browser tests: headless Chromium (Debian's ``chromium`` at /usr/bin/chromium, driven by
``playwright-core`` from tests/js/node_modules; never a downloaded browser).

1. The demo page of ``realtime-server serve --demo`` (a real process on a free port):
   live timeline, presence join/leave, notifications, pings, token refreshes, recovery after
   a network drop, no request leaving the server's origin; a screenshot is saved as
   ``tests/artifacts/demo.png``. And across a server restart: the page reconnects by itself,
   reports that it could not recover (new stream) and reloads.
2. A page loading the official ``centrifuge`` SDK's browser build (served by the test, with
   a token endpoint standing in for a signing platform's backend, on another origin that
   ``REALTIME_ALLOWED_ORIGINS`` allows): connect with ``getToken``, the user channel as a
   server-side subscription, a document subscription with a subscription token, and the
   publications of both.

Each scenario is a Node script under tests/browser/ that prints JSON lines; the browser
gets a fresh profile directory, the script a hard deadline, and whatever it leaves running
(the script, its Chromium) is killed by id when the test ends.

Needs Node.js, ``npm ci --prefix tests/js`` (``make test`` runs it) and /usr/bin/chromium
(``.ci/run`` installs it on CI); skipped with one line without them (``tests/prereq.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from aiohttp import web

from .conftest import StartServer, ws_url
from .helpers import MS, sub_token, token
from .jsproc import Event, JsonLinesProcess
from .prereq import NODE_INSTALL, NPM_CI, missing, need_program
from .procs import CLI, cli_env
from .redis_server import free_port

HERE = Path(__file__).parent
BROWSER_DIR = HERE / "browser"
JS_DIR = HERE / "js"
ARTIFACTS = HERE / "artifacts"
CHROMIUM = os.environ.get("REALTIME_TEST_CHROMIUM", "/usr/bin/chromium")
SDK_BUNDLE = JS_DIR / "node_modules" / "centrifuge" / "dist" / "centrifuge.js"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _node() -> str:
    node = need_program("node", NODE_INSTALL)
    for module in ("playwright-core", "centrifuge"):
        if not (JS_DIR / "node_modules" / module).is_dir():
            missing(f"tests/js/node_modules/{module} not found: {NPM_CI}")
    if not os.access(CHROMIUM, os.X_OK):
        missing(
            f"Chromium not found at {CHROMIUM}: apt-get install --no-install-recommends "
            "chromium, or set REALTIME_TEST_CHROMIUM to a Chromium or Chrome binary"
        )
    return node


def _kill_processes_mentioning(marker: str) -> list[int]:
    """Kill (by pid) every process whose command line holds ``marker``: the Chromium that
    one of our scripts launched with that profile directory, should it outlive the script."""
    killed = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.name), signal.SIGKILL)
                killed.append(int(entry.name))
    return killed


class BrowserScript(JsonLinesProcess):
    """One ``tests/browser/<scenario>.mjs`` process and the events it printed."""

    label = "browser scenario"
    fatal = frozenset({"fail", "deadline", "pageerror"})
    wait = 15000 * MS

    def all(self, name: str) -> list[Event]:
        return [e for e in self.events if e.get("event") == name]

    async def finished(self, timeout: float = 15000 * MS) -> Event:
        """The final ``done`` event; the script must then exit with code 0."""
        done = await self.expect("done", timeout)
        async with asyncio.timeout(timeout):
            code = await self.proc.wait()
        assert code == 0, f"scenario exited with {code}\n{self.describe()}"
        return done

    async def cleanup(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()  # the script closes its browser on SIGTERM
            try:
                async with asyncio.timeout(6000 * MS):
                    await self.proc.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)  # its own group (new session)
                await self.proc.wait()
        await asyncio.gather(*self._readers, return_exceptions=True)


@asynccontextmanager
async def browser_script(
    scenario: str, *, deadline: float, **config: Any
) -> AsyncIterator[BrowserScript]:
    """Run ``tests/browser/<scenario>`` with a fresh Chromium profile; on leaving, make sure
    the script and its browser are gone and the profile removed."""
    node = _node()
    profile = tempfile.mkdtemp(prefix="rt-chromium-")
    settings = {
        "chromium": CHROMIUM,
        "userDataDir": profile,
        "deadlineMs": round(deadline * 1000),
        **config,
    }
    proc = await asyncio.create_subprocess_exec(
        node,
        str(BROWSER_DIR / scenario),
        json.dumps(settings),
        cwd=BROWSER_DIR,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    script = BrowserScript(proc)
    try:
        yield script
    finally:
        await script.cleanup()
        leftovers = _kill_processes_mentioning(profile)
        shutil.rmtree(profile, ignore_errors=True)
    assert not leftovers, f"the browser outlived its script: killed {leftovers}"


# --- 1. the demo page ----------------------------------------------------------------------


_DEMO_URL = re.compile(r"open (http://127\.0\.0\.1:\d+/) in a browser")


@asynccontextmanager
async def demo_process(tmp_path: Path, port: int = 0) -> AsyncIterator[tuple[str, list[str]]]:
    """``realtime-server serve --demo`` on ``port`` (0: a free one), without
    REALTIME_JWT_SECRET (the demo generates one). Yields the demo URL it printed and its log
    lines; stops it with SIGTERM and requires a clean exit."""
    env = cli_env(
        JWT_SECRET=None,
        API_KEY=None,
        PORT=str(port),
        PING_INTERVAL="1",
        LOG_LEVEL="INFO",
        SQLITE_PATH=str(tmp_path / "events.db"),
        EVENTS_SPILL_PATH=str(tmp_path / "events.spill.jsonl"),
    )
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        "serve",
        "--demo",
        "--demo-step",
        "0.3",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    log: list[str] = []

    async def drain(stream: asyncio.StreamReader) -> None:
        async for raw in stream:
            log.append(raw.decode(errors="replace"))

    assert proc.stdout is not None and proc.stderr is not None
    stderr_reader = asyncio.create_task(drain(proc.stderr))
    stdout_reader: asyncio.Task[None] | None = None
    try:
        async with asyncio.timeout(15000 * MS):
            while True:
                raw = await proc.stdout.readline()
                if not raw:
                    raise AssertionError("serve --demo exited:\n" + "".join(log))
                line = raw.decode(errors="replace")
                log.append(line)
                if match := _DEMO_URL.search(line):
                    url = match.group(1)
                    break
        stdout_reader = asyncio.create_task(drain(proc.stdout))
        yield url, log
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20000 * MS):  # the shutdown's own bound is 10 s
            code = await proc.wait()
        assert code == 0, "".join(log)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        readers = [stderr_reader] + ([stdout_reader] if stdout_reader else [])
        await asyncio.gather(*readers, return_exceptions=True)


def _contiguous(offsets: list[int]) -> bool:
    return bool(offsets) and sorted(set(offsets)) == list(range(min(offsets), max(offsets) + 1))


async def test_demo_page_live_presence_recovery_screenshot(tmp_path: Path) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "demo.png"
    screenshot.unlink(missing_ok=True)
    # ttl=4: both tokens are refreshed within the test; drop=2: a 2 s network drop.
    async with (
        demo_process(tmp_path) as (url, log),
        browser_script(
            "demo.mjs", deadline=35000 * MS, url=f"{url}?ttl=4&drop=2", screenshot=str(screenshot)
        ) as browser,
    ):
        done = await browser.finished(timeout=35000 * MS)
        page_errors = browser.all("pageerror")
        console = browser.all("console")
    described = browser.describe()
    assert not page_errors, described
    assert not console, described

    assert done["state"] == "connected"
    # Live timeline, with no gap in the offsets, through the drop and the recovery.
    assert len(done["timeline"]) >= 5 and _contiguous(done["timeline"]), described
    assert done["recovered"], described
    assert min(done["recovered"]) > done["lastOffsetBeforeDrop"], described
    assert "recovered" in done["note"]
    # Notifications on the viewer's user channel, also without gaps.
    assert done["notes"] and _contiguous(done["notes"]), described
    # Presence: simulated signers joined and left; the viewer is listed too.
    assert any(u.startswith("signer-") for u in done["presence"]["gone"]), described
    assert any(u.startswith("viewer-") for u in done["presence"]["seen"]), described
    # One reconnect (the drop), pings answered, both tokens refreshed.
    assert done["connects"] == 2, described
    assert done["pings"] >= 1 and done["refreshes"] >= 1 and done["subRefreshes"] >= 1
    # Nothing but the server itself: no CDN, no external network.
    assert done["foreign"] == [], described
    ws_endpoint = url.replace("http://", "ws://") + "connection/websocket"
    assert set(done["sockets"]) == {ws_endpoint}, described

    data = screenshot.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000
    # The generated secret is never printed (a 64-hex-digit run would be it).
    assert not re.search(r"\b[0-9a-f]{64}\b", "".join(log))


async def test_demo_page_after_server_restart(tmp_path: Path) -> None:
    """Restarting the server (memory engine: history gone, new epoch, new secret): the page
    reconnects by itself, says it could not recover, reloads and goes on live."""
    port = free_port()
    first, second = contextlib.AsyncExitStack(), contextlib.AsyncExitStack()
    (tmp_path / "1").mkdir()
    (tmp_path / "2").mkdir()
    async with contextlib.AsyncExitStack() as stack:
        # Left in reverse order: the browser first, then whichever server still runs.
        stack.push_async_exit(second)
        stack.push_async_exit(first)
        url, _ = await first.enter_async_context(demo_process(tmp_path / "1", port))
        browser = await stack.enter_async_context(
            browser_script("demo-restart.mjs", deadline=40000 * MS, url=url)
        )
        await browser.expect("ready")
        await first.aclose()  # SIGTERM: clients closed with 3001, clean exit
        await browser.send({"cmd": "stopped"})
        await browser.expect("lost")
        restarted, _ = await second.enter_async_context(demo_process(tmp_path / "2", port))
        assert restarted == url
        await browser.send({"cmd": "started"})
        done = await browser.finished(timeout=25000 * MS)
        assert not browser.all("pageerror"), browser.describe()
    assert "could not be recovered" in done["note"]
    assert done["connects"] == 2
    assert done["timeline"] and min(done["timeline"]) == 1  # the new stream, from its start


# --- 2. the official SDK in a browser ------------------------------------------------------


@asynccontextmanager
async def backend_site(user: str) -> AsyncIterator[tuple[str, list[str]]]:
    """A signing platform's front end and backend in miniature: the SDK page, the SDK's
    browser build, and a token endpoint (``/token``, ``/token?channel=C``) for ``user``."""
    requests: list[str] = []

    async def page(request: web.Request) -> web.StreamResponse:
        name = request.match_info.get("name") or "index.html"
        return web.FileResponse(BROWSER_DIR / "sdk-page" / name)

    async def sdk(_request: web.Request) -> web.StreamResponse:
        return web.FileResponse(SDK_BUNDLE, headers={"Content-Type": "text/javascript"})

    async def mint(request: web.Request) -> web.Response:
        channel = request.query.get("channel")
        requests.append(channel or "connection")
        if channel is None:
            return web.json_response({"token": token(user, info={"name": "Alice Martin"})})
        return web.json_response({"token": sub_token(user, channel, info={"role": "signer"})})

    app = web.Application()
    app.router.add_get("/", page)
    app.router.add_get("/centrifuge.js", sdk)
    app.router.add_get("/token", mint)
    app.router.add_get("/{name:page\\.js}", page)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield f"http://127.0.0.1:{port}", requests
    finally:
        await runner.cleanup()


async def test_official_sdk_in_browser(start_server: StartServer) -> None:
    _node()  # the prerequisites first: skipped (failed on CI) without them
    assert SDK_BUNDLE.is_file(), "tests/js/node_modules/centrifuge/dist/centrifuge.js is missing"
    doc = "document:contract-7"
    async with backend_site("alice") as (origin, token_requests):
        # The page's origin is allowed explicitly: the browser sends it in the handshake.
        server = await start_server(ALLOWED_ORIGINS=f"https://app.example.com,{origin}")
        url = f"{origin}/?ws={ws_url(server)}&channel={doc}"
        async with browser_script("sdk.mjs", deadline=30000 * MS, url=url) as browser:
            loaded = await browser.expect("loaded")
            assert loaded["sdk"] == "function"
            connected = await browser.expect("page", kind="connected")
            assert connected["transport"] == "websocket"
            assert connected["client"] in server.node.registry
            own = await browser.expect("page", kind="server_subscribed", channel="user:alice")
            assert own["recoverable"] is True
            subscribed = await browser.expect("page", kind="subscribed", channel=doc)
            assert subscribed["recoverable"] is True and subscribed["positioned"] is True

            position = await server.node.ops.publish(doc, b'{"status":"signed","signer":"bob"}')
            assert position is not None
            pub = await browser.expect("page", kind="publication", channel=doc)
            assert pub["data"] == {"status": "signed", "signer": "bob"}
            assert pub["offset"] == position.offset

            await server.node.ops.publish("user:alice", b'{"text":"Bob signed contract 7"}')
            note = await browser.expect("page", kind="server_publication", channel="user:alice")
            assert note["data"] == {"text": "Bob signed contract 7"}

            await browser.send({"cmd": "presence"})
            presence = await browser.expect("presence")
            assert presence["users"] == ["alice"]

            await browser.send({"cmd": "exit"})
            await browser.finished()
            assert not browser.all("pageerror"), browser.describe()
        # One connection token and one subscription token, both through getToken.
        assert sorted(token_requests) == sorted(["connection", doc])
