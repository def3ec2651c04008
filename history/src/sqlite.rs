//! The embedded store: one SQLite file, `<state-dir>/history.db` in `fleetward start`.

use std::path::Path;
use std::str::FromStr as _;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{QueryBuilder, Row as _, Sqlite, SqlitePool};

use crate::{ChannelStats, Error, Kept, MessageId, Order, Record, Scan, Store, Swept};

/// Rows one multi-row INSERT carries (14 columns: well under SQLite's variable limit).
const INSERT_ROWS: usize = 500;
/// Rows one DELETE of a sweep removes, so a sweep never holds the write lock for long.
const DELETE_ROWS: i64 = 5_000;

const COLUMNS: &str = "id, tenant, channel, channel_uid, subtopic, payload, qos, content_type, \
                       publisher, publisher_kind, protocol, created_ns, user_properties, stored_bytes";

/// The embedded store.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (or creates) the database at `path`, in WAL mode. A new file is made private
    /// (0600: it holds the messages); SQLite gives its `-wal` and `-shm` files the same mode.
    pub async fn open(path: &Path) -> Result<Self, Error> {
        create_private(path)?;
        let options = SqliteConnectOptions::from_str("sqlite:")?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        Ok(Self { pool })
    }

    /// The pool, for tests that look at the schema.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Deletes `DELETE_ROWS` at a time of what `select` (a `SELECT id …` with its binds)
    /// finds, until nothing is left.
    async fn delete_all(
        &self,
        build: impl Fn(&mut QueryBuilder<'_, Sqlite>),
    ) -> Result<u64, Error> {
        let mut total = 0;
        loop {
            let mut q = QueryBuilder::new(
                "DELETE FROM messages WHERE id IN (SELECT id FROM messages WHERE ",
            );
            build(&mut q);
            q.push(" LIMIT ").push_bind(DELETE_ROWS).push(")");
            let n = q.build().execute(&self.pool).await?.rows_affected();
            total += n;
            if n < DELETE_ROWS as u64 {
                return Ok(total);
            }
        }
    }

    /// Deletes the oldest rows of `tenant` until it holds at most `max` bytes.
    async fn trim_tenant(&self, tenant: &str, max: u64) -> Result<u64, Error> {
        let held: i64 = sqlx::query_scalar(
            "SELECT COALESCE(SUM(stored_bytes), 0) FROM messages WHERE tenant = ?",
        )
        .bind(tenant)
        .fetch_one(&self.pool)
        .await?;
        let mut excess = u64::try_from(held).unwrap_or(0).saturating_sub(max);
        let mut total = 0;
        while excess > 0 {
            let rows = sqlx::query(
                "SELECT id, stored_bytes FROM messages WHERE tenant = ? ORDER BY id LIMIT ?",
            )
            .bind(tenant)
            .bind(DELETE_ROWS)
            .fetch_all(&self.pool)
            .await?;
            let rows = rows
                .iter()
                .map(|r| {
                    let bytes = u64::try_from(r.try_get::<i64, _>(1)?).unwrap_or(0);
                    Ok((r.try_get::<Vec<u8>, _>(0)?, bytes))
                })
                .collect::<Result<Vec<_>, Error>>()?;
            let Some(last) = crate::last_to_trim(rows, &mut excess) else {
                break;
            };
            total += sqlx::query("DELETE FROM messages WHERE tenant = ? AND id <= ?")
                .bind(tenant)
                .bind(last)
                .execute(&self.pool)
                .await?
                .rows_affected();
        }
        Ok(total)
    }
}

impl Store for SqliteStore {
    async fn migrate(&self) -> Result<(), Error> {
        // One process owns the file: SQLite's own locking is the migrator's lock.
        sqlx::migrate!("../migrations/sqlite")
            .run(&self.pool)
            .await?;
        Ok(())
    }

    async fn insert(&self, batch: &[Record]) -> Result<u64, Error> {
        let mut tx = self.pool.begin().await?;
        let mut inserted = 0;
        for chunk in batch.chunks(INSERT_ROWS) {
            let mut q =
                QueryBuilder::<Sqlite>::new(format!("INSERT OR IGNORE INTO messages ({COLUMNS}) "));
            q.push_values(chunk, |mut row, r| {
                row.push_bind(r.id.to_bytes().to_vec())
                    .push_bind(r.tenant.clone())
                    .push_bind(r.channel.clone())
                    .push_bind(r.channel_uid.clone())
                    .push_bind(r.subtopic.clone())
                    .push_bind(r.payload.to_vec())
                    .push_bind(i64::from(r.qos))
                    .push_bind(r.content_type.clone())
                    .push_bind(r.publisher.clone())
                    .push_bind(r.publisher_kind.clone())
                    .push_bind(r.protocol.clone())
                    .push_bind(i64::try_from(r.created_ns).unwrap_or(i64::MAX))
                    .push_bind(user_properties_json(r))
                    .push_bind(i64::try_from(r.stored_bytes()).unwrap_or(i64::MAX));
            });
            inserted += q.build().execute(&mut *tx).await?.rows_affected();
        }
        tx.commit().await?;
        Ok(inserted)
    }

    async fn scan(&self, scan: &Scan) -> Result<Vec<Record>, Error> {
        let mut q =
            QueryBuilder::<Sqlite>::new(format!("SELECT {COLUMNS} FROM messages WHERE tenant = "));
        q.push_bind(scan.tenant.clone())
            .push(" AND channel = ")
            .push_bind(scan.channel.clone())
            .push(" AND channel_uid = ")
            .push_bind(scan.channel_uid.clone());
        if scan.exact {
            q.push(" AND subtopic = ").push_bind(scan.prefix.clone());
        } else if !scan.prefix.is_empty() {
            q.push(" AND substr(subtopic, 1, ")
                .push_bind(i64::try_from(scan.prefix.chars().count()).unwrap_or(0))
                .push(") = ")
                .push_bind(scan.prefix.clone());
        }
        let (after_op, order) = match scan.order {
            Order::Desc => (" AND id < ", " ORDER BY id DESC"),
            Order::Asc => (" AND id > ", " ORDER BY id ASC"),
        };
        if let Some(after) = scan.after {
            q.push(after_op).push_bind(after.to_bytes().to_vec());
        }
        if let Some(min) = scan.min {
            q.push(" AND id >= ").push_bind(min.to_bytes().to_vec());
        }
        if let Some(max) = scan.max {
            q.push(" AND id < ").push_bind(max.to_bytes().to_vec());
        }
        q.push(order)
            .push(" LIMIT ")
            .push_bind(i64::from(scan.limit));
        let rows = q.build().fetch_all(&self.pool).await?;
        rows.iter().map(record_of).collect()
    }

    async fn sweep(&self, kept: &[Kept], now_ns: u64) -> Result<Swept, Error> {
        let mut swept = Swept::default();
        let present: Vec<(String, String, String)> =
            sqlx::query_as("SELECT DISTINCT tenant, channel, channel_uid FROM messages")
                .fetch_all(&self.pool)
                .await?;
        for (tenant, channel, uid) in &present {
            let live = kept
                .iter()
                .any(|k| &k.tenant == tenant && &k.channel == channel && &k.channel_uid == uid);
            if !live {
                swept.orphaned += self
                    .delete_all(|q| {
                        q.push("tenant = ")
                            .push_bind(tenant.clone())
                            .push(" AND channel = ")
                            .push_bind(channel.clone())
                            .push(" AND channel_uid = ")
                            .push_bind(uid.clone());
                    })
                    .await?;
            }
        }
        for k in kept {
            let cutoff = k.cutoff(now_ns);
            swept.expired += self
                .delete_all(|q| {
                    q.push("tenant = ")
                        .push_bind(k.tenant.clone())
                        .push(" AND channel = ")
                        .push_bind(k.channel.clone())
                        .push(" AND channel_uid = ")
                        .push_bind(k.channel_uid.clone())
                        .push(" AND id < ")
                        .push_bind(cutoff.to_bytes().to_vec());
                })
                .await?;
        }
        for (tenant, max) in Kept::tenant_quotas(kept) {
            swept.over_quota += self.trim_tenant(tenant, max).await?;
        }
        Ok(swept)
    }

    async fn stats(&self) -> Result<Vec<ChannelStats>, Error> {
        let rows: Vec<(String, String, String, i64, i64, Option<i64>)> = sqlx::query_as(
            "SELECT tenant, channel, channel_uid, COUNT(*), COALESCE(SUM(stored_bytes), 0), \
             MIN(created_ns) FROM messages GROUP BY tenant, channel, channel_uid",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(tenant, channel, channel_uid, n, bytes, oldest)| ChannelStats {
                    tenant,
                    channel,
                    channel_uid,
                    messages: u64::try_from(n).unwrap_or(0),
                    bytes: u64::try_from(bytes).unwrap_or(0),
                    oldest_ns: oldest.and_then(|o| u64::try_from(o).ok()),
                },
            )
            .collect())
    }
}

/// Creates `path` empty with mode 0600 unless it exists.
fn create_private(path: &Path) -> Result<(), Error> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(Error::Database(sqlx::Error::Io(e))),
    }
}

/// The user properties as stored: a JSON array of `[key, value]` pairs, none when empty.
pub(crate) fn user_properties_json(r: &Record) -> Option<String> {
    (!r.user_properties.is_empty())
        .then(|| serde_json::to_string(&r.user_properties).unwrap_or_default())
}

/// The user properties of a stored JSON text.
pub(crate) fn user_properties_of(json: Option<&str>) -> Result<Vec<(String, String)>, Error> {
    json.map_or(Ok(Vec::new()), |j| {
        serde_json::from_str(j).map_err(|e| Error::Corrupt(format!("user_properties: {e}")))
    })
}

fn record_of(row: &sqlx::sqlite::SqliteRow) -> Result<Record, Error> {
    let id: Vec<u8> = row.try_get("id")?;
    let qos: i64 = row.try_get("qos")?;
    let created: i64 = row.try_get("created_ns")?;
    let props: Option<String> = row.try_get("user_properties")?;
    Ok(Record {
        id: MessageId::from_slice(&id)
            .ok_or_else(|| Error::Corrupt("an id is not 16 bytes".into()))?,
        tenant: row.try_get("tenant")?,
        channel: row.try_get("channel")?,
        channel_uid: row.try_get("channel_uid")?,
        subtopic: row.try_get("subtopic")?,
        payload: row.try_get::<Vec<u8>, _>("payload")?.into(),
        qos: u8::try_from(qos).unwrap_or(0),
        content_type: row.try_get("content_type")?,
        publisher: row.try_get("publisher")?,
        publisher_kind: row.try_get("publisher_kind")?,
        protocol: row.try_get("protocol")?,
        created_ns: u64::try_from(created).unwrap_or(0),
        user_properties: user_properties_of(props.as_deref())?,
    })
}
