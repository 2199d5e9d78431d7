//! How the backends are opened and watched: the PostgreSQL schema, SQLite's pragmas, the
//! probes behind each dependency's gate, and the migrators that tolerate other blocks' versions.

use std::sync::Arc;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use super::{BackendHealth, Durable, PROBE_TIMEOUT, StorageError, gate};

/// The durable gate's probe: `SELECT 1` on a connection of its own (never the pool's, whose
/// acquire waits out its timeout while the server refuses connections).
pub(super) fn probe_postgres(gate: &Arc<gate::Gate>, pool: &PgPool) {
    use sqlx::Connection;
    let opts = pool.connect_options();
    gate.spawn_kept_probe(
        move || {
            let opts = opts.clone();
            async move {
                sqlx::PgConnection::connect_with(&opts)
                    .await
                    .map_err(|e| e.to_string())
            }
        },
        |mut conn: sqlx::PgConnection| async move {
            sqlx::query("SELECT 1")
                .execute(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
            Ok(conn)
        },
    );
}

/// The Redis gate's probe: `PING` on a connection of its own.
pub(super) fn probe_redis(gate: &Arc<gate::Gate>, client: redis::Client) {
    gate.spawn_kept_probe(
        move || {
            let client = client.clone();
            async move {
                client
                    .get_multiplexed_async_connection()
                    .await
                    .map_err(|e| e.to_string())
            }
        },
        |mut conn: redis::aio::MultiplexedConnection| async move {
            redis::cmd("PING")
                .query_async::<String>(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
            Ok(conn)
        },
    );
}

pub(super) async fn open_sqlite(
    opts: SqliteConnectOptions,
    location: &str,
) -> Result<Durable, StorageError> {
    let opts = opts
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(5));
    let pool = SqlitePoolOptions::new()
        .max_connections(8)
        .connect_with(opts)
        .await
        .map_err(|e| connect_err("sqlite", location, e))?;
    Ok(Durable::Sqlite(pool))
}

/// A copy of `m` that tolerates versions applied by other blocks' migrators.
pub(super) fn with_others(m: &Migrator) -> Migrator {
    let mut m = Migrator {
        migrations: m.migrations.clone(),
        ..Migrator::DEFAULT
    };
    m.set_ignore_missing(true);
    m
}

pub(super) async fn probe<F, E>(name: &str, fut: F) -> BackendHealth
where
    F: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let error = match tokio::time::timeout(PROBE_TIMEOUT, fut).await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some(format!("no answer within {} ms", PROBE_TIMEOUT.as_millis())),
    };
    BackendHealth {
        name: name.to_owned(),
        ok: error.is_none(),
        error,
    }
}

/// Picks the schema mortar's tables live in and creates it if missing: the configured one, else
/// `public` for an install from before `database.schema` (its tables are there), else `mortar`.
/// Every pooled connection then starts with `search_path` set to it.
pub(super) async fn prepare_schema(
    opts: &PgConnectOptions,
    configured: Option<&str>,
    location: &str,
) -> Result<String, StorageError> {
    use sqlx::Connection as _;
    let err = |e| connect_err("postgres", location, e);
    let mut conn = sqlx::PgConnection::connect_with(opts).await.map_err(err)?;
    let schema = match configured {
        Some(s) => s.to_owned(),
        None => {
            let legacy: bool = sqlx::query_scalar(
                "SELECT to_regclass('public._sqlx_migrations') IS NOT NULL \
                 AND to_regclass('public.core_api_keys') IS NOT NULL",
            )
            .fetch_one(&mut conn)
            .await
            .map_err(err)?;
            if legacy { "public" } else { "mortar" }.to_owned()
        }
    };
    if schema.is_empty()
        || !schema
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        return Err(StorageError::Schema(format!(
            "{schema:?}: use a-z, 0-9 and _"
        )));
    }
    let exists = "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)";
    let found: bool = sqlx::query_scalar(exists)
        .bind(&schema)
        .fetch_one(&mut conn)
        .await
        .map_err(err)?;
    if !found {
        // Nodes starting together race here; the loser finds the schema made.
        // An identifier cannot be a parameter; `schema` is checked to be [a-z0-9_] above.
        let create = format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\"");
        let created = sqlx::query(sqlx::AssertSqlSafe(create))
            .execute(&mut conn)
            .await;
        if let Err(e) = created {
            let found: bool = sqlx::query_scalar(exists)
                .bind(&schema)
                .fetch_one(&mut conn)
                .await
                .map_err(err)?;
            if !found {
                return Err(err(e));
            }
        }
    }
    let _ = conn.close().await;
    Ok(schema)
}

pub(super) fn connect_err(
    backend: &'static str,
    location: &str,
    e: impl std::error::Error + Send + Sync + 'static,
) -> StorageError {
    StorageError::Connect {
        backend,
        location: location.to_owned(),
        source: Box::new(e),
    }
}
