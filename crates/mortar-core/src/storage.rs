//! Connections to the durable store and Redis, per-block migrations, readiness checks.
//!
//! Embedded mode (no `database_url`): SQLite in WAL mode at `<data_dir>/mortar.db`.
//! Cluster mode (`database_url = "postgres://…"`): PostgreSQL, usually with Redis beside it.
//! Blocks get the pools from here; they never open their own connections — except through
//! [`sqlite_writer`], the one writer thread per SQLite file that hot write paths batch into.

pub mod gate;
pub mod group;
pub mod notify;
mod open;
pub mod sql;
pub mod sqlite_writer;

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use open::{
    connect_err, open_sqlite, prepare_schema, probe, probe_postgres, probe_redis, with_others,
};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool};

/// What the storage layer needs from the configuration.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    pub data_dir: PathBuf,
    pub database_url: Option<String>,
    /// PostgreSQL schema for mortar's tables (`None`: `mortar`, or `public` for an install
    /// that already keeps its tables there).
    pub database_schema: Option<String>,
    pub redis_url: Option<String>,
    pub redis_prefix: String,
}

/// Embedded (SQLite, one node) or cluster (PostgreSQL, any number of nodes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Embedded,
    Cluster,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Embedded => "embedded",
            Mode::Cluster => "cluster",
        }
    }
}

/// The durable store every block writes acknowledged state to.
#[derive(Debug, Clone)]
pub enum Durable {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Redis, with the key prefix this deployment owns (`mortar:` by default).
#[derive(Clone)]
pub struct Redis {
    /// The node's shared connection (its driver task runs on the main runtime).
    pub conn: ConnectionManager,
    pub prefix: String,
    /// Open while Redis is known to be down: check it before a call, trip it on a
    /// connection-class failure ([`gate`]).
    pub gate: Arc<gate::Gate>,
    /// How to open one more connection, for [`Redis::conn`] on event-loop threads.
    opener: Option<Arc<Opener>>,
}

/// Tells Redis handles apart in the per-event-loop connection maps.
static REDIS_IDS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

struct Opener {
    id: usize,
    client: redis::Client,
    conf: ConnectionManagerConfig,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl Redis {
    /// A handle on an open connection, without per-thread connections (tests, tools).
    pub fn new(conn: ConnectionManager, prefix: String) -> Self {
        Self {
            conn,
            prefix,
            gate: gate::Gate::new("redis"),
            opener: None,
        }
    }

    /// The connection to use from this thread. On an HTTP event-loop thread (see
    /// [`event_loop_scope`]) that is the loop's own connection, opened on first use: its driver
    /// task runs on the loop, so a command and its reply never cross threads, and concurrent
    /// commands from the loop's requests are pipelined on it. Elsewhere, and until the loop's
    /// own is open, the shared one.
    pub fn conn(&self) -> ConnectionManager {
        self.opener
            .as_ref()
            .and_then(local::conn)
            .unwrap_or_else(|| self.conn.clone())
    }

    /// `<prefix><block>:<rest>`, the namespacing rule for every Redis key.
    pub fn key(&self, block: &str, rest: &str) -> String {
        format!("{}{block}:{rest}", self.prefix)
    }
}

/// All backends of this node.
#[derive(Debug, Clone)]
pub struct Storage {
    pub mode: Mode,
    pub durable: Durable,
    pub redis: Option<Redis>,
    /// The node's shutdown signal (every block gets the storage, so every block can watch it).
    pub stopping: crate::shutdown::Stopping,
    /// Open while the durable store is known to be down (PostgreSQL; a SQLite file's never
    /// opens): blocks that need it answer 503 at once ([`gate`]).
    pub durable_gate: Arc<gate::Gate>,
    /// The node's watched topics and typed event bus, connected to the other nodes in
    /// cluster mode ([`crate::watch`]).
    pub hub: Arc<crate::watch::Hub>,
    backends: Vec<Backend>,
}

/// A backend as shown in logs and `mortar status` (URLs without passwords).
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Backend {
    /// `sqlite`, `postgres` or `redis`.
    pub name: String,
    /// Where it is (path or URL with the password removed).
    pub location: String,
}

/// The result of probing one backend.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct BackendHealth {
    pub name: String,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A block's migrations, one set per SQL dialect (embed them with `sqlx::migrate!`).
#[derive(Debug)]
pub struct Migrations {
    pub block: &'static str,
    pub sqlite: Migrator,
    pub postgres: Migrator,
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("{backend} at {location} is unreachable: {source}")]
    Connect {
        backend: &'static str,
        location: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("unsupported database_url scheme in {0:?}: use postgres://… or sqlite://…")]
    Scheme(String),
    #[error("key `database.schema`: {0}")]
    Schema(String),
    #[error("migrations of {block} failed: {source}")]
    Migrate {
        block: &'static str,
        source: sqlx::migrate::MigrateError,
    },
}

impl StorageError {
    /// Whether the database did not answer (rather than refusing us, or a bad URL): a node may
    /// start without it and wait, since waiting can cure it.
    pub fn is_unreachable(&self) -> bool {
        match self {
            Self::Connect { source, .. } => source
                .downcast_ref::<sqlx::Error>()
                .is_some_and(gate::is_connection_error),
            Self::Migrate {
                source: sqlx::migrate::MigrateError::Execute(e),
                ..
            } => gate::is_connection_error(e),
            _ => false,
        }
    }
}

/// How long a readiness probe may take per backend.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The core's own tables (API keys).
pub fn core_migrations() -> Migrations {
    Migrations {
        block: "core",
        sqlite: sqlx::migrate!("migrations/sqlite"),
        postgres: sqlx::migrate!("migrations/postgres"),
    }
}

impl Storage {
    /// Opens every configured backend, failing fast with the one that is unreachable.
    pub async fn connect(cfg: &StorageConfig) -> Result<Self, StorageError> {
        let (durable, durable_backend) = match cfg.database_url.as_deref() {
            None => {
                std::fs::create_dir_all(&cfg.data_dir).map_err(|source| StorageError::DataDir {
                    path: cfg.data_dir.display().to_string(),
                    source,
                })?;
                let path = cfg.data_dir.join("mortar.db");
                let opts = SqliteConnectOptions::new()
                    .filename(&path)
                    .create_if_missing(true);
                (
                    open_sqlite(opts, &path.display().to_string()).await?,
                    path.display().to_string(),
                )
            }
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                let location = redact(url);
                let opts = PgConnectOptions::from_str(url)
                    .map_err(|e| connect_err("postgres", &location, e))?;
                let schema =
                    prepare_schema(&opts, cfg.database_schema.as_deref(), &location).await?;
                let opts = opts.options([("search_path", format!("\"{schema}\""))]);
                let location = format!("{location} (schema {schema})");
                let pool = PgPoolOptions::new()
                    .max_connections(16)
                    .acquire_timeout(CONNECT_TIMEOUT)
                    .connect_with(opts)
                    .await
                    .map_err(|e| connect_err("postgres", &location, e))?;
                (Durable::Postgres(pool), location)
            }
            Some(url) if url.starts_with("sqlite:") => {
                let opts = SqliteConnectOptions::from_str(url)
                    .map_err(|e| connect_err("sqlite", url, e))?
                    .create_if_missing(true);
                (open_sqlite(opts, url).await?, url.to_owned())
            }
            Some(url) => return Err(StorageError::Scheme(redact(url))),
        };
        let mut backends = vec![Backend {
            name: durable.name().into(),
            location: durable_backend,
        }];
        let redis = match cfg.redis_url.as_deref() {
            None => None,
            Some(url) => {
                let location = redact(url);
                let client =
                    redis::Client::open(url).map_err(|e| connect_err("redis", &location, e))?;
                let conf = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(PROBE_TIMEOUT))
                    .set_number_of_retries(2);
                let gate = gate::Gate::new("redis");
                let conn = match ConnectionManager::new_with_config(client.clone(), conf.clone())
                    .await
                {
                    Ok(conn) => conn,
                    // Unreachable now: start degraded (the rate limiter's failure modes and the
                    // cache's near-cache exist for this), with the gate open; the manager
                    // connects on first use once the probe sees Redis back.
                    Err(e) if gate::is_redis_connection_error(&e) => {
                        tracing::warn!(redis = %location, error = %e, "redis is unreachable at start: starting degraded, reconnecting in the background");
                        gate.trip(&e.to_string());
                        ConnectionManager::new_lazy_with_config(client.clone(), conf.clone())
                            .map_err(|e| connect_err("redis", &location, e))?
                    }
                    Err(e) => return Err(connect_err("redis", &location, e)),
                };
                backends.push(Backend {
                    name: "redis".into(),
                    location,
                });
                probe_redis(&gate, client.clone());
                Some(Redis {
                    conn,
                    prefix: cfg.redis_prefix.clone(),
                    gate,
                    opener: Some(Arc::new(Opener {
                        id: REDIS_IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                        client,
                        conf,
                    })),
                })
            }
        };
        let mode = match durable {
            Durable::Postgres(_) => Mode::Cluster,
            Durable::Sqlite(_) => Mode::Embedded,
        };
        let durable_gate = gate::Gate::new(durable.name());
        if let Durable::Postgres(pool) = &durable {
            probe_postgres(&durable_gate, pool);
        }
        let stopping = crate::shutdown::Stopping::default();
        let hub = crate::watch::Hub::new(crate::watch::KEEP, stopping.clone());
        match (&redis, &durable) {
            (Some(r), _) => {
                if let Some(opener) = &r.opener {
                    hub.connect(crate::watch::remote::Wire::Redis {
                        client: opener.client.clone(),
                        conn: r.conn.clone(),
                        channel: format!("{}watch", r.prefix),
                    });
                }
            }
            (None, Durable::Postgres(pool)) => hub.connect(crate::watch::remote::Wire::Postgres(
                notify::Channel::new(pool.clone(), "mortar_watch", "watch"),
            )),
            (None, Durable::Sqlite(_)) => {}
        }
        Ok(Self {
            mode,
            durable,
            redis,
            stopping,
            durable_gate,
            hub,
            backends,
        })
    }

    /// Runs a block's migrations for this store's dialect. Safe when several nodes run it at
    /// the same moment: PostgreSQL migrations hold an advisory lock; SQLite has one writer.
    /// Blocks share one migrations table, so versions must be unique across blocks
    /// (timestamps: `YYYYMMDDNNNNNN_<block>_<what>.sql`).
    pub async fn migrate(&self, migrations: &Migrations) -> Result<(), StorageError> {
        let wrap = |source| StorageError::Migrate {
            block: migrations.block,
            source,
        };
        match &self.durable {
            Durable::Sqlite(pool) => with_others(&migrations.sqlite)
                .run(pool)
                .await
                .map_err(wrap),
            Durable::Postgres(pool) => with_others(&migrations.postgres)
                .run(pool)
                .await
                .map_err(wrap),
        }
    }

    /// The backends in use, for logs and status.
    pub fn backends(&self) -> &[Backend] {
        &self.backends
    }

    /// Probes every backend (bounded by a timeout each).
    pub async fn health(&self) -> Vec<BackendHealth> {
        let durable = probe(self.durable.name(), async {
            match &self.durable {
                Durable::Sqlite(p) => sqlx::query("SELECT 1").execute(p).await.map(drop),
                Durable::Postgres(p) => sqlx::query("SELECT 1").execute(p).await.map(drop),
            }
        });
        let mut out = vec![durable.await];
        if let Some(redis) = &self.redis {
            let mut conn = redis.conn.clone();
            out.push(
                probe("redis", async move {
                    redis::cmd("PING")
                        .query_async::<String>(&mut conn)
                        .await
                        .map(drop)
                })
                .await,
            );
        }
        out
    }

    /// Closes pools so pending writes are flushed (SQLite checkpoints its WAL).
    pub async fn close(&self) {
        match &self.durable {
            Durable::Sqlite(p) => p.close().await,
            Durable::Postgres(p) => p.close().await,
        }
    }
}

impl Durable {
    /// The dependency's one name, in `/readyz`, `/v1/status` and every 503 problem's
    /// `dependency`: `sqlite` or `postgres` (and `redis` for Redis).
    pub fn name(&self) -> &'static str {
        match self {
            Durable::Sqlite(_) => "sqlite",
            Durable::Postgres(_) => "postgres",
        }
    }

    /// Logs a failed call of `block` on this store and returns the dependency's name for the
    /// caller's 503 (the error itself stays in the log: it can carry internals).
    pub fn failed(&self, block: &'static str, e: &sqlx::Error) -> &'static str {
        let dependency = self.name();
        if matches!(e, sqlx::Error::PoolClosed) {
            // Only after `Storage::close`, at shutdown: a background task's last call.
            tracing::debug!(block, dependency, "durable store closed (shutting down)");
        } else {
            tracing::error!(error = %e, block, dependency, "durable store call failed");
        }
        dependency
    }
}

/// Removes the password from a URL (`postgres://u:secret@h/db` → `postgres://u:***@h/db`).
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((userinfo, host)) = rest.split_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

/// Runs `$body` with `$pool` bound to whichever pool `$durable` holds. Queries written with
/// `$1`-style placeholders and portable SQL run unchanged on SQLite and PostgreSQL.
#[macro_export]
macro_rules! with_pool {
    ($durable:expr, $pool:ident => $body:expr) => {
        match $durable {
            $crate::storage::Durable::Sqlite($pool) => $body,
            $crate::storage::Durable::Postgres($pool) => $body,
        }
    };
}

/// A test service's URL from `var`, or `None` after printing that the test skipped. With
/// `CI=true` a missing variable panics: CI never skips silently. (The kernel's own tests; the
/// blocks' use `mortar-testkit`.)
#[cfg(test)]
pub(crate) fn test_service_url(var: &str) -> Option<String> {
    let url = std::env::var(var).ok().filter(|s| !s.is_empty());
    if url.is_none() {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
        assert!(!ci, "{var} must be set when CI=true");
        eprintln!("SKIPPED: set {var} to run it");
    }
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn client_id(mut conn: ConnectionManager) -> i64 {
        redis::cmd("CLIENT")
            .arg("ID")
            .query_async(&mut conn)
            .await
            .unwrap()
    }

    /// An event-loop thread gets a Redis connection of its own (opened on first use, the shared
    /// one serving meanwhile) and closes it when its scope ends; other threads use the shared one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn event_loops_get_their_own_redis_connection() {
        let Some(url) = test_service_url("MORTAR_TEST_REDIS_URL") else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::connect(&StorageConfig {
            data_dir: dir.path().into(),
            database_url: None,
            database_schema: None,
            redis_url: Some(url),
            redis_prefix: "mortar-test:".into(),
        })
        .await
        .unwrap();
        let redis = storage.redis.clone().unwrap();
        let shared = client_id(redis.conn.clone()).await;
        assert_eq!(
            client_id(redis.conn()).await,
            shared,
            "off a loop: the shared one"
        );

        let on_loop = redis.clone();
        // The shared connection's driver runs on this (main) runtime, as in the server.
        let local = tokio::task::spawn_blocking(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let scope = event_loop_scope();
                assert_eq!(
                    client_id(on_loop.conn()).await,
                    shared,
                    "until its own is open"
                );
                let deadline = std::time::Instant::now() + Duration::from_secs(5);
                let local = loop {
                    let id = client_id(on_loop.conn()).await;
                    if id != shared {
                        break id;
                    }
                    assert!(
                        std::time::Instant::now() < deadline,
                        "no own connection in 5 s"
                    );
                    tokio::time::sleep(Duration::from_millis(5)).await;
                };
                assert_eq!(client_id(on_loop.conn()).await, local, "the same one after");
                drop(scope);
                assert_eq!(client_id(on_loop.conn()).await, shared, "the scope is over");
                local
            })
        })
        .await
        .unwrap();
        let clients: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query_async(&mut redis.conn.clone())
            .await
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut clients = clients;
        while clients.contains(&format!("id={local} ")) {
            assert!(
                std::time::Instant::now() < deadline,
                "the loop's connection stays open"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
            clients = redis::cmd("CLIENT")
                .arg("LIST")
                .query_async(&mut redis.conn.clone())
                .await
                .unwrap();
        }
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact("postgres://u:pw@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(redact("postgres://root@h/db"), "postgres://root@h/db");
    }

    #[tokio::test]
    async fn embedded_creates_data_dir_in_wal_mode_and_migrates_twice() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = StorageConfig {
            data_dir: dir.path().join("nested/data"),
            database_url: None,
            database_schema: None,
            redis_url: None,
            redis_prefix: "mortar:".into(),
        };
        let storage = Storage::connect(&cfg).await.unwrap();
        assert_eq!(storage.mode, Mode::Embedded);
        storage.migrate(&core_migrations()).await.unwrap();
        storage.migrate(&core_migrations()).await.unwrap();
        let Durable::Sqlite(pool) = &storage.durable else {
            panic!("sqlite expected")
        };
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(pool)
            .await
            .unwrap();
        assert_eq!(mode, "wal");
        assert!(storage.health().await.iter().all(|h| h.ok));
        storage.close().await;
        assert!(dir.path().join("nested/data/mortar.db").exists());
    }

    #[tokio::test]
    async fn bad_scheme_is_named() {
        let cfg = StorageConfig {
            data_dir: PathBuf::from("."),
            database_url: Some("mysql://u:pw@h/db".into()),
            database_schema: None,
            redis_url: None,
            redis_prefix: "mortar:".into(),
        };
        let err = Storage::connect(&cfg).await.unwrap_err().to_string();
        assert!(err.contains("mysql://u:***@h/db"), "{err}");
    }
}

/// Marks the current thread as an HTTP event loop for as long as the guard lives: Redis
/// handles then open a connection of their own for it ([`Redis::conn`]). The guard closes
/// them, so it must drop before the loop's runtime does.
pub fn event_loop_scope() -> impl Drop {
    local::enter()
}

/// Per-event-loop Redis connections.
mod local {
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::time::{Duration, Instant};

    use redis::aio::ConnectionManager;

    use super::Opener;

    /// How long a failed open waits before the next try (the shared connection serves meanwhile).
    const RETRY_AFTER: Duration = Duration::from_secs(1);

    enum Slot {
        Opening,
        Open(ConnectionManager),
        Failed(Instant),
    }

    thread_local! {
        /// `None` off event-loop threads; else each Redis handle's connection by its id.
        static CONNS: RefCell<Option<HashMap<usize, Slot>>> = const { RefCell::new(None) };
    }

    pub(super) struct Scope;

    impl Drop for Scope {
        fn drop(&mut self) {
            let conns = CONNS.with_borrow_mut(Option::take);
            drop(conns);
        }
    }

    pub(super) fn enter() -> Scope {
        CONNS.with_borrow_mut(|c| *c = Some(HashMap::new()));
        Scope
    }

    pub(super) fn conn(opener: &std::sync::Arc<Opener>) -> Option<ConnectionManager> {
        CONNS.with_borrow_mut(|conns| {
            let conns = conns.as_mut()?;
            match conns.get(&opener.id) {
                Some(Slot::Open(c)) => return Some(c.clone()),
                Some(Slot::Opening) => return None,
                Some(Slot::Failed(at)) if at.elapsed() < RETRY_AFTER => return None,
                Some(Slot::Failed(_)) | None => {}
            }
            conns.insert(opener.id, Slot::Opening);
            let opener = opener.clone();
            // Spawned on the loop's own (single-threaded) runtime, so it runs on this thread
            // and finds this thread's map.
            tokio::spawn(async move {
                let opened = ConnectionManager::new_with_config(opener.client.clone(), opener.conf.clone()).await;
                CONNS.with_borrow_mut(|conns| {
                    if let Some(conns) = conns.as_mut() {
                        let slot = match opened {
                            Ok(c) => Slot::Open(c),
                            Err(e) => {
                                tracing::debug!(error = %e, "redis: the event loop's own connection did not open; the shared one serves");
                                Slot::Failed(Instant::now())
                            }
                        };
                        conns.insert(opener.id, slot);
                    }
                });
            });
            None
        })
    }
}
