//! `mortar bench config`: single-key puts per second at a concurrency, and put → watcher
//! delivery latency — against a running mortar (`--url`) or, with `--etcd http://…`, against
//! etcd's v3 JSON gateway with the same Rust async client stack, for side-by-side runs.
//!
//! * puts: each worker writes its own key (`bench/k<w>` on etcd, `bench/base/k<w>` on mortar)
//!   back to back, its counter as the value.
//! * `--watch`: `--watchers` streams (mortar: SSE `…/watch`; etcd: `/v3/watch`) follow one key
//!   while one writer puts `--count` values, each its send time in µs; every watcher records
//!   receive time − send time for every value.

use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use mortar_core::client::{BenchReport, ClientArgs, bench};
use serde_json::{Value, json};

/// Puts per second, or with --watch put → watcher latency; --etcd drives etcd instead.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Concurrent writers.
    #[arg(long, short = 'c', default_value_t = 32)]
    pub concurrency: usize,
    /// Seconds of puts.
    #[arg(long, short = 'd', default_value_t = 10)]
    pub duration: u64,
    /// Drive etcd's JSON gateway at this URL (http://127.0.0.1:2379) instead of mortar.
    #[arg(long)]
    pub etcd: Option<String>,
    /// Measure put → watcher delivery instead of put throughput.
    #[arg(long)]
    pub watch: bool,
    /// --watch: concurrent watchers of the key.
    #[arg(long, default_value_t = 1)]
    pub watchers: usize,
    /// --watch: values written (one at a time, `--interval-ms` apart).
    #[arg(long, default_value_t = 1000)]
    pub count: u64,
    /// With --watch: milliseconds between puts.
    #[arg(long, default_value_t = 2)]
    pub interval_ms: u64,
    /// --watch: the server's pid (same machine): its RSS is reported before the watchers
    /// connect and once they are all connected and idle.
    #[arg(long)]
    pub server_pid: Option<u32>,
}

/// A process's resident set in KiB (Linux `/proc`).
fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn b64(s: &str) -> String {
    STANDARD.encode(s)
}

fn now_us() -> u64 {
    mortar_core::clock::unix_time().as_micros() as u64
}

pub async fn run(args: &ClientArgs, b: &BenchArgs) -> Result<String, String> {
    if b.watch {
        return watch(args, b).await;
    }
    let duration = Duration::from_secs(b.duration.max(1));
    let report: BenchReport = match &b.etcd {
        Some(etcd) => {
            let args = ClientArgs {
                url: etcd.clone(),
                token: None,
                json: false,
            };
            bench(
                &args,
                b.concurrency,
                duration,
                |http, base, w, n| {
                    http.post(format!("{base}/v3/kv/put")).json(
                        &json!({"key": b64(&format!("bench/k{w}")), "value": b64(&n.to_string())}),
                    )
                },
                |s| s == 200,
            )
            .await
        }
        None => {
            bench(
                args,
                b.concurrency,
                duration,
                |http, base, w, n| {
                    http.put(format!("{base}/v1/config/bench/base/k{w}"))
                        .header("content-type", "application/json")
                        .body(n.to_string())
                },
                |s| s == 200,
            )
            .await
        }
    };
    let what = if b.etcd.is_some() {
        "etcd put"
    } else {
        "mortar config put"
    };
    Ok(report.render(what))
}

/// Put → delivery latency over `watchers` streams.
async fn watch(args: &ClientArgs, b: &BenchArgs) -> Result<String, String> {
    let http = reqwest::Client::builder()
        .tcp_nodelay(true)
        .build()
        .map_err(|e| e.to_string())?;
    let base = args.url.trim_end_matches('/').to_owned();
    let etcd = b
        .etcd
        .as_deref()
        .map(|e| e.trim_end_matches('/').to_owned());
    // The key exists before anyone watches (mortar: the namespace and environment must).
    put(&http, &base, etcd.as_deref(), args.token.as_deref(), 0).await?;
    let rss_before = b.server_pid.and_then(rss_kb);
    let mut handles = Vec::new();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(b.watchers.max(1));
    for _ in 0..b.watchers.max(1) {
        let (http, base, etcd, token, ready) = (
            http.clone(),
            base.clone(),
            etcd.clone(),
            args.token.clone(),
            ready_tx.clone(),
        );
        let count = b.count;
        handles.push(tokio::spawn(async move {
            let mut req = match &etcd {
                Some(e) => http
                    .post(format!("{e}/v3/watch"))
                    .json(&json!({"create_request": {"key": b64("bench/w")}})),
                None => http.get(format!("{base}/v1/config/bench/base/watch?key=w")),
            };
            if let (Some(t), None) = (&token, &etcd) {
                req = req.bearer_auth(t);
            }
            let mut res = req.send().await.map_err(|e| e.to_string())?;
            if !res.status().is_success() {
                return Err(format!("watch answered {}", res.status()));
            }
            let _ = ready.send(()).await;
            let mut lat = Vec::new();
            let mut buf = String::new();
            let deadline = Instant::now() + Duration::from_secs(60 + count / 100);
            while (lat.len() as u64) < count && Instant::now() < deadline {
                let Ok(Ok(Some(chunk))) =
                    tokio::time::timeout(Duration::from_secs(10), res.chunk()).await
                else {
                    break;
                };
                let at = now_us();
                buf.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(i) = buf.find('\n') {
                    let line: String = buf.drain(..=i).collect();
                    for sent in sent_times(&line, etcd.is_some()) {
                        lat.push(at.saturating_sub(sent));
                    }
                }
            }
            Ok::<_, String>(lat)
        }));
    }
    drop(ready_tx);
    // Every watcher connected (each sends once and keeps its sender until it ends).
    for _ in 0..b.watchers.max(1) {
        if ready_rx.recv().await.is_none() {
            break;
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await; // streams established
    let idle = match (rss_before, b.server_pid.and_then(rss_kb)) {
        (Some(before), Some(idle)) => format!(
            "server RSS: {before} KB before, {idle} KB with {} idle watchers: {:.1} KB per watcher\n",
            b.watchers.max(1),
            (idle.saturating_sub(before)) as f64 / b.watchers.max(1) as f64
        ),
        _ => String::new(),
    };
    let start = Instant::now();
    for _ in 0..b.count {
        put(
            &http,
            &base,
            etcd.as_deref(),
            args.token.as_deref(),
            now_us(),
        )
        .await?;
        tokio::time::sleep(Duration::from_millis(b.interval_ms)).await;
    }
    let mut lat = Vec::new();
    for h in handles {
        lat.extend(h.await.map_err(|e| e.to_string())??);
    }
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((p / 100.0) * (lat.len().max(1) - 1) as f64) as usize)
            .map_or(0.0, |us| *us as f64 / 1000.0)
    };
    let expected = b.count * b.watchers.max(1) as u64;
    Ok(format!(
        "{idle}{} watch delivery: {} of {expected} deliveries to {} watchers over {:.1} s\n\
         latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  max {:.3}\n",
        if etcd.is_some() {
            "etcd"
        } else {
            "mortar config"
        },
        lat.len(),
        b.watchers.max(1),
        start.elapsed().as_secs_f64(),
        pct(50.0),
        pct(90.0),
        pct(99.0),
        pct(100.0),
    ))
}

async fn put(
    http: &reqwest::Client,
    base: &str,
    etcd: Option<&str>,
    token: Option<&str>,
    value: u64,
) -> Result<(), String> {
    let req = match etcd {
        Some(e) => http
            .post(format!("{e}/v3/kv/put"))
            .json(&json!({"key": b64("bench/w"), "value": b64(&value.to_string())})),
        None => {
            let r = http
                .put(format!("{base}/v1/config/bench/base/w"))
                .header("content-type", "application/json")
                .body(value.to_string());
            match token {
                Some(t) => r.bearer_auth(t),
                None => r,
            }
        }
    };
    let res = req.send().await.map_err(|e| e.to_string())?;
    if res.status().is_success() {
        Ok(())
    } else {
        Err(format!("put answered {}", res.status()))
    }
}

/// The send times carried by one line of a watch stream (0 = the seed value, skipped).
fn sent_times(line: &str, etcd: bool) -> Vec<u64> {
    let json = if etcd {
        line
    } else if let Some(d) = line.strip_prefix("data:") {
        d
    } else {
        return Vec::new();
    };
    let Ok(v) = serde_json::from_str::<Value>(json.trim()) else {
        return Vec::new();
    };
    let values: Vec<u64> = if etcd {
        v["result"]["events"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["kv"]["value"].as_str())
            .filter_map(|s| STANDARD.decode(s).ok())
            .filter_map(|b| String::from_utf8(b).ok()?.parse().ok())
            .collect()
    } else {
        v["changes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["value"].as_u64())
            .collect()
    };
    values.into_iter().filter(|t| *t > 0).collect()
}
