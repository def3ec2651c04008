//! The maintenance lease of cluster mode: one writer replica at a time sweeps and counts,
//! holding a PostgreSQL session advisory lock on a connection of its own. The lock goes
//! when that connection does (the replica died or lost the database), and another replica
//! takes it.

use sqlx::pool::PoolConnection;
use sqlx::{Postgres, Row as _};

use crate::{Error, PostgresStore};

/// The lock's key (`fleetmnt` in ASCII).
pub const MAINTENANCE_LOCK: i64 = 0x666c_6565_746d_6e74;

/// A held lease: dropping it closes its session, which releases the lock.
pub struct Lease {
    conn: PoolConnection<Postgres>,
}

impl Lease {
    /// Takes the lease if no other session holds it.
    pub async fn try_take(store: &PostgresStore) -> Result<Option<Self>, Error> {
        let mut conn = store.pool().acquire().await?;
        let row = sqlx::query("SELECT pg_try_advisory_lock($1)")
            .bind(MAINTENANCE_LOCK)
            .fetch_one(&mut *conn)
            .await?;
        if row.try_get::<bool, _>(0)? {
            // The lock lives with this session: closed, not pooled, when the lease is dropped.
            conn.close_on_drop();
            Ok(Some(Self { conn }))
        } else {
            Ok(None)
        }
    }

    /// Whether the session that holds the lock is still alive.
    pub async fn held(&mut self) -> bool {
        sqlx::query("SELECT 1")
            .execute(&mut *self.conn)
            .await
            .is_ok()
    }
}
