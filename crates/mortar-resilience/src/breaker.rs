//! The circuit breaker: a pure state machine ([`Core`], in `breaker/core.rs`), its settings
//! ([`BreakerConfig`], in `breaker/config.rs`) and its concurrent async wrapper ([`Breaker`]).
//!
//! Closed → Open when, over the sliding window and after `minimum_calls`, the failure rate or
//! the slow-call rate reaches its threshold. Open rejects until `wait_open_ms` has passed, then
//! Half-open admits **exactly** `half_open_calls` concurrent probes (a counter under the same
//! lock as the state, so no race admits one more); when they have all finished it closes or
//! reopens on their rates. ForcedOpen rejects everything; Disabled admits everything and records
//! nothing. Results of calls admitted before a transition are ignored (generation check).

mod config;
mod core;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

pub use self::config::{
    BreakerConfig, MAX_HALF_OPEN_CALLS, MAX_MINIMUM_CALLS, MAX_MS, MAX_WINDOW_SIZE,
    PERMIT_GRACE_MS, WindowKind,
};
pub use self::core::{Core, Rejected, State, Ticket, Transition};
use crate::window::Totals;

/// What counts as a failure.
pub type Classifier<T, E> = fn(&Result<T, E>) -> bool;

/// The error of a call through a breaker.
#[derive(Debug, thiserror::Error)]
pub enum BreakerError<E> {
    #[error("circuit breaker `{name}` is {}", state.as_str())]
    Rejected {
        name: String,
        state: State,
        retry_after_ms: u64,
    },
    #[error(transparent)]
    Inner(E),
}

type Listener = Box<dyn Fn(&str, &Transition) + Send + Sync>;

/// A named breaker shared by every caller of one dependency.
pub struct Breaker {
    name: String,
    counters: crate::metrics::CallCounters,
    core: Mutex<Core>,
    epoch: quanta::Instant,
    listeners: Mutex<Vec<Listener>>,
}

impl std::fmt::Debug for Breaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breaker")
            .field("name", &self.name)
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

/// A point-in-time view of a breaker.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub name: String,
    pub state: State,
    pub totals: Totals,
    pub config: BreakerConfig,
    pub last_transition: Option<Transition>,
    /// Half-open probes admitted and not yet finished.
    pub probes_in_flight: u32,
}

/// An admitted call in flight; dropping it unfinished counts as cancelled.
pub struct Permit<'a> {
    breaker: &'a Breaker,
    ticket: Option<Ticket>,
    started: quanta::Instant,
}

impl Permit<'_> {
    /// Records the outcome (`failed`).
    pub fn finish(mut self, failed: bool) {
        if let Some(t) = self.ticket.take() {
            let end = quanta::Instant::now();
            let elapsed = end.duration_since(self.started).as_millis() as u64;
            self.breaker
                .record_at(self.breaker.ms_since_epoch(end), t, Some(failed), elapsed);
        }
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if let Some(t) = self.ticket.take() {
            self.breaker.record(t, None, 0);
        }
    }
}

impl Breaker {
    pub fn new(name: &str, cfg: BreakerConfig) -> Arc<Self> {
        let b = Arc::new(Self {
            name: name.to_owned(),
            counters: crate::metrics::CallCounters::new(name),
            core: Mutex::new(Core::new(cfg)),
            epoch: quanta::Instant::now(),
            listeners: Mutex::default(),
        });
        crate::metrics::breaker_state(&b.name, State::Closed);
        b
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn state(&self) -> State {
        self.lock().state()
    }

    /// Calls `f` on every state change (after the log line and the metric).
    pub fn on_transition(&self, f: impl Fn(&str, &Transition) + Send + Sync + 'static) {
        self.listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Box::new(f));
    }

    /// Asks to make a call.
    pub fn try_acquire(&self) -> Result<Permit<'_>, Rejected> {
        // One clock read serves the state check and the call's start time.
        let started = quanta::Instant::now();
        let (result, t) = self.lock().acquire(self.ms_since_epoch(started));
        self.announce(t);
        match result {
            Ok(ticket) => Ok(Permit {
                breaker: self,
                ticket: Some(ticket),
                started,
            }),
            Err(r) => {
                self.counters.rejected.increment(1);
                Err(r)
            }
        }
    }

    /// Runs `f` through the breaker; an `Err` counts as a failure.
    pub async fn call<T, E, F, Fut>(&self, f: F) -> Result<T, BreakerError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.call_classified(f, Result::is_err).await
    }

    /// Runs `f`; `is_failure` decides what counts as a failure (e.g. 5xx but not 4xx).
    pub async fn call_classified<T, E, F, Fut>(
        &self,
        f: F,
        is_failure: impl Fn(&Result<T, E>) -> bool,
    ) -> Result<T, BreakerError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let permit = self.try_acquire().map_err(|r| BreakerError::Rejected {
            name: self.name.clone(),
            state: r.state,
            retry_after_ms: r.retry_after_ms,
        })?;
        let result = f().await;
        let failed = is_failure(&result);
        if failed {
            &self.counters.failure
        } else {
            &self.counters.success
        }
        .increment(1);
        permit.finish(failed);
        result.map_err(BreakerError::Inner)
    }

    pub fn force_open(&self) {
        let t = self.lock().force_open(self.now_ms());
        self.announce(t);
    }

    pub fn disable(&self) {
        let t = self.lock().disable(self.now_ms());
        self.announce(t);
    }

    /// Closed, window emptied (also what "force close" does).
    pub fn reset(&self) {
        let t = self.lock().reset(self.now_ms());
        self.announce(t);
    }

    /// New settings, keeping the state where it can ([`Core::reconfigure`]).
    pub fn reconfigure(&self, cfg: BreakerConfig) {
        let t = self.lock().reconfigure(cfg, self.now_ms());
        self.announce(t);
    }

    /// The settings in force.
    pub fn config(&self) -> BreakerConfig {
        self.lock().config().clone()
    }

    /// Asks to make a call whose outcome arrives later and elsewhere (an HTTP permit): the
    /// ticket, and when it was issued ([`Breaker::now_ms`]). Record it with
    /// [`Breaker::finish_ticket`] exactly once.
    pub fn acquire_ticket(&self) -> Result<(Ticket, u64), Rejected> {
        let now = self.now_ms();
        let (result, t) = self.lock().acquire(now);
        self.announce(t);
        result.map(|ticket| (ticket, now)).inspect_err(|_| {
            self.counters.rejected.increment(1);
        })
    }

    /// Records a ticket from [`Breaker::acquire_ticket`]: `Some(failed)` with the call's
    /// duration, or `None` when the call was not made or its permit expired (frees a probe
    /// slot, counts for nothing). Returns whether the outcome counted (`false` when the
    /// breaker changed state since the ticket was issued) and the state after it.
    pub fn finish_ticket(
        &self,
        ticket: Ticket,
        failed: Option<bool>,
        elapsed_ms: u64,
    ) -> (bool, State) {
        if let Some(failed) = failed {
            if failed {
                &self.counters.failure
            } else {
                &self.counters.success
            }
            .increment(1);
        }
        let now = self.now_ms();
        let (counted, t, state) = {
            let mut core = self.lock();
            let counted = failed.is_some() && core.counts(ticket);
            let t = core.record(now, ticket, failed, elapsed_ms);
            (counted, t, core.state())
        };
        self.announce(t);
        (counted, state)
    }

    pub fn snapshot(&self) -> Snapshot {
        let now = self.now_ms();
        let mut core = self.lock();
        Snapshot {
            name: self.name.clone(),
            state: core.state(),
            totals: core.totals(now),
            config: core.config().clone(),
            last_transition: core.last_transition(),
            probes_in_flight: core.probes_in_flight(),
        }
    }

    /// Monotonic milliseconds since this breaker was made.
    pub fn now_ms(&self) -> u64 {
        self.ms_since_epoch(quanta::Instant::now())
    }

    fn ms_since_epoch(&self, at: quanta::Instant) -> u64 {
        at.duration_since(self.epoch).as_millis() as u64
    }

    /// Converts a monotonic timestamp of this breaker to wall-clock epoch milliseconds.
    pub fn wall_ms(&self, at_ms: u64) -> u64 {
        let now_wall = mortar_core::clock::unix_time().as_millis() as u64;
        now_wall.saturating_sub(self.now_ms().saturating_sub(at_ms))
    }

    fn record(&self, ticket: Ticket, failed: Option<bool>, elapsed_ms: u64) {
        self.record_at(self.now_ms(), ticket, failed, elapsed_ms);
    }

    fn record_at(&self, now_ms: u64, ticket: Ticket, failed: Option<bool>, elapsed_ms: u64) {
        let t = self.lock().record(now_ms, ticket, failed, elapsed_ms);
        self.announce(t);
    }

    fn announce(&self, t: Option<Transition>) {
        let Some(t) = t else { return };
        tracing::warn!(breaker = %self.name, from = t.from.as_str(), to = t.to.as_str(), "circuit breaker state changed");
        crate::metrics::breaker_state(&self.name, t.to);
        for l in self
            .listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            l(&self.name, &t);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Core> {
        self.core.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Retry-After for a rejection, in whole seconds (at least 1).
pub fn retry_after_secs(r: &Rejected) -> u64 {
    Duration::from_millis(r.retry_after_ms).as_secs().max(1)
}
