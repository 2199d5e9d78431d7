//! `LockService`: validation, waiting in line (long-poll), hand-off wake-ups, metrics;
//! [`admin`]: an operator's force-release.

pub mod admin;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use mortar_core::FieldError;
use mortar_core::clock::Clock;
use mortar_core::storage::{Durable, Storage};
use mortar_core::waiters::Waiters;
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
pub const FORCED: &str = "mortar_lock_leases_force_released_total";

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
    /// In-process wake-ups: a release or a give-up on this node wakes, at once, the waiters
    /// that can use it: the first `permits` of this node's line for that name (the line is
    /// first come, first served, so this node's earliest waiters are the only ones here a
    /// freed permit can go to). Waiters also re-check every `poll_ms` and at the next expiry.
    /// This node's waiters of each name, in arrival order: the permits they ask for, and how
    /// to wake them.
    lines: Waiters<String, (usize, Arc<Notify>)>,
    /// Other nodes' waiters (PostgreSQL backend): woken over NOTIFY.
    peers: OnceLock<crate::peers::Peers>,
    /// The node's shutdown: waiters leave their line and answer 503 at once.
    stopping: mortar_core::shutdown::Stopping,
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
        let mut peers_on = None;
        let store: Arc<dyn LockStore> = match (cfg.backend, &storage.durable, &storage.redis) {
            (Backend::Redis, _, Some(redis)) => Arc::new(RedisStore::with_node_lease(
                redis.clone(),
                cfg.node_lease_ms,
            )),
            (Backend::Redis, _, None) => {
                return Err(LockError::Unavailable(
                    "key `lock.backend`: \"redis\" needs redis_url".into(),
                ));
            }
            (Backend::Auto, Durable::Postgres(pool), _) => {
                peers_on = Some(pool.clone());
                Arc::new(PostgresStore::with_node_lease(
                    pool.clone(),
                    cfg.node_lease_ms,
                ))
            }
            (Backend::Auto, Durable::Sqlite(_), _) => {
                Arc::new(MemoryStore::new(storage.durable.clone(), clock))
            }
        };
        let svc = Self::build(store, cfg.clone(), storage.stopping.clone());
        if let Some(pool) = peers_on {
            let _ = svc
                .peers
                .set(crate::peers::Peers::start(Arc::downgrade(&svc), pool));
        }
        if storage.mode == mortar_core::storage::Mode::Cluster || cfg.backend == Backend::Redis {
            tokio::spawn(heartbeat(
                Arc::downgrade(&svc),
                Duration::from_millis(cfg.node_lease_ms / 3),
            ));
        }
        Ok(svc)
    }

    pub fn with_store(store: Arc<dyn LockStore>, cfg: LockConfig) -> Arc<Self> {
        Self::build(store, cfg, mortar_core::shutdown::Stopping::default())
    }

    fn build(
        store: Arc<dyn LockStore>,
        cfg: LockConfig,
        stopping: mortar_core::shutdown::Stopping,
    ) -> Arc<Self> {
        describe_metrics();
        Arc::new(Self {
            store,
            cfg,
            lines: Waiters::default(),
            peers: OnceLock::new(),
            stopping,
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
        let notify = Arc::new(Notify::new());
        let place = self
            .lines
            .join(name.to_owned(), (req.permits as usize, notify.clone()));
        loop {
            // A wake-up between the check below and the nap is kept (`notify_one` stores it).
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
            if self.stopping.is_stopping() {
                line.armed = false;
                let _ = self.store.dequeue(name, &ticket).await;
                return Err(LockError::ShuttingDown);
            }
            let now = tokio::time::Instant::now();
            if now < deadline && !info.waiters.iter().any(|w| w.ticket == ticket) {
                // Out of the line while still waiting: this node's liveness lease lapsed (a
                // stall longer than lock.node_lease_ms). Back in, at the end.
                tracing::debug!(lock = name, "lock: waiter out of the line; queueing again");
                let waiter = Waiter {
                    ticket: ticket.clone(),
                    owner: req.owner.clone(),
                    until_ms: 0,
                };
                let left = (deadline - now).as_millis() as u64;
                // Its row may still be stored (filtered out, not yet deleted): drop it first.
                self.store
                    .dequeue(name, &ticket)
                    .await
                    .map_err(unavailable)?;
                self.store
                    .enqueue(name, waiter, req.permits, left.max(1))
                    .await
                    .map_err(unavailable)?;
                continue;
            }
            if now >= deadline {
                line.armed = false;
                let _ = self.store.dequeue(name, &ticket).await;
                // Leaving the line matters to those behind only when a permit was free (this
                // waiter stood between them and it); otherwise the next release wakes them.
                // Waking every waiter on each give-up made a busy lock's pollers a herd.
                if info.holders.len() < info.permits as usize {
                    drop(place); // out of this node's line first, so the next one is woken
                    self.wake(name);
                }
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
            tokio::select! {
                _ = tokio::time::timeout(nap, notify.notified()) => {}
                () = self.stopping.wait() => {}
            }
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

    /// Wakes `name`'s waiters here and on the other nodes.
    fn wake(&self, name: &str) {
        self.wake_local(name);
        if let Some(p) = self.peers.get() {
            p.announce(name);
        }
    }

    /// Wakes the waiters on this node that a freed permit of `name` can go to.
    pub(crate) fn wake_local(&self, name: &str) {
        self.lines.first(name, |line| {
            let mut line = line.peekable();
            let permits = line.peek().map_or(1, |(p, _)| *p);
            for (_, n) in line.take(permits.max(1)) {
                n.notify_one();
            }
        });
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

/// Lock names: 1 to 256 of `A-Z a-z 0-9 _ . - : /` (`/` for hierarchies such as `db/orders`).
pub const LOCK_NAME: mortar_core::api::NameRule = mortar_core::api::NameRule::new(256, "_.-:/");

pub fn check_name(name: &str) -> Result<(), FieldError> {
    LOCK_NAME.check("name", name)
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
    metrics::describe_counter!(FORCED, "leases ended by an operator's force-release");
    metrics::describe_gauge!(
        HOLDERS,
        "leases held right now (embedded mode; cluster backends are shared by all nodes)"
    );
}

/// Renews this node's liveness lease every `every` (a third of `lock.node_lease_ms`) while the
/// service lives, so other nodes keep its waiters in line (and drop them once it dies).
async fn heartbeat(svc: std::sync::Weak<LockService>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(svc) = svc.upgrade() else { break };
        if let Err(e) = svc.store.heartbeat().await {
            tracing::warn!(error = %e, "lock: node heartbeat failed");
        }
    }
}
