"""The command line explains itself: the default command, help texts that name the
secret variables (never their values), a description for every command, ``token --json``."""

from __future__ import annotations

import argparse
import time

import jwt
import orjson

from realtime_server.cli import build_parser
from realtime_server.config import VARIABLES

from .helpers import API_KEY, SECRET
from .procs import cli_env, run_cli, server_process

SECRET_NAMES = (
    "REALTIME_JWT_SECRET",
    "REALTIME_API_KEY",
    "REALTIME_REDIS_URL",
    "REALTIME_DATABASE_URL",
)


async def test_options_without_a_command_run_serve() -> None:
    async with server_process("--port", "0", "--api-port", "0", command=()) as srv:
        assert srv.port and srv.api_port
    # And an option's value is checked as serve checks it (was: "invalid choice").
    code, _, err = await run_cli("--port", "99999")
    assert code == 2 and "REALTIME_PORT" in err and err.strip().count("\n") == 0


async def test_serve_help_names_the_secret_variables_never_their_values() -> None:
    env = cli_env(
        REDIS_URL="redis://:redis-password-xyz@127.0.0.1:6379/0",
        DATABASE_URL="postgresql://u:pg-password-xyz@127.0.0.1/db",
    )
    code, out, _ = await run_cli("serve", "--help", env=env)
    assert code == 0
    secrets = [v.name for v in VARIABLES if v.secret]
    assert set(SECRET_NAMES) <= set(secrets)
    for name in secrets:  # every secret by name: it has no option to show it
        assert name in out
    for value in (SECRET, API_KEY, "redis-password-xyz", "pg-password-xyz"):
        assert value not in out


def _commands(parser: argparse.ArgumentParser, path: str = "") -> list[tuple[str, str]]:
    """(command path, description) of every command and sub-command."""
    found: list[tuple[str, str]] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                full = f"{path} {name}".strip()
                found.append((full, child.description or ""))
                found.extend(_commands(child, full))
    return found


def test_every_command_has_a_description() -> None:
    commands = dict(_commands(build_parser()))
    for expected in ("serve", "token", "publish", "revoke", "check", "migrate", "audit"):
        assert expected in commands
    missing = [name for name, text in commands.items() if len(text) < 20]
    assert not missing, f"commands without a description: {missing}"


async def test_token_json_prints_token_jti_and_exp() -> None:
    code, out, err = await run_cli("token", "--user", "42", "--ttl", "120", "--json")
    assert code == 0, err
    printed = orjson.loads(out)
    assert set(printed) == {"token", "jti", "exp"}
    claims = jwt.decode(printed["token"], SECRET, algorithms=["HS256"])
    assert claims["jti"] == printed["jti"] and claims["exp"] == printed["exp"]
    assert 115 <= printed["exp"] - time.time() <= 121
