"""The node's journal: what ``Journal.record`` makes of its arguments, down to the
stored row (a real SQLite store behind the batching writer)."""

from __future__ import annotations

import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from realtime_server.events.buffer import BufferedRecorder
from realtime_server.events.model import EventType, new_event_id
from realtime_server.events.sqlite import SqliteStore
from realtime_server.events.store import EventQuery
from realtime_server.journal import Journal

from .helpers import MS


@dataclass
class Session:
    user: str
    client_id: str


async def test_record_fills_every_field_and_stores_it(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "events.db", timeout=5000 * MS)
    recorder = BufferedRecorder(store, tmp_path / "spill.jsonl")
    await recorder.start()
    journal = Journal("node-1", recorder)
    s = Session("u1", "c1")
    before = time.time()
    journal.record(EventType.CONNECT, s, remote="127.0.0.1", name="js")
    journal.record(EventType.SUBSCRIBE, s, channel="document:7", offset=3)
    journal.record(EventType.DISCONNECT, s, code=3000, at=1_700_000_000.25, by="client")
    journal.record(EventType.TOKEN_REVOKED, user="u2")
    journal.record(EventType.CONNECT_REJECTED, Session("", "c2"), code=3500)
    after = time.time()
    await recorder.close()

    reader = SqliteStore(tmp_path / "events.db", readonly=True)
    await reader.connect()
    found = {e.type: e for e in await reader.query(EventQuery())}
    await reader.close()
    connect, subscribe = found[EventType.CONNECT], found[EventType.SUBSCRIBE]
    assert (connect.node, connect.user, connect.client, connect.channel) == (
        "node-1",
        "u1",
        "c1",
        None,
    )
    assert connect.details == {"remote": "127.0.0.1", "name": "js"}
    assert before - 1e-6 <= connect.time <= after + 1e-6
    assert (subscribe.channel, subscribe.document, subscribe.offset) == ("document:7", "7", 3)
    assert subscribe.details is None  # no details: NULL, not {}
    disconnect = found[EventType.DISCONNECT]
    assert (disconnect.code, disconnect.time) == (3000, 1_700_000_000.25)
    assert disconnect.details == {"by": "client"}
    revoked = found[EventType.TOKEN_REVOKED]
    assert (revoked.user, revoked.client) == ("u2", None)
    rejected = found[EventType.CONNECT_REJECTED]
    assert (rejected.user, rejected.client, rejected.code) == (None, "c2", 3500)
    assert len({e.id for e in found.values()}) == 5

    with sqlite3.connect(tmp_path / "events.db") as db:
        ids = [row[0] for row in db.execute("SELECT id FROM events")]
    assert all(str(uuid.UUID(text)) == text for text in ids)  # canonical UUID text


def test_event_ids_are_uuids_that_behave_like_any() -> None:
    made = [new_event_id() for _ in range(3)]
    assert len(set(made)) == 3
    for event_id in made:
        same = uuid.UUID(str(event_id))
        assert event_id == same and hash(event_id) == hash(same)
        assert event_id.bytes == same.bytes and event_id.is_safe is uuid.SafeUUID.unknown
    assert made[0].int >> 64 == made[2].int >> 64  # one random prefix per process
    assert made[1].int - made[0].int == 1


def test_a_disabled_journal_records_nothing() -> None:
    journal = Journal("n")
    assert not journal.enabled
    journal.record(EventType.CONNECT, Session("u", "c"))  # no recorder behind: a no-op
