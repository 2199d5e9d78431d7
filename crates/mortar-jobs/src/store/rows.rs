//! Decoding rows on the SQLite writer's connection, column for column as sqlx's `FromRow`
//! decodes them on the pools.

use mortar_core::storage::sql::FromSqlite;

use super::{Completed, Job, QueueRow};

impl FromSqlite for Job {
    /// [`COLUMNS`] in order.
    fn from_sqlite(r: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(Job {
            id: r.get(0)?,
            queue: r.get(1)?,
            kind: r.get(2)?,
            payload: r.get(3)?,
            priority: r.get(4)?,
            run_at_ms: r.get(5)?,
            state: r.get(6)?,
            attempt: r.get(7)?,
            max_attempts: r.get(8)?,
            backoff_base_ms: r.get(9)?,
            backoff_max_ms: r.get(10)?,
            timeout_ms: r.get(11)?,
            lease_id: r.get(12)?,
            lease_until_ms: r.get(13)?,
            worker: r.get(14)?,
            result: r.get(15)?,
            unique_key: r.get(16)?,
            created_at_ms: r.get(17)?,
            finished_at_ms: r.get(18)?,
            started_at_ms: r.get(19)?,
            tags: r.get(20)?,
            unique_while: r.get(21)?,
            unique_hold: r.get(22)?,
            unique_until_ms: r.get(23)?,
            attempt_base: r.get(24)?,
            cancel_requested_at_ms: r.get(25)?,
        })
    }
}

impl FromSqlite for QueueRow {
    /// [`QUEUE_COLUMNS`] in order.
    fn from_sqlite(r: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(QueueRow {
            queue: r.get(0)?,
            paused: r.get(1)?,
            concurrency: r.get(2)?,
            rate_limit: r.get(3)?,
            rate_period_ms: r.get(4)?,
            rate_tokens: r.get(5)?,
            rate_at_ms: r.get(6)?,
            target_url: r.get(7)?,
            secret: r.get(8)?,
            retention_ms: r.get(9)?,
            updated_at_ms: r.get(10)?,
        })
    }
}

impl FromSqlite for Completed {
    /// `id, queue, kind, started_at_ms`.
    fn from_sqlite(r: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(Completed {
            id: r.get(0)?,
            queue: r.get(1)?,
            kind: r.get(2)?,
            started_at_ms: r.get(3)?,
        })
    }
}
