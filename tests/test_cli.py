"""The command line and the process: exit codes, one-line errors, SIGTERM drain."""

from __future__ import annotations

import signal
import time

import jwt
import orjson

from .helpers import API_KEY, MS, SECRET, RawClient, token
from .procs import cli_env, run_cli, server_process


async def test_serve_without_key_exits_2_naming_variable() -> None:
    code, _, err = await run_cli("serve", env=cli_env(JWT_SECRET=None))
    assert code == 2
    assert err.strip().count("\n") == 0 and "REALTIME_JWT_SECRET" in err


async def test_malformed_value_exits_2_naming_variable() -> None:
    code, _, err = await run_cli("serve", env=cli_env(PORT="eighty"))
    assert code == 2 and "REALTIME_PORT" in err and err.strip().count("\n") == 0
    code, _, err = await run_cli("serve", env=cli_env(JWT_ALGORITHMS="none"))
    assert code == 2 and "REALTIME_JWT_ALGORITHMS" in err
    code, _, err = await run_cli("serve", env=cli_env(JWT_ALGORITHMS="RS256"))
    assert code == 2 and "REALTIME_JWT_ALGORITHMS" in err


async def test_help_never_shows_secrets() -> None:
    code, out, _ = await run_cli("serve", "--help")
    assert code == 0 and "--port" in out
    assert SECRET not in out and API_KEY not in out and "--jwt-secret" not in out


async def test_bad_usage_exits_2() -> None:
    assert (await run_cli("token"))[0] == 2
    assert (await run_cli("revoke"))[0] == 2
    code, _, err = await run_cli("publish", "document:1", "{not json")
    assert code == 2 and "JSON" in err


async def test_token_command_mints_verifiable_tokens() -> None:
    code, out, _ = await run_cli("token", "--user", "42", "--channel", "document:1", "--ttl", "60")
    assert code == 0
    claims = jwt.decode(out.strip(), SECRET, algorithms=["HS256"])
    assert claims["sub"] == "42" and claims["channels"] == ["document:1"]
    assert 55 <= claims["exp"] - time.time() <= 61 and claims["jti"]
    code, out, _ = await run_cli("token", "--user", "42", "--subscription", "document:1")
    assert jwt.decode(out.strip(), SECRET, algorithms=["HS256"])["channel"] == "document:1"


async def test_publish_fails_cleanly_without_server() -> None:
    code, _, err = await run_cli(
        "publish", "document:1", "{}", env=cli_env(API_URL="http://127.0.0.1:9")
    )
    assert code == 1 and "unreachable" in err and err.strip().count("\n") == 0


async def test_process_publish_revoke_check_and_sigterm_drain() -> None:
    async with server_process() as srv:
        client = await RawClient.open(srv.ws_url)
        await client.connect(token("42", jti="cli-jti", channels=["document:1"]))
        other = await RawClient.open(srv.ws_url)
        await other.connect(token("7"))

        code, out, err = await run_cli(
            "publish", "document:1", '{"status":"signed"}', env=cli_env(**srv.api_env)
        )
        assert code == 0, err
        position = orjson.loads(out)
        assert position["offset"] == 1 and position["epoch"]
        assert (await client.push("pub"))["pub"]["data"] == {"status": "signed"}

        code, out, err = await run_cli("revoke", "--jti", "cli-jti", env=cli_env(**srv.api_env))
        assert code == 0, err
        assert (await client.closed())[0] == 4501

        code, out, err = await run_cli("check", env=cli_env(**srv.api_env))
        assert code == 0, err

        started = time.monotonic()
        exit_code = await srv.stop(signal.SIGTERM, timeout=10000 * MS)
        assert exit_code == 0
        assert await other.closed() == (3001, "shutdown")
        assert time.monotonic() - started < 5
    log = "".join(srv.log)
    assert SECRET not in log and API_KEY not in log and "cli-jti" not in log
