//! `RateLimitService`: resolves policies, checks atomically through the store, applies the
//! local short-circuit and the failure modes, records metrics. What HTTP, the CLI, the tower
//! layer and other blocks call.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};
use std::time::{Duration, Instant};

use mortar_core::FieldError;
use mortar_core::clock::Clock;
use mortar_core::storage::{Durable, Storage};
use mortar_core::with_pool;

use crate::config::RateLimitConfig;
use crate::engine::{Algorithm, Decision};
use crate::error::RateLimitError;
use crate::policy::{Policy, PolicySpec, Registry, Source};
use crate::store::memory::MemoryStore;
use crate::store::redis::RedisStore;
use crate::store::{Check, RateLimitStore};

/// Largest key, in bytes.
pub const MAX_KEY_BYTES: usize = 4095;
/// Most policies in one check.
pub const MAX_POLICIES: usize = 16;
/// Most entries the short-circuit keeps.
const SHORT_CIRCUIT_CAP: usize = 100_000;

pub const DECISIONS: &str = "mortar_ratelimit_decisions_total";
pub const BACKEND_SECONDS: &str = "mortar_ratelimit_backend_seconds";
pub const BACKEND_FAILURES: &str = "mortar_ratelimit_backend_failures_total";
pub const SHORT_CIRCUITS: &str = "mortar_ratelimit_short_circuit_total";

/// The result of one check.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub allowed: bool,
    /// Per policy, in request order.
    pub results: Vec<(Arc<Policy>, Decision)>,
    /// Index in `results` of the most restrictive policy (the one reported).
    pub deciding: usize,
    /// The backend failed and failure modes decided.
    pub degraded: bool,
    /// Denied locally, without asking the backend.
    pub short_circuited: bool,
}

impl Outcome {
    pub fn decision(&self) -> (&Policy, &Decision) {
        let (p, d) = &self.results[self.deciding];
        (p, d)
    }

    fn new(results: Vec<(Arc<Policy>, Decision)>, degraded: bool, short_circuited: bool) -> Self {
        let allowed = results.iter().all(|(_, d)| d.allowed);
        // Denied: the policy that keeps the caller waiting longest. Allowed: the one with the
        // fewest units left (then the latest reset).
        let deciding = if allowed {
            (0..results.len()).min_by_key(|&i| {
                (
                    results[i].1.remaining,
                    std::cmp::Reverse(results[i].1.reset_ms),
                )
            })
        } else {
            (0..results.len())
                .filter(|&i| !results[i].1.allowed)
                .max_by_key(|&i| results[i].1.retry_after_ms)
        }
        .unwrap_or(0);
        Self {
            allowed,
            results,
            deciding,
            degraded,
            short_circuited,
        }
    }
}

/// The rate limiter of one node.
pub struct RateLimitService {
    store: Arc<dyn RateLimitStore>,
    /// The store is shared over the network (deadline, short-circuit and failure modes apply).
    remote: bool,
    timeout: Duration,
    short_circuit: bool,
    registry: Registry,
    durable: Durable,
    clock: Arc<dyn Clock>,
    denied: Mutex<HashMap<(String, String), Denial>>,
    backend_down: AtomicBool,
}

#[derive(Debug, Clone, Copy)]
struct Denial {
    until: Instant,
    cost: u64,
    decision: Decision,
}

impl std::fmt::Debug for RateLimitService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimitService")
            .field("store", &self.store.name())
            .finish_non_exhaustive()
    }
}

/// The block's migrations.
pub fn migrations() -> mortar_core::storage::Migrations {
    mortar_core::storage::Migrations {
        block: "ratelimit",
        sqlite: sqlx::migrate!("migrations/sqlite"),
        postgres: sqlx::migrate!("migrations/postgres"),
    }
}

type PolicyRow = (String, String, i64, i64, Option<i64>, String);

impl RateLimitService {
    /// Builds the service on the node's storage: Redis when configured, memory otherwise.
    pub async fn start(
        storage: &Storage,
        config: &RateLimitConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Self>, RateLimitError> {
        let policies = config
            .validate()
            .map_err(|e| RateLimitError::Unavailable(e.to_string()))?;
        let (store, remote): (Arc<dyn RateLimitStore>, bool) = match &storage.redis {
            Some(redis) => (Arc::new(RedisStore::new(redis.clone())), true),
            None => (Arc::new(MemoryStore::new(clock.clone())), false),
        };
        let svc = Arc::new(Self::with_store(
            store,
            remote,
            config,
            policies,
            storage.durable.clone(),
            clock,
        ));
        svc.refresh().await?;
        let weak = Arc::downgrade(&svc);
        let every = Duration::from_millis(config.policy_refresh_ms);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(svc) = weak.upgrade() else { break };
                if let Err(e) = svc.refresh().await {
                    tracing::warn!(error = %e, "ratelimit: policy refresh failed; keeping the last known policies");
                }
            }
        });
        Ok(svc)
    }

    /// Builds the service on an explicit store (tests, benchmarks, embedding).
    pub fn with_store(
        store: Arc<dyn RateLimitStore>,
        remote: bool,
        config: &RateLimitConfig,
        policies: Vec<Policy>,
        durable: Durable,
        clock: Arc<dyn Clock>,
    ) -> Self {
        describe_metrics();
        Self {
            store,
            remote,
            timeout: Duration::from_millis(config.redis_timeout_ms),
            short_circuit: config.short_circuit && remote,
            registry: Registry::new(policies),
            durable,
            clock,
            denied: Mutex::default(),
            backend_down: AtomicBool::new(false),
        }
    }

    pub fn backend(&self) -> &'static str {
        self.store.name()
    }

    /// Checks `key` against every named policy; consumes `cost` from all only if all allow.
    pub async fn check(
        &self,
        policies: &[String],
        key: &str,
        cost: u64,
    ) -> Result<Outcome, RateLimitError> {
        let resolved = self.resolve(policies, key, cost)?;
        Ok(self.check_resolved(&resolved, key, cost).await)
    }

    /// Validates a check and resolves its policy names.
    pub fn resolve(
        &self,
        policies: &[String],
        key: &str,
        cost: u64,
    ) -> Result<Vec<Arc<Policy>>, RateLimitError> {
        let mut errors = Vec::new();
        if key.is_empty() || key.len() > MAX_KEY_BYTES {
            errors.push(FieldError::new(
                "key",
                format!("must be 1 to {MAX_KEY_BYTES} bytes"),
            ));
        }
        if policies.is_empty() || policies.len() > MAX_POLICIES {
            errors.push(FieldError::new(
                "policies",
                format!("name 1 to {MAX_POLICIES} policies"),
            ));
        }
        if cost == 0 {
            errors.push(FieldError::new("cost", "must be at least 1"));
        }
        let mut resolved = Vec::with_capacity(policies.len());
        for (i, name) in policies.iter().enumerate() {
            if policies[..i].contains(name) {
                errors.push(FieldError::new(
                    format!("policies[{i}]"),
                    format!("`{name}` is listed twice"),
                ));
                continue;
            }
            let Some(p) = self.registry.get(name) else {
                return Err(RateLimitError::UnknownPolicy(name.clone()));
            };
            if cost > p.limit.capacity() {
                errors.push(FieldError::new(
                    "cost",
                    format!(
                        "{cost} exceeds the capacity {} of policy `{name}`: it could never pass",
                        p.limit.capacity()
                    ),
                ));
            }
            resolved.push(p);
        }
        if errors.is_empty() {
            Ok(resolved)
        } else {
            Err(RateLimitError::Invalid(errors))
        }
    }

    /// Checks already-resolved policies (the tower layer resolves once, at start-up).
    pub async fn check_resolved(&self, policies: &[Arc<Policy>], key: &str, cost: u64) -> Outcome {
        if let Some(outcome) = self.short_circuited(policies, key, cost) {
            metrics::counter!(SHORT_CIRCUITS).increment(1);
            record(&outcome);
            return outcome;
        }
        let outcome = self.decide(policies, key, cost).await;
        if self.short_circuit && !outcome.allowed && !outcome.degraded {
            self.remember_denials(&outcome, key, cost);
        }
        record(&outcome);
        outcome
    }

    /// Reports a key's standing under one policy without consuming.
    pub async fn peek(&self, policy: &str, key: &str) -> Result<Outcome, RateLimitError> {
        let p = self
            .registry
            .get(policy)
            .ok_or_else(|| RateLimitError::UnknownPolicy(policy.to_owned()))?;
        check_key(key)?;
        let outcome = self.decide(&[p], key, 0).await;
        if outcome.degraded {
            return Err(RateLimitError::Unavailable(self.store.name().to_owned()));
        }
        Ok(outcome)
    }

    /// Forgets a key's state under one policy.
    pub async fn reset(&self, policy: &str, key: &str) -> Result<(), RateLimitError> {
        if self.registry.get(policy).is_none() {
            return Err(RateLimitError::UnknownPolicy(policy.to_owned()));
        }
        check_key(key)?;
        self.lock_denied()
            .remove(&(policy.to_owned(), key.to_owned()));
        self.with_deadline(self.store.reset(policy, key))
            .await
            .map_err(|_| RateLimitError::Unavailable(self.store.name().to_owned()))
    }

    async fn decide(&self, policies: &[Arc<Policy>], key: &str, cost: u64) -> Outcome {
        // One policy on an in-process backend: decided right here, no future, no deadline.
        if let [p] = policies {
            let check = Check {
                policy: &p.name,
                limit: p.limit,
                key,
            };
            if let Some(d) = self.store.check_one_now(&check, cost) {
                return Outcome::new(vec![(p.clone(), d)], false, false);
            }
        }
        let checks: Vec<Check<'_>> = policies
            .iter()
            .map(|p| Check {
                policy: &p.name,
                limit: p.limit,
                key,
            })
            .collect();
        let start = Instant::now();
        let result = self.with_deadline(self.store.check(&checks, cost)).await;
        if self.remote {
            metrics::histogram!(BACKEND_SECONDS).record(start.elapsed().as_secs_f64());
        }
        match result {
            Ok(decisions) => {
                if self.backend_down.load(Ordering::Relaxed)
                    && self.backend_down.swap(false, Ordering::Relaxed)
                {
                    tracing::info!(backend = self.store.name(), "ratelimit: backend recovered");
                }
                Outcome::new(
                    policies.iter().cloned().zip(decisions).collect(),
                    false,
                    false,
                )
            }
            Err(message) => {
                metrics::counter!(BACKEND_FAILURES).increment(1);
                if !self.backend_down.swap(true, Ordering::Relaxed) {
                    tracing::warn!(backend = self.store.name(), error = %message, "ratelimit: backend unavailable; applying each policy's failure_mode");
                }
                let results = policies
                    .iter()
                    .map(|p| {
                        let open = p.failure_mode == crate::policy::FailureMode::FailOpen;
                        let d = Decision {
                            allowed: open,
                            limit: p.limit.capacity(),
                            remaining: if open {
                                p.limit.capacity().saturating_sub(cost)
                            } else {
                                0
                            },
                            reset_ms: 0,
                            retry_after_ms: if open { 0 } else { 1000 },
                        };
                        (p.clone(), d)
                    })
                    .collect();
                Outcome::new(results, true, false)
            }
        }
    }

    async fn with_deadline<T>(
        &self,
        fut: impl Future<Output = Result<T, crate::store::StoreError>>,
    ) -> Result<T, String> {
        if !self.remote {
            return fut.await.map_err(|e| e.to_string());
        }
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err(format!("no answer within {} ms", self.timeout.as_millis())),
        }
    }

    fn short_circuited(&self, policies: &[Arc<Policy>], key: &str, cost: u64) -> Option<Outcome> {
        if !self.short_circuit {
            return None;
        }
        let now = Instant::now();
        let denied = self.lock_denied();
        let mut hit = false;
        let results = policies
            .iter()
            .map(|p| match denied.get(&(p.name.clone(), key.to_owned())) {
                Some(d) if d.until > now && cost >= d.cost => {
                    hit = true;
                    let left = (d.until - now).as_millis() as u64;
                    (
                        p.clone(),
                        Decision {
                            allowed: false,
                            remaining: 0,
                            reset_ms: left.max(d.decision.reset_ms.min(left)),
                            retry_after_ms: left.max(1),
                            ..d.decision
                        },
                    )
                }
                _ => (
                    p.clone(),
                    Decision {
                        allowed: true,
                        limit: p.limit.capacity(),
                        remaining: 0,
                        reset_ms: 0,
                        retry_after_ms: 0,
                    },
                ),
            })
            .collect::<Vec<_>>();
        if !hit {
            return None;
        }
        // Only the denying policies are meaningful; report them.
        let results: Vec<_> = results.into_iter().filter(|(_, d)| !d.allowed).collect();
        Some(Outcome::new(results, false, true))
    }

    fn remember_denials(&self, outcome: &Outcome, key: &str, cost: u64) {
        let now = Instant::now();
        let mut denied = self.lock_denied();
        if denied.len() >= SHORT_CIRCUIT_CAP {
            denied.retain(|_, d| d.until > now);
            if denied.len() >= SHORT_CIRCUIT_CAP {
                return;
            }
        }
        for (p, d) in outcome.results.iter().filter(|(_, d)| !d.allowed) {
            let until = now + Duration::from_millis(d.retry_after_ms);
            denied.insert(
                (p.name.clone(), key.to_owned()),
                Denial {
                    until,
                    cost,
                    decision: *d,
                },
            );
        }
    }

    fn lock_denied(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Denial>> {
        self.denied.lock().unwrap_or_else(PoisonError::into_inner)
    }

    // ----- policies -----

    pub fn policy(&self, name: &str) -> Result<Arc<Policy>, RateLimitError> {
        self.registry
            .get(name)
            .ok_or_else(|| RateLimitError::UnknownPolicy(name.to_owned()))
    }

    pub fn policies(&self) -> Vec<Arc<Policy>> {
        self.registry.all()
    }

    /// Creates or replaces an API policy; returns it and whether it is new.
    pub async fn put_policy(
        &self,
        name: &str,
        spec: &PolicySpec,
    ) -> Result<(Arc<Policy>, bool), RateLimitError> {
        if self.registry.is_config(name) {
            return Err(RateLimitError::ConfigPolicy(name.to_owned()));
        }
        let policy = spec
            .validate(name, Source::Api, "")
            .map_err(RateLimitError::Invalid)?;
        let existed = self.registry.get(name).is_some();
        let sql = "INSERT INTO ratelimit_policies (name, algorithm, limit_n, window_ms, burst, failure_mode, updated_at_ms) \
                   VALUES ($1, $2, $3, $4, $5, $6, $7) \
                   ON CONFLICT (name) DO UPDATE SET algorithm = excluded.algorithm, limit_n = excluded.limit_n, \
                   window_ms = excluded.window_ms, burst = excluded.burst, failure_mode = excluded.failure_mode, \
                   updated_at_ms = excluded.updated_at_ms";
        let mode = if policy.failure_mode == crate::policy::FailureMode::FailOpen {
            "fail_open"
        } else {
            "fail_closed"
        };
        with_pool!(&self.durable, pool => sqlx::query(sql)
            .bind(&policy.name)
            .bind(policy.limit.algorithm.as_str())
            .bind(policy.limit.limit as i64)
            .bind(policy.limit.window_ms as i64)
            .bind(policy.limit.burst.map(|b| b as i64))
            .bind(mode)
            .bind(self.clock.now_ms() as i64)
            .execute(pool)
            .await
            .map(drop)
            .map_err(db_error(&self.durable))?);
        self.registry.upsert(policy);
        Ok((self.policy(name)?, !existed))
    }

    pub async fn delete_policy(&self, name: &str) -> Result<(), RateLimitError> {
        if self.registry.is_config(name) {
            return Err(RateLimitError::ConfigPolicy(name.to_owned()));
        }
        self.policy(name)?;
        with_pool!(&self.durable, pool => sqlx::query("DELETE FROM ratelimit_policies WHERE name = $1")
            .bind(name)
            .execute(pool)
            .await
            .map(drop)
            .map_err(db_error(&self.durable))?);
        self.registry.remove(name);
        Ok(())
    }

    /// Reloads API policies from the database (other nodes' changes).
    pub async fn refresh(&self) -> Result<(), RateLimitError> {
        let sql = "SELECT name, algorithm, limit_n, window_ms, burst, failure_mode FROM ratelimit_policies";
        let writes_before_read = self.registry.writes();
        let rows: Vec<PolicyRow> = with_pool!(&self.durable, pool => sqlx::query_as(sql).fetch_all(pool).await.map_err(db_error(&self.durable))?);
        let policies = rows
            .into_iter()
            .filter_map(|(name, algorithm, limit, window_ms, burst, mode)| {
                let failure_mode = if mode == "fail_closed" {
                    crate::policy::FailureMode::FailClosed
                } else {
                    crate::policy::FailureMode::FailOpen
                };
                PolicySpec {
                    algorithm,
                    limit,
                    window_ms,
                    burst,
                    failure_mode,
                }
                .validate(&name, Source::Api, "")
                .ok()
            })
            .collect();
        self.registry.replace_api(policies, writes_before_read);
        Ok(())
    }
}

/// A failed call on `durable` as the 503 naming it.
fn db_error(durable: &Durable) -> impl Fn(sqlx::Error) -> RateLimitError + '_ {
    move |e| RateLimitError::Unavailable(durable.failed("ratelimit", &e).into())
}

fn record(outcome: &Outcome) {
    type Counters = RwLock<HashMap<String, [metrics::Counter; 2]>>;
    static COUNTERS: OnceLock<Counters> = OnceLock::new();
    let counters = COUNTERS.get_or_init(Default::default);
    for (p, d) in &outcome.results {
        let i = usize::from(!d.allowed);
        let cached = counters
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&p.name)
            .map(|c| c[i].clone());
        let counter = cached.unwrap_or_else(|| {
            let pair = ["allowed", "denied"]
                .map(|outcome| metrics::counter!(DECISIONS, "policy" => p.name.clone(), "outcome" => outcome));
            let c = pair[i].clone();
            counters.write().unwrap_or_else(PoisonError::into_inner).insert(p.name.clone(), pair);
            c
        });
        counter.increment(1);
    }
}

fn describe_metrics() {
    metrics::describe_counter!(
        DECISIONS,
        "rate-limit decisions by policy and outcome (allowed, denied)"
    );
    metrics::describe_histogram!(
        BACKEND_SECONDS,
        metrics::Unit::Seconds,
        "latency of rate-limit calls to the shared backend (Redis)"
    );
    metrics::describe_counter!(
        BACKEND_FAILURES,
        "rate-limit backend calls that failed or timed out (failure modes applied)"
    );
    metrics::describe_counter!(
        SHORT_CIRCUITS,
        "checks denied locally by the short-circuit, without a backend round trip"
    );
}

/// Unused-variant guard: every algorithm has a store code path.
const _: [Algorithm; 4] = Algorithm::ALL;

/// A key is 1 to [`MAX_KEY_BYTES`] bytes, wherever it is named (check, peek, reset).
fn check_key(key: &str) -> Result<(), RateLimitError> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(RateLimitError::field(
            "key",
            format!("must be 1 to {MAX_KEY_BYTES} bytes"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use futures_util::future::BoxFuture;
    use mortar_core::clock::ManualClock;

    use super::*;
    use crate::engine::Limit;
    use crate::policy::{FailureMode, Source};
    use crate::store::StoreError;

    /// The memory store, counting which entry point the service used.
    struct Counting {
        inner: MemoryStore,
        futures: AtomicUsize,
        sync: AtomicUsize,
    }

    impl RateLimitStore for Counting {
        fn name(&self) -> &'static str {
            "memory"
        }

        fn check<'a>(
            &'a self,
            checks: &'a [Check<'a>],
            cost: u64,
        ) -> BoxFuture<'a, Result<Vec<Decision>, StoreError>> {
            self.futures.fetch_add(1, Ordering::SeqCst);
            self.inner.check(checks, cost)
        }

        fn check_one_now(&self, check: &Check<'_>, cost: u64) -> Option<Decision> {
            self.sync.fetch_add(1, Ordering::SeqCst);
            self.inner.check_one_now(check, cost)
        }

        fn reset<'a>(
            &'a self,
            policy: &'a str,
            key: &'a str,
        ) -> BoxFuture<'a, Result<(), StoreError>> {
            self.inner.reset(policy, key)
        }
    }

    fn policy(name: &str, limit: u64) -> Policy {
        Policy {
            name: name.into(),
            limit: Limit {
                algorithm: Algorithm::FixedWindow,
                limit,
                window_ms: 60_000,
                burst: None,
            },
            failure_mode: FailureMode::FailClosed,
            source: Source::Config,
        }
    }

    #[tokio::test]
    async fn one_policy_is_decided_synchronously_several_through_the_atomic_check() {
        let clock = ManualClock::at(1_800_000_000_000);
        let store = Arc::new(Counting {
            inner: MemoryStore::new(Arc::new(clock.clone())),
            futures: AtomicUsize::new(0),
            sync: AtomicUsize::new(0),
        });
        let pool = sqlx::SqlitePool::connect_lazy("sqlite::memory:").unwrap();
        let svc = RateLimitService::with_store(
            store.clone(),
            false,
            &RateLimitConfig::default(),
            vec![policy("a", 2), policy("b", 1)],
            Durable::Sqlite(pool),
            Arc::new(clock),
        );
        let names = |n: &[&str]| n.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let one = svc.check(&names(&["a"]), "k", 1).await.unwrap();
        assert!(one.allowed);
        assert_eq!(one.decision().1.remaining, 1);
        assert_eq!(
            (
                store.sync.load(Ordering::SeqCst),
                store.futures.load(Ordering::SeqCst)
            ),
            (1, 0)
        );
        // a has 1 left, b 1: both pass, then b is spent and a multi-check takes nothing from a.
        assert!(
            svc.check(&names(&["a", "b"]), "k", 1)
                .await
                .unwrap()
                .allowed
        );
        let first = svc.check(&names(&["b", "a"]), "k2", 1).await.unwrap();
        assert!(first.allowed);
        let denied = svc.check(&names(&["b", "a"]), "k2", 1).await.unwrap();
        assert!(!denied.allowed);
        assert_eq!(denied.decision().0.name, "b");
        assert_eq!(store.futures.load(Ordering::SeqCst), 3);
        let peek = svc.peek("a", "k2").await.unwrap();
        assert_eq!(
            peek.decision().1.remaining,
            1,
            "the denied multi-check took nothing"
        );
        assert_eq!(store.sync.load(Ordering::SeqCst), 2);
        assert!(!svc.check(&names(&["a"]), "k", 1).await.unwrap().allowed);
        // Keys past the limit are refused wherever they are named.
        let long = "k".repeat(MAX_KEY_BYTES + 1);
        assert!(svc.peek("a", &long).await.is_err());
        assert!(svc.reset("a", &long).await.is_err());
    }
}
