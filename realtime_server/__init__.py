"""realtime-server: a real-time notification server for document e-signing platforms.

It speaks the Centrifugo client protocol v2 (JSON), so the ``centrifuge`` (npm) and
``centrifuge-python`` SDKs connect to it unchanged.
"""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
