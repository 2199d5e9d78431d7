//! Cron rules, pure: parsing expressions (croner owns the grammar), the next fire times in a
//! time zone under our DST policy, what a late tick fires under each misfire policy, and
//! jitter. No IO, no clock reads: `now` is always a parameter.
//!
//! ## DST policy
//!
//! A schedule is **fixed-time** when its second, minute and hour fields each name exactly one
//! value (`30 2 * * *`, `@daily`); otherwise it is an **interval** schedule (`*/15 * * * *`,
//! `0 * * * *`, `0 9-17 * * *`).
//!
//! * Spring forward: a fixed-time schedule whose wall-clock time does not exist that day fires
//!   once, at the first instant after the gap (`30 2 * * *` in New York on 8 March 2026 fires at
//!   03:00 EDT). An interval schedule skips the wall-clock times that do not exist; its next
//!   fire is the next one that does, so fires stay spaced in real elapsed time.
//! * Fall back: a fixed-time schedule whose wall-clock time occurs twice fires once, at the
//!   first occurrence. An interval schedule fires on both passes (01:00 EDT, 01:30 EDT, 01:00
//!   EST, 01:30 EST for `*/30 * * * *`): real elapsed time between fires stays the interval.
//!
//! croner 4 implements exactly this; the tests below pin it on fixed instants in
//! America/New_York, Europe/London and Australia/Lord_Howe (a 30-minute shift), so a croner
//! upgrade that changed it would fail here.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};
use croner::{Cron, JobType};

/// A parsed, valid cron expression: 5 fields, or 6 with seconds first, or a macro.
#[derive(Debug, Clone)]
pub struct CronExpr {
    cron: Cron,
    source: String,
    interval: bool,
}

/// Why an expression is invalid, pointing at the cron field when one field is to blame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExprError {
    /// The cron field at fault (`minute`, `hour`, `day_of_month`, …), when one is.
    pub field: Option<&'static str>,
    /// 1-based character column where the faulty field starts (1 when no field is to blame).
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ExprError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.field {
            Some(field) => write!(
                f,
                "{field} field (column {}): {}",
                self.column, self.message
            ),
            None => f.write_str(&self.message),
        }
    }
}

const FIVE: [&str; 5] = ["minute", "hour", "day_of_month", "month", "day_of_week"];
const SIX: [&str; 6] = [
    "second",
    "minute",
    "hour",
    "day_of_month",
    "month",
    "day_of_week",
];
const MACROS: [&str; 6] = [
    "@yearly",
    "@annually",
    "@monthly",
    "@weekly",
    "@daily",
    "@hourly",
];

fn parser() -> CronParser {
    CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .build()
}

/// croner's messages start with its own category ("Component error: …"); ours say the field.
fn clean(e: &croner::errors::CronError) -> String {
    let s = e.to_string();
    let s = s
        .strip_prefix("Component error: ")
        .or_else(|| s.strip_prefix("Invalid pattern: "))
        .unwrap_or(&s);
    s.trim_end_matches('.').to_owned()
}

impl CronExpr {
    pub fn parse(source: &str) -> Result<Self, ExprError> {
        let trimmed = source.trim();
        let whole = |message: String| ExprError {
            field: None,
            column: 1,
            message,
        };
        if trimmed.is_empty() {
            return Err(whole("empty expression".into()));
        }
        if source.len() > 256 {
            return Err(whole("longer than 256 characters".into()));
        }
        if trimmed.starts_with('@') {
            if !MACROS.iter().any(|m| m.eq_ignore_ascii_case(trimmed)) {
                return Err(whole(format!(
                    "unknown macro `{trimmed}`: use one of {}",
                    MACROS.join(", ")
                )));
            }
        } else {
            // Fields with the column each starts at, to point at the one at fault.
            let mut fields = Vec::new();
            let mut start = None;
            for (i, c) in source.char_indices().chain([(source.len(), ' ')]) {
                match (c.is_whitespace(), start) {
                    (false, None) => start = Some(i),
                    (true, Some(s)) => {
                        fields.push((&source[s..i], source[..s].chars().count() + 1));
                        start = None;
                    }
                    _ => {}
                }
            }
            let names: &[&'static str] = match fields.len() {
                5 => &FIVE,
                6 => &SIX,
                n => {
                    return Err(whole(format!(
                        "{n} fields: give 5 (minute hour day-of-month month day-of-week) or 6 \
                         (second first), or a macro such as @daily"
                    )));
                }
            };
            if let Err(e) = parser().parse(trimmed) {
                // Try each field alone among wildcards: the first that fails is the culprit.
                for (i, (field, column)) in fields.iter().enumerate() {
                    let probe: Vec<&str> = (0..fields.len())
                        .map(|j| if i == j { *field } else { "*" })
                        .collect();
                    if let Err(fe) = parser().parse(&probe.join(" ")) {
                        return Err(ExprError {
                            field: Some(names[i]),
                            column: *column,
                            message: format!("`{field}`: {}", clean(&fe)),
                        });
                    }
                }
                return Err(whole(clean(&e)));
            }
            day_fields(&fields, names)?;
        }
        let cron = parser().parse(trimmed).map_err(|e| whole(clean(&e)))?;
        let interval = cron.determine_job_type() == JobType::IntervalWildcard;
        Ok(Self {
            cron,
            source: trimmed.to_owned(),
            interval,
        })
    }

    /// An interval schedule (not a single time of day): follows real time across DST changes.
    pub fn is_interval(&self) -> bool {
        self.interval
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }
}

/// The day-field rule. When both day-of-month and day-of-week are restricted, a time matches
/// when *either* does (Vixie cron's rule: `0 9 13 * FRI` fires on every 13th and on every
/// Friday). `L` or `W` in day-of-month, or `L` or `#` in day-of-week, beside a restricted other
/// day field is refused: implementations disagree on what it means (Quartz refuses it, Vixie
/// cron and croniter read it differently), so no reading of it would be safe to guess.
fn day_fields(fields: &[(&str, usize)], names: &[&'static str]) -> Result<(), ExprError> {
    let at = |name: &str| names.iter().position(|n| *n == name);
    let (Some(dom), Some(dow)) = (at("day_of_month"), at("day_of_week")) else {
        return Ok(());
    };
    let restricted = |f: &str| f != "*" && f != "?";
    let (dom_f, dow_f) = (fields[dom].0, fields[dow].0);
    let dom_special = dom_f.contains(['L', 'l', 'W', 'w']);
    let dow_special = dow_f.contains('#') || dow_f.ends_with(['L', 'l']);
    let culprit = if dom_special && restricted(dow_f) {
        Some((dom, dom_f, "day-of-week", dow_f))
    } else if dow_special && restricted(dom_f) {
        Some((dow, dow_f, "day-of-month", dom_f))
    } else {
        None
    };
    match culprit {
        None => Ok(()),
        Some((i, special, other, other_f)) => Err(ExprError {
            field: Some(names[i]),
            column: fields[i].1,
            message: format!(
                "`{special}` beside a restricted {other} (`{other_f}`): cron implementations \
                 disagree on what that means, so it is refused; put `*` in the {other} field, \
                 or use two schedules"
            ),
        }),
    }
}

/// An IANA time zone name, validated.
pub fn parse_zone(name: &str) -> Result<Tz, String> {
    Tz::from_str(name).map_err(|_| {
        format!("unknown time zone `{name}`: use an IANA name such as UTC or Europe/London")
    })
}

/// When a schedule fires: its expression in its zone, between `start_at` and `end_at`
/// (both inclusive, epoch ms).
#[derive(Debug, Clone)]
pub struct Timing {
    pub expr: CronExpr,
    pub zone: Tz,
    pub start_at_ms: Option<u64>,
    pub end_at_ms: Option<u64>,
}

impl Timing {
    pub fn new(expr: CronExpr, zone: Tz) -> Self {
        Self {
            expr,
            zone,
            start_at_ms: None,
            end_at_ms: None,
        }
    }

    /// The first fire time strictly after `after_ms`, or `None` when there is none (past
    /// `end_at`, or an expression that never matches again).
    pub fn next_after(&self, after_ms: u64) -> Option<u64> {
        let from = match self.start_at_ms {
            Some(s) if s > after_ms => s - 1,
            _ => after_ms,
        };
        let secs = i64::try_from(from / 1000).ok()?;
        let start: DateTime<Tz> = self
            .zone
            .from_utc_datetime(&DateTime::<Utc>::from_timestamp(secs, 0)?.naive_utc());
        // Fire times are whole seconds, so "after the second `from` falls in" is "after `from`".
        let next = self.expr.cron.find_next_occurrence(&start, false).ok()?;
        let ms = u64::try_from(next.timestamp_millis()).ok()?;
        match self.end_at_ms {
            Some(end) if ms > end => None,
            _ => Some(ms),
        }
    }

    /// Fire times in `(after_ms, upto_ms]`, at most `limit` of them.
    pub fn fires_between(&self, after_ms: u64, upto_ms: u64, limit: usize) -> Vec<u64> {
        let mut out = Vec::new();
        let mut t = after_ms;
        while out.len() < limit {
            match self.next_after(t) {
                Some(n) if n <= upto_ms => {
                    out.push(n);
                    t = n;
                }
                _ => break,
            }
        }
        out
    }
}

/// What happens to fire times missed while no node was running (or the schedule's tick was
/// late by more than the misfire threshold).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Misfire {
    /// Drop every missed fire; continue with the next future one.
    Skip,
    /// Fire the most recent missed time (within the catch-up window) once.
    FireOnce,
    /// Fire every missed time within the catch-up window, oldest first.
    FireAll,
}

/// What a fire does while the previous fire's job is unfinished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overlap {
    /// Enqueue anyway.
    Allow,
    /// Record the fire as skipped; enqueue nothing.
    Skip,
    /// Keep one fire waiting; enqueue it when the previous job finishes. Later fires while one
    /// waits are skipped.
    BufferOne,
}

macro_rules! names {
    ($t:ty { $($v:ident = $s:literal),* }) => {
        impl $t {
            pub const ALL: &[$t] = &[$(<$t>::$v),*];
            pub fn as_str(self) -> &'static str {
                match self { $(<$t>::$v => $s),* }
            }
            pub fn parse(s: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|x| x.as_str() == s)
            }
        }
    };
}
names!(Misfire { Skip = "skip", FireOnce = "fire_once", FireAll = "fire_all" });
names!(Overlap { Allow = "allow", Skip = "skip", BufferOne = "buffer_one" });

/// Tuning of [`plan`].
#[derive(Debug, Clone, Copy)]
pub struct PlanLimits {
    /// A fire time more than this far behind `now` is a misfire.
    pub misfire_threshold_ms: u64,
    /// Most fires one plan may produce (the rest wait for the next tick).
    pub max_fires: usize,
}

/// What one tick does with a due schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Fire times to claim and enqueue, oldest first.
    pub fires: Vec<u64>,
    /// Fire times dropped as misfires (policy `skip`, outside the catch-up window, or the older
    /// ones under `fire_once`).
    pub missed: u64,
    /// The schedule's next fire time after this tick (`None`: it has ended).
    pub next: Option<u64>,
}

/// Decides what a tick at `now` fires for a schedule whose next fire time is `next_fire_at`.
pub fn plan(
    timing: &Timing,
    next_fire_at: u64,
    now: u64,
    misfire: Misfire,
    catchup_window_ms: u64,
    limits: PlanLimits,
) -> Plan {
    let mut fires = Vec::new();
    let mut missed = 0u64;
    let mut latest_late = None;
    let mut t = Some(next_fire_at);
    // Fire times too old for any policy are counted one by one up to a bound, then jumped over.
    let mut counted = 0u32;
    while let Some(at) = t {
        if at > now || fires.len() >= limits.max_fires {
            break;
        }
        let behind = now - at;
        if behind <= limits.misfire_threshold_ms {
            fires.push(at);
        } else if behind > catchup_window_ms || misfire == Misfire::Skip {
            missed += 1;
            counted += 1;
            if counted >= 10_000 {
                let floor = now.saturating_sub(catchup_window_ms.max(limits.misfire_threshold_ms));
                t = timing.next_after(floor.max(at));
                continue;
            }
        } else if misfire == Misfire::FireAll {
            fires.push(at);
        } else if latest_late.replace(at).is_some() {
            missed += 1;
        }
        t = timing.next_after(at);
    }
    if let Some(at) = latest_late {
        fires.insert(0, at);
    }
    Plan {
        fires,
        missed,
        next: t,
    }
}

/// A fire's delay in `[0, jitter_ms)`, the same for the same (schedule, fire time) on every
/// node, so a re-enqueue after a crash asks for the same run time.
pub fn jitter_ms(schedule_id: &str, fire_at_ms: u64, jitter_ms: u64) -> u64 {
    if jitter_ms == 0 {
        return 0;
    }
    // FNV-1a: small, stable across builds and platforms.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in schedule_id
        .bytes()
        .chain(fire_at_ms.to_le_bytes().iter().copied())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h % jitter_ms
}

#[cfg(test)]
mod tests;
