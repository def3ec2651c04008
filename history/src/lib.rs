//! Fleetward's message history (DESIGN §9): what channels with `spec.history` keep, behind
//! one interface over two stores.
//!
//! - [`SqliteStore`]: the embedded store of `fleetward start` (`<state-dir>/history.db`).
//! - [`PostgresStore`]: cluster mode, an existing PostgreSQL, partitioned by day.
//!
//! Both implement [`Store`]; [`HistoryStore`] is either, chosen at run time. Writers hand
//! [`Record`]s to [`Store::insert`] in batches ([`writer`]); the reader pages through
//! [`read`]. Migrations live at the top of the repository, in `migrations/sqlite/` and
//! `migrations/postgres/`, and obey the additive-only rules of [`migrations`].
#![warn(missing_docs)]
#![warn(clippy::too_many_lines)]

mod filter;
mod id;
pub mod lease;
pub mod migrations;
mod postgres;
mod read;
mod sqlite;
pub mod stream;
pub mod writer;

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;

pub use self::filter::{FilterError, SubtopicFilter};
pub use self::id::MessageId;
pub use self::postgres::{PostgresOptions, PostgresStore};
pub use self::read::{
    Cursor, DEFAULT_LIMIT, MAX_LIMIT, MAX_PAGE_BYTES, MAX_SCANNED, Order, Page, Query, read,
};
pub use self::sqlite::SqliteStore;
pub use sqlx::postgres::PgSslMode;

/// The default of a tenant's `limits.maxHistoryBytes`: 1 GiB of stored messages.
pub const DEFAULT_MAX_HISTORY_BYTES: u64 = 1 << 30;

/// What a store counts per row beside its text and bytes (id, times, flags), for the byte
/// figures of [`ChannelStats`] and the tenant's `maxHistoryBytes`.
pub const ROW_OVERHEAD: u64 = 64;

/// One stored message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Its id, given at ingress: unique and time-ordered.
    pub id: MessageId,
    /// The tenant.
    pub tenant: String,
    /// The channel.
    pub channel: String,
    /// The channel's uid when the message was accepted: a deleted and re-created channel
    /// (a new uid) never shows the old one's messages.
    pub channel_uid: String,
    /// What follows the channel in the topic: `/a/b` of `m/<t>/c/<ch>/a/b`, `/` of
    /// `m/<t>/c/<ch>/`, empty for the channel's own topic `m/<t>/c/<ch>`.
    pub subtopic: String,
    /// The payload.
    pub payload: Bytes,
    /// The QoS it was accepted with.
    pub qos: u8,
    /// Its content type, if the publisher gave one.
    pub content_type: Option<String>,
    /// The publishing thing or user.
    pub publisher: Option<String>,
    /// `thing` or `user`.
    pub publisher_kind: Option<String>,
    /// `mqtt`, `http` or `websocket`.
    pub protocol: String,
    /// When the dataplane accepted it, ns since the Unix epoch.
    pub created_ns: u64,
    /// The publisher's user properties, in order.
    pub user_properties: Vec<(String, String)>,
}

impl Record {
    /// The full topic, `m/<tenant>/c/<channel>[/<subtopic>]`.
    pub fn topic(&self) -> String {
        format!("m/{}/c/{}{}", self.tenant, self.channel, self.subtopic)
    }

    /// The bytes it counts against `maxHistoryBytes`, and a queue holding it against its
    /// bound: everything of variable size (payload, topic, properties, publisher) and
    /// [`ROW_OVERHEAD`]. Properties count as much as the payload: a message of small payload
    /// and large user properties is not a small message.
    pub fn stored_bytes(&self) -> u64 {
        let text = [
            &self.tenant,
            &self.channel,
            &self.channel_uid,
            &self.subtopic,
            &self.protocol,
        ]
        .iter()
        .map(|s| s.len())
        .sum::<usize>()
            + [&self.content_type, &self.publisher, &self.publisher_kind]
                .iter()
                .map(|s| s.as_ref().map_or(0, String::len))
                .sum::<usize>()
            + self
                .user_properties
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>();
        (self.payload.len() + text) as u64 + ROW_OVERHEAD
    }
}

/// A channel whose history is kept, as the policy says now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kept {
    /// The tenant.
    pub tenant: String,
    /// The channel.
    pub channel: String,
    /// Its uid: rows of another uid belong to a deleted channel of the same name.
    pub channel_uid: String,
    /// How long its messages are kept.
    pub retention: Duration,
    /// The tenant's `maxHistoryBytes`.
    pub max_tenant_bytes: u64,
}

impl Kept {
    /// The oldest id the channel keeps at `now_ns`: older ones are past its retention.
    pub fn cutoff(&self, now_ns: u64) -> MessageId {
        let retention = u64::try_from(self.retention.as_nanos()).unwrap_or(u64::MAX);
        MessageId::floor(now_ns.saturating_sub(retention))
    }

    /// Each tenant of `kept` once, with its `maxHistoryBytes`.
    pub fn tenant_quotas(kept: &[Kept]) -> Vec<(&str, u64)> {
        let mut tenants: Vec<(&str, u64)> = kept
            .iter()
            .map(|k| (k.tenant.as_str(), k.max_tenant_bytes))
            .collect();
        tenants.sort_unstable();
        tenants.dedup_by_key(|t| t.0);
        tenants
    }
}

/// Of a tenant's rows, oldest first as `(id, stored bytes)`, the last one to delete so that
/// `excess` (lowered by what each holds) reaches 0; `None` for no rows. Both stores trim a
/// tenant over its `maxHistoryBytes` with it, a page of rows at a time.
pub(crate) fn last_to_trim<T>(rows: Vec<(T, u64)>, excess: &mut u64) -> Option<T> {
    let mut last = None;
    for (id, bytes) in rows {
        last = Some(id);
        *excess = excess.saturating_sub(bytes);
        if *excess == 0 {
            break;
        }
    }
    last
}

/// What one sweep removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    /// Rows of channels (or tenants) that are gone, re-created, or no longer keep history.
    pub orphaned: u64,
    /// Rows past their channel's retention.
    pub expired: u64,
    /// The oldest rows of tenants over their `maxHistoryBytes`.
    pub over_quota: u64,
}

/// What a channel holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelStats {
    /// The tenant.
    pub tenant: String,
    /// The channel.
    pub channel: String,
    /// The channel's uid the rows belong to.
    pub channel_uid: String,
    /// Stored messages.
    pub messages: u64,
    /// Stored bytes ([`Record::stored_bytes`] summed).
    pub bytes: u64,
    /// The oldest message's created time, ns since the Unix epoch.
    pub oldest_ns: Option<u64>,
}

/// One bounded read of a channel's rows, in id order: what [`read`] asks a store for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scan {
    /// The tenant.
    pub tenant: String,
    /// The channel.
    pub channel: String,
    /// Only rows of this uid.
    pub channel_uid: String,
    /// Only subtopics that start with this (the filter's literal part; empty for all).
    pub prefix: String,
    /// Only rows whose subtopic is exactly the prefix (a filter without wildcards).
    pub exact: bool,
    /// Only ids above this (ascending) or below it (descending).
    pub after: Option<MessageId>,
    /// Only ids at or above this (the `from` time).
    pub min: Option<MessageId>,
    /// Only ids below this (the `to` time).
    pub max: Option<MessageId>,
    /// Newest first or oldest first.
    pub order: Order,
    /// At most this many rows.
    pub limit: u32,
}

/// Why a store call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database answered with an error, or could not be reached.
    #[error("history store: {0}")]
    Database(#[from] sqlx::Error),
    /// A migration could not run.
    #[error("history migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A stored row could not be read back.
    #[error("history store: a stored row is not valid: {0}")]
    Corrupt(String),
}

/// The interface both stores implement.
pub trait Store: Send + Sync {
    /// Brings the schema to this build's newest version, under a lock so one migrator runs
    /// at a time across replicas.
    fn migrate(&self) -> impl Future<Output = Result<(), Error>> + Send;

    /// Stores a batch in one transaction; a record whose id is stored already is skipped (a
    /// redelivery never duplicates a row). Returns how many rows were new.
    fn insert(&self, batch: &[Record]) -> impl Future<Output = Result<u64, Error>> + Send;

    /// The rows of one scan.
    fn scan(&self, scan: &Scan) -> impl Future<Output = Result<Vec<Record>, Error>> + Send;

    /// Removes what no channel in `kept` keeps (deleted channels and tenants, re-created
    /// ones, channels that turned history off), what is past its retention at `now_ns`, and
    /// the oldest rows of each tenant over its `maxHistoryBytes`. Deletes in batches.
    fn sweep(
        &self,
        kept: &[Kept],
        now_ns: u64,
    ) -> impl Future<Output = Result<Swept, Error>> + Send;

    /// What each channel holds.
    fn stats(&self) -> impl Future<Output = Result<Vec<ChannelStats>, Error>> + Send;
}

/// One of the two stores, chosen at run time.
#[derive(Clone, Debug)]
pub enum HistoryStore {
    /// The embedded store.
    Sqlite(SqliteStore),
    /// The cluster store.
    Postgres(PostgresStore),
}

impl Store for HistoryStore {
    async fn migrate(&self) -> Result<(), Error> {
        match self {
            HistoryStore::Sqlite(s) => s.migrate().await,
            HistoryStore::Postgres(s) => s.migrate().await,
        }
    }

    async fn insert(&self, batch: &[Record]) -> Result<u64, Error> {
        match self {
            HistoryStore::Sqlite(s) => s.insert(batch).await,
            HistoryStore::Postgres(s) => s.insert(batch).await,
        }
    }

    async fn scan(&self, scan: &Scan) -> Result<Vec<Record>, Error> {
        match self {
            HistoryStore::Sqlite(s) => s.scan(scan).await,
            HistoryStore::Postgres(s) => s.scan(scan).await,
        }
    }

    async fn sweep(&self, kept: &[Kept], now_ns: u64) -> Result<Swept, Error> {
        match self {
            HistoryStore::Sqlite(s) => s.sweep(kept, now_ns).await,
            HistoryStore::Postgres(s) => s.sweep(kept, now_ns).await,
        }
    }

    async fn stats(&self) -> Result<Vec<ChannelStats>, Error> {
        match self {
            HistoryStore::Sqlite(s) => s.stats().await,
            HistoryStore::Postgres(s) => s.stats().await,
        }
    }
}

/// Now, ns since the Unix epoch.
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_count_as_much_as_the_payload() {
        let small = Record {
            id: MessageId::floor(0),
            tenant: "acme".into(),
            channel: "telemetry".into(),
            channel_uid: String::new(),
            subtopic: String::new(),
            payload: Bytes::from_static(b"1234"),
            qos: 1,
            content_type: None,
            publisher: None,
            publisher_kind: None,
            protocol: "mqtt".into(),
            created_ns: 0,
            user_properties: Vec::new(),
        };
        let heavy = Record {
            user_properties: vec![("k".into(), "v".repeat(900_000))],
            ..small.clone()
        };
        assert_eq!(small.stored_bytes(), 4 + 4 + 9 + 4 + ROW_OVERHEAD);
        assert_eq!(heavy.stored_bytes(), small.stored_bytes() + 900_001);
    }
}
