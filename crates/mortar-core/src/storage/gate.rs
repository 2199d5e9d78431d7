//! Fail fast while a dependency is down: one [`Gate`] per shared dependency (PostgreSQL,
//! Redis), a breaker driven by a probe of its own.
//!
//! Without it, a request during a PostgreSQL outage waits out the pool's acquire timeout (sqlx
//! retries refused connections until then), once per pool use; a rate-limit check during a
//! Redis outage waits out its deadline. With it, a request to a block that needs a dependency
//! known to be down gets its 503 (or the rate limiter its failure mode) at once.
//!
//! * **Open** on the first connection-class failure, from the probe or reported by a caller
//!   ([`Gate::trip`]): one refused connection is conclusive, so there is no failure window to
//!   fill (mortar-resilience's breaker counts failures of calls that may each fail on their
//!   own; here the probe is the judge). Callers check [`Gate::check`]: one atomic load.
//! * **Closed** again by the first probe that gets an answer: the probe runs every
//!   [`PROBE_OPEN`] while open (so recovery is seen within that), every [`PROBE_CLOSED`] while
//!   closed (so an outage nobody's call has hit yet is seen within that), on a connection of
//!   its own, never the pool's (whose acquire would wait out the very timeout we avoid).
//! * The probe task holds the gate weakly and ends when the last handle is dropped.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use crate::problem::Problem;

/// Probe period while the dependency is down.
pub const PROBE_OPEN: Duration = Duration::from_millis(250);
/// Probe period while it is up.
pub const PROBE_CLOSED: Duration = Duration::from_secs(1);
/// Longest a probe waits for an answer.
const PROBE_TIMEOUT: Duration = Duration::from_millis(900);

/// One dependency's breaker.
#[derive(Debug)]
pub struct Gate {
    dependency: &'static str,
    /// Epoch ms since which it is down; 0 while up.
    down_since_ms: AtomicU64,
    last_error: Mutex<String>,
}

/// The dependency is known to be down.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{dependency} is down ({error}); answering at once until it is back")]
pub struct Down {
    pub dependency: &'static str,
    pub error: String,
}

impl From<Down> for Problem {
    fn from(d: Down) -> Self {
        Problem::unavailable(d.dependency, d.to_string())
    }
}

impl Gate {
    /// A gate that starts closed (the dependency answered at start-up).
    pub fn new(dependency: &'static str) -> Arc<Self> {
        Arc::new(Self {
            dependency,
            down_since_ms: AtomicU64::new(0),
            last_error: Mutex::new(String::new()),
        })
    }

    pub fn dependency(&self) -> &'static str {
        self.dependency
    }

    /// `Err` while the dependency is known to be down.
    pub fn check(&self) -> Result<(), Down> {
        if self.down_since_ms.load(Ordering::Relaxed) == 0 {
            return Ok(());
        }
        Err(Down {
            dependency: self.dependency,
            error: self
                .last_error
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        })
    }

    pub fn is_open(&self) -> bool {
        self.down_since_ms.load(Ordering::Relaxed) != 0
    }

    /// Marks the dependency down (a connection-class failure was seen).
    pub fn trip(&self, error: &str) {
        error.clone_into(
            &mut self
                .last_error
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        let now = (crate::clock::unix_time().as_millis() as u64).max(1);
        if self
            .down_since_ms
            .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            tracing::warn!(
                dependency = self.dependency,
                error,
                "dependency down: failing fast"
            );
            metrics::gauge!(GAUGE, "dependency" => self.dependency).set(1.0);
        }
    }

    /// Marks the dependency up (it answered).
    pub fn close(&self) {
        if self.down_since_ms.swap(0, Ordering::Relaxed) != 0 {
            tracing::info!(dependency = self.dependency, "dependency back");
            metrics::gauge!(GAUGE, "dependency" => self.dependency).set(0.0);
        }
    }

    /// [`Gate::spawn_probe`] on a connection of the probe's own, kept between probes: `open`
    /// makes one when there is none, `ping` checks it and hands it back. A connection whose
    /// probe failed or was cut off by the timeout is dropped, and the next probe opens another.
    pub fn spawn_kept_probe<C, O, OF, P, PF>(self: &Arc<Self>, open: O, ping: P)
    where
        C: Send + 'static,
        O: Fn() -> OF + Send + Sync + 'static,
        OF: Future<Output = Result<C, String>> + Send + 'static,
        P: Fn(C) -> PF + Send + Sync + 'static,
        PF: Future<Output = Result<C, String>> + Send + 'static,
    {
        let kept: Arc<Mutex<Option<C>>> = Arc::default();
        let (open, ping) = (Arc::new(open), Arc::new(ping));
        self.spawn_probe(move || {
            let (kept, open, ping) = (kept.clone(), open.clone(), ping.clone());
            async move {
                // Out of the slot while in use: a probe cut off by its timeout drops it.
                let taken = kept.lock().unwrap_or_else(PoisonError::into_inner).take();
                let conn = match taken {
                    Some(c) => c,
                    None => open().await?,
                };
                let conn = ping(conn).await?;
                *kept.lock().unwrap_or_else(PoisonError::into_inner) = Some(conn);
                Ok(())
            }
        });
    }

    /// Runs `probe` forever (until the gate is dropped): every [`PROBE_OPEN`] while down, every
    /// [`PROBE_CLOSED`] while up; a probe that fails or takes over 900 ms trips the gate, one
    /// that answers closes it.
    pub fn spawn_probe<P, F>(self: &Arc<Self>, mut probe: P)
    where
        P: FnMut() -> F + Send + 'static,
        F: Future<Output = Result<(), String>> + Send,
    {
        let gate: Weak<Self> = Arc::downgrade(self);
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(async move {
            loop {
                let period = match gate.upgrade() {
                    Some(g) if g.is_open() => PROBE_OPEN,
                    Some(_) => PROBE_CLOSED,
                    None => return,
                };
                tokio::time::sleep(period).await;
                let result = tokio::time::timeout(PROBE_TIMEOUT, probe()).await;
                let Some(g) = gate.upgrade() else { return };
                match result {
                    Ok(Ok(())) => g.close(),
                    Ok(Err(e)) => g.trip(&e),
                    Err(_) => g.trip(&format!(
                        "no answer within {} ms",
                        PROBE_TIMEOUT.as_millis()
                    )),
                }
            }
        });
    }
}

/// `mortar_dependency_down{dependency}`: 1 while a gate is open.
pub const GAUGE: &str = "mortar_dependency_down";

/// Whether a database error means the server is unreachable (rather than a bad query).
pub fn is_connection_error(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(d) => d.code().is_some_and(|c| {
            c.starts_with("08") || matches!(c.as_ref(), "57P01" | "57P02" | "57P03" | "53300")
        }),
        _ => false,
    }
}

/// Whether a Redis error means the server is unreachable (rather than a bad command).
pub fn is_redis_connection_error(e: &redis::RedisError) -> bool {
    e.is_connection_refusal() || e.is_io_error() || e.is_connection_dropped() || e.is_timeout()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_on_trip_and_closes_on_answer() {
        let g = Gate::new("postgres");
        assert!(g.check().is_ok());
        g.trip("connection refused");
        let down = g.check().unwrap_err();
        assert_eq!(down.dependency, "postgres");
        assert!(down.to_string().contains("connection refused"));
        let p = Problem::from(down);
        assert_eq!(p.status, 503);
        g.close();
        assert!(g.check().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn the_probe_closes_and_opens_it() {
        let g = Gate::new("redis");
        let up = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let u = up.clone();
        g.spawn_probe(move || {
            let up = u.load(Ordering::SeqCst);
            async move { if up { Ok(()) } else { Err("refused".into()) } }
        });
        tokio::time::sleep(PROBE_CLOSED + Duration::from_millis(10)).await;
        assert!(g.is_open(), "a failing probe opens it");
        up.store(true, Ordering::SeqCst);
        tokio::time::sleep(PROBE_OPEN + Duration::from_millis(10)).await;
        assert!(!g.is_open(), "the first answer closes it");
    }
}
