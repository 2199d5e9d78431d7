//! What a worker did: live `Counters` and their `WorkerStats` snapshot, and the per-job
//! `Report`s a worker hands to its observer (what `mortar jobs work` logs).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::client::Job;

/// What a worker did (live counters; `Worker::counters` before `run`).
#[derive(Debug, Default)]
pub struct Counters {
    /// Jobs leased.
    pub leased: AtomicU64,
    /// Completions the server accepted.
    pub completed: AtomicU64,
    /// Attempts reported failed (handler errors and panics).
    pub failed: AtomicU64,
    /// Of `failed`: handlers that panicked.
    pub panicked: AtomicU64,
    /// Jobs given back on shutdown (not started, or still running at the deadline).
    pub released: AtomicU64,
    /// Jobs whose lease was lost (heartbeat or completion refused with 409).
    pub lost: AtomicU64,
    /// Attempts stopped because they ran past their `timeout_ms`.
    pub timed_out: AtomicU64,
    /// Attempts stopped because their job was cancelled while they ran.
    pub cancelled: AtomicU64,
}

/// A snapshot of [`Counters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerStats {
    pub leased: u64,
    pub completed: u64,
    pub failed: u64,
    pub panicked: u64,
    pub released: u64,
    pub lost: u64,
    pub timed_out: u64,
    pub cancelled: u64,
}

impl Counters {
    pub fn snapshot(&self) -> WorkerStats {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        WorkerStats {
            leased: g(&self.leased),
            completed: g(&self.completed),
            failed: g(&self.failed),
            panicked: g(&self.panicked),
            released: g(&self.released),
            lost: g(&self.lost),
            timed_out: g(&self.timed_out),
            cancelled: g(&self.cancelled),
        }
    }
}

/// A job's way through a worker, as its observer ([`Worker::on_report`]) hears it.
///
/// [`Worker::on_report`]: super::Worker::on_report
#[derive(Debug, Clone, Copy)]
pub enum Report<'a> {
    /// Its handler starts.
    Started { job: &'a Job },
    /// Its attempt ended here, `ran` after its handler started.
    Ended {
        job: &'a Job,
        outcome: &'a Outcome,
        ran: Duration,
    },
}

/// How an attempt ended in the worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The handler succeeded; its completion is on its way to the server.
    Completed,
    /// The handler failed (or panicked) with this error, reported to the server.
    Failed(String),
    /// The attempt ran past its `timeout_ms`: the handler was stopped.
    TimedOut(Duration),
    /// The job was cancelled while it ran: the handler was stopped.
    Cancelled,
    /// The lease was lost (another attempt may run): the handler was stopped.
    Lost,
    /// Given back on shutdown, the attempt not counted.
    Released,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Completed => f.write_str("completed"),
            Outcome::Failed(e) => write!(f, "failed: {e}"),
            Outcome::TimedOut(t) => write!(f, "timed out after {} ms", t.as_millis()),
            Outcome::Cancelled => f.write_str("cancelled"),
            Outcome::Lost => f.write_str("lease lost"),
            Outcome::Released => f.write_str("released"),
        }
    }
}
