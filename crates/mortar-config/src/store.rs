//! Values, history and schemas in the durable store: SQLite (embedded) or PostgreSQL
//! (cluster), one SQL text per statement through the core SQL layer.
//!
//! A write is one operation: read the state it depends on, let the caller decide (CAS,
//! validation), then bump `config_meta.revision` and write the values, the history rows and the
//! environment's revision — all in one transaction. On PostgreSQL the transaction starts by
//! locking the `config_meta` row, so writers are serialized and revisions commit in order; on
//! SQLite the file's one writer thread serializes them. A reader that sees revision N therefore
//! sees every revision below it, which is what lets watchers follow the history without gaps.
//! On PostgreSQL a node's writes that queue while its transaction is in flight share the next
//! one (`group`: one lock and one COMMIT for many revisions).

mod group;

use std::collections::{BTreeMap, HashMap};

use mortar_core::params;
use mortar_core::storage::Durable;
use mortar_core::storage::sql::{
    Db, Dialect, FromSqlite, Param, Writes, json, sqlite_exec, sqlite_rows,
};
use mortar_core::with_pool;
use serde::Serialize;
use sqlx::FromRow;

/// A stored value.
#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct ValueRow {
    pub env: String,
    pub key: String,
    /// JSON text (for a secret: its ciphertext).
    pub value: String,
    pub secret: bool,
    /// The revision that last changed it.
    pub revision: i64,
}

/// One key's change at one revision.
#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct ChangeRow {
    pub revision: i64,
    pub ns: String,
    pub env: String,
    pub key: String,
    /// JSON text after the change; `None`: deleted.
    pub value: Option<String>,
    /// JSON text before the change; `None`: it did not exist.
    pub prev: Option<String>,
    pub secret: bool,
    pub principal: String,
    pub message: String,
    pub at_ms: i64,
}

/// What a write depends on, read inside its transaction.
#[derive(Debug, Default)]
pub struct State {
    /// The newest revision before this write.
    pub head: i64,
    /// The namespace's environments and their newest revisions.
    pub envs: BTreeMap<String, i64>,
    /// Stored values by environment and key: the written environment's keys of the write, or
    /// the whole namespace when it has a schema (to validate every environment).
    pub values: HashMap<String, BTreeMap<String, ValueRow>>,
    /// The namespace's schema (JSON text).
    pub schema: Option<String>,
}

/// One key of a write, as decided: the new value (`None` deletes) and the one it replaces.
#[derive(Debug, Clone, Serialize)]
pub struct Write {
    pub key: String,
    /// JSON text (a secret: sealed).
    pub value: Option<String>,
    pub prev: Option<String>,
    /// The new value is a secret.
    pub secret: bool,
    /// The history row hides its values (the new or the previous one is a secret).
    pub masked: bool,
}

/// A write to one environment.
#[derive(Debug, Clone)]
pub struct WriteSet {
    pub ns: String,
    pub env: String,
    /// The keys the write touches (the state read holds their current values).
    pub keys: Vec<String>,
    pub principal: String,
    pub message: String,
    pub at_ms: i64,
}

/// Why a write was not made (the decision's error), or the store failed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError<E> {
    #[error("{0}")]
    Refused(E),
    #[error(transparent)]
    Store(#[from] sqlx::Error),
}

impl FromSqlite for ValueRow {
    fn from_sqlite(r: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            env: r.get(0)?,
            key: r.get(1)?,
            value: r.get(2)?,
            secret: r.get(3)?,
            revision: r.get(4)?,
        })
    }
}

impl FromSqlite for ChangeRow {
    fn from_sqlite(r: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            revision: r.get(0)?,
            ns: r.get(1)?,
            env: r.get(2)?,
            key: r.get(3)?,
            value: r.get(4)?,
            prev: r.get(5)?,
            secret: r.get(6)?,
            principal: r.get(7)?,
            message: r.get(8)?,
            at_ms: r.get(9)?,
        })
    }
}

const VALUE_COLUMNS: &str = "env, key, value, secret, revision";
const CHANGE_COLUMNS: &str =
    "revision, ns, env, key, value, prev, secret, principal, message, at_ms";

#[derive(Debug, Clone)]
pub struct ConfigStore {
    db: Db,
    /// PostgreSQL's group commit of this node's writes.
    group: group::WriteGroup,
}

impl ConfigStore {
    pub fn new(durable: Durable) -> Self {
        Self {
            db: Db::new(durable),
            group: group::WriteGroup::default(),
        }
    }

    pub fn durable(&self) -> &Durable {
        self.db.durable()
    }

    /// The newest revision and the history floor.
    pub async fn head(&self) -> Result<(i64, i64), sqlx::Error> {
        with_pool!(self.db.durable(), pool => sqlx::query_as("SELECT revision, floor FROM config_meta WHERE id = 1").fetch_one(pool).await)
    }

    /// A namespace's environments with their newest revisions (empty: no such namespace).
    pub async fn envs(&self, ns: &str) -> Result<BTreeMap<String, i64>, sqlx::Error> {
        let rows: Vec<(String, i64)> = with_pool!(self.db.durable(), pool => sqlx::query_as(
            "SELECT env, revision FROM config_envs WHERE ns = $1 ORDER BY env").bind(ns).fetch_all(pool).await)?;
        Ok(rows.into_iter().collect())
    }

    /// Namespaces after `after`, by name, with their newest revision.
    pub async fn namespaces(
        &self,
        after: &str,
        limit: u32,
    ) -> Result<Vec<(String, i64)>, sqlx::Error> {
        with_pool!(self.db.durable(), pool => sqlx::query_as(
            "SELECT ns, MAX(revision) FROM config_envs WHERE ns > $1 GROUP BY ns ORDER BY ns LIMIT $2")
            .bind(after).bind(i64::from(limit)).fetch_all(pool).await)
    }

    /// The stored values of `envs` in `ns`, and the revision they reflect (one statement: one
    /// snapshot).
    pub async fn values(
        &self,
        ns: &str,
        envs: &[String],
    ) -> Result<(Vec<ValueRow>, i64), sqlx::Error> {
        type Row = (
            i64,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<bool>,
            Option<i64>,
        );
        let sql = format!(
            "SELECT m.revision, v.env, v.key, v.value, v.secret, v.revision FROM config_meta m \
             LEFT JOIN config_values v ON v.ns = $1 AND v.env IN ({}) WHERE m.id = 1 ORDER BY v.key",
            self.db.dialect().json_strings(2)
        );
        let rows: Vec<Row> = with_pool!(self.db.durable(), pool => sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(ns).bind(json(envs)).fetch_all(pool).await)?;
        let head = rows.first().map_or(0, |r| r.0);
        let values = rows
            .into_iter()
            .filter_map(|(_, env, key, value, secret, revision)| {
                Some(ValueRow {
                    env: env?,
                    key: key?,
                    value: value?,
                    secret: secret?,
                    revision: revision?,
                })
            })
            .collect();
        Ok((values, head))
    }

    /// Changes after revision `after`, oldest first, at most `limit`: of every namespace
    /// (`ns` `None`), or of `ns`'s `envs`.
    pub async fn changes(
        &self,
        after: i64,
        ns: Option<(&str, &[String])>,
        limit: u32,
    ) -> Result<Vec<ChangeRow>, sqlx::Error> {
        let limit = i64::from(limit);
        match ns {
            None => {
                let sql = format!(
                    "SELECT {CHANGE_COLUMNS} FROM config_changes WHERE revision > $1 ORDER BY revision, key LIMIT $2"
                );
                with_pool!(self.db.durable(), pool => sqlx::query_as(sqlx::AssertSqlSafe(sql))
                    .bind(after).bind(limit).fetch_all(pool).await)
            }
            Some((ns, envs)) => {
                let sql = format!(
                    "SELECT {CHANGE_COLUMNS} FROM config_changes WHERE ns = $1 AND env IN ({}) AND revision > $3 \
                     ORDER BY revision, env, key LIMIT $4",
                    self.db.dialect().json_strings(2)
                );
                with_pool!(self.db.durable(), pool => sqlx::query_as(sqlx::AssertSqlSafe(sql))
                    .bind(ns).bind(json(envs)).bind(after).bind(limit).fetch_all(pool).await)
            }
        }
    }

    /// History of one environment, newest first, before revision `before`, optionally of one
    /// key.
    pub async fn history(
        &self,
        ns: &str,
        env: &str,
        key: Option<&str>,
        before: i64,
        limit: u32,
    ) -> Result<Vec<ChangeRow>, sqlx::Error> {
        let sql = format!(
            "SELECT {CHANGE_COLUMNS} FROM config_changes WHERE ns = $1 AND env = $2 AND revision < $3 \
             AND ($4 = '' OR key = $4) ORDER BY revision DESC, key LIMIT $5"
        );
        with_pool!(self.db.durable(), pool => sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(ns).bind(env).bind(before).bind(key.unwrap_or("")).bind(i64::from(limit)).fetch_all(pool).await)
    }

    /// Each of `envs`' value of `key` as of revision `at` (kept history holds it: compaction
    /// never removes a key's newest change at or below the floor), and whether it is hidden (a
    /// secret). Deleted or never set: absent.
    pub async fn key_at(
        &self,
        ns: &str,
        envs: &[String],
        key: &str,
        at: i64,
    ) -> Result<HashMap<String, (String, bool)>, sqlx::Error> {
        let sql = format!(
            "SELECT env, value, secret FROM config_changes c WHERE ns = $1 AND key = $2 AND env IN ({}) \
             AND revision = (SELECT MAX(revision) FROM config_changes d WHERE d.ns = $1 AND d.env = c.env \
             AND d.key = $2 AND d.revision <= $4)",
            self.db.dialect().json_strings(3)
        );
        let rows: Vec<(String, Option<String>, bool)> = with_pool!(self.db.durable(), pool => sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(ns).bind(key).bind(json(envs)).bind(at).fetch_all(pool).await)?;
        Ok(rows
            .into_iter()
            .filter_map(|(e, v, secret)| Some((e, (v?, secret))))
            .collect())
    }

    /// An environment's values as of revision `at` (for rollback), from the kept history.
    pub async fn env_at(
        &self,
        ns: &str,
        env: &str,
        at: i64,
    ) -> Result<BTreeMap<String, (String, bool)>, sqlx::Error> {
        let sql = "SELECT key, value, secret FROM config_changes c WHERE ns = $1 AND env = $2 \
             AND revision = (SELECT MAX(revision) FROM config_changes d WHERE d.ns = $1 AND d.env = $2 \
             AND d.key = c.key AND d.revision <= $3)";
        let rows: Vec<(String, Option<String>, bool)> = with_pool!(self.db.durable(), pool => sqlx::query_as(sql)
            .bind(ns).bind(env).bind(at).fetch_all(pool).await)?;
        Ok(rows
            .into_iter()
            .filter_map(|(k, v, s)| Some((k, (v?, s))))
            .collect())
    }

    /// A namespace's schema (JSON text).
    pub async fn schema(&self, ns: &str) -> Result<Option<String>, sqlx::Error> {
        with_pool!(self.db.durable(), pool => sqlx::query_scalar("SELECT schema FROM config_schemas WHERE ns = $1")
            .bind(ns).fetch_optional(pool).await)
    }

    /// Stores (or with `None` removes) a namespace's schema after `check` accepts it against
    /// every stored value of the namespace, in one transaction with the values it read.
    pub async fn set_schema<E, F>(
        &self,
        ns: &str,
        schema: Option<String>,
        principal: &str,
        at_ms: i64,
        check: F,
    ) -> Result<(), WriteError<E>>
    where
        E: Send + 'static,
        F: FnOnce(&HashMap<String, BTreeMap<String, ValueRow>>) -> Result<(), E> + Send + 'static,
    {
        let (stmt, params) = match schema {
            Some(schema) => (
                "INSERT INTO config_schemas (ns, schema, principal, updated_at_ms) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (ns) DO UPDATE SET schema = excluded.schema, principal = excluded.principal, \
                 updated_at_ms = excluded.updated_at_ms",
                params![ns, schema, principal, at_ms],
            ),
            None => ("DELETE FROM config_schemas WHERE ns = $1", params![ns]),
        };
        let read = all_values_sql();
        let ns = ns.to_owned();
        match self.db.writes() {
            Writes::Sqlite(w) => w
                .write(move |c| {
                    let rows: Vec<ValueRow> = sqlite_rows(c, &read, &params![ns.as_str()])?;
                    Ok(match check(&by_env(rows)) {
                        Ok(()) => {
                            sqlite_exec(c, stmt, &params)?;
                            Ok(())
                        }
                        Err(e) => Err(e),
                    })
                })
                .await?
                .map_err(WriteError::Refused),
            Writes::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                sqlx::query("SELECT revision FROM config_meta WHERE id = 1 FOR UPDATE")
                    .execute(&mut *tx)
                    .await?;
                let rows: Vec<ValueRow> = sqlx::query_as(sqlx::AssertSqlSafe(read))
                    .bind(&ns)
                    .fetch_all(&mut *tx)
                    .await?;
                check(&by_env(rows)).map_err(WriteError::Refused)?;
                sqlx::query_with(stmt, mortar_core::storage::sql::pg_args(params)?)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(())
            }
        }
    }

    /// Writes one change set: reads the [`State`] (inside the transaction), lets `decide` turn it
    /// into the rows to write (or refuse), then writes them as one new revision. Returns the
    /// revision and the rows.
    pub async fn write<E, F>(
        &self,
        set: WriteSet,
        decide: F,
    ) -> Result<(i64, Vec<Write>), WriteError<E>>
    where
        E: Send + 'static,
        F: FnOnce(&State) -> Result<Vec<Write>, E> + Send + 'static,
    {
        let dialect = self.db.dialect();
        match self.db.writes() {
            Writes::Sqlite(w) => {
                let reads = state_sql(dialect, &set);
                w.write(move |c| {
                    let state = state_sqlite(c, &reads)?;
                    let writes = match decide(&state) {
                        Ok(w) => w,
                        Err(e) => return Ok(Err(e)),
                    };
                    for (sql, params) in write_sql(dialect, &set, &writes) {
                        sqlite_exec(c, &sql, &params)?;
                    }
                    let revision: Vec<i64> = sqlite_rows(c, HEAD, &[])?;
                    Ok(Ok((revision[0], writes)))
                })
                .await?
                .map_err(WriteError::Refused)
            }
            // Serialized by the revision lock (revisions commit in order), grouped per node.
            Writes::Postgres(pool) => self.group.write(pool, set, decide).await,
        }
    }

    /// Compacts the history at or below `floor`: removes every change superseded by a later
    /// change of its key at or below the floor, then deletions that are their key's newest
    /// change at or below it. The state at any revision above the floor can still be rebuilt.
    pub async fn compact(&self, floor: i64) -> Result<u64, sqlx::Error> {
        let statements = vec![
            (
                "DELETE FROM config_changes WHERE revision <= $1 AND EXISTS (SELECT 1 FROM config_changes n \
                 WHERE n.ns = config_changes.ns AND n.env = config_changes.env AND n.key = config_changes.key \
                 AND n.revision > config_changes.revision AND n.revision <= $1)",
                params![floor],
            ),
            (
                "DELETE FROM config_changes WHERE revision <= $1 AND value IS NULL",
                params![floor],
            ),
            (
                "UPDATE config_meta SET floor = $1 WHERE id = 1 AND floor < $1",
                params![floor],
            ),
        ];
        Ok(self.db.exec_all(statements).await?.iter().take(2).sum())
    }
}

const HEAD: &str = "SELECT revision FROM config_meta WHERE id = 1";

fn all_values_sql() -> String {
    format!("SELECT {VALUE_COLUMNS} FROM config_values WHERE ns = $1")
}

/// The reads of a write's [`State`]: the head, the namespace's environments and schema, and
/// the values — the written keys, or with a schema the whole namespace.
struct StateSql {
    envs: (String, Vec<Param>),
    schema: (String, Vec<Param>),
    keys: (String, Vec<Param>),
    all: (String, Vec<Param>),
}

fn state_sql(d: Dialect, set: &WriteSet) -> StateSql {
    let ns = || params![set.ns.as_str()];
    StateSql {
        envs: (
            "SELECT env, revision FROM config_envs WHERE ns = $1".into(),
            ns(),
        ),
        schema: (
            "SELECT schema FROM config_schemas WHERE ns = $1".into(),
            ns(),
        ),
        keys: (
            format!(
                "SELECT {VALUE_COLUMNS} FROM config_values WHERE ns = $1 AND env = $2 AND key IN ({})",
                d.json_strings(3)
            ),
            params![set.ns.as_str(), set.env.as_str(), json(&set.keys)],
        ),
        all: (all_values_sql(), ns()),
    }
}

fn by_env(rows: Vec<ValueRow>) -> HashMap<String, BTreeMap<String, ValueRow>> {
    let mut out: HashMap<String, BTreeMap<String, ValueRow>> = HashMap::new();
    for r in rows {
        out.entry(r.env.clone())
            .or_default()
            .insert(r.key.clone(), r);
    }
    out
}

fn state_sqlite(c: &rusqlite::Connection, q: &StateSql) -> rusqlite::Result<State> {
    let head: Vec<i64> = sqlite_rows(c, HEAD, &[])?;
    let envs: Vec<(String, i64)> = sqlite_rows(c, &q.envs.0, &q.envs.1)?;
    let schema: Vec<String> = sqlite_rows(c, &q.schema.0, &q.schema.1)?;
    let (sql, params) = if schema.is_empty() { &q.keys } else { &q.all };
    let values: Vec<ValueRow> = sqlite_rows(c, sql, params)?;
    Ok(State {
        head: head[0],
        envs: envs.into_iter().collect(),
        values: by_env(values),
        schema: schema.into_iter().next(),
    })
}

/// Writes `writes` as one new revision on PostgreSQL (inside a transaction holding the
/// revision lock); returns it.
async fn pg_write(
    tx: &mut sqlx::PgConnection,
    set: &WriteSet,
    writes: &[Write],
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(PG_WRITE)
        .bind(json(writes))
        .bind(&set.ns)
        .bind(&set.env)
        .bind(&set.principal)
        .bind(&set.message)
        .bind(set.at_ms)
        .fetch_one(&mut *tx)
        .await
}

/// A write's state on PostgreSQL, in one statement (its snapshot is taken after the lock).
async fn state_pg(
    tx: &mut sqlx::PgConnection,
    head: i64,
    set: &WriteSet,
) -> Result<State, sqlx::Error> {
    type Row = (String, Option<String>, String);
    let (envs, schema, values): Row = sqlx::query_as(PG_STATE)
        .bind(&set.ns)
        .bind(&set.env)
        .bind(json(&set.keys))
        .fetch_one(&mut *tx)
        .await?;
    let decode = |e: serde_json::Error| sqlx::Error::Decode(Box::new(e));
    let envs: Vec<(String, i64)> = serde_json::from_str(&envs).map_err(decode)?;
    let values: Vec<(String, String, String, bool, i64)> =
        serde_json::from_str(&values).map_err(decode)?;
    let values = values
        .into_iter()
        .map(|(env, key, value, secret, revision)| ValueRow {
            env,
            key,
            value,
            secret,
            revision,
        })
        .collect();
    Ok(State {
        head,
        envs: envs.into_iter().collect(),
        values: by_env(values),
        schema,
    })
}

/// [`state_pg`]'s statement: the environments, the schema, and the values (the written keys,
/// or with a schema the whole namespace) as JSON.
const PG_STATE: &str = "SELECT \
    (SELECT COALESCE(json_agg(json_build_array(env, revision)), '[]') FROM config_envs WHERE ns = $1)::text, \
    (SELECT schema FROM config_schemas WHERE ns = $1), \
    (SELECT COALESCE(json_agg(json_build_array(env, key, value, secret, revision)), '[]') FROM config_values \
      WHERE ns = $1 AND (EXISTS (SELECT 1 FROM config_schemas WHERE ns = $1) \
      OR (env = $2 AND key IN (SELECT jsonb_array_elements_text($3::jsonb)))))::text";

/// The write of a revision on PostgreSQL, as one statement: bump the revision, upsert and
/// delete the values, append the history, move the environment's revision; returns the new
/// revision. `$1` is the JSON array of [`Write`]s.
const PG_WRITE: &str = "WITH m AS (UPDATE config_meta SET revision = revision + 1 WHERE id = 1 RETURNING revision), \
    v AS (SELECT * FROM jsonb_to_recordset($1::jsonb) AS v(key TEXT, value TEXT, prev TEXT, secret BOOLEAN, masked BOOLEAN)), \
    up AS (INSERT INTO config_values (ns, env, key, value, secret, revision) \
      SELECT $2, $3, v.key, v.value, v.secret, m.revision FROM v, m WHERE v.value IS NOT NULL \
      ON CONFLICT (ns, env, key) DO UPDATE SET value = excluded.value, secret = excluded.secret, revision = excluded.revision), \
    del AS (DELETE FROM config_values WHERE ns = $2 AND env = $3 AND key IN (SELECT key FROM v WHERE value IS NULL)), \
    ch AS (INSERT INTO config_changes (revision, ns, env, key, value, prev, secret, principal, message, at_ms) \
      SELECT m.revision, $2, $3, v.key, v.value, v.prev, v.masked, $4, $5, $6 FROM v, m), \
    e AS (INSERT INTO config_envs (ns, env, revision, created_at_ms) SELECT $2, $3, m.revision, $6 FROM m \
      ON CONFLICT (ns, env) DO UPDATE SET revision = excluded.revision) \
    SELECT revision FROM m";

/// The statements that write `writes` as the next revision.
fn write_sql(d: Dialect, set: &WriteSet, writes: &[Write]) -> Vec<(String, Vec<Param>)> {
    let rows = d.json_rows(
        1,
        &[
            ("key", "TEXT"),
            ("value", "TEXT"),
            ("prev", "TEXT"),
            ("secret", "BOOLEAN"),
            ("masked", "BOOLEAN"),
        ],
    );
    let rows_json = json(writes);
    let (ns, env) = (set.ns.as_str(), set.env.as_str());
    vec![
        ("UPDATE config_meta SET revision = revision + 1 WHERE id = 1".into(), Vec::new()),
        (
            format!(
                "INSERT INTO config_values (ns, env, key, value, secret, revision) \
                 SELECT $2, $3, v.key, v.value, v.secret, m.revision FROM {rows}, config_meta m \
                 WHERE m.id = 1 AND v.value IS NOT NULL \
                 ON CONFLICT (ns, env, key) DO UPDATE SET value = excluded.value, secret = excluded.secret, \
                 revision = excluded.revision"
            ),
            params![rows_json.as_str(), ns, env],
        ),
        (
            format!(
                "DELETE FROM config_values WHERE ns = $2 AND env = $3 AND key IN (SELECT v.key FROM {rows} WHERE v.value IS NULL)"
            ),
            params![rows_json.as_str(), ns, env],
        ),
        (
            format!(
                "INSERT INTO config_changes (revision, ns, env, key, value, prev, secret, principal, message, at_ms) \
                 SELECT m.revision, $2, $3, v.key, v.value, v.prev, v.masked, $4, $5, $6 FROM {rows}, config_meta m WHERE m.id = 1"
            ),
            params![rows_json, ns, env, set.principal.as_str(), set.message.as_str(), set.at_ms],
        ),
        (
            "INSERT INTO config_envs (ns, env, revision, created_at_ms) SELECT $1, $2, revision, $3 FROM config_meta \
             WHERE id = 1 ON CONFLICT (ns, env) DO UPDATE SET revision = excluded.revision"
                .into(),
            params![ns, env, set.at_ms],
        ),
    ]
}
