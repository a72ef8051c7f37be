"""Ours, the floor and the peers on the same workload, one after the other, in one run:
one table per server and mode, then the ratios (ours / floor, ours / each peer) for
deliveries per second, server CPU microseconds per delivery, latency p99 and memory per
idle connection, then the verdicts against issue 5's and issue 15's targets.

This is ``fanout.py`` with other defaults (every option is fanout's, see
bench/README.md; an option given on the command line replaces its default):

- ``--servers ours,floor,starlette,socketio-node,python-socketio``: the peers are
  Starlette + encode/broadcaster on Redis under uvicorn (``starlette_broadcaster.py``),
  Node.js socket.io 4.8 (``peers/socketio/server.mjs``) and python-socketio 5 under
  uvicorn (``python_socketio_server.py``), each built the way its users build it;
- ``--subscribers 1000,5000``;
- ``--mode spread,bursts``: one publication at a time, and bursts of ``--burst-size``
  (10) publications in one ``/api/batch`` request.

    make bench-deps                                              # the peers' packages
    .venv/bin/python bench/compare.py
    .venv/bin/python bench/compare.py --subscribers 1000 --repeat 2 --json > result.json
    .venv/bin/python bench/compare.py --servers ours,floor,starlette --mode both \\
        --subscribers 1000,10000                                 # issue 5's comparison

The alternative (``starlette``) and ``ours-redis`` get a private redis-server each.
"""

from __future__ import annotations

import sys
from typing import Final

import fanout

__all__ = ["DEFAULTS", "main"]

DEFAULTS: Final = {
    "--servers": "ours,floor,starlette,socketio-node,python-socketio",
    "--subscribers": "1000,5000",
    "--mode": "spread,bursts",
}


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    for option, value in DEFAULTS.items():
        if not any(a == option or a.startswith(option + "=") for a in args):
            args = [option, value, *args]
    return fanout.main(args)


if __name__ == "__main__":
    sys.exit(main())
