//! `CacheService`: the store plus what INFO reports; what RESP, HTTP and the CLI call.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::commands::ServerInfo;
use crate::config::CacheConfig;
use crate::resp::Limits;
use crate::store::{Store, now_ms};

pub const HITS: &str = "mortar_cache_hits_total";
pub const MISSES: &str = "mortar_cache_misses_total";
pub const EVICTIONS: &str = "mortar_cache_evictions_total";
pub const EXPIRATIONS: &str = "mortar_cache_expirations_total";
pub const INVALIDATIONS: &str = "mortar_cache_invalidations_received_total";
pub const COMMANDS: &str = "mortar_cache_commands_total";
pub const CLIENTS: &str = "mortar_cache_clients";
pub const USED_BYTES: &str = "mortar_cache_used_bytes";
pub const BUSY_POLL: &str = "mortar_cache_busy_poll_idle_seconds";

#[derive(Debug)]
pub struct CacheService {
    pub store: Store,
    /// The shared tier in cluster mode.
    pub l2: Option<crate::cluster::L2>,
    namespaces: std::collections::BTreeMap<String, crate::origin::NamespaceConfig>,
    origins: std::sync::OnceLock<std::collections::HashMap<String, Arc<crate::origin::Origin>>>,
    pub limits: Limits,
    password: Option<String>,
    /// Most RESP connections at once (`cache.max_clients`).
    pub max_clients: u64,
    started_ms: u64,
    pub clients: AtomicU64,
    pub commands: AtomicU64,
    /// Microseconds the RESP loops spent busy-polling without finding work.
    pub busy_poll_us: AtomicU64,
    next_client_id: AtomicU64,
}

impl CacheService {
    /// Embedded: this node's memory only.
    pub fn new(cfg: &CacheConfig, password: Option<String>) -> Arc<Self> {
        Self::build(cfg, password, None)
    }

    /// Cluster mode: Redis (at `redis_url`) as the shared tier, this node's memory as L1.
    pub fn clustered(
        cfg: &CacheConfig,
        password: Option<String>,
        redis: mortar_core::storage::Redis,
        redis_url: &str,
    ) -> Arc<Self> {
        let l2 = crate::cluster::L2::new(
            redis,
            cfg.l1_ttl_ms,
            std::time::Duration::from_millis(cfg.redis_timeout_ms),
        );
        let svc = Self::build(cfg, password, Some(l2.clone()));
        crate::cluster::spawn_subscriber(&svc, l2, redis_url.to_owned());
        svc
    }

    /// Connects the configured namespaces to their origins, each call through the breaker
    /// `breaker(name)` gives (the server passes its resilience registry's, so they are visible
    /// in `/v1/resilience/breakers`).
    pub fn attach_origins(&self, breaker: impl Fn(&str) -> Arc<mortar_resilience::Breaker>) {
        let origins = self
            .namespaces
            .iter()
            .map(|(ns, cfg)| {
                (
                    ns.clone(),
                    crate::origin::Origin::new(cfg.clone(), breaker(&format!("cache-origin-{ns}"))),
                )
            })
            .collect();
        let _ = self.origins.set(origins);
    }

    /// Sends every queued write-behind value now (graceful shutdown calls this).
    pub async fn flush_origins(&self) {
        if let Some(origins) = self.origins.get() {
            for o in origins.values() {
                o.flush().await;
            }
        }
    }

    /// The origin of `key`'s namespace (`namespace:rest`) and `rest`.
    fn origin_for(&self, key: &[u8]) -> Option<(&Arc<crate::origin::Origin>, bytes::Bytes)> {
        let colon = key.iter().position(|b| *b == b':')?;
        let ns = std::str::from_utf8(&key[..colon]).ok()?;
        let origin = self.origins.get()?.get(ns)?;
        Some((origin, bytes::Bytes::copy_from_slice(&key[colon + 1..])))
    }

    /// Runs one command in this node's mode, with origins applied.
    pub async fn run(
        &self,
        session: &mut crate::commands::Session,
        args: &[bytes::Bytes],
    ) -> crate::resp::Reply {
        use crate::resp::Reply;
        let is = |name: &[u8]| args.first().is_some_and(|c| c.eq_ignore_ascii_case(name));
        // Write-through: the origin takes the value first.
        let mut behind = None;
        if is(b"SET")
            && args.len() >= 3
            && let Some((origin, rest)) = self.origin_for(&args[1])
        {
            match origin.cfg.write {
                crate::origin::WriteMode::Through => {
                    if let Err(e) = origin.write(&rest, args[2].clone()).await {
                        return Reply::err(format!("ERR origin write failed: {e}"));
                    }
                }
                crate::origin::WriteMode::Behind => behind = Some((origin, rest)),
                crate::origin::WriteMode::None => {}
            }
        }
        let reply = self.run_local(session, args).await;
        if let Some((origin, rest)) = behind
            && !matches!(reply, Reply::Error(_) | Reply::Null)
        {
            origin.queue(rest, args[2].clone());
        }
        // Read-through: a miss loads from the origin (once, however many callers miss).
        if is(b"GET")
            && reply == Reply::Null
            && args.len() == 2
            && let Some((origin, rest)) = self.origin_for(&args[1])
        {
            return match origin.load(rest).await {
                Ok(Some((data, ttl_ms))) => {
                    if ttl_ms > 0 {
                        let set = [
                            bytes::Bytes::from_static(b"SET"),
                            args[1].clone(),
                            data.clone(),
                            bytes::Bytes::from_static(b"PX"),
                            bytes::Bytes::from(ttl_ms.to_string()),
                        ];
                        self.run_local(session, &set).await;
                    }
                    Reply::Bulk(data)
                }
                Ok(None) => Reply::Null,
                Err(e) => Reply::err(format!("ERR origin read failed: {e}")),
            };
        }
        reply
    }

    async fn run_local(
        &self,
        session: &mut crate::commands::Session,
        args: &[bytes::Bytes],
    ) -> crate::resp::Reply {
        match &self.l2 {
            None => crate::commands::execute(&self.store, self, session, args),
            Some(l2) => crate::cluster::execute_cluster(self, l2, session, args).await,
        }
    }

    fn build(
        cfg: &CacheConfig,
        password: Option<String>,
        l2: Option<crate::cluster::L2>,
    ) -> Arc<Self> {
        let svc = Arc::new(Self {
            l2,
            namespaces: cfg.namespaces.clone(),
            origins: std::sync::OnceLock::new(),
            store: Store::new(cfg.max_memory, cfg.eviction),
            limits: Limits {
                max_bulk: cfg.max_bulk_bytes,
                ..Limits::default()
            },
            password,
            max_clients: cfg.max_clients,
            started_ms: now_ms(),
            clients: AtomicU64::new(0),
            commands: AtomicU64::new(0),
            busy_poll_us: AtomicU64::new(0),
            next_client_id: AtomicU64::new(1),
        });
        describe_metrics();
        // Counters live in the store (no per-command metrics cost); publish them each second.
        let weak = Arc::downgrade(&svc);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
                loop {
                    tick.tick().await;
                    let Some(svc) = weak.upgrade() else { break };
                    svc.publish_metrics();
                }
            });
        }
        svc
    }

    /// The protocol limits for a session: Redis's small pre-`AUTH` bounds until a session of a
    /// server with a password has authenticated.
    pub fn limits_for(&self, session: &crate::commands::Session) -> &Limits {
        if self.password.is_some() && !session.authed {
            &Limits::PRE_AUTH
        } else {
            &self.limits
        }
    }

    pub fn next_client_id(&self) -> u64 {
        self.next_client_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn publish_metrics(&self) {
        let s = &self.store.stats;
        metrics::counter!(HITS).absolute(s.hits.load(Ordering::Relaxed));
        metrics::counter!(MISSES).absolute(s.misses.load(Ordering::Relaxed));
        metrics::counter!(EVICTIONS).absolute(s.evicted.load(Ordering::Relaxed));
        metrics::counter!(EXPIRATIONS).absolute(s.expired.load(Ordering::Relaxed));
        metrics::counter!(INVALIDATIONS).absolute(s.invalidations.load(Ordering::Relaxed));
        metrics::counter!(COMMANDS).absolute(self.commands.load(Ordering::Relaxed));
        // A gauge: the metrics facade's counters are integers, and this is fractions of seconds.
        metrics::gauge!(BUSY_POLL).set(self.busy_poll_us.load(Ordering::Relaxed) as f64 / 1e6);
        metrics::gauge!(CLIENTS).set(self.clients.load(Ordering::Relaxed) as f64);
        metrics::gauge!(USED_BYTES).set(self.store.used_memory() as f64);
    }
}

impl ServerInfo for CacheService {
    fn connected_clients(&self) -> u64 {
        self.clients.load(Ordering::Relaxed)
    }

    fn commands_processed(&self) -> u64 {
        self.commands.load(Ordering::Relaxed)
    }

    fn started_ms(&self) -> u64 {
        self.started_ms
    }

    fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }
}

fn describe_metrics() {
    metrics::describe_counter!(HITS, "cache reads that found a live key");
    metrics::describe_counter!(MISSES, "cache reads that found nothing");
    metrics::describe_counter!(EVICTIONS, "entries evicted to stay under cache.max_memory");
    metrics::describe_counter!(EXPIRATIONS, "entries removed because their TTL passed");
    metrics::describe_counter!(
        INVALIDATIONS,
        "invalidation messages from other nodes applied to the near-cache (cluster mode)"
    );
    metrics::describe_counter!(COMMANDS, "RESP commands executed");
    metrics::describe_gauge!(
        BUSY_POLL,
        "time the RESP loops have spent busy-polling without finding work since start \
         (cache.resp_busy_poll_us; only grows)"
    );
    metrics::describe_gauge!(CLIENTS, "open RESP connections");
    metrics::describe_gauge!(
        USED_BYTES,
        "bytes held by the cache (keys, values, per-entry overhead)"
    );
}
