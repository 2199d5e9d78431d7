//! The SQL both backends run: the fragments that differ between SQLite and PostgreSQL
//! ([`Dialect`]), parameters bound the same way to either ([`Bind`]), and one-statement writes
//! on either.

use mortar_core::storage::sqlite_writer::positional;
use sqlx::FromRow;

use super::rows::{FromSqlite, sqlite_rows};
use super::{COLUMNS, Job, JobStore, QUEUE_COLUMNS, Writes};

/// A job stops blocking duplicates when it finishes (unless its uniqueness is for a time).
pub(super) const RELEASE_HOLD_ON_FINISH: &str =
    "unique_hold = CASE WHEN unique_while = 'for_ms' THEN unique_hold ELSE NULL END";

/// `queued` uniqueness ends when the job starts.
const RELEASE_HOLD_ON_START: &str =
    "unique_hold = CASE WHEN unique_while = 'queued' THEN NULL ELSE unique_hold END";

/// The SQL fragments that differ between SQLite and PostgreSQL.
#[derive(Debug, Clone, Copy)]
pub(super) struct Dialect {
    /// Expands the JSON array of strings in parameter `$N` to rows.
    strings: &'static str,
    /// Row locking of the lease sub-select.
    pub(super) skip_locked: &'static str,
}

pub(super) const SQLITE: Dialect = Dialect {
    strings: "SELECT value FROM json_each(${n})",
    skip_locked: "",
};

pub(super) const POSTGRES: Dialect = Dialect {
    strings: "SELECT jsonb_array_elements_text(${n}::jsonb)",
    skip_locked: " FOR UPDATE SKIP LOCKED",
};

impl Dialect {
    pub(super) fn strings(self, n: u32) -> String {
        self.strings.replace("{n}", &n.to_string())
    }

    /// The settings rows of the queues named in the JSON array `$1`.
    pub(super) fn queue_rows_sql(self) -> String {
        format!(
            "SELECT {QUEUE_COLUMNS} FROM jobs_queues WHERE queue IN ({})",
            self.strings(1)
        )
    }

    /// Leases available jobs of the queue(s) in `$4` to lease `$2` for worker `$3`, at most
    /// `$5`, in priority, run_at, id order. One queue: `$4` is its name and the partial index
    /// `jobs_available` is walked in order; several: `$4` is a JSON array of names.
    pub(super) fn lease_sql(self, queues: usize) -> String {
        self.lease_sql_where(queues, "")
    }

    /// [`Dialect::lease_sql`] for queues believed to have no limits, from settings that may be
    /// stale: a queue that is paused or limited after all is skipped by the statement itself.
    pub(super) fn free_lease_sql(self, queues: usize) -> String {
        self.lease_sql_where(
            queues,
            " AND NOT EXISTS (SELECT 1 FROM jobs_queues s WHERE s.queue = jobs_jobs.queue \
             AND (s.paused OR s.concurrency IS NOT NULL OR s.rate_limit IS NOT NULL))",
        )
    }

    fn lease_sql_where(self, queues: usize, guard: &str) -> String {
        let queue = if queues == 1 {
            "queue = $4".to_owned()
        } else {
            format!("queue IN ({})", self.strings(4))
        };
        format!(
            "UPDATE jobs_jobs SET state = 'running', attempt = attempt + 1, lease_id = $2, lease_until_ms = $1 + timeout_ms, \
             worker = $3, started_at_ms = $1, {RELEASE_HOLD_ON_START} \
             WHERE id IN (SELECT id FROM jobs_jobs WHERE state = 'available' AND {queue}{guard} \
             ORDER BY priority, run_at_ms, id LIMIT $5{}) RETURNING {COLUMNS}",
            self.skip_locked
        )
    }
}

pub(super) fn json_strings(items: &[String]) -> String {
    serde_json::to_string(items).unwrap_or_else(|_| "[]".into())
}

/// How `lease_sql(queues.len())` takes its queues.
pub(super) fn queue_param(queues: &[String]) -> String {
    match queues {
        [one] => one.clone(),
        many => json_strings(many),
    }
}

/// A statement parameter, for the statements both backends run.
pub(super) enum Bind {
    I(i64),
    B(bool),
    S(String),
    OI(Option<i64>),
    OS(Option<String>),
}

impl rusqlite::ToSql for Bind {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        match self {
            Bind::I(i) => i.to_sql(),
            Bind::B(b) => b.to_sql(),
            Bind::S(s) => s.to_sql(),
            Bind::OI(i) => i.to_sql(),
            Bind::OS(s) => s.to_sql(),
        }
    }
}

pub(super) fn pg_args(binds: Vec<Bind>) -> Result<sqlx::postgres::PgArguments, sqlx::Error> {
    use sqlx::Arguments as _;
    let mut args = sqlx::postgres::PgArguments::default();
    for b in binds {
        match b {
            Bind::I(i) => args.add(i),
            Bind::B(b) => args.add(b),
            Bind::S(s) => args.add(s),
            Bind::OI(i) => args.add(i),
            Bind::OS(s) => args.add(s),
        }
        .map_err(sqlx::Error::Encode)?;
    }
    Ok(args)
}

impl JobStore {
    /// Runs one write statement and returns the rows it gives back (`RETURNING`).
    pub(super) async fn write_rows<T>(
        &self,
        sql: String,
        binds: Vec<Bind>,
    ) -> Result<Vec<T>, sqlx::Error>
    where
        T: FromSqlite + for<'r> FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin + 'static,
    {
        match self.writes() {
            Writes::Sqlite(w) => w.write(move |c| sqlite_rows(c, &sql, &binds)).await,
            Writes::Postgres(pool) => {
                sqlx::query_as_with(sqlx::AssertSqlSafe(sql), pg_args(binds)?)
                    .fetch_all(pool)
                    .await
            }
        }
    }

    /// Runs one write statement; returns the rows it changed.
    pub(super) async fn write_exec(
        &self,
        sql: String,
        binds: Vec<Bind>,
    ) -> Result<u64, sqlx::Error> {
        match self.writes() {
            Writes::Sqlite(w) => {
                w.write(move |c| {
                    c.prepare_cached(&positional(&sql))?
                        .execute(rusqlite::params_from_iter(&binds))
                        .map(|n| n as u64)
                })
                .await
            }
            Writes::Postgres(pool) => sqlx::query_with(sqlx::AssertSqlSafe(sql), pg_args(binds)?)
                .execute(pool)
                .await
                .map(|d| d.rows_affected()),
        }
    }

    /// Runs `sql` (which must `RETURNING` the columns) and returns the row it changed.
    pub(super) async fn update_one(
        &self,
        sql: String,
        binds: Vec<Bind>,
    ) -> Result<Option<Job>, sqlx::Error> {
        Ok(self.write_rows(sql, binds).await?.into_iter().next())
    }
}
