//! Embedded backend: leases and waiters in memory, the fencing counter in SQLite.
//!
//! Tokens are reserved from SQLite in blocks (`BLOCK`): the highest reserved token is written
//! before any token of the block is issued, so after a restart every new token is above every
//! token issued before. A restart loses leases and waiters (this is one process): holders find
//! out on their next renew (410).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use futures_util::future::{BoxFuture, FutureExt};
use mortar_core::clock::Clock;
use mortar_core::storage::Durable;
use mortar_core::with_pool;
use tokio::sync::Mutex;

use super::{AcquireArgs, Acquired, LockInfo, LockStore, StoreError, db_err};
use crate::engine::{Holder, Lock, Refusal, Waiter};

/// Tokens reserved per durable write.
const BLOCK: u64 = 1024;

#[derive(Default)]
struct State {
    locks: BTreeMap<String, Lock>,
    /// name → (next token to issue, highest token reserved durably)
    tokens: HashMap<String, (u64, u64)>,
}

pub struct MemoryStore {
    state: Mutex<State>,
    durable: Durable,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore").finish_non_exhaustive()
    }
}

impl MemoryStore {
    /// `durable` holds the fencing counters (SQLite in embedded mode; any durable store works).
    pub fn new(durable: Durable, clock: Arc<dyn Clock>) -> Self {
        Self {
            state: Mutex::default(),
            durable,
            clock,
        }
    }

    async fn next_token(&self, state: &mut State, name: &str) -> Result<u64, StoreError> {
        let entry = match state.tokens.get(name) {
            Some(e) => *e,
            None => {
                let high: Option<i64> = with_pool!(&self.durable, pool => sqlx::query_scalar("SELECT token FROM lock_fencing WHERE name = $1")
                    .bind(name)
                    .fetch_optional(pool)
                    .await
                    .map_err(db_err("sqlite"))?);
                let high = high.unwrap_or(0) as u64;
                (high + 1, high)
            }
        };
        let (next, mut high) = entry;
        if next > high {
            high = next + BLOCK - 1;
            let sql = "INSERT INTO lock_fencing (name, token) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET token = excluded.token";
            with_pool!(&self.durable, pool => sqlx::query(sql)
                .bind(name)
                .bind(high as i64)
                .execute(pool)
                .await
                .map(drop)
                .map_err(db_err("sqlite"))?);
        }
        state.tokens.insert(name.to_owned(), (next + 1, high));
        Ok(next)
    }
}

/// Drops expired leases and waiters, counting the leases that ran out.
fn purge(lock: &mut Lock, now_ms: u64) {
    let expired = lock.purge(now_ms).len();
    if expired > 0 {
        metrics::counter!(crate::service::EXPIRIES).increment(expired as u64);
        metrics::gauge!(crate::service::HOLDERS).decrement(expired as f64);
    }
}

impl LockStore for MemoryStore {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn acquire<'a>(&'a self, a: AcquireArgs<'a>) -> BoxFuture<'a, Result<Acquired, StoreError>> {
        async move {
            let mut state = self.state.lock().await;
            let now = self.clock.now_ms();
            let lock = state.locks.entry(a.name.to_owned()).or_default();
            purge(lock, now);
            match lock.may_grant(now, a.permits, a.ticket) {
                Err(Refusal::Busy) => return Ok(Acquired::Busy(LockInfo::of(a.name, lock, now))),
                Err(Refusal::PermitsMismatch { existing }) => {
                    return Ok(Acquired::PermitsMismatch { existing });
                }
                Ok(()) => {}
            }
            let token = self.next_token(&mut state, a.name).await?;
            let holder = Holder {
                lease_id: mortar_core::ids::new_id(),
                owner: a.owner.to_owned(),
                token,
                acquired_at_ms: now,
                expires_at_ms: now + a.ttl_ms,
            };
            state
                .locks
                .get_mut(a.name)
                .expect("entry made above")
                .grant(holder.clone(), a.ticket);
            metrics::gauge!(crate::service::HOLDERS).increment(1.0);
            Ok(Acquired::Granted(holder))
        }
        .boxed()
    }

    fn enqueue<'a>(
        &'a self,
        name: &'a str,
        waiter: Waiter,
        permits: u32,
        wait_ms: u64,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            let mut state = self.state.lock().await;
            let now = self.clock.now_ms();
            let lock = state.locks.entry(name.to_owned()).or_default();
            purge(lock, now);
            if lock.is_idle() {
                lock.permits = permits;
            }
            lock.enqueue(Waiter {
                until_ms: now + wait_ms,
                ..waiter
            });
            Ok(())
        }
        .boxed()
    }

    fn dequeue<'a>(
        &'a self,
        name: &'a str,
        ticket: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            let mut state = self.state.lock().await;
            if let Some(lock) = state.locks.get_mut(name) {
                lock.dequeue(ticket);
                if lock.is_idle() {
                    state.locks.remove(name);
                }
            }
            Ok(())
        }
        .boxed()
    }

    fn renew<'a>(
        &'a self,
        name: &'a str,
        lease_id: &'a str,
        ttl_ms: u64,
    ) -> BoxFuture<'a, Result<Option<Holder>, StoreError>> {
        async move {
            let mut state = self.state.lock().await;
            let now = self.clock.now_ms();
            let Some(lock) = state.locks.get_mut(name) else {
                return Ok(None);
            };
            purge(lock, now);
            Ok(lock.renew(now, lease_id, ttl_ms).cloned())
        }
        .boxed()
    }

    fn release<'a>(
        &'a self,
        name: &'a str,
        lease_id: &'a str,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        async move {
            let mut state = self.state.lock().await;
            let now = self.clock.now_ms();
            let Some(lock) = state.locks.get_mut(name) else {
                return Ok(false);
            };
            purge(lock, now);
            let released = lock.release(now, lease_id);
            if released {
                metrics::gauge!(crate::service::HOLDERS).decrement(1.0);
            }
            if lock.is_idle() {
                state.locks.remove(name);
            }
            Ok(released)
        }
        .boxed()
    }

    fn force_release<'a>(
        &'a self,
        name: &'a str,
        lease_id: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Vec<Holder>, StoreError>> {
        async move {
            let mut state = self.state.lock().await;
            let now = self.clock.now_ms();
            let Some(lock) = state.locks.get_mut(name) else {
                return Ok(Vec::new());
            };
            purge(lock, now);
            let evicted = lock.evict(now, lease_id);
            metrics::gauge!(crate::service::HOLDERS).decrement(evicted.len() as f64);
            if lock.is_idle() {
                state.locks.remove(name);
            }
            Ok(evicted)
        }
        .boxed()
    }

    fn inspect<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<LockInfo>, StoreError>> {
        async move {
            let mut state = self.state.lock().await;
            let now = self.clock.now_ms();
            let Some(lock) = state.locks.get_mut(name) else {
                return Ok(None);
            };
            purge(lock, now);
            Ok((!lock.is_idle()).then(|| LockInfo::of(name, lock, now)))
        }
        .boxed()
    }

    fn list<'a>(
        &'a self,
        prefix: &'a str,
        after: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<LockInfo>, StoreError>> {
        async move {
            let mut state = self.state.lock().await;
            let now = self.clock.now_ms();
            let mut out = Vec::new();
            for (name, lock) in state.locks.range_mut(prefix.to_owned()..) {
                if !name.starts_with(prefix) || out.len() >= limit {
                    break;
                }
                purge(lock, now);
                if name.as_str() > after && !lock.is_idle() {
                    out.push(LockInfo::of(name, lock, now));
                }
            }
            Ok(out)
        }
        .boxed()
    }
}
