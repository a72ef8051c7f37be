-- The event log (SQLite, the embedded default): the same columns as the PostgreSQL
-- table. Times are unix seconds (REAL); ids are UUID text; details JSON text. Ties in
-- time are broken by rowid (storage order).

CREATE TABLE IF NOT EXISTS events (
    id            TEXT    PRIMARY KEY NOT NULL,
    time          REAL    NOT NULL,
    type          TEXT    NOT NULL,
    node          TEXT    NOT NULL,
    user_id       TEXT,
    client_id     TEXT,
    channel       TEXT,
    document_id   TEXT,
    stream_offset INTEGER,
    code          INTEGER,
    details       TEXT
);

CREATE INDEX IF NOT EXISTS events_document_time ON events (document_id, time)
    WHERE document_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_user_time ON events (user_id, time)
    WHERE user_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_channel_time ON events (channel, time)
    WHERE channel IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_time ON events (time);
