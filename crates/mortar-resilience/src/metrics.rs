//! The block's metrics. Hot-path handles are created once per named policy.

use metrics::{Counter, counter, gauge};

use crate::breaker::State;

pub const BREAKER_STATE: &str = "mortar_resilience_breaker_state";
pub const CALLS: &str = "mortar_resilience_calls_total";
pub const RETRIES: &str = "mortar_resilience_retries_total";
pub const BUDGET_EXHAUSTED: &str = "mortar_resilience_retry_budget_exhausted_total";
pub const QUEUE_DEPTH: &str = "mortar_resilience_bulkhead_queue_depth";
pub const BULKHEAD_REJECTED: &str = "mortar_resilience_bulkhead_rejected_total";
pub const PERMITS: &str = "mortar_resilience_permits_total";
pub const SHARED_FALLBACKS: &str = "mortar_resilience_shared_fallbacks_total";

pub fn describe() {
    metrics::describe_gauge!(
        BREAKER_STATE,
        "circuit breaker state: 0 closed, 1 open, 2 half_open, 3 forced_open, 4 disabled"
    );
    metrics::describe_counter!(
        CALLS,
        "calls through a circuit breaker by outcome (success, failure, rejected)"
    );
    metrics::describe_counter!(
        PERMITS,
        "HTTP permits by result: admitted, rejected (503), too_many (429: permits in flight at \
         the bound), recorded (counted), ignored (cancelled or from before a state change)"
    );
    metrics::describe_counter!(
        SHARED_FALLBACKS,
        "calls of a shared breaker that redis did not answer (the node's own breaker decided)"
    );
    metrics::describe_counter!(RETRIES, "retries made");
    metrics::describe_counter!(
        BUDGET_EXHAUSTED,
        "retries refused because the retry budget was spent"
    );
    metrics::describe_gauge!(QUEUE_DEPTH, "callers waiting for a bulkhead permit");
    metrics::describe_counter!(
        BULKHEAD_REJECTED,
        "calls a bulkhead rejected (queue full or queue timeout)"
    );
}

/// A breaker's call counters.
#[derive(Clone)]
pub struct CallCounters {
    pub success: Counter,
    pub failure: Counter,
    pub rejected: Counter,
}

impl CallCounters {
    pub fn new(breaker: &str) -> Self {
        let c = |outcome: &'static str| counter!(CALLS, "breaker" => breaker.to_owned(), "outcome" => outcome);
        Self {
            success: c("success"),
            failure: c("failure"),
            rejected: c("rejected"),
        }
    }
}

pub fn breaker_state(breaker: &str, state: State) {
    let v = match state {
        State::Closed => 0.0,
        State::Open => 1.0,
        State::HalfOpen => 2.0,
        State::ForcedOpen => 3.0,
        State::Disabled => 4.0,
    };
    gauge!(BREAKER_STATE, "breaker" => breaker.to_owned()).set(v);
}

/// One HTTP permit event (`result`: admitted, rejected, recorded, ignored).
pub fn permit(breaker: &str, result: &'static str) {
    counter!(PERMITS, "breaker" => breaker.to_owned(), "result" => result).increment(1);
}

/// A shared breaker's call (`outcome`: success, failure, rejected; node-local breakers count
/// theirs in [`CallCounters`]).
pub fn shared_call(breaker: &str, outcome: &'static str) {
    counter!(CALLS, "breaker" => breaker.to_owned(), "outcome" => outcome).increment(1);
}

pub fn shared_fallback(breaker: &str) {
    counter!(SHARED_FALLBACKS, "breaker" => breaker.to_owned()).increment(1);
}

pub fn retry(name: &str) {
    counter!(RETRIES, "retry" => name.to_owned()).increment(1);
}

pub fn budget_exhausted(name: &str) {
    counter!(BUDGET_EXHAUSTED, "retry" => name.to_owned()).increment(1);
}

pub fn queue_depth(name: &str, depth: usize) {
    gauge!(QUEUE_DEPTH, "bulkhead" => name.to_owned()).set(depth as f64);
}

pub fn bulkhead_rejected(name: &str) {
    counter!(BULKHEAD_REJECTED, "bulkhead" => name.to_owned()).increment(1);
}
