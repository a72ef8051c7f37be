"""Command line: ``serve`` (default), ``token``, ``publish``, ``revoke``, ``check``.

Exit codes: 0 success, 1 failure at run time, 2 bad usage or configuration. Errors are
one line on stderr; secrets (JWT secret, API key, URLs with passwords) are options of
no command: they come from the environment only.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
import uuid
from collections.abc import Coroutine, Sequence
from typing import Any

import jwt
import orjson

from . import __version__
from .config import VARIABLES, Settings
from .errors import BackendUnavailable, ConfigError, RealtimeError

__all__ = ["main"]

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def _run(coro: Coroutine[Any, Any, int]) -> int:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency where it builds
        return asyncio.run(coro)
    result: int = uvloop.run(coro)
    return result


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from .logscrub import install

    install()  # no token or credential in any log line, at any level (logscrub.py)
    if level.upper() != "DEBUG":  # one line per connection and HTTP request is noise
        logging.getLogger("websockets").setLevel(logging.WARNING)


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {
        var.field: getattr(args, var.field, None)
        for var in VARIABLES
        if getattr(args, var.field, None) is not None
    }
    return Settings.from_env(overrides={k: str(v) for k, v in overrides.items()})


def _add_serve_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "configuration (each overrides its environment variable; secrets: environment only)"
    )
    for var in VARIABLES:
        if var.option is None:
            continue
        default = f" (default {var.default})" if var.default is not None else ""
        group.add_argument(
            var.option,
            dest=var.field,
            metavar=var.metavar,
            help=f"{var.help}; env {var.name}{default}",
        )


def cmd_serve(args: argparse.Namespace) -> int:
    settings = _settings(args)
    _setup_logging(settings.log_level)
    from .app import build_verifier, run

    demo = None
    if getattr(args, "demo", False):  # one process, embedded engine, generated secret
        from .demo import prepare_demo

        if not 0 < args.demo_step <= 600:
            raise ConfigError("--demo-step must be between 0 and 600 seconds")
        settings, demo = prepare_demo(settings, step=args.demo_step)
    build_verifier(settings)  # refuse to start without a usable key
    if settings.workers > 1 and settings.worker_id is None:
        from .workers import run_workers

        return run_workers(settings.workers)
    return _run(run(settings, reuse_port=settings.worker_id is not None, demo=demo))


def cmd_token(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if not settings.jwt_secret:
        raise ConfigError("REALTIME_JWT_SECRET must be set to mint tokens")
    from .auth.keys import load_keys

    keys = load_keys(settings.jwt_secret, None, settings.jwt_algorithms)
    now = int(time.time())
    if args.ttl <= 0 or args.ttl > settings.jwt_max_lifetime:
        raise ConfigError(f"--ttl must be between 1 and {int(settings.jwt_max_lifetime)}")
    claims: dict[str, Any] = {
        "sub": args.user,
        "iat": now,
        "exp": now + args.ttl,
        "jti": uuid.uuid4().hex,
    }
    if settings.jwt_audience:
        claims["aud"] = settings.jwt_audience
    if settings.jwt_issuer:
        claims["iss"] = settings.jwt_issuer
    if args.info is not None:
        try:
            claims["info"] = orjson.loads(args.info)
        except orjson.JSONDecodeError:
            raise ConfigError("--info must be JSON") from None
    if args.subscription:
        if args.channel:
            raise ConfigError("--subscription and --channel do not go together")
        claims["channel"] = args.subscription
    elif args.channel:
        claims["channels"] = args.channel
    print(jwt.encode(claims, keys.key, algorithm=keys.algorithms[0]))
    return EXIT_OK


def _parse_json(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        raise ConfigError("JSON argument is not valid JSON") from None


def cmd_publish(args: argparse.Namespace) -> int:
    settings = _settings(args)
    data = _parse_json(args.json)

    async def go() -> int:
        from .publisher import Publisher

        async with Publisher(settings) as publisher:
            position = await publisher.publish(args.channel, data)
        if position is None:
            print(orjson.dumps({"channel": args.channel}).decode())
        else:
            print(
                orjson.dumps(
                    {"channel": args.channel, "offset": position.offset, "epoch": position.epoch}
                ).decode()
            )
        return EXIT_OK

    return _run(go())


def cmd_revoke(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if bool(args.jti) == bool(args.user):
        raise ConfigError("give exactly one of --jti or --user")

    async def go() -> int:
        from .publisher import Publisher

        async with Publisher(settings) as publisher:
            if args.jti:
                await publisher.revoke_token(args.jti, args.expires_at)
                print(f"revoked token {args.jti}")
            else:
                before = args.issued_before if args.issued_before is not None else time.time()
                await publisher.invalidate_user_tokens(args.user, before)
                print(f"revoked tokens of user {args.user} issued before {before:.0f}")
        return EXIT_OK

    return _run(go())


def cmd_check(args: argparse.Namespace) -> int:
    settings = _settings(args)
    from .app import build_verifier

    build_verifier(settings)
    print(f"configuration: ok (engine {'redis' if settings.redis_url else 'memory'})")

    async def reach() -> int:
        failures = 0
        if settings.redis_url:
            from .channels.redis_client import RedisCommands
            from .channels.redis_names import RedisNames

            commands = RedisCommands(
                settings.redis_url, RedisNames(settings.redis_prefix), settings.redis_timeout
            )
            ok = await commands.ping()
            await commands.close()
            print(f"redis: {'ok' if ok else 'unreachable'}")
            failures += not ok
        if settings.events_enabled:
            from .events.factory import build_store

            store = build_store(settings)
            kind = "postgres" if settings.database_url else f"sqlite {settings.sqlite_path}"
            try:
                await store.connect()
                print(f"event log ({kind}): ok")
            except Exception as exc:  # report any failure as one line
                print(f"event log ({kind}): unreachable ({type(exc).__name__})")
                failures += 1
            finally:
                await store.close()
        return EXIT_OK if not failures else EXIT_FAILURE

    return _run(reach())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="realtime-server",
        description="Real-time notification server for document e-signing platforms.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the server (the default command)")
    _add_serve_options(serve)
    serve.add_argument(
        "--demo",
        action="store_true",
        help="serve a live demo page at / with a simulated signing flow (embedded engine, "
        "generated JWT secret unless REALTIME_JWT_SECRET is set; for trying it out only)",
    )
    serve.add_argument(
        "--demo-step",
        type=float,
        default=2.5,
        metavar="SECONDS",
        help="seconds between the demo's simulated steps (2.5)",
    )
    serve.set_defaults(func=cmd_serve)

    token = sub.add_parser("token", help="mint a token with the configured HMAC secret")
    token.add_argument("--user", required=True, help="the sub claim")
    token.add_argument(
        "--channel",
        action="append",
        default=[],
        help="a channel for the channels claim (repeatable)",
    )
    token.add_argument(
        "--subscription", metavar="CHANNEL", help="mint a subscription token for CHANNEL instead"
    )
    token.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds (3600)")
    token.add_argument("--info", help="JSON for the info claim")
    token.set_defaults(func=cmd_token)

    publish = sub.add_parser("publish", help="publish JSON to a channel, print the position")
    publish.add_argument("channel")
    publish.add_argument("json")
    publish.set_defaults(func=cmd_publish)

    revoke = sub.add_parser("revoke", help="revoke one token or all of a user's tokens")
    revoke.add_argument("--jti", help="revoke the token with this jti")
    revoke.add_argument("--expires-at", type=float, help="the token's exp (default: max lifetime)")
    revoke.add_argument("--user", help="revoke every token of this user")
    revoke.add_argument(
        "--issued-before",
        type=float,
        help="only tokens issued before this unix time (default: now)",
    )
    revoke.set_defaults(func=cmd_revoke)

    check = sub.add_parser("check", help="verify configuration and reach every backend")
    check.set_defaults(func=cmd_check)

    from .events.cli import register as register_event_commands

    register_event_commands(sub)
    from .loadtest.cli import register as register_loadtest

    register_loadtest(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        args = parser.parse_args(["serve", *(argv if argv is not None else sys.argv[1:])])
    try:
        code: int = args.func(args)
        return code
    except ConfigError as exc:
        print(f"realtime-server: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BackendUnavailable as exc:
        print(f"realtime-server: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except RealtimeError as exc:
        print(f"realtime-server: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except OSError as exc:
        print(f"realtime-server: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_FAILURE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
