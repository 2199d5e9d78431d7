//! Queue settings: reading and writing their rows, and the cache PostgreSQL leases read them
//! through.

use std::sync::Arc;

use mortar_core::with_pool;

use mortar_core::storage::sql::{Param, json};

use super::dialect::queue_rows_sql;
use super::{JobStore, QUEUE_COLUMNS, QueueRow};

/// Every queue's settings row, by name.
fn all_queue_rows_sql() -> String {
    format!("SELECT {QUEUE_COLUMNS} FROM jobs_queues ORDER BY queue")
}

/// How old the queue settings a PostgreSQL lease goes by may be: a queue configured on another
/// node is leased its new way within this (this node's own changes count at once).
pub(super) const SETTINGS_TTL: std::time::Duration = std::time::Duration::from_millis(100);

/// The queue settings leases go by on PostgreSQL, read at most every [`SETTINGS_TTL`] instead of
/// at every lease. They only choose how a queue is leased (limits are always read under the
/// queue's row lock, and the free queues' statement skips paused and limited ones itself), so
/// staleness can delay a queue's jobs by up to the TTL, never break its limits.
#[derive(Debug, Default)]
pub(super) struct SettingsCache {
    read: std::sync::Mutex<SettingsRead>,
}

/// (settings changes made on this node so far, the last read and when it started).
type SettingsRead = (u64, Option<(std::time::Instant, Arc<Vec<QueueRow>>)>);

impl SettingsCache {
    pub(super) async fn rows(
        &self,
        conn: &mut sqlx::PgConnection,
    ) -> Result<Arc<Vec<QueueRow>>, sqlx::Error> {
        let changes = {
            let read = self.lock();
            if let Some((at, rows)) = &read.1
                && at.elapsed() < SETTINGS_TTL
            {
                return Ok(rows.clone());
            }
            read.0
        };
        let at = std::time::Instant::now();
        let rows: Arc<Vec<QueueRow>> = Arc::new(
            sqlx::query_as(sqlx::AssertSqlSafe(all_queue_rows_sql()))
                .fetch_all(&mut *conn)
                .await?,
        );
        let mut read = self.lock();
        // A read that a change here overtook is used once, not kept.
        if read.0 == changes {
            read.1 = Some((at, rows.clone()));
        }
        Ok(rows)
    }

    /// After a settings change on this node: the next lease reads them again.
    fn forget(&self) {
        let mut read = self.lock();
        read.0 += 1;
        read.1 = None;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SettingsRead> {
        self.read
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl JobStore {
    /// Settings rows of `queues` (only those that have one).
    pub async fn queue_rows(&self, queues: &[String]) -> Result<Vec<QueueRow>, sqlx::Error> {
        with_pool!(self.db.durable(), pool => sqlx::query_as(sqlx::AssertSqlSafe(queue_rows_sql(self.db.dialect())))
            .bind(json(queues)).fetch_all(pool).await)
    }

    /// Every queue's settings row.
    pub async fn all_queue_rows(&self) -> Result<Vec<QueueRow>, sqlx::Error> {
        with_pool!(self.db.durable(), pool => sqlx::query_as(sqlx::AssertSqlSafe(all_queue_rows_sql())).fetch_all(pool).await)
    }

    /// Writes a queue's settings (the limiter state is kept).
    pub async fn put_queue(&self, q: &QueueRow) -> Result<(), sqlx::Error> {
        let sql = "INSERT INTO jobs_queues (queue, paused, concurrency, rate_limit, rate_period_ms, target_url, secret, retention_ms, updated_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (queue) DO UPDATE SET paused = excluded.paused, \
             concurrency = excluded.concurrency, rate_limit = excluded.rate_limit, rate_period_ms = excluded.rate_period_ms, \
             target_url = excluded.target_url, secret = excluded.secret, retention_ms = excluded.retention_ms, \
             updated_at_ms = excluded.updated_at_ms";
        self.db
            .exec(
                sql.into(),
                vec![
                    Param::from(q.queue.clone()),
                    Param::from(q.paused),
                    Param::from(q.concurrency.map(i64::from)),
                    Param::from(q.rate_limit.map(i64::from)),
                    Param::from(q.rate_period_ms),
                    Param::from(q.target_url.clone()),
                    Param::from(q.secret.clone()),
                    Param::from(q.retention_ms),
                    Param::from(q.updated_at_ms),
                ],
            )
            .await?;
        self.settings.forget();
        Ok(())
    }
}
