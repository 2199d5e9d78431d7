//! One SQL layer for the blocks whose state lives in SQL on both backends (jobs, cron, and
//! every later block of that shape): statements are written once with `$N` parameters, and this
//! module binds, runs and decodes them alike on SQLite and PostgreSQL.
//!
//! - [`Dialect`]: the few fragments that differ (parameter markers, a JSON array parameter read
//!   as a table, row locks that skip locked rows).
//! - [`Param`] and [`params!`](crate::params): one parameter type, bound through rusqlite
//!   ([`rusqlite::ToSql`]) or sqlx ([`pg_args`]).
//! - [`FromSqlite`]: decoding a row on the SQLite writer's connection, column for column as
//!   sqlx's `FromRow` decodes it on the pools.
//! - [`Db`]: a block's handle on the durable store. Reads go through the sqlx pools
//!   ([`with_pool!`](crate::with_pool)); writes go through [`Db::rows`], [`Db::exec`] and
//!   [`Db::exec_all`]: on SQLite to the file's one writer thread ([`SqliteWriter`]), on
//!   PostgreSQL to the pool.
//! - [`StoreError`]: what a backend behind a storage trait (lock, rate limit) reports.
//!
//! Blocks with their own storage trait and several backends (lock, rate limit, cache) keep
//! that shape; the SQL here is for stores that are SQL and nothing else. ARCHITECTURE.md
//! describes both shapes.

use serde::Serialize;
use sqlx::FromRow;
use sqlx::postgres::{PgArguments, PgPool, PgRow};

use super::Durable;
use super::sqlite_writer::{SqliteWriter, positional};

/// The SQL fragments that differ between SQLite and PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    pub fn of(durable: &Durable) -> Self {
        match durable {
            Durable::Sqlite(_) => Dialect::Sqlite,
            Durable::Postgres(_) => Dialect::Postgres,
        }
    }

    /// `sql` with its `$N` parameter markers as this dialect's driver takes them (rusqlite:
    /// `?N`; sqlx takes `$N` on both).
    pub fn markers(self, sql: &str) -> String {
        match self {
            Dialect::Sqlite => positional(sql),
            Dialect::Postgres => sql.to_owned(),
        }
    }

    /// Parameter `$n`, a JSON array of strings, as rows of one column.
    pub fn json_strings(self, n: u32) -> String {
        match self {
            Dialect::Sqlite => format!("SELECT value FROM json_each(${n})"),
            Dialect::Postgres => format!("SELECT jsonb_array_elements_text(${n}::jsonb)"),
        }
    }

    /// Parameter `$n`, a JSON array of objects, as a table `v` with these columns (name,
    /// PostgreSQL type). SQLite reads each member with `->>`, whose result has the JSON
    /// value's type (text, integer or NULL).
    pub fn json_rows(self, n: u32, columns: &[(&str, &str)]) -> String {
        match self {
            Dialect::Sqlite => {
                let cols: Vec<String> = columns
                    .iter()
                    .map(|(c, _)| format!("value->>'{c}' AS {c}"))
                    .collect();
                format!("(SELECT {} FROM json_each(${n})) AS v", cols.join(", "))
            }
            Dialect::Postgres => {
                let cols: Vec<String> = columns.iter().map(|(c, t)| format!("{c} {t}")).collect();
                format!("jsonb_to_recordset(${n}::jsonb) AS v({})", cols.join(", "))
            }
        }
    }

    /// Appended to a sub-select that takes rows to change, so that concurrent writers on
    /// PostgreSQL split the rows instead of queueing on each other's row locks (SQLite has one
    /// writer: nothing to add).
    pub fn skip_locked(self) -> &'static str {
        match self {
            Dialect::Sqlite => "",
            Dialect::Postgres => " FOR UPDATE SKIP LOCKED",
        }
    }
}

/// `rows` (strings, or objects of strings and integers) as a JSON array parameter, for
/// [`Dialect::json_strings`] and [`Dialect::json_rows`].
pub fn json<T: Serialize>(rows: &[T]) -> String {
    serde_json::to_string(rows).unwrap_or_else(|_| "[]".into())
}

/// A statement parameter, bound alike through rusqlite (SQLite) and sqlx (PostgreSQL).
#[derive(Debug, Clone, PartialEq)]
pub enum Param {
    Int(Option<i64>),
    Text(Option<String>),
    Bool(bool),
}

impl From<i64> for Param {
    fn from(v: i64) -> Self {
        Param::Int(Some(v))
    }
}

impl From<Option<i64>> for Param {
    fn from(v: Option<i64>) -> Self {
        Param::Int(v)
    }
}

impl From<u32> for Param {
    fn from(v: u32) -> Self {
        Param::Int(Some(i64::from(v)))
    }
}

impl From<bool> for Param {
    fn from(v: bool) -> Self {
        Param::Bool(v)
    }
}

impl From<&str> for Param {
    fn from(v: &str) -> Self {
        Param::Text(Some(v.to_owned()))
    }
}

impl From<String> for Param {
    fn from(v: String) -> Self {
        Param::Text(Some(v))
    }
}

impl From<&String> for Param {
    fn from(v: &String) -> Self {
        Param::Text(Some(v.clone()))
    }
}

impl From<Option<String>> for Param {
    fn from(v: Option<String>) -> Self {
        Param::Text(v)
    }
}

impl From<Option<&str>> for Param {
    fn from(v: Option<&str>) -> Self {
        Param::Text(v.map(str::to_owned))
    }
}

impl rusqlite::ToSql for Param {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        match self {
            Param::Int(v) => v.to_sql(),
            Param::Text(v) => v.to_sql(),
            Param::Bool(v) => v.to_sql(),
        }
    }
}

/// `Vec<Param>` from values that convert into [`Param`].
#[macro_export]
macro_rules! params {
    ($($v:expr),* $(,)?) => { Vec::from([$($crate::storage::sql::Param::from($v)),*]) };
}

/// `params` as sqlx's PostgreSQL arguments.
pub fn pg_args(params: Vec<Param>) -> Result<PgArguments, sqlx::Error> {
    use sqlx::Arguments as _;
    let mut args = PgArguments::default();
    for p in params {
        match p {
            Param::Int(v) => args.add(v),
            Param::Text(v) => args.add(v),
            Param::Bool(v) => args.add(v),
        }
        .map_err(sqlx::Error::Encode)?;
    }
    Ok(args)
}

/// Decoding of a row on the SQLite writer's connection (sqlx decodes with `FromRow`; both
/// read the columns in the order the statements list them).
pub trait FromSqlite: Sized {
    fn from_sqlite(r: &rusqlite::Row<'_>) -> rusqlite::Result<Self>;
}

macro_rules! scalar_from_sqlite {
    ($($t:ty),*) => {$(
        impl FromSqlite for $t {
            fn from_sqlite(r: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
                r.get(0)
            }
        }
    )*};
}
scalar_from_sqlite!(i64, String, Option<i64>, Option<String>);

impl<A: rusqlite::types::FromSql, B: rusqlite::types::FromSql> FromSqlite for (A, B) {
    fn from_sqlite(r: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok((r.get(0)?, r.get(1)?))
    }
}

/// Rows of `sql` (with `$N` parameters) on a SQLite connection (the writer's, inside one of
/// its operations).
pub fn sqlite_rows<T: FromSqlite>(
    c: &rusqlite::Connection,
    sql: &str,
    params: &[Param],
) -> rusqlite::Result<Vec<T>> {
    c.prepare_cached(&positional(sql))?
        .query_map(rusqlite::params_from_iter(params), T::from_sqlite)?
        .collect()
}

/// Runs `sql` (with `$N` parameters) on a SQLite connection; returns the rows it changed.
pub fn sqlite_exec(c: &rusqlite::Connection, sql: &str, params: &[Param]) -> rusqlite::Result<u64> {
    c.prepare_cached(&positional(sql))?
        .execute(rusqlite::params_from_iter(params))
        .map(|n| n as u64)
}

/// A block's handle on the durable store: the pools for reads, and where writes go.
#[derive(Debug, Clone)]
pub struct Db {
    durable: Durable,
    /// SQLite: the file's writer thread, which every write goes through.
    writer: Option<SqliteWriter>,
}

/// Where a write goes.
#[derive(Debug, Clone, Copy)]
pub enum Writes<'a> {
    Sqlite(&'a SqliteWriter),
    Postgres(&'a PgPool),
}

impl Db {
    pub fn new(durable: Durable) -> Self {
        let writer = match &durable {
            Durable::Sqlite(pool) => Some(SqliteWriter::for_pool(pool)),
            Durable::Postgres(_) => None,
        };
        Self { durable, writer }
    }

    /// The pools, for reads ([`with_pool!`](crate::with_pool)).
    pub fn durable(&self) -> &Durable {
        &self.durable
    }

    pub fn dialect(&self) -> Dialect {
        Dialect::of(&self.durable)
    }

    /// Where writes go: for an operation of several statements on SQLite's writer thread, or
    /// a transaction on PostgreSQL.
    pub fn writes(&self) -> Writes<'_> {
        match (&self.durable, &self.writer) {
            (Durable::Postgres(pool), _) => Writes::Postgres(pool),
            (Durable::Sqlite(_), Some(w)) => Writes::Sqlite(w),
            (Durable::Sqlite(_), None) => unreachable!("Db::new gives SQLite its writer"),
        }
    }

    /// Runs one write statement and returns the rows it gives back (`RETURNING`).
    pub async fn rows<T>(&self, sql: String, params: Vec<Param>) -> Result<Vec<T>, sqlx::Error>
    where
        T: FromSqlite + for<'r> FromRow<'r, PgRow> + Send + Unpin + 'static,
    {
        match self.writes() {
            Writes::Sqlite(w) => w.write(move |c| sqlite_rows(c, &sql, &params)).await,
            Writes::Postgres(pool) => {
                sqlx::query_as_with(sqlx::AssertSqlSafe(sql), pg_args(params)?)
                    .fetch_all(pool)
                    .await
            }
        }
    }

    /// Runs one write statement; returns the rows it changed.
    pub async fn exec(&self, sql: String, params: Vec<Param>) -> Result<u64, sqlx::Error> {
        match self.writes() {
            Writes::Sqlite(w) => w.write(move |c| sqlite_exec(c, &sql, &params)).await,
            Writes::Postgres(pool) => sqlx::query_with(sqlx::AssertSqlSafe(sql), pg_args(params)?)
                .execute(pool)
                .await
                .map(|d| d.rows_affected()),
        }
    }

    /// Runs `statements` in one transaction (one writer operation on SQLite); returns the rows
    /// each changed.
    pub async fn exec_all<S>(
        &self,
        statements: Vec<(S, Vec<Param>)>,
    ) -> Result<Vec<u64>, sqlx::Error>
    where
        S: AsRef<str> + Send + 'static,
    {
        match self.writes() {
            Writes::Sqlite(w) => {
                w.write(move |c| {
                    statements
                        .iter()
                        .map(|(sql, params)| sqlite_exec(c, sql.as_ref(), params))
                        .collect()
                })
                .await
            }
            // One statement is atomic by itself: no BEGIN/COMMIT round trips.
            Writes::Postgres(pool) if statements.len() == 1 => {
                let (sql, params) = statements.into_iter().next().expect("one statement");
                let sql = sqlx::AssertSqlSafe(sql.as_ref().to_owned());
                let done = sqlx::query_with(sql, pg_args(params)?)
                    .execute(pool)
                    .await?;
                Ok(vec![done.rows_affected()])
            }
            Writes::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                let mut out = Vec::with_capacity(statements.len());
                for (sql, params) in statements {
                    let sql = sqlx::AssertSqlSafe(sql.as_ref().to_owned());
                    let done = sqlx::query_with(sql, pg_args(params)?)
                        .execute(&mut *tx)
                        .await?;
                    out.push(done.rows_affected());
                }
                tx.commit().await?;
                Ok(out)
            }
        }
    }
}

/// A backend behind a block's storage trait failed or did not answer in time.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{backend}: {message}")]
pub struct StoreError {
    pub backend: &'static str,
    pub message: String,
}

impl StoreError {
    pub fn new(backend: &'static str, message: impl std::fmt::Display) -> Self {
        Self {
            backend,
            message: message.to_string(),
        }
    }

    /// Maps a driver error of `backend` (for `map_err`).
    pub fn of<E: std::fmt::Display>(backend: &'static str) -> impl Fn(E) -> Self {
        move |e| Self::new(backend, e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dialects_read_a_json_array_as_rows() {
        assert_eq!(
            Dialect::Sqlite.json_rows(2, &[("a", "TEXT"), ("b", "BIGINT")]),
            "(SELECT value->>'a' AS a, value->>'b' AS b FROM json_each($2)) AS v"
        );
        assert_eq!(
            Dialect::Postgres.json_rows(1, &[("a", "TEXT")]),
            "jsonb_to_recordset($1::jsonb) AS v(a TEXT)"
        );
        assert_eq!(
            Dialect::Sqlite.markers("a = $1 AND b = $12"),
            "a = ?1 AND b = ?12"
        );
    }

    #[test]
    fn params_bind_the_same_on_sqlite() {
        let c = rusqlite::Connection::open_in_memory().unwrap();
        let got: Vec<(String, i64)> = sqlite_rows(
            &c,
            "SELECT value, $2 + 1 FROM json_each($1) WHERE $3 AND $4 IS NULL",
            &crate::params![json(&["x", "y"]), 41_i64, true, None::<String>],
        )
        .unwrap();
        assert_eq!(got, [("x".to_owned(), 42), ("y".to_owned(), 42)]);
    }
}
