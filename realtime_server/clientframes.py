"""Client frames of the common kind, read without websockets' parser (:func:`plain_frame`).

Nearly every frame a client sends is one whole, unfragmented, masked text frame under
64 KiB: a command. websockets' parser (a generator per connection, a ``Frame`` object
and its checks per frame) costs about 6 us of CPU for one; reading such a frame from the
bytes costs about 2, and a connection whose frames are all of that kind never needs
websockets' protocol object at all (1.4 KiB per idle connection; ``wsconn.py`` makes it
on the first frame of any other kind, or when the connection closes).

:func:`plain_frame` reads only what websockets would read the same way: FIN set, no
reserved bit (no extension is ever negotiated), a text or binary opcode, the mask bit
set, a 7- or 16-bit length within ``max_size``, the whole frame present. Anything else
(a control frame, a fragment, a 64-bit length, an unmasked or oversized frame, a frame
split over reads) returns None, and from there websockets' protocol reads the stream:
it starts at a frame boundary, as it would have. ``tests/test_clientframes.py`` checks
both readers agree.
"""

from __future__ import annotations

from typing import Final

from websockets.utils import apply_mask

__all__ = ["plain_frame"]

_TEXT: Final = 0x81
"""FIN, no reserved bits, opcode 1 (text)."""
_BINARY: Final = 0x82


def plain_frame(data: bytes, pos: int, max_size: int | None) -> tuple[bytes, bool, int] | None:
    """The frame at ``data[pos:]`` if it is a plain one (see the module docstring):
    ``(payload, is_text, end)``, the payload unmasked and ``end`` the position after
    the frame; else None."""
    end = len(data)
    if pos + 6 > end:
        return None
    head = data[pos]
    if head != _TEXT and head != _BINARY:
        return None
    length = data[pos + 1]
    if length < 0x80:  # not masked: websockets fails the connection (1002)
        return None
    length &= 0x7F
    if length < 126:
        start = pos + 2
    elif length == 126:
        start = pos + 4
        if start + 4 > end:
            return None
        length = int.from_bytes(data[pos + 2 : start], "big")
    else:
        return None
    if max_size is not None and length > max_size:
        return None
    stop = start + 4 + length
    if stop > end:
        return None
    return apply_mask(data[start + 4 : stop], data[start : start + 4]), head == _TEXT, stop
