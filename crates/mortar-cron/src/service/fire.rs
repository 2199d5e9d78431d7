//! The fire path every node runs: the scheduler loop, a tick (claim due fires, apply overlap
//! policies, enqueue, settle), the enqueue of claimed runs into mortar-jobs, and housekeeping
//! (the sweeper for runs whose node died, buffered runs, pruning history).

use std::sync::Arc;
use std::time::Duration;

use mortar_core::clock::rfc3339;
use mortar_jobs::NewJob;
use mortar_jobs::state::UniqueWhile;

use super::{
    CronService, ENQUEUE_FAILED, FIRE_LAG, FIRES, MISFIRES, OVERLAPS_SKIPPED, jobs_err, timing_of,
};
use crate::engine::{self, Misfire, Overlap, PlanLimits};
use crate::error::CronError;
use crate::store::{Decision, Run, Schedule};

impl CronService {
    pub(super) async fn scheduler_loop(self: Arc<Self>) {
        tracing::info!(node = %self.node, "cron scheduler started");
        loop {
            if self.stopping.load(std::sync::atomic::Ordering::SeqCst) {
                tracing::info!("cron scheduler stopped");
                return;
            }
            let woken = self.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let claimed = match self.tick().await {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(error = %e, "cron: tick failed; retrying");
                    tokio::time::sleep(Duration::from_millis(self.cfg.poll_ms)).await;
                    continue;
                }
            };
            let now = self.clock.now_ms();
            let wait = match self.store.earliest_due().await {
                Ok(Some(t)) if t as u64 > now => (t as u64 - now).min(self.cfg.poll_ms),
                // More due: go on at once, unless nothing was claimed (another node holds them).
                Ok(Some(_)) if claimed > 0 => 0,
                Ok(Some(_)) => 5,
                Ok(None) | Err(_) => self.cfg.poll_ms,
            };
            if wait > 0 {
                let _ = tokio::time::timeout(Duration::from_millis(wait), woken).await;
            }
        }
    }

    /// One pass of the scheduler at the clock's `now`: claims every due fire (in batches),
    /// applies overlap policies, enqueues, and does housekeeping (sweeping runs whose node
    /// died, releasing buffered runs, pruning history). Returns how many runs it claimed.
    pub async fn tick(&self) -> Result<usize, CronError> {
        let now = self.clock.now_ms();
        let limits = PlanLimits {
            misfire_threshold_ms: self.cfg.misfire_threshold_ms,
            max_fires: 1000,
        };
        let threshold = self.cfg.misfire_threshold_ms;
        let claimed = self
            .store
            .claim_due(now, self.cfg.batch, &self.node, move |s| {
                decide(s, now, threshold, limits)
            })
            .await
            .map_err(self.db())?;
        let mut total = 0;
        let mut ready = Vec::new();
        let mut held = Vec::new();
        for c in claimed {
            total += c.runs.len();
            let overlap = Overlap::parse(&c.schedule.overlap).unwrap_or(Overlap::Allow);
            if overlap == Overlap::Allow || c.runs.is_empty() {
                ready.extend(c.runs.into_iter().map(|r| (c.schedule.clone(), r)));
                continue;
            }
            let mut busy = self.previous_unfinished(&c.schedule.id).await?;
            let mut buffered = false;
            if overlap == Overlap::BufferOne
                && let Some(waiting) = self
                    .store
                    .buffered(&c.schedule.id)
                    .await
                    .map_err(self.db())?
            {
                if busy {
                    buffered = true;
                } else {
                    // The waiting fire goes first; this tick's fires queue behind it.
                    busy = true;
                    ready.push((c.schedule.clone(), waiting));
                }
            }
            for mut r in c.runs {
                if !busy {
                    busy = true;
                    ready.push((c.schedule.clone(), r));
                } else if overlap == Overlap::BufferOne && !buffered {
                    buffered = true;
                    r.status = "buffered".into();
                    held.push(r);
                } else {
                    metrics::counter!(OVERLAPS_SKIPPED, "policy" => overlap.as_str()).increment(1);
                    r.status = "skipped".into();
                    held.push(r);
                }
            }
        }
        self.store.settle(&held).await.map_err(self.db())?;
        self.enqueue_runs(ready).await?;
        self.housekeeping(now).await?;
        Ok(total)
    }

    async fn previous_unfinished(&self, schedule_id: &str) -> Result<bool, CronError> {
        let Some(job_id) = self
            .store
            .latest_job(schedule_id)
            .await
            .map_err(self.db())?
        else {
            return Ok(false);
        };
        match self.jobs.get(&job_id).await {
            Ok((job, _)) => Ok(!finished(&job.state)),
            Err(mortar_jobs::error::JobsError::NotFound(_)) => Ok(false),
            Err(e) => Err(jobs_err(e)),
        }
    }

    fn new_job(&self, s: &Schedule, fire_at: u64) -> Result<NewJob, String> {
        let mut job: NewJob = serde_json::from_str(&s.job).map_err(|e| e.to_string())?;
        job.unique_key = Some(format!("cron:{}:{fire_at}", s.id));
        job.unique_while = Some(UniqueWhile::ForMs);
        job.unique_for_ms = Some(self.cfg.history_retention_ms);
        let jitter = engine::jitter_ms(&s.id, fire_at, s.jitter_ms as u64);
        if jitter > 0 {
            job.run_at = Some(rfc3339(fire_at + jitter));
        }
        Ok(job)
    }

    /// Enqueues claimed runs as one batch and records their jobs. A batch the jobs block
    /// rejects is retried run by run, so one bad template does not hold the others back.
    pub(super) async fn enqueue_runs(&self, runs: Vec<(Schedule, Run)>) -> Result<(), CronError> {
        for chunk in runs.chunks(5_000) {
            let mut jobs = Vec::with_capacity(chunk.len());
            let mut keep = Vec::with_capacity(chunk.len());
            let mut failed = Vec::new();
            for (s, r) in chunk {
                match self.new_job(s, r.fire_at_ms as u64) {
                    Ok(j) => {
                        jobs.push(j);
                        keep.push(r.clone());
                    }
                    Err(e) => {
                        tracing::error!(schedule = %s.name, error = %e, "cron: bad job template");
                        let mut r = r.clone();
                        r.status = "failed".into();
                        failed.push(r);
                    }
                }
            }
            self.store.settle(&failed).await.map_err(self.db())?;
            if jobs.is_empty() {
                continue;
            }
            match self.jobs.enqueue(&jobs).await {
                Ok(done) => {
                    let settled = self.settle_enqueued(keep, done.into_iter().map(|e| e.job.id));
                    self.store.settle(&settled).await.map_err(self.db())?;
                }
                Err(mortar_jobs::error::JobsError::Invalid(errors)) if jobs.len() > 1 => {
                    tracing::warn!(?errors, "cron: a batch was rejected; enqueueing one by one");
                    for (job, run) in jobs.into_iter().zip(keep) {
                        match self.jobs.enqueue(std::slice::from_ref(&job)).await {
                            Ok(done) => {
                                let settled = self
                                    .settle_enqueued(vec![run], done.into_iter().map(|e| e.job.id));
                                self.store.settle(&settled).await.map_err(self.db())?;
                            }
                            Err(mortar_jobs::error::JobsError::Invalid(errors)) => {
                                tracing::error!(schedule = %run.schedule_id, ?errors, "cron: job rejected");
                                metrics::counter!(ENQUEUE_FAILED).increment(1);
                                let mut run = run;
                                run.status = "failed".into();
                                self.store.settle(&[run]).await.map_err(self.db())?;
                            }
                            Err(e) => return Err(jobs_err(e)),
                        }
                    }
                }
                Err(mortar_jobs::error::JobsError::Invalid(errors)) => {
                    tracing::error!(schedule = %keep[0].schedule_id, ?errors, "cron: job rejected");
                    metrics::counter!(ENQUEUE_FAILED).increment(1);
                    let mut run = keep.remove(0);
                    run.status = "failed".into();
                    self.store.settle(&[run]).await.map_err(self.db())?;
                }
                Err(e) => return Err(jobs_err(e)),
            }
        }
        Ok(())
    }

    fn settle_enqueued(&self, runs: Vec<Run>, ids: impl Iterator<Item = String>) -> Vec<Run> {
        let at = self.clock.now_ms();
        let settled: Vec<Run> = runs
            .into_iter()
            .zip(ids)
            .map(|(mut r, id)| {
                r.status = "enqueued".into();
                r.job_id = Some(id);
                r.enqueued_at_ms = Some(at as i64);
                metrics::counter!(FIRES, "kind" => kind_label(&r.kind)).increment(1);
                if r.kind == "scheduled" {
                    let lag = at.saturating_sub(r.fire_at_ms as u64);
                    metrics::histogram!(FIRE_LAG).record(lag as f64 / 1000.0);
                }
                r
            })
            .collect();
        crate::events::publish(&self.hub, &settled);
        settled
    }

    /// Sweeps runs whose node died before enqueueing them, releases buffered runs whose
    /// previous job finished, prunes old history. At most once a second (prune once a minute).
    async fn housekeeping(&self, now: u64) -> Result<(), CronError> {
        let (sweep, prune) = {
            let mut h = self
                .housekeeping
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            // abs_diff: a clock stepped back must not stop housekeeping until it catches up.
            let sweep = now.abs_diff(h.swept_at_ms) >= 1_000;
            let prune = now.abs_diff(h.pruned_at_ms) >= 60_000;
            if sweep {
                h.swept_at_ms = now;
            }
            if prune {
                h.pruned_at_ms = now;
            }
            (sweep, prune)
        };
        if sweep {
            self.sweep(now).await?;
        }
        if prune {
            let n = self
                .store
                .prune(now.saturating_sub(self.cfg.history_retention_ms))
                .await
                .map_err(self.db())?;
            if n > 0 {
                tracing::debug!(runs = n, "cron: pruned history");
            }
        }
        Ok(())
    }

    /// Enqueues stale claimed runs and due buffered runs. Safe on every node at once: the
    /// job's unique key makes a second enqueue of the same run return the first job.
    pub async fn sweep(&self, now: u64) -> Result<usize, CronError> {
        let stale = self
            .store
            .pending(
                "claimed",
                now.saturating_sub(self.cfg.sweep_after_ms),
                self.cfg.batch,
            )
            .await
            .map_err(self.db())?;
        let mut ready = Vec::new();
        for r in stale {
            if let Some(s) = self.store.get(&r.schedule_id).await.map_err(self.db())? {
                tracing::info!(schedule = %s.name, fire_at = %rfc3339(r.fire_at_ms as u64), claimed_by = %r.node, "cron: enqueueing a run its node left claimed");
                ready.push((s, r));
            }
        }
        for r in self
            .store
            .pending("buffered", now + 1, self.cfg.batch)
            .await
            .map_err(self.db())?
        {
            if self.previous_unfinished(&r.schedule_id).await? {
                continue;
            }
            if let Some(s) = self.store.get(&r.schedule_id).await.map_err(self.db())? {
                ready.push((s, r));
            }
        }
        let n = ready.len();
        self.enqueue_runs(ready).await?;
        Ok(n)
    }
}

fn finished(state: &str) -> bool {
    matches!(state, "completed" | "dead" | "cancelled")
}

fn kind_label(kind: &str) -> &'static str {
    match kind {
        "scheduled" => "scheduled",
        "catchup" => "catchup",
        "manual" => "manual",
        _ => "backfill",
    }
}

/// A tick's decision for one schedule: the engine's plan, each fire labelled on time or late.
fn decide(s: &Schedule, now: u64, threshold: u64, limits: PlanLimits) -> Decision {
    let (Some(timing), Some(next)) = (timing_of(s), s.next_fire_at_ms) else {
        return Decision {
            fires: Vec::new(),
            next_fire_at_ms: None,
        };
    };
    let misfire = Misfire::parse(&s.misfire).unwrap_or(Misfire::FireOnce);
    let plan = engine::plan(
        &timing,
        next as u64,
        now,
        misfire,
        s.catchup_window_ms as u64,
        limits,
    );
    if plan.missed > 0 {
        metrics::counter!(MISFIRES, "policy" => misfire.as_str()).increment(plan.missed);
        tracing::info!(schedule = %s.name, missed = plan.missed, policy = misfire.as_str(), "cron: fire times missed");
    }
    Decision {
        fires: plan
            .fires
            .into_iter()
            .map(|f| {
                (
                    f,
                    if now - f > threshold {
                        "catchup"
                    } else {
                        "scheduled"
                    },
                )
            })
            .collect(),
        next_fire_at_ms: plan.next,
    }
}
