//! A breaker's settings (`[resilience.breakers.<name>]` in `mortar.toml`, or the body of
//! `PUT /v1/resilience/breakers/{name}`) and their validation, field by field.

use mortar_core::FieldError;

/// The longest window, open wait or slow-call bound: one day.
pub const MAX_MS: u64 = 86_400_000;
/// The largest count window (a byte per call on this node, a list entry in Redis).
pub const MAX_WINDOW_SIZE: usize = 1_000_000;
/// The most calls a window must hold before its rates are judged.
pub const MAX_MINIMUM_CALLS: u64 = 1_000_000_000;
/// The most concurrent probes in half-open.
pub const MAX_HALF_OPEN_CALLS: u32 = 10_000;

/// Breaker settings (`[resilience.breakers.<name>]`). Every field is optional: a missing one
/// takes its default.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// `count` (the last `window_size` calls) or `time` (the calls of the last `window_ms`).
    pub window: WindowKind,
    /// Calls in a count window (1 to 1,000,000; default 100).
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub window_size: usize,
    /// Length of a time window in ms (1 to 86,400,000; default 60,000).
    #[schema(minimum = 1, maximum = 86_400_000)]
    pub window_ms: u64,
    /// Open when this percentage of calls fail (above 0, at most 100; default 50).
    #[schema(exclusive_minimum = 0, maximum = 100)]
    pub failure_rate_threshold: f64,
    /// Open when this percentage of calls are slow (above 0, at most 100; 100 = only when all
    /// are slow, the default).
    #[schema(exclusive_minimum = 0, maximum = 100)]
    pub slow_call_rate_threshold: f64,
    /// A call that takes at least this many ms counts as slow (0 to 86,400,000; default
    /// 60,000).
    #[schema(minimum = 0, maximum = 86_400_000)]
    pub slow_call_ms: u64,
    /// Rates are judged only once the window holds this many calls (1 to 1,000,000,000, and at
    /// most `window_size` for a count window; default 10).
    #[schema(minimum = 1, maximum = 1_000_000_000)]
    pub minimum_calls: u64,
    /// How long to stay open before probing, in ms (0 to 86,400,000; default 30,000).
    #[schema(minimum = 0, maximum = 86_400_000)]
    pub wait_open_ms: u64,
    /// Concurrent probe calls admitted in half-open (1 to 10,000; default 3).
    #[schema(minimum = 1, maximum = 10_000)]
    pub half_open_calls: u32,
    /// Keep state and window in Redis so every node of the cluster sees the same breaker
    /// (`/acquire` and `/record` only; cluster mode with Redis). Default false: per node.
    pub shared: bool,
}

/// The kind of sliding window.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum WindowKind {
    Count,
    Time,
}

impl WindowKind {
    pub fn as_str(self) -> &'static str {
        match self {
            WindowKind::Count => "count",
            WindowKind::Time => "time",
        }
    }
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            window: WindowKind::Count,
            window_size: 100,
            window_ms: 60_000,
            failure_rate_threshold: 50.0,
            slow_call_rate_threshold: 100.0,
            slow_call_ms: 60_000,
            minimum_calls: 10,
            wait_open_ms: 30_000,
            half_open_calls: 3,
            shared: false,
        }
    }
}

impl BreakerConfig {
    /// Checks every field; each error names its field (unprefixed: `window_size`).
    pub fn validate(&self) -> Result<(), Vec<FieldError>> {
        let pct = |v: f64| v > 0.0 && v <= 100.0;
        let mut errors = Vec::new();
        let mut check = |bad: bool, field: &str, why: String| {
            if bad {
                errors.push(FieldError::new(field, why));
            }
        };
        check(
            self.window_size == 0 || self.window_size > MAX_WINDOW_SIZE,
            "window_size",
            format!("must be 1 to {MAX_WINDOW_SIZE}"),
        );
        check(
            self.window_ms == 0 || self.window_ms > MAX_MS,
            "window_ms",
            format!("must be 1 to {MAX_MS} (one day)"),
        );
        check(
            !pct(self.failure_rate_threshold),
            "failure_rate_threshold",
            "must be above 0 and at most 100".into(),
        );
        check(
            !pct(self.slow_call_rate_threshold),
            "slow_call_rate_threshold",
            "must be above 0 and at most 100".into(),
        );
        check(
            self.slow_call_ms > MAX_MS,
            "slow_call_ms",
            format!("must be at most {MAX_MS} (one day)"),
        );
        if self.minimum_calls == 0 || self.minimum_calls > MAX_MINIMUM_CALLS {
            check(
                true,
                "minimum_calls",
                format!("must be 1 to {MAX_MINIMUM_CALLS}"),
            );
        } else {
            check(
                self.window == WindowKind::Count && self.minimum_calls > self.window_size as u64,
                "minimum_calls",
                format!(
                    "must be at most window_size ({}): a count window never holds more calls, so \
                     the breaker could never open",
                    self.window_size
                ),
            );
        }
        check(
            self.wait_open_ms > MAX_MS,
            "wait_open_ms",
            format!("must be at most {MAX_MS} (one day)"),
        );
        check(
            self.half_open_calls == 0 || self.half_open_calls > MAX_HALF_OPEN_CALLS,
            "half_open_calls",
            format!("must be 1 to {MAX_HALF_OPEN_CALLS}"),
        );
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// Whether `other` keeps this window's shape (kind and size), so its counts still apply.
    pub fn same_window(&self, other: &BreakerConfig) -> bool {
        self.window == other.window
            && match self.window {
                WindowKind::Count => self.window_size == other.window_size,
                WindowKind::Time => self.window_ms == other.window_ms,
            }
    }

    /// How long an HTTP permit (`/acquire`) may wait for its `/record`: the slow-call bound
    /// plus a minute, so a slow call can still be recorded as slow.
    pub fn permit_ttl_ms(&self) -> u64 {
        self.slow_call_ms + PERMIT_GRACE_MS
    }
}

/// What a permit gets beyond `slow_call_ms` before it expires.
pub const PERMIT_GRACE_MS: u64 = 60_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_every_bad_field() {
        let bad = BreakerConfig {
            window_size: 0,
            failure_rate_threshold: 0.0,
            slow_call_rate_threshold: 101.0,
            slow_call_ms: MAX_MS + 1,
            half_open_calls: 0,
            wait_open_ms: u64::MAX,
            ..BreakerConfig::default()
        };
        let fields: Vec<String> = bad
            .validate()
            .unwrap_err()
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(
            fields,
            [
                "window_size",
                "failure_rate_threshold",
                "slow_call_rate_threshold",
                "slow_call_ms",
                "minimum_calls",
                "wait_open_ms",
                "half_open_calls"
            ]
        );
        assert!(BreakerConfig::default().validate().is_ok());
        let never_opens = BreakerConfig {
            window_size: 5,
            minimum_calls: 6,
            ..BreakerConfig::default()
        };
        assert!(
            never_opens.validate().unwrap_err()[0]
                .message
                .contains("never open")
        );
        assert!(
            BreakerConfig {
                window: WindowKind::Time,
                ..never_opens
            }
            .validate()
            .is_ok()
        );
    }
}
