//! `mortar jobs work --exec CMD`: a worker running a shell command per job, in a process group
//! of its own that is sent SIGTERM (then SIGKILL after a grace) when the attempt times out or
//! the job is cancelled; and its log, one line per job start and end on stderr.

use std::process::Stdio;
use std::time::Duration;

use mortar_core::client::ClientError;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::Value;
use tokio::io::AsyncWriteExt as _;

use super::bad_input;
use crate::client::{Job, JobsClient};
use crate::worker::{HandlerResult, JobError, Outcome, Report, Worker, default_worker_name};

/// Longest stderr tail kept as a failed attempt's error.
const STDERR_TAIL: usize = 4096;

/// How `jobs work` runs.
#[derive(Debug, Clone)]
pub(super) struct WorkArgs<'a> {
    pub(super) queues: &'a [String],
    pub(super) exec: &'a str,
    pub(super) concurrency: usize,
    pub(super) shutdown_timeout: Duration,
    pub(super) term_grace: Duration,
    pub(super) name: Option<String>,
}

pub(super) async fn work(client: JobsClient, args: WorkArgs<'_>) -> Result<String, ClientError> {
    if args.exec.trim().is_empty() {
        return Err(bad_input("--exec needs a command".into()));
    }
    let name = args.name.unwrap_or_else(default_worker_name);
    let command = args.exec.to_owned();
    let term_grace = args.term_grace;
    let mut worker = Worker::new(client)
        .concurrency(args.concurrency)
        .prefetch(0)
        .shutdown_timeout(args.shutdown_timeout)
        // The command gets SIGTERM, then SIGKILL after `term_grace`: its handler returns by
        // then, and is dropped a second later at the latest.
        .cancel_grace(term_grace + Duration::from_secs(1))
        .name(name.clone())
        .on_report(log_line)
        .fallback(move |job| run_command(command.clone(), job, term_grace));
    for q in args.queues {
        worker = worker.queue(q.clone());
    }
    eprintln!(
        "mortar: working {} as {name} (concurrency {}); Ctrl-C stops after running commands finish",
        args.queues.join(", "),
        args.concurrency
    );
    let stats = worker.run().await?;
    Ok(format!(
        "stopped: {} completed, {} failed, {} timed out, {} cancelled, {} released, {} lost leases\n",
        stats.completed, stats.failed, stats.timed_out, stats.cancelled, stats.released, stats.lost
    ))
}

/// One line on stderr per job start and end.
fn log_line(r: Report<'_>) {
    match r {
        Report::Started { job } => eprintln!("mortar: {} started", who(job)),
        Report::Ended { job, outcome, ran } => {
            let took = format!("{:.3} s", ran.as_secs_f64());
            let line = match outcome {
                Outcome::Completed => format!("completed in {took}"),
                Outcome::Failed(e) => format!("failed in {took}: {}", first_line(e)),
                Outcome::TimedOut(_) => format!("{outcome} (ran {took})"),
                other => format!("{other} after {took}"),
            };
            eprintln!("mortar: {} {line}", who(job));
        }
    }
}

fn who(job: &Job) -> String {
    format!(
        "job {} ({}/{}, attempt {})",
        job.id, job.queue, job.kind, job.attempt
    )
}

fn first_line(s: &str) -> String {
    let mut lines = s.lines();
    let first = lines.next().unwrap_or_default();
    if lines.next().is_some() {
        format!("{first} …")
    } else {
        first.to_owned()
    }
}

/// Kills a command's process group when its handler is dropped before the command ended
/// (the shutdown deadline, or the cancel grace ran out): it must not outlive its job.
struct Group(Option<Pid>);

impl Group {
    fn signal(&self, signal: Signal) {
        if let Some(pgid) = self.0 {
            // ESRCH: the group is gone already.
            let _ = killpg(pgid, signal);
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.signal(Signal::SIGKILL);
    }
}

async fn run_command(command: String, job: Job, term_grace: Duration) -> HandlerResult {
    let cancel = crate::worker::cancellation();
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(&command)
        .env("MORTAR_JOB_ID", &job.id)
        .env("MORTAR_JOB_KIND", &job.kind)
        .env("MORTAR_JOB_QUEUE", &job.queue)
        .env("MORTAR_JOB_ATTEMPT", job.attempt.to_string())
        .env("MORTAR_JOB_TIMEOUT_MS", job.timeout_ms.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // A group of its own: signals reach what the command started too, and a Ctrl-C at the
        // terminal reaches only the worker (which lets running commands finish).
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| JobError::retryable(format!("cannot run `sh -c {command}`: {e}")))?;
    let mut group = Group(
        child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .map(Pid::from_raw),
    );
    if let Some(mut stdin) = child.stdin.take() {
        let payload = job.payload.to_string();
        // A command that does not read its stdin is fine: ignore a broken pipe.
        tokio::spawn(async move {
            let _ = stdin.write_all(payload.as_bytes()).await;
        });
    }
    let wait = child.wait_with_output();
    tokio::pin!(wait);
    let stop = async {
        match &cancel {
            Some(token) => token.cancelled().await,
            None => std::future::pending().await,
        }
    };
    let (out, stopped) = tokio::select! {
        out = &mut wait => (out, false),
        () = stop => {
            // Timed out or cancelled: SIGTERM, then SIGKILL after the grace.
            group.signal(Signal::SIGTERM);
            let out = match tokio::time::timeout(term_grace, &mut wait).await {
                Ok(out) => out,
                Err(_) => {
                    group.signal(Signal::SIGKILL);
                    wait.await
                }
            };
            (out, true)
        }
    };
    if !stopped {
        // It ended by itself: nothing of its group to kill (and its id may be reused).
        group.0 = None;
    }
    let out = out.map_err(|e| JobError::retryable(format!("waiting for the command: {e}")))?;
    if out.status.success() && !stopped {
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
