//! `mortar bench jobs`: end-to-end throughput of no-op jobs (batch enqueue while Rust workers
//! drain the queue) and, with `--rate`, enqueue → start latency at a fixed arrival rate.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mortar_core::client::ClientArgs;
use serde_json::{Value, json};

use crate::client::JobsClient;
use crate::worker::Worker;

/// No-op jobs end to end (batch enqueue + a Rust worker), or with --rate enqueue → start latency.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Handlers running at once in the (one) worker.
    #[arg(long, short = 'c', default_value_t = 64)]
    pub concurrency: usize,
    /// Throughput mode: jobs to enqueue and work.
    #[arg(long, short = 'n', default_value_t = 100_000)]
    pub jobs: u64,
    /// Throughput mode: jobs per `POST /v1/jobs/batch`.
    #[arg(long, default_value_t = 1000)]
    pub batch: u64,
    /// Jobs the worker leases ahead of its free handlers (default: the concurrency).
    #[arg(long)]
    pub prefetch: Option<usize>,
    /// Most completions per `POST /v1/jobs/complete`.
    #[arg(long, default_value_t = 64)]
    pub complete_batch: usize,
    /// Latency mode: enqueue this many jobs per second (one `POST /v1/jobs` each) and report
    /// enqueue → handler start latency.
    #[arg(long)]
    pub rate: Option<u64>,
    /// Latency mode: seconds to enqueue for.
    #[arg(long, short = 'd', default_value_t = 10)]
    pub duration: u64,
    /// The queue (default: a fresh `bench-<pid>-<ms>`, so runs do not see each other's jobs).
    #[arg(long)]
    pub queue: Option<String>,
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct BenchOutcome {
    pub mode: &'static str,
    pub jobs: u64,
    pub seconds: f64,
    pub enqueue_seconds: f64,
    pub errors: u64,
    /// Enqueue → start, milliseconds, sorted (latency mode).
    pub latencies_ms: Vec<f64>,
}

impl BenchOutcome {
    fn pct(&self, p: f64) -> f64 {
        let n = self.latencies_ms.len();
        if n == 0 {
            return 0.0;
        }
        self.latencies_ms[(((p / 100.0) * (n - 1) as f64).round() as usize).min(n - 1)]
    }

    pub fn to_json(&self) -> Value {
        json!({
            "mode": self.mode, "jobs": self.jobs, "seconds": self.seconds,
            "jobs_per_s": self.jobs as f64 / self.seconds.max(1e-9),
            "enqueue_per_s": self.jobs as f64 / self.enqueue_seconds.max(1e-9),
            "errors": self.errors,
            "p50_ms": self.pct(50.0), "p90_ms": self.pct(90.0), "p99_ms": self.pct(99.0),
            "max_ms": self.pct(100.0),
        })
    }

    pub fn render(&self, concurrency: usize) -> String {
        let v = self.to_json();
        let mut out = format!(
            "{}: {} jobs in {:.2} s: {:.0} jobs/s end to end (enqueued at {:.0} jobs/s), {} errors, worker concurrency {concurrency}\n",
            self.mode,
            self.jobs,
            self.seconds,
            v["jobs_per_s"].as_f64().unwrap_or(0.0),
            v["enqueue_per_s"].as_f64().unwrap_or(0.0),
            self.errors
        );
        if !self.latencies_ms.is_empty() {
            out.push_str(&format!(
                "enqueue → start latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  max {:.3}\n",
                self.pct(50.0),
                self.pct(90.0),
                self.pct(99.0),
                self.pct(100.0)
            ));
        }
        out
    }
}

pub async fn run(args: &ClientArgs, b: &BenchArgs) -> Result<String, String> {
    let outcome = measure(args, b).await?;
    Ok(if args.json {
        format!("{}\n", outcome.to_json())
    } else {
        outcome.render(b.concurrency)
    })
}

fn now_us() -> u64 {
    mortar_core::clock::unix_time().as_micros() as u64
}

pub async fn measure(args: &ClientArgs, b: &BenchArgs) -> Result<BenchOutcome, String> {
    let queue = b
        .queue
        .clone()
        .unwrap_or_else(|| format!("bench-{}-{}", std::process::id(), crate::client::now_ms()));
    let client = JobsClient::new(args);
    let latencies = Arc::new(Mutex::new(Vec::<f64>::new()));
    let recorder = latencies.clone();
    let record = b.rate.is_some();
    let worker = Worker::new(client.clone())
        .queue(queue.clone())
        .concurrency(b.concurrency.max(1))
        .prefetch(b.prefetch.unwrap_or(b.concurrency))
        .complete_batch(b.complete_batch)
        .poll_wait(Duration::from_millis(500))
        .shutdown_timeout(Duration::from_secs(5))
        .name(format!("bench-{}", std::process::id()))
        .fallback(move |job| {
            let recorder = recorder.clone();
            async move {
                if record {
                    let t = job.payload["t"].as_u64().unwrap_or(0);
                    let ms = now_us().saturating_sub(t) as f64 / 1000.0;
                    if let Ok(mut l) = recorder.lock() {
                        l.push(ms);
                    }
                }
                Ok(None)
            }
        });
    let counters = worker.counters();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let working = tokio::spawn(worker.run_until(async {
        let _ = stop_rx.await;
    }));
    let start = Instant::now();
    let (sent, errors, enqueue_seconds) = match b.rate {
        None => enqueue_batches(&client, &queue, b.jobs, b.batch.clamp(1, 10_000)).await,
        Some(rate) => enqueue_at_rate(&client, &queue, rate.max(1), b.duration.max(1)).await,
    };
    // Wait until every enqueued job is done; give up after 30 s without progress.
    let mut last = (0, Instant::now());
    loop {
        let done = counters.snapshot().completed;
        if done >= sent {
            break;
        }
        if done != last.0 {
            last = (done, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(30) {
            let _ = stop_tx.send(());
            return Err(format!(
                "stalled: {done} of {sent} jobs completed, none in the last 30 s"
            ));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let seconds = start.elapsed().as_secs_f64();
    let _ = stop_tx.send(());
    let stats = working
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let mut latencies_ms = std::mem::take(&mut *latencies.lock().map_err(|e| e.to_string())?);
    latencies_ms.sort_by(f64::total_cmp);
    Ok(BenchOutcome {
        mode: if b.rate.is_some() {
            "latency"
        } else {
            "throughput"
        },
        jobs: sent,
        seconds,
        enqueue_seconds,
        errors: errors + stats.failed + stats.lost,
        latencies_ms,
    })
}

/// Enqueues `n` no-op jobs in batches, two requests in flight. Returns (enqueued, errors,
/// seconds).
async fn enqueue_batches(client: &JobsClient, queue: &str, n: u64, batch: u64) -> (u64, u64, f64) {
    let start = Instant::now();
    let job = json!({ "queue": queue, "kind": "noop", "payload": {} });
    let batches: Vec<u64> = (0..n.div_ceil(batch))
        .map(|i| batch.min(n - i * batch))
        .collect();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let batches = Arc::new(batches);
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let (client, next, batches, job) =
            (client.clone(), next.clone(), batches.clone(), job.clone());
        tasks.push(tokio::spawn(async move {
            let (mut sent, mut errors) = (0u64, 0u64);
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(&size) = batches.get(i) else { break };
                let jobs = vec![job.clone(); size as usize];
                match client.enqueue_batch_minimal(&jobs).await {
                    Ok(_) => sent += size,
                    Err(e) => {
                        errors += 1;
                        eprintln!("mortar: enqueue batch failed: {e}");
                    }
                }
            }
            (sent, errors)
        }));
    }
    let (mut sent, mut errors) = (0, 0);
    for t in tasks {
        if let Ok((s, e)) = t.await {
            sent += s;
            errors += e;
        }
    }
    (sent, errors, start.elapsed().as_secs_f64())
}

/// Enqueues one job every `1/rate` s for `secs` s, each stamped with its send time.
async fn enqueue_at_rate(
    client: &JobsClient,
    queue: &str,
    rate: u64,
    secs: u64,
) -> (u64, u64, f64) {
    let start = Instant::now();
    let total = rate * secs;
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate as u32);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..total {
        tick.tick().await;
        let client = client.clone();
        let job = json!({ "queue": queue, "kind": "noop", "payload": { "t": now_us() } });
        tasks.spawn(async move { client.enqueue(&job).await.is_ok() });
    }
    let (mut sent, mut errors) = (0, 0);
    while let Some(ok) = tasks.join_next().await {
        if ok.unwrap_or(false) {
            sent += 1;
        } else {
            errors += 1;
        }
    }
    (sent, errors, start.elapsed().as_secs_f64())
}
