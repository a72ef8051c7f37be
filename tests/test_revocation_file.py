"""The embedded engine's revocation file: what a restart keeps (real files)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from realtime_server.auth.revocation import MemoryRevocationStore, Revocation
from realtime_server.auth.revocation_file import JsonLinesRevocationFile
from realtime_server.errors import BackendUnavailable

NOW = 1_000_000.0


async def test_a_new_store_reads_what_the_last_one_revoked(tmp_path: Path) -> None:
    path = str(tmp_path / "revocations.jsonl")
    store = MemoryRevocationStore(3600, clock=lambda: NOW, file=JsonLinesRevocationFile(path))
    assert store.load() == 0
    await store.revoke_token("j1", NOW + 600)
    await store.revoke_user("7", NOW - 5)
    await store.revoke_user("7", NOW - 50)  # an older cutoff does not lower it
    later = MemoryRevocationStore(3600, clock=lambda: NOW + 10, file=JsonLinesRevocationFile(path))
    assert later.load() == 3
    assert await later.is_revoked("j1", "42", NOW - 1)
    assert not await later.is_revoked("j2", "42", NOW - 1)
    assert await later.is_revoked(None, "7", NOW - 6)
    assert not await later.is_revoked(None, "7", NOW)


def test_what_stopped_mattering_and_torn_lines_are_dropped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "revocations.jsonl"
    path.write_bytes(
        b'{"kind":"jti","jti":"old","keep_until":999999.0}\n'
        b'{"kind":"jti","jti":"live","keep_until":1000100.0}\n'
        b'{"kind":"user","user":"7","issued_before":999000.0,"keep_until":1000200.0}\n'
        b"\n"
        b'{"kind":"jti","jti":"torn","keep_un'  # a crash mid-append
    )
    kept = JsonLinesRevocationFile(str(path)).load(NOW)
    assert kept == [
        Revocation("jti", jti="live", keep_until=1000100.0),
        Revocation("user", user="7", issued_before=999000.0, keep_until=1000200.0),
    ]
    assert "skipped 1 unreadable revocation lines" in caplog.text
    assert JsonLinesRevocationFile(str(path)).load(NOW) == kept  # rewritten with only those
    assert path.read_bytes().count(b"\n") == 2


def test_an_unusable_place_is_refused_at_start(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    with pytest.raises(NotADirectoryError):
        JsonLinesRevocationFile(str(tmp_path / "a-file" / "revocations.jsonl")).load(NOW)
    assert JsonLinesRevocationFile(str(tmp_path / "new" / "revocations.jsonl")).load(NOW) == []
    assert (tmp_path / "new").is_dir()  # made at start, as the SQLite log's folder
    assert not (tmp_path / "new" / "revocations.jsonl").exists()  # the first revocation's
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(PermissionError):
            JsonLinesRevocationFile(str(locked / "revocations.jsonl")).load(NOW)


async def test_a_revocation_that_cannot_be_kept_is_in_force_and_says_so(tmp_path: Path) -> None:
    path = tmp_path / "revocations.jsonl"
    store = MemoryRevocationStore(3600, file=JsonLinesRevocationFile(str(path)))
    path.mkdir()  # appending to a directory fails
    with pytest.raises(BackendUnavailable, match="not kept across a restart"):
        await store.revoke_token("j1", 2e9)
    assert await store.is_revoked("j1", "42", None)


async def test_the_file_is_compacted_as_it_runs_and_loses_nothing(tmp_path: Path) -> None:
    """Rewritten with what still matters once the appended lines outnumber it (1,024 at
    least): a long run does not grow the file without bound, and revocations made
    while it is rewritten are all kept."""
    path = str(tmp_path / "revocations.jsonl")
    clock = [NOW]
    store = MemoryRevocationStore(3600, clock=lambda: clock[0], file=JsonLinesRevocationFile(path))
    store.load()
    for i in range(1000):
        await store.revoke_token(f"old-{i}", NOW + 10)
    clock[0] = NOW + 100  # those no longer matter
    await asyncio.gather(*(store.revoke_token(f"new-{i}", NOW + 600) for i in range(1100)))
    lines = (await asyncio.to_thread(Path(path).read_bytes)).count(b"\n")
    assert lines < 2100  # compacted at least once
    later = MemoryRevocationStore(3600, clock=lambda: NOW + 100, file=JsonLinesRevocationFile(path))
    assert later.load() == 1100
    assert all([await later.is_revoked(f"new-{i}", "42", None) for i in range(1100)])
