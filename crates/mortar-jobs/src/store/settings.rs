//! Queue settings: reading and writing their rows, and the cache PostgreSQL leases read them
//! through.

use std::sync::Arc;

use mortar_core::with_pool;

use super::dialect::{Bind, json_strings};
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
        with_pool!(&self.durable, pool => sqlx::query_as(sqlx::AssertSqlSafe(self.dialect().queue_rows_sql()))
            .bind(json_strings(queues)).fetch_all(pool).await)
    }

    /// Every queue's settings row.
    pub async fn all_queue_rows(&self) -> Result<Vec<QueueRow>, sqlx::Error> {
        with_pool!(&self.durable, pool => sqlx::query_as(sqlx::AssertSqlSafe(all_queue_rows_sql())).fetch_all(pool).await)
    }

    /// Writes a queue's settings (the limiter state is kept).
    pub async fn put_queue(&self, q: &QueueRow) -> Result<(), sqlx::Error> {
        let sql = "INSERT INTO jobs_queues (queue, paused, concurrency, rate_limit, rate_period_ms, target_url, secret, retention_ms, updated_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (queue) DO UPDATE SET paused = excluded.paused, \
             concurrency = excluded.concurrency, rate_limit = excluded.rate_limit, rate_period_ms = excluded.rate_period_ms, \
             target_url = excluded.target_url, secret = excluded.secret, retention_ms = excluded.retention_ms, \
             updated_at_ms = excluded.updated_at_ms";
        self.write_exec(
            sql.into(),
            vec![
                Bind::S(q.queue.clone()),
                Bind::B(q.paused),
                Bind::OI(q.concurrency.map(i64::from)),
                Bind::OI(q.rate_limit.map(i64::from)),
                Bind::OI(q.rate_period_ms),
                Bind::OS(q.target_url.clone()),
                Bind::OS(q.secret.clone()),
                Bind::OI(q.retention_ms),
                Bind::I(q.updated_at_ms),
            ],
        )
        .await?;
        self.settings.forget();
        Ok(())
    }
}
