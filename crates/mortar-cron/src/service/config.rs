//! The service's configuration and value types: `[cron]` (`CronConfig`, its docs and checks),
//! the migrations, a schedule as given to the API (`ScheduleSpec`), and what runs and backfills
//! answer (`RunInfo`, `Backfilled`).

use serde::{Deserialize, Serialize};

use crate::store::Run;

/// The block's migrations.
pub fn migrations() -> mortar_core::storage::Migrations {
    mortar_core::storage::Migrations {
        block: "cron",
        sqlite: sqlx::migrate!("migrations/sqlite"),
        postgres: sqlx::migrate!("migrations/postgres"),
    }
}

/// `[cron]` in `mortar.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CronConfig {
    /// Run the scheduler loop on this node (every node may; there is no leader).
    pub scheduler: bool,
    /// How often an idle node re-checks for schedules created or changed on other nodes.
    pub poll_ms: u64,
    /// Most due schedules one tick claims in one transaction.
    pub batch: u32,
    /// A fire time more than this far behind is a misfire (its schedule's policy applies).
    pub misfire_threshold_ms: u64,
    /// Largest `catchup_window_ms` a schedule may ask for.
    pub max_catchup_window_ms: u64,
    /// Most fire times one backfill may claim.
    pub max_backfill: u32,
    /// How long run history is kept (also how long a fire's unique key blocks a duplicate job).
    pub history_retention_ms: u64,
    /// A run claimed this long ago and still not enqueued (its node died) is enqueued by any node.
    pub sweep_after_ms: u64,
}

impl Default for CronConfig {
    fn default() -> Self {
        Self {
            scheduler: true,
            poll_ms: 1000,
            batch: 1000,
            misfire_threshold_ms: 5_000,
            max_catchup_window_ms: 7 * 86_400_000,
            max_backfill: 10_000,
            history_retention_ms: 7 * 86_400_000,
            sweep_after_ms: 10_000,
        }
    }
}

impl CronConfig {
    pub const DOCS: &[mortar_core::config::KeyDoc] = &[
        mortar_core::config::KeyDoc::new(
            "cron.scheduler",
            "run the scheduler on this node (every node may: fires are claimed in the database, no leader)",
        ),
        mortar_core::config::KeyDoc::new(
            "cron.poll_ms",
            "how often an idle node re-checks for schedules created or changed on other nodes",
        ),
        mortar_core::config::KeyDoc::new(
            "cron.batch",
            "most due schedules one tick claims in one transaction",
        ),
        mortar_core::config::KeyDoc::new(
            "cron.misfire_threshold_ms",
            "a fire time more than this far behind is a misfire; the schedule's misfire policy decides",
        ),
        mortar_core::config::KeyDoc::new(
            "cron.max_catchup_window_ms",
            "largest catchup_window_ms a schedule may ask for",
        ),
        mortar_core::config::KeyDoc::new(
            "cron.max_backfill",
            "most fire times one backfill request may claim",
        ),
        mortar_core::config::KeyDoc::new(
            "cron.history_retention_ms",
            "how long run history is kept (and how long a fire's job unique key blocks duplicates)",
        ),
        mortar_core::config::KeyDoc::new(
            "cron.sweep_after_ms",
            "a run claimed this long ago but not enqueued (its node died) is enqueued by any node",
        ),
    ];

    pub fn validate(&self) -> Result<(), mortar_core::config::ConfigError> {
        let bad = |key: &str, why: &str| {
            Err(mortar_core::config::ConfigError(format!(
                "key `cron.{key}`: {why}"
            )))
        };
        if !(10..=60_000).contains(&self.poll_ms) {
            return bad("poll_ms", "must be 10 to 60000");
        }
        if !(1..=10_000).contains(&self.batch) {
            return bad("batch", "must be 1 to 10000");
        }
        if self.misfire_threshold_ms == 0 {
            return bad("misfire_threshold_ms", "must be at least 1");
        }
        if self.max_backfill == 0 {
            return bad("max_backfill", "must be at least 1");
        }
        if self.history_retention_ms < 60_000 {
            return bad("history_retention_ms", "must be at least 60000");
        }
        if self.sweep_after_ms < 1_000 {
            return bad("sweep_after_ms", "must be at least 1000");
        }
        Ok(())
    }
}

/// A schedule as created or replaced through the API.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    /// Unique; 1 to 128 of letters, digits, `_`, `.`, `-`, `:`.
    pub name: String,
    /// 5 fields (minute hour day-of-month month day-of-week), 6 with seconds first, or a macro
    /// (@yearly, @monthly, @weekly, @daily, @hourly). Ranges, steps, lists, names, L, W, #.
    pub expr: String,
    /// IANA time zone the expression is read in (default UTC).
    #[serde(default = "utc")]
    pub timezone: String,
    /// The job each fire enqueues: a mortar-jobs job (`queue`, `kind`, `payload`, `priority`,
    /// `max_attempts`, …). Cron sets its unique key and run time.
    #[schema(value_type = Object)]
    pub job: serde_json::Value,
    /// While the previous fire's job is unfinished: `allow` (default), `skip` or `buffer_one`.
    #[serde(default = "allow")]
    pub overlap: String,
    /// Fires missed while no node ran: `skip`, `fire_once` (default) or `fire_all`.
    #[serde(default = "fire_once")]
    pub misfire: String,
    /// Missed fires older than this are dropped whatever the policy (default 1 hour).
    #[serde(default = "hour")]
    pub catchup_window_ms: u64,
    /// Each fire's job runs up to this much later (stable per fire; 0 to 3600000).
    #[serde(default)]
    pub jitter_ms: u64,
    /// No fires before this instant (RFC 3339).
    pub start_at: Option<String>,
    /// No fires after this instant (RFC 3339).
    pub end_at: Option<String>,
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn utc() -> String {
    "UTC".into()
}
fn allow() -> String {
    "allow".into()
}
fn fire_once() -> String {
    "fire_once".into()
}
fn hour() -> u64 {
    3_600_000
}
fn yes() -> bool {
    true
}

/// A run with what became of its job.
#[derive(Debug, Clone)]
pub struct RunInfo {
    pub run: Run,
    /// The job's state (`available`, `running`, `completed`, `dead`, …) when it has one.
    pub job_state: Option<String>,
    pub started_at_ms: Option<i64>,
    pub finished_at_ms: Option<i64>,
}

/// What a backfill did.
#[derive(Debug, Clone)]
pub struct Backfilled {
    pub runs: Vec<Run>,
    /// Fire times in the range that had already been claimed (not fired again).
    pub already: usize,
}
