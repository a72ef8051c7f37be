"""``realtime-server loadtest``: the command line of the load test.

    realtime-server loadtest --spawn --scenario signing-day
    REALTIME_JWT_SECRET=... REALTIME_API_KEY=... realtime-server loadtest \\
        --url ws://127.0.0.1:8000/connection/websocket --api-url http://127.0.0.1:8001 \\
        --scenario broadcast --users 2000 --server-pid 1234

Secrets come from the environment only (``--secret-env``, ``--api-key-env``,
``--redis-url-env`` name the variables). Exit codes: 0 the run measured what it set out
to; 1 it failed, was interrupted, or measured failures (connections or publications
failing beyond ``--max-error-share``, nothing published or delivered, SYNs dropped in a
reconnect storm: each named on stderr, after the table); 2 bad usage or limits that
cannot hold the run.

The ``realtime-server`` command line hands ``loadtest ...`` to :func:`main` without
importing this package beforehand (``serve`` never loads it).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence

import orjson

from .errors import LoadTestError, UsageError
from .options import MAX_DURATION, MAX_USERS, Options
from .runner import LoadTest
from .scenarios import DEFAULTS, SCENARIOS

__all__ = ["build_parser", "main"]

HELP = "drive a server with many clients and publications; print what it measured"


def build_parser(prog: str = "realtime-server loadtest") -> argparse.ArgumentParser:
    """The ``loadtest`` command's options."""
    p = argparse.ArgumentParser(
        prog=prog,
        description="Load test: N authenticated WebSocket clients from several generator "
        "processes, publications at steady rates, publish-to-receive latency, losses, and "
        "the server's CPU and memory. Sends traffic to loopback only, unless "
        "--allow-remote. Exits 1 when the run measured failures (see --max-error-share).",
    )
    p.add_argument(
        "--scenario",
        choices=SCENARIOS,
        default="signing-day",
        help="preset workload (default signing-day)",
    )
    t = p.add_argument_group("target")
    t.add_argument(
        "--url", help="WebSocket URL of a running server (ws://127.0.0.1:8000/connection/websocket)"
    )
    t.add_argument("--api-url", help="its HTTP server API (http://127.0.0.1:8001)")
    t.add_argument(
        "--spawn",
        action="store_true",
        help="start a server for the run (free loopback ports, generated secret; "
        "a private redis-server when the Redis engine is needed)",
    )
    t.add_argument(
        "--workers",
        type=int,
        default=1,
        help="with --spawn: serve --workers N (N > 1 uses the Redis engine)",
    )
    t.add_argument(
        "--engine",
        choices=("auto", "memory", "redis"),
        default="auto",
        help="with --spawn: the engine (auto: Redis when the workload needs it)",
    )
    t.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="with --spawn: an extra REALTIME_* setting for the server (repeatable)",
    )
    t.add_argument(
        "--server-pid",
        type=int,
        help="PID of an external server, to report its CPU and memory "
        "(its child processes are counted too)",
    )
    t.add_argument(
        "--secret-env",
        default="REALTIME_JWT_SECRET",
        help="environment variable holding the HS256 secret (REALTIME_JWT_SECRET)",
    )
    t.add_argument(
        "--jwt-algorithm",
        choices=("HS256", "RS256", "PS256", "ES256", "EdDSA"),
        default="HS256",
        help="algorithm of the tokens the load test mints; other than HS256, the "
        "--secret-env variable holds the PEM private key of the server's key set "
        "(REALTIME_JWT_JWKS_URL with that one key: tokens carry no kid) (HS256)",
    )
    t.add_argument(
        "--api-key-env",
        default="REALTIME_API_KEY",
        help="environment variable holding the API key (REALTIME_API_KEY)",
    )
    t.add_argument(
        "--redis-url-env",
        default="REALTIME_REDIS_URL",
        help="environment variable holding the Redis URL for --publish-via "
        "redis|python (REALTIME_REDIS_URL)",
    )
    t.add_argument(
        "--redis-prefix",
        default=os.environ.get("REALTIME_REDIS_PREFIX", "rt:"),
        help="the server's Redis prefix (rt:)",
    )
    t.add_argument(
        "--allow-remote", action="store_true", help="allow targets that are not loopback addresses"
    )
    w = p.add_argument_group("workload (defaults depend on the scenario)")
    w.add_argument(
        "--users",
        type=int,
        help=f"connections, one per user (at most {MAX_USERS:,}; "
        + ", ".join(f"{k} {v.users or 0:,}" for k, v in DEFAULTS.items())
        + ")",
    )
    w.add_argument("--documents", type=int, help="documents (signing-day 2,000)")
    w.add_argument("--participants", type=int, help="users per document (5)")
    w.add_argument("--rate", type=float, help="broadcast: publications per second (10)")
    w.add_argument(
        "--doc-rate",
        type=float,
        help="document status events per second, all documents together (200)",
    )
    w.add_argument(
        "--user-rate",
        type=float,
        help="personal notifications per second, all users together (100)",
    )
    w.add_argument("--churn-rate", type=float, help="churn: new connections per second (50)")
    w.add_argument("--churn-lifetime", type=float, help="churn: seconds each one stays (5)")
    w.add_argument(
        "--drop",
        choices=("api", "restart", "network"),
        default="api",
        help="reconnect-storm: how clients are dropped: the server API's "
        "disconnect with 3001 for every user (api), a server restart (restart, "
        "needs --spawn), or a reset of every socket (network)",
    )
    w.add_argument(
        "--storm-at",
        type=float,
        help="reconnect-storm: seconds into the publications (a third of --duration)",
    )
    w.add_argument(
        "--reconnect-delay",
        type=float,
        default=2.0,
        help="clients reconnect after a random delay up to this (2 s)",
    )
    w.add_argument(
        "--publish-via",
        choices=("api", "redis", "python"),
        default="api",
        help="HTTP server API; plain Redis PUBLISH to rt:{channel}; or the Python "
        "Publisher over Redis (default api)",
    )
    r = p.add_argument_group("run")
    r.add_argument(
        "--duration",
        type=float,
        help=f"seconds of publications (at most {MAX_DURATION:g}; 20-30 by scenario)",
    )
    r.add_argument(
        "--drain",
        type=float,
        default=10.0,
        help="at most this many seconds to wait for deliveries still in flight (10)",
    )
    r.add_argument("--procs", type=int, default=2, help="generator processes (2)")
    r.add_argument(
        "--concurrency",
        type=int,
        default=32,
        help="connections being opened at once per generator (32)",
    )
    r.add_argument(
        "--connect-rate",
        type=float,
        default=0.0,
        help="connections opened per second in all (0: as fast as they go)",
    )
    r.add_argument("--inflight", type=int, default=32, help="publications in flight at once (32)")
    r.add_argument(
        "--source-addresses",
        type=int,
        default=0,
        metavar="N",
        help="bind connections to N loopback source addresses, 127.0.0.1 and up, each "
        "with the whole ephemeral port range (0: as many as the run needs, about one "
        "per 22,000 connections)",
    )
    r.add_argument(
        "--max-error-share",
        type=float,
        default=0.01,
        metavar="FRACTION",
        help="connections, reconnects or publications failing beyond this share fail the "
        "run (0.01)",
    )
    r.add_argument(
        "--pin",
        action="store_true",
        help="with --spawn: the server on the first CPU (one per worker), the "
        "load generators, publisher and Redis on the others",
    )
    r.add_argument("--json", action="store_true", help="print the result as JSON")
    r.add_argument("--quiet", action="store_true", help="no progress line")
    r.add_argument("--debug-discard", type=int, default=0, help=argparse.SUPPRESS)
    return p  # fmt: skip


def options_from_args(args: argparse.Namespace) -> Options:
    server_env: dict[str, str] = {}
    for item in args.server_env:
        name, sep, value = item.partition("=")
        if not sep or not name.startswith("REALTIME_"):
            raise UsageError(f"--server-env: expected REALTIME_NAME=VALUE, got {item!r}")
        server_env[name] = value
    return Options(
        scenario=args.scenario,
        url=args.url,
        api_url=args.api_url,
        secret=os.environ.get(args.secret_env) or None,
        algorithm=args.jwt_algorithm,
        api_key=os.environ.get(args.api_key_env) or None,
        redis_url=os.environ.get(args.redis_url_env) or None,
        redis_prefix=args.redis_prefix,
        audience=os.environ.get("REALTIME_JWT_AUDIENCE") or None,
        issuer=os.environ.get("REALTIME_JWT_ISSUER") or None,
        spawn=args.spawn,
        workers=args.workers,
        engine=args.engine,
        server_env=server_env,
        server_pid=args.server_pid,
        publish_via=args.publish_via,
        users=args.users,
        documents=args.documents,
        participants=args.participants,
        rate=args.rate,
        doc_rate=args.doc_rate,
        user_rate=args.user_rate,
        churn_rate=args.churn_rate,
        churn_lifetime=args.churn_lifetime,
        drop=args.drop,
        storm_at=args.storm_at,
        reconnect_delay=args.reconnect_delay,
        duration=args.duration,
        drain=args.drain,
        procs=args.procs,
        concurrency=args.concurrency,
        connect_rate=args.connect_rate,
        inflight=args.inflight,
        source_addresses=args.source_addresses,
        max_error_share=args.max_error_share,
        allow_remote=args.allow_remote,
        pin=args.pin,
        progress=not args.quiet,
        discard=args.debug_discard,
    )


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """``realtime-server loadtest`` with ``argv`` (the arguments after ``loadtest``)."""
    args = build_parser().parse_args(argv)
    # SIGTERM (and SIGINT, which a shell may start background jobs ignoring) raise
    # KeyboardInterrupt, so that every process the run started is stopped.
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return _loadtest(args)
    finally:
        for sig, action in previous.items():
            signal.signal(sig, action)


def _say(text: str) -> None:
    print(f"realtime-server loadtest: {text}", file=sys.stderr)


def _loadtest(args: argparse.Namespace) -> int:
    try:
        opts = options_from_args(args)
        test = LoadTest(opts, log=lambda text: print(f"loadtest: {text}", file=sys.stderr))
        test.validate()
        result = test.run()
    except UsageError as exc:
        _say(str(exc))
        return 2
    except LoadTestError as exc:
        _say(str(exc))
        return 1
    except KeyboardInterrupt:
        print("\nrealtime-server loadtest: interrupted; every process stopped", file=sys.stderr)
        return 1
    if args.json:
        print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    else:
        from .report import render

        print(render(result))
    for failure in result["failures"]:
        _say(f"FAILED: {failure}")
    return 1 if result["failures"] else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
