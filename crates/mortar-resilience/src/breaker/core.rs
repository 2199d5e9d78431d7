//! The breaker's pure state machine ([`Core`]): states, transitions, tickets and probe
//! accounting. No clock reads, no IO: every method takes `now_ms`.

use super::config::{BreakerConfig, WindowKind};
use crate::window::{Totals, Window};

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

    /// The state named by [`State::as_str`].
    pub fn parse(s: &str) -> Option<State> {
        [
            State::Closed,
            State::Open,
            State::HalfOpen,
            State::ForcedOpen,
            State::Disabled,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
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

fn window_for(cfg: &BreakerConfig) -> Window {
    match cfg.window {
        WindowKind::Count => Window::count(cfg.window_size),
        WindowKind::Time => Window::time(cfg.window_ms),
    }
}

impl Ticket {
    /// A half-open probe (its slot stays taken until it is recorded or cancelled).
    pub fn is_probe(self) -> bool {
        self.kind == TicketKind::Probe
    }
}

impl Core {
    pub fn new(cfg: BreakerConfig) -> Self {
        let window = window_for(&cfg);
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

    /// Probes admitted in half-open and not yet recorded or cancelled.
    pub fn probes_in_flight(&self) -> u32 {
        if self.state == State::HalfOpen {
            self.probes_admitted - self.probes.calls as u32
        } else {
            0
        }
    }

    /// Whether recording `ticket` with an outcome would count (it was admitted in the current
    /// generation and is tracked).
    pub fn counts(&self, ticket: Ticket) -> bool {
        ticket.generation == self.generation && ticket.kind != TicketKind::Untracked
    }

    /// New settings, keeping what still applies: the state (an open breaker stays open, its
    /// wait now `cfg.wait_open_ms` from when it opened), admitted tickets, and the window's
    /// counts when its kind and size are unchanged (else the window starts empty). New
    /// thresholds judge from the next recorded call; a half-open breaker whose finished probes
    /// already reach a lower `half_open_calls` decides at once.
    pub fn reconfigure(&mut self, cfg: BreakerConfig, now_ms: u64) -> Option<Transition> {
        if !self.cfg.same_window(&cfg) {
            self.window = window_for(&cfg);
        }
        self.cfg = cfg;
        if self.state == State::HalfOpen
            && self.probes.calls > 0
            && self.probes.calls >= u64::from(self.cfg.half_open_calls)
        {
            return Some(self.judge_probes(now_ms));
        }
        None
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
                Some(self.judge_probes(now_ms))
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

    /// Half-open's verdict on its finished probes: open again or close.
    fn judge_probes(&mut self, now_ms: u64) -> Transition {
        let probes = self.probes;
        if self.tripped(probes) {
            self.open(now_ms)
        } else {
            self.move_to(State::Closed, now_ms)
        }
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
    fn reconfigure_keeps_the_state_and_a_window_of_the_same_shape() {
        let mut c = Core::new(cfg());
        for _ in 0..3 {
            call(&mut c, 0, true, 1);
        }
        assert!(
            c.reconfigure(
                BreakerConfig {
                    failure_rate_threshold: 90.0,
                    ..cfg()
                },
                0
            )
            .is_none()
        );
        assert_eq!(c.totals(0).calls, 3, "same window: counts kept");
        c.reconfigure(cfg(), 0);
        call(&mut c, 0, true, 1);
        assert_eq!(c.state(), State::Open);
        let (kept, _) = c.acquire(0);
        c.reconfigure(
            BreakerConfig {
                window_size: 20,
                wait_open_ms: 100,
                ..cfg()
            },
            10,
        );
        assert_eq!(c.state(), State::Open, "an open breaker stays open");
        assert!(kept.is_err());
        assert_eq!(c.totals(10).calls, 0, "another window size: empty window");
        // The new wait counts from when it opened.
        let (probe, t) = c.acquire(100);
        assert_eq!(t.unwrap().to, State::HalfOpen);
        let (second, _) = c.acquire(100);
        assert_eq!(c.probes_in_flight(), 2);
        c.record(101, probe.unwrap(), Some(false), 1);
        // One probe finished; with half_open_calls lowered to 1 the verdict is due now.
        let t = c
            .reconfigure(
                BreakerConfig {
                    half_open_calls: 1,
                    ..cfg()
                },
                102,
            )
            .unwrap();
        assert_eq!((t.from, t.to), (State::HalfOpen, State::Closed));
        assert!(!c.counts(second.unwrap()), "from before the transition");
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
