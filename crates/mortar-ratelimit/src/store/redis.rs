//! Shared state in Redis (cluster mode): one round trip per check, atomic per check via Lua
//! (every key of a check carries the same hash tag, so it also works on Redis Cluster), time
//! from Redis `TIME` so nodes with skewed clocks agree, keys expire by themselves.
//!
//! Safety model: Redis without persistence forgets counters on restart — after a Redis restart
//! every key starts with a full quota. That errs towards allowing, never towards double-denying.

use std::sync::Arc;

use futures_util::future::{BoxFuture, FutureExt};
use mortar_core::clock::Clock;
use mortar_core::storage::Redis;

use super::{Check, RateLimitStore, StoreError};
use crate::engine::{Algorithm, Decision};

const SCRIPT: &str = include_str!("check.lua");

/// The Redis backend.
pub struct RedisStore {
    redis: Redis,
    script: redis::Script,
    /// Tests pin time; production leaves it `None` (Redis `TIME`).
    clock: Option<Arc<dyn Clock>>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.redis.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    pub fn new(redis: Redis) -> Self {
        Self {
            redis,
            script: redis::Script::new(SCRIPT),
            clock: None,
        }
    }

    /// Uses `clock` instead of Redis time (deterministic tests).
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// `<prefix>ratelimit:{<key>}:<policy>:<algorithm>` — the braces make every policy of one
    /// key hash to the same Redis Cluster slot.
    fn state_key(&self, policy: &str, key: &str, algorithm: Algorithm) -> String {
        self.redis.key(
            "ratelimit",
            &format!("{{{key}}}:{policy}:{}", algorithm.as_str()),
        )
    }
}

fn code(a: Algorithm) -> &'static str {
    match a {
        Algorithm::TokenBucket => "tb",
        Algorithm::SlidingLog => "log",
        Algorithm::SlidingCounter => "ctr",
        Algorithm::FixedWindow => "fix",
    }
}

fn err(e: &redis::RedisError) -> StoreError {
    StoreError::new("redis", e)
}

impl RateLimitStore for RedisStore {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn check<'a>(
        &'a self,
        checks: &'a [Check<'a>],
        cost: u64,
    ) -> BoxFuture<'a, Result<Vec<Decision>, StoreError>> {
        async move {
            let mut inv = self.script.prepare_invoke();
            for c in checks {
                inv.key(self.state_key(c.policy, c.key, c.limit.algorithm));
            }
            inv.arg(
                self.clock
                    .as_ref()
                    .map_or_else(String::new, |c| c.now_ms().to_string()),
            );
            inv.arg(cost);
            for c in checks {
                inv.arg(code(c.limit.algorithm))
                    .arg(c.limit.limit)
                    .arg(c.limit.window_ms)
                    .arg(c.limit.capacity());
            }
            // Redis known to be down: fail now (the service applies the failure mode) instead
            // of waiting out the deadline on a connection that is being refused.
            self.redis
                .gate
                .check()
                .map_err(|d| StoreError::new("redis", d))?;
            let mut conn = self.redis.conn();
            let raw: Vec<u64> = inv.invoke_async(&mut conn).await.map_err(|e| {
                if mortar_core::storage::gate::is_redis_connection_error(&e) {
                    self.redis.gate.trip(&e.to_string());
                }
                err(&e)
            })?;
            if raw.len() != checks.len() * 5 {
                return Err(StoreError::new(
                    "redis",
                    format!("unexpected reply of {} values", raw.len()),
                ));
            }
            Ok(raw
                .chunks_exact(5)
                .map(|v| Decision {
                    allowed: v[0] == 1,
                    limit: v[1],
                    remaining: v[2],
                    reset_ms: v[3],
                    retry_after_ms: v[4],
                })
                .collect())
        }
        .boxed()
    }

    fn reset<'a>(&'a self, policy: &'a str, key: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            let keys: Vec<String> = Algorithm::ALL
                .iter()
                .map(|a| self.state_key(policy, key, *a))
                .collect();
            let mut conn = self.redis.conn();
            redis::cmd("DEL")
                .arg(&keys)
                .query_async::<()>(&mut conn)
                .await
                .map_err(|e| err(&e))
        }
        .boxed()
    }
}
