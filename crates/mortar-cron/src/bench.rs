//! `mortar bench cron`: creates N schedules on a running server, lets them fire for a number of
//! cycles, then reads every run's fire lag (fire time → job enqueued) from the history API
//! and the server's CPU time between fires from `/metrics` (`process_cpu_seconds_total`).
//! The schedules are deleted afterwards (their jobs stay, in queue `bench-cron`).

use std::time::Duration;

use mortar_core::client::{Client, ClientArgs, ClientError, encode_segment};
use serde_json::{Value, json};

/// N schedules firing together: fire lag percentiles and CPU between fires.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Schedules to create.
    #[arg(long, short = 'n', default_value_t = 1000)]
    pub schedules: usize,
    /// Their expression (every one the same, so they all fire at once).
    #[arg(long, default_value = "* * * * *")]
    pub expr: String,
    /// How many fire times to wait for.
    #[arg(long, default_value_t = 1)]
    pub cycles: u32,
    /// Concurrent HTTP requests while creating and reading back.
    #[arg(long, short = 'c', default_value_t = 16)]
    pub concurrency: usize,
}

fn now_ms() -> u64 {
    mortar_core::clock::unix_time().as_millis() as u64
}

async fn cpu_seconds(args: &ClientArgs) -> Option<f64> {
    let mut req = reqwest::Client::new().get(format!("{}/metrics", args.url.trim_end_matches('/')));
    if let Some(t) = &args.token {
        req = req.bearer_auth(t);
    }
    let text = req.send().await.ok()?.text().await.ok()?;
    text.lines()
        .find(|l| l.starts_with("process_cpu_seconds_total"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
}

/// Runs `f` over `items` with `concurrency` requests in flight.
async fn each<T, F, Fut, R>(items: Vec<T>, concurrency: usize, f: F) -> Vec<R>
where
    T: Send + 'static,
    R: Send + 'static,
    F: Fn(T) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = R> + Send,
{
    let queue = std::sync::Arc::new(std::sync::Mutex::new(items.into_iter().enumerate()));
    let mut workers = Vec::new();
    for _ in 0..concurrency.max(1) {
        let queue = queue.clone();
        let f = f.clone();
        workers.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let next = queue
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .next();
                let Some((i, item)) = next else { break };
                out.push((i, f(item).await));
            }
            out
        }));
    }
    let mut all = Vec::new();
    for w in workers {
        if let Ok(part) = w.await {
            all.extend(part);
        }
    }
    all.sort_by_key(|(i, _)| *i);
    all.into_iter().map(|(_, r)| r).collect()
}

fn pct(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

pub async fn run(args: &ClientArgs, b: &BenchArgs) -> Result<String, ClientError> {
    let client = Client::new(args);
    let tag = format!("{:x}", now_ms());
    // The first fire must come after every schedule exists: preview the expression.
    let names: Vec<String> = (0..b.schedules)
        .map(|i| format!("bench-{tag}-{i:05}"))
        .collect();
    let created_at = now_ms();
    let made = each(names.clone(), b.concurrency, {
        let client = client.clone();
        let expr = b.expr.clone();
        move |name: String| {
            let client = client.clone();
            let expr = expr.clone();
            async move {
                client
                    .post(
                        "/v1/cron/schedules",
                        &json!({"name": name, "expr": expr, "misfire": "fire_all",
                            "job": {"queue": "bench-cron", "kind": "bench"}}),
                    )
                    .await
            }
        }
    })
    .await;
    let mut ids = Vec::new();
    for m in made {
        ids.push(m?["id"].as_str().unwrap_or_default().to_owned());
    }
    let create_s = (now_ms() - created_at) as f64 / 1000.0;
    // Fire times from now on, for the schedules' common expression.
    let preview = client
        .get(&format!(
            "/v1/cron/preview?expr={}&count={}",
            encode_segment(&b.expr),
            b.cycles + 1
        ))
        .await?;
    let times: Vec<u64> = preview["fire_times"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| {
                    chrono::DateTime::parse_from_rfc3339(t.as_str()?)
                        .ok()
                        .map(|d| d.timestamp_millis() as u64)
                })
                .collect()
        })
        .unwrap_or_default();
    let (Some(&first), Some(&last)) = (times.first(), times.get(b.cycles as usize - 1)) else {
        return Err(ClientError::Transport(
            "the expression has no fire times".into(),
        ));
    };
    // CPU between fires: from 20% to 80% of the gap after the first fire.
    let gap = times.get(1).map_or(60_000, |n| n - first);
    let wait = |until: u64| async move {
        let now = now_ms();
        if until > now {
            tokio::time::sleep(Duration::from_millis(until - now)).await;
        }
    };
    let mut idle_cpu = None;
    if b.cycles > 1 || times.len() > 1 {
        wait(first + gap / 5).await;
        let c0 = cpu_seconds(args).await;
        let t0 = now_ms();
        wait(first + gap * 4 / 5).await;
        let c1 = cpu_seconds(args).await;
        if let (Some(c0), Some(c1)) = (c0, c1) {
            idle_cpu = Some((c1 - c0) / ((now_ms() - t0) as f64 / 1000.0));
        }
    }
    wait(last + 3_000).await;
    let lags = each(ids.clone(), b.concurrency, {
        let client = client.clone();
        let limit = b.cycles + 5;
        move |id: String| {
            let client = client.clone();
            async move {
                let v = client
                    .get(&format!("/v1/cron/schedules/{id}/runs?limit={limit}"))
                    .await
                    .unwrap_or(Value::Null);
                v["items"]
                    .as_array()
                    .map(|items| {
                        items
                            .iter()
                            .filter(|r| r["kind"] == "scheduled")
                            .filter_map(|r| r["lag_ms"].as_i64())
                            .collect::<Vec<_>>()
                    })
                    .unwrap_or_default()
            }
        }
    })
    .await;
    let mut all: Vec<i64> = lags.into_iter().flatten().collect();
    all.sort_unstable();
    let expected = b.schedules * b.cycles as usize;
    let within_1s = all.iter().filter(|l| **l <= 1000).count();
    let _ = each(ids, b.concurrency, {
        let client = client.clone();
        move |id: String| {
            let client = client.clone();
            async move { client.delete(&format!("/v1/cron/schedules/{id}")).await }
        }
    })
    .await;
    let mut out = format!(
        "cron: {} schedules `{}` × {} fire(s): created in {create_s:.1} s\n\
         fires enqueued: {} of {expected} (at least; runs read back)\n\
         fire lag (fire time → job enqueued): p50 {} ms, p99 {} ms, max {} ms; within 1 s: {within_1s}\n",
        b.schedules,
        b.expr,
        b.cycles,
        all.len(),
        pct(&all, 0.50),
        pct(&all, 0.99),
        all.last().copied().unwrap_or(0),
    );
    if let Some(cpu) = idle_cpu {
        out.push_str(&format!(
            "server CPU between fires: {:.1}% of one core\n",
            cpu * 100.0
        ));
    }
    Ok(out)
}
