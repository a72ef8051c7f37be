"""``python -m realtime_server`` runs the command line (``serve`` by default)."""

from __future__ import annotations

import sys

from .cli import main

sys.exit(main())
