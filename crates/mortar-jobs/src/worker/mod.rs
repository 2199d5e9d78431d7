//! The Rust worker library:
//!
//! ```no_run
//! # async fn demo() -> Result<(), mortar_core::client::ClientError> {
//! use mortar_jobs::client::JobsClient;
//! use mortar_jobs::worker::{JobError, Worker};
//!
//! let client = JobsClient::connect("http://127.0.0.1:8700");
//! Worker::new(client)
//!     .queue("mail")
//!     .register("welcome", |job| async move {
//!         let user = job.payload["user"].as_u64().ok_or_else(|| JobError::fatal("no user"))?;
//!         Ok(Some(serde_json::json!({ "sent_to": user })))
//!     })
//!     .concurrency(32)
//!     .run() // until SIGINT or SIGTERM
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! * **Leasing** in batches: up to two long-polls (`wait_ms`) in flight, each asking for the
//!   free slots (`concurrency` running + `prefetch` waiting), at most half of them; the second
//!   goes out once half the slots are free. The worker is never idle for a lease's round trip
//!   when its handlers are quicker than the server, and a job enqueued while one lease is on
//!   its way back finds the other one waiting.
//! * **Timeouts are enforced**: an attempt may run at most its job's `timeout_ms`, counted from
//!   when it was leased (a job waiting for a free handler spends it too). At the deadline the
//!   worker cancels the handler's [`cancellation`] token, gives it [`Worker::cancel_grace`]
//!   (default none), drops its future and reports the attempt timed out; the server fails it
//!   as timed out (retried with the job's backoff, dead when its attempts run out) whatever
//!   the worker does.
//! * **Heartbeats** every third of the lease while a job waits for a slot or runs. A refused
//!   heartbeat stops the handler the same way: 410 `cancelled` (the job was cancelled while
//!   it ran: how a cancellation reaches the worker; the attempt ends `cancelled`), 410
//!   `timed-out`, or 409 (the lease ran out and the job may run elsewhere). A handler that
//!   returns first wins: its completion is sent.
//! * **Completions** are batched (`POST /v1/jobs/complete`): while one request is in flight
//!   the next batch gathers, and a second request goes out only for a full batch; a
//!   failure (`Err(JobError)`) is reported at once with its `retryable` and `retry_in`.
//! * **A panicking handler** is a failed (retryable) attempt; the worker keeps running.
//! * **Graceful shutdown**: stop leasing, release jobs not started yet, give running handlers
//!   `shutdown_timeout` to finish, then cancel and release the rest (releases do not count
//!   an attempt), and flush pending completions.
//! * **Observing**: [`Worker::on_report`] hears each job start and end (with its
//!   [`Outcome`] and run time); `mortar jobs work` logs a line for each.

mod attempt;
mod complete;
mod job_error;
mod stats;

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt as _;
use mortar_core::client::ClientError;
use serde_json::Value;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use self::attempt::{Ctx, start};
use self::complete::complete_loop;
use crate::client::{Completion, Job, JobsClient};

pub use self::attempt::cancellation;
pub use self::job_error::{HandlerResult, JobError};
pub use self::stats::{Counters, Outcome, Report, WorkerStats};

type BoxFuture = Pin<Box<dyn Future<Output = HandlerResult> + Send>>;
type Handler = Arc<dyn Fn(Job) -> BoxFuture + Send + Sync>;
type Observer = Arc<dyn Fn(Report<'_>) + Send + Sync>;

/// A pool of handlers working jobs of some queues. Build it, then `run`.
pub struct Worker {
    client: JobsClient,
    queues: Vec<String>,
    handlers: HashMap<String, Handler>,
    fallback: Option<Handler>,
    concurrency: usize,
    prefetch: Option<usize>,
    poll_wait: Duration,
    shutdown_timeout: Duration,
    name: String,
    complete_batch: usize,
    counters: Arc<Counters>,
    cancel_grace: Duration,
    observer: Option<Observer>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("queues", &self.queues)
            .field("kinds", &self.handlers.keys().collect::<Vec<_>>())
            .field("concurrency", &self.concurrency)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// `host:pid`, so workers are recognisable on running jobs.
pub fn default_worker_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map_or_else(|_| "host".into(), |h| h.trim().to_owned());
    format!("{host}:{}", std::process::id())
}

impl Worker {
    pub fn new(client: JobsClient) -> Self {
        Self {
            client,
            queues: Vec::new(),
            handlers: HashMap::new(),
            fallback: None,
            concurrency: 10,
            prefetch: None,
            poll_wait: Duration::from_secs(1),
            shutdown_timeout: Duration::from_secs(30),
            name: default_worker_name(),
            complete_batch: 64,
            counters: Arc::new(Counters::default()),
            cancel_grace: Duration::ZERO,
            observer: None,
        }
    }

    /// How long a handler whose attempt must stop (it timed out, its job was cancelled, its
    /// lease was lost) gets after its [`cancellation`] token is cancelled before its future is
    /// dropped (default none: dropped at once). Its slot stays taken meanwhile.
    #[must_use]
    pub fn cancel_grace(mut self, grace: Duration) -> Self {
        self.cancel_grace = grace;
        self
    }

    /// Calls `observe` as each job's handler starts and as its attempt ends (how, and after
    /// how long). Called on the worker's tasks: keep it quick.
    #[must_use]
    pub fn on_report(mut self, observe: impl Fn(Report<'_>) + Send + Sync + 'static) -> Self {
        self.observer = Some(Arc::new(observe));
        self
    }

    /// Work this queue (call again for more).
    #[must_use]
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queues.push(queue.into());
        self
    }

    /// Runs `handler` for jobs of `kind`.
    #[must_use]
    pub fn register<F, Fut>(mut self, kind: impl Into<String>, handler: F) -> Self
    where
        F: Fn(Job) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        self.handlers.insert(kind.into(), boxed(handler));
        self
    }

    /// Runs `handler` for jobs of every kind with no handler of its own. Without one, such a
    /// job fails (retryable, so a worker that knows the kind can take it).
    #[must_use]
    pub fn fallback<F, Fut>(mut self, handler: F) -> Self
    where
        F: Fn(Job) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        self.fallback = Some(boxed(handler));
        self
    }

    /// Handlers running at once (default 10).
    #[must_use]
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// Jobs leased ahead, waiting for a free handler (default: `concurrency`). Their leases
    /// are kept alive by heartbeats and they are released on shutdown.
    #[must_use]
    pub fn prefetch(mut self, n: usize) -> Self {
        self.prefetch = Some(n);
        self
    }

    /// How long one lease request waits for jobs (long-poll, default 1 s; at most 60 s).
    /// Shutdown waits for the requests in flight, so this also bounds how soon leasing stops.
    #[must_use]
    pub fn poll_wait(mut self, wait: Duration) -> Self {
        self.poll_wait = wait.min(Duration::from_secs(60));
        self
    }

    /// How long running handlers get to finish after shutdown begins (default 30 s).
    #[must_use]
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// The name shown on running jobs (default `host:pid`).
    #[must_use]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Most completions sent in one `POST /v1/jobs/complete` (default 64, at most 10 000).
    /// Smaller batches are sent sooner; up to two are in flight at once (what arrives meanwhile
    /// makes the next batch).
    #[must_use]
    pub fn complete_batch(mut self, n: usize) -> Self {
        self.complete_batch = n.clamp(1, 10_000);
        self
    }

    /// Live counters of this worker.
    pub fn counters(&self) -> Arc<Counters> {
        self.counters.clone()
    }

    /// Works until SIGINT or SIGTERM, then shuts down gracefully.
    pub async fn run(self) -> Result<WorkerStats, ClientError> {
        self.run_until(shutdown_signal()).await
    }

    /// Works until `shutdown` resolves, then shuts down gracefully. Errors only for a request
    /// the server will never accept (bad queue names, auth); transient failures are retried.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<WorkerStats, ClientError> {
        if self.queues.is_empty() {
            return Err(ClientError::Problem {
                status: 400,
                title: "no queues".into(),
                detail: "a worker needs at least one queue to work".into(),
                body: Value::Null,
            });
        }
        let stop = CancellationToken::new();
        let hard_stop = CancellationToken::new();
        let stopper = {
            let stop = stop.clone();
            tokio::spawn(async move {
                tokio::select! {
                    () = shutdown => stop.cancel(),
                    () = stop.cancelled() => {}
                }
            })
        };
        let slots_total = self.concurrency + self.prefetch.unwrap_or(self.concurrency);
        let slots = Arc::new(Semaphore::new(slots_total));
        let lease_cap = (slots_total / LEASES_IN_FLIGHT).clamp(1, MAX_LEASE) as u32;
        let (done_tx, done_rx) = mpsc::channel::<Completion>(slots_total.max(64) * 2);
        let ctx = Arc::new(Ctx {
            client: self.client.clone(),
            handlers: self.handlers,
            fallback: self.fallback,
            exec: Arc::new(Semaphore::new(self.concurrency)),
            stop: stop.clone(),
            hard_stop: hard_stop.clone(),
            done: done_tx,
            counters: self.counters.clone(),
            cancel_grace: self.cancel_grace,
            observer: self.observer,
        });
        let completer = tokio::spawn(complete_loop(
            self.client.clone(),
            done_rx,
            self.counters.clone(),
            self.complete_batch,
        ));
        let mut tasks = JoinSet::new();
        let mut leases: JoinSet<(u32, Result<Vec<Job>, ClientError>)> = JoinSet::new();
        let mut failures = 0u32;
        let mut retry_at: Option<Instant> = None;
        let result = loop {
            while tasks.try_join_next().is_some() {}
            // Two leases are in flight, each for at most half the slots, so the worker is not
            // idle for a round trip when its handlers are quicker than the server's answer, and
            // a job enqueued while one lease is on its way back meets the other one waiting.
            // The first waits for one free slot; a second for a full half (big batches).
            let need = match leases.len() {
                _ if retry_at.is_some() => 0,
                0 => 1,
                n if n < LEASES_IN_FLIGHT => lease_cap,
                _ => 0,
            };
            let nap = async {
                match retry_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                () = stop.cancelled() => break Ok(()),
                () = nap => retry_at = None,
                Some(done) = leases.join_next() => {
                    let Ok((want, leased)) = done else { continue };
                    match leased {
                        Ok(jobs) => {
                            failures = 0;
                            slots.add_permits(want as usize - jobs.len().min(want as usize));
                            start(&ctx, &slots, &mut tasks, jobs);
                        }
                        Err(e) => {
                            slots.add_permits(want as usize);
                            if fatal(&e) {
                                break Err(e);
                            }
                            failures += 1;
                            let nap = Duration::from_millis(100 << failures.min(6));
                            tracing::warn!(error = %e, retry_in_ms = nap.as_millis() as u64, "jobs worker: lease failed");
                            retry_at = Some(Instant::now() + nap);
                        }
                    }
                }
                first = slots.clone().acquire_many_owned(need), if need > 0 => {
                    let Ok(first) = first else { break Ok(()) };
                    first.forget();
                    // Let handlers that are about to finish do so, then ask for every free slot.
                    tokio::task::yield_now().await;
                    let extra = slots.available_permits().min((lease_cap - need) as usize) as u32;
                    if let Ok(p) = slots.clone().try_acquire_many_owned(extra) {
                        p.forget();
                    }
                    let want = extra + need;
                    let (client, queues, wait, name) =
                        (self.client.clone(), self.queues.clone(), self.poll_wait, self.name.clone());
                    leases.spawn(async move {
                        // A panic comes back as a failed lease, so its slots are given back.
                        let got = AssertUnwindSafe(client.lease(&queues, want, wait, &name))
                            .catch_unwind()
                            .await
                            .unwrap_or_else(|_| Err(ClientError::Transport("the lease request panicked".into())));
                        (want, got)
                    });
                }
            }
        };
        stop.cancel();
        // Leases still in flight: their jobs release themselves at once (the worker stopped).
        while let Some(done) = leases.join_next().await {
            if let Ok((_, Ok(jobs))) = done {
                start(&ctx, &slots, &mut tasks, jobs);
            }
        }
        // Unstarted jobs release themselves at once; running ones get the grace period.
        let drained = tokio::time::timeout(self.shutdown_timeout, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            hard_stop.cancel();
            while tasks.join_next().await.is_some() {}
        }
        drop(ctx);
        let _ = completer.await;
        let _ = stopper.await;
        result.map(|()| self.counters.snapshot())
    }
}

fn boxed<F, Fut>(handler: F) -> Handler
where
    F: Fn(Job) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
{
    Arc::new(move |job| Box::pin(handler(job)) as BoxFuture)
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}

/// Most lease requests in flight.
const LEASES_IN_FLIGHT: usize = 2;

/// Most jobs one lease asks for (the server's limit).
const MAX_LEASE: usize = 1000;

/// A lease refusal the server will repeat (bad queue names, auth): the worker stops on it.
fn fatal(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::Problem {
            status: 400..=499,
            ..
        }
    ) && !matches!(
        e,
        ClientError::Problem {
            status: 408 | 429,
            ..
        }
    )
}
