"""``realtime-server serve --demo``: a live document-status page and a simulated signing
flow, on the embedded engine, for trying the server in a browser.

Never enabled by plain ``serve``. See :mod:`.site` (routes, token endpoint) and
:mod:`.simulation` (the flow); the page itself is ``static/`` (plain HTML, CSS and a small
protocol client of our own, no build step, nothing fetched from elsewhere).
"""

from __future__ import annotations

from .simulation import DOCUMENT, SIGNERS
from .site import Demo, prepare_demo

__all__ = ["DOCUMENT", "SIGNERS", "Demo", "prepare_demo"]
