//! `mortar cron add|list|show|pause|resume|trigger|backfill|runs|preview|delete`: a client of
//! the HTTP API.

use clap::Subcommand;
use mortar_core::client::{Client, ClientArgs, ClientError, cell, encode_segment, table};
use serde_json::{Value, json};

#[derive(Debug, Subcommand)]
pub enum CronCommand {
    /// Create a schedule: `mortar cron add nightly '0 3 * * *' --queue reports --kind build`.
    Add {
        name: String,
        /// 5 or 6 fields, or a macro (@daily, …).
        expr: String,
        /// IANA time zone the expression is read in.
        #[arg(long, default_value = "UTC")]
        timezone: String,
        /// Queue of the job each fire enqueues.
        #[arg(long)]
        queue: String,
        /// Kind of that job.
        #[arg(long)]
        kind: String,
        /// Its payload (JSON).
        #[arg(long, default_value = "{}")]
        payload: String,
        /// allow, skip or buffer_one.
        #[arg(long, default_value = "allow")]
        overlap: String,
        /// skip, fire_once or fire_all.
        #[arg(long, default_value = "fire_once")]
        misfire: String,
        #[arg(long, default_value_t = 3_600_000)]
        catchup_window_ms: u64,
        #[arg(long, default_value_t = 0)]
        jitter_ms: u64,
        /// RFC 3339.
        #[arg(long)]
        start_at: Option<String>,
        /// RFC 3339.
        #[arg(long)]
        end_at: Option<String>,
        /// Create it paused.
        #[arg(long)]
        paused: bool,
    },
    /// Schedules with their next and last fire.
    List,
    /// One schedule (id or name).
    Show {
        schedule: String,
    },
    Pause {
        schedule: String,
    },
    Resume {
        schedule: String,
    },
    /// Fire now.
    Trigger {
        schedule: String,
    },
    /// Fire every never-claimed fire time in (from, to].
    Backfill {
        schedule: String,
        /// RFC 3339.
        #[arg(long)]
        from: String,
        /// RFC 3339.
        #[arg(long)]
        to: String,
    },
    /// Run history, newest first.
    Runs {
        schedule: String,
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// The next fire times of an expression.
    ///
    /// When both day fields are restricted a time matches if either does (`0 9 13 * FRI`: every
    /// 13th and every Friday). `L`/`W` in day-of-month or `L`/`#` in day-of-week beside a
    /// restricted other day field is refused (implementations disagree on its meaning).
    Preview {
        expr: String,
        #[arg(long, default_value = "UTC")]
        timezone: String,
        #[arg(long, default_value_t = 10)]
        count: u32,
        /// RFC 3339 (default now).
        #[arg(long)]
        from: Option<String>,
    },
    Delete {
        schedule: String,
    },
}

fn path(schedule: &str, rest: &str) -> String {
    format!("/v1/cron/schedules/{}{rest}", encode_segment(schedule))
}

fn query(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", encode_segment(v)))
        .collect::<Vec<_>>()
        .join("&")
}

pub async fn run(args: &ClientArgs, cmd: &CronCommand) -> Result<String, ClientError> {
    let client = Client::new(args);
    let v = match cmd {
        CronCommand::Add {
            name,
            expr,
            timezone,
            queue,
            kind,
            payload,
            overlap,
            misfire,
            catchup_window_ms,
            jitter_ms,
            start_at,
            end_at,
            paused,
        } => {
            let payload: Value = serde_json::from_str(payload)
                .map_err(|e| ClientError::Transport(format!("--payload is not JSON: {e}")))?;
            let body = json!({
                "name": name, "expr": expr, "timezone": timezone,
                "job": {"queue": queue, "kind": kind, "payload": payload},
                "overlap": overlap, "misfire": misfire, "catchup_window_ms": catchup_window_ms,
                "jitter_ms": jitter_ms, "start_at": start_at, "end_at": end_at, "enabled": !paused,
            });
            client.post("/v1/cron/schedules", &body).await?
        }
        CronCommand::List => client.get("/v1/cron/schedules?limit=1000").await?,
        CronCommand::Show { schedule } => client.get(&path(schedule, "")).await?,
        CronCommand::Pause { schedule } => {
            client.post(&path(schedule, "/pause"), &json!({})).await?
        }
        CronCommand::Resume { schedule } => {
            client.post(&path(schedule, "/resume"), &json!({})).await?
        }
        CronCommand::Trigger { schedule } => {
            client.post(&path(schedule, "/trigger"), &json!({})).await?
        }
        CronCommand::Backfill { schedule, from, to } => {
            client
                .post(
                    &path(schedule, "/backfill"),
                    &json!({"from": from, "to": to}),
                )
                .await?
        }
        CronCommand::Runs { schedule, limit } => {
            client
                .get(&path(schedule, &format!("/runs?limit={limit}")))
                .await?
        }
        CronCommand::Preview {
            expr,
            timezone,
            count,
            from,
        } => {
            let count = count.to_string();
            let mut q = vec![
                ("expr", expr.as_str()),
                ("timezone", timezone.as_str()),
                ("count", count.as_str()),
            ];
            if let Some(f) = from {
                q.push(("from", f.as_str()));
            }
            client
                .get(&format!("/v1/cron/preview?{}", query(&q)))
                .await?
        }
        CronCommand::Delete { schedule } => client.delete(&path(schedule, "")).await?,
    };
    if args.json {
        return Ok(format!(
            "{}\n",
            serde_json::to_string_pretty(&v).unwrap_or_default()
        ));
    }
    Ok(match cmd {
        CronCommand::List => schedules(v["items"].as_array().map_or(&[][..], Vec::as_slice)),
        CronCommand::Add { .. }
        | CronCommand::Show { .. }
        | CronCommand::Pause { .. }
        | CronCommand::Resume { .. } => schedules(std::slice::from_ref(&v)),
        CronCommand::Delete { .. } => format!("deleted {}\n", cell(&v["name"])),
        CronCommand::Trigger { .. } => runs(std::slice::from_ref(&v)),
        CronCommand::Backfill { .. } => format!(
            "fired {}, already claimed {}\n{}",
            cell(&v["fired"]),
            cell(&v["already_claimed"]),
            runs(v["runs"].as_array().map_or(&[][..], Vec::as_slice))
        ),
        CronCommand::Runs { .. } => runs(v["items"].as_array().map_or(&[][..], Vec::as_slice)),
        CronCommand::Preview { .. } => {
            let mut out = String::new();
            for t in v["fire_times"].as_array().map_or(&[][..], Vec::as_slice) {
                out.push_str(&cell(t));
                out.push('\n');
            }
            out
        }
    })
}

fn schedules(items: &[Value]) -> String {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|s| {
            vec![
                cell(&s["name"]),
                cell(&s["expr"]),
                cell(&s["timezone"]),
                if s["enabled"] == Value::Bool(true) {
                    "active".into()
                } else {
                    "paused".into()
                },
                cell(&s["next_fire_at"]),
                cell(&s["last_fire_at"]),
                format!("{}/{}", cell(&s["job"]["queue"]), cell(&s["job"]["kind"])),
                cell(&s["id"]),
            ]
        })
        .collect();
    table(
        &[
            "NAME", "EXPR", "TIMEZONE", "STATE", "NEXT", "LAST", "JOB", "ID",
        ],
        &rows,
    )
}

fn runs(items: &[Value]) -> String {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|r| {
            vec![
                cell(&r["fire_at"]),
                cell(&r["kind"]),
                cell(&r["status"]),
                cell(&r["job_state"]),
                cell(&r["lag_ms"]),
                cell(&r["duration_ms"]),
                cell(&r["node"]),
                cell(&r["job_id"]),
            ]
        })
        .collect();
    table(
        &[
            "FIRE_AT",
            "KIND",
            "STATUS",
            "JOB",
            "LAG_MS",
            "DURATION_MS",
            "NODE",
            "JOB_ID",
        ],
        &rows,
    )
}
