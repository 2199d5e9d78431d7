//! Validation: a job to enqueue (`prepare`, which also turns it into a row, and
//! `JobsService::check` for job templates), queue names and queue settings.

use mortar_core::FieldError;
use mortar_core::api::NAME;

use super::{JobsService, NewJob, QueueSettings};
use crate::error::JobsError;
use crate::state::UniqueWhile;
use crate::store::Job;

pub(super) fn valid_name(s: &str) -> bool {
    NAME.is_valid(s)
}

const YEAR_MS: u64 = 366 * 86_400_000;

/// Checks a job and turns it into a row (`at` prefixes field names in a batch).
pub(crate) fn prepare(
    j: &NewJob,
    at: &str,
    max_payload_bytes: usize,
    now: u64,
) -> Result<Job, Vec<FieldError>> {
    let f = |name: &str| {
        if at.is_empty() {
            name.to_owned()
        } else {
            format!("{at}.{name}")
        }
    };
    let mut errors = Vec::new();
    if !valid_name(&j.queue) {
        errors.push(FieldError::new(f("queue"), NAME.describe()));
    }
    if !valid_name(&j.kind) {
        errors.push(FieldError::new(f("kind"), NAME.describe()));
    }
    if !(0..=100).contains(&j.priority) {
        errors.push(FieldError::new(f("priority"), "must be 0 to 100"));
    }
    if !(1..=1000).contains(&j.max_attempts) {
        errors.push(FieldError::new(f("max_attempts"), "must be 1 to 1000"));
    }
    if j.backoff.base_ms == 0 || j.backoff.max_ms < j.backoff.base_ms {
        errors.push(FieldError::new(
            f("backoff"),
            "base_ms must be at least 1 and max_ms at least base_ms",
        ));
    }
    if j.timeout_ms == 0 || j.timeout_ms > 86_400_000 {
        errors.push(FieldError::new(f("timeout_ms"), "must be 1 to 86400000"));
    }
    if j.delay_ms > YEAR_MS {
        errors.push(FieldError::new(f("delay_ms"), "at most one year"));
    }
    let mut run_at = now + j.delay_ms;
    if let Some(text) = &j.run_at {
        if j.delay_ms > 0 {
            errors.push(FieldError::new(
                f("run_at"),
                "give run_at or delay_ms, not both",
            ));
        }
        match mortar_core::clock::parse_rfc3339(text) {
            Some(t) if t <= now + YEAR_MS => run_at = t.max(now),
            Some(_) => errors.push(FieldError::new(f("run_at"), "at most one year ahead")),
            None => errors.push(FieldError::new(
                f("run_at"),
                "an RFC 3339 timestamp such as 2026-11-21T10:00:00Z",
            )),
        }
    }
    if let Some(k) = &j.unique_key
        && (k.is_empty() || k.len() > 256)
    {
        errors.push(FieldError::new(f("unique_key"), "1 to 256 bytes"));
    }
    let unique_while = match (&j.unique_key, j.unique_while, j.unique_for_ms) {
        (None, None, None) => None,
        (None, _, _) => {
            errors.push(FieldError::new(
                f("unique_while"),
                "unique_while and unique_for_ms need a unique_key",
            ));
            None
        }
        (Some(_), Some(UniqueWhile::ForMs), Some(ms)) if (1..=YEAR_MS).contains(&ms) => {
            Some(UniqueWhile::ForMs)
        }
        (Some(_), Some(UniqueWhile::ForMs), _) => {
            errors.push(FieldError::new(
                f("unique_for_ms"),
                "unique_while = for_ms needs unique_for_ms, 1 to one year",
            ));
            None
        }
        (Some(_), w, None) => Some(w.unwrap_or_default()),
        (Some(_), _, Some(_)) => {
            errors.push(FieldError::new(
                f("unique_for_ms"),
                "only with unique_while = for_ms",
            ));
            None
        }
    };
    if j.tags.len() > 20 || !j.tags.iter().all(|t| valid_name(t)) {
        errors.push(FieldError::new(
            f("tags"),
            format!("up to 20 tags, each {}", NAME.describe()),
        ));
    }
    let payload = j.payload.to_string();
    if payload.len() > max_payload_bytes {
        errors.push(FieldError::new(
            f("payload"),
            format!(
                "{} bytes is over jobs.max_payload_bytes ({max_payload_bytes})",
                payload.len()
            ),
        ));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Job {
        id: mortar_core::ids::new_id(),
        queue: j.queue.clone(),
        kind: j.kind.clone(),
        payload,
        priority: j.priority,
        run_at_ms: run_at as i64,
        state: if run_at > now {
            "scheduled"
        } else {
            "available"
        }
        .into(),
        attempt: 0,
        max_attempts: j.max_attempts,
        backoff_base_ms: j.backoff.base_ms as i64,
        backoff_max_ms: j.backoff.max_ms as i64,
        timeout_ms: j.timeout_ms as i64,
        lease_id: None,
        lease_until_ms: None,
        worker: None,
        result: None,
        unique_key: j.unique_key.clone(),
        created_at_ms: now as i64,
        finished_at_ms: None,
        started_at_ms: None,
        tags: serde_json::to_string(&j.tags).unwrap_or_else(|_| "[]".into()),
        unique_while: unique_while.map(|w| w.as_str().to_owned()),
        unique_hold: unique_while.and(j.unique_key.clone()),
        unique_until_ms: j
            .unique_for_ms
            .filter(|_| unique_while == Some(UniqueWhile::ForMs))
            .map(|ms| (now + ms) as i64),
        attempt_base: 0,
        cancel_requested_at_ms: None,
    })
}

impl QueueSettings {
    pub(super) fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if self
            .concurrency
            .is_some_and(|c| !(1..=100_000).contains(&c))
        {
            errors.push(FieldError::new("concurrency", "must be 1 to 100000"));
        }
        if let Some(r) = self.rate
            && (!(1..=1_000_000).contains(&r.limit) || !(1..=86_400_000).contains(&r.period_ms))
        {
            errors.push(FieldError::new(
                "rate",
                "limit must be 1 to 1000000 and period_ms 1 to 86400000",
            ));
        }
        if self.target_url.as_ref().is_some_and(|u| {
            !(u.starts_with("http://") || u.starts_with("https://"))
                || u.parse::<http::Uri>().is_err()
        }) {
            errors.push(FieldError::new("target_url", "an http:// or https:// URL"));
        }
        if self
            .secret
            .as_ref()
            .is_some_and(|s| s.is_empty() || s.len() > 256)
        {
            errors.push(FieldError::new("secret", "1 to 256 bytes"));
        }
        if self.secret.is_some() && self.target_url.is_none() {
            errors.push(FieldError::new(
                "secret",
                "signs push deliveries: give a target_url too",
            ));
        }
        if self.retention_ms.is_some_and(|r| r > 366 * 86_400_000) {
            errors.push(FieldError::new("retention_ms", "at most one year"));
        }
        errors
    }
}

pub(super) fn check_queue(queue: &str) -> Result<(), JobsError> {
    if valid_name(queue) {
        Ok(())
    } else {
        Err(JobsError::Invalid(vec![FieldError::new(
            "queue",
            NAME.describe(),
        )]))
    }
}

impl JobsService {
    /// Checks a job by the rules `enqueue` applies, without enqueueing it (for blocks that
    /// store job templates to enqueue later, such as cron).
    pub fn check(&self, job: &NewJob) -> Result<(), Vec<FieldError>> {
        prepare(job, "", self.cfg.max_payload_bytes, self.clock.now_ms()).map(drop)
    }
}
