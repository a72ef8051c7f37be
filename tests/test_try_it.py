"""The README's "Try it by hand" sequence, run as written: the first shell's commands
(with ``make serve`` replaced by what it runs, and free ports added to the environment
file), then the second shell's, line by line, in a scratch folder holding links to the
virtualenv and docs/. The listener must print the publication, then the 4501 close."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import orjson

from .helpers import MS
from .prereq import need_program
from .redis_server import free_port

ROOT = Path(__file__).parent.parent
WAIT = 15000 * MS


def shell_blocks() -> list[list[str]]:
    """The ``sh`` blocks of the section, as commands (continuation lines joined)."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Try it by hand", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
    assert len(blocks) == 2, "Try it by hand: one block per shell"
    return [[c.strip() for c in b.replace("\\\n", " ").splitlines() if c.strip()] for b in blocks]


def environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("REALTIME_")}


async def run(command: str, cwd: Path) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        "bash",
        "-c",
        f". ./.realtime.env && {command}",
        cwd=cwd,
        env=environment(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), WAIT)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


@asynccontextmanager
async def started(
    command: str, cwd: Path, ready: bytes
) -> AsyncIterator[tuple[asyncio.subprocess.Process, list[bytes]]]:
    """A long-running command of the sequence, once a line holding ``ready`` appeared."""
    proc = await asyncio.create_subprocess_exec(
        "bash",
        "-c",
        f". ./.realtime.env && exec {command}",
        cwd=cwd,
        env=environment(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    lines: list[bytes] = []
    try:
        async with asyncio.timeout(WAIT):
            while not lines or ready not in lines[-1]:
                line = await proc.stdout.readline()
                assert line, b"".join(lines).decode()
                lines.append(line)
        yield proc, lines
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), WAIT)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def test_try_it_by_hand_as_written(tmp_path: Path) -> None:
    need_program("openssl", "apt-get install openssl")
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parent.parent)
    (tmp_path / "docs").symlink_to(ROOT / "docs")
    first, second = shell_blocks()
    assert first[-1] == "make serve"
    for command in first[:-1]:
        if command != ". ./.realtime.env":
            proc = await asyncio.create_subprocess_exec("bash", "-c", command, cwd=tmp_path)
            assert await asyncio.wait_for(proc.wait(), WAIT) == 0, command
    env_file = tmp_path / ".realtime.env"
    assert re.fullmatch(
        r"export REALTIME_JWT_SECRET=[0-9a-f]{64}\nexport REALTIME_API_KEY=[0-9a-f]{32}\n",
        env_file.read_text(),
    )
    with env_file.open("a") as f:  # free ports instead of 8000/8001, which may be taken
        f.write(f"export REALTIME_PORT={free_port()} REALTIME_API_PORT={free_port()}\n")

    serve = ".venv/bin/realtime-server serve"  # what `make serve` runs once installed
    outputs: dict[str, str] = {}
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(started(serve, tmp_path, b"HTTP server API on"))
        listener: asyncio.subprocess.Process | None = None
        for command in second:
            if command == ". ./.realtime.env":
                continue
            if command.endswith("&"):  # the listener: the next line waits until it is in
                background = started(command[:-1].strip(), tmp_path, b"connected as client")
                listener, lines = await stack.enter_async_context(background)
                assert b"(user:42, document:7)" in lines[-1]
            elif command == "wait":
                assert listener is not None and listener.stdout is not None
                rest = await asyncio.wait_for(listener.stdout.read(), WAIT)
                assert await asyncio.wait_for(listener.wait(), WAIT) == 0
                outputs["listener"] = rest.decode()
            else:
                code, out = await run(command, tmp_path)
                assert code == 0, f"{command}: {out}"
                outputs[command.split()[1]] = out
    published = orjson.loads(outputs["publish"])
    assert published["channel"] == "document:7" and published["offset"] == 1
    assert outputs["revoke"].startswith("revoked token ")
    heard = [orjson.loads(x) for x in outputs["listener"].splitlines()[:-1]]
    assert heard[0]["push"]["join"]["info"]["user"] == "42"  # itself, on document:7
    assert heard[1] == {
        "push": {"channel": "document:7", "pub": {"data": {"status": "signed"}, "offset": 1}}
    }
    assert outputs["listener"].splitlines()[-1] == "closed: 4501 token revoked"
