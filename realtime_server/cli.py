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
import textwrap
import time
import uuid
from collections.abc import Coroutine, Sequence
from typing import Any

import jwt
import orjson

from . import __version__
from .config import VARIABLES, Settings
from .errors import BackendUnavailable, ConfigError, RealtimeError, missing_dependency

__all__ = ["main"]

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def _run(coro: Coroutine[Any, Any, int], *, serving: bool = False) -> int:
    try:
        import uvloop
    except ImportError:  # uvloop is a dependency where it builds (not on Windows)
        if serving:
            logging.getLogger("realtime_server").warning(
                "uvloop is not installed (pip install uvloop): serving on asyncio's "
                "default event loop, which is slower"
            )
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
    return _run(run(settings, reuse_port=settings.worker_id is not None, demo=demo), serving=True)


def cmd_token(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if not settings.jwt_secret:
        raise ConfigError("REALTIME_JWT_SECRET must be set to mint tokens")
    from .auth.keys import load_keys

    keys = load_keys(settings.jwt_secret, None, settings.jwt_algorithms, settings.jwt_jwks_url)
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
    encoded = jwt.encode(claims, keys.key, algorithm=keys.algorithms[0])
    if args.json:  # what `revoke --jti` needs, without decoding the token
        print(orjson.dumps({"token": encoded, "jti": claims["jti"], "exp": claims["exp"]}).decode())
    else:
        print(encoded)
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
    from .check import reach_backends, store_name

    verifier = build_verifier(settings)
    print(f"configuration: ok (engine {'redis' if settings.redis_url else 'memory'})")
    failures = _run(reach_backends(settings, store_name(settings), verifier.jwks_algorithms))
    return EXIT_OK if not failures else EXIT_FAILURE


_HELP_WIDTH = 79


def _secrets_epilog() -> str:
    """The secret variables by name (never their values): they have no option."""
    lines = ["secrets, from the environment only (never options, never printed):"]
    for var in VARIABLES:
        if var.secret:
            lines.append(
                textwrap.fill(
                    f"{var.name:<23} {var.help}",
                    width=_HELP_WIDTH,
                    initial_indent="  ",
                    subsequent_indent=" " * 26,
                )
            )
    lines.append("")
    lines.append(
        textwrap.fill(
            "Every option above is also a REALTIME_* environment variable (named in its "
            "help); an option wins over its variable. Options without a command go to "
            "serve: realtime-server --port 8002.",
            width=_HELP_WIDTH,
        )
    )
    return "\n".join(lines)


def _command(
    sub: Any, name: str, help_text: str, description: str, **kwargs: Any
) -> argparse.ArgumentParser:
    """A subcommand with its one-line ``help`` (in the command list) and its
    ``description`` (at the top of its own ``--help``)."""
    parser: argparse.ArgumentParser = sub.add_parser(
        name, help=help_text, description=description, **kwargs
    )
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="realtime-server",
        description="Real-time notification server for document e-signing platforms "
        "(Centrifugo client protocol v2, JSON). Without a command, runs serve.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = _command(
        sub,
        "serve",
        "run the server (the default command)",
        textwrap.fill(  # pre-wrapped: the epilog's layout needs the raw formatter
            "Run the server: WebSocket clients on REALTIME_HOST:REALTIME_PORT "
            "(/connection/websocket, /healthz, /readyz, /metrics), the HTTP server API on "
            "REALTIME_API_HOST:REALTIME_API_PORT when REALTIME_API_KEY is set. Needs "
            "REALTIME_JWT_SECRET or REALTIME_JWT_PUBLIC_KEY. SIGTERM drains (close 3001).",
            width=_HELP_WIDTH,
        ),
        epilog=_secrets_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
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

    token = _command(
        sub,
        "token",
        "mint a token with the configured HMAC secret",
        "Mint a connection token (or, with --subscription, a subscription token) signed "
        "with REALTIME_JWT_SECRET, for development and tests; your backend mints the "
        'real ones. Prints the token, or with --json {"token", "jti", "exp"} '
        "(the jti is what revoke --jti takes).",
    )
    token.add_argument("--user", required=True, metavar="ID", help="the sub claim")
    token.add_argument(
        "--channel",
        action="append",
        default=[],
        metavar="CHANNEL",
        help="a channel for the channels claim (repeatable)",
    )
    token.add_argument(
        "--subscription", metavar="CHANNEL", help="mint a subscription token for CHANNEL instead"
    )
    token.add_argument(
        "--ttl", type=int, default=3600, metavar="SECONDS", help="lifetime in seconds (3600)"
    )
    token.add_argument("--info", metavar="JSON", help="JSON for the info claim")
    token.add_argument(
        "--json", action="store_true", help='print {"token", "jti", "exp"} as one JSON line'
    )
    token.set_defaults(func=cmd_token)

    publish = _command(
        sub,
        "publish",
        "publish JSON to a channel, print the position",
        'Publish JSON to a channel and print {"channel", "offset", "epoch"}. With '
        "REALTIME_REDIS_URL it writes to Redis directly; otherwise it calls a running "
        "server's HTTP API at REALTIME_API_URL (default from REALTIME_API_HOST/PORT) with "
        "REALTIME_API_KEY.",
    )
    publish.add_argument("channel", metavar="CHANNEL", help="e.g. document:7")
    publish.add_argument("json", metavar="JSON", help='the data, e.g. \'{"status":"signed"}\'')
    publish.set_defaults(func=cmd_publish)

    revoke = _command(
        sub,
        "revoke",
        "revoke one token or all of a user's tokens",
        "Revoke one token by its jti, or every token of a user issued before a time. "
        "Connections holding them are closed with 4501 on every node. Like publish: "
        "through Redis with REALTIME_REDIS_URL, else through the server's HTTP API.",
    )
    revoke.add_argument("--jti", metavar="ID", help="revoke the token with this jti")
    revoke.add_argument(
        "--expires-at",
        type=float,
        metavar="UNIX_TIME",
        help="the token's exp (default: now + REALTIME_JWT_MAX_LIFETIME)",
    )
    revoke.add_argument("--user", metavar="ID", help="revoke every token of this user")
    revoke.add_argument(
        "--issued-before",
        type=float,
        metavar="UNIX_TIME",
        help="only tokens issued before this unix time (default: now)",
    )
    revoke.set_defaults(func=cmd_revoke)

    check = _command(
        sub,
        "check",
        "verify configuration and reach every backend",
        "Verify the configuration (the same checks as serve), then reach Redis "
        "(REALTIME_REDIS_URL) and the event log (REALTIME_DATABASE_URL or "
        "REALTIME_SQLITE_PATH). Prints one line per backend; exit 0 when all are "
        "reachable, 1 when one is not, 2 for a configuration error.",
    )
    check.set_defaults(func=cmd_check)

    from .events.cli import register as register_event_commands

    register_event_commands(sub)
    from .outbox.status import register as register_outbox

    register_outbox(sub)
    # The load test is registered without importing it (serve must not load it): every
    # argument after "loadtest" goes to its own parser (loadtest stream, issue 12).
    loadtest = sub.add_parser(
        "loadtest",
        help="drive a server with many clients and publications; print what it measured",
        description="The load test: real clients, real publications, a table of what "
        "the server did (realtime-server loadtest --help for its options).",
        add_help=False,
        prefix_chars="\0",  # no option of its own: "--spawn" and "--help" are its arguments
    )
    loadtest.add_argument("argv", nargs=argparse.REMAINDER)
    loadtest.set_defaults(func=cmd_loadtest)
    return parser


def cmd_loadtest(args: argparse.Namespace) -> int:
    from .loadtest.cli import main as loadtest_main

    return loadtest_main(args.argv)


_GLOBAL_FLAGS = frozenset({"-h", "--help", "--version"})


def _with_default_command(argv: list[str]) -> list[str]:
    """``serve`` is the default command: no arguments, or options first
    (``realtime-server --port 8002``), run it."""
    if not argv:
        return ["serve"]
    first = argv[0]
    if first.startswith("-") and first.split("=", 1)[0] not in _GLOBAL_FLAGS:
        return ["serve", *argv]
    return argv


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(_with_default_command(list(sys.argv[1:] if argv is None else argv)))
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
    except ModuleNotFoundError as exc:  # an install without the locked dependencies
        print(f"realtime-server: {missing_dependency(exc)}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_FAILURE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
