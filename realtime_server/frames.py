"""WebSocket frame bytes built once and written to many transports.

Server-to-client frames are unmasked and compression is off, so the bytes of a frame do
not depend on the connection: one frame serves every subscriber of a publication, and
websockets' per-connection state stays consistent (it keeps no state per text frame
sent).
"""

from __future__ import annotations

from typing import Final

__all__ = ["text_frame"]

_SHORT_HEADS: Final = tuple(bytes((0x81, n)) for n in range(126))
"""FIN + text opcode, then the payload length when it fits in 7 bits."""


def text_frame(payload: bytes) -> bytes:
    """The bytes of one unmasked, uncompressed, unfragmented WebSocket text frame
    (RFC 6455 5.2; the same bytes as websockets' ``Frame.serialize``, checked in
    ``tests/test_frame_bytes.py``, without its object and checks: a few µs per frame
    on the connect path)."""
    n = len(payload)
    if n < 126:
        return _SHORT_HEADS[n] + payload
    if n < 65536:
        return b"\x81\x7e" + n.to_bytes(2, "big") + payload
    return b"\x81\x7f" + n.to_bytes(8, "big") + payload
