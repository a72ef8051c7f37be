-- The outbox, in the application's own database: a row inserted in the transaction that
-- changes a document commits or rolls back with that change, and the realtime-server
-- nodes execute committed rows (once, in id order per partition). Only these three
-- objects (and the version table realtime_outbox_migrations) are created.

CREATE TABLE IF NOT EXISTS realtime_outbox (
    id         bigserial   PRIMARY KEY,
    method     text        NOT NULL DEFAULT 'publish',  -- an HTTP server API method
    payload    jsonb       NOT NULL,                    -- its JSON body
    partition  integer     NOT NULL DEFAULT 0,          -- 0 .. REALTIME_OUTBOX_PARTITIONS-1
    created_at timestamptz NOT NULL DEFAULT now()
);

-- A consumer reads one partition in id order; the poll probes each partition's first row.
CREATE INDEX IF NOT EXISTS realtime_outbox_partition_id ON realtime_outbox (partition, id);

-- Rows that can never run (unknown method, malformed payload, refused channel), with why.
CREATE TABLE IF NOT EXISTS realtime_outbox_failed (
    id         bigint      PRIMARY KEY,
    method     text        NOT NULL,
    payload    jsonb       NOT NULL,
    partition  integer     NOT NULL,
    created_at timestamptz NOT NULL,
    error      text        NOT NULL,
    failed_at  timestamptz NOT NULL DEFAULT now()
);

-- Queue a publication (in the caller's transaction) and wake the consumers at commit.
-- Callable from a trigger: PERFORM realtime_publish('document:' || NEW.id, ...).
-- Notifications with the same payload in one transaction are folded into one, so a
-- transaction queueing many rows of a partition sends one.
CREATE OR REPLACE FUNCTION realtime_publish(channel text, data jsonb, partition integer DEFAULT 0)
RETURNS bigint
LANGUAGE plpgsql
AS $$
DECLARE
    queued bigint;
BEGIN
    INSERT INTO realtime_outbox (method, payload, partition)
    VALUES ('publish',
            jsonb_build_object('channel', realtime_publish.channel, 'data', realtime_publish.data),
            realtime_publish.partition)
    RETURNING id INTO queued;
    PERFORM pg_notify('realtime_outbox', realtime_publish.partition::text);
    RETURN queued;
END
$$;
