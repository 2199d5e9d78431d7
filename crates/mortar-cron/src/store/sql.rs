//! The store's write statements, each written once for both dialects, and the JSON row sets
//! they take.
//!
//! Only a few things differ between SQLite and PostgreSQL here: how a JSON array parameter is
//! read as a table ([`Dialect::json_rows`]), the row lock of the due-schedule select, and a hint
//! to SQLite's planner. Parameters, markers and execution are the core SQL layer's
//! ([`mortar_core::storage::sql`]).

use std::sync::LazyLock;

use mortar_core::storage::sql::Dialect;
use serde::Serialize;

use super::{COLUMNS, Run};

/// Every write statement of the store (and the select that locks due schedules), in one
/// dialect.
#[derive(Debug)]
pub(super) struct Sql {
    pub insert: String,
    pub replace: String,
    pub delete: String,
    pub delete_runs: String,
    pub prune: String,
    /// Due schedules at `$1`, at most `$2`, locked until the transaction ends.
    pub select_due: String,
    /// Advances the schedules in the JSON rows `$1` ([`AdvanceRow`]) whose version is still
    /// the one planned from; returns their ids.
    pub advance: String,
    /// Claims the fire times in the JSON rows `$1` ([`ClaimRow`]) at `$2` for node `$3`;
    /// returns the `(schedule_id, fire_at_ms)` of those not claimed before.
    pub claim: String,
    /// Records the outcomes in the JSON rows `$1` ([`SettleRow`]) of runs still unfinished.
    pub settle: String,
}

pub(super) static SQLITE: LazyLock<Sql> = LazyLock::new(|| Sql::new(Dialect::Sqlite));
pub(super) static POSTGRES: LazyLock<Sql> = LazyLock::new(|| Sql::new(Dialect::Postgres));

impl Sql {
    fn new(dialect: Dialect) -> Self {
        // `lock`: nodes split the due schedules instead of queueing on each other's locks.
        // `unindexed`: SQLite (no statistics) would otherwise walk `cron_runs_status` over every
        // unfinished run and scan the JSON rows for each, instead of looking each JSON row up
        // by key; a unary `+` takes the column out of index use.
        let lock = dialect.skip_locked();
        let unindexed = match dialect {
            Dialect::Sqlite => "+",
            Dialect::Postgres => "",
        };
        let advance_rows = dialect.json_rows(
            1,
            &[
                ("schedule_id", "TEXT"),
                ("version", "BIGINT"),
                ("next_fire_at_ms", "BIGINT"),
                ("last_fire_at_ms", "BIGINT"),
            ],
        );
        let claim_rows = dialect.json_rows(
            1,
            &[
                ("schedule_id", "TEXT"),
                ("fire_at_ms", "BIGINT"),
                ("kind", "TEXT"),
            ],
        );
        let settle_rows = dialect.json_rows(
            1,
            &[
                ("schedule_id", "TEXT"),
                ("fire_at_ms", "BIGINT"),
                ("status", "TEXT"),
                ("job_id", "TEXT"),
                ("enqueued_at_ms", "BIGINT"),
            ],
        );
        Self {
            insert: (format!(
                "INSERT INTO cron_schedules ({COLUMNS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17) \
                 ON CONFLICT (name) DO NOTHING"
            )),
            replace: (
                "UPDATE cron_schedules SET expr = $2, timezone = $3, job = $4, overlap = $5, misfire = $6, \
                 catchup_window_ms = $7, jitter_ms = $8, start_at_ms = $9, end_at_ms = $10, enabled = $11, \
                 next_fire_at_ms = $12, updated_at_ms = $13, version = version + 1 WHERE id = $1 AND version = $14"
            ).into(),
            delete: "DELETE FROM cron_schedules WHERE id = $1".into(),
            delete_runs: "DELETE FROM cron_runs WHERE schedule_id = $1".into(),
            prune: (
                "DELETE FROM cron_runs WHERE claimed_at_ms < $1 AND status IN ('enqueued', 'skipped')"
            ).into(),
            select_due: (format!(
                "SELECT {COLUMNS} FROM cron_schedules WHERE enabled AND next_fire_at_ms IS NOT NULL AND next_fire_at_ms <= $1 \
                 ORDER BY next_fire_at_ms LIMIT $2{lock}"
            )),
            advance: (format!(
                "UPDATE cron_schedules AS s SET next_fire_at_ms = v.next_fire_at_ms, \
                 last_fire_at_ms = COALESCE(v.last_fire_at_ms, s.last_fire_at_ms) \
                 FROM {advance_rows} WHERE s.id = v.schedule_id AND s.version = v.version RETURNING id"
            )),
            // `WHERE true`: SQLite's parser needs it before an upsert's ON CONFLICT.
            claim: (format!(
                "INSERT INTO cron_runs (schedule_id, fire_at_ms, kind, status, claimed_at_ms, node) \
                 SELECT v.schedule_id, v.fire_at_ms, v.kind, 'claimed', $2, $3 FROM {claim_rows} WHERE true \
                 ON CONFLICT (schedule_id, fire_at_ms) DO NOTHING RETURNING schedule_id, fire_at_ms"
            )),
            settle: (format!(
                "UPDATE cron_runs AS r SET status = v.status, job_id = v.job_id, enqueued_at_ms = v.enqueued_at_ms \
                 FROM {settle_rows} \
                 WHERE r.schedule_id = v.schedule_id AND r.fire_at_ms = v.fire_at_ms AND {unindexed}r.status IN ('claimed', 'buffered')"
            )),
        }
    }
}

/// One row of [`Sql::advance`].
#[derive(Debug, Serialize)]
pub(super) struct AdvanceRow<'a> {
    pub schedule_id: &'a str,
    pub version: i64,
    pub next_fire_at_ms: Option<i64>,
    pub last_fire_at_ms: Option<i64>,
}

/// One row of [`Sql::claim`].
#[derive(Debug, Serialize)]
pub(super) struct ClaimRow<'a> {
    pub schedule_id: &'a str,
    pub fire_at_ms: i64,
    pub kind: &'a str,
}

/// One row of [`Sql::settle`].
#[derive(Debug, Serialize)]
pub(super) struct SettleRow<'a> {
    pub schedule_id: &'a str,
    pub fire_at_ms: i64,
    pub status: &'a str,
    pub job_id: Option<&'a str>,
    pub enqueued_at_ms: Option<i64>,
}

impl<'a> From<&'a Run> for SettleRow<'a> {
    fn from(r: &'a Run) -> Self {
        Self {
            schedule_id: &r.schedule_id,
            fire_at_ms: r.fire_at_ms,
            status: &r.status,
            job_id: r.job_id.as_deref(),
            enqueued_at_ms: r.enqueued_at_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use mortar_core::storage::sqlite_writer::positional;

    use super::*;

    /// How SQLite runs `sql`: one line per loop, outermost first.
    fn plan(c: &rusqlite::Connection, sql: &str) -> Vec<String> {
        let mut stmt = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let nulls = std::iter::repeat_n(rusqlite::types::Null, stmt.parameter_count());
        stmt.query_map(rusqlite::params_from_iter(nulls), |r| r.get::<_, String>(3))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    /// Batches walk their JSON rows once and look each up by key: a plan that walked a table
    /// (or an index over many rows) and scanned the JSON rows inside would be quadratic.
    #[test]
    fn sqlite_batches_look_rows_up_by_key() {
        let c = rusqlite::Connection::open_in_memory().unwrap();
        c.execute_batch(include_str!(
            "../../migrations/sqlite/20261121000501_cron.sql"
        ))
        .unwrap();
        for (sql, target) in [
            (
                &positional(&SQLITE.advance),
                "SEARCH s USING INDEX sqlite_autoindex_cron_schedules_1 (id=?)",
            ),
            (
                &positional(&SQLITE.settle),
                "SEARCH r USING INDEX sqlite_autoindex_cron_runs_1 (schedule_id=? AND fire_at_ms=?)",
            ),
        ] {
            let plan = plan(&c, sql);
            assert!(plan[0].starts_with("SCAN json_each"), "{sql}: {plan:?}");
            assert_eq!(plan[1..], [target.to_owned()], "{sql}");
        }
        let plan = plan(&c, &positional(&SQLITE.claim));
        assert!(
            plan.len() == 1 && plan[0].starts_with("SCAN json_each"),
            "{plan:?}"
        );
    }
}
