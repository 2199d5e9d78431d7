//! Group commit for small plain enqueues on PostgreSQL: the enqueues that arrive while one
//! INSERT is in flight go together in the next.

use sqlx::PgPool;
use std::sync::Arc;
use tokio::sync::oneshot;

use super::Job;
use super::insert::{INSERT_MANY_PG, bind_plain};

/// Enqueues of at most this many plain jobs go through [`InsertGroup`]; bigger batches are a
/// statement of their own already.
pub(super) const GROUP_MAX_JOBS: usize = 64;

type GroupReply = oneshot::Sender<Result<Vec<(Job, bool)>, String>>;

/// Group commit for small plain enqueues on PostgreSQL (most HTTP enqueues are one job). While
/// one INSERT is in flight, the enqueues that arrive queue up and go together in the next one:
/// one statement and one WAL flush for all of them instead of one each, so a busy server spends
/// its database's time on jobs, not on commits. An idle one writes at once, as before. The
/// statement is atomic, so a failure fails every enqueue in it (none is acknowledged).
#[derive(Default)]
pub(super) struct InsertGroup {
    state: std::sync::Mutex<GroupState>,
    /// Statements written (tests look at it).
    pub(super) statements: std::sync::atomic::AtomicU64,
}

#[derive(Default)]
struct GroupState {
    /// A drain task is writing (it takes whatever is pending when its INSERT returns).
    busy: bool,
    pending: Vec<(Vec<Job>, GroupReply)>,
}

impl std::fmt::Debug for InsertGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InsertGroup").finish_non_exhaustive()
    }
}

impl InsertGroup {
    fn lock(&self) -> std::sync::MutexGuard<'_, GroupState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Inserts `jobs` (plain) with whatever else is queued; durable when this returns.
    pub(super) async fn insert(
        self: &Arc<Self>,
        pool: &PgPool,
        jobs: Vec<Job>,
    ) -> Result<Vec<(Job, bool)>, sqlx::Error> {
        let (reply, answer) = oneshot::channel();
        let lead = {
            let mut s = self.lock();
            s.pending.push((jobs, reply));
            !std::mem::replace(&mut s.busy, true)
        };
        if lead {
            // A task of its own: the enqueues it writes for are answered even if this request
            // is dropped.
            let (group, pool) = (self.clone(), pool.clone());
            tokio::spawn(async move { group.drain(&pool).await });
        }
        match answer.await {
            Ok(Ok(out)) => Ok(out),
            Ok(Err(e)) => Err(sqlx::Error::Protocol(e)),
            Err(_) => Err(sqlx::Error::PoolClosed), // the drain task ended unexpectedly
        }
    }

    async fn drain(&self, pool: &PgPool) {
        /// Lets the next enqueue lead again if this task ends by a panic (or is cancelled at
        /// runtime shutdown); the replies it held are dropped, so their enqueues fail.
        struct Lead<'a>(&'a InsertGroup, bool);
        impl Drop for Lead<'_> {
            fn drop(&mut self) {
                if !self.1 {
                    let mut s = self.0.lock();
                    s.busy = false;
                    s.pending.clear();
                }
            }
        }
        let mut lead = Lead(self, false);
        loop {
            let batch = {
                let mut s = self.lock();
                if s.pending.is_empty() {
                    s.busy = false;
                    lead.1 = true;
                    return;
                }
                std::mem::take(&mut s.pending)
            };
            let (jobs, replies): (Vec<Vec<Job>>, Vec<GroupReply>) = batch.into_iter().unzip();
            let sizes: Vec<usize> = jobs.iter().map(Vec::len).collect();
            let all: Vec<Job> = jobs.into_iter().flatten().collect();
            self.statements
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let refs: Vec<&Job> = all.iter().collect();
            let written = bind_plain(sqlx::query(INSERT_MANY_PG), &refs)
                .execute(pool)
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
    }
}
