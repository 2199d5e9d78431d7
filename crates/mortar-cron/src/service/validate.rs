//! Validation of a schedule as given to the API (`ScheduleSpec`): its expression, zone,
//! policies and times, and its job template by the jobs block's own rules.

use chrono_tz::Tz;
use mortar_core::FieldError;
use mortar_core::api::NAME;
use mortar_jobs::NewJob;

use super::{CronService, ScheduleSpec};
use crate::engine::{self, CronExpr, Misfire, Overlap, Timing};
use crate::error::CronError;
use crate::store::Schedule;

impl CronService {
    pub(super) fn check(
        &self,
        spec: &ScheduleSpec,
        now: u64,
    ) -> Result<(Schedule, Timing), CronError> {
        let mut bad = Vec::new();
        let mut rejected = Vec::new();
        if !NAME.is_valid(&spec.name) {
            bad.push(FieldError::new("name", NAME.describe()));
        }
        let expr = CronExpr::parse(&spec.expr)
            .map_err(|e| bad.push(FieldError::new("expr", e.to_string())))
            .ok();
        let zone: Option<Tz> = engine::parse_zone(&spec.timezone)
            .map_err(|e| bad.push(FieldError::new("timezone", e)))
            .ok();
        if Overlap::parse(&spec.overlap).is_none() {
            bad.push(FieldError::new("overlap", "one of allow, skip, buffer_one"));
        }
        if Misfire::parse(&spec.misfire).is_none() {
            bad.push(FieldError::new(
                "misfire",
                "one of skip, fire_once, fire_all",
            ));
        }
        let time = |field: &str, v: &Option<String>, bad: &mut Vec<FieldError>| match v {
            None => None,
            Some(text) => match chrono::DateTime::parse_from_rfc3339(text) {
                Ok(t) if t.timestamp_millis() >= 0 => Some(t.timestamp_millis() as u64),
                _ => {
                    bad.push(FieldError::new(
                        field,
                        "an RFC 3339 timestamp such as 2026-11-21T10:00:00Z",
                    ));
                    None
                }
            },
        };
        let start_at = time("start_at", &spec.start_at, &mut bad);
        let end_at = time("end_at", &spec.end_at, &mut bad);
        if let (Some(s), Some(e)) = (start_at, end_at)
            && e <= s
        {
            rejected.push(FieldError::new("end_at", "must be after start_at"));
        }
        if spec.catchup_window_ms > self.cfg.max_catchup_window_ms {
            rejected.push(FieldError::new(
                "catchup_window_ms",
                format!(
                    "{} is over cron.max_catchup_window_ms ({})",
                    spec.catchup_window_ms, self.cfg.max_catchup_window_ms
                ),
            ));
        }
        if spec.jitter_ms > 3_600_000 {
            rejected.push(FieldError::new("jitter_ms", "must be 0 to 3600000"));
        }
        let job = self.check_job(&spec.job, &mut bad, &mut rejected);
        if !bad.is_empty() {
            return Err(CronError::Invalid(bad));
        }
        let (Some(expr), Some(zone), Some(job)) = (expr, zone, job) else {
            return Err(CronError::Invalid(bad));
        };
        let mut timing = Timing::new(expr, zone);
        timing.start_at_ms = start_at;
        timing.end_at_ms = end_at;
        let next = timing.next_after(now);
        if next.is_none() && rejected.is_empty() {
            rejected.push(FieldError::new(
                if end_at.is_some() { "end_at" } else { "expr" },
                "the schedule would never fire again",
            ));
        }
        if !rejected.is_empty() {
            return Err(CronError::Rejected(rejected));
        }
        let schedule = Schedule {
            id: mortar_core::ids::new_id(),
            name: spec.name.clone(),
            expr: timing.expr.as_str().to_owned(),
            timezone: spec.timezone.clone(),
            job,
            overlap: spec.overlap.clone(),
            misfire: spec.misfire.clone(),
            catchup_window_ms: spec.catchup_window_ms as i64,
            jitter_ms: spec.jitter_ms as i64,
            start_at_ms: start_at.map(|v| v as i64),
            end_at_ms: end_at.map(|v| v as i64),
            enabled: spec.enabled,
            version: 1,
            next_fire_at_ms: next.map(|v| v as i64),
            last_fire_at_ms: None,
            created_at_ms: now as i64,
            updated_at_ms: now as i64,
        };
        Ok((schedule, timing))
    }

    /// The job template: a mortar-jobs job, checked by the jobs block's own rules now rather
    /// than at every fire. Cron owns the unique key and the run time.
    fn check_job(
        &self,
        job: &serde_json::Value,
        bad: &mut Vec<FieldError>,
        rejected: &mut Vec<FieldError>,
    ) -> Option<String> {
        let parsed: NewJob = match serde_json::from_value(job.clone()) {
            Ok(j) => j,
            Err(e) => {
                bad.push(FieldError::new("job", e.to_string()));
                return None;
            }
        };
        for (set, field) in [
            (parsed.unique_key.is_some(), "unique_key"),
            (parsed.unique_while.is_some(), "unique_while"),
            (parsed.unique_for_ms.is_some(), "unique_for_ms"),
            (parsed.run_at.is_some(), "run_at"),
        ] {
            if set {
                rejected.push(FieldError::new(
                    format!("job.{field}"),
                    "set by cron for each fire; leave it out",
                ));
            }
        }
        if let Err(errors) = self.jobs.check(&parsed) {
            rejected.extend(
                errors
                    .into_iter()
                    .map(|f| FieldError::new(format!("job.{}", f.field), f.message)),
            );
        }
        serde_json::to_string(&parsed).ok()
    }
}
