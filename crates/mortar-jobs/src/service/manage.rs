//! Jobs as operators see them: reads and listing, retry (one or by filter, with a fresh budget
//! of attempts), discard, and cancel (at once when the job waits; asked of its worker when it
//! runs).

use mortar_core::FieldError;

use super::JobsService;
use crate::error::JobsError;
use crate::state::State;
use crate::store::{AttemptError, Filter, Job};

impl JobsService {
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
        if !f.state.is_empty() && State::parse(&f.state).is_none() {
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

    /// Runs a dead, cancelled or retryable job again now, with a fresh budget of
    /// `max_attempts` attempts (and backoff); attempt numbers keep counting.
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

    /// Cancels a job. One that waits (scheduled, available, retryable) is `cancelled` at once.
    /// One that runs is asked to stop: the answer is the running job with
    /// `cancel_requested_at_ms` set; its worker learns at its next heartbeat (refused with
    /// `cancelled`) and the attempt ends `cancelled`, never retried — unless its completion
    /// comes first (then it is `completed`). A failure, release or lease that runs out
    /// meanwhile ends it `cancelled` too.
    pub async fn cancel(&self, id: &str) -> Result<Job, JobsError> {
        let now = self.clock.now_ms();
        // A job may change state between the two statements (leased, or its attempt ended):
        // look again, a few times.
        for _ in 0..3 {
            if let Some(j) = self.store.cancel(id, now).await.map_err(self.db())? {
                self.publish(now, [(&j, j.state.as_str())]);
                return Ok(j);
            }
            if let Some(j) = self
                .store
                .request_cancel(id, now)
                .await
                .map_err(self.db())?
            {
                // Asked again: already published.
                if j.cancel_requested_at_ms == Some(now as i64) {
                    crate::events::publish_cancel_requested(&self.hub, now, &j);
                }
                return Ok(j);
            }
            let still = self.store.get(id).await.map_err(self.db())?;
            match still.map(|j| j.state()) {
                None => return Err(JobsError::NotFound(id.to_owned())),
                Some(State::Scheduled | State::Available | State::Retryable | State::Running) => {}
                Some(_) => break,
            }
        }
        Err(self
            .conflict(
                id,
                "only scheduled, available, retryable or running jobs can be cancelled",
            )
            .await)
    }

    async fn conflict(&self, id: &str, why: &str) -> JobsError {
        match self.store.get(id).await {
            Ok(Some(j)) => JobsError::Conflict(format!("job `{id}` is {}: {why}", j.state)),
            Ok(None) => JobsError::NotFound(id.to_owned()),
            Err(e) => self.db()(e),
        }
    }
}
