"""Batched random ids (:mod:`realtime_server.randomness`)."""

from __future__ import annotations

import os
import uuid

import pytest

from realtime_server.randomness import random_bytes, random_token, random_uuid


def test_random_uuid_is_a_version_4_uuid_in_canonical_text() -> None:
    for _ in range(2000):
        text = random_uuid()
        parsed = uuid.UUID(text)
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
        assert str(parsed) == text  # lower case, hyphens where uuid puts them


def test_random_ids_do_not_repeat() -> None:
    assert len({random_uuid() for _ in range(10_000)}) == 10_000
    assert len({random_token(16) for _ in range(10_000)}) == 10_000


def test_random_token_is_unpadded_urlsafe_base64() -> None:
    token = random_token(16)
    assert len(token) == 22
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def test_random_bytes_spans_batches() -> None:
    seen = b"".join(random_bytes(4096) for _ in range(3))
    assert len(seen) == 3 * 4096
    assert len({seen[i : i + 16] for i in range(0, len(seen), 16)}) == len(seen) // 16


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_draws_its_own_bytes() -> None:
    random_bytes(1)  # the parent holds a batch
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(write_end, random_bytes(32))
        os._exit(0)
    os.close(write_end)
    child = os.read(read_end, 32)
    os.close(read_end)
    os.waitpid(pid, 0)
    assert len(child) == 32
    assert child != random_bytes(32)
