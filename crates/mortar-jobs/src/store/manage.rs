//! Jobs as the API and operators see them: reads (one job, its errors, a filtered list,
//! per-queue counts) and bulk operations (retry, cancel, discard, prune).

use mortar_core::storage::sqlite_writer::positional;
use mortar_core::with_pool;

use mortar_core::storage::sql::{Param, Writes, json, pg_args};

use super::dialect::RELEASE_HOLD_ON_FINISH;
use super::{AttemptError, COLUMNS, Filter, Job, JobStore, QueueCounts};

impl JobStore {
    pub async fn get(&self, id: &str) -> Result<Option<Job>, sqlx::Error> {
        let sql = format!("SELECT {COLUMNS} FROM jobs_jobs WHERE id = $1");
        with_pool!(self.db.durable(), pool => sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(pool).await)
    }

    pub async fn errors(&self, id: &str) -> Result<Vec<AttemptError>, sqlx::Error> {
        with_pool!(self.db.durable(), pool => sqlx::query_as("SELECT attempt, error, at_ms FROM jobs_errors WHERE job_id = $1 ORDER BY attempt")
            .bind(id).fetch_all(pool).await)
    }

    /// Jobs by id order, filtered by state, queue and kind (empty = any), after `after`.
    pub async fn list(&self, f: &Filter, after: &str, limit: u32) -> Result<Vec<Job>, sqlx::Error> {
        let sql = format!(
            "SELECT {COLUMNS} FROM jobs_jobs WHERE ($1 = '' OR state = $1) AND ($2 = '' OR queue = $2) AND ($3 = '' OR kind = $3) \
             AND id > $4 ORDER BY id LIMIT $5"
        );
        with_pool!(self.db.durable(), pool => sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(&f.state).bind(&f.queue).bind(&f.kind).bind(after).bind(i64::from(limit)).fetch_all(pool).await)
    }

    /// Back to `available` now with a fresh budget of attempts (dead, cancelled or retryable
    /// jobs): attempt numbers keep counting, so each attempt's error keeps a number of its
    /// own, and `attempt_base` marks where the new budget starts. `id` = one job, else every
    /// job matching the filter. Returns the jobs revived.
    pub async fn retry(
        &self,
        id: Option<&str>,
        f: &Filter,
        now_ms: u64,
    ) -> Result<Vec<Job>, sqlx::Error> {
        let sql = format!(
            "UPDATE jobs_jobs SET state = 'available', attempt_base = attempt, run_at_ms = $1, finished_at_ms = NULL, \
             lease_id = NULL, cancel_requested_at_ms = NULL \
             WHERE state IN ('dead', 'cancelled', 'retryable') AND ($2 = '' OR id = $2) AND ($3 = '' OR queue = $3) \
             AND ($4 = '' OR kind = $4) AND ($5 = '' OR state = $5) RETURNING {COLUMNS}"
        );
        let binds = vec![
            Param::from(now_ms as i64),
            Param::from(id.unwrap_or("")),
            Param::from(f.queue.clone()),
            Param::from(f.kind.clone()),
            Param::from(f.state.clone()),
        ];
        let pool = match self.db.writes() {
            Writes::Sqlite(_) => return self.db.rows(sql, binds).await,
            Writes::Postgres(pool) => pool,
        };
        let mut tx = pool.begin().await?;
        let jobs: Vec<Job> = sqlx::query_as_with(sqlx::AssertSqlSafe(sql), pg_args(binds)?)
            .fetch_all(&mut *tx)
            .await?;
        if !jobs.is_empty() {
            sqlx::query("SELECT pg_notify('mortar_jobs', '')")
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(jobs)
    }

    /// Cancels a job that has not run to completion (not running, completed or dead).
    pub async fn cancel(&self, id: &str, now_ms: u64) -> Result<Option<Job>, sqlx::Error> {
        let sql = format!(
            "UPDATE jobs_jobs SET state = 'cancelled', finished_at_ms = $2, {RELEASE_HOLD_ON_FINISH} \
             WHERE id = $1 AND state IN ('scheduled', 'available', 'retryable') RETURNING {COLUMNS}"
        );
        self.update_one(sql, vec![Param::from(id), Param::from(now_ms as i64)])
            .await
    }

    /// Deletes finished (dead, cancelled, completed) jobs matching the filter; returns how many.
    pub async fn discard(&self, f: &Filter) -> Result<u64, sqlx::Error> {
        let pick = format!(
            "SELECT id FROM jobs_jobs WHERE state IN ('dead', 'cancelled', 'completed') AND finished_at_ms IS NOT NULL \
             AND ($1 = '' OR queue = $1) AND ($2 = '' OR kind = $2) AND ($3 = '' OR state = $3){}",
            self.db.dialect().skip_locked()
        );
        self.delete_where(
            &pick,
            vec![
                Param::from(f.queue.clone()),
                Param::from(f.kind.clone()),
                Param::from(f.state.clone()),
            ],
        )
        .await
    }

    /// Deletes the jobs `pick` selects (and their errors) in one transaction.
    async fn delete_where(&self, pick: &str, binds: Vec<Param>) -> Result<u64, sqlx::Error> {
        let jobs = format!("DELETE FROM jobs_jobs WHERE id IN ({pick}) RETURNING id");
        let errors = format!(
            "DELETE FROM jobs_errors WHERE job_id IN ({})",
            self.db.dialect().json_strings(1)
        );
        match self.db.writes() {
            Writes::Sqlite(w) => {
                w.write(move |c| {
                    let ids: Vec<String> = c
                        .prepare_cached(&positional(&jobs))?
                        .query_map(rusqlite::params_from_iter(&binds), |r| r.get(0))?
                        .collect::<rusqlite::Result<_>>()?;
                    if !ids.is_empty() {
                        c.prepare_cached(&positional(&errors))?
                            .execute([json(&ids)])?;
                    }
                    Ok(ids.len() as u64)
                })
                .await
            }
            Writes::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                let ids: Vec<String> =
                    sqlx::query_scalar_with(sqlx::AssertSqlSafe(jobs), pg_args(binds)?)
                        .fetch_all(&mut *tx)
                        .await?;
                if !ids.is_empty() {
                    sqlx::query(sqlx::AssertSqlSafe(errors))
                        .bind(json(&ids))
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok(ids.len() as u64)
            }
        }
    }

    /// Deletes up to `limit` jobs of `queue` (empty = queues without their own retention,
    /// listed in `except`) in `states` that finished before `before_ms`.
    pub async fn prune(
        &self,
        queue: &str,
        except: &[String],
        states: &[&str],
        before_ms: u64,
        limit: u32,
    ) -> Result<u64, sqlx::Error> {
        let states = states
            .iter()
            .map(|s| format!("'{s}'"))
            .collect::<Vec<_>>()
            .join(", ");
        let pick = format!(
            "SELECT id FROM jobs_jobs WHERE state IN ({states}) AND finished_at_ms < $3 \
             AND (($1 <> '' AND queue = $1) OR ($1 = '' AND queue NOT IN ({}))) LIMIT {limit}{}",
            self.db.dialect().json_strings(2),
            self.db.dialect().skip_locked()
        );
        self.delete_where(
            &pick,
            vec![
                Param::from(queue),
                Param::from(json(except)),
                Param::from(before_ms as i64),
            ],
        )
        .await
    }

    /// Per queue: jobs by state, the oldest due job's `run_at`, completions in the last minute.
    /// Each part reads an index made for it (live states: the partial indexes leases and
    /// maintenance use; finished states: `jobs_finished`).
    pub async fn counts(&self, now_ms: u64) -> Result<Vec<(String, QueueCounts)>, sqlx::Error> {
        type Rows = (
            Vec<(String, String, i64)>,
            Vec<(String, Option<i64>)>,
            Vec<(String, i64)>,
        );
        let now = now_ms as i64;
        let (by_state, oldest, recent): Rows = with_pool!(self.db.durable(), pool => (
            sqlx::query_as(BY_STATE).fetch_all(pool).await?,
            sqlx::query_as("SELECT queue, min(run_at_ms) FROM jobs_jobs WHERE state IN ('available', 'scheduled', 'retryable') \
                AND run_at_ms <= $1 GROUP BY queue").bind(now).fetch_all(pool).await?,
            sqlx::query_as("SELECT queue, count(*) FROM jobs_jobs WHERE state = 'completed' AND finished_at_ms > $1 GROUP BY queue")
                .bind(now - 60_000).fetch_all(pool).await?,
        ));
        let mut out: Vec<(String, QueueCounts)> = Vec::new();
        for (queue, state, n) in by_state {
            match out.last_mut() {
                Some((q, c)) if *q == queue => c.by_state.push((state, n)),
                _ => out.push((
                    queue,
                    QueueCounts {
                        by_state: vec![(state, n)],
                        ..QueueCounts::default()
                    },
                )),
            }
        }
        for (q, c) in &mut out {
            c.oldest_due_ms = oldest.iter().find(|(o, _)| o == q).and_then(|(_, t)| *t);
            c.completed_last_minute = recent.iter().find(|(r, _)| r == q).map_or(0, |(_, n)| *n);
        }
        Ok(out)
    }
}

/// Jobs by queue and state, ordered so, each arm answered by one index.
const BY_STATE: &str = "SELECT queue, state, n FROM ( \
    SELECT queue, 'available' AS state, count(*) AS n FROM jobs_jobs WHERE state = 'available' GROUP BY queue \
    UNION ALL SELECT queue, state, count(*) FROM jobs_jobs WHERE state IN ('scheduled', 'retryable') GROUP BY queue, state \
    UNION ALL SELECT queue, 'running', count(*) FROM jobs_jobs WHERE state = 'running' GROUP BY queue \
    UNION ALL SELECT queue, state, count(*) FROM jobs_jobs WHERE finished_at_ms IS NOT NULL GROUP BY queue, state \
    ) AS c ORDER BY queue, state";
