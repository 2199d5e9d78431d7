//! Adaptive busy-polling for a RESP event loop (`cache.resp_busy_poll_us`).
//!
//! When a loop goes to sleep in `epoll_wait` between requests, the client's next `send` has to
//! wake its thread: on a loaded machine, and above all in a virtual machine where waking an
//! idle CPU is an inter-processor interrupt and an exit to the hypervisor, that wake-up costs
//! the *client* more than the server's whole command. With `-P 1` traffic the client is then
//! the bottleneck, and a server that sleeps less lets it go faster.
//!
//! So, like Seastar's reactor (`--idle-poll-time-us`, 200 µs by default) and the Linux guest
//! `haltpoll` idle driver, a loop may keep polling its sockets (`epoll_wait` with a zero timeout,
//! through tokio's ordinary scheduling) for up to `spin` after its last request before it
//! sleeps. Unlike Seastar it does so **only while the loop is busy**: the loop measures, over
//! windows of [`WINDOW`], the share of time it spends idle (asleep, or spinning without a
//! request), and spins only after a window in which it was busy at least half the time. A
//! lightly loaded server — the common case — sleeps exactly as before and costs no CPU at rest;
//! a loop near saturation turns its short idle gaps into polling, at most `spin` at a time.
//!
//! The price is CPU: a busy-polling loop shows near 100% of a core while it is loaded, and each
//! request costs more CPU (bench/RESULTS.md gives the figures next to the throughput gained).
//! `cache.resp_busy_poll_us = 0` turns it off.
//!
//! Mechanics: a loop-local `Pulse` (a thread-local: each loop is one thread with its own
//! current-thread runtime) counts the connections' reads and writes ([`activity`]). The
//! runtime's park hooks ([`before_park`], [`after_unpark`]) measure sleep and, when the loop is
//! busy and there was activity since the spinner last stopped, wake the [`spinner`] task
//! instead of sleeping. The spinner yields to the scheduler in a loop (each turn is one
//! non-blocking poll of the sockets, then the connections it made ready) until `spin` passes
//! without activity, then sleeps again. A turn in which no connection read or wrote counts as
//! idle time: it is what `mortar_cache_busy_poll_idle_seconds` adds up.

use std::cell::RefCell;
use std::future::poll_fn;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

/// How often the loop re-decides whether it is busy enough to spin.
pub const WINDOW: Duration = Duration::from_millis(10);

/// The busy/idle bookkeeping of one loop, over windows of [`WINDOW`]: whether the last
/// complete window was busy at least half the time.
#[derive(Debug)]
pub struct Meter {
    window_start: Instant,
    idle: Duration,
    busy: bool,
}

impl Meter {
    pub fn new(now: Instant) -> Self {
        Self {
            window_start: now,
            idle: Duration::ZERO,
            busy: false,
        }
    }

    /// Time the loop spent idle: asleep, or polling without finding a request.
    pub fn idle(&mut self, d: Duration) {
        self.idle += d;
    }

    /// Closes the window if it is over, and tells whether the loop counts as busy: idle less
    /// than half of the last complete window.
    pub fn busy(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed >= WINDOW {
            // Idle time is measured up to the previous event, so it can slightly exceed the
            // window; a long sleep makes the window long, and mostly idle.
            self.busy = self.idle * 2 < elapsed;
            self.window_start = now;
            self.idle = Duration::ZERO;
        }
        self.busy
    }
}

/// One loop's state, shared by its park hooks, its connections and its spinner.
struct Pulse {
    meter: Meter,
    /// Connection reads and writes, ever.
    activity: u64,
    /// `activity` when the spinner last stopped.
    seen: u64,
    /// When the loop went to sleep (set in `before_park` when it did not wake the spinner).
    parked_at: Option<Instant>,
    /// The sleeping spinner.
    spinner: Option<Waker>,
}

thread_local! {
    static PULSE: RefCell<Option<Pulse>> = const { RefCell::new(None) };
}

/// Turns busy-polling on for this thread's loop (before its runtime runs).
pub fn install() {
    PULSE.with(|p| {
        *p.borrow_mut() = Some(Pulse {
            meter: Meter::new(Instant::now()),
            activity: 0,
            seen: 0,
            parked_at: None,
            spinner: None,
        });
    });
}

fn with<R>(f: impl FnOnce(&mut Pulse) -> R) -> Option<R> {
    PULSE.with(|p| p.borrow_mut().as_mut().map(f))
}

/// A connection read or wrote (a no-op where busy-polling is off).
pub fn activity() {
    with(|p| p.activity += 1);
}

/// The runtime's `on_thread_park` hook: instead of sleeping, wake the spinner if the loop is
/// busy and requests came since it last stopped; else note when the sleep starts.
pub fn before_park() {
    with(|p| {
        let now = Instant::now();
        if p.meter.busy(now)
            && p.activity != p.seen
            && let Some(w) = p.spinner.take()
        {
            w.wake();
        } else {
            p.parked_at = Some(now);
        }
    });
}

/// The runtime's `on_thread_unpark` hook: the sleep was idle time.
pub fn after_unpark() {
    with(|p| {
        if let Some(t) = p.parked_at.take() {
            p.meter.idle(t.elapsed());
        }
    });
}

/// The spinner task of a loop with busy-polling on: sleeps until [`before_park`] wakes it,
/// then keeps the loop polling until `spin` passes without activity (or the loop stops being
/// busy), and sleeps again. `spent` is told the idle time of each spell of polling.
pub async fn spinner(spin: Duration, spent: impl Fn(Duration)) {
    loop {
        // Asleep until woken by `before_park`.
        let mut parked = false;
        poll_fn(|cx| {
            if parked {
                return Poll::Ready(());
            }
            parked = true;
            with(|p| p.spinner = Some(cx.waker().clone()));
            Poll::Pending
        })
        .await;
        let Some(mut seen) = with(|p| p.activity) else {
            return;
        };
        let mut last_activity = Instant::now();
        let mut prev = last_activity;
        let mut idle = Duration::ZERO;
        loop {
            tokio::task::yield_now().await;
            let now = Instant::now();
            // One turn in which no connection read or wrote was idle.
            let Some((activity, busy)) = with(|p| {
                if p.activity == seen {
                    p.meter.idle(now - prev);
                }
                (p.activity, p.meter.busy(now))
            }) else {
                return;
            };
            if activity == seen {
                idle += now - prev;
            } else {
                seen = activity;
                last_activity = now;
            }
            prev = now;
            if !busy || now - last_activity >= spin {
                break;
            }
        }
        with(|p| p.seen = seen);
        spent(idle);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meter_is_busy_after_a_window_idle_less_than_half_the_time() {
        let t0 = Instant::now();
        let mut m = Meter::new(t0);
        assert!(!m.busy(t0), "not busy before a first window closes");
        m.idle(WINDOW / 4);
        assert!(!m.busy(t0 + WINDOW / 2), "the window is not over yet");
        assert!(m.busy(t0 + WINDOW), "idle 25% of a window: busy");
        // The decision holds for the whole next window, whatever happens in it.
        m.idle(WINDOW);
        assert!(m.busy(t0 + WINDOW + WINDOW / 2));
        assert!(!m.busy(t0 + 2 * WINDOW), "idle all the window: not busy");
        // A long sleep is one long, idle window.
        m.idle(Duration::from_secs(3));
        assert!(!m.busy(t0 + 2 * WINDOW + Duration::from_secs(3)));
        m.idle(WINDOW / 2);
        assert!(
            !m.busy(t0 + 3 * WINDOW + Duration::from_secs(3)),
            "idle exactly half: not busy"
        );
    }
}
