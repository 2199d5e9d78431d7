//! Policies: validated specs (from `mortar.toml` or the API) and the registry that resolves
//! names on every check.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use mortar_core::FieldError;
use serde::{Deserialize, Serialize};

use crate::engine::{Algorithm, Limit, MAX_LIMIT, MAX_WINDOW_MS};

/// What a check does when the shared backend cannot answer in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    /// Allow (availability first). The default.
    #[default]
    FailOpen,
    /// Deny (protection first).
    FailClosed,
}

/// Where a policy was defined. Config policies cannot be changed through the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Config,
    Api,
}

/// A named, validated policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub name: String,
    pub limit: Limit,
    pub failure_mode: FailureMode,
    pub source: Source,
}

/// A policy as written by users (config section or request body), before validation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    /// `token_bucket`, `sliding_log`, `sliding_counter` or `fixed_window`.
    #[schema(pattern = "^(token_bucket|sliding_log|sliding_counter|fixed_window)$")]
    pub algorithm: String,
    /// Units allowed per window (1 to 10⁹).
    #[schema(minimum = 1, maximum = 1_000_000_000)]
    pub limit: i64,
    /// Window length in milliseconds (1 ms to 366 days).
    #[schema(minimum = 1, maximum = 31_622_400_000.0)]
    pub window_ms: i64,
    /// Token bucket only: capacity (default `limit`; 1 to 10⁹).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 1_000_000_000)]
    pub burst: Option<i64>,
    /// `fail_open` (default) or `fail_closed`.
    #[serde(default)]
    pub failure_mode: FailureMode,
}

/// Names that are routes under `/v1/ratelimit/`.
const RESERVED: &[&str] = &["check", "policies"];

/// Policy names: 1 to 128 of `A-Z a-z 0-9 _ . -`, not a reserved route word.
pub const POLICY_NAME: mortar_core::api::NameRule =
    mortar_core::api::NameRule::new(128, "_.-").reserving(RESERVED);

/// Checks a policy name against [`POLICY_NAME`]; the message says the rule.
pub fn validate_name(name: &str) -> Result<(), String> {
    POLICY_NAME.check("name", name).map_err(|e| e.message)
}

impl PolicySpec {
    /// Validates into a policy; every problem is reported with its field (prefixed by `at`).
    pub fn validate(
        &self,
        name: &str,
        source: Source,
        at: &str,
    ) -> Result<Policy, Vec<FieldError>> {
        let field = |f: &str| {
            if at.is_empty() {
                f.to_owned()
            } else {
                format!("{at}.{f}")
            }
        };
        let mut errors = Vec::new();
        if let Err(e) = validate_name(name) {
            errors.push(FieldError::new(
                if at.is_empty() {
                    "name".into()
                } else {
                    at.to_owned()
                },
                e,
            ));
        }
        let algorithm = Algorithm::parse(&self.algorithm);
        if algorithm.is_none() {
            errors.push(FieldError::new(
                field("algorithm"),
                format!("unknown algorithm `{}`: use token_bucket, sliding_log, sliding_counter or fixed_window", self.algorithm),
            ));
        }
        let in_range = |v: i64, max: u64| v >= 1 && v.unsigned_abs() <= max;
        if !in_range(self.limit, MAX_LIMIT) {
            errors.push(FieldError::new(
                field("limit"),
                format!("must be 1 to {MAX_LIMIT}"),
            ));
        }
        if !in_range(self.window_ms, MAX_WINDOW_MS) {
            errors.push(FieldError::new(
                field("window_ms"),
                format!("must be 1 to {MAX_WINDOW_MS} (one year)"),
            ));
        }
        if let Some(b) = self.burst {
            if algorithm.is_some_and(|a| a != Algorithm::TokenBucket) {
                errors.push(FieldError::new(
                    field("burst"),
                    "applies only to token_bucket",
                ));
            } else if !in_range(b, MAX_LIMIT) {
                errors.push(FieldError::new(
                    field("burst"),
                    format!("must be 1 to {MAX_LIMIT}"),
                ));
            }
        }
        match (errors.is_empty(), algorithm) {
            (true, Some(algorithm)) => Ok(Policy {
                name: name.to_owned(),
                limit: Limit {
                    algorithm,
                    limit: self.limit.unsigned_abs(),
                    window_ms: self.window_ms.unsigned_abs(),
                    burst: self.burst.map(i64::unsigned_abs),
                },
                failure_mode: self.failure_mode,
                source,
            }),
            _ => Err(errors),
        }
    }
}

impl Policy {
    pub fn spec(&self) -> PolicySpec {
        PolicySpec {
            algorithm: self.limit.algorithm.as_str().to_owned(),
            limit: self.limit.limit as i64,
            window_ms: self.limit.window_ms as i64,
            burst: self.limit.burst.map(|b| b as i64),
            failure_mode: self.failure_mode,
        }
    }
}

/// Name → policy: config policies (fixed) over API policies (refreshed from the database).
#[derive(Debug, Default)]
pub struct Registry {
    config: HashMap<String, Arc<Policy>>,
    api: RwLock<ApiPolicies>,
}

/// The API policies and a count of this node's own writes to them, so a
/// refresh that read the database before a local write cannot undo it.
#[derive(Debug, Default)]
struct ApiPolicies {
    writes: u64,
    by_name: HashMap<String, Arc<Policy>>,
}

impl Registry {
    pub fn new(config: impl IntoIterator<Item = Policy>) -> Self {
        Self {
            config: config
                .into_iter()
                .map(|p| (p.name.clone(), Arc::new(p)))
                .collect(),
            api: RwLock::default(),
        }
    }

    pub fn get(&self, name: &str) -> Option<Arc<Policy>> {
        self.config
            .get(name)
            .cloned()
            .or_else(|| self.read().by_name.get(name).cloned())
    }

    /// Every policy, sorted by name.
    pub fn all(&self) -> Vec<Arc<Policy>> {
        let api = self.read();
        let mut all: Vec<Arc<Policy>> = self
            .config
            .values()
            .chain(
                api.by_name
                    .values()
                    .filter(|p| !self.config.contains_key(&p.name)),
            )
            .cloned()
            .collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    pub fn is_config(&self, name: &str) -> bool {
        self.config.contains_key(name)
    }

    pub fn upsert(&self, policy: Policy) {
        let mut api = self.write();
        api.writes += 1;
        api.by_name.insert(policy.name.clone(), Arc::new(policy));
    }

    pub fn remove(&self, name: &str) {
        let mut api = self.write();
        api.writes += 1;
        api.by_name.remove(name);
    }

    /// How many local writes the registry has seen; take it before reading
    /// the database and hand it to [`Registry::replace_api`].
    pub fn writes(&self) -> u64 {
        self.read().writes
    }

    /// Replaces the API policies with what the database held, unless a local
    /// write landed since `writes_before_read` (the read may predate it; the
    /// next refresh catches up). Returns whether it replaced them.
    pub fn replace_api(&self, policies: Vec<Policy>, writes_before_read: u64) -> bool {
        let mut api = self.write();
        if api.writes != writes_before_read {
            return false;
        }
        api.by_name = policies
            .into_iter()
            .map(|p| (p.name.clone(), Arc::new(p)))
            .collect();
        true
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, ApiPolicies> {
        self.api
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, ApiPolicies> {
        self.api
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(algorithm: &str, limit: i64, window_ms: i64, burst: Option<i64>) -> PolicySpec {
        PolicySpec {
            algorithm: algorithm.into(),
            limit,
            window_ms,
            burst,
            failure_mode: FailureMode::FailOpen,
        }
    }

    #[test]
    fn validation_names_every_bad_field() {
        let errs = spec("leaky", 0, -5, Some(3))
            .validate("bad name", Source::Api, "")
            .unwrap_err();
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["name", "algorithm", "limit", "window_ms"]);
        let errs = spec("fixed_window", 10, 1000, Some(3))
            .validate("ok", Source::Api, "ratelimit.policies.ok")
            .unwrap_err();
        assert_eq!(errs[0].field, "ratelimit.policies.ok.burst");
        assert!(
            spec("token_bucket", 10, 1000, Some(3))
                .validate("ok", Source::Api, "")
                .is_ok()
        );
        assert!(
            spec("token_bucket", 10, 1000, None)
                .validate("check", Source::Api, "")
                .is_err()
        );
    }

    #[test]
    fn config_policies_shadow_api_policies() {
        let p = |name: &str, limit: i64, source| {
            spec("fixed_window", limit, 1000, None)
                .validate(name, source, "")
                .unwrap()
        };
        let reg = Registry::new([p("a", 1, Source::Config)]);
        assert!(reg.replace_api(vec![p("a", 2, Source::Api), p("b", 3, Source::Api)], 0));
        assert_eq!(reg.get("a").unwrap().limit.limit, 1);
        assert_eq!(reg.get("b").unwrap().limit.limit, 3);
        assert_eq!(reg.all().len(), 2);
    }

    /// A refresh reads the database, a local PUT lands, then the refresh
    /// replaces the policies: the new policy must survive (it once vanished
    /// until the next refresh, and checks against it answered 404).
    #[test]
    fn a_refresh_that_read_before_a_local_write_does_not_undo_it() {
        let p = |name: &str| {
            spec("fixed_window", 1, 1000, None)
                .validate(name, Source::Api, "")
                .unwrap()
        };
        let reg = Registry::new([]);
        let before_read = reg.writes();
        reg.upsert(p("new"));
        assert!(!reg.replace_api(vec![p("old")], before_read));
        assert!(reg.get("new").is_some());
        assert!(reg.get("old").is_none());
        // A refresh that read after the write applies.
        let before_read = reg.writes();
        assert!(reg.replace_api(vec![p("new"), p("old")], before_read));
        assert!(reg.get("old").is_some());
        reg.remove("old");
        assert!(!reg.replace_api(vec![p("new"), p("old")], before_read));
        assert!(reg.get("old").is_none());
    }
}
