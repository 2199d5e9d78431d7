//! The four algorithms as pure functions: state in, decision and next state out.
//! No IO, no clock: `now_ms` is a parameter. The Redis backend's Lua script implements the
//! same arithmetic; the conformance suite checks that both agree.

use std::collections::VecDeque;

/// Which algorithm a policy uses (the names are the API's and the config's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// GCRA, the token bucket without a refill timer. Memory: one number per key.
    /// Starts full at `burst` (default `limit`), refills at `limit` per `window_ms`.
    TokenBucket,
    /// Every admitted request's timestamp. Exact over any window. Memory: one entry per
    /// admitted request in the last window.
    SlidingLog,
    /// Current and previous fixed-window counts, the previous weighted by how much of it
    /// still overlaps the sliding window. Memory: two counters per key. Never more than `limit`
    /// in an aligned window, never more than `2 × limit` in any window of `window_ms`; exact when
    /// the previous window's traffic was evenly spread.
    SlidingCounter,
    /// A counter per aligned window. Exact per aligned window; up to `2 × limit` across a
    /// window boundary. Memory: one counter per key.
    FixedWindow,
}

impl Algorithm {
    pub const ALL: [Algorithm; 4] = [
        Algorithm::TokenBucket,
        Algorithm::SlidingLog,
        Algorithm::SlidingCounter,
        Algorithm::FixedWindow,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::TokenBucket => "token_bucket",
            Algorithm::SlidingLog => "sliding_log",
            Algorithm::SlidingCounter => "sliding_counter",
            Algorithm::FixedWindow => "fixed_window",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

/// A validated limit: at most `limit` units per `window_ms` (token bucket: bursts of `burst`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub algorithm: Algorithm,
    pub limit: u64,
    pub window_ms: u64,
    /// Token bucket capacity; `None` means `limit`.
    pub burst: Option<u64>,
}

/// Largest limit and window we accept (keeps every product below 2^63 and Lua's 2^53).
pub const MAX_LIMIT: u64 = 1_000_000_000;
pub const MAX_WINDOW_MS: u64 = 366 * 24 * 3_600_000;

impl Limit {
    /// The most units one check may ask for.
    #[inline]
    pub fn capacity(&self) -> u64 {
        match self.algorithm {
            Algorithm::TokenBucket => self.burst.unwrap_or(self.limit),
            _ => self.limit,
        }
    }

    /// GCRA emission interval in microseconds (time to earn one unit).
    #[inline]
    fn emission_us(&self) -> u64 {
        (self.window_ms * 1000 / self.limit).max(1)
    }
}

/// Per-key state, one variant per algorithm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Theoretical arrival time, microseconds since the epoch.
    Gcra { tat_us: u64 },
    /// Admitted (timestamp ms, cost), oldest first, all within the last window.
    Log { entries: VecDeque<(u64, u64)> },
    /// Counts of the current aligned window (starting at `start_ms`) and the one before.
    Counter { start_ms: u64, prev: u64, curr: u64 },
    /// Count of the aligned window starting at `start_ms`.
    Fixed { start_ms: u64, count: u64 },
}

/// The answer for one policy and key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u64,
    /// Units still available after this decision.
    pub remaining: u64,
    /// Milliseconds until the quota is whole again (if nothing more is used).
    pub reset_ms: u64,
    /// When denied: milliseconds until the same request would be allowed. 0 when allowed.
    pub retry_after_ms: u64,
}

/// Decides whether `cost` units may be used now. Returns the decision and the state after
/// the decision (with the units taken if allowed). `cost` 0 peeks. `state` of another
/// algorithm (the policy changed) counts as empty.
#[inline]
pub fn decide(limit: &Limit, state: Option<&State>, now_ms: u64, cost: u64) -> (Decision, State) {
    match limit.algorithm {
        Algorithm::TokenBucket => gcra(limit, state, now_ms, cost),
        Algorithm::SlidingLog => sliding_log(limit, state, now_ms, cost),
        Algorithm::SlidingCounter => sliding_counter(limit, state, now_ms, cost),
        Algorithm::FixedWindow => fixed_window(limit, state, now_ms, cost),
    }
}

/// How long a key's state must be kept after `now_ms` (the TTL backends give it).
#[inline]
pub fn ttl_ms(limit: &Limit, state: &State, now_ms: u64) -> u64 {
    match state {
        State::Gcra { tat_us } => tat_us.saturating_sub(now_ms * 1000).div_ceil(1000),
        State::Log { entries } => entries
            .back()
            .map_or(0, |(ts, _)| (ts + limit.window_ms).saturating_sub(now_ms)),
        State::Counter { start_ms, .. } => (start_ms + 2 * limit.window_ms).saturating_sub(now_ms),
        State::Fixed { start_ms, .. } => (start_ms + limit.window_ms).saturating_sub(now_ms),
    }
    .max(1)
}

#[inline]
fn gcra(limit: &Limit, state: Option<&State>, now_ms: u64, cost: u64) -> (Decision, State) {
    let now = now_ms * 1000;
    let t = limit.emission_us();
    let capacity = limit.capacity();
    let tau = t * capacity;
    let tat = match state {
        Some(State::Gcra { tat_us }) => (*tat_us).max(now),
        _ => now,
    };
    let new_tat = tat + t * cost;
    // Allowed when the bucket, after paying, is not more than `capacity` behind.
    let allow_at = new_tat.saturating_sub(tau);
    if allow_at <= now {
        let used = new_tat - now;
        let remaining = (tau - used) / t;
        let decision = Decision {
            allowed: true,
            limit: capacity,
            remaining,
            reset_ms: used.div_ceil(1000),
            retry_after_ms: 0,
        };
        (decision, State::Gcra { tat_us: new_tat })
    } else {
        let used = tat - now;
        let decision = Decision {
            allowed: false,
            limit: capacity,
            remaining: tau.saturating_sub(used) / t,
            reset_ms: used.div_ceil(1000),
            retry_after_ms: (allow_at - now).div_ceil(1000),
        };
        (decision, State::Gcra { tat_us: tat })
    }
}

fn sliding_log(limit: &Limit, state: Option<&State>, now_ms: u64, cost: u64) -> (Decision, State) {
    let w = limit.window_ms;
    let mut entries = match state {
        Some(State::Log { entries }) => entries.clone(),
        _ => VecDeque::new(),
    };
    // Entries at or before now - w have left the window (the window is (now - w, now]).
    while entries.front().is_some_and(|(ts, _)| ts + w <= now_ms) {
        entries.pop_front();
    }
    let used: u64 = entries.iter().map(|(_, c)| c).sum();
    if used + cost <= limit.limit {
        if cost > 0 {
            entries.push_back((now_ms, cost));
        }
        let reset_ms = entries.back().map_or(0, |(ts, _)| ts + w - now_ms);
        let decision = Decision {
            allowed: true,
            limit: limit.limit,
            remaining: limit.limit - used - cost,
            reset_ms,
            retry_after_ms: 0,
        };
        return (decision, State::Log { entries });
    }
    // Earliest time enough old entries have left: walk oldest first.
    let mut still = used;
    let mut retry_at = now_ms;
    for (ts, c) in &entries {
        still -= c;
        retry_at = ts + w;
        if still + cost <= limit.limit {
            break;
        }
    }
    let reset_ms = entries.back().map_or(0, |(ts, _)| ts + w - now_ms);
    let decision = Decision {
        allowed: false,
        limit: limit.limit,
        remaining: limit.limit.saturating_sub(used),
        reset_ms,
        retry_after_ms: retry_at.saturating_sub(now_ms).max(1),
    };
    (decision, State::Log { entries })
}

fn sliding_counter(
    limit: &Limit,
    state: Option<&State>,
    now_ms: u64,
    cost: u64,
) -> (Decision, State) {
    let w = limit.window_ms;
    let start = now_ms - now_ms % w;
    let (prev, curr) = match state {
        Some(State::Counter {
            start_ms,
            prev,
            curr,
        }) if *start_ms == start => (*prev, *curr),
        Some(State::Counter { start_ms, curr, .. }) if *start_ms + w == start => (*curr, 0),
        _ => (0, 0),
    };
    let elapsed = now_ms - start;
    // Weighted previous count, rounded up so we never under-count: prev × (w − elapsed) / w.
    let weighted = (prev * (w - elapsed)).div_ceil(w);
    let used = weighted + curr;
    let window_end = start + w;
    if used + cost <= limit.limit {
        let decision = Decision {
            allowed: true,
            limit: limit.limit,
            remaining: limit.limit - used - cost,
            reset_ms: window_end - now_ms,
            retry_after_ms: 0,
        };
        return (
            decision,
            State::Counter {
                start_ms: start,
                prev,
                curr: curr + cost,
            },
        );
    }
    let retry_at = if curr + cost <= limit.limit && prev > 0 {
        // Within this window, once enough of the previous one has slid out:
        // need prev × (w − e) / w ≤ limit − curr − cost.
        let room = limit.limit - curr - cost;
        let e = w - (room * w) / prev;
        start + e.max(elapsed + 1)
    } else if cost <= limit.limit {
        // Next window: its previous count is our `curr`.
        let room = limit.limit - cost;
        let e = (room * w)
            .checked_div(curr)
            .map_or(0, |x| w.saturating_sub(x));
        window_end + e
    } else {
        window_end
    };
    let decision = Decision {
        allowed: false,
        limit: limit.limit,
        remaining: limit.limit.saturating_sub(used),
        reset_ms: window_end - now_ms,
        retry_after_ms: retry_at.saturating_sub(now_ms).max(1),
    };
    (
        decision,
        State::Counter {
            start_ms: start,
            prev,
            curr,
        },
    )
}

fn fixed_window(limit: &Limit, state: Option<&State>, now_ms: u64, cost: u64) -> (Decision, State) {
    let w = limit.window_ms;
    let start = now_ms - now_ms % w;
    let count = match state {
        Some(State::Fixed { start_ms, count }) if *start_ms == start => *count,
        _ => 0,
    };
    let reset_ms = start + w - now_ms;
    let allowed = count + cost <= limit.limit;
    let count_after = if allowed { count + cost } else { count };
    let decision = Decision {
        allowed,
        limit: limit.limit,
        remaining: limit.limit.saturating_sub(count_after),
        reset_ms,
        retry_after_ms: if allowed { 0 } else { reset_ms.max(1) },
    };
    (
        decision,
        State::Fixed {
            start_ms: start,
            count: count_after,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn lim(algorithm: Algorithm, limit: u64, window_ms: u64) -> Limit {
        Limit {
            algorithm,
            limit,
            window_ms,
            burst: None,
        }
    }

    /// Runs arrivals (time, cost) through the engine; returns the admitted ones.
    fn run(limit: &Limit, arrivals: &[(u64, u64)]) -> Vec<(u64, u64)> {
        let mut state: Option<State> = None;
        let mut admitted = Vec::new();
        for &(t, c) in arrivals {
            let (d, s) = decide(limit, state.as_ref(), t, c);
            if d.allowed {
                admitted.push((t, c));
            }
            state = Some(s);
        }
        admitted
    }

    fn max_in_any_window(admitted: &[(u64, u64)], w: u64) -> u64 {
        // Windows (t - w, t] ending at each admitted time cover every maximum.
        admitted
            .iter()
            .map(|&(t, _)| {
                admitted
                    .iter()
                    .filter(|&&(s, _)| s + w > t && s <= t)
                    .map(|&(_, c)| c)
                    .sum()
            })
            .max()
            .unwrap_or(0)
    }

    fn arrivals() -> impl Strategy<Value = Vec<(u64, u64)>> {
        prop::collection::vec((0u64..400, 1u64..4), 1..300).prop_map(|gaps| {
            let mut t = 1_700_000_000_000;
            gaps.into_iter()
                .map(|(gap, cost)| {
                    t += gap;
                    (t, cost)
                })
                .collect()
        })
    }

    proptest! {
        #[test]
        fn sliding_log_never_exceeds_limit_in_any_window(arr in arrivals(), limit in 1u64..20, w in 1u64..2000) {
            let l = lim(Algorithm::SlidingLog, limit, w);
            let admitted = run(&l, &arr);
            prop_assert!(max_in_any_window(&admitted, w) <= limit);
        }

        #[test]
        fn fixed_window_never_exceeds_limit_in_an_aligned_window(arr in arrivals(), limit in 1u64..20, w in 1u64..2000) {
            let l = lim(Algorithm::FixedWindow, limit, w);
            let admitted = run(&l, &arr);
            let mut per: std::collections::HashMap<u64, u64> = std::collections::HashMap::new();
            for (t, c) in admitted {
                *per.entry(t / w).or_default() += c;
            }
            prop_assert!(per.values().all(|&n| n <= limit));
        }

        #[test]
        fn sliding_counter_stays_within_its_bound(arr in arrivals(), limit in 1u64..20, w in 1u64..2000) {
            let l = lim(Algorithm::SlidingCounter, limit, w);
            let admitted = run(&l, &arr);
            prop_assert!(max_in_any_window(&admitted, w) <= 2 * limit);
            let mut per: std::collections::HashMap<u64, u64> = std::collections::HashMap::new();
            for (t, c) in &admitted {
                *per.entry(t / w).or_default() += c;
            }
            prop_assert!(per.values().all(|&n| n <= limit));
        }

        #[test]
        fn token_bucket_never_exceeds_burst_plus_refill(arr in arrivals(), limit in 1u64..20, w in 1u64..2000, burst in 1u64..30) {
            let l = Limit { algorithm: Algorithm::TokenBucket, limit, window_ms: w, burst: Some(burst) };
            let admitted = run(&l, &arr);
            let t_us = (w * 1000 / limit).max(1);
            // Over any interval of length d: at most burst + d / T units.
            for (i, &(a, _)) in admitted.iter().enumerate() {
                let mut sum = 0;
                for &(b, c) in &admitted[i..] {
                    sum += c;
                    let d_us = (b - a) * 1000;
                    prop_assert!(sum <= burst + d_us / t_us, "{sum} units in {d_us} us");
                }
            }
        }

        #[test]
        fn a_denied_request_is_allowed_at_retry_after(arr in arrivals(), limit in 1u64..20, w in 1u64..2000, alg in 0usize..4) {
            let l = lim(Algorithm::ALL[alg], limit, w);
            let mut state: Option<State> = None;
            for &(t, c) in &arr {
                let c = c.min(l.capacity());
                let (d, s) = decide(&l, state.as_ref(), t, c);
                if !d.allowed {
                    prop_assert!(d.retry_after_ms > 0);
                    let (later, _) = decide(&l, Some(&s), t + d.retry_after_ms, c);
                    prop_assert!(later.allowed, "{:?} denied at retry_after {} ({:?})", l.algorithm, d.retry_after_ms, s);
                    if d.retry_after_ms > 1 && l.algorithm != Algorithm::SlidingCounter {
                        let (early, _) = decide(&l, Some(&s), t + d.retry_after_ms - 2, c);
                        prop_assert!(!early.allowed, "{:?} retry_after {} is too late", l.algorithm, d.retry_after_ms);
                    }
                }
                state = Some(s);
            }
        }
    }

    #[test]
    fn token_bucket_starts_full_at_limit_and_refills() {
        let l = lim(Algorithm::TokenBucket, 10, 1000);
        let t0 = 1_000_000;
        let mut s = None;
        for i in 0..10 {
            let (d, next) = decide(&l, s.as_ref(), t0, 1);
            assert!(d.allowed, "request {i}");
            assert_eq!(d.remaining, 9 - i);
            s = Some(next);
        }
        let (d, _) = decide(&l, s.as_ref(), t0, 1);
        assert!(!d.allowed);
        assert_eq!(d.retry_after_ms, 100);
        let (d, _) = decide(&l, s.as_ref(), t0 + 100, 1);
        assert!(d.allowed);
    }

    #[test]
    fn burst_sets_bucket_capacity() {
        let l = Limit {
            algorithm: Algorithm::TokenBucket,
            limit: 10,
            window_ms: 1000,
            burst: Some(3),
        };
        let admitted = run(&l, &[(0, 1), (0, 1), (0, 1), (0, 1)]);
        assert_eq!(admitted.len(), 3);
    }

    #[test]
    fn fixed_window_resets_on_the_boundary() {
        let l = lim(Algorithm::FixedWindow, 2, 1000);
        let admitted = run(
            &l,
            &[
                (999, 1),
                (999, 1),
                (999, 1),
                (1000, 1),
                (1000, 1),
                (1000, 1),
            ],
        );
        assert_eq!(admitted, [(999, 1), (999, 1), (1000, 1), (1000, 1)]);
    }

    #[test]
    fn sliding_counter_weighs_the_previous_window() {
        let l = lim(Algorithm::SlidingCounter, 10, 1000);
        let mut s = None;
        for _ in 0..10 {
            s = Some(decide(&l, s.as_ref(), 500, 1).1);
        }
        // At 1250, 75% of the previous window still counts: ceil(7.5) = 8 used, 2 left.
        let (d, _) = decide(&l, s.as_ref(), 1250, 0);
        assert_eq!(d.remaining, 2);
    }

    #[test]
    fn peeking_consumes_nothing() {
        for alg in Algorithm::ALL {
            let l = lim(alg, 3, 1000);
            let (_, s) = decide(&l, None, 10, 1);
            let (a, s2) = decide(&l, Some(&s), 10, 0);
            let (b, _) = decide(&l, Some(&s2), 10, 0);
            assert_eq!(a, b, "{alg:?}");
            assert_eq!(a.remaining, 2, "{alg:?}");
        }
    }

    #[test]
    fn names_round_trip() {
        for a in Algorithm::ALL {
            assert_eq!(Algorithm::parse(a.as_str()), Some(a));
        }
        assert_eq!(Algorithm::parse("leaky"), None);
    }
}
