//! A job's life after enqueue: heartbeats, completion (one or a batch), failure and retry
//! backoff, release, reads and listing, retry, discard and cancel.

use mortar_core::FieldError;

use super::telemetry::{COMPLETED, DEAD, FAILED, RUN, per_kind};
use super::{BatchCompleted, JobsService};
use crate::engine::{AfterFailure, after_failure};
use crate::error::JobsError;
use crate::store::{AttemptError, Completion, Filter, Job};

impl JobsService {
    pub async fn heartbeat(
        &self,
        id: &str,
        lease_id: &str,
        extend_ms: Option<u64>,
    ) -> Result<Job, JobsError> {
        let job = self.get(id).await?.0;
        let ms = extend_ms.unwrap_or(job.timeout_ms as u64);
        if ms == 0 || ms > 86_400_000 {
            return Err(JobsError::Invalid(vec![FieldError::new(
                "extend_ms",
                "must be 1 to 86400000",
            )]));
        }
        self.store
            .heartbeat(id, lease_id, ms, self.clock.now_ms())
            .await
            .map_err(self.db())?
            .ok_or_else(|| not_held(id))
    }

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
        // One read answers both ways: the completed job, or why it was not completed.
        match self.store.get(id).await.map_err(self.db())? {
            None => Err(JobsError::NotFound(id.to_owned())),
            Some(job) if completed == 1 => Ok(job),
            Some(_) => Err(not_held(id)),
        }
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

    pub async fn fail(
        &self,
        id: &str,
        lease_id: &str,
        error: &str,
        retryable: bool,
        retry_in_ms: Option<u64>,
    ) -> Result<Job, JobsError> {
        let (job, _) = self.get(id).await?;
        if job.lease_id.as_deref() != Some(lease_id) || job.state() != crate::state::State::Running
        {
            return Err(not_held(id));
        }
        let now = self.clock.now_ms();
        let next = match after_failure(
            now,
            job.attempt as u32,
            job.max_attempts as u32,
            retryable,
            retry_in_ms,
            (job.backoff_base_ms as u64, job.backoff_max_ms as u64),
            fastrand::f64(),
        ) {
            AfterFailure::RetryAt(at) => Some(at),
            AfterFailure::Dead => None,
        };
        let updated = self
            .store
            .fail(&job, lease_id, error, next, now)
            .await
            .map_err(self.db())?
            .ok_or_else(|| not_held(id))?;
        if let Some(at) = next {
            self.note_due(at as i64);
        }
        self.publish(now, [(&updated, updated.state.as_str())]);
        let (q, k) = (updated.queue.clone(), updated.kind.clone());
        metrics::counter!(FAILED, "queue" => q.clone(), "kind" => k.clone()).increment(1);
        if next.is_none() {
            metrics::counter!(DEAD, "queue" => q, "kind" => k).increment(1);
        }
        Ok(updated)
    }

    /// Gives a leased job back at once, this attempt not counted (a worker shutting down).
    pub async fn release(&self, id: &str, lease_id: &str) -> Result<Job, JobsError> {
        let now = self.clock.now_ms();
        let job = self
            .store
            .release(id, lease_id, now)
            .await
            .map_err(self.db())?
            .ok_or_else(|| not_held(id))?;
        self.publish(now, [(&job, job.state.as_str())]);
        self.announce();
        Ok(job)
    }

    pub async fn get(&self, id: &str) -> Result<(Job, Vec<AttemptError>), JobsError> {
        let job = self
            .store
            .get(id)
            .await
            .map_err(self.db())?
            .ok_or_else(|| JobsError::NotFound(id.to_owned()))?;
        let errors = self.store.errors(id).await.map_err(self.db())?;
        Ok((job, errors))
    }

    fn check_filter(f: &Filter) -> Result<(), JobsError> {
        if !f.state.is_empty() && crate::state::State::parse(&f.state).is_none() {
            return Err(JobsError::Invalid(vec![FieldError::new(
                "state",
                "one of scheduled, available, running, retryable, completed, dead, cancelled",
            )]));
        }
        Ok(())
    }

    pub async fn list(&self, f: &Filter, cursor: &str, limit: u32) -> Result<Vec<Job>, JobsError> {
        Self::check_filter(f)?;
        self.store.list(f, cursor, limit).await.map_err(self.db())
    }

    pub async fn retry(&self, id: &str) -> Result<Job, JobsError> {
        let now = self.clock.now_ms();
        let mut jobs = self
            .store
            .retry(Some(id), &Filter::default(), now)
            .await
            .map_err(self.db())?;
        self.publish(now, jobs.iter().map(|j| (j, j.state.as_str())));
        match jobs.pop() {
            Some(j) => {
                self.announce();
                Ok(j)
            }
            None => Err(self
                .conflict(id, "only dead, cancelled or retryable jobs can be retried")
                .await),
        }
    }

    /// Retries every dead, cancelled or retryable job matching the filter; returns how many.
    pub async fn retry_where(&self, f: &Filter) -> Result<usize, JobsError> {
        Self::check_filter(f)?;
        let now = self.clock.now_ms();
        let jobs = self.store.retry(None, f, now).await.map_err(self.db())?;
        self.publish(now, jobs.iter().map(|j| (j, j.state.as_str())));
        let n = jobs.len();
        self.announce();
        Ok(n)
    }

    /// Deletes every finished (dead, cancelled, completed) job matching the filter.
    pub async fn discard_where(&self, f: &Filter) -> Result<u64, JobsError> {
        Self::check_filter(f)?;
        self.store.discard(f).await.map_err(self.db())
    }

    pub async fn cancel(&self, id: &str) -> Result<Job, JobsError> {
        let now = self.clock.now_ms();
        match self.store.cancel(id, now).await.map_err(self.db())? {
            Some(j) => {
                self.publish(now, [(&j, j.state.as_str())]);
                Ok(j)
            }
            None => Err(self
                .conflict(
                    id,
                    "only scheduled, available or retryable jobs can be cancelled",
                )
                .await),
        }
    }

    async fn conflict(&self, id: &str, why: &str) -> JobsError {
        match self.store.get(id).await {
            Ok(Some(j)) => JobsError::Conflict(format!("job `{id}` is {}: {why}", j.state)),
            Ok(None) => JobsError::NotFound(id.to_owned()),
            Err(e) => self.db()(e),
        }
    }
}

fn not_held(id: &str) -> JobsError {
    JobsError::Conflict(format!(
        "job `{id}` is not leased with that lease_id (its lease ran out or it was never yours)"
    ))
}
