//! `[resilience]` in `mortar.toml`: named breakers, bulkheads and retry policies.

use std::collections::BTreeMap;

use mortar_core::config::{ConfigError, KeyDoc};
use serde::{Deserialize, Serialize};

use crate::breaker::BreakerConfig;
use crate::bulkhead::BulkheadConfig;
use crate::retry::RetryConfig;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResilienceConfig {
    pub breakers: BTreeMap<String, BreakerConfig>,
    pub bulkheads: BTreeMap<String, BulkheadConfig>,
    pub retries: BTreeMap<String, RetryConfig>,
}

impl ResilienceConfig {
    pub const DOCS: &[KeyDoc] = &[
        KeyDoc::new(
            "resilience.breakers",
            "named circuit breakers: [resilience.breakers.<name>] with window (count|time), window_size,\n\
             window_ms, failure_rate_threshold, slow_call_rate_threshold, slow_call_ms, minimum_calls,\n\
             wait_open_ms, half_open_calls. They exist from start-up",
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
        let fail = |kind: &str, name: &str, (field, why): (&str, &str)| {
            Err(ConfigError(format!(
                "key `resilience.{kind}.{name}.{field}`: {why}"
            )))
        };
        for (name, c) in &self.breakers {
            check_name("breakers", name)?;
            if let Err(e) = c.validate() {
                return fail("breakers", name, e);
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
