//! Long-poll leasing: `JobsService::lease`, the list of leases waiting on this node (an
//! enqueue takes those its jobs can serve and answers them, `take_waiting` and `deliver`), the
//! drained-queues shortcut, and the wake-ups that send leases looking again.

use std::collections::HashMap;
use std::sync::PoisonError;
use std::sync::atomic::Ordering;
use std::time::Duration;

use mortar_core::FieldError;
use tokio::sync::oneshot;

use super::JobsService;
use super::telemetry::{STARTED, WAIT, per_kind};
use super::validate::valid_name;
use crate::error::JobsError;
use crate::store::{Job, JobStore, LeaseAsk};

/// A waiting lease and where its jobs go.
pub(super) struct Waiting {
    pub(super) ask: LeaseAsk,
    pub(super) reply: oneshot::Sender<Vec<Job>>,
}

/// A lease that found fewer jobs than it asked for: its queues had no more leasable jobs when
/// it looked, as far as `wakes` (read before it looked) tells.
pub(super) struct Drained {
    queues: Vec<String>,
    wakes: u64,
    at_ms: u64,
}

impl JobsService {
    /// Leases up to `max` jobs of `queues`, waiting up to `wait_ms` for some to be due.
    pub async fn lease(
        &self,
        queues: &[String],
        max: u32,
        wait_ms: u64,
        worker: &str,
    ) -> Result<Vec<Job>, JobsError> {
        let mut errors = Vec::new();
        if queues.is_empty() || queues.len() > 100 || !queues.iter().all(|q| valid_name(q)) {
            errors.push(FieldError::new("queues", "name 1 to 100 queues"));
        }
        if !(1..=1000).contains(&max) {
            errors.push(FieldError::new("max", "must be 1 to 1000"));
        }
        if wait_ms > 60_000 {
            errors.push(FieldError::new("wait_ms", "must be 0 to 60000"));
        }
        if worker.is_empty() || worker.len() > 256 {
            errors.push(FieldError::new("worker", "1 to 256 bytes"));
        }
        if !errors.is_empty() {
            return Err(JobsError::Invalid(errors));
        }
        let deadline = tokio::time::Instant::now() + Duration::from_millis(wait_ms);
        loop {
            let woken = self.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let now = self.clock.now_ms();
            self.maintain(now).await?;
            let wakes = self.wakes.load(Ordering::SeqCst);
            let mut jobs = if self.known_drained(queues, wakes, now) {
                Vec::new()
            } else {
                let leased = self
                    .store
                    .lease(queues, max, worker, now)
                    .await
                    .map_err(self.db())?;
                let jobs = leased.jobs;
                if leased.unlimited && jobs.len() < max as usize {
                    *self.drained.lock().unwrap_or_else(PoisonError::into_inner) = Some(Drained {
                        queues: queues.to_vec(),
                        wakes,
                        at_ms: now,
                    });
                }
                jobs
            };
            if jobs.is_empty()
                && tokio::time::Instant::now() < deadline
                && !self.stopping.is_stopping()
            {
                // Wait for an enqueue on this node to hand jobs over, a wake-up (another
                // node's enqueue, a release), something coming due, or poll_ms for other
                // nodes' writes; then look again.
                let due_in = (self.next_due.load(Ordering::SeqCst) - now as i64).max(1) as u64;
                let nap = Duration::from_millis(self.cfg.poll_ms.min(due_in))
                    .min(deadline - tokio::time::Instant::now());
                let ask = LeaseAsk {
                    queues: queues.to_vec(),
                    max,
                    worker: worker.to_owned(),
                };
                jobs = self.wait_for_jobs(ask, nap, woken).await;
                if jobs.is_empty() && !self.stopping.is_stopping() {
                    continue;
                }
            }
            self.started(&jobs);
            return Ok(jobs);
        }
    }

    /// Whether a lease of `queues` can skip its query and wait at once: the last lease of the
    /// same queues, none of them limited, found fewer jobs than it asked for; nothing has woken
    /// the leases or run `maintain` since (`wakes` unchanged); nothing has come due; and it
    /// looked less than `poll_ms` ago (the bound for writes nothing announces, as for a
    /// waiting lease). Saves a query that would find nothing, and leaves the lease waiting
    /// where the next enqueue hands it its jobs.
    fn known_drained(&self, queues: &[String], wakes: u64, now: u64) -> bool {
        let drained = self.drained.lock().unwrap_or_else(PoisonError::into_inner);
        drained.as_ref().is_some_and(|d| {
            d.wakes == wakes
                && d.queues == queues
                && now < d.at_ms + self.cfg.poll_ms
                && (now as i64) < self.next_due.load(Ordering::SeqCst)
        })
    }

    /// Waits up to `nap` (or until `woken`) on the waiting list for an enqueue to hand jobs
    /// over. Empty: none came.
    async fn wait_for_jobs(
        &self,
        ask: LeaseAsk,
        nap: Duration,
        woken: std::pin::Pin<&mut tokio::sync::futures::Notified<'_>>,
    ) -> Vec<Job> {
        let (reply, mut handed) = oneshot::channel();
        // Leaves the list when this long-poll ends or is dropped.
        let place = self.waiting.join((), Waiting { ask, reply });
        tokio::select! {
            biased;
            jobs = &mut handed => return jobs.unwrap_or_default(),
            _ = tokio::time::timeout(nap, woken) => {}
            () = self.stopping.wait() => {}
        }
        if place.leave().is_some() {
            Vec::new()
        } else {
            // An enqueue took this lease and is committing: its answer comes shortly.
            handed.await.unwrap_or_default()
        }
    }

    /// The waiting leases that `rows` (about to be inserted) can serve, taken off the list,
    /// oldest first, until their room covers the jobs that are available at once.
    pub(super) fn take_waiting(&self, rows: &[Job]) -> Vec<Waiting> {
        let mut ready: HashMap<&str, u64> = HashMap::new();
        for r in rows.iter().filter(|r| r.state == "available") {
            *ready.entry(r.queue.as_str()).or_default() += 1;
        }
        if ready.is_empty() {
            return Vec::new();
        }
        self.waiting.take(&(), |w| {
            let mut room = u64::from(w.ask.max);
            let mut serves = false;
            for q in &w.ask.queues {
                if let Some(n) = ready.get_mut(q.as_str()).filter(|n| **n > 0) {
                    let take = room.min(*n);
                    *n -= take;
                    room -= take;
                    serves = true;
                }
            }
            serves
        })
    }

    /// Counts leased jobs as started.
    fn started(&self, jobs: &[Job]) {
        if let Some(until) = jobs.iter().filter_map(|j| j.lease_until_ms).min() {
            self.note_due(until);
        }
        let now = self.clock.now_ms();
        self.publish(now, jobs.iter().map(|j| (j, "running")));
        per_kind(
            jobs,
            |j| (&j.queue, &j.kind),
            |q, k, group| {
                metrics::counter!(STARTED, "queue" => q.to_owned(), "kind" => k.to_owned())
                    .increment(group.len() as u64);
                let wait =
                    metrics::histogram!(WAIT, "queue" => q.to_owned(), "kind" => k.to_owned());
                for j in group {
                    let due = j.run_at_ms.max(j.created_at_ms) as u64;
                    wait.record(now.saturating_sub(due) as f64 / 1000.0);
                }
            },
        );
    }

    /// Jobs may be leasable: wakes this node's waiting leases and, on PostgreSQL, the other
    /// nodes' (see [`announcer`](super::housekeeping::announcer)).
    pub(super) fn announce(&self) {
        self.wake_leases();
        if let Some(tx) = &self.announce_tx {
            let _ = tx.try_send(()); // full: an announcement is already due
        }
    }

    /// Wakes this node's waiting leases (and ends any [`Drained`] shortcut).
    pub(super) fn wake_leases(&self) {
        self.wakes.fetch_add(1, Ordering::SeqCst);
        self.wake.notify_waiters();
    }

    pub(super) fn note_due(&self, at_ms: i64) {
        if self.next_due.fetch_min(at_ms, Ordering::SeqCst) > at_ms {
            self.due_sooner.notify_one();
        }
    }
}

/// Answers the waiting leases an enqueue served; a lease whose long-poll ended meanwhile gets
/// its jobs given back at once (true when any were).
pub(super) async fn deliver(
    store: &JobStore,
    replies: Vec<oneshot::Sender<Vec<Job>>>,
    leased: Vec<Vec<Job>>,
    now: u64,
) -> bool {
    let mut released = false;
    for (reply, jobs) in replies.into_iter().zip(leased) {
        let Err(jobs) = reply.send(jobs) else {
            continue;
        };
        released |= !jobs.is_empty();
        for j in jobs {
            let lease_id = j.lease_id.unwrap_or_default();
            if let Err(e) = store.release(&j.id, &lease_id, now).await {
                tracing::warn!(job = %j.id, error = %e, "jobs: releasing a job nobody waits for failed; it runs when its lease runs out");
            }
        }
    }
    released
}
