//! `[ratelimit]` in `mortar.toml`.

use std::collections::BTreeMap;

use mortar_core::config::{ConfigError, KeyDoc};
use serde::{Deserialize, Serialize};

use crate::policy::{Policy, PolicySpec, Source};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    pub redis_timeout_ms: u64,
    pub short_circuit: bool,
    pub policy_refresh_ms: u64,
    pub policies: BTreeMap<String, PolicySpec>,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            redis_timeout_ms: 50,
            short_circuit: true,
            policy_refresh_ms: 1000,
            policies: BTreeMap::new(),
        }
    }
}

impl RateLimitConfig {
    pub const DOCS: &[KeyDoc] = &[
        KeyDoc::new(
            "ratelimit.redis_timeout_ms",
            "deadline of one Redis call; past it, each policy's failure_mode decides",
        ),
        KeyDoc::new(
            "ratelimit.short_circuit",
            "remember keys over their limit on this node and deny them without asking Redis",
        ),
        KeyDoc::new(
            "ratelimit.policy_refresh_ms",
            "how often a node reloads policies created through the API by other nodes",
        ),
        KeyDoc::new(
            "ratelimit.policies",
            "named policies: [ratelimit.policies.<name>] with algorithm (token_bucket, sliding_log,\n\
             sliding_counter, fixed_window), limit, window_ms, burst (token_bucket), failure_mode\n\
             (fail_open, fail_closed). These cannot be changed through the API",
        ),
    ];

    /// Validates the section; returns its policies.
    pub fn validate(&self) -> Result<Vec<Policy>, ConfigError> {
        let fail = |key: &str, why: &str| Err(ConfigError(format!("key `ratelimit.{key}`: {why}")));
        if self.redis_timeout_ms == 0 || self.redis_timeout_ms > 60_000 {
            return fail("redis_timeout_ms", "must be 1 to 60000");
        }
        if self.policy_refresh_ms < 10 {
            return fail("policy_refresh_ms", "must be at least 10");
        }
        let mut out = Vec::new();
        for (name, spec) in &self.policies {
            match spec.validate(name, Source::Config, &format!("ratelimit.policies.{name}")) {
                Ok(p) => out.push(p),
                Err(errors) => {
                    let e = &errors[0];
                    return Err(ConfigError(format!("key `{}`: {}", e.field, e.message)));
                }
            }
        }
        Ok(out)
    }
}
