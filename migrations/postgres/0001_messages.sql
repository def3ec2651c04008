-- release: 0.2.0
-- The messages of channels with `spec.history` (DESIGN §9), partitioned by day on `created`
-- so retention drops whole partitions instead of deleting rows. `created` is the id's
-- millisecond time (UUIDv7), so a redelivered message lands in the same partition and its
-- primary key conflicts (`INSERT … ON CONFLICT DO NOTHING`). The store creates each day's
-- partition, `messages_pYYYYMMDD`, ahead of time; the DEFAULT partition catches the rest.
CREATE TABLE messages (
    id UUID NOT NULL,
    created TIMESTAMPTZ NOT NULL,
    tenant TEXT NOT NULL,
    channel TEXT NOT NULL,
    channel_uid TEXT NOT NULL,
    subtopic TEXT NOT NULL,
    payload BYTEA NOT NULL,
    qos SMALLINT NOT NULL,
    content_type TEXT,
    publisher TEXT,
    publisher_kind TEXT,
    protocol TEXT NOT NULL,
    created_ns BIGINT NOT NULL,
    -- A JSON array of [key, value] pairs, as the SQLite store keeps them.
    user_properties TEXT,
    stored_bytes INTEGER NOT NULL,
    PRIMARY KEY (id, created)
) PARTITION BY RANGE (created);

CREATE TABLE messages_default PARTITION OF messages DEFAULT;

-- A channel's pages, and the sweep's per-channel deletes (one index per partition).
CREATE INDEX messages_by_channel ON messages (tenant, channel, channel_uid, id);
