"""The server's text frames are byte for byte what websockets would serialize."""

from __future__ import annotations

import pytest
from websockets.frames import Frame, Opcode

from realtime_server.frames import text_frame


@pytest.mark.parametrize("length", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_text_frame_matches_websockets(length: int) -> None:
    payload = b"x" * length
    expected = Frame(Opcode.TEXT, payload).serialize(mask=False, extensions=[])
    assert text_frame(payload) == expected
