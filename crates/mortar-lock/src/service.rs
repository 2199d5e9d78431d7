//! `LockService`: validation, waiting in line (long-poll), hand-off wake-ups, metrics.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use mortar_core::FieldError;
use mortar_core::clock::Clock;
use mortar_core::storage::{Durable, Storage};
use tokio::sync::Notify;

use crate::config::{Backend, LockConfig};
use crate::engine::{Holder, Waiter};
use crate::error::LockError;
use crate::store::memory::MemoryStore;
use crate::store::postgres::PostgresStore;
use crate::store::redis::RedisStore;
use crate::store::{AcquireArgs, Acquired, LockInfo, LockStore, StoreError};

pub const GRANTS: &str = "mortar_lock_grants_total";
pub const WAITS: &str = "mortar_lock_waits_total";
pub const WAIT_SECONDS: &str = "mortar_lock_wait_seconds";
pub const LOST: &str = "mortar_lock_leases_lost_total";
pub const BUSY: &str = "mortar_lock_busy_total";
pub const EXPIRIES: &str = "mortar_lock_expiries_total";
pub const HOLDERS: &str = "mortar_lock_holders";

/// What a client asks for.
#[derive(Debug, Clone)]
pub struct AcquireRequest {
    pub ttl_ms: u64,
    pub owner: String,
    pub wait_ms: u64,
    pub permits: u32,
}

/// The block's migrations.
pub fn migrations() -> mortar_core::storage::Migrations {
    mortar_core::storage::Migrations {
        block: "lock",
        sqlite: sqlx::migrate!("migrations/sqlite"),
        postgres: sqlx::migrate!("migrations/postgres"),
    }
}

pub struct LockService {
    store: Arc<dyn LockStore>,
    cfg: LockConfig,
    /// In-process wake-ups: a release or a give-up on this node wakes its waiters at once.
    /// Waiters also re-check every `poll_ms` (other nodes' releases) and at the next expiry.
    wakers: Mutex<HashMap<String, Arc<Notify>>>,
}

impl std::fmt::Debug for LockService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockService")
            .field("store", &self.store.name())
            .finish_non_exhaustive()
    }
}

/// Leaves the line if the waiting request goes away (client hung up, timeout).
struct InLine {
    store: Arc<dyn LockStore>,
    name: String,
    ticket: String,
    armed: bool,
}

impl Drop for InLine {
    fn drop(&mut self) {
        if self.armed {
            let (store, name, ticket) = (
                self.store.clone(),
                std::mem::take(&mut self.name),
                std::mem::take(&mut self.ticket),
            );
            tokio::spawn(async move {
                let _ = store.dequeue(&name, &ticket).await;
            });
        }
    }
}

impl LockService {
    /// PostgreSQL in cluster mode; otherwise in memory with the fencing counter in SQLite.
    pub fn start(
        storage: &Storage,
        cfg: &LockConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Self>, LockError> {
        cfg.validate()
            .map_err(|e| LockError::Unavailable(e.to_string()))?;
        let store: Arc<dyn LockStore> = match (cfg.backend, &storage.durable, &storage.redis) {
            (Backend::Redis, _, Some(redis)) => Arc::new(RedisStore::new(redis.clone())),
            (Backend::Redis, _, None) => {
                return Err(LockError::Unavailable(
                    "key `lock.backend`: \"redis\" needs redis_url".into(),
                ));
            }
            (Backend::Auto, Durable::Postgres(pool), _) => {
                Arc::new(PostgresStore::new(pool.clone()))
            }
            (Backend::Auto, Durable::Sqlite(_), _) => {
                Arc::new(MemoryStore::new(storage.durable.clone(), clock))
            }
        };
        Ok(Self::with_store(store, cfg.clone()))
    }

    pub fn with_store(store: Arc<dyn LockStore>, cfg: LockConfig) -> Arc<Self> {
        describe_metrics();
        Arc::new(Self {
            store,
            cfg,
            wakers: Mutex::default(),
        })
    }

    pub fn backend(&self) -> &'static str {
        self.store.name()
    }

    pub fn config(&self) -> &LockConfig {
        &self.cfg
    }

    /// Takes a permit, waiting in line up to `wait_ms` (first come, first served).
    pub async fn acquire(&self, name: &str, req: &AcquireRequest) -> Result<Holder, LockError> {
        self.validate(name, req)?;
        let args = AcquireArgs {
            name,
            owner: &req.owner,
            ttl_ms: req.ttl_ms,
            permits: req.permits,
            ticket: None,
        };
        match self.store.acquire(args).await.map_err(unavailable)? {
            Acquired::Granted(h) => return Ok(Self::granted(h, None)),
            Acquired::PermitsMismatch { existing } => {
                return Err(mismatch(name, existing, req.permits));
            }
            Acquired::Busy(info) if req.wait_ms == 0 => {
                metrics::counter!(BUSY).increment(1);
                return Err(LockError::Busy(Box::new(info)));
            }
            Acquired::Busy(_) => {}
        }
        metrics::counter!(WAITS).increment(1);
        let started = tokio::time::Instant::now();
        let deadline = started + Duration::from_millis(req.wait_ms);
        let ticket = mortar_core::ids::new_id();
        let waiter = Waiter {
            ticket: ticket.clone(),
            owner: req.owner.clone(),
            until_ms: 0,
        };
        self.store
            .enqueue(name, waiter, req.permits, req.wait_ms)
            .await
            .map_err(unavailable)?;
        let mut line = InLine {
            store: self.store.clone(),
            name: name.to_owned(),
            ticket: ticket.clone(),
            armed: true,
        };
        let waker = self.waker(name);
        loop {
            // Register interest before checking, so a release in between is not missed.
            let notified = waker.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let args = AcquireArgs {
                ticket: Some(&ticket),
                ..args
            };
            let info = match self.store.acquire(args).await.map_err(unavailable)? {
                Acquired::Granted(h) => {
                    line.armed = false;
                    return Ok(Self::granted(h, Some(started)));
                }
                Acquired::PermitsMismatch { existing } => {
                    return Err(mismatch(name, existing, req.permits));
                }
                Acquired::Busy(info) => info,
            };
            let now = tokio::time::Instant::now();
            if now >= deadline {
                line.armed = false;
                let _ = self.store.dequeue(name, &ticket).await;
                self.wake(name);
                metrics::counter!(BUSY).increment(1);
                return Err(LockError::Busy(Box::new(info)));
            }
            // Sleep until woken, the next lease expiry, the poll interval or the deadline.
            let until_expiry = info
                .holders
                .iter()
                .map(|h| h.expires_at_ms.saturating_sub(info.now_ms))
                .min()
                .map_or(Duration::MAX, Duration::from_millis);
            let nap = until_expiry
                .min(Duration::from_millis(self.cfg.poll_ms))
                .min(deadline - now);
            let _ = tokio::time::timeout(nap, notified).await;
        }
    }

    pub async fn renew(
        &self,
        name: &str,
        lease_id: &str,
        ttl_ms: u64,
    ) -> Result<Holder, LockError> {
        Self::check_name(name)?;
        self.check_ttl(ttl_ms)?;
        match self
            .store
            .renew(name, lease_id, ttl_ms)
            .await
            .map_err(unavailable)?
        {
            Some(h) => Ok(h),
            None => {
                metrics::counter!(LOST).increment(1);
                Err(LockError::LeaseLost {
                    name: name.to_owned(),
                    lease_id: lease_id.to_owned(),
                })
            }
        }
    }

    pub async fn release(&self, name: &str, lease_id: &str) -> Result<(), LockError> {
        Self::check_name(name)?;
        if self
            .store
            .release(name, lease_id)
            .await
            .map_err(unavailable)?
        {
            self.wake(name);
            Ok(())
        } else {
            metrics::counter!(LOST).increment(1);
            Err(LockError::LeaseLost {
                name: name.to_owned(),
                lease_id: lease_id.to_owned(),
            })
        }
    }

    pub async fn inspect(&self, name: &str) -> Result<Option<LockInfo>, LockError> {
        Self::check_name(name)?;
        self.store.inspect(name).await.map_err(unavailable)
    }

    pub async fn list(
        &self,
        prefix: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<LockInfo>, LockError> {
        self.store
            .list(prefix, after, limit)
            .await
            .map_err(unavailable)
    }

    fn granted(h: Holder, waited_since: Option<tokio::time::Instant>) -> Holder {
        metrics::counter!(GRANTS).increment(1);
        if let Some(t) = waited_since {
            metrics::histogram!(WAIT_SECONDS).record(t.elapsed().as_secs_f64());
        }
        h
    }

    fn waker(&self, name: &str) -> Arc<Notify> {
        let mut w = self.wakers.lock().unwrap_or_else(PoisonError::into_inner);
        if w.len() > 10_000 {
            // Drop wakers nobody waits on (only this map holds them).
            w.retain(|_, n| Arc::strong_count(n) > 1);
        }
        w.entry(name.to_owned()).or_default().clone()
    }

    fn wake(&self, name: &str) {
        if let Some(n) = self
            .wakers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
        {
            n.notify_waiters();
        }
    }

    fn validate(&self, name: &str, req: &AcquireRequest) -> Result<(), LockError> {
        let mut errors = Vec::new();
        if let Err(e) = check_name(name) {
            errors.push(e);
        }
        if req.ttl_ms == 0 || req.ttl_ms > self.cfg.max_ttl_ms {
            errors.push(FieldError::new(
                "ttl_ms",
                format!("must be 1 to {} (lock.max_ttl_ms)", self.cfg.max_ttl_ms),
            ));
        }
        if req.wait_ms > self.cfg.max_wait_ms {
            errors.push(FieldError::new(
                "wait_ms",
                format!("must be 0 to {} (lock.max_wait_ms)", self.cfg.max_wait_ms),
            ));
        }
        if req.permits == 0 || req.permits > self.cfg.max_permits {
            errors.push(FieldError::new(
                "permits",
                format!("must be 1 to {}", self.cfg.max_permits),
            ));
        }
        if req.owner.is_empty() || req.owner.len() > 256 {
            errors.push(FieldError::new("owner", "must be 1 to 256 bytes"));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(LockError::Invalid(errors))
        }
    }

    fn check_name(name: &str) -> Result<(), LockError> {
        check_name(name).map_err(|e| LockError::Invalid(vec![e]))
    }

    fn check_ttl(&self, ttl_ms: u64) -> Result<(), LockError> {
        if ttl_ms == 0 || ttl_ms > self.cfg.max_ttl_ms {
            return Err(LockError::Invalid(vec![FieldError::new(
                "ttl_ms",
                format!("must be 1 to {} (lock.max_ttl_ms)", self.cfg.max_ttl_ms),
            )]));
        }
        Ok(())
    }
}

/// Lock names: 1 to 256 of `A-Z a-z 0-9 _ . - : /`.
pub fn check_name(name: &str) -> Result<(), FieldError> {
    let ok = !name.is_empty()
        && name.len() <= 256
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b':' | b'/'));
    if ok {
        Ok(())
    } else {
        Err(FieldError::new(
            "name",
            "must be 1 to 256 of letters, digits, `_`, `.`, `-`, `:`, `/`",
        ))
    }
}

fn mismatch(name: &str, existing: u32, asked: u32) -> LockError {
    LockError::PermitsMismatch {
        name: name.to_owned(),
        existing,
        asked,
    }
}

#[allow(clippy::needless_pass_by_value)] // used as `.map_err(unavailable)`
fn unavailable(e: StoreError) -> LockError {
    tracing::warn!(error = %e, "lock backend unavailable");
    LockError::Unavailable(e.backend.to_owned())
}

fn describe_metrics() {
    metrics::describe_counter!(GRANTS, "lock and semaphore permits granted");
    metrics::describe_counter!(WAITS, "acquires that had to wait in line");
    metrics::describe_histogram!(
        WAIT_SECONDS,
        metrics::Unit::Seconds,
        "time from joining the line to the grant"
    );
    metrics::describe_counter!(
        LOST,
        "renews and releases of leases that were already gone (expired)"
    );
    metrics::describe_counter!(BUSY, "acquires refused because the lock stayed held");
    metrics::describe_counter!(
        EXPIRIES,
        "leases that ran out without being released (memory and PostgreSQL backends)"
    );
    metrics::describe_gauge!(
        HOLDERS,
        "leases held right now (embedded mode; cluster backends are shared by all nodes)"
    );
}
