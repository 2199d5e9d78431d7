//! `mortar jobs …`: enqueue, inspect and manage jobs, and `mortar jobs work --exec CMD`, a
//! worker that runs a shell command per job.

use std::process::Stdio;
use std::time::Duration;

use clap::Subcommand;
use mortar_core::client::{ClientArgs, ClientError, cell, table};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt as _;

use crate::client::{JobsClient, encode};
use crate::worker::{JobError, Worker, default_worker_name};

#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// Enqueue a job (durable when this returns).
    Enqueue {
        queue: String,
        kind: String,
        /// The payload, as JSON.
        #[arg(long, default_value = "{}")]
        payload: String,
        /// Lower runs first (0 to 100).
        #[arg(long)]
        priority: Option<i32>,
        /// Run no earlier than this from now (e.g. 30s, 5m).
        #[arg(long, value_parser = parse_duration)]
        delay: Option<Duration>,
        /// Run no earlier than this time (RFC 3339).
        #[arg(long)]
        run_at: Option<String>,
        #[arg(long)]
        max_attempts: Option<i32>,
        /// The lease length: complete or heartbeat within it (e.g. 30s).
        #[arg(long, value_parser = parse_duration)]
        timeout: Option<Duration>,
        /// At most one such job at a time (see `--unique-while`).
        #[arg(long)]
        unique_key: Option<String>,
        /// queued, active or for_ms (with --unique-for).
        #[arg(long, requires = "unique_key")]
        unique_while: Option<String>,
        #[arg(long, value_parser = parse_duration, requires = "unique_key")]
        unique_for: Option<Duration>,
        /// A tag (repeat for more).
        #[arg(long = "tag")]
        tags: Vec<String>,
    },
    /// A job with every failed attempt's error.
    Get { id: String },
    /// Jobs, oldest first, filtered by state and queue.
    List {
        /// scheduled, available, running, retryable, completed, dead or cancelled.
        #[arg(long, default_value = "")]
        state: String,
        #[arg(long, default_value = "")]
        queue: String,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Run a dead, cancelled or retryable job again now.
    Retry { id: String },
    /// Cancel a job that has not started (or waits to retry).
    Cancel { id: String },
    /// The dead-letter queue: list it, or retry or discard every dead job in it.
    Dlq {
        #[arg(long)]
        queue: Option<String>,
        #[arg(long)]
        kind: Option<String>,
        /// Run every matching dead job again.
        #[arg(long, conflicts_with = "discard")]
        retry: bool,
        /// Delete every matching dead job (and its errors) for good.
        #[arg(long)]
        discard: bool,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Queues with their depth by state, age of the oldest waiting job and settings.
    Queues,
    /// Stop leasing a queue's jobs (enqueues still accepted).
    Pause { queue: String },
    /// Lease a paused queue's jobs again.
    Resume { queue: String },
    /// Work jobs by running a shell command per job: the payload JSON on stdin, MORTAR_JOB_ID,
    /// MORTAR_JOB_KIND, MORTAR_JOB_ATTEMPT and MORTAR_JOB_QUEUE in the environment. Exit 0
    /// completes the job (stdout is the result: JSON if it parses, else a string); non-zero
    /// fails the attempt with stderr's tail as the error. SIGINT/SIGTERM stop gracefully.
    Work {
        /// A queue to work (repeat for more).
        #[arg(long = "queue", required = true)]
        queues: Vec<String>,
        /// The command, run with `sh -c`.
        #[arg(long)]
        exec: String,
        /// Commands running at once.
        #[arg(long, default_value_t = 1)]
        concurrency: usize,
        /// Running commands get this long to finish on shutdown, then are killed and their
        /// jobs released.
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        shutdown_timeout: Duration,
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
        JobsCommand::Enqueue { .. } => http.post("/v1/jobs", &enqueue_body(cmd)?).await?,
        JobsCommand::Get { id } => http.get(&format!("/v1/jobs/{}", encode(id))).await?,
        JobsCommand::List {
            state,
            queue,
            limit,
        } => jobs.list(state, queue, *limit, None).await?,
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
            jobs.list("dead", queue.as_deref().unwrap_or(""), *limit, None)
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
            name,
        } => {
            return work(
                jobs.clone(),
                queues,
                exec,
                *concurrency,
                *shutdown_timeout,
                name.clone(),
            )
            .await;
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
                format!("{}/{}", cell(&j["attempt"]), cell(&j["max_attempts"])),
                cell(&j["run_at"]),
            ]
        })
        .collect();
    let mut out = table(
        &["ID", "QUEUE", "KIND", "STATE", "ATTEMPT", "RUN AT"],
        &rows,
    );
    if let Some(next) = v["next_cursor"].as_str() {
        out.push_str(&format!("(more after {next})\n"));
    }
    out
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
        "lease_id",
        "lease_expires_at",
    ] {
        if !j[k].is_null() {
            out.push_str(&format!("{k:<17}{}\n", cell(&j[k])));
        }
    }
    out.push_str(&format!(
        "{:<17}{}/{}\n",
        "attempt",
        cell(&j["attempt"]),
        cell(&j["max_attempts"])
    ));
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

/// Longest stderr tail kept as a failed attempt's error.
const STDERR_TAIL: usize = 4096;

async fn work(
    client: JobsClient,
    queues: &[String],
    exec: &str,
    concurrency: usize,
    shutdown_timeout: Duration,
    name: Option<String>,
) -> Result<String, ClientError> {
    if exec.trim().is_empty() {
        return Err(bad_input("--exec needs a command".into()));
    }
    let name = name.unwrap_or_else(default_worker_name);
    let command = exec.to_owned();
    let mut worker = Worker::new(client)
        .concurrency(concurrency)
        .prefetch(0)
        .shutdown_timeout(shutdown_timeout)
        .name(name.clone())
        .fallback(move |job| run_command(command.clone(), job));
    for q in queues {
        worker = worker.queue(q.clone());
    }
    eprintln!(
        "mortar: working {} as {name} (concurrency {concurrency}); Ctrl-C stops after running commands finish",
        queues.join(", ")
    );
    let stats = worker.run().await?;
    Ok(format!(
        "stopped: {} completed, {} failed, {} released, {} lost leases\n",
        stats.completed, stats.failed, stats.released, stats.lost
    ))
}

async fn run_command(command: String, job: crate::client::Job) -> crate::worker::HandlerResult {
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(&command)
        .env("MORTAR_JOB_ID", &job.id)
        .env("MORTAR_JOB_KIND", &job.kind)
        .env("MORTAR_JOB_QUEUE", &job.queue)
        .env("MORTAR_JOB_ATTEMPT", job.attempt.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Cancelled (shutdown deadline, lost lease): the command must not outlive its job.
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| JobError::retryable(format!("cannot run `sh -c {command}`: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        let payload = job.payload.to_string();
        // A command that does not read its stdin is fine: ignore a broken pipe.
        tokio::spawn(async move {
            let _ = stdin.write_all(payload.as_bytes()).await;
        });
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| JobError::retryable(format!("waiting for the command: {e}")))?;
    if out.status.success() {
        let text = String::from_utf8_lossy(&out.stdout);
        let text = text.trim();
        if text.is_empty() {
            return Ok(None);
        }
        return Ok(Some(
            serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned())),
        ));
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stderr = stderr.trim_end();
    let tail = match stderr.char_indices().rev().nth(STDERR_TAIL - 1) {
        Some((i, _)) => &stderr[i..],
        None => stderr,
    };
    let how = match out.status.code() {
        Some(code) => format!("exit code {code}"),
        None => {
            use std::os::unix::process::ExitStatusExt as _;
            format!("killed by signal {}", out.status.signal().unwrap_or(0))
        }
    };
    Err(JobError::retryable(if tail.is_empty() {
        how
    } else {
        format!("{how}: {tail}")
    }))
}
