//! Group commit for small plain enqueues on PostgreSQL: the enqueues that arrive while one
//! INSERT is in flight go together in the next.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use mortar_core::storage::group::Group;
use sqlx::PgPool;
use tokio::sync::oneshot;

use super::Job;
use super::insert::{INSERT_MANY_PG, bind_plain};

/// Enqueues of at most this many plain jobs go through [`InsertGroup`]; bigger batches are a
/// statement of their own already.
pub(super) const GROUP_MAX_JOBS: usize = 64;

type GroupReply = oneshot::Sender<Result<Vec<(Job, bool)>, String>>;

/// Group commit for small plain enqueues on PostgreSQL (most HTTP enqueues are one job). While
/// one INSERT is in flight, the enqueues that arrive queue up and go together in the next one
/// (`mortar_core::storage::group`): one statement and one WAL flush for all of them instead of
/// one each, so a busy server spends its database's time on jobs, not on commits. An idle one
/// writes at once, as before. The statement is atomic, so a failure fails every enqueue in it
/// (none is acknowledged).
#[derive(Debug, Default)]
pub(super) struct InsertGroup {
    queue: Arc<Group<(Vec<Job>, GroupReply)>>,
    /// Statements written (tests look at it).
    pub(super) statements: Arc<AtomicU64>,
}

impl InsertGroup {
    /// Inserts `jobs` (plain) with whatever else is queued; durable when this returns.
    pub(super) async fn insert(
        self: &Arc<Self>,
        pool: &PgPool,
        jobs: Vec<Job>,
    ) -> Result<Vec<(Job, bool)>, sqlx::Error> {
        let (reply, answer) = oneshot::channel();
        let (pool, statements) = (pool.clone(), self.statements.clone());
        self.queue.push((jobs, reply), move |batch| {
            write(pool.clone(), statements.clone(), batch)
        });
        match answer.await {
            Ok(Ok(out)) => Ok(out),
            Ok(Err(e)) => Err(sqlx::Error::Protocol(e)),
            Err(_) => Err(sqlx::Error::PoolClosed), // the drain task ended unexpectedly
        }
    }
}

/// One INSERT for a batch of enqueues; answers each.
async fn write(pool: PgPool, statements: Arc<AtomicU64>, batch: Vec<(Vec<Job>, GroupReply)>) {
    let (jobs, replies): (Vec<Vec<Job>>, Vec<GroupReply>) = batch.into_iter().unzip();
    let sizes: Vec<usize> = jobs.iter().map(Vec::len).collect();
    let all: Vec<Job> = jobs.into_iter().flatten().collect();
    statements.fetch_add(1, Ordering::Relaxed);
    let refs: Vec<&Job> = all.iter().collect();
    let written = bind_plain(sqlx::query(INSERT_MANY_PG), &refs)
        .execute(&pool)
        .await;
    drop(refs);
    match written {
        Ok(_) => {
            let mut out = all.into_iter().map(|j| (j, false));
            for (n, reply) in sizes.into_iter().zip(replies) {
                let _ = reply.send(Ok(out.by_ref().take(n).collect()));
            }
        }
        Err(e) => {
            let e = e.to_string();
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}
