//! `[resilience]` in `mortar.toml`: named breakers, bulkheads and retry policies.

use std::collections::BTreeMap;

use mortar_core::config::{ConfigError, KeyDoc};
use serde::{Deserialize, Serialize};

use crate::breaker::BreakerConfig;
use crate::bulkhead::BulkheadConfig;
use crate::retry::RetryConfig;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResilienceConfig {
    pub breakers: BTreeMap<String, BreakerConfig>,
    pub bulkheads: BTreeMap<String, BulkheadConfig>,
    pub retries: BTreeMap<String, RetryConfig>,
    /// How often a cluster node reloads the breakers defined through the API (other nodes'
    /// changes) and expires HTTP permits.
    pub refresh_ms: u64,
    /// How long a shared breaker's call may wait for Redis before the node's own breaker
    /// decides instead.
    pub redis_timeout_ms: u64,
}

impl Default for ResilienceConfig {
    fn default() -> Self {
        Self {
            breakers: BTreeMap::new(),
            bulkheads: BTreeMap::new(),
            retries: BTreeMap::new(),
            refresh_ms: 1000,
            redis_timeout_ms: 200,
        }
    }
}

impl ResilienceConfig {
    pub const DOCS: &[KeyDoc] = &[
        KeyDoc::new(
            "resilience.breakers",
            "named circuit breakers: [resilience.breakers.<name>] with window (count|time), window_size,\n\
             window_ms, failure_rate_threshold, slow_call_rate_threshold, slow_call_ms, minimum_calls,\n\
             wait_open_ms, half_open_calls, shared (state in Redis for every node; cluster mode with\n\
             Redis). They exist from start-up and are read-only through the API",
        ),
        KeyDoc::new(
            "resilience.refresh_ms",
            "how often a cluster node picks up breakers created, changed or deleted through the API\n\
             on other nodes, and expires unrecorded HTTP permits (default 1000)",
        ),
        KeyDoc::new(
            "resilience.redis_timeout_ms",
            "how long a shared breaker (shared = true) waits for Redis before this node's own breaker\n\
             decides instead (default 200)",
        ),
        KeyDoc::new(
            "resilience.bulkheads",
            "named bulkheads: [resilience.bulkheads.<name>] with max_permits, max_queue, queue_timeout_ms",
        ),
        KeyDoc::new(
            "resilience.retries",
            "named retry policies: [resilience.retries.<name>] with max_attempts, base_ms, max_ms,\n\
             budget_percent, budget_min_per_sec",
        ),
    ];

    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(10..=60_000).contains(&self.refresh_ms) {
            return Err(ConfigError(
                "key `resilience.refresh_ms`: must be 10 to 60000".into(),
            ));
        }
        if !(1..=60_000).contains(&self.redis_timeout_ms) {
            return Err(ConfigError(
                "key `resilience.redis_timeout_ms`: must be 1 to 60000".into(),
            ));
        }
        let fail = |kind: &str, name: &str, (field, why): (&str, &str)| {
            Err(ConfigError(format!(
                "key `resilience.{kind}.{name}.{field}`: {why}"
            )))
        };
        for (name, c) in &self.breakers {
            check_name("breakers", name)?;
            if let Err(errors) = c.validate() {
                let all = errors
                    .iter()
                    .map(|e| {
                        format!(
                            "key `resilience.breakers.{name}.{}`: {}",
                            e.field, e.message
                        )
                    })
                    .collect::<Vec<_>>();
                return Err(ConfigError(all.join("; ")));
            }
        }
        for (name, c) in &self.bulkheads {
            check_name("bulkheads", name)?;
            if let Err(e) = c.validate() {
                return fail("bulkheads", name, e);
            }
        }
        for (name, c) in &self.retries {
            check_name("retries", name)?;
            if let Err(e) = c.validate() {
                return fail("retries", name, e);
            }
        }
        Ok(())
    }
}

/// Names of breakers, bulkheads and retries: 1 to 128 of `A-Z a-z 0-9 _ . -`.
pub const POLICY_NAME: mortar_core::api::NameRule = mortar_core::api::NameRule::new(128, "_.-");

pub fn valid_name(name: &str) -> bool {
    POLICY_NAME.is_valid(name)
}

fn check_name(kind: &str, name: &str) -> Result<(), ConfigError> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(ConfigError(format!(
            "key `resilience.{kind}.{name}`: names are {}",
            POLICY_NAME.describe()
        )))
    }
}
