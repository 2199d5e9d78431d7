//! A leased attempt's calls: heartbeats (never past the attempt's deadline), completion (one or
//! a batch), failure and release; why a call on an attempt is refused (timed out, cancelled,
//! not this lease); and ending the attempts whose lease ran out.

use mortar_core::FieldError;

use super::telemetry::{COMPLETED, DEAD, FAILED, RUN, TIMED_OUT, per_kind};
use super::{BatchCompleted, JobsService};
use crate::engine::{Expired, TIMED_OUT as TIMED_OUT_ERROR, after_failure};
use crate::error::JobsError;
use crate::state::State;
use crate::store::{Completion, Job};

impl JobsService {
    /// Extends the lease held by `lease_id` by `extend_ms` (default `jobs.lease_ms`) from now,
    /// never past the attempt's deadline. Refused (410) once the attempt timed out or the job
    /// was cancelled while it ran.
    pub async fn heartbeat(
        &self,
        id: &str,
        lease_id: &str,
        extend_ms: Option<u64>,
    ) -> Result<Job, JobsError> {
        if extend_ms.is_some_and(|ms| ms == 0 || ms > 86_400_000) {
            return Err(JobsError::Invalid(vec![FieldError::new(
                "extend_ms",
                "must be 1 to 86400000",
            )]));
        }
        let now = self.clock.now_ms();
        let ms = extend_ms.unwrap_or(self.cfg.lease_ms);
        match self
            .store
            .heartbeat(id, lease_id, ms, now)
            .await
            .map_err(self.db())?
        {
            Some(job) => {
                if let Some(until) = job.lease_until_ms {
                    self.note_due(until);
                }
                Ok(job)
            }
            None => Err(Box::pin(self.refused(id, lease_id)).await),
        }
    }

    /// Completes the attempt held by `lease_id` — also when the job's cancellation was asked
    /// for meanwhile (a completion that comes first wins).
    pub async fn complete(
        &self,
        id: &str,
        lease_id: &str,
        result: Option<&serde_json::Value>,
    ) -> Result<Job, JobsError> {
        let item = Completion {
            id: id.to_owned(),
            lease_id: lease_id.to_owned(),
            result: result.map(ToString::to_string),
        };
        let completed = self.complete_batch(vec![item]).await?.completed;
        if completed == 0 {
            return Err(self.refused(id, lease_id).await);
        }
        self.store
            .get(id)
            .await
            .map_err(self.db())?
            .ok_or_else(|| JobsError::NotFound(id.to_owned()))
    }

    /// Completes many jobs in one statement; those whose lease no longer holds are listed.
    pub async fn complete_batch(
        &self,
        items: Vec<Completion>,
    ) -> Result<BatchCompleted, JobsError> {
        if items.is_empty() || items.len() > 10_000 {
            return Err(JobsError::Invalid(vec![FieldError::new(
                "items",
                "give 1 to 10000 completions",
            )]));
        }
        let now = self.clock.now_ms();
        let done = self.store.complete(&items, now).await.map_err(self.db())?;
        crate::events::publish(
            &self.hub,
            now,
            done.iter().map(|c| {
                (
                    c.id.as_str(),
                    c.queue.as_str(),
                    c.kind.as_str(),
                    "completed",
                    None,
                )
            }),
        );
        per_kind(
            &done,
            |c| (&c.queue, &c.kind),
            |q, k, group| {
                metrics::counter!(COMPLETED, "queue" => q.to_owned(), "kind" => k.to_owned())
                    .increment(group.len() as u64);
                let run = metrics::histogram!(RUN, "queue" => q.to_owned(), "kind" => k.to_owned());
                for start in group.iter().filter_map(|c| c.started_at_ms) {
                    run.record(now.saturating_sub(start as u64) as f64 / 1000.0);
                }
            },
        );
        let rejected = if done.len() == items.len() {
            Vec::new()
        } else {
            let ok: std::collections::HashSet<&str> = done.iter().map(|c| c.id.as_str()).collect();
            items
                .into_iter()
                .filter(|i| !ok.contains(i.id.as_str()))
                .map(|i| i.id)
                .collect()
        };
        Ok(BatchCompleted {
            completed: done.len(),
            rejected,
        })
    }

    /// Records a failed attempt: retried with the job's backoff while its budget lasts (and the
    /// failure is retryable), else dead; `cancelled` when its cancellation was asked for.
    pub async fn fail(
        &self,
        id: &str,
        lease_id: &str,
        error: &str,
        retryable: bool,
        retry_in_ms: Option<u64>,
    ) -> Result<Job, JobsError> {
        let job = self
            .store
            .get(id)
            .await
            .map_err(self.db())?
            .ok_or_else(|| JobsError::NotFound(id.to_owned()))?;
        if job.lease_id.as_deref() != Some(lease_id) || job.state() != State::Running {
            return Err(self.refused(id, lease_id).await);
        }
        let now = self.clock.now_ms();
        let next = after_failure(now, job.budget(), retryable, retry_in_ms, fastrand::f64());
        let Some(updated) = self
            .store
            .fail(id, lease_id, error, next, now)
            .await
            .map_err(self.db())?
        else {
            return Err(self.refused(id, lease_id).await);
        };
        self.ended(now, &updated, false);
        Ok(updated)
    }

    /// Gives a leased job back at once, this attempt not counted (a worker shutting down); a
    /// job whose cancellation was asked for is cancelled instead.
    pub async fn release(&self, id: &str, lease_id: &str) -> Result<Job, JobsError> {
        let now = self.clock.now_ms();
        let Some(job) = self
            .store
            .release(id, lease_id, now)
            .await
            .map_err(self.db())?
        else {
            return Err(self.refused(id, lease_id).await);
        };
        self.publish(now, [(&job, job.state.as_str())]);
        self.announce();
        Ok(job)
    }

    /// Ends the attempts whose lease ran out: those that reached their deadline fail as timed
    /// out (retried with the backoff, dead when the budget is spent); those whose worker
    /// stopped heartbeating are available again at once (dead when the budget is spent); a
    /// job whose cancellation was asked for is cancelled.
    /// `only`: just that job (waiting for another node ending it).
    pub(super) async fn end_expired(&self, now: u64, only: Option<&str>) -> Result<(), JobsError> {
        let ended = self
            .store
            .rescue(now, only, move |j: &Job| {
                let expired = Expired::of(
                    j.started_at_ms.unwrap_or_default() as u64,
                    j.timeout_ms as u64,
                    j.lease_until_ms.unwrap_or_default() as u64,
                );
                (
                    expired.next(now, j.budget(), fastrand::f64()),
                    expired.error(),
                )
            })
            .await
            .map_err(self.db())?;
        for (job, error) in &ended {
            let timed_out = error.starts_with(TIMED_OUT_ERROR);
            self.ended(now, job, timed_out);
            if timed_out {
                tracing::info!(job = %job.id, queue = %job.queue, kind = %job.kind, attempt = job.attempt, state = %job.state, "jobs: {error}");
            }
        }
        Ok(())
    }

    /// Publishes and counts an attempt that ended without completing.
    fn ended(&self, now: u64, job: &Job, timed_out: bool) {
        match job.state() {
            State::Retryable => self.note_due(job.run_at_ms),
            State::Available => self.announce(),
            _ => {}
        }
        self.publish(now, [(job, job.state.as_str())]);
        let (q, k) = (job.queue.clone(), job.kind.clone());
        metrics::counter!(FAILED, "queue" => q.clone(), "kind" => k.clone()).increment(1);
        if timed_out {
            metrics::counter!(TIMED_OUT, "queue" => q.clone(), "kind" => k.clone()).increment(1);
        }
        if job.state() == State::Dead {
            metrics::counter!(DEAD, "queue" => q, "kind" => k).increment(1);
        }
    }

    /// Why a call on the attempt held by `lease_id` was refused: no such job (404); the job
    /// was cancelled while the attempt ran (410 `cancelled`; when it was asked for, the attempt
    /// ends so now — this is how a worker learns); the attempt ran past its deadline (410
    /// `timed-out`; ended now if maintenance had not yet); or the job is not (or no longer)
    /// leased with that lease id (409).
    pub(super) async fn refused(&self, id: &str, lease_id: &str) -> JobsError {
        match self.why_refused(id, lease_id).await {
            Ok(e) | Err(e) => e,
        }
    }

    async fn why_refused(&self, id: &str, lease_id: &str) -> Result<JobsError, JobsError> {
        let now = self.clock.now_ms();
        let mut job = self.read(id).await?;
        if job.lease_id.as_deref() != Some(lease_id) {
            return Ok(not_held(id));
        }
        if job.state() == State::Running {
            if job.cancel_requested_at_ms.is_some() {
                let ended = self
                    .store
                    .cancel_running(id, lease_id, now)
                    .await
                    .map_err(self.db())?;
                match ended {
                    Some(j) => {
                        self.publish(now, [(&j, j.state.as_str())]);
                        return Ok(cancelled(&j));
                    }
                    None => job = self.read(id).await?,
                }
            } else if job.lease_until_ms.is_some_and(|t| t as u64 <= now) {
                // Its lease ran out and maintenance has not ended it yet: end it now, so the
                // caller hears how it ended.
                Box::pin(self.end_expired(now, Some(id))).await?;
                job = self.read(id).await?;
            }
        }
        Ok(match job.state() {
            State::Cancelled if job.lease_id.as_deref() == Some(lease_id) => cancelled(&job),
            State::Retryable | State::Dead | State::Available
                if job.lease_id.as_deref() == Some(lease_id) =>
            {
                let errors = self.store.errors(id).await.map_err(self.db())?;
                let timed_out = errors
                    .iter()
                    .any(|e| e.attempt == job.attempt && e.error.starts_with(TIMED_OUT_ERROR));
                if timed_out {
                    timed_out_error(&job)
                } else {
                    not_held(id)
                }
            }
            _ => not_held(id),
        })
    }

    async fn read(&self, id: &str) -> Result<Job, JobsError> {
        self.store
            .get(id)
            .await
            .map_err(self.db())?
            .ok_or_else(|| JobsError::NotFound(id.to_owned()))
    }
}

/// What a refused call hears when the job was cancelled while its attempt ran.
fn cancelled(job: &Job) -> JobsError {
    JobsError::Cancelled(format!(
        "job `{}` was cancelled while attempt {} ran: stop working on it (nothing you send for this attempt counts now)",
        job.id, job.attempt
    ))
}

/// What a refused call hears when its attempt ran past its deadline.
fn timed_out_error(job: &Job) -> JobsError {
    let next = match job.state() {
        State::Retryable => format!(
            "it is retried at {}",
            mortar_core::clock::rfc3339(job.run_at_ms as u64)
        ),
        State::Dead => "its attempts are spent: it is dead (the DLQ)".to_owned(),
        _ => format!("it is {} now", job.state),
    };
    JobsError::TimedOut(format!(
        "job `{}`: attempt {} timed out after {} ms (its timeout_ms, counted from when it was leased) and failed as timed out; {next}",
        job.id, job.attempt, job.timeout_ms
    ))
}

pub(super) fn not_held(id: &str) -> JobsError {
    JobsError::Conflict(format!(
        "job `{id}` is not leased with that lease_id (its lease ran out or it was never yours)"
    ))
}
