//! The cluster store: an existing PostgreSQL, `messages` partitioned by day on `created`.
//!
//! `created` is the id's millisecond time, so every query that bounds ids bounds `created` as
//! well and PostgreSQL prunes the partitions it cannot need. Each day's partition,
//! `messages_pYYYYMMDD`, is made ahead (today and the next two days) by [`Store::insert`] and
//! [`Store::sweep`]; a row of another day lands in `messages_default`. Retention drops whole
//! day partitions and deletes in batches only what a shorter retention, a deleted channel or
//! a tenant's quota removes.

use std::collections::HashSet;
use std::path::PathBuf;
use std::str::FromStr as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::postgres::{PgArguments, PgConnectOptions, PgPoolOptions, PgSslMode};
use sqlx::{PgPool, Postgres, QueryBuilder, Row as _};
use uuid::Uuid;

use crate::sqlite::{user_properties_json, user_properties_of};
use crate::{ChannelStats, Error, Kept, MessageId, Order, Record, Scan, Store, Swept};

/// Rows one INSERT … SELECT FROM UNNEST carries (its 15 arrays are 15 binds whatever the size).
const INSERT_ROWS: usize = 5_000;
/// Rows one DELETE of a sweep removes, so a sweep never holds row locks for long.
const DELETE_ROWS: i64 = 5_000;
const DAY_MS: i64 = 86_400_000;
/// Days after today whose partitions exist before their first message.
const DAYS_AHEAD: i64 = 2;
/// How far back an insert still makes a day's partition (a backlog after an outage); older
/// rows go to the DEFAULT partition, where the sweep deletes them in batches.
const DAYS_BEHIND: i64 = 31;
/// The advisory lock that serializes partition changes across replicas (`fleetwar` in ASCII;
/// sqlx's migration lock is derived from the database name, so they never collide by design).
const PARTITION_LOCK: i64 = 0x666c_6565_7477_6172;

/// The insert: rows of arrays unnested, `created` computed from the id's millisecond, and a
/// redelivered id skipped.
const INSERT_SQL: &str = "INSERT INTO messages (id, created, tenant, channel, channel_uid, \
     subtopic, payload, qos, content_type, publisher, publisher_kind, protocol, created_ns, \
     user_properties, stored_bytes) \
     SELECT u.id, 'epoch'::timestamptz + u.ms * interval '1 millisecond', u.tenant, u.channel, \
     u.channel_uid, u.subtopic, u.payload, u.qos, u.content_type, u.publisher, u.publisher_kind, \
     u.protocol, u.created_ns, u.user_properties, u.stored_bytes \
     FROM unnest($1::uuid[], $2::int8[], $3::text[], $4::text[], $5::text[], $6::text[], \
     $7::bytea[], $8::int2[], $9::text[], $10::text[], $11::text[], $12::text[], $13::int8[], \
     $14::text[], $15::int4[]) AS u(id, ms, tenant, channel, channel_uid, subtopic, payload, qos, \
     content_type, publisher, publisher_kind, protocol, created_ns, user_properties, stored_bytes) \
     ON CONFLICT DO NOTHING";

const COLUMNS: &str = "id, created, tenant, channel, channel_uid, subtopic, payload, qos, \
                       content_type, publisher, publisher_kind, protocol, created_ns, \
                       user_properties, stored_bytes";

/// How to reach the database: `history.postgres.*` in the chart.
#[derive(Clone, Debug)]
pub struct PostgresOptions {
    /// `postgres://user:password@host:port/database`, from the chart's `existingSecret`.
    pub url: String,
    /// Connections per process.
    pub pool_size: u32,
    /// TLS: `disable`, `prefer` (the URL's default), `require`, `verify-ca` or `verify-full`;
    /// `None` keeps what the URL says (`sslmode=`).
    pub ssl_mode: Option<PgSslMode>,
    /// The CA that signs the server's certificate, for `verify-ca` and `verify-full`.
    pub ca_file: Option<PathBuf>,
}

impl PostgresOptions {
    /// Options for `url` with the default pool size (8) and the URL's own TLS settings.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            pool_size: 8,
            ssl_mode: None,
            ca_file: None,
        }
    }
}

/// The cluster store.
#[derive(Clone, Debug)]
pub struct PostgresStore {
    pool: PgPool,
    /// Days whose partition this process made or found: one look-up per day, not per batch.
    days: Arc<Mutex<HashSet<i64>>>,
}

impl PostgresStore {
    /// A store over `options`. Connects lazily: a database that is down now fails the first
    /// query (which the writer retries), not the start; a URL that is not valid fails here.
    pub fn connect(options: &PostgresOptions) -> Result<Self, Error> {
        let mut connect = PgConnectOptions::from_str(&options.url)?;
        if let Some(mode) = options.ssl_mode {
            connect = connect.ssl_mode(mode);
        }
        if let Some(ca) = &options.ca_file {
            connect = connect.ssl_root_cert(ca.clone());
        }
        let pool = PgPoolOptions::new()
            .max_connections(options.pool_size.max(1))
            .acquire_timeout(Duration::from_secs(10))
            .connect_lazy_with(connect);
        Ok(Self {
            pool,
            days: Arc::default(),
        })
    }

    /// The pool, for tests that look at the schema and the partitions.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Makes the partitions of `days` that this process has not seen yet.
    async fn ensure_days(&self, days: impl IntoIterator<Item = i64>) -> Result<(), Error> {
        let missing: Vec<i64> = {
            let known = self.days.lock().unwrap_or_else(|e| e.into_inner());
            days.into_iter().filter(|d| !known.contains(d)).collect()
        };
        for day in missing {
            self.ensure_day(day).await?;
            self.days
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(day);
        }
        Ok(())
    }

    /// Makes the partition of `day` (days since the Unix epoch) if it is missing, moving the
    /// rows of that day the DEFAULT partition caught into it (PostgreSQL refuses a partition
    /// whose range the DEFAULT one holds rows of).
    async fn ensure_day(&self, day: i64) -> Result<(), Error> {
        let name = partition_name(day);
        let (from, to) = (date_of(day), date_of(day + 1));
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(PARTITION_LOCK)
            .execute(&mut *tx)
            .await?;
        let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(name.clone())
            .fetch_one(&mut *tx)
            .await?;
        if !exists {
            let range = format!("created >= '{from} 00:00:00+00' AND created < '{to} 00:00:00+00'");
            let steps = [
                "CREATE TEMP TABLE fleetward_moving (LIKE messages) ON COMMIT DROP".to_owned(),
                format!(
                    "WITH moved AS (DELETE FROM messages_default WHERE {range} RETURNING *) \
                     INSERT INTO fleetward_moving SELECT * FROM moved"
                ),
                format!(
                    "CREATE TABLE {name} PARTITION OF messages \
                     FOR VALUES FROM ('{from} 00:00:00+00') TO ('{to} 00:00:00+00')"
                ),
                "INSERT INTO messages SELECT * FROM fleetward_moving".to_owned(),
            ];
            for step in &steps {
                sqlx::query(step).execute(&mut *tx).await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// The day partitions there are, by day.
    pub async fn partitions(&self) -> Result<Vec<(i64, String)>, Error> {
        let names: Vec<String> = sqlx::query_scalar(
            "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             WHERE i.inhparent = 'messages'::regclass",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut days: Vec<(i64, String)> = names
            .into_iter()
            .filter_map(|n| day_of_partition(&n).map(|d| (d, n)))
            .collect();
        days.sort_unstable();
        Ok(days)
    }

    /// Deletes `DELETE_ROWS` at a time of the rows `build` selects (a WHERE clause), until
    /// nothing is left.
    async fn delete_all(
        &self,
        build: impl Fn(&mut QueryBuilder<'_, Postgres>),
    ) -> Result<u64, Error> {
        let mut total = 0;
        loop {
            let mut q = QueryBuilder::new(
                "DELETE FROM messages WHERE (id, created) IN \
                 (SELECT id, created FROM messages m WHERE ",
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

    /// Drops the day partitions that end before `cutoff_ms`, counting their rows of kept
    /// channels as expired and the rest as orphaned.
    async fn drop_days_before(
        &self,
        cutoff_ms: i64,
        kept: &KeptArrays,
        swept: &mut Swept,
    ) -> Result<(), Error> {
        for (day, name) in self.partitions().await? {
            if (day + 1) * DAY_MS > cutoff_ms {
                continue;
            }
            let (all, live): (i64, i64) = sqlx::query_as(&format!(
                "SELECT COUNT(*), COUNT(*) FILTER (WHERE EXISTS (SELECT 1 FROM \
                 unnest($1::text[], $2::text[], $3::text[]) k(t, c, u) \
                 WHERE k.t = m.tenant AND k.c = m.channel AND k.u = m.channel_uid)) \
                 FROM {name} m"
            ))
            .bind(&kept.tenants)
            .bind(&kept.channels)
            .bind(&kept.uids)
            .fetch_one(&self.pool)
            .await?;
            sqlx::query(&format!("DROP TABLE IF EXISTS {name}"))
                .execute(&self.pool)
                .await?;
            self.days
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&day);
            swept.expired += u64::try_from(live).unwrap_or(0);
            swept.orphaned += u64::try_from(all - live).unwrap_or(0);
            tracing::info!(partition = %name, rows = all, "history: dropped an expired day partition");
        }
        Ok(())
    }

    /// Deletes the oldest rows of `tenant` until it holds at most `max` bytes.
    async fn trim_tenant(&self, tenant: &str, max: u64) -> Result<u64, Error> {
        let held: i64 = sqlx::query_scalar(
            "SELECT COALESCE(SUM(stored_bytes), 0)::int8 FROM messages WHERE tenant = $1",
        )
        .bind(tenant)
        .fetch_one(&self.pool)
        .await?;
        let mut excess = u64::try_from(held).unwrap_or(0).saturating_sub(max);
        let mut total = 0;
        while excess > 0 {
            let rows = sqlx::query(
                "SELECT id, stored_bytes FROM messages WHERE tenant = $1 ORDER BY id LIMIT $2",
            )
            .bind(tenant)
            .bind(DELETE_ROWS)
            .fetch_all(&self.pool)
            .await?;
            let rows = rows
                .iter()
                .map(|r| {
                    let bytes = u64::try_from(r.try_get::<i32, _>(1)?).unwrap_or(0);
                    Ok((r.try_get::<Uuid, _>(0)?, bytes))
                })
                .collect::<Result<Vec<_>, Error>>()?;
            let Some(last) = crate::last_to_trim(rows, &mut excess) else {
                break;
            };
            let last_ms = ms_of(MessageId::from_bytes(*last.as_bytes()));
            total += sqlx::query(
                "DELETE FROM messages WHERE tenant = $1 AND id <= $2 \
                 AND created <= 'epoch'::timestamptz + $3 * interval '1 millisecond'",
            )
            .bind(tenant)
            .bind(last)
            .bind(last_ms)
            .execute(&self.pool)
            .await?
            .rows_affected();
        }
        Ok(total)
    }
}

/// The kept channels as three parallel arrays, for `unnest` in SQL.
struct KeptArrays {
    tenants: Vec<String>,
    channels: Vec<String>,
    uids: Vec<String>,
}

impl KeptArrays {
    fn of(kept: &[Kept]) -> Self {
        Self {
            tenants: kept.iter().map(|k| k.tenant.clone()).collect(),
            channels: kept.iter().map(|k| k.channel.clone()).collect(),
            uids: kept.iter().map(|k| k.channel_uid.clone()).collect(),
        }
    }
}

impl Store for PostgresStore {
    async fn migrate(&self) -> Result<(), Error> {
        // sqlx's migrator holds `pg_advisory_lock` (keyed by the database's name) on its
        // connection from before it reads `_sqlx_migrations` until every migration is applied
        // (sqlx-postgres 0.8 `Migrate::lock`), so replicas that start together migrate once:
        // the others wait, then find nothing left to apply.
        sqlx::migrate!("../migrations/postgres")
            .run(&self.pool)
            .await?;
        Ok(())
    }

    async fn insert(&self, batch: &[Record]) -> Result<u64, Error> {
        let today = crate::now_ns() as i64 / 1_000_000 / DAY_MS;
        let days: HashSet<i64> = batch
            .iter()
            .map(|r| ms_of(r.id).div_euclid(DAY_MS))
            .filter(|d| (today - DAYS_BEHIND..=today + DAYS_AHEAD).contains(d))
            .chain(today..=today + DAYS_AHEAD)
            .collect();
        self.ensure_days(days).await?;
        let mut tx = self.pool.begin().await?;
        let mut inserted = 0;
        for chunk in batch.chunks(INSERT_ROWS) {
            inserted += insert_query(chunk).execute(&mut *tx).await?.rows_affected();
        }
        tx.commit().await?;
        Ok(inserted)
    }

    async fn scan(&self, scan: &Scan) -> Result<Vec<Record>, Error> {
        let mut q = QueryBuilder::<Postgres>::new(format!(
            "SELECT {COLUMNS} FROM messages WHERE tenant = "
        ));
        q.push_bind(scan.tenant.clone())
            .push(" AND channel = ")
            .push_bind(scan.channel.clone())
            .push(" AND channel_uid = ")
            .push_bind(scan.channel_uid.clone());
        if scan.exact {
            q.push(" AND subtopic = ").push_bind(scan.prefix.clone());
        } else if !scan.prefix.is_empty() {
            q.push(" AND starts_with(subtopic, ")
                .push_bind(scan.prefix.clone())
                .push(")");
        }
        // Each id bound is a `created` bound too (its millisecond), for partition pruning.
        let bound = |q: &mut QueryBuilder<'_, Postgres>, id_op: &str, created_op: &str, id| {
            q.push(format!(" AND id {id_op} "))
                .push_bind(*MessageId::as_uuid(&id))
                .push(format!(" AND created {created_op} 'epoch'::timestamptz + "))
                .push_bind(ms_of(id))
                .push(" * interval '1 millisecond'");
        };
        let (after_ops, order) = match scan.order {
            Order::Desc => (("<", "<="), " ORDER BY id DESC"),
            Order::Asc => ((">", ">="), " ORDER BY id ASC"),
        };
        if let Some(after) = scan.after {
            bound(&mut q, after_ops.0, after_ops.1, after);
        }
        if let Some(min) = scan.min {
            bound(&mut q, ">=", ">=", min);
        }
        if let Some(max) = scan.max {
            bound(&mut q, "<", "<=", max);
        }
        q.push(order)
            .push(" LIMIT ")
            .push_bind(i64::from(scan.limit));
        let rows = q.build().fetch_all(&self.pool).await?;
        rows.iter().map(record_of).collect()
    }

    async fn sweep(&self, kept: &[Kept], now_ns: u64) -> Result<Swept, Error> {
        let mut swept = Swept::default();
        let now_ms = i64::try_from(now_ns / 1_000_000).unwrap_or(i64::MAX);
        let today = now_ms / DAY_MS;
        self.ensure_days(today..=today + DAYS_AHEAD).await?;
        let arrays = KeptArrays::of(kept);
        let longest = kept.iter().map(|k| k.retention).max().unwrap_or_default();
        let longest_ms = i64::try_from(longest.as_millis()).unwrap_or(i64::MAX);
        self.drop_days_before(now_ms.saturating_sub(longest_ms), &arrays, &mut swept)
            .await?;
        swept.orphaned += self
            .delete_all(|q| {
                q.push("NOT EXISTS (SELECT 1 FROM unnest(")
                    .push_bind(arrays.tenants.clone())
                    .push("::text[], ")
                    .push_bind(arrays.channels.clone())
                    .push("::text[], ")
                    .push_bind(arrays.uids.clone())
                    .push(
                        "::text[]) k(t, c, u) WHERE k.t = m.tenant AND k.c = m.channel \
                     AND k.u = m.channel_uid)",
                    );
            })
            .await?;
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
                        .push_bind(*cutoff.as_uuid())
                        .push(" AND created <= 'epoch'::timestamptz + ")
                        .push_bind(ms_of(cutoff))
                        .push(" * interval '1 millisecond'");
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
            "SELECT tenant, channel, channel_uid, COUNT(*), COALESCE(SUM(stored_bytes), 0)::int8, \
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

/// One chunk of a batch as one statement: 15 array binds, whatever the chunk's size.
fn insert_query(chunk: &[Record]) -> sqlx::query::Query<'_, Postgres, PgArguments> {
    sqlx::query(INSERT_SQL)
        .bind(chunk.iter().map(|r| *r.id.as_uuid()).collect::<Vec<_>>())
        .bind(chunk.iter().map(|r| ms_of(r.id)).collect::<Vec<_>>())
        .bind(chunk.iter().map(|r| r.tenant.as_str()).collect::<Vec<_>>())
        .bind(chunk.iter().map(|r| r.channel.as_str()).collect::<Vec<_>>())
        .bind(
            chunk
                .iter()
                .map(|r| r.channel_uid.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            chunk
                .iter()
                .map(|r| r.subtopic.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(chunk.iter().map(|r| r.payload.to_vec()).collect::<Vec<_>>())
        .bind(chunk.iter().map(|r| i16::from(r.qos)).collect::<Vec<_>>())
        .bind(
            chunk
                .iter()
                .map(|r| r.content_type.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(
            chunk
                .iter()
                .map(|r| r.publisher.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(
            chunk
                .iter()
                .map(|r| r.publisher_kind.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(
            chunk
                .iter()
                .map(|r| r.protocol.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            chunk
                .iter()
                .map(|r| i64::try_from(r.created_ns).unwrap_or(i64::MAX))
                .collect::<Vec<_>>(),
        )
        .bind(chunk.iter().map(user_properties_json).collect::<Vec<_>>())
        .bind(
            chunk
                .iter()
                .map(|r| i32::try_from(r.stored_bytes()).unwrap_or(i32::MAX))
                .collect::<Vec<_>>(),
        )
}

/// The id's millisecond time: its row's `created`.
fn ms_of(id: MessageId) -> i64 {
    i64::try_from(id.unix_ms()).unwrap_or(i64::MAX)
}

/// `messages_pYYYYMMDD`.
pub(crate) fn partition_name(day: i64) -> String {
    format!("messages_p{}", date_of(day).replace('-', ""))
}

/// The day a partition's name stands for, if it is a day partition.
fn day_of_partition(name: &str) -> Option<i64> {
    let digits = name.strip_prefix("messages_p")?;
    if digits.len() != 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let y: i64 = digits[..4].parse().ok()?;
    let m: i64 = digits[4..6].parse().ok()?;
    let d: i64 = digits[6..].parse().ok()?;
    Some(days_from_civil(y, m, d))
}

/// `YYYY-MM-DD` of a day since the Unix epoch (proleptic Gregorian, UTC).
fn date_of(day: i64) -> String {
    // Howard Hinnant's civil_from_days.
    let z = day + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Days since the Unix epoch of a civil date (Hinnant's days_from_civil).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn record_of(row: &sqlx::postgres::PgRow) -> Result<Record, Error> {
    let id: Uuid = row.try_get("id")?;
    let qos: i16 = row.try_get("qos")?;
    let created: i64 = row.try_get("created_ns")?;
    let props: Option<String> = row.try_get("user_properties")?;
    Ok(Record {
        id: MessageId::from_bytes(*id.as_bytes()),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_names_and_days_read_back() {
        assert_eq!(date_of(0), "1970-01-01");
        assert_eq!(date_of(20_454), "2026-01-01");
        assert_eq!(date_of(19_782), "2024-02-29");
        for day in [0, 11_016, 19_782, 20_454, 20_500, 40_000] {
            assert_eq!(day_of_partition(&partition_name(day)), Some(day));
        }
        assert_eq!(day_of_partition("messages_default"), None);
        assert_eq!(day_of_partition("messages_p2026011"), None);
    }
}
