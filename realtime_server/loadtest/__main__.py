"""``python -m realtime_server.loadtest``: the same as ``realtime-server loadtest``."""

from __future__ import annotations

import sys

from .cli import main

sys.exit(main())
