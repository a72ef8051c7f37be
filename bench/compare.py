"""Ours, the floor and the alternative on the same workload, one after the other, in one
run: one table per server and mode, then the ratios (ours / floor, ours / alternative)
for deliveries per second, server CPU microseconds per delivery, latency p99 and memory
per connection, burst and spread, then the verdicts against issue 5's targets.

This is ``fanout.py`` with ``--servers ours,floor,starlette`` by default (every other
option is fanout's, see bench/README.md):

    .venv/bin/python bench/compare.py                          # 1,000 and 10,000 subscribers
    .venv/bin/python bench/compare.py --subscribers 1000 --repeat 2 --json > result.json

The alternative (``starlette``: Starlette + encode/broadcaster on Redis under uvicorn,
``starlette_broadcaster.py``) and ``ours-redis`` (our server on the Redis engine) get a
private redis-server each.
"""

from __future__ import annotations

import sys

import fanout

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not any(a == "--servers" or a.startswith("--servers=") for a in args):
        args = ["--servers", "ours,floor,starlette", *args]
    return fanout.main(args)


if __name__ == "__main__":
    sys.exit(main())
