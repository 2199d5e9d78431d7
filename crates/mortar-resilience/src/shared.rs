//! Shared breakers (`shared = true`): state, window and permits in Redis, one Lua script
//! (`shared.lua`, the engine's rules in Lua) per call, so every node sees the same breaker.
//! The price is a Redis round trip per `/acquire` and `/record`; when Redis does not answer
//! in time the service falls back to the node's own breaker and says so.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use mortar_core::storage::Redis;

use crate::breaker::{BreakerConfig, State};
use crate::permits::MAX_IN_FLIGHT;
use crate::window::Totals;

const SCRIPT: &str = include_str!("shared.lua");

/// What one call asks of the shared breaker.
#[derive(Debug, Clone, Copy)]
pub enum Op<'a> {
    /// `token` is unique across nodes (`<node>-<seq>`).
    Acquire {
        token: &'a str,
    },
    Record {
        member: &'a str,
        /// `success`, `failure` or `cancelled`.
        outcome: &'static str,
        duration_ms: u64,
    },
    Status,
    ForceOpen,
    Disable,
    Reset,
}

impl Op<'_> {
    fn name(&self) -> &'static str {
        match self {
            Op::Acquire { .. } => "acquire",
            Op::Record { .. } => "record",
            Op::Status => "status",
            Op::ForceOpen => "force_open",
            Op::Disable => "disable",
            Op::Reset => "reset",
        }
    }
}

/// How the call went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    Rejected,
    Expired,
    Used,
    /// [`MAX_IN_FLIGHT`] permits are unrecorded.
    Busy,
}

/// The script's answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub verdict: Verdict,
    pub state: State,
    /// The admitted permit's member (acquire).
    pub member: String,
    /// The permit's lifetime (acquire), or how long until it may probe (rejected, open).
    pub ms: u64,
    pub counted: bool,
    pub transition: Option<(State, State)>,
    pub totals: Totals,
    pub probes_in_flight: u32,
    /// The last transition: from, to, at (Redis time, epoch ms).
    pub last: Option<(State, State, u64)>,
}

/// The Redis side of shared breakers.
pub struct Shared {
    redis: Redis,
    script: redis::Script,
    timeout: Duration,
    /// Tests pin time (ms); production leaves it `None` (Redis `TIME`).
    now_ms: Option<Arc<AtomicU64>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("prefix", &self.redis.prefix)
            .finish_non_exhaustive()
    }
}

impl Shared {
    pub fn new(redis: Redis, timeout: Duration) -> Self {
        Self {
            redis,
            script: redis::Script::new(SCRIPT),
            timeout,
            now_ms: None,
        }
    }

    /// Reads time from `now_ms` instead of Redis (deterministic tests).
    #[must_use]
    pub fn with_time(mut self, now_ms: Arc<AtomicU64>) -> Self {
        self.now_ms = Some(now_ms);
        self
    }

    /// `<prefix>resilience:breaker:{<name>}:<part>` (one hash tag per breaker).
    fn key(&self, name: &str, part: &str) -> String {
        self.redis
            .key("resilience", &format!("breaker:{{{name}}}:{part}"))
    }

    /// Runs `op` on breaker `name` with settings `cfg`. `Err` says why Redis did not answer.
    pub async fn run(&self, name: &str, cfg: &BreakerConfig, op: Op<'_>) -> Result<Reply, String> {
        let mut inv = self.script.prepare_invoke();
        inv.key(self.key(name, "state"))
            .key(self.key(name, "ring"))
            .key(self.key(name, "permits"))
            .arg(op.name())
            .arg(
                self.now_ms
                    .as_ref()
                    .map_or_else(String::new, |t| t.load(Ordering::SeqCst).to_string()),
            )
            .arg(cfg.window.as_str())
            .arg(cfg.window_size)
            .arg(cfg.window_ms)
            .arg(cfg.failure_rate_threshold)
            .arg(cfg.slow_call_rate_threshold)
            .arg(cfg.slow_call_ms)
            .arg(cfg.minimum_calls)
            .arg(cfg.wait_open_ms)
            .arg(cfg.half_open_calls)
            .arg(cfg.permit_ttl_ms());
        match op {
            Op::Acquire { token } => {
                inv.arg(token).arg(MAX_IN_FLIGHT);
            }
            Op::Record {
                member,
                outcome,
                duration_ms,
            } => {
                inv.arg(member).arg(outcome).arg(duration_ms);
            }
            _ => {}
        }
        // Redis known to be down: fall back now instead of waiting out the deadline.
        self.redis.gate.check().map_err(|d| d.to_string())?;
        let mut conn = self.redis.conn();
        let raw: Vec<String> =
            match tokio::time::timeout(self.timeout, inv.invoke_async(&mut conn)).await {
                Ok(Ok(raw)) => raw,
                Ok(Err(e)) => {
                    if mortar_core::storage::gate::is_redis_connection_error(&e) {
                        self.redis.gate.trip(&e.to_string());
                    }
                    return Err(e.to_string());
                }
                Err(_) => {
                    return Err(format!("no answer within {} ms", self.timeout.as_millis()));
                }
            };
        parse(&raw).ok_or_else(|| format!("unexpected reply {raw:?}"))
    }

    /// Deletes the breaker's keys (its definition was deleted or is no longer shared).
    pub async fn forget(&self, name: &str) -> Result<(), String> {
        let keys = ["state", "ring", "permits"].map(|p| self.key(name, p));
        let mut conn = self.redis.conn();
        tokio::time::timeout(
            self.timeout,
            redis::cmd("DEL").arg(&keys).query_async::<()>(&mut conn),
        )
        .await
        .map_err(|_| "no answer in time".to_owned())?
        .map_err(|e| e.to_string())
    }
}

fn parse(raw: &[String]) -> Option<Reply> {
    let [
        verdict,
        state,
        member,
        ms,
        counted,
        tfrom,
        tto,
        calls,
        failures,
        slow,
        in_flight,
        lf,
        lt,
        la,
    ] = raw
    else {
        return None;
    };
    let n = |s: &String| s.parse::<i64>().ok().map(|v| v.max(0).unsigned_abs());
    let verdict = match verdict.as_str() {
        "ok" => Verdict::Ok,
        "rejected" => Verdict::Rejected,
        "expired" => Verdict::Expired,
        "used" => Verdict::Used,
        "busy" => Verdict::Busy,
        _ => return None,
    };
    let transition = State::parse(tfrom).zip(State::parse(tto));
    let last = match (State::parse(lf), State::parse(lt)) {
        (Some(f), Some(t)) => Some((f, t, n(la)?)),
        _ => None,
    };
    Some(Reply {
        verdict,
        state: State::parse(state)?,
        member: member.clone(),
        ms: n(ms)?,
        counted: counted == "1",
        transition,
        totals: Totals {
            calls: n(calls)?,
            failures: n(failures)?,
            slow: n(slow)?,
        },
        probes_in_flight: n(in_flight)? as u32,
        last,
    })
}
