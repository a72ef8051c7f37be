"""The container setup: the Dockerfile installs from the lock in its own layer and binds
both ports to every interface; compose.yaml (two nodes, Redis with an append-only file,
PostgreSQL, HAProxy checking /readyz) is valid and holds no credential. ``docker compose
config`` needs no Docker engine; without the compose CLI that test is skipped."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from pathlib import Path

from .helpers import MS
from .prereq import optional

ROOT = Path(__file__).parent.parent
COMPOSE = ROOT / "compose.yaml"
HAPROXY = ROOT / "deploy" / "haproxy.cfg"
CREDENTIALS = ("REALTIME_JWT_SECRET", "REALTIME_API_KEY", "POSTGRES_PASSWORD")


async def run(*command: str, env: dict[str, str]) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *command,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60000 * MS)
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


async def compose_command() -> list[str]:
    """``docker compose`` (the CLI plugin), else ``docker-compose``; skip without both."""
    env = {**os.environ}
    if shutil.which("docker") and (await run("docker", "compose", "version", env=env))[0] == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    optional("docker compose not found: compose.yaml not checked (install the docker CLI)")


def test_dockerfile_installs_the_lock_first_and_listens_on_all_interfaces() -> None:
    text = (ROOT / "Dockerfile").read_text()
    lock = text.index("--require-hashes --no-deps -r requirements/main.txt")
    assert text.index("COPY requirements/main.txt") < lock < text.index("COPY realtime_server")
    assert "--no-deps --no-build-isolation ." in text
    for variable in ("REALTIME_HOST=0.0.0.0", "REALTIME_API_HOST=0.0.0.0"):
        assert variable in text
    assert not re.search(r"REALTIME_(JWT_SECRET|API_KEY|REDIS_URL|DATABASE_URL)=", text)


def test_compose_file_writes_no_credential() -> None:
    text = COMPOSE.read_text()
    for name in CREDENTIALS:
        for line in (x for x in text.splitlines() if f"{name}:" in x and "#" not in x[:4]):
            assert f"${{{name}:?" in line, line  # a required reference, never a value


def test_haproxy_checks_readyz() -> None:
    text = HAPROXY.read_text()
    assert text.count("option httpchk GET /readyz") == 2
    assert re.findall(r"server (node\d) \1:8000 check", text) == ["node1", "node2"]


async def test_compose_config_is_valid_and_needs_every_credential() -> None:
    command = await compose_command()
    env = {k: v for k, v in os.environ.items() if k not in CREDENTIALS}
    code, out = await run(*command, "config", "-q", env=env)
    assert code != 0 and "REALTIME_JWT_SECRET" in out, out  # refused: nothing set

    values = {name: f"value-of-{name.lower()}" for name in CREDENTIALS}
    code, out = await run(*command, "config", "-q", env={**env, **values})
    assert code == 0, out
    code, out = await run(*command, "config", env={**env, **values})
    assert code == 0, out
    assert "appendonly" in out and "/readyz" not in out  # (the checks are in haproxy.cfg)
    for node in ("node1", "node2"):
        assert re.search(rf"^  {node}:$", out, re.M), out
    assert out.count("REALTIME_REDIS_URL: redis://redis:6379/0") == 2
    assert out.count("postgresql://realtime:value-of-postgres_password@postgres:5432") == 2


async def test_haproxy_accepts_its_configuration() -> None:
    haproxy = shutil.which("haproxy")
    if haproxy is None:
        optional("haproxy not found: deploy/haproxy.cfg not checked (apt-get install haproxy)")
    code, out = await run(haproxy, "-c", "-f", str(HAPROXY), env={**os.environ})
    assert code == 0 and "Configuration file is valid" in out, out
