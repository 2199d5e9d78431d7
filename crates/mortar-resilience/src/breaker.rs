//! The circuit breaker: a pure state machine ([`Core`]) and its concurrent async wrapper
//! ([`Breaker`]).
//!
//! Closed → Open when, over the sliding window and after `minimum_calls`, the failure rate or
//! the slow-call rate reaches its threshold. Open rejects until `wait_open_ms` has passed, then
//! Half-open admits **exactly** `half_open_calls` concurrent probes (a counter under the same
//! lock as the state, so no race admits one more); when they have all finished it closes or
//! reopens on their rates. ForcedOpen rejects everything; Disabled admits everything and records
//! nothing. Results of calls admitted before a transition are ignored (generation check).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::window::{Totals, Window};

/// Breaker settings (`[resilience.breakers.<name>]`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// `count` (the last `window_size` calls) or `time` (the calls of the last `window_ms`).
    pub window: WindowKind,
    pub window_size: usize,
    pub window_ms: u64,
    /// Open when this percentage of calls fail (1–100).
    pub failure_rate_threshold: f64,
    /// Open when this percentage of calls are slow (1–100; 100 = only when all are slow).
    pub slow_call_rate_threshold: f64,
    /// A call slower than this counts as slow.
    pub slow_call_ms: u64,
    /// Rates are judged only once the window holds this many calls.
    pub minimum_calls: u64,
    /// How long to stay open before probing.
    pub wait_open_ms: u64,
    /// Concurrent probe calls admitted in half-open.
    pub half_open_calls: u32,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum WindowKind {
    Count,
    Time,
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
        }
    }
}

impl BreakerConfig {
    /// Checks ranges; errors name the field.
    pub fn validate(&self) -> Result<(), (&'static str, &'static str)> {
        let pct = |v: f64| v > 0.0 && v <= 100.0;
        let checks = [
            (self.window_size == 0, "window_size", "must be at least 1"),
            (self.window_ms == 0, "window_ms", "must be at least 1"),
            (
                !pct(self.failure_rate_threshold),
                "failure_rate_threshold",
                "must be above 0 and at most 100",
            ),
            (
                !pct(self.slow_call_rate_threshold),
                "slow_call_rate_threshold",
                "must be above 0 and at most 100",
            ),
            (
                self.minimum_calls == 0,
                "minimum_calls",
                "must be at least 1",
            ),
            (
                self.half_open_calls == 0,
                "half_open_calls",
                "must be at least 1",
            ),
        ];
        match checks.iter().find(|c| c.0) {
            Some((_, field, why)) => Err((field, why)),
            None => Ok(()),
        }
    }
}

/// The breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Closed,
    Open,
    HalfOpen,
    ForcedOpen,
    Disabled,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
            State::ForcedOpen => "forced_open",
            State::Disabled => "disabled",
        }
    }
}

/// A state change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub from: State,
    pub to: State,
    pub at_ms: u64,
}

/// Permission to make one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    kind: TicketKind,
    generation: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TicketKind {
    Normal,
    Probe,
    Untracked,
}

/// The call was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejected {
    pub state: State,
    /// When an open breaker will probe again (0 when unknown, e.g. forced open).
    pub retry_after_ms: u64,
}

/// The pure state machine. Every method takes `now_ms` (monotonic milliseconds).
#[derive(Debug, Clone)]
pub struct Core {
    cfg: BreakerConfig,
    state: State,
    window: Window,
    generation: u64,
    opened_at_ms: u64,
    probes_admitted: u32,
    probes: Totals,
    last_transition: Option<Transition>,
}

impl Core {
    pub fn new(cfg: BreakerConfig) -> Self {
        let window = match cfg.window {
            WindowKind::Count => Window::count(cfg.window_size),
            WindowKind::Time => Window::time(cfg.window_ms),
        };
        Self {
            cfg,
            state: State::Closed,
            window,
            generation: 0,
            opened_at_ms: 0,
            probes_admitted: 0,
            probes: Totals::default(),
            last_transition: None,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn config(&self) -> &BreakerConfig {
        &self.cfg
    }

    pub fn last_transition(&self) -> Option<Transition> {
        self.last_transition
    }

    /// Window totals as of `now_ms`.
    pub fn totals(&mut self, now_ms: u64) -> Totals {
        self.window.totals(now_ms)
    }

    /// Asks to make a call. May move Open → HalfOpen (returned as the transition).
    pub fn acquire(&mut self, now_ms: u64) -> (Result<Ticket, Rejected>, Option<Transition>) {
        let mut transition = None;
        if self.state == State::Open && now_ms >= self.opened_at_ms + self.cfg.wait_open_ms {
            transition = Some(self.move_to(State::HalfOpen, now_ms));
        }
        let kind = match self.state {
            State::Closed => Ok(TicketKind::Normal),
            State::Disabled => Ok(TicketKind::Untracked),
            State::HalfOpen if self.probes_admitted < self.cfg.half_open_calls => {
                self.probes_admitted += 1;
                Ok(TicketKind::Probe)
            }
            State::HalfOpen => Err(Rejected {
                state: State::HalfOpen,
                retry_after_ms: 0,
            }),
            State::Open => Err(Rejected {
                state: State::Open,
                retry_after_ms: (self.opened_at_ms + self.cfg.wait_open_ms).saturating_sub(now_ms),
            }),
            State::ForcedOpen => Err(Rejected {
                state: State::ForcedOpen,
                retry_after_ms: 0,
            }),
        };
        (
            kind.map(|kind| Ticket {
                kind,
                generation: self.generation,
            }),
            transition,
        )
    }

    /// Records a finished call. `None` for `failed` means the call was cancelled (it frees its
    /// probe slot and counts for nothing).
    pub fn record(
        &mut self,
        now_ms: u64,
        ticket: Ticket,
        failed: Option<bool>,
        elapsed_ms: u64,
    ) -> Option<Transition> {
        if ticket.generation != self.generation {
            return None;
        }
        let slow = elapsed_ms >= self.cfg.slow_call_ms;
        match (ticket.kind, failed) {
            (TicketKind::Untracked, _) | (TicketKind::Normal, None) => None,
            (TicketKind::Probe, None) => {
                self.probes_admitted -= 1;
                None
            }
            (TicketKind::Normal, Some(failed)) => {
                self.window.record(now_ms, failed, slow);
                let t = self.window.totals(now_ms);
                (t.calls >= self.cfg.minimum_calls && self.tripped(t)).then(|| self.open(now_ms))
            }
            (TicketKind::Probe, Some(failed)) => {
                self.probes.calls += 1;
                self.probes.failures += u64::from(failed);
                self.probes.slow += u64::from(slow);
                if self.probes.calls < u64::from(self.cfg.half_open_calls) {
                    return None;
                }
                let probes = self.probes;
                Some(if self.tripped(probes) {
                    self.open(now_ms)
                } else {
                    self.move_to(State::Closed, now_ms)
                })
            }
        }
    }

    pub fn force_open(&mut self, now_ms: u64) -> Option<Transition> {
        (self.state != State::ForcedOpen).then(|| self.move_to(State::ForcedOpen, now_ms))
    }

    pub fn disable(&mut self, now_ms: u64) -> Option<Transition> {
        (self.state != State::Disabled).then(|| self.move_to(State::Disabled, now_ms))
    }

    /// Back to closed with an empty window (also ends forced states).
    pub fn reset(&mut self, now_ms: u64) -> Option<Transition> {
        self.window.clear();
        let t = (self.state != State::Closed).then(|| self.move_to(State::Closed, now_ms));
        self.generation += 1;
        t
    }

    fn tripped(&self, t: Totals) -> bool {
        t.failure_rate() >= self.cfg.failure_rate_threshold
            || (t.slow > 0 && t.slow_rate() >= self.cfg.slow_call_rate_threshold)
    }

    fn open(&mut self, now_ms: u64) -> Transition {
        self.opened_at_ms = now_ms;
        self.move_to(State::Open, now_ms)
    }

    fn move_to(&mut self, to: State, now_ms: u64) -> Transition {
        let t = Transition {
            from: self.state,
            to,
            at_ms: now_ms,
        };
        self.state = to;
        self.generation += 1;
        self.probes_admitted = 0;
        self.probes = Totals::default();
        if to == State::Closed || to == State::HalfOpen {
            self.window.clear();
        }
        self.last_transition = Some(t);
        t
    }
}

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

    pub fn snapshot(&self) -> Snapshot {
        let now = self.now_ms();
        let mut core = self.lock();
        Snapshot {
            name: self.name.clone(),
            state: core.state(),
            totals: core.totals(now),
            config: core.config().clone(),
            last_transition: core.last_transition(),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            window: WindowKind::Count,
            window_size: 10,
            minimum_calls: 4,
            failure_rate_threshold: 50.0,
            slow_call_rate_threshold: 100.0,
            slow_call_ms: 1000,
            wait_open_ms: 5000,
            half_open_calls: 2,
            ..BreakerConfig::default()
        }
    }

    fn call(c: &mut Core, now: u64, failed: bool, elapsed: u64) -> Option<Transition> {
        let (t, _) = c.acquire(now);
        c.record(now, t.expect("admitted"), Some(failed), elapsed)
    }

    #[test]
    fn trips_on_failure_rate_only_after_minimum_calls() {
        let mut c = Core::new(cfg());
        assert!(call(&mut c, 0, true, 1).is_none());
        assert!(call(&mut c, 0, true, 1).is_none());
        assert!(call(&mut c, 0, true, 1).is_none(), "3 calls < minimum 4");
        let t = call(&mut c, 0, false, 1).unwrap();
        assert_eq!((t.from, t.to), (State::Closed, State::Open));
        let (r, _) = c.acquire(4999);
        assert_eq!(
            r.unwrap_err(),
            Rejected {
                state: State::Open,
                retry_after_ms: 1
            }
        );
    }

    #[test]
    fn stays_closed_below_the_threshold() {
        let mut c = Core::new(cfg());
        for i in 0..20 {
            assert!(
                call(&mut c, 0, i % 3 == 2, 1).is_none(),
                "at most 40% < 50%"
            );
        }
        assert_eq!(c.state(), State::Closed);
    }

    #[test]
    fn trips_on_slow_calls() {
        let mut c = Core::new(BreakerConfig {
            slow_call_rate_threshold: 50.0,
            ..cfg()
        });
        call(&mut c, 0, false, 1000);
        call(&mut c, 0, false, 1000);
        call(&mut c, 0, false, 10);
        let t = call(&mut c, 0, false, 10).unwrap();
        assert_eq!(t.to, State::Open, "2 of 4 slow = 50%");
    }

    #[test]
    fn half_open_admits_exactly_n_then_closes_on_success() {
        let mut c = Core::new(cfg());
        c.force_open(0);
        c.reset(0);
        for _ in 0..4 {
            call(&mut c, 0, true, 1);
        }
        assert_eq!(c.state(), State::Open);
        let (a, t) = c.acquire(5000);
        assert_eq!(t.unwrap().to, State::HalfOpen);
        let (b, _) = c.acquire(5000);
        let (third, _) = c.acquire(5000);
        assert_eq!(third.unwrap_err().state, State::HalfOpen, "only 2 probes");
        assert!(c.record(5001, a.unwrap(), Some(false), 1).is_none());
        let t = c.record(5002, b.unwrap(), Some(false), 1).unwrap();
        assert_eq!((t.from, t.to), (State::HalfOpen, State::Closed));
    }

    #[test]
    fn half_open_reopens_on_failing_probes_and_cancelled_probes_free_their_slot() {
        let mut c = Core::new(cfg());
        for _ in 0..4 {
            call(&mut c, 0, true, 1);
        }
        let (a, _) = c.acquire(5000);
        let (b, _) = c.acquire(5000);
        assert!(c.record(5000, a.unwrap(), None, 0).is_none(), "cancelled");
        let (again, _) = c.acquire(5000);
        assert!(again.is_ok(), "the cancelled probe's slot is free again");
        c.record(5000, b.unwrap(), Some(true), 1);
        let t = c.record(5000, again.unwrap(), Some(true), 1).unwrap();
        assert_eq!(t.to, State::Open);
        assert!(c.acquire(9999).0.is_err());
        assert!(
            c.acquire(10_000).0.is_ok(),
            "waits a full wait_open_ms again"
        );
    }

    #[test]
    fn forced_and_disabled_states() {
        let mut c = Core::new(cfg());
        c.force_open(0);
        assert_eq!(
            c.acquire(1_000_000).0.unwrap_err().state,
            State::ForcedOpen,
            "never probes"
        );
        c.disable(0);
        for _ in 0..100 {
            call(&mut c, 0, true, 1);
        }
        assert_eq!(c.state(), State::Disabled, "disabled records nothing");
        c.reset(0);
        assert_eq!(c.state(), State::Closed);
    }

    #[test]
    fn results_from_before_a_transition_are_ignored() {
        let mut c = Core::new(cfg());
        let (old, _) = c.acquire(0);
        c.force_open(0);
        c.reset(0);
        assert!(c.record(0, old.unwrap(), Some(true), 1).is_none());
        assert_eq!(c.totals(0).calls, 0);
    }

    #[test]
    fn time_window_forgets_old_failures() {
        let mut c = Core::new(BreakerConfig {
            window: WindowKind::Time,
            window_ms: 1000,
            ..cfg()
        });
        for _ in 0..3 {
            call(&mut c, 0, true, 1);
        }
        // Those failures slid out: 1 failure of 1 call < minimum.
        assert!(call(&mut c, 1500, true, 1).is_none());
        assert_eq!(c.totals(1500).calls, 1);
    }
}
