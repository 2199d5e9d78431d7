//! Job rules, pure: the retry schedule, what a failure leads to, an attempt's deadline and
//! lease, and how an attempt whose lease ran out ended.

/// The tokens in a queue's rate bucket at `now_ms`: `tokens` (None = a new bucket, full) at
/// `at_ms`, refilled at `limit` per `period_ms`, never above `limit`.
pub fn refill(
    limit: f64,
    period_ms: u64,
    tokens: Option<f64>,
    at_ms: Option<u64>,
    now_ms: u64,
) -> f64 {
    match (tokens, at_ms) {
        (Some(t), Some(at)) => {
            let elapsed = now_ms.saturating_sub(at) as f64;
            (t + elapsed * limit / period_ms.max(1) as f64).min(limit)
        }
        _ => limit,
    }
}

/// Backoff before attempt `attempt + 1` after `attempt` failed: exponential, capped, with
/// "equal jitter" (half fixed, half random) so retries of many jobs spread out. `random` is in
/// [0, 1).
pub fn backoff_ms(base_ms: u64, max_ms: u64, attempt: u32, random: f64) -> u64 {
    let exp = base_ms
        .saturating_mul(1u64 << attempt.saturating_sub(1).min(40))
        .min(max_ms);
    let half = exp / 2;
    half + (half as f64 * random) as u64
}

/// What a failure does to a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    /// Retry at this time.
    RetryAt(u64),
    Dead,
}

/// Where a job stands in its budget of attempts: a retry (from the DLQ, or of a cancelled or
/// retryable job) gives it a fresh budget of `max_attempts` while attempt numbers keep
/// counting, so `base` is the attempts made before the last retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// The attempt that just ended (1-based, counted over the job's whole life).
    pub attempt: u32,
    /// Attempts made before the last retry.
    pub base: u32,
    pub max_attempts: u32,
    /// The backoff's base and cap, in milliseconds.
    pub backoff: (u64, u64),
}

impl Budget {
    /// The attempt's number within the current budget (1 for the first after a retry).
    pub fn used(&self) -> u32 {
        self.attempt.saturating_sub(self.base)
    }

    /// Whether this was the budget's last attempt.
    pub fn exhausted(&self) -> bool {
        self.used() >= self.max_attempts
    }
}

/// Decides the next state after an attempt failed: retried after the backoff (or
/// `retry_in_ms`) while the budget lasts and the failure is retryable, else dead.
pub fn after_failure(
    now_ms: u64,
    budget: Budget,
    retryable: bool,
    retry_in_ms: Option<u64>,
    random: f64,
) -> AfterFailure {
    if !retryable || budget.exhausted() {
        return AfterFailure::Dead;
    }
    let (base, max) = budget.backoff;
    let delay = retry_in_ms.unwrap_or_else(|| backoff_ms(base, max, budget.used(), random));
    AfterFailure::RetryAt(now_ms + delay)
}

/// When an attempt that started at `started_ms` must have ended: a timeout is the most one
/// attempt may run, however often its worker heartbeats.
pub fn deadline_ms(started_ms: u64, timeout_ms: u64) -> u64 {
    started_ms.saturating_add(timeout_ms)
}

/// The lease an attempt gets at `now_ms` when its worker asks for `lease_ms` more: never past
/// the attempt's deadline.
pub fn lease_until_ms(now_ms: u64, lease_ms: u64, deadline_ms: u64) -> u64 {
    now_ms.saturating_add(lease_ms).min(deadline_ms)
}

/// How an attempt whose lease ran out ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expired {
    /// It ran until its deadline: failed like any failure (backoff, then dead when the
    /// budget is spent).
    TimedOut { timeout_ms: u64 },
    /// Its worker stopped renewing the lease before the deadline (it died, hung or lost its
    /// connection): the job is available again at once, or dead when the budget is spent.
    LeaseLost { held_ms: u64 },
}

impl Expired {
    /// Which it was, from the attempt's start, timeout and the end of its last lease.
    pub fn of(started_ms: u64, timeout_ms: u64, lease_until_ms: u64) -> Self {
        if lease_until_ms >= deadline_ms(started_ms, timeout_ms) {
            Expired::TimedOut { timeout_ms }
        } else {
            Expired::LeaseLost {
                held_ms: lease_until_ms.saturating_sub(started_ms),
            }
        }
    }

    /// The attempt's error, as its history keeps it.
    pub fn error(&self) -> String {
        match self {
            Expired::TimedOut { timeout_ms } => format!("{TIMED_OUT} {timeout_ms} ms"),
            Expired::LeaseLost { held_ms } => format!(
                "lease expired after {held_ms} ms: no completion or heartbeat in time (the worker died, hung or lost its connection)"
            ),
        }
    }

    /// Where the job goes next.
    pub fn next(&self, now_ms: u64, budget: Budget, random: f64) -> AfterFailure {
        match self {
            Expired::TimedOut { .. } => after_failure(now_ms, budget, true, None, random),
            Expired::LeaseLost { .. } if budget.exhausted() => AfterFailure::Dead,
            Expired::LeaseLost { .. } => AfterFailure::RetryAt(now_ms),
        }
    }
}

/// How the error of an attempt that ran out of time begins.
pub const TIMED_OUT: &str = "timed out after";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_exponentially_within_jitter_bounds_and_caps() {
        for attempt in 1..10 {
            let exp = (1000u64 << (attempt - 1)).min(60_000);
            let lo = backoff_ms(1000, 60_000, attempt, 0.0);
            let hi = backoff_ms(1000, 60_000, attempt, 0.999);
            assert_eq!(lo, exp / 2);
            assert!(
                hi < exp && hi >= lo,
                "attempt {attempt}: {lo}..{hi} of {exp}"
            );
        }
        assert_eq!(backoff_ms(1000, 60_000, 50, 0.0), 30_000, "capped");
    }

    fn budget(attempt: u32, base: u32) -> Budget {
        Budget {
            attempt,
            base,
            max_attempts: 3,
            backoff: (1000, 60_000),
        }
    }

    #[test]
    fn failures_retry_until_attempts_run_out_or_not_retryable() {
        assert_eq!(
            after_failure(0, budget(1, 0), true, None, 0.0),
            AfterFailure::RetryAt(500)
        );
        assert_eq!(
            after_failure(0, budget(2, 0), true, Some(7), 0.0),
            AfterFailure::RetryAt(7)
        );
        assert_eq!(
            after_failure(0, budget(3, 0), true, None, 0.0),
            AfterFailure::Dead
        );
        assert_eq!(
            after_failure(0, budget(1, 0), false, None, 0.0),
            AfterFailure::Dead
        );
    }

    #[test]
    fn a_retry_gives_a_fresh_budget_and_backoff_while_numbers_keep_counting() {
        // Attempts 1-3 were spent before the retry: attempt 4 is the first of the new budget.
        assert_eq!(budget(4, 3).used(), 1);
        assert_eq!(
            after_failure(0, budget(4, 3), true, None, 0.0),
            AfterFailure::RetryAt(500),
            "the backoff starts over too"
        );
        assert_eq!(
            after_failure(0, budget(6, 3), true, None, 0.0),
            AfterFailure::Dead
        );
    }

    #[test]
    fn leases_never_pass_the_deadline_and_expiry_says_why() {
        let deadline = deadline_ms(1000, 2000);
        assert_eq!(deadline, 3000);
        assert_eq!(lease_until_ms(1500, 1000, deadline), 2500);
        assert_eq!(lease_until_ms(2500, 1000, deadline), 3000, "capped");
        assert_eq!(lease_until_ms(2500, u64::MAX, deadline), 3000);
        let timed_out = Expired::of(1000, 2000, 3000);
        assert_eq!(timed_out, Expired::TimedOut { timeout_ms: 2000 });
        assert_eq!(timed_out.error(), "timed out after 2000 ms");
        assert_eq!(
            timed_out.next(5000, budget(1, 0), 0.0),
            AfterFailure::RetryAt(5500),
            "a timeout backs off like a failure"
        );
        assert_eq!(timed_out.next(5000, budget(3, 0), 0.0), AfterFailure::Dead);
        let lost = Expired::of(1000, 2000, 1600);
        assert_eq!(lost, Expired::LeaseLost { held_ms: 600 });
        assert!(lost.error().starts_with("lease expired after 600 ms"));
        assert_eq!(
            lost.next(5000, budget(1, 0), 0.0),
            AfterFailure::RetryAt(5000),
            "a lost lease is available again at once"
        );
        assert_eq!(lost.next(5000, budget(3, 0), 0.0), AfterFailure::Dead);
    }

    #[test]
    #[allow(clippy::float_cmp)] // exact in binary: halves and whole numbers
    fn rate_bucket_refills_at_its_rate_and_caps() {
        assert_eq!(
            refill(10.0, 1000, None, None, 5),
            10.0,
            "a new bucket is full"
        );
        assert_eq!(refill(10.0, 1000, Some(0.0), Some(0), 500), 5.0);
        assert_eq!(refill(10.0, 1000, Some(2.5), Some(100), 200), 3.5);
        assert_eq!(
            refill(10.0, 1000, Some(9.0), Some(0), 60_000),
            10.0,
            "capped"
        );
        assert_eq!(
            refill(10.0, 1000, Some(1.0), Some(50), 10),
            1.0,
            "clock going back adds none"
        );
    }
}
