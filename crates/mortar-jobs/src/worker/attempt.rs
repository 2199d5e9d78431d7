//! One leased job's life in the worker: waiting for a free handler, running it under the
//! attempt's deadline, heartbeats (which is how a cancellation arrives), and reporting how it
//! ended.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::FutureExt as _;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Counters, Handler, JobError, Observer, Outcome, Report};
use crate::client::{Completion, Job, JobsClient, Refusal};

tokio::task_local! {
    /// The running handler's cancellation token (see [`cancellation`]).
    static CANCEL: CancellationToken;
}

/// Inside a handler's future: the token cancelled when its attempt must stop — it ran past
/// its `timeout_ms`, or its job was cancelled (or its lease lost) — just before the worker
/// drops the handler's future (after [`Worker::cancel_grace`]). Hand it to tasks the handler
/// spawns (they are not dropped with it), or select on it to clean up within the grace.
/// `None` outside a handler.
///
/// [`Worker::cancel_grace`]: super::Worker::cancel_grace
pub fn cancellation() -> Option<CancellationToken> {
    CANCEL.try_with(Clone::clone).ok()
}

pub(super) struct Ctx {
    pub(super) client: JobsClient,
    pub(super) handlers: HashMap<String, Handler>,
    pub(super) fallback: Option<Handler>,
    pub(super) exec: Arc<Semaphore>,
    pub(super) stop: CancellationToken,
    pub(super) hard_stop: CancellationToken,
    pub(super) done: mpsc::Sender<Completion>,
    pub(super) counters: Arc<Counters>,
    /// How long a stopped handler (timed out, cancelled, lease lost) gets after its token is
    /// cancelled before its future is dropped.
    pub(super) cancel_grace: Duration,
    pub(super) observer: Option<Observer>,
}

/// One leased job's slot; given back however the job's task ends.
pub(super) struct Slot(pub(super) Arc<Semaphore>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.add_permits(1);
    }
}

/// Why an attempt stops before its handler returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// Its deadline passed (here, or the server said so).
    TimedOut,
    /// Its job was cancelled while it ran.
    Cancelled,
    /// Its lease is another's now.
    Lost,
}

/// One leased job, as its task sees it.
struct Attempt<'a> {
    ctx: &'a Ctx,
    job: &'a Job,
    lease_id: String,
    /// The attempt's deadline on this worker's clock: its `timeout_ms` from when the lease
    /// arrived (a little after the server's, which counts from the lease).
    deadline: Option<Instant>,
    every: Duration,
    next_beat: Instant,
}

impl Attempt<'_> {
    /// Heartbeats when due; `Some` when the attempt must stop.
    async fn beat(&mut self) -> Option<Stop> {
        let stop = match self
            .ctx
            .client
            .heartbeat(&self.job.id, &self.lease_id, None)
            .await
        {
            Ok(_) => None,
            Err(e) => match Refusal::of(&e) {
                Some(Refusal::TimedOut) => Some(Stop::TimedOut),
                Some(Refusal::Cancelled) => Some(Stop::Cancelled),
                Some(Refusal::Lost) => Some(Stop::Lost),
                // Keep trying: the lease may still be good when the server answers again.
                None => {
                    tracing::warn!(job = %self.job.id, error = %e, "jobs worker: heartbeat failed");
                    None
                }
            },
        };
        self.next_beat = Instant::now() + self.every;
        stop
    }

    /// Counts, logs and reports an attempt that stopped before its handler returned.
    async fn stopped(&self, why: Stop, told: bool) -> Outcome {
        let (job, ctx) = (self.job, self.ctx);
        match why {
            Stop::TimedOut => {
                let timeout = job.timeout().unwrap_or_default();
                ctx.counters.timed_out.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(job = %job.id, kind = %job.kind, attempt = job.attempt, timeout_ms = timeout.as_millis() as u64, "jobs worker: the attempt timed out; stopping its handler");
                if !told {
                    // The server fails the attempt as timed out (a 410 says it did); before its
                    // deadline, this failure says the same.
                    let e = JobError::retryable(format!(
                        "{} {} ms",
                        crate::engine::TIMED_OUT,
                        timeout.as_millis()
                    ));
                    ctx.report_failure(job, &self.lease_id, &e, Deadline::Passed)
                        .await;
                }
                Outcome::TimedOut(timeout)
            }
            Stop::Cancelled => {
                ctx.counters.cancelled.fetch_add(1, Ordering::Relaxed);
                tracing::info!(job = %job.id, kind = %job.kind, attempt = job.attempt, "jobs worker: the job was cancelled; stopping its handler");
                Outcome::Cancelled
            }
            Stop::Lost => {
                ctx.counters.lost.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(job = %job.id, "jobs worker: lease lost; stopping the handler");
                Outcome::Lost
            }
        }
    }
}

impl Ctx {
    async fn release(&self, job: &Job, lease_id: &str) {
        match self.client.release(&job.id, lease_id).await {
            Ok(()) => {
                self.counters.released.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::warn!(job = %job.id, error = %e, "jobs worker: release failed; the job runs again when its lease runs out");
            }
        }
    }

    /// Reports a failed attempt; a refusal is counted by its reason — except at the attempt's
    /// deadline, where the server may have ended the attempt (and leased the job again) first:
    /// a timed-out attempt either way, not a lost lease.
    async fn report_failure(&self, job: &Job, lease_id: &str, e: &JobError, deadline: Deadline) {
        let r = self
            .client
            .fail(
                &job.id,
                lease_id,
                e.message(),
                e.is_retryable(),
                e.retry_delay(),
            )
            .await;
        if let Err(err) = r {
            match Refusal::of(&err) {
                // Already ended as timed out, or cancelled: what the caller counts anyway.
                Some(Refusal::TimedOut | Refusal::Cancelled) => {}
                Some(Refusal::Lost) if deadline == Deadline::Passed => {
                    tracing::debug!(job = %job.id, "jobs worker: the server ended the timed-out attempt first");
                }
                Some(Refusal::Lost) => {
                    self.counters.lost.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(job = %job.id, error = %err, "jobs worker: reporting a failure failed");
                }
                None => {
                    tracing::warn!(job = %job.id, error = %err, "jobs worker: reporting a failure failed");
                }
            }
        }
    }

    async fn fail(&self, job: &Job, lease_id: &str, e: &JobError) {
        self.counters.failed.fetch_add(1, Ordering::Relaxed);
        self.report_failure(job, lease_id, e, Deadline::Ahead).await;
    }

    fn report(&self, r: Report<'_>) {
        if let Some(observe) = &self.observer {
            observe(r);
        }
    }

    fn ended(&self, job: &Job, outcome: &Outcome, started: Instant) {
        self.report(Report::Ended {
            job,
            outcome,
            ran: started.elapsed(),
        });
    }
}

/// Resolves at `deadline`, never without one.
async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Counts leased jobs and gives each a task (holding its slot).
pub(super) fn start(
    ctx: &Arc<Ctx>,
    slots: &Arc<Semaphore>,
    tasks: &mut JoinSet<()>,
    jobs: Vec<Job>,
) {
    ctx.counters
        .leased
        .fetch_add(jobs.len() as u64, Ordering::Relaxed);
    let arrived = Instant::now();
    for job in jobs {
        tasks.spawn(run_job(ctx.clone(), job, Slot(slots.clone()), arrived));
    }
}

async fn run_job(ctx: Arc<Ctx>, job: Job, _slot: Slot, arrived: Instant) {
    let lease = job.lease_length().unwrap_or(Duration::from_secs(30));
    let every = (lease / 3).max(Duration::from_millis(20));
    let mut a = Attempt {
        ctx: &ctx,
        job: &job,
        lease_id: job.lease_id.clone().unwrap_or_default(),
        deadline: job.timeout().map(|t| arrived + t),
        every,
        next_beat: arrived + every,
    };
    // Wait for a free handler, keeping the lease alive; the deadline runs from the lease.
    let waited = Instant::now();
    let permit = loop {
        tokio::select! {
            biased;
            () = ctx.stop.cancelled() => {
                ctx.release(&job, &a.lease_id).await;
                return;
            }
            p = ctx.exec.clone().acquire_owned() => match p {
                Ok(p) => break p,
                Err(_) => return,
            },
            () = until(a.deadline) => {
                let outcome = a.stopped(Stop::TimedOut, false).await;
                ctx.ended(&job, &outcome, waited);
                return;
            }
            () = tokio::time::sleep_until(a.next_beat) => {
                if let Some(why) = a.beat().await {
                    let outcome = a.stopped(why, true).await;
                    ctx.ended(&job, &outcome, waited);
                    return;
                }
            }
        }
    };
    let started = Instant::now();
    ctx.report(Report::Started { job: &job });
    let handler = ctx
        .handlers
        .get(&job.kind)
        .or(ctx.fallback.as_ref())
        .cloned();
    let Some(handler) = handler else {
        drop(permit);
        let e = JobError::retryable(format!(
            "no handler for kind `{}` on worker for this queue",
            job.kind
        ));
        ctx.fail(&job, &a.lease_id, &e).await;
        ctx.ended(&job, &Outcome::Failed(e.message().to_owned()), started);
        return;
    };
    let token = CancellationToken::new();
    // Boxed, so that dropping it drops the handler's future there and then.
    let mut run = Box::pin(CANCEL.scope(
        token.clone(),
        AssertUnwindSafe(handler(job.clone())).catch_unwind(),
    ));
    let returned = loop {
        tokio::select! {
            r = &mut run => break Ok(r),
            () = until(a.deadline) => break Err(Some((Stop::TimedOut, false))),
            () = tokio::time::sleep_until(a.next_beat) => {
                if let Some(why) = a.beat().await {
                    break Err(Some((why, true)));
                }
            }
            () = ctx.hard_stop.cancelled() => break Err(None),
        }
    };
    let outcome = match returned {
        Ok(r) => {
            drop(permit);
            finished(&ctx, &job, a.lease_id.clone(), r).await
        }
        Err(None) => {
            // Shutdown's deadline: the handler is dropped at once and its job given back.
            token.cancel();
            drop(run);
            drop(permit);
            ctx.release(&job, &a.lease_id).await;
            Outcome::Released
        }
        Err(Some((why, told))) => {
            token.cancel();
            let outcome = a.stopped(why, told).await;
            // The handler sees its token and gets the grace to wind down; then it is dropped.
            if !ctx.cancel_grace.is_zero() {
                let _ = tokio::time::timeout(ctx.cancel_grace, &mut run).await;
            }
            drop(run);
            drop(permit);
            outcome
        }
    };
    ctx.ended(&job, &outcome, started);
}

/// Reports what a handler returned: a completion (batched), or a failure.
async fn finished(
    ctx: &Ctx,
    job: &Job,
    lease_id: String,
    r: Result<super::HandlerResult, Box<dyn std::any::Any + Send>>,
) -> Outcome {
    match r {
        Ok(Ok(result)) => {
            let c = Completion {
                id: job.id.clone(),
                lease_id,
                result,
            };
            let _ = ctx.done.send(c).await;
            Outcome::Completed
        }
        Ok(Err(e)) => {
            ctx.fail(job, &lease_id, &e).await;
            Outcome::Failed(e.message().to_owned())
        }
        Err(panic) => {
            ctx.counters.panicked.fetch_add(1, Ordering::Relaxed);
            let what = panic
                .downcast_ref::<&str>()
                .map(ToString::to_string)
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a non-string payload".into());
            let e = JobError::retryable(format!("handler panicked: {what}"));
            ctx.fail(job, &lease_id, &e).await;
            Outcome::Failed(e.message().to_owned())
        }
    }
}

/// Whether a failure is reported at its attempt's deadline.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Deadline {
    Ahead,
    Passed,
}
