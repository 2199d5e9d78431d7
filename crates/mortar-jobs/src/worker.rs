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
//! * **Heartbeats** every third of the lease while a job waits for a slot or runs; a refused
//!   heartbeat (409: the lease ran out and the job may run elsewhere) cancels the handler.
//! * **Completions** are batched (`POST /v1/jobs/complete`): while one request is in flight
//!   the next batch gathers, and a second request goes out only for a full batch; a
//!   failure (`Err(JobError)`) is reported at once with its `retryable` and `retry_in`.
//! * **A panicking handler** is a failed (retryable) attempt; the worker keeps running.
//! * **Graceful shutdown**: stop leasing, release jobs not started yet, give running handlers
//!   `shutdown_timeout` to finish, then cancel and release the rest (releases do not count
//!   an attempt), and flush pending completions.

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures_util::FutureExt as _;
use mortar_core::client::ClientError;
use serde_json::Value;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::client::{Completion, Job, JobsClient};

/// What a handler returns: an optional JSON result, or why the attempt failed.
pub type HandlerResult = Result<Option<Value>, JobError>;

type BoxFuture = Pin<Box<dyn Future<Output = HandlerResult> + Send>>;
type Handler = Arc<dyn Fn(Job) -> BoxFuture + Send + Sync>;

/// A failed attempt: retried (with the job's backoff, or after `retry_in`) or, when not
/// retryable, dead at once. Any `std::error::Error` converts to a retryable one, so `?` works.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobError {
    message: String,
    retryable: bool,
    retry_in: Option<Duration>,
}

impl JobError {
    /// A failure worth retrying (the job's backoff schedule applies).
    pub fn retryable(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: true,
            retry_in: None,
        }
    }

    /// A failure retrying will not fix: the job goes to the dead-letter queue.
    pub fn fatal(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: false,
            retry_in: None,
        }
    }

    /// Retry after `delay` instead of the backoff schedule.
    #[must_use]
    pub fn retry_in(mut self, delay: Duration) -> Self {
        self.retry_in = Some(delay);
        self
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn is_retryable(&self) -> bool {
        self.retryable
    }

    pub fn retry_delay(&self) -> Option<Duration> {
        self.retry_in
    }
}

impl std::fmt::Display for JobError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for JobError {
    fn from(e: E) -> Self {
        Self::retryable(e.to_string())
    }
}

/// What a worker did (live counters; `Worker::counters` before `run`).
#[derive(Debug, Default)]
pub struct Counters {
    /// Jobs leased.
    pub leased: AtomicU64,
    /// Completions the server accepted.
    pub completed: AtomicU64,
    /// Attempts reported failed (handler errors and panics).
    pub failed: AtomicU64,
    /// Of `failed`: handlers that panicked.
    pub panicked: AtomicU64,
    /// Jobs given back on shutdown (not started, or still running at the deadline).
    pub released: AtomicU64,
    /// Jobs whose lease was lost (heartbeat or completion refused with 409).
    pub lost: AtomicU64,
}

/// A snapshot of [`Counters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerStats {
    pub leased: u64,
    pub completed: u64,
    pub failed: u64,
    pub panicked: u64,
    pub released: u64,
    pub lost: u64,
}

impl Counters {
    pub fn snapshot(&self) -> WorkerStats {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        WorkerStats {
            leased: g(&self.leased),
            completed: g(&self.completed),
            failed: g(&self.failed),
            panicked: g(&self.panicked),
            released: g(&self.released),
            lost: g(&self.lost),
        }
    }
}

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
        }
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

struct Ctx {
    client: JobsClient,
    handlers: HashMap<String, Handler>,
    fallback: Option<Handler>,
    exec: Arc<Semaphore>,
    stop: CancellationToken,
    hard_stop: CancellationToken,
    done: mpsc::Sender<Completion>,
    counters: Arc<Counters>,
}

/// One leased job's slot; given back however the job's task ends.
struct Slot(Arc<Semaphore>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.add_permits(1);
    }
}

enum Beat {
    Held,
    Lost,
}

impl Ctx {
    async fn heartbeat(&self, job: &Job, lease_id: &str) -> Beat {
        match self.client.heartbeat(&job.id, lease_id, None).await {
            Ok(_) => Beat::Held,
            Err(ClientError::Problem {
                status: 409 | 410 | 404,
                ..
            }) => {
                tracing::warn!(job = %job.id, "jobs worker: lease lost; cancelling the handler");
                self.counters.lost.fetch_add(1, Ordering::Relaxed);
                Beat::Lost
            }
            // Keep trying: the lease may still be good when the server answers again.
            Err(e) => {
                tracing::warn!(job = %job.id, error = %e, "jobs worker: heartbeat failed");
                Beat::Held
            }
        }
    }

    async fn release(&self, job: &Job, lease_id: &str) {
        match self.client.release(&job.id, lease_id).await {
            Ok(()) => {
                self.counters.released.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::warn!(job = %job.id, error = %e, "jobs worker: release failed; the job runs again when its lease runs out");
            }
        }
    }

    async fn fail(&self, job: &Job, lease_id: &str, e: &JobError) {
        self.counters.failed.fetch_add(1, Ordering::Relaxed);
        let r = self
            .client
            .fail(&job.id, lease_id, &e.message, e.retryable, e.retry_in)
            .await;
        if let Err(err) = r {
            if matches!(err, ClientError::Problem { status: 409, .. }) {
                self.counters.lost.fetch_add(1, Ordering::Relaxed);
            }
            tracing::warn!(job = %job.id, error = %err, "jobs worker: reporting a failure failed");
        }
    }
}

/// Counts leased jobs and gives each a task (holding its slot).
fn start(ctx: &Arc<Ctx>, slots: &Arc<Semaphore>, tasks: &mut JoinSet<()>, jobs: Vec<Job>) {
    ctx.counters
        .leased
        .fetch_add(jobs.len() as u64, Ordering::Relaxed);
    for job in jobs {
        tasks.spawn(run_job(ctx.clone(), job, Slot(slots.clone())));
    }
}

async fn run_job(ctx: Arc<Ctx>, job: Job, _slot: Slot) {
    let lease_id = job.lease_id.clone().unwrap_or_default();
    let lease = job.lease_length().unwrap_or(Duration::from_secs(30));
    let every = (lease / 3).max(Duration::from_millis(20));
    let mut next_beat = Instant::now() + every;
    // Wait for a free handler, keeping the lease alive.
    let permit = loop {
        tokio::select! {
            biased;
            () = ctx.stop.cancelled() => {
                ctx.release(&job, &lease_id).await;
                return;
            }
            p = ctx.exec.clone().acquire_owned() => match p {
                Ok(p) => break p,
                Err(_) => return,
            },
            () = tokio::time::sleep_until(next_beat) => {
                if let Beat::Lost = ctx.heartbeat(&job, &lease_id).await {
                    return;
                }
                next_beat = Instant::now() + every;
            }
        }
    };
    let handler = ctx
        .handlers
        .get(&job.kind)
        .or(ctx.fallback.as_ref())
        .cloned();
    let Some(handler) = handler else {
        drop(permit);
        let e = JobError::retryable(format!(
            "no handler for kind `{}` on worker for this queue",
            job.kind
        ));
        ctx.fail(&job, &lease_id, &e).await;
        return;
    };
    let run = AssertUnwindSafe(handler(job.clone())).catch_unwind();
    tokio::pin!(run);
    let outcome = loop {
        tokio::select! {
            r = &mut run => break Some(r),
            () = tokio::time::sleep_until(next_beat) => {
                if let Beat::Lost = ctx.heartbeat(&job, &lease_id).await {
                    return;
                }
                next_beat = Instant::now() + every;
            }
            () = ctx.hard_stop.cancelled() => break None,
        }
    };
    drop(permit);
    match outcome {
        None => ctx.release(&job, &lease_id).await,
        Some(Ok(Ok(result))) => {
            let c = Completion {
                id: job.id,
                lease_id,
                result,
            };
            let _ = ctx.done.send(c).await;
        }
        Some(Ok(Err(e))) => ctx.fail(&job, &lease_id, &e).await,
        Some(Err(panic)) => {
            ctx.counters.panicked.fetch_add(1, Ordering::Relaxed);
            let what = panic
                .downcast_ref::<&str>()
                .map(ToString::to_string)
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a non-string payload".into());
            let e = JobError::retryable(format!("handler panicked: {what}"));
            ctx.fail(&job, &lease_id, &e).await;
        }
    }
}

/// Most completion requests in flight.
const COMPLETE_IN_FLIGHT: usize = 2;

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

/// Sends completions in batches until every sender is gone and everything is flushed.
async fn complete_loop(
    client: JobsClient,
    mut rx: mpsc::Receiver<Completion>,
    counters: Arc<Counters>,
    max_batch: usize,
) {
    let in_flight = Arc::new(Semaphore::new(COMPLETE_IN_FLIGHT));
    // Servers without `POST /v1/jobs/complete` get one request per job.
    let one_by_one = Arc::new(AtomicBool::new(false));
    let mut sends = JoinSet::new();
    let mut open = true;
    while open {
        let Some(first) = rx.recv().await else { break };
        let mut batch = vec![first];
        // A batch that is not full goes out only when no request is in flight: completions
        // that arrive while the server commits one batch make the next, so a steady trickle
        // of jobs costs a few statements per commit rather than one per job. A full batch
        // goes out as soon as a request slot is free.
        let permit = loop {
            while batch.len() < max_batch {
                match rx.try_recv() {
                    Ok(c) => batch.push(c),
                    Err(_) => break,
                }
            }
            if batch.len() >= max_batch || !open {
                break in_flight.clone().acquire_owned().await.ok();
            }
            if in_flight.available_permits() == COMPLETE_IN_FLIGHT
                && let Ok(p) = in_flight.clone().try_acquire_owned()
            {
                break Some(p);
            }
            tokio::select! {
                c = rx.recv() => match c {
                    Some(c) => batch.push(c),
                    None => open = false,
                },
                Some(_) = sends.join_next() => {} // a request finished
            }
        };
        let Some(permit) = permit else { break };
        let (client, counters, one_by_one) = (client.clone(), counters.clone(), one_by_one.clone());
        sends.spawn(async move {
            send_completions(&client, batch, &counters, &one_by_one).await;
            drop(permit);
        });
        while sends.try_join_next().is_some() {}
    }
    while sends.join_next().await.is_some() {}
}

async fn send_completions(
    client: &JobsClient,
    batch: Vec<Completion>,
    counters: &Counters,
    one_by_one: &AtomicBool,
) {
    if !one_by_one.load(Ordering::Relaxed) {
        for attempt in 0..5u32 {
            match client.complete_batch(&batch).await {
                Ok(out) => {
                    counters
                        .completed
                        .fetch_add(out.completed, Ordering::Relaxed);
                    for r in &out.rejected {
                        counters.lost.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(job = %r.id, detail = %r.detail, "jobs worker: completion refused");
                    }
                    return;
                }
                Err(ClientError::Problem {
                    status: 404 | 405, ..
                }) => {
                    one_by_one.store(true, Ordering::Relaxed);
                    break;
                }
                Err(e @ ClientError::Problem { .. }) => {
                    tracing::error!(error = %e, jobs = batch.len(), "jobs worker: batch completion refused; the jobs run again when their leases run out");
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, attempt, "jobs worker: batch completion failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                }
            }
        }
        if !one_by_one.load(Ordering::Relaxed) {
            return;
        }
    }
    for c in batch {
        match client.complete(&c.id, &c.lease_id, c.result.as_ref()).await {
            Ok(_) => {
                counters.completed.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                if matches!(e, ClientError::Problem { status: 409, .. }) {
                    counters.lost.fetch_add(1, Ordering::Relaxed);
                }
                tracing::warn!(job = %c.id, error = %e, "jobs worker: completion refused");
            }
        }
    }
}
