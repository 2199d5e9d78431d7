//! A batch between reading and writing: a tick's plan, the JSON rows of the statements that
//! write it, and which runs a claim got.

use std::collections::{HashMap, HashSet};

use mortar_core::storage::sql::json;

use super::sql::{AdvanceRow, ClaimRow};
use super::{Claimed, Decision, Run, Schedule};

/// A tick's due schedules, each with what `decide` planned for it.
pub(super) struct Planned(Vec<(Schedule, Decision)>);

impl Planned {
    pub fn new(due: Vec<Schedule>, mut decide: impl FnMut(&Schedule) -> Decision) -> Self {
        Self(
            due.into_iter()
                .map(|s| {
                    let d = decide(&s);
                    (s, d)
                })
                .collect(),
        )
    }

    /// The rows of [`Sql::advance`](super::sql::Sql::advance); `None` when nothing is due.
    pub fn advances(&self) -> Option<String> {
        if self.0.is_empty() {
            return None;
        }
        let rows: Vec<AdvanceRow> = self
            .0
            .iter()
            .map(|(s, d)| AdvanceRow {
                schedule_id: &s.id,
                version: s.version,
                next_fire_at_ms: d.next_fire_at_ms.map(|n| n as i64),
                last_fire_at_ms: d.fires.last().map(|f| f.0 as i64),
            })
            .collect();
        Some(json(&rows))
    }

    /// The rows of [`Sql::claim`](super::sql::Sql::claim): the fires of the schedules that advanced (`None`: none).
    pub fn claims(&self, advanced: &HashSet<String>) -> Option<String> {
        claim_rows(
            self.0
                .iter()
                .filter(|(s, _)| advanced.contains(&s.id))
                .flat_map(|(s, d)| d.fires.iter().map(|(at, kind)| (s.id.as_str(), *at, *kind))),
        )
    }

    /// The schedules that advanced, as they are now, with the runs this tick inserted.
    pub fn claimed(
        self,
        now: i64,
        node: &str,
        advanced: &HashSet<String>,
        mut inserted: Inserted,
    ) -> Vec<Claimed> {
        self.0
            .into_iter()
            .filter(|(s, _)| advanced.contains(&s.id))
            .map(|(mut s, d)| {
                let runs = d
                    .fires
                    .iter()
                    .filter(|(at, _)| inserted.take(&s.id, *at))
                    .map(|(at, kind)| claimed_run(&s.id, *at, kind, now, node))
                    .collect();
                s.next_fire_at_ms = d.next_fire_at_ms.map(|n| n as i64);
                if let Some((last, _)) = d.fires.last() {
                    s.last_fire_at_ms = Some(*last as i64);
                }
                Claimed { schedule: s, runs }
            })
            .collect()
    }
}

/// The fire times a claim inserted, by schedule.
#[derive(Debug, Default)]
pub(super) struct Inserted(HashMap<String, HashSet<i64>>);

impl Inserted {
    /// Whether this claim inserted `(schedule_id, at)`; answers `true` once per run.
    pub fn take(&mut self, schedule_id: &str, at: u64) -> bool {
        self.0
            .get_mut(schedule_id)
            .is_some_and(|times| times.remove(&(at as i64)))
    }
}

impl FromIterator<(String, i64)> for Inserted {
    fn from_iter<I: IntoIterator<Item = (String, i64)>>(keys: I) -> Self {
        let mut out = Self::default();
        for (schedule_id, at) in keys {
            out.0.entry(schedule_id).or_default().insert(at);
        }
        out
    }
}

/// The rows of [`Sql::claim`](super::sql::Sql::claim) (`None` when there are none), in key order: concurrent claims
/// of the same fire times take their locks in one order instead of deadlocking.
pub(super) fn claim_rows<'a>(
    fires: impl Iterator<Item = (&'a str, u64, &'a str)>,
) -> Option<String> {
    let mut rows: Vec<ClaimRow> = fires
        .map(|(schedule_id, at, kind)| ClaimRow {
            schedule_id,
            fire_at_ms: at as i64,
            kind,
        })
        .collect();
    if rows.is_empty() {
        return None;
    }
    rows.sort_unstable_by_key(|r| (r.schedule_id, r.fire_at_ms));
    Some(json(&rows))
}

pub(super) fn claimed_run(schedule_id: &str, at: u64, kind: &str, now: i64, node: &str) -> Run {
    Run {
        schedule_id: schedule_id.into(),
        fire_at_ms: at as i64,
        kind: kind.into(),
        status: "claimed".into(),
        claimed_at_ms: now,
        node: node.into(),
        job_id: None,
        enqueued_at_ms: None,
    }
}
