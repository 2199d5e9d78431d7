//! Calls through a named breaker over HTTP — `acquire` a permit, make the call, `record` its
//! outcome — and a breaker's status and steering, for node-local and shared breakers alike.
//!
//! A shared breaker's call runs `shared.lua` in Redis. When Redis does not answer within
//! `redis_timeout_ms` (or is known to be down), `acquire` falls back to the node's own breaker
//! (a local permit, `degraded` in the answer and the status); recording a shared permit, or
//! steering a shared breaker, needs Redis and answers 503 meanwhile.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{Entry, ResilienceService, Source};
use crate::breaker::{BreakerConfig, State};
use crate::error::{PermitError, ResilienceError};
use crate::permits::{PermitId, member_expiry};
use crate::shared::{Op, Reply, Verdict};
use crate::window::Totals;

/// A call's outcome, as `/record` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
    /// The call was not made after all: frees a probe slot, counts nothing.
    Cancelled,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::Cancelled => "cancelled",
        }
    }

    fn failed(self) -> Option<bool> {
        match self {
            Outcome::Success => Some(false),
            Outcome::Failure => Some(true),
            Outcome::Cancelled => None,
        }
    }
}

/// An admitted call.
#[derive(Debug, Clone)]
pub struct Admitted {
    pub permit: String,
    pub state: State,
    /// A half-open probe.
    pub probe: bool,
    /// How long the permit waits for its `/record`.
    pub expires_in_ms: u64,
    /// Decided by Redis (the cluster's breaker) rather than this node's.
    pub shared: bool,
    /// A shared breaker whose Redis did not answer: this node's breaker decided.
    pub degraded: bool,
}

/// A recorded outcome.
#[derive(Debug, Clone, Copy)]
pub struct Recorded {
    pub state: State,
    /// Counted in the window or the probes (`false`: cancelled, disabled, or the breaker
    /// changed state since the permit was issued).
    pub counted: bool,
    pub shared: bool,
}

/// What to do to a breaker by hand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Steer {
    ForceOpen,
    Disable,
    /// Closed with an empty window (also "force close").
    Reset,
}

/// A breaker as the API shows it.
#[derive(Debug, Clone)]
pub struct Status {
    pub name: String,
    pub source: Source,
    pub config: BreakerConfig,
    pub state: State,
    pub totals: Totals,
    pub probes_in_flight: u32,
    /// The last transition: from, to, when (epoch ms).
    pub last_transition: Option<(State, State, u64)>,
    /// Why a shared breaker shows this node's state instead of the cluster's.
    pub degraded: Option<String>,
}

impl ResilienceService {
    /// Asks to make a call through breaker `name`.
    pub async fn acquire(&self, name: &str) -> Result<Admitted, ResilienceError> {
        let entry = self.entry(name)?;
        self.permits.sweep();
        let mut degraded = false;
        if let Some(shared) = self.shared_for(&entry) {
            let token = format!("{}-{}", self.permits.node(), self.permits.next_seq());
            match shared
                .run(name, &entry.cfg, Op::Acquire { token: &token })
                .await
            {
                Ok(r) => {
                    self.redis_answered(name, &r);
                    return match r.verdict {
                        Verdict::Ok => {
                            crate::metrics::permit(name, "admitted");
                            Ok(Admitted {
                                probe: r.member.split('.').nth(1) == Some("p"),
                                permit: format!("s.{}", r.member),
                                state: r.state,
                                expires_in_ms: r.ms,
                                shared: true,
                                degraded: false,
                            })
                        }
                        Verdict::Busy => {
                            crate::metrics::permit(name, "too_many");
                            Err(ResilienceError::TooManyPermits(name.to_owned()))
                        }
                        _ => {
                            crate::metrics::permit(name, "rejected");
                            crate::metrics::shared_call(name, "rejected");
                            Err(rejected(name, r.state, r.ms))
                        }
                    };
                }
                Err(why) => {
                    self.redis_failed(name, &why);
                    degraded = true;
                }
            }
        }
        match entry.breaker.acquire_ticket() {
            Ok((ticket, _)) => {
                let ttl = entry.cfg.permit_ttl_ms();
                let Some(permit) = self.permits.issue(name, entry.breaker.clone(), ticket, ttl)
                else {
                    crate::metrics::permit(name, "too_many");
                    return Err(ResilienceError::TooManyPermits(name.to_owned()));
                };
                crate::metrics::permit(name, "admitted");
                Ok(Admitted {
                    permit,
                    state: entry.breaker.state(),
                    probe: ticket.is_probe(),
                    expires_in_ms: ttl,
                    shared: false,
                    degraded,
                })
            }
            Err(r) => {
                crate::metrics::permit(name, "rejected");
                Err(rejected(name, r.state, r.retry_after_ms))
            }
        }
    }

    /// Records the outcome of the call `permit` admitted. `duration_ms` (what the call took)
    /// defaults to the time since the permit was issued.
    pub async fn record(
        &self,
        name: &str,
        permit: &str,
        outcome: Outcome,
        duration_ms: Option<u64>,
    ) -> Result<Recorded, ResilienceError> {
        let entry = self.entry(name)?;
        let ttl = entry.cfg.permit_ttl_ms();
        let result = match PermitId::parse(permit)? {
            PermitId::Local {
                node,
                seq,
                expires_ms,
            } => {
                let held = self.permits.take(name, ttl, node, seq, expires_ms)?;
                let elapsed = duration_ms.unwrap_or_else(|| held.elapsed_ms());
                let (counted, state) =
                    held.breaker
                        .finish_ticket(held.ticket, outcome.failed(), elapsed);
                Recorded {
                    state,
                    counted,
                    shared: false,
                }
            }
            PermitId::Shared { member } => {
                let Some(shared) = self.shared_for(&entry) else {
                    return Err(PermitError::NotShared(name.to_owned()).into());
                };
                let duration_ms = duration_ms.unwrap_or_else(|| {
                    let now = mortar_core::clock::unix_time().as_millis() as u64;
                    now.saturating_sub(member_expiry(member).saturating_sub(ttl))
                });
                let op = Op::Record {
                    member,
                    outcome: outcome.as_str(),
                    duration_ms,
                };
                let r = match shared.run(name, &entry.cfg, op).await {
                    Ok(r) => r,
                    Err(why) => {
                        self.redis_failed(name, &why);
                        return Err(ResilienceError::Unavailable("redis"));
                    }
                };
                self.redis_answered(name, &r);
                match r.verdict {
                    Verdict::Expired => return Err(PermitError::Expired { ttl_ms: ttl }.into()),
                    Verdict::Used | Verdict::Rejected | Verdict::Busy => {
                        return Err(PermitError::Used.into());
                    }
                    Verdict::Ok => {}
                }
                if r.counted {
                    let outcome = if outcome == Outcome::Failure {
                        "failure"
                    } else {
                        "success"
                    };
                    crate::metrics::shared_call(name, outcome);
                }
                Recorded {
                    state: r.state,
                    counted: r.counted,
                    shared: true,
                }
            }
        };
        crate::metrics::permit(
            name,
            if result.counted {
                "recorded"
            } else {
                "ignored"
            },
        );
        Ok(result)
    }

    /// Breaker `name`'s status: the cluster's for a shared breaker (this node's, marked
    /// degraded, while Redis does not answer).
    pub async fn status(&self, name: &str) -> Result<Status, ResilienceError> {
        let entry = self.entry(name)?;
        Ok(self.status_of(name, &entry).await)
    }

    /// Every breaker's status, by name.
    pub async fn statuses(&self) -> Vec<Status> {
        let mut out = Vec::new();
        for e in self.entries() {
            let name = e.breaker.name().to_owned();
            out.push(self.status_of(&name, &e).await);
        }
        out
    }

    /// Forces, disables or resets breaker `name` (for a shared breaker: in Redis, for every
    /// node; 503 while Redis does not answer).
    pub async fn steer(&self, name: &str, action: Steer) -> Result<Status, ResilienceError> {
        let entry = self.entry(name)?;
        if let Some(shared) = self.shared_for(&entry) {
            let op = match action {
                Steer::ForceOpen => Op::ForceOpen,
                Steer::Disable => Op::Disable,
                Steer::Reset => Op::Reset,
            };
            return match shared.run(name, &entry.cfg, op).await {
                Ok(r) => {
                    self.redis_answered(name, &r);
                    Ok(shared_status(name, &entry, &r))
                }
                Err(why) => {
                    self.redis_failed(name, &why);
                    Err(ResilienceError::Unavailable("redis"))
                }
            };
        }
        let b = &entry.breaker;
        match action {
            Steer::ForceOpen => b.force_open(),
            Steer::Disable => b.disable(),
            Steer::Reset => b.reset(),
        }
        Ok(local_status(name, &entry, None))
    }

    async fn status_of(&self, name: &str, entry: &Arc<Entry>) -> Status {
        let Some(shared) = self.shared_for(entry) else {
            return local_status(name, entry, None);
        };
        match shared.run(name, &entry.cfg, Op::Status).await {
            Ok(r) => {
                self.redis_answered(name, &r);
                shared_status(name, entry, &r)
            }
            Err(why) => {
                self.redis_failed(name, &why);
                local_status(
                    name,
                    entry,
                    Some(format!(
                        "redis did not answer ({why}): this node's own breaker decides until it does"
                    )),
                )
            }
        }
    }

    fn shared_for(&self, entry: &Entry) -> Option<&crate::shared::Shared> {
        self.shared.as_ref().filter(|_| entry.cfg.shared)
    }

    fn redis_answered(&self, name: &str, r: &Reply) {
        if let Some((from, to)) = r.transition {
            tracing::warn!(breaker = %name, from = from.as_str(), to = to.as_str(), "shared circuit breaker state changed");
            crate::metrics::breaker_state(name, to);
        }
        if self.redis_down.swap(false, Ordering::Relaxed) {
            tracing::info!("resilience: redis answers again; shared breakers are shared again");
        }
    }

    fn redis_failed(&self, name: &str, why: &str) {
        crate::metrics::shared_fallback(name);
        if !self.redis_down.swap(true, Ordering::Relaxed) {
            tracing::warn!(breaker = %name, error = %why, "resilience: redis unavailable; shared breakers fall back to each node's own breaker");
        }
    }
}

fn rejected(name: &str, state: State, retry_after_ms: u64) -> ResilienceError {
    ResilienceError::Rejected {
        name: name.to_owned(),
        state,
        retry_after_ms,
    }
}

fn local_status(name: &str, entry: &Entry, degraded: Option<String>) -> Status {
    let b = &entry.breaker;
    let s = b.snapshot();
    Status {
        name: name.to_owned(),
        source: entry.source,
        config: entry.cfg.clone(),
        state: s.state,
        totals: s.totals,
        probes_in_flight: s.probes_in_flight,
        last_transition: s
            .last_transition
            .map(|t| (t.from, t.to, b.wall_ms(t.at_ms))),
        degraded,
    }
}

fn shared_status(name: &str, entry: &Entry, r: &Reply) -> Status {
    Status {
        name: name.to_owned(),
        source: entry.source,
        config: entry.cfg.clone(),
        state: r.state,
        totals: r.totals,
        probes_in_flight: r.probes_in_flight,
        last_transition: r.last,
        degraded: None,
    }
}
