//! The storage contract: the only thing a backend implements.

pub mod memory;
pub mod postgres;
pub mod redis;

use futures_util::future::BoxFuture;

use crate::engine::{Holder, Lock, Waiter};

/// A request for one permit.
#[derive(Debug, Clone, Copy)]
pub struct AcquireArgs<'a> {
    pub name: &'a str,
    pub owner: &'a str,
    pub ttl_ms: u64,
    pub permits: u32,
    /// The caller's place in line, when it waits.
    pub ticket: Option<&'a str>,
}

/// What an acquire attempt got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquired {
    Granted(Holder),
    Busy(LockInfo),
    PermitsMismatch { existing: u32 },
}

/// A lock's holders and waiters as of `now_ms` (the backend's clock).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockInfo {
    pub name: String,
    pub permits: u32,
    pub holders: Vec<Holder>,
    pub waiters: Vec<Waiter>,
    pub now_ms: u64,
}

impl LockInfo {
    /// The view of `lock` (as the engine holds it) at `now_ms`.
    pub fn of(name: &str, lock: &Lock, now_ms: u64) -> Self {
        Self {
            name: name.to_owned(),
            permits: lock.permits,
            holders: lock.holders.clone(),
            waiters: lock.waiters.iter().cloned().collect(),
            now_ms,
        }
    }
}

pub use mortar_core::storage::sql::StoreError;

/// Where leases, waiters and fencing counters live.
///
/// Contract (the conformance suite checks it on every backend):
/// * a grant happens only when `engine::Lock::may_grant` allows it, atomically per name, and
///   takes a fencing token greater than every token issued before for that name — across
///   restarts of the process and of the backend;
/// * `enqueue` puts a waiter at the back of the name's line until `wait_ms` from now, or until
///   the liveness lease of the node it came through lapses (cluster backends: `heartbeat`);
/// * `renew` / `release` act only on a live lease (`None` / `false` when it is gone);
/// * `force_release` ends live leases as `engine::Lock::evict` does, leaving the line and the
///   fencing counter as they are: afterwards the evicted leases are gone (renew `None`,
///   release `false`) and the next grant's token is larger than theirs;
/// * expired leases free their permits by themselves.
pub trait LockStore: Send + Sync + 'static {
    fn name(&self) -> &'static str;

    fn acquire<'a>(&'a self, args: AcquireArgs<'a>) -> BoxFuture<'a, Result<Acquired, StoreError>>;

    fn enqueue<'a>(
        &'a self,
        name: &'a str,
        waiter: Waiter,
        permits: u32,
        wait_ms: u64,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    fn dequeue<'a>(
        &'a self,
        name: &'a str,
        ticket: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    fn renew<'a>(
        &'a self,
        name: &'a str,
        lease_id: &'a str,
        ttl_ms: u64,
    ) -> BoxFuture<'a, Result<Option<Holder>, StoreError>>;

    fn release<'a>(
        &'a self,
        name: &'a str,
        lease_id: &'a str,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// Ends `name`'s live lease `lease_id`, or every live lease when `None` (an operator's
    /// force-release). Returns the leases it ended: empty when nothing live matched.
    fn force_release<'a>(
        &'a self,
        name: &'a str,
        lease_id: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Vec<Holder>, StoreError>>;

    fn inspect<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<LockInfo>, StoreError>>;

    /// Renews this node's liveness lease (the cluster backends; a no-op for one node). A
    /// waiter enqueued through a node whose lease has lapsed is out of the line: a node that
    /// dies takes its waiters with it within one lease instead of their whole `wait_ms`.
    fn heartbeat(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async { Ok(()) })
    }

    /// Locks in use whose names start with `prefix`, by name, after `after`, at most `limit`.
    fn list<'a>(
        &'a self,
        prefix: &'a str,
        after: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<LockInfo>, StoreError>>;
}

pub(crate) fn db_err(backend: &'static str) -> impl Fn(sqlx::Error) -> StoreError {
    StoreError::of(backend)
}
