//! Sliding windows of call outcomes: the last N calls, or the calls of the last T ms.
//! Pure: time is a parameter.

/// What the breaker needs from a window: totals of calls, failures and slow calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub calls: u64,
    pub failures: u64,
    pub slow: u64,
}

impl Totals {
    fn add(&mut self, failed: bool, slow: bool) {
        self.calls += 1;
        self.failures += u64::from(failed);
        self.slow += u64::from(slow);
    }

    fn sub(&mut self, other: Totals) {
        self.calls -= other.calls;
        self.failures -= other.failures;
        self.slow -= other.slow;
    }

    /// Failure rate in percent (0 with no calls).
    pub fn failure_rate(&self) -> f64 {
        rate(self.failures, self.calls)
    }

    /// Slow-call rate in percent (0 with no calls).
    pub fn slow_rate(&self) -> f64 {
        rate(self.slow, self.calls)
    }
}

fn rate(n: u64, of: u64) -> f64 {
    if of == 0 {
        0.0
    } else {
        n as f64 * 100.0 / of as f64
    }
}

/// A count-based or time-based sliding window.
#[derive(Debug, Clone)]
pub enum Window {
    /// The last `size` outcomes (a ring buffer; bit 0 failed, bit 1 slow).
    Count {
        ring: Vec<u8>,
        next: usize,
        filled: usize,
        totals: Totals,
    },
    /// Outcomes of the last `window_ms`, in 10 buckets.
    Time {
        bucket_ms: u64,
        buckets: Vec<(u64, Totals)>,
        totals: Totals,
    },
}

/// Buckets per time window: the window slides in steps of a tenth.
const BUCKETS: u64 = 10;

impl Window {
    pub fn count(size: usize) -> Self {
        Window::Count {
            ring: vec![0; size.max(1)],
            next: 0,
            filled: 0,
            totals: Totals::default(),
        }
    }

    pub fn time(window_ms: u64) -> Self {
        let bucket_ms = (window_ms / BUCKETS).max(1);
        Window::Time {
            bucket_ms,
            buckets: vec![(u64::MAX, Totals::default()); BUCKETS as usize],
            totals: Totals::default(),
        }
    }

    pub fn record(&mut self, now_ms: u64, failed: bool, slow: bool) {
        match self {
            Window::Count {
                ring,
                next,
                filled,
                totals,
            } => {
                if *filled == ring.len() {
                    let old = ring[*next];
                    totals.sub(Totals {
                        calls: 1,
                        failures: u64::from(old & 1),
                        slow: u64::from(old >> 1 & 1),
                    });
                } else {
                    *filled += 1;
                }
                ring[*next] = u8::from(failed) | u8::from(slow) << 1;
                *next = (*next + 1) % ring.len();
                totals.add(failed, slow);
            }
            Window::Time { .. } => {
                self.expire(now_ms);
                let Window::Time {
                    bucket_ms,
                    buckets,
                    totals,
                } = self
                else {
                    unreachable!()
                };
                let slot = now_ms / *bucket_ms;
                let b = &mut buckets[(slot % BUCKETS) as usize];
                if b.0 != slot {
                    *b = (slot, Totals::default());
                }
                b.1.add(failed, slow);
                totals.add(failed, slow);
            }
        }
    }

    /// Totals as of `now_ms` (time windows drop buckets that slid out).
    pub fn totals(&mut self, now_ms: u64) -> Totals {
        self.expire(now_ms);
        match self {
            Window::Count { totals, .. } | Window::Time { totals, .. } => *totals,
        }
    }

    pub fn clear(&mut self) {
        match self {
            Window::Count {
                ring,
                next,
                filled,
                totals,
            } => {
                ring.fill(0);
                *next = 0;
                *filled = 0;
                *totals = Totals::default();
            }
            Window::Time {
                buckets, totals, ..
            } => {
                buckets.fill((u64::MAX, Totals::default()));
                *totals = Totals::default();
            }
        }
    }

    fn expire(&mut self, now_ms: u64) {
        if let Window::Time {
            bucket_ms,
            buckets,
            totals,
        } = self
        {
            let current = now_ms / *bucket_ms;
            for b in buckets.iter_mut() {
                // A bucket counts while it is one of the last BUCKETS slots.
                if b.0 != u64::MAX && b.0 + BUCKETS <= current {
                    totals.sub(b.1);
                    *b = (u64::MAX, Totals::default());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_window_keeps_the_last_n() {
        let mut w = Window::count(3);
        w.record(0, true, false);
        w.record(0, false, true);
        w.record(0, false, false);
        assert_eq!(
            w.totals(0),
            Totals {
                calls: 3,
                failures: 1,
                slow: 1
            }
        );
        w.record(0, false, false);
        assert_eq!(
            w.totals(0),
            Totals {
                calls: 3,
                failures: 0,
                slow: 1
            }
        );
    }

    #[test]
    fn time_window_forgets_old_buckets() {
        let mut w = Window::time(1000);
        w.record(0, true, false);
        w.record(550, false, false);
        assert_eq!(w.totals(999).calls, 2);
        assert_eq!(
            w.totals(1000),
            Totals {
                calls: 1,
                failures: 0,
                slow: 0
            }
        );
        assert_eq!(w.totals(1550).calls, 0);
        w.record(5000, true, true);
        assert!((w.totals(5000).failure_rate() - 100.0).abs() < 1e-9);
    }
}
