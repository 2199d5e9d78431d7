//! Job rules, pure: validation, the retry schedule, what a failure leads to.

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

/// Decides the next state after attempt `attempt` (1-based) failed.
pub fn after_failure(
    now_ms: u64,
    attempt: u32,
    max_attempts: u32,
    retryable: bool,
    retry_in_ms: Option<u64>,
    backoff: (u64, u64),
    random: f64,
) -> AfterFailure {
    if !retryable || attempt >= max_attempts {
        return AfterFailure::Dead;
    }
    let delay = retry_in_ms.unwrap_or_else(|| backoff_ms(backoff.0, backoff.1, attempt, random));
    AfterFailure::RetryAt(now_ms + delay)
}

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

    #[test]
    fn failures_retry_until_attempts_run_out_or_not_retryable() {
        let b = (1000, 60_000);
        assert_eq!(
            after_failure(0, 1, 3, true, None, b, 0.0),
            AfterFailure::RetryAt(500)
        );
        assert_eq!(
            after_failure(0, 2, 3, true, Some(7), b, 0.0),
            AfterFailure::RetryAt(7)
        );
        assert_eq!(
            after_failure(0, 3, 3, true, None, b, 0.0),
            AfterFailure::Dead
        );
        assert_eq!(
            after_failure(0, 1, 3, false, None, b, 0.0),
            AfterFailure::Dead
        );
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
