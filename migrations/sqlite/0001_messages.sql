-- release: 0.2.0
-- The messages of channels with `spec.history` (DESIGN §9). One row per message, keyed by
-- its UUIDv7 id (16 bytes; byte order is time order), so a redelivered batch inserts nothing
-- twice and pages run in id order.
CREATE TABLE messages (
    id BLOB PRIMARY KEY NOT NULL,
    tenant TEXT NOT NULL,
    channel TEXT NOT NULL,
    channel_uid TEXT NOT NULL,
    subtopic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    content_type TEXT,
    publisher TEXT,
    publisher_kind TEXT,
    protocol TEXT NOT NULL,
    created_ns INTEGER NOT NULL,
    user_properties TEXT,
    stored_bytes INTEGER NOT NULL
);

-- A channel's pages, and the sweep's per-channel deletes.
CREATE INDEX messages_by_channel ON messages (tenant, channel, channel_uid, id);
