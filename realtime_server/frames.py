"""WebSocket frame bytes built once and written to many transports.

Server-to-client frames are unmasked and compression is off, so the bytes of a frame do
not depend on the connection: one frame serves every subscriber of a publication, and
websockets' per-connection state stays consistent (it keeps no state per text frame
sent).
"""

from __future__ import annotations

from websockets.frames import Frame, Opcode

__all__ = ["text_frame"]


def text_frame(payload: bytes) -> bytes:
    """The bytes of one unmasked, uncompressed WebSocket text frame."""
    return Frame(Opcode.TEXT, payload).serialize(mask=False, extensions=[])
