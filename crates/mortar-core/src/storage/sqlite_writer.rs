//! SQLite's one writer, as a thread: group commit for the embedded store's hot write paths.
//!
//! sqlx runs each SQLite connection on a worker thread and hands every statement (and every
//! row it returns) across a channel, so a write of N rows costs N thread hand-offs — on a
//! small machine most of the CPU goes to waking threads, not to SQLite. A [`SqliteWriter`]
//! owns one `rusqlite` connection on its own thread instead. A caller sends a closure that
//! does a whole operation (a batch insert, a lease, a batch completion) synchronously on that
//! connection: one hand-off per operation. Operations that queue up while one transaction runs
//! are committed together in the next (group commit).
//!
//! Guarantees:
//! * An operation's result is delivered only after the transaction holding it committed; if
//!   the commit fails, every operation of that transaction gets the error.
//! * Operations are atomic and isolated from each other: each runs under its own savepoint, and
//!   one that returns an error is rolled back without touching the others in the group.
//! * Operations run one at a time, in the order they were sent.
//! * One writer per database file per process ([`SqliteWriter::for_pool`] shares it), so the
//!   blocks that use it never contend for SQLite's write lock among themselves. Writes through
//!   sqlx still work; SQLite serializes them with this thread's by its busy timeout.
//!
//! Limits: a closure must not block on anything but SQLite (it holds the writer). A file
//! database only (an in-memory one is private to its connection).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, Weak, mpsc};

use rusqlite::Connection;
use sqlx::SqlitePool;

/// What a finished operation does once its transaction's outcome is known.
type Deliver = Box<dyn FnOnce(Result<(), &rusqlite::Error>) + Send>;

/// An operation waiting for the writer.
trait Operation: Send {
    /// Runs on the connection: whether it succeeded, and its delivery.
    fn run(self: Box<Self>, conn: &Connection) -> (bool, Deliver);
    /// Never runs: tells the caller why.
    fn fail(self: Box<Self>, e: &rusqlite::Error);
}

type Op = Box<dyn Operation>;

struct Pending<T, F> {
    f: F,
    done: tokio::sync::oneshot::Sender<Result<T, sqlx::Error>>,
}

impl<T, F> Operation for Pending<T, F>
where
    T: Send + 'static,
    F: FnOnce(&Connection) -> rusqlite::Result<T> + Send,
{
    fn run(self: Box<Self>, conn: &Connection) -> (bool, Deliver) {
        let Pending { f, done } = *self;
        let r = f(conn);
        let ok = r.is_ok();
        let deliver: Deliver = Box::new(move |commit| {
            let out = match commit {
                Ok(()) => r.map_err(wrap),
                Err(e) => Err(sqlx::Error::Protocol(format!("sqlite commit: {e}"))),
            };
            let _ = done.send(out);
        });
        (ok, deliver)
    }

    fn fail(self: Box<Self>, e: &rusqlite::Error) {
        let _ = self
            .done
            .send(Err(sqlx::Error::Protocol(format!("sqlite: {e}"))));
    }
}

/// Operations committed in one transaction at most.
const MAX_GROUP: usize = 256;

/// A handle on the writer thread of one SQLite file (cheap to clone).
#[derive(Clone)]
pub struct SqliteWriter {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    tx: Mutex<mpsc::Sender<Op>>,
}

impl std::fmt::Debug for SqliteWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteWriter")
            .field("path", &self.inner.path)
            .finish()
    }
}

fn writers() -> &'static Mutex<HashMap<PathBuf, Weak<Inner>>> {
    static WRITERS: OnceLock<Mutex<HashMap<PathBuf, Weak<Inner>>>> = OnceLock::new();
    WRITERS.get_or_init(Mutex::default)
}

impl SqliteWriter {
    /// The writer of the file `pool` opens, started on first use and shared while any handle
    /// lives.
    pub fn for_pool(pool: &SqlitePool) -> Self {
        let path = pool.connect_options().get_filename().to_path_buf();
        let mut all = writers()
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        all.retain(|_, w| w.strong_count() > 0);
        if let Some(inner) = all.get(&path).and_then(Weak::upgrade) {
            return Self { inner };
        }
        let writer = Self::open(&path);
        all.insert(path, Arc::downgrade(&writer.inner));
        writer
    }

    /// Starts a writer thread on `path`. If the file cannot be opened (or the thread cannot
    /// start), every operation gets that error.
    pub fn open(path: &Path) -> Self {
        let (tx, rx) = mpsc::channel::<Op>();
        let file = path.to_path_buf();
        let started = std::thread::Builder::new()
            .name("mortar-sqlite-writer".into())
            .spawn(move || match connect(&file) {
                Ok(conn) => run(&conn, &rx),
                Err(e) => {
                    tracing::error!(error = %e, path = %file.display(), "sqlite writer: cannot open");
                    while let Ok(op) = rx.recv() {
                        op.fail(&e);
                    }
                }
            });
        if let Err(e) = started {
            tracing::error!(error = %e, "sqlite writer: cannot start its thread");
        }
        Self {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                tx: Mutex::new(tx),
            }),
        }
    }

    /// Runs `f` on the writer's connection inside a transaction (under its own savepoint) and
    /// returns its result once that transaction committed. An error from `f` rolls back what
    /// `f` wrote and nothing else.
    pub async fn write<T, F>(&self, f: F) -> Result<T, sqlx::Error>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let (done, result) = tokio::sync::oneshot::channel();
        let op: Op = Box::new(Pending { f, done });
        let sent = self
            .inner
            .tx
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .send(op);
        if sent.is_err() {
            return Err(closed());
        }
        result.await.unwrap_or_else(|_| Err(closed()))
    }
}

fn closed() -> sqlx::Error {
    sqlx::Error::Protocol(
        "the SQLite writer dropped the operation (it panicked, or the writer stopped)".into(),
    )
}

/// A rusqlite error as the sqlx error every store returns.
pub fn wrap(e: rusqlite::Error) -> sqlx::Error {
    sqlx::Error::AnyDriverError(Box::new(e))
}

/// `sql` with PostgreSQL-style `$N` parameters rewritten to SQLite's `?N` (same index), so one
/// statement text serves sqlx on both dialects and rusqlite. (SQLite reads `$N` as a *name*,
/// numbered by first appearance, not as index N.)
pub fn positional(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('?');
        } else {
            out.push(c);
        }
    }
    out
}

fn connect(path: &Path) -> Result<Connection, rusqlite::Error> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // Every operation runs under a savepoint; its statement journal stays in memory.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.set_prepared_statement_cache_capacity(128);
    Ok(conn)
}

fn run(conn: &Connection, rx: &mpsc::Receiver<Op>) {
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(op) => group.push(op),
                Err(_) => break,
            }
        }
        if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
            tracing::error!(error = %e, "sqlite writer: cannot begin");
            for op in group {
                op.fail(&e);
            }
            continue;
        }
        let mut deliveries = Vec::with_capacity(group.len());
        for op in group {
            deliveries.extend(run_one(conn, op));
        }
        let commit = conn.execute_batch("COMMIT");
        if let Err(e) = &commit {
            tracing::error!(error = %e, "sqlite writer: commit failed");
            let _ = conn.execute_batch("ROLLBACK");
        }
        for deliver in deliveries {
            deliver(commit.as_ref().map(|&()| ()));
        }
    }
}

/// Runs one operation under a savepoint, rolled back if it failed.
fn run_one(conn: &Connection, op: Op) -> Option<Deliver> {
    if let Err(e) = conn.execute_batch("SAVEPOINT op") {
        op.fail(&e);
        return None;
    }
    // A panicking operation is rolled back like a failed one; its caller sees its channel
    // close. The writer (every block's) goes on.
    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| op.run(conn)));
    let (ok, deliver) = match ran {
        Ok(r) => (r.0, Some(r.1)),
        Err(_) => {
            tracing::error!("sqlite writer: an operation panicked; rolled back");
            (false, None)
        }
    };
    if !ok && let Err(e) = conn.execute_batch("ROLLBACK TO op") {
        tracing::error!(error = %e, "sqlite writer: rollback to savepoint failed");
    }
    let _ = conn.execute_batch("RELEASE op");
    deliver
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer() -> (tempfile::TempDir, SqliteWriter) {
        let dir = tempfile::tempdir().unwrap();
        let w = SqliteWriter::open(&dir.path().join("w.db"));
        (dir, w)
    }

    #[tokio::test]
    async fn commits_and_isolates_failures() {
        let (_dir, w) = writer();
        w.write(|c| c.execute_batch("CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER)"))
            .await
            .unwrap();
        // Many operations at once: they group, and the failing one takes only itself back.
        let mut tasks = Vec::new();
        for i in 0..50 {
            let w = w.clone();
            tasks.push(tokio::spawn(async move {
                w.write(move |c| {
                    c.execute("INSERT INTO t VALUES (?1, ?2)", (format!("k{i}"), i))?;
                    if i == 7 {
                        // Wrote, then failed: its row must not stay.
                        c.execute("INSERT INTO t VALUES ('k0', 0)", ())?;
                    }
                    Ok(i)
                })
                .await
            }));
        }
        let mut failed = 0;
        for t in tasks {
            if t.await.unwrap().is_err() {
                failed += 1;
            }
        }
        assert_eq!(failed, 1);
        let n: i64 = w
            .write(|c| c.query_row("SELECT count(*) FROM t", (), |r| r.get(0)))
            .await
            .unwrap();
        assert_eq!(n, 49);
        let k7: i64 = w
            .write(|c| c.query_row("SELECT count(*) FROM t WHERE k = 'k7'", (), |r| r.get(0)))
            .await
            .unwrap();
        assert_eq!(k7, 0);
    }

    #[tokio::test]
    async fn a_panicking_operation_is_rolled_back_and_the_writer_goes_on() {
        let (_dir, w) = writer();
        w.write(|c| c.execute_batch("CREATE TABLE t (k TEXT PRIMARY KEY)"))
            .await
            .unwrap();
        let failed = w
            .write(|c| -> rusqlite::Result<()> {
                c.execute("INSERT INTO t VALUES ('a')", ())?;
                panic!("boom");
            })
            .await;
        assert!(failed.is_err());
        let n: i64 = w
            .write(|c| c.query_row("SELECT count(*) FROM t", (), |r| r.get(0)))
            .await
            .unwrap();
        assert_eq!(n, 0);
    }

    #[test]
    fn positional_parameters() {
        assert_eq!(
            positional("UPDATE t SET a = $3 WHERE id = $1 AND j->>'$.x' = $12"),
            "UPDATE t SET a = ?3 WHERE id = ?1 AND j->>'$.x' = ?12"
        );
    }
}
