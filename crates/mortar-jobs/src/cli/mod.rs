//! `mortar jobs …`: enqueue, inspect and manage jobs, and `mortar jobs work --exec CMD`, a
//! worker that runs a shell command per job (`work`).
//!
//! Every duration flag takes one syntax, `mortar_core::client::parse_duration`'s: `10s`,
//! `250ms`, `5m`, `1h`, or a plain number of milliseconds (so the `…-ms` spellings of the
//! API's fields are accepted as aliases).

mod work;

use std::time::Duration;

use clap::Subcommand;
use mortar_core::client::{ClientArgs, ClientError, cell, table};
use serde_json::{Value, json};

use self::work::{WorkArgs, work};
use crate::client::{JobsClient, ListQuery, encode};

#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// Enqueue a job (durable when this returns).
    Enqueue {
        /// The queue to put it on (letters, digits, `_`, `.`, `-`, `:`).
        queue: String,
        /// What kind of job it is: workers pick their handler by it.
        kind: String,
        /// The payload, as JSON.
        #[arg(long, default_value = "{}")]
        payload: String,
        /// Lower runs first (0 to 100; default 10).
        #[arg(long)]
        priority: Option<i32>,
        /// Run no earlier than this from now (10s, 250ms, 5m or 1h; a plain number is
        /// milliseconds).
        #[arg(long, visible_alias = "delay-ms", value_parser = parse_duration)]
        delay: Option<Duration>,
        /// Run no earlier than this time (RFC 3339, e.g. 2026-11-21T10:00:00Z).
        #[arg(long)]
        run_at: Option<String>,
        /// Attempts before the job is dead (1 to 1000; default 20). A retry from the DLQ
        /// gives it this many again.
        #[arg(long)]
        max_attempts: Option<i32>,
        /// The most one attempt may run, from when a worker leases it (default 30s, at most
        /// 24h): past it the attempt fails as timed out and is retried with backoff (10s,
        /// 250ms, 5m or 1h; a plain number is milliseconds).
        #[arg(long, visible_alias = "timeout-ms", value_parser = parse_duration)]
        timeout: Option<Duration>,
        /// At most one such job at a time in the queue (see `--unique-while`).
        #[arg(long)]
        unique_key: Option<String>,
        /// How long the unique key blocks another job: queued, active (the default) or
        /// for_ms (with --unique-for).
        #[arg(long, requires = "unique_key")]
        unique_while: Option<String>,
        /// With `--unique-while for_ms`: for how long (10s, 250ms, 5m or 1h; a plain number
        /// is milliseconds).
        #[arg(long, visible_alias = "unique-for-ms", value_parser = parse_duration, requires = "unique_key")]
        unique_for: Option<Duration>,
        /// A tag (repeat for more).
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// Sent as the `Idempotency-Key` header: repeating the command with the same key
        /// returns the job the first one created (for 24 hours) instead of a second one.
        #[arg(long, conflicts_with_all = ["unique_key", "unique_while", "unique_for"])]
        idempotency_key: Option<String>,
    },
    /// A job with every failed attempt's error.
    Get {
        /// The job's id.
        id: String,
    },
    /// Jobs, oldest first, filtered by state, queue and kind, a page at a time.
    List {
        /// scheduled, available, running, retryable, completed, dead or cancelled.
        #[arg(long, default_value = "")]
        state: String,
        /// Only jobs of this queue.
        #[arg(long, default_value = "")]
        queue: String,
        /// Only jobs of this kind.
        #[arg(long, default_value = "")]
        kind: String,
        /// Jobs per page (1 to 1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Start after this job: the id a previous page printed as `(more after <id>)`.
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Run a dead, cancelled or retryable job again now, with a fresh budget of attempts
    /// (attempt numbers keep counting).
    Retry {
        /// The job's id.
        id: String,
    },
    /// Cancel a job: at once when it has not started (or waits to retry); when it runs, its
    /// worker is asked to stop at its next heartbeat and the job ends cancelled (unless it
    /// completes first).
    Cancel {
        /// The job's id.
        id: String,
    },
    /// The dead-letter queue: list it, or retry or discard every dead job in it.
    Dlq {
        /// Only dead jobs of this queue.
        #[arg(long)]
        queue: Option<String>,
        /// Only dead jobs of this kind.
        #[arg(long)]
        kind: Option<String>,
        /// Run every matching dead job again (each with a fresh budget of attempts).
        #[arg(long, conflicts_with = "discard")]
        retry: bool,
        /// Delete every matching dead job (and its errors) for good.
        #[arg(long)]
        discard: bool,
        /// Jobs per page when listing (1 to 1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// When listing, start after this job (the id printed as `(more after <id>)`).
        #[arg(long, conflicts_with_all = ["retry", "discard"])]
        cursor: Option<String>,
    },
    /// Queues with their depth by state, age of the oldest waiting job and settings.
    Queues,
    /// Stop leasing a queue's jobs (enqueues still accepted).
    Pause {
        /// The queue's name.
        queue: String,
    },
    /// Lease a paused queue's jobs again.
    Resume {
        /// The queue's name.
        queue: String,
    },
    /// Work jobs by running a shell command per job: the payload JSON on stdin, MORTAR_JOB_ID,
    /// MORTAR_JOB_KIND, MORTAR_JOB_ATTEMPT, MORTAR_JOB_QUEUE and MORTAR_JOB_TIMEOUT_MS in the
    /// environment. Exit 0 completes the job (stdout is the result: JSON if it parses, else a
    /// string); non-zero fails the attempt with stderr's tail as the error. A command still
    /// running at the job's timeout, or whose job is cancelled, gets SIGTERM, then SIGKILL
    /// after --term-grace. Logs a line per job start and end on stderr. SIGINT/SIGTERM stop
    /// gracefully.
    Work {
        /// A queue to work (repeat for more).
        #[arg(long = "queue", required = true)]
        queues: Vec<String>,
        /// The command, run with `sh -c` in a process group of its own.
        #[arg(long)]
        exec: String,
        /// Commands running at once.
        #[arg(long, default_value_t = 1)]
        concurrency: usize,
        /// Running commands get this long to finish on shutdown, then are killed and their
        /// jobs released (10s, 250ms, 5m or 1h; a plain number is milliseconds).
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        shutdown_timeout: Duration,
        /// After SIGTERM (timed out, cancelled), a command gets this long to exit before
        /// SIGKILL (10s, 250ms, 5m or 1h; a plain number is milliseconds).
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        term_grace: Duration,
        /// The name shown on running jobs (default host:pid).
        #[arg(long)]
        name: Option<String>,
    },
}

pub use mortar_core::client::parse_duration;

/// A mistake in the command's own arguments (exit code 1, like a problem from the server).
fn bad_input(detail: String) -> ClientError {
    ClientError::Problem {
        status: 400,
        title: "bad input".into(),
        detail,
        body: Value::Null,
    }
}

/// Runs a jobs command; returns what to print.
pub async fn run(args: &ClientArgs, cmd: &JobsCommand) -> Result<String, ClientError> {
    let jobs = JobsClient::new(args);
    let http = jobs.http();
    let v = match cmd {
        JobsCommand::Enqueue {
            idempotency_key, ..
        } => {
            let body = enqueue_body(cmd)?;
            match idempotency_key {
                Some(key) => {
                    http.post_as_with("/v1/jobs", &body, &[("idempotency-key", key.as_str())])
                        .await?
                }
                None => http.post("/v1/jobs", &body).await?,
            }
        }
        JobsCommand::Get { id } => http.get(&format!("/v1/jobs/{}", encode(id))).await?,
        JobsCommand::List {
            state,
            queue,
            kind,
            limit,
            cursor,
        } => {
            jobs.list_page(&ListQuery {
                state: state.clone(),
                queue: queue.clone(),
                kind: kind.clone(),
                limit: *limit,
                cursor: cursor.clone(),
            })
            .await?
        }
        JobsCommand::Retry { id } => {
            http.post(&format!("/v1/jobs/{}/retry", encode(id)), &json!({}))
                .await?
        }
        JobsCommand::Cancel { id } => http.delete(&format!("/v1/jobs/{}", encode(id))).await?,
        JobsCommand::Dlq {
            queue,
            kind,
            retry,
            discard,
            limit,
            cursor,
        } => {
            if *retry || *discard {
                let mut body = json!({ "state": "dead" });
                if let Some(q) = queue {
                    body["queue"] = json!(q);
                }
                if let Some(k) = kind {
                    body["kind"] = json!(k);
                }
                let verb = if *retry { "retry" } else { "discard" };
                let v = http.post(&format!("/v1/jobs/bulk/{verb}"), &body).await?;
                if args.json {
                    return Ok(pretty(&v));
                }
                let done = if *retry { "retried" } else { "discarded" };
                return Ok(format!("{done} {} dead job(s)\n", cell(&v["count"])));
            }
            jobs.list_page(&ListQuery {
                state: "dead".into(),
                queue: queue.clone().unwrap_or_default(),
                kind: kind.clone().unwrap_or_default(),
                limit: *limit,
                cursor: cursor.clone(),
            })
            .await?
        }
        JobsCommand::Queues => http.get("/v1/jobs/queues").await?,
        JobsCommand::Pause { queue } => {
            http.post(
                &format!("/v1/jobs/queues/{}/pause", encode(queue)),
                &json!({}),
            )
            .await?
        }
        JobsCommand::Resume { queue } => {
            http.post(
                &format!("/v1/jobs/queues/{}/resume", encode(queue)),
                &json!({}),
            )
            .await?
        }
        JobsCommand::Work {
            queues,
            exec,
            concurrency,
            shutdown_timeout,
            term_grace,
            name,
        } => {
            let args = WorkArgs {
                queues,
                exec,
                concurrency: *concurrency,
                shutdown_timeout: *shutdown_timeout,
                term_grace: *term_grace,
                name: name.clone(),
            };
            return work(jobs.clone(), args).await;
        }
    };
    if args.json {
        return Ok(pretty(&v));
    }
    Ok(match cmd {
        JobsCommand::Enqueue { .. } => {
            let dup = if v["duplicate"] == json!(true) {
                " (duplicate: the existing job)"
            } else {
                ""
            };
            format!(
                "enqueued {} on {} ({}, {}){dup}\n",
                cell(&v["id"]),
                cell(&v["queue"]),
                cell(&v["kind"]),
                cell(&v["state"])
            )
        }
        JobsCommand::Get { .. } => job_detail(&v),
        JobsCommand::Cancel { .. } if v["cancel_requested"] == json!(true) => format!(
            "{} is running: cancellation requested; its worker stops it at its next heartbeat\n",
            cell(&v["id"])
        ),
        JobsCommand::Retry { .. } | JobsCommand::Cancel { .. } => {
            format!("{} is {}\n", cell(&v["id"]), cell(&v["state"]))
        }
        JobsCommand::List { .. } | JobsCommand::Dlq { .. } => job_table(&v),
        JobsCommand::Queues => queue_table(&v),
        JobsCommand::Pause { queue } => format!("paused {queue}\n"),
        JobsCommand::Resume { queue } => format!("resumed {queue}\n"),
        JobsCommand::Work { .. } => String::new(),
    })
}

fn pretty(v: &Value) -> String {
    format!("{}\n", serde_json::to_string_pretty(v).unwrap_or_default())
}

fn enqueue_body(cmd: &JobsCommand) -> Result<Value, ClientError> {
    let JobsCommand::Enqueue {
        queue,
        kind,
        payload,
        priority,
        delay,
        run_at,
        max_attempts,
        timeout,
        unique_key,
        unique_while,
        unique_for,
        tags,
        idempotency_key: _,
    } = cmd
    else {
        return Err(bad_input("not an enqueue".into()));
    };
    let payload: Value = serde_json::from_str(payload)
        .map_err(|e| bad_input(format!("--payload is not JSON: {e}")))?;
    // Only what was given: servers default the rest.
    let mut body = json!({ "queue": queue, "kind": kind, "payload": payload });
    let ms = |d: &Duration| json!(d.as_millis() as u64);
    let fields = [
        ("priority", priority.map(|p| json!(p))),
        ("delay_ms", delay.as_ref().map(ms)),
        ("run_at", run_at.as_ref().map(|t| json!(t))),
        ("max_attempts", max_attempts.map(|n| json!(n))),
        ("timeout_ms", timeout.as_ref().map(ms)),
        ("unique_key", unique_key.as_ref().map(|k| json!(k))),
        ("unique_while", unique_while.as_ref().map(|w| json!(w))),
        ("unique_for_ms", unique_for.as_ref().map(ms)),
        ("tags", (!tags.is_empty()).then(|| json!(tags))),
    ];
    for (k, v) in fields {
        if let Some(v) = v {
            body[k] = v;
        }
    }
    Ok(body)
}

fn job_table(v: &Value) -> String {
    let rows: Vec<Vec<String>> = v["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|j| {
            vec![
                cell(&j["id"]),
                cell(&j["queue"]),
                cell(&j["kind"]),
                cell(&j["state"]),
                attempts(j),
                cell(&j["run_at"]),
            ]
        })
        .collect();
    let mut out = table(
        &["ID", "QUEUE", "KIND", "STATE", "ATTEMPT", "RUN AT"],
        &rows,
    );
    if let Some(next) = v["next_cursor"].as_str() {
        out.push_str(&format!("(more after {next}: add --cursor {next})\n"));
    }
    out
}

/// `attempt/of`: the attempt (counting over the job's life) of the attempts it may make so
/// far (its budget after the last retry).
fn attempts(j: &Value) -> String {
    let n = |k: &str| j[k].as_i64().unwrap_or(0);
    format!(
        "{}/{}",
        n("attempt"),
        n("attempts_before_retry") + n("max_attempts")
    )
}

fn job_detail(j: &Value) -> String {
    let mut out = String::new();
    for k in [
        "id",
        "queue",
        "kind",
        "state",
        "priority",
        "run_at",
        "created_at",
        "finished_at",
        "worker",
        "lease_id",
        "lease_expires_at",
        "deadline_at",
        "cancel_requested_at",
        "timeout_ms",
    ] {
        if !j[k].is_null() {
            out.push_str(&format!("{k:<17}{}\n", cell(&j[k])));
        }
    }
    let retried = j["attempts_before_retry"].as_i64().unwrap_or(0);
    out.push_str(&format!("{:<17}{}", "attempt", attempts(j)));
    if retried > 0 {
        out.push_str(&format!(" ({retried} before the last retry)"));
    }
    out.push('\n');
    out.push_str(&format!("{:<17}{}\n", "payload", j["payload"]));
    if !j["result"].is_null() {
        out.push_str(&format!("{:<17}{}\n", "result", j["result"]));
    }
    for e in j["errors"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "error (attempt {}, {}): {}\n",
            cell(&e["attempt"]),
            cell(&e["at"]),
            cell(&e["error"])
        ));
    }
    out
}

fn queue_table(v: &Value) -> String {
    let rows: Vec<Vec<String>> = v["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|q| {
            let d = &q["depth"];
            let rate = if q["rate"].is_null() {
                "-".to_owned()
            } else {
                format!(
                    "{}/{}ms",
                    cell(&q["rate"]["limit"]),
                    cell(&q["rate"]["period_ms"])
                )
            };
            vec![
                cell(&q["queue"]),
                if q["paused"] == json!(true) {
                    "paused"
                } else {
                    "active"
                }
                .to_owned(),
                cell(&d["available"]),
                cell(&d["scheduled"]),
                cell(&d["running"]),
                cell(&d["retryable"]),
                cell(&d["dead"]),
                cell(&d["completed"]),
                cell(&q["oldest_available_age_ms"]),
                cell(&q["completed_last_minute"]),
                cell(&q["concurrency"]),
                rate,
            ]
        })
        .collect();
    table(
        &[
            "QUEUE",
            "STATUS",
            "AVAILABLE",
            "SCHEDULED",
            "RUNNING",
            "RETRYABLE",
            "DEAD",
            "COMPLETED",
            "OLDEST MS",
            "DONE/MIN",
            "CONCURRENCY",
            "RATE",
        ],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::{CommandFactory as _, Parser};

    use super::JobsCommand;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        jobs: JobsCommand,
    }

    #[test]
    fn every_verb_and_argument_says_what_it_is() {
        let cli = Cli::command();
        let mut missing = Vec::new();
        for verb in cli.get_subcommands() {
            if verb.get_about().is_none() {
                missing.push(verb.get_name().to_owned());
            }
            for arg in verb.get_arguments() {
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{} {}", verb.get_name(), arg.get_id()));
                }
            }
        }
        assert!(missing.is_empty(), "no help text: {missing:?}");
    }

    fn enqueue(args: &[&str]) -> Result<serde_json::Value, String> {
        let cli = Cli::try_parse_from(["jobs", "enqueue", "q", "k"].iter().chain(args))
            .map_err(|e| e.to_string())?;
        super::enqueue_body(&cli.jobs).map_err(|e| e.to_string())
    }

    #[test]
    fn duration_flags_take_one_syntax_and_plain_numbers_are_milliseconds() {
        let b = enqueue(&["--timeout", "2s", "--delay", "250ms"]).unwrap();
        assert_eq!(
            (b["timeout_ms"].as_u64(), b["delay_ms"].as_u64()),
            (Some(2000), Some(250))
        );
        let b = enqueue(&["--timeout-ms", "1500", "--delay-ms", "1h"]).unwrap();
        assert_eq!(
            (b["timeout_ms"].as_u64(), b["delay_ms"].as_u64()),
            (Some(1500), Some(3_600_000)),
            "the _ms spellings are aliases of the same flags"
        );
        let b = enqueue(&[
            "--unique-key",
            "u",
            "--unique-while",
            "for_ms",
            "--unique-for-ms",
            "90000",
        ])
        .unwrap();
        assert_eq!(b["unique_for_ms"].as_u64(), Some(90_000));
        let e = enqueue(&["--timeout", "1.5s"]).unwrap_err();
        assert!(e.contains("whole numbers only"), "{e}");
        let e = enqueue(&["--timeout", "soon"]).unwrap_err();
        assert!(e.contains("not a duration"), "{e}");
        let e = enqueue(&["--timeout", "3d"]).unwrap_err();
        assert!(e.contains("use ms, s, m or h"), "{e}");
        let work = Cli::try_parse_from([
            "jobs",
            "work",
            "--queue",
            "q",
            "--exec",
            "true",
            "--term-grace",
            "500",
        ])
        .unwrap();
        let JobsCommand::Work {
            term_grace,
            shutdown_timeout,
            ..
        } = work.jobs
        else {
            panic!("{work:?}")
        };
        assert_eq!(
            (term_grace, shutdown_timeout),
            (Duration::from_millis(500), Duration::from_secs(30))
        );
    }

    #[test]
    fn an_idempotency_key_is_a_header_not_a_unique_key() {
        let b = enqueue(&["--idempotency-key", "order-7"]).unwrap();
        assert!(b.get("unique_key").is_none(), "{b}");
        let e = enqueue(&["--idempotency-key", "k", "--unique-key", "u"]).unwrap_err();
        assert!(e.contains("cannot be used with"), "{e}");
    }
}
