//! `ResilienceService`: the registry of named breakers, bulkheads and retry policies of a node.
//!
//! Breakers come from three places ([`Source`]): `mortar.toml` (from start-up, read-only
//! through the API), the API (`PUT /v1/resilience/breakers/{name}`: stored in the durable
//! store, loaded at start-up and, in a cluster, every `refresh_ms` — `service/define.rs`), and
//! blocks of this node that ask for one by name (created with default settings on first use).
//! Calls from other languages go through HTTP permits (`service/calls.rs`).

mod calls;
mod define;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use mortar_core::config::ConfigError;
use mortar_core::storage::{Mode, Storage};

pub use self::calls::{Admitted, Outcome, Recorded, Status, Steer};
use crate::breaker::{Breaker, BreakerConfig};
use crate::bulkhead::{Bulkhead, BulkheadConfig};
use crate::config::ResilienceConfig;
use crate::error::ResilienceError;
use crate::permits::LocalPermits;
use crate::retry::{Retry, RetryConfig};
use crate::shared::Shared;
use crate::store::DefinitionStore;

/// Where a breaker's definition comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `[resilience.breakers.<name>]` in mortar.toml: read-only through the API.
    Config,
    /// Created or updated through the API: stored, shared by every node.
    Api,
    /// Asked for by a block of this node (e.g. `jobs.push.<queue>`), default settings.
    Default,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Config => "config",
            Source::Api => "api",
            Source::Default => "default",
        }
    }
}

/// A named breaker and its definition.
#[derive(Debug)]
pub struct Entry {
    pub breaker: Arc<Breaker>,
    pub source: Source,
    /// The definition in force (also the local breaker's settings).
    pub cfg: BreakerConfig,
    /// A block of this node holds it: deleting its API definition returns it to defaults
    /// instead of removing it.
    used_by_block: AtomicBool,
}

#[derive(Debug, Default)]
struct Breakers {
    by_name: BTreeMap<String, Arc<Entry>>,
    /// This node's definition writes, so a refresh that read the store before one cannot
    /// undo it.
    writes: u64,
}

#[derive(Debug, Default)]
pub struct ResilienceService {
    breakers: RwLock<Breakers>,
    bulkheads: RwLock<BTreeMap<String, Arc<Bulkhead>>>,
    retries: RwLock<BTreeMap<String, Arc<Retry>>>,
    /// Where API definitions are stored (`None`: in memory only, for tests and embedding).
    defs: Option<DefinitionStore>,
    permits: LocalPermits,
    /// Redis for shared breakers (cluster mode with Redis only).
    shared: Option<Shared>,
    /// The last shared call failed (logged once per outage).
    redis_down: AtomicBool,
}

fn get_or_insert<T>(
    map: &RwLock<BTreeMap<String, Arc<T>>>,
    name: &str,
    make: impl FnOnce() -> Arc<T>,
) -> Arc<T> {
    if let Some(v) = map.read().unwrap_or_else(PoisonError::into_inner).get(name) {
        return v.clone();
    }
    map.write()
        .unwrap_or_else(PoisonError::into_inner)
        .entry(name.to_owned())
        .or_insert_with(make)
        .clone()
}

fn all<T>(map: &RwLock<BTreeMap<String, Arc<T>>>) -> Vec<Arc<T>> {
    map.read()
        .unwrap_or_else(PoisonError::into_inner)
        .values()
        .cloned()
        .collect()
}

impl Entry {
    fn new(name: &str, cfg: BreakerConfig, source: Source) -> Arc<Self> {
        Arc::new(Self {
            breaker: Breaker::new(name, cfg.clone()),
            source,
            cfg,
            used_by_block: AtomicBool::new(false),
        })
    }

    /// The same breaker under a new definition.
    fn redefined(&self, cfg: BreakerConfig, source: Source) -> Arc<Self> {
        Arc::new(Self {
            breaker: self.breaker.clone(),
            source,
            cfg,
            used_by_block: AtomicBool::new(self.used_by_block.load(Ordering::Relaxed)),
        })
    }
}

impl ResilienceService {
    /// A registry with `cfg`'s policies, API definitions kept in memory only (tests,
    /// embedding). The server uses [`ResilienceService::start`].
    pub fn new(cfg: &ResilienceConfig) -> Result<Arc<Self>, ConfigError> {
        Ok(Arc::new(Self::build(cfg)?))
    }

    fn build(cfg: &ResilienceConfig) -> Result<Self, ConfigError> {
        cfg.validate()?;
        crate::metrics::describe();
        let svc = Self::default();
        {
            let mut reg = svc.write();
            for (name, c) in &cfg.breakers {
                reg.by_name
                    .insert(name.clone(), Entry::new(name, c.clone(), Source::Config));
            }
        }
        for (name, c) in &cfg.bulkheads {
            svc.bulkhead_with(name, c.clone());
        }
        for (name, c) in &cfg.retries {
            svc.retry_with(name, c.clone());
        }
        Ok(svc)
    }

    /// The service on a node's storage: API definitions stored in its durable store (and, in a
    /// cluster, reloaded every `refresh_ms`), shared breakers on its Redis.
    pub async fn start(
        storage: &Storage,
        cfg: &ResilienceConfig,
    ) -> Result<Arc<Self>, Box<dyn std::error::Error + Send + Sync>> {
        let mut svc = Self::build(cfg)?;
        let redis = storage
            .redis
            .as_ref()
            .filter(|_| storage.mode == Mode::Cluster);
        if redis.is_none()
            && let Some((name, _)) = cfg.breakers.iter().find(|(_, c)| c.shared)
        {
            return Err(ConfigError(format!(
                "key `resilience.breakers.{name}.shared`: {SHARED_NEEDS}"
            ))
            .into());
        }
        svc.defs = Some(DefinitionStore::new(storage.durable.clone()));
        svc.shared =
            redis.map(|r| Shared::new(r.clone(), Duration::from_millis(cfg.redis_timeout_ms)));
        let svc = Arc::new(svc);
        svc.refresh().await?;
        let weak = Arc::downgrade(&svc);
        let cluster = storage.mode == Mode::Cluster;
        let every = Duration::from_millis(cfg.refresh_ms);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(svc) = weak.upgrade() else { break };
                svc.permits.sweep();
                if cluster && let Err(e) = svc.refresh().await {
                    tracing::warn!(error = %e, "resilience: breaker refresh failed; keeping the last known definitions");
                }
            }
        });
        Ok(svc)
    }

    /// The named breaker (created with default settings if new).
    pub fn breaker(&self, name: &str) -> Arc<Breaker> {
        self.breaker_with(name, BreakerConfig::default())
    }

    /// The named breaker for a block of this node, created with `cfg` if new (an existing one
    /// keeps its settings).
    pub fn breaker_with(&self, name: &str, cfg: BreakerConfig) -> Arc<Breaker> {
        let entry = self.find(name).unwrap_or_else(|| {
            self.write()
                .by_name
                .entry(name.to_owned())
                .or_insert_with(|| Entry::new(name, cfg, Source::Default))
                .clone()
        });
        entry.used_by_block.store(true, Ordering::Relaxed);
        entry.breaker.clone()
    }

    pub fn find_breaker(&self, name: &str) -> Option<Arc<Breaker>> {
        self.find(name).map(|e| e.breaker.clone())
    }

    pub fn breakers(&self) -> Vec<Arc<Breaker>> {
        self.entries()
            .into_iter()
            .map(|e| e.breaker.clone())
            .collect()
    }

    /// The named breaker's entry.
    pub fn find(&self, name: &str) -> Option<Arc<Entry>> {
        self.read().by_name.get(name).cloned()
    }

    /// Every breaker's entry, by name.
    pub fn entries(&self) -> Vec<Arc<Entry>> {
        self.read().by_name.values().cloned().collect()
    }

    fn entry(&self, name: &str) -> Result<Arc<Entry>, ResilienceError> {
        self.find(name)
            .ok_or_else(|| ResilienceError::NotFound(name.to_owned()))
    }

    /// Whether shared breakers are possible here (cluster mode with Redis).
    pub fn can_share(&self) -> bool {
        self.shared.is_some()
    }

    pub fn bulkhead_with(&self, name: &str, cfg: BulkheadConfig) -> Arc<Bulkhead> {
        get_or_insert(&self.bulkheads, name, || Arc::new(Bulkhead::new(name, cfg)))
    }

    pub fn bulkhead(&self, name: &str) -> Arc<Bulkhead> {
        self.bulkhead_with(name, BulkheadConfig::default())
    }

    pub fn bulkheads(&self) -> Vec<Arc<Bulkhead>> {
        all(&self.bulkheads)
    }

    pub fn retry_with(&self, name: &str, cfg: RetryConfig) -> Arc<Retry> {
        get_or_insert(&self.retries, name, || Arc::new(Retry::new(name, cfg)))
    }

    pub fn retry(&self, name: &str) -> Arc<Retry> {
        self.retry_with(name, RetryConfig::default())
    }

    pub fn retries(&self) -> Vec<Arc<Retry>> {
        all(&self.retries)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Breakers> {
        self.breakers.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Breakers> {
        self.breakers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Why `shared = true` is refused.
pub const SHARED_NEEDS: &str = "a shared breaker needs cluster mode with Redis (database_url = \
     \"postgres://…\" and redis_url): its state lives in Redis so that every node sees it";
