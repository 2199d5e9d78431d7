//! Retries: exponential backoff with full jitter, only for retryable errors of idempotent
//! operations, never past the deadline, and within a retry budget so retries cannot storm a
//! failing dependency (Envoy/Finagle style: retries ≤ `budget_percent` of recent requests,
//! with a floor of `budget_min_per_sec`).

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// Retry settings (`[resilience.retries.<name>]`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Attempts in all, the first included (1 = no retries).
    pub max_attempts: u32,
    /// Backoff before retry n is uniform in [0, min(max_ms, base_ms × 2^(n−1))].
    pub base_ms: u64,
    pub max_ms: u64,
    /// Retries may be at most this percentage of the requests of the last 10 s…
    pub budget_percent: f64,
    /// …but this many retries per second are always allowed.
    pub budget_min_per_sec: u32,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            base_ms: 100,
            max_ms: 10_000,
            budget_percent: 20.0,
            budget_min_per_sec: 10,
        }
    }
}

impl RetryConfig {
    pub fn validate(&self) -> Result<(), (&'static str, &'static str)> {
        let checks = [
            (self.max_attempts == 0, "max_attempts", "must be at least 1"),
            (self.base_ms == 0, "base_ms", "must be at least 1"),
            (
                self.max_ms < self.base_ms,
                "max_ms",
                "must be at least base_ms",
            ),
            (
                !(0.0..=1000.0).contains(&self.budget_percent),
                "budget_percent",
                "must be 0 to 1000",
            ),
        ];
        match checks.iter().find(|c| c.0) {
            Some((_, f, why)) => Err((f, why)),
            None => Ok(()),
        }
    }

    /// The backoff ceiling before retry `n` (1-based).
    pub fn ceiling(&self, n: u32) -> Duration {
        let exp = self.base_ms.saturating_mul(1u64 << (n - 1).min(40));
        Duration::from_millis(exp.min(self.max_ms))
    }

    /// A full-jitter backoff before retry `n`: uniform in `[0, ceiling(n)]`.
    pub fn backoff(&self, n: u32) -> Duration {
        let ceiling = self.ceiling(n).as_millis() as u64;
        Duration::from_millis(fastrand::u64(0..=ceiling))
    }
}

/// Whether an operation may run twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idempotency {
    Idempotent,
    NotIdempotent,
}

const BUDGET_WINDOW_SECS: u64 = 10;

/// Requests and retries per second over the last 10 s.
#[derive(Debug)]
struct Budget {
    epoch: Instant,
    /// (second, requests, retries)
    slots: [(u64, u64, u64); BUDGET_WINDOW_SECS as usize],
}

impl Budget {
    fn slot(&mut self) -> &mut (u64, u64, u64) {
        let sec = self.epoch.elapsed().as_secs();
        let s = &mut self.slots[(sec % BUDGET_WINDOW_SECS) as usize];
        if s.0 != sec {
            *s = (sec, 0, 0);
        }
        s
    }

    fn totals(&self) -> (u64, u64) {
        let sec = self.epoch.elapsed().as_secs();
        self.slots
            .iter()
            .filter(|s| s.0 != u64::MAX && s.0 + BUDGET_WINDOW_SECS > sec && s.0 <= sec)
            .fold((0, 0), |(a, b), s| (a + s.1, b + s.2))
    }
}

/// The outcome of trying to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GiveUp {
    Attempts,
    NotRetryable,
    NotIdempotent,
    Budget,
    Deadline,
}

/// A named retry policy with its budget.
#[derive(Debug)]
pub struct Retry {
    name: String,
    cfg: RetryConfig,
    budget: Mutex<Budget>,
}

impl Retry {
    pub fn new(name: &str, cfg: RetryConfig) -> Self {
        let budget = Budget {
            epoch: Instant::now(),
            slots: [(u64::MAX, 0, 0); BUDGET_WINDOW_SECS as usize],
        };
        Self {
            name: name.to_owned(),
            cfg,
            budget: Mutex::new(budget),
        }
    }

    pub fn config(&self) -> &RetryConfig {
        &self.cfg
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `f` until it succeeds, fails with an error `retryable` rejects, or a limit is hit
    /// (attempts, idempotency, budget, the current deadline). Returns the last error.
    pub async fn call<T, E, F, Fut>(
        &self,
        idempotency: Idempotency,
        mut f: F,
        retryable: impl Fn(&E) -> bool,
    ) -> Result<T, E>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.lock().slot().1 += 1;
        let mut attempt = 1;
        loop {
            let err = match f().await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let delay = match self.may_retry(attempt, idempotency, retryable(&err)) {
                Ok(d) => d,
                Err(why) => {
                    if why == GiveUp::Budget {
                        crate::metrics::budget_exhausted(&self.name);
                    }
                    return Err(err);
                }
            };
            crate::metrics::retry(&self.name);
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    /// Decides whether retry number `attempt` may happen, and after how long.
    pub fn may_retry(
        &self,
        attempt: u32,
        idempotency: Idempotency,
        retryable: bool,
    ) -> Result<Duration, GiveUp> {
        if attempt >= self.cfg.max_attempts {
            return Err(GiveUp::Attempts);
        }
        if !retryable {
            return Err(GiveUp::NotRetryable);
        }
        if idempotency == Idempotency::NotIdempotent {
            return Err(GiveUp::NotIdempotent);
        }
        let delay = self.cfg.backoff(attempt);
        if let Some(left) = mortar_core::deadline::remaining()
            && delay >= left
        {
            return Err(GiveUp::Deadline);
        }
        let mut budget = self.lock();
        let (requests, retries) = budget.totals();
        let allowed = (self.cfg.budget_percent / 100.0 * requests as f64)
            .max((u64::from(self.cfg.budget_min_per_sec) * BUDGET_WINDOW_SECS) as f64);
        if retries as f64 + 1.0 > allowed {
            return Err(GiveUp::Budget);
        }
        budget.slot().2 += 1;
        Ok(delay)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Budget> {
        self.budget.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn full_jitter_stays_within_the_exponential_ceiling() {
        let cfg = RetryConfig {
            base_ms: 100,
            max_ms: 1000,
            ..RetryConfig::default()
        };
        assert_eq!(cfg.ceiling(1), Duration::from_millis(100));
        assert_eq!(cfg.ceiling(3), Duration::from_millis(400));
        assert_eq!(cfg.ceiling(10), Duration::from_secs(1));
        let samples: Vec<u64> = (0..2000)
            .map(|_| cfg.backoff(3).as_millis() as u64)
            .collect();
        assert!(samples.iter().all(|&d| d <= 400));
        assert!(
            samples.iter().any(|&d| d < 50) && samples.iter().any(|&d| d > 350),
            "spread over the range"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn retries_retryable_errors_of_idempotent_calls() {
        let r = Retry::new(
            "t",
            RetryConfig {
                max_attempts: 4,
                ..RetryConfig::default()
            },
        );
        let n = AtomicU32::new(0);
        let out: Result<u32, &str> = r
            .call(
                Idempotency::Idempotent,
                || async {
                    if n.fetch_add(1, Ordering::SeqCst) < 2 {
                        Err("busy")
                    } else {
                        Ok(7)
                    }
                },
                |_| true,
            )
            .await;
        assert_eq!(out, Ok(7));
        assert_eq!(n.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn never_retries_non_idempotent_or_non_retryable_calls() {
        let r = Retry::new("t", RetryConfig::default());
        let n = AtomicU32::new(0);
        let _: Result<(), &str> = r
            .call(
                Idempotency::NotIdempotent,
                || async {
                    n.fetch_add(1, Ordering::SeqCst);
                    Err("x")
                },
                |_| true,
            )
            .await;
        assert_eq!(n.load(Ordering::SeqCst), 1);
        let _: Result<(), &str> = r
            .call(
                Idempotency::Idempotent,
                || async {
                    n.fetch_add(1, Ordering::SeqCst);
                    Err("400")
                },
                |_| false,
            )
            .await;
        assert_eq!(n.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn never_retries_past_the_deadline() {
        let r = Retry::new(
            "t",
            RetryConfig {
                max_attempts: 10,
                base_ms: 1000,
                max_ms: 1000,
                ..RetryConfig::default()
            },
        );
        let deadline = Instant::now() + Duration::from_millis(1);
        let n = AtomicU32::new(0);
        let started = Instant::now();
        let _: Result<(), &str> = mortar_core::deadline::scope(Some(deadline), async {
            r.call(
                Idempotency::Idempotent,
                || async {
                    n.fetch_add(1, Ordering::SeqCst);
                    Err("x")
                },
                |_| true,
            )
            .await
        })
        .await;
        // A backoff as long as (or longer than) what is left is never slept.
        assert!(Instant::now() - started < Duration::from_secs(1));
        assert!(n.load(Ordering::SeqCst) <= 2);
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_caps_retries_under_a_failing_dependency() {
        // 20% of requests, floor 1/s (10 per 10 s window).
        let r = Retry::new(
            "t",
            RetryConfig {
                max_attempts: 5,
                base_ms: 1,
                max_ms: 1,
                budget_percent: 20.0,
                budget_min_per_sec: 1,
            },
        );
        let calls = AtomicU32::new(0);
        for _ in 0..200 {
            let _: Result<(), &str> = r
                .call(
                    Idempotency::Idempotent,
                    || async {
                        calls.fetch_add(1, Ordering::SeqCst);
                        Err("down")
                    },
                    |_| true,
                )
                .await;
        }
        let retries = calls.load(Ordering::SeqCst) - 200;
        // Without a budget: 200 × 4 = 800 retries. With it: at most 20% of 200 requests.
        assert!(retries <= 40, "{retries} retries");
        assert!(retries >= 10, "the floor still allows some: {retries}");
    }
}
