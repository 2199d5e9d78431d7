//! The operations on schedules: create, replace, get, list, delete, pause and resume,
//! trigger, backfill, run history and previews of fire times.

use mortar_core::FieldError;

use super::{Backfilled, CronService, RunInfo, ScheduleSpec, jobs_err, timing_of};
use crate::engine::{self, CronExpr, Timing};
use crate::error::CronError;
use crate::store::{Run, Schedule};

impl CronService {
    pub async fn create(&self, spec: &ScheduleSpec) -> Result<Schedule, CronError> {
        let now = self.clock.now_ms();
        let (s, _) = self.check(spec, now)?;
        if !self.store.insert(&s).await.map_err(self.db())? {
            return Err(CronError::Conflict(format!(
                "a schedule named `{}` exists",
                s.name
            )));
        }
        self.wake.notify_waiters();
        Ok(s)
    }

    /// Replaces a schedule's definition; it takes effect from the next fire (fire times
    /// already claimed stay claimed). The name cannot change.
    pub async fn replace(&self, id: &str, spec: &ScheduleSpec) -> Result<Schedule, CronError> {
        let now = self.clock.now_ms();
        let current = self.get(id).await?;
        if spec.name != current.name {
            return Err(CronError::Rejected(vec![FieldError::new(
                "name",
                format!("a schedule cannot be renamed (it is `{}`)", current.name),
            )]));
        }
        let (mut s, timing) = self.check(spec, now)?;
        // Next fire after the later of now and the last fire, so nothing fires twice.
        let after = current.last_fire_at_ms.map_or(now, |l| (l as u64).max(now));
        s.next_fire_at_ms = timing.next_after(after).map(|v| v as i64);
        s.id = current.id.clone();
        s.version = current.version;
        s.created_at_ms = current.created_at_ms;
        s.last_fire_at_ms = current.last_fire_at_ms;
        if !self.store.replace(&s).await.map_err(self.db())? {
            return Err(CronError::Conflict(format!(
                "schedule `{}` changed meanwhile; read it and try again",
                current.name
            )));
        }
        self.wake.notify_waiters();
        self.get(&s.id).await
    }

    pub async fn get(&self, id_or_name: &str) -> Result<Schedule, CronError> {
        self.store
            .get(id_or_name)
            .await
            .map_err(self.db())?
            .ok_or_else(|| CronError::NotFound(id_or_name.to_owned()))
    }

    pub async fn list(&self, after: &str, limit: u32) -> Result<Vec<Schedule>, CronError> {
        self.store.list(after, limit).await.map_err(self.db())
    }

    /// The latest run of each schedule, of any kind (manual and backfill runs included).
    pub async fn last_runs(&self, schedules: &[Schedule]) -> Result<Vec<Run>, CronError> {
        let ids: Vec<&str> = schedules.iter().map(|s| s.id.as_str()).collect();
        self.store.last_runs(&ids).await.map_err(self.db())
    }

    pub async fn delete(&self, id_or_name: &str) -> Result<Schedule, CronError> {
        let s = self.get(id_or_name).await?;
        self.store.delete(&s.id).await.map_err(self.db())?;
        Ok(s)
    }

    /// Pauses (no fires) or resumes a schedule. Resuming continues from the next fire after
    /// now: fires missed while paused are not caught up (backfill them if wanted).
    pub async fn set_enabled(
        &self,
        id_or_name: &str,
        enabled: bool,
    ) -> Result<Schedule, CronError> {
        for _ in 0..3 {
            let mut s = self.get(id_or_name).await?;
            if s.enabled == enabled {
                return Ok(s);
            }
            let now = self.clock.now_ms();
            s.enabled = enabled;
            s.updated_at_ms = now as i64;
            if enabled {
                let timing = timing_of(&s).ok_or_else(|| {
                    CronError::Conflict("the stored schedule no longer parses".into())
                })?;
                let after = s.last_fire_at_ms.map_or(now, |l| (l as u64).max(now));
                s.next_fire_at_ms = timing.next_after(after).map(|v| v as i64);
            }
            if self.store.replace(&s).await.map_err(self.db())? {
                self.wake.notify_waiters();
                return self.get(&s.id).await;
            }
        }
        Err(CronError::Conflict(format!(
            "schedule `{id_or_name}` keeps changing; try again"
        )))
    }

    /// Fires a schedule now, whatever its timing, pause state and overlap policy.
    pub async fn trigger(&self, id_or_name: &str) -> Result<Run, CronError> {
        let s = self.get(id_or_name).await?;
        let now = self.clock.now_ms();
        // Fire times are claimed once; a trigger in the same millisecond as another fire of
        // this schedule takes the next free millisecond.
        for at in now..now + 100 {
            let mut runs = self
                .store
                .claim(&s.id, &[(at, "manual")], &self.node, now)
                .await
                .map_err(self.db())?;
            if let Some(run) = runs.pop() {
                self.enqueue_runs(vec![(s.clone(), run.clone())]).await?;
                return self.run(&s.id, at).await;
            }
        }
        Err(CronError::Conflict(
            "too many fires at once; try again".into(),
        ))
    }

    /// Fires every fire time of the schedule in `(from, to]` that was never claimed (those
    /// that were are left alone, so a backfill over a stretch that did run fires nothing twice).
    pub async fn backfill(
        &self,
        id_or_name: &str,
        from: &str,
        to: &str,
    ) -> Result<Backfilled, CronError> {
        let s = self.get(id_or_name).await?;
        let now = self.clock.now_ms();
        let mut bad = Vec::new();
        let parse = |field: &str, v: &str, bad: &mut Vec<FieldError>| {
            match chrono::DateTime::parse_from_rfc3339(v) {
                Ok(t) if t.timestamp_millis() >= 0 => Some(t.timestamp_millis() as u64),
                _ => {
                    bad.push(FieldError::new(
                        field,
                        "an RFC 3339 timestamp such as 2026-11-21T10:00:00Z",
                    ));
                    None
                }
            }
        };
        let from_ms = parse("from", from, &mut bad);
        let to_ms = parse("to", to, &mut bad);
        let (Some(from_ms), Some(to_ms)) = (from_ms, to_ms) else {
            return Err(CronError::Invalid(bad));
        };
        if to_ms <= from_ms {
            return Err(CronError::Rejected(vec![FieldError::new(
                "to",
                "must be after from",
            )]));
        }
        if to_ms > now {
            return Err(CronError::Rejected(vec![FieldError::new(
                "to",
                "must not be in the future",
            )]));
        }
        let timing = timing_of(&s)
            .ok_or_else(|| CronError::Conflict("the stored schedule no longer parses".into()))?;
        let max = self.cfg.max_backfill as usize;
        let times = timing.fires_between(from_ms, to_ms, max + 1);
        if times.len() > max {
            return Err(CronError::Rejected(vec![FieldError::new(
                "from",
                format!(
                    "more than cron.max_backfill ({max}) fire times in the range; backfill a shorter one"
                ),
            )]));
        }
        let fires: Vec<(u64, &'static str)> = times.iter().map(|t| (*t, "backfill")).collect();
        let runs = self
            .store
            .claim(&s.id, &fires, &self.node, now)
            .await
            .map_err(self.db())?;
        let already = fires.len() - runs.len();
        self.enqueue_runs(runs.iter().map(|r| (s.clone(), r.clone())).collect())
            .await?;
        let mut done = Vec::with_capacity(runs.len());
        for r in &runs {
            done.push(self.run(&s.id, r.fire_at_ms as u64).await?);
        }
        Ok(Backfilled {
            runs: done,
            already,
        })
    }

    async fn run(&self, schedule_id: &str, fire_at: u64) -> Result<Run, CronError> {
        self.store
            .runs(schedule_id, fire_at as i64 + 1, 1)
            .await
            .map_err(self.db())?
            .into_iter()
            .find(|r| r.fire_at_ms == fire_at as i64)
            .ok_or_else(|| CronError::NotFound(schedule_id.to_owned()))
    }

    /// A schedule's runs, newest first, with their jobs' outcomes.
    pub async fn runs(
        &self,
        id_or_name: &str,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<RunInfo>, CronError> {
        let s = self.get(id_or_name).await?;
        let runs = self
            .store
            .runs(&s.id, before.unwrap_or(i64::MAX), limit)
            .await
            .map_err(self.db())?;
        let mut out = Vec::with_capacity(runs.len());
        for run in runs {
            let job = match &run.job_id {
                Some(id) => match self.jobs.get(id).await {
                    Ok((j, _)) => Some(j),
                    Err(mortar_jobs::error::JobsError::NotFound(_)) => None,
                    Err(e) => return Err(jobs_err(e)),
                },
                None => None,
            };
            out.push(RunInfo {
                job_state: job.as_ref().map(|j| j.state.clone()),
                started_at_ms: job.as_ref().and_then(|j| j.started_at_ms),
                finished_at_ms: job.as_ref().and_then(|j| j.finished_at_ms),
                run,
            });
        }
        Ok(out)
    }

    /// The next `count` fire times of an expression in a zone after `from` (default now).
    pub fn preview(
        &self,
        expr: &str,
        timezone: &str,
        from: Option<&str>,
        count: u32,
    ) -> Result<Vec<u64>, CronError> {
        let mut bad = Vec::new();
        let expr = CronExpr::parse(expr)
            .map_err(|e| bad.push(FieldError::new("expr", e.to_string())))
            .ok();
        let zone = engine::parse_zone(timezone)
            .map_err(|e| bad.push(FieldError::new("timezone", e)))
            .ok();
        let from = match from {
            None => Some(self.clock.now_ms()),
            Some(text) => match chrono::DateTime::parse_from_rfc3339(text) {
                Ok(t) if t.timestamp_millis() >= 0 => Some(t.timestamp_millis() as u64),
                _ => {
                    bad.push(FieldError::new(
                        "from",
                        "an RFC 3339 timestamp such as 2026-11-21T10:00:00Z",
                    ));
                    None
                }
            },
        };
        if !(1..=1000).contains(&count) {
            bad.push(FieldError::new("count", "must be 1 to 1000"));
        }
        match (expr, zone, from) {
            (Some(expr), Some(zone), Some(from)) if bad.is_empty() => {
                Ok(Timing::new(expr, zone).fires_between(from, u64::MAX, count as usize))
            }
            _ => Err(CronError::Invalid(bad)),
        }
    }

    /// The next fire of a stored schedule, for views (the stored value, or none when paused).
    pub fn next_fire(s: &Schedule) -> Option<u64> {
        s.enabled
            .then_some(s.next_fire_at_ms)
            .flatten()
            .map(|v| v as u64)
    }
}
