//! `mortar cron add|update|list|show|pause|resume|trigger|backfill|runs|preview|delete`: a
//! client of the HTTP API.

use clap::Subcommand;
use std::time::Duration;

use mortar_core::client::{
    Client, ClientArgs, ClientError, cell, encode_segment, parse_duration, table,
};
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
        /// How far back missed fire times are caught up: 1h, 30m, or plain milliseconds.
        #[arg(long, alias = "catchup-window-ms", default_value = "1h", value_parser = parse_duration)]
        catchup_window: Duration,
        /// Random delay added to each fire, up to this: 30s, or plain milliseconds.
        #[arg(long, alias = "jitter-ms", default_value = "0", value_parser = parse_duration)]
        jitter: Duration,
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
    /// Change a schedule (id or name): only the flags given change; it applies from the next
    /// fire time (`PUT /v1/cron/schedules/{id}` with the rest kept).
    Update {
        schedule: String,
        /// A new expression.
        #[arg(long)]
        expr: Option<String>,
        /// IANA time zone the expression is read in.
        #[arg(long)]
        timezone: Option<String>,
        /// The job's queue.
        #[arg(long)]
        queue: Option<String>,
        /// The job's kind.
        #[arg(long)]
        kind: Option<String>,
        /// The job's payload (JSON).
        #[arg(long)]
        payload: Option<String>,
        /// allow, skip or buffer_one.
        #[arg(long)]
        overlap: Option<String>,
        /// skip, fire_once or fire_all.
        #[arg(long)]
        misfire: Option<String>,
        /// 1h, 30m, or plain milliseconds.
        #[arg(long, alias = "catchup-window-ms", value_parser = parse_duration)]
        catchup_window: Option<Duration>,
        /// 30s, or plain milliseconds.
        #[arg(long, alias = "jitter-ms", value_parser = parse_duration)]
        jitter: Option<Duration>,
    },
    /// Schedules with their next fire and latest run (LAST: manual and backfill runs too).
    List,
    /// One schedule (id or name).
    Show { schedule: String },
    /// Stop firing (fire times while paused are misfires when it resumes).
    Pause { schedule: String },
    /// Fire again, from the next fire time (misfire policy for those missed).
    Resume { schedule: String },
    /// Fire now, once (a `manual` run; the schedule's own fires are unchanged).
    Trigger { schedule: String },
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
        /// How many, newest first.
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
        /// IANA time zone the expression is read in.
        #[arg(long, default_value = "UTC")]
        timezone: String,
        /// How many fire times.
        #[arg(long, default_value_t = 10)]
        count: u32,
        /// RFC 3339 (default now).
        #[arg(long)]
        from: Option<String>,
    },
    /// Remove a schedule and its run history (jobs already enqueued stay).
    Delete { schedule: String },
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
            catchup_window,
            jitter,
            start_at,
            end_at,
            paused,
        } => {
            let payload: Value = serde_json::from_str(payload)
                .map_err(|e| ClientError::Transport(format!("--payload is not JSON: {e}")))?;
            let body = json!({
                "name": name, "expr": expr, "timezone": timezone,
                "job": {"queue": queue, "kind": kind, "payload": payload},
                "overlap": overlap, "misfire": misfire,
                "catchup_window_ms": catchup_window.as_millis(), "jitter_ms": jitter.as_millis(),
                "start_at": start_at, "end_at": end_at, "enabled": !paused,
            });
            client.post("/v1/cron/schedules", &body).await?
        }
        CronCommand::Update { schedule, .. } => {
            let current = client.get(&path(schedule, "")).await?;
            client
                .put(&path(schedule, ""), &updated(&current, cmd)?)
                .await?
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
        | CronCommand::Update { .. }
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

/// A schedule's spec (as `GET` shows it) with `update`'s flags applied.
fn updated(current: &Value, cmd: &CronCommand) -> Result<Value, ClientError> {
    let CronCommand::Update {
        expr,
        timezone,
        queue,
        kind,
        payload,
        overlap,
        misfire,
        catchup_window,
        jitter,
        ..
    } = cmd
    else {
        unreachable!("update's flags")
    };
    let mut spec = json!({});
    for key in [
        "name",
        "expr",
        "timezone",
        "job",
        "overlap",
        "misfire",
        "catchup_window_ms",
        "jitter_ms",
        "start_at",
        "end_at",
        "enabled",
    ] {
        if let Some(v) = current.get(key) {
            spec[key] = v.clone();
        }
    }
    let mut set = |key: &str, v: Option<Value>| {
        if let Some(v) = v {
            spec[key] = v;
        }
    };
    set("expr", expr.as_ref().map(|v| json!(v)));
    set("timezone", timezone.as_ref().map(|v| json!(v)));
    set("overlap", overlap.as_ref().map(|v| json!(v)));
    set("misfire", misfire.as_ref().map(|v| json!(v)));
    set(
        "catchup_window_ms",
        catchup_window.map(|d| json!(d.as_millis())),
    );
    set("jitter_ms", jitter.map(|d| json!(d.as_millis())));
    if let Some(q) = queue {
        spec["job"]["queue"] = json!(q);
    }
    if let Some(k) = kind {
        spec["job"]["kind"] = json!(k);
    }
    if let Some(p) = payload {
        spec["job"]["payload"] = serde_json::from_str(p)
            .map_err(|e| ClientError::Transport(format!("--payload is not JSON: {e}")))?;
    }
    Ok(spec)
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
                match s.get("last_run") {
                    Some(r) => format!("{} ({})", cell(&r["fire_at"]), cell(&r["kind"])),
                    None => cell(&s["last_fire_at"]),
                },
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
