//! `mortar bench lock`: acquire + release pairs per second against a running server, and the
//! same workload against peers with the same Rust async client stack, for side-by-side runs:
//! raw Redis (`SET NX PX` + a compare-and-delete script) and etcd's v3 lock API (through its
//! JSON gateway: lease grant, lock, unlock, revoke). `--contended` measures hand-off latency
//! instead: workers queue on one lock, and each grant is timed from the previous release.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mortar_core::client::ClientArgs;
use serde_json::{Value, json};

/// Acquire + release pairs (or, with --contended, hand-off latency); --target drives a peer.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Concurrent clients.
    #[arg(long, short = 'c', default_value_t = 32)]
    pub concurrency: usize,
    /// How long to run, in seconds.
    #[arg(long, short = 'd', default_value_t = 10)]
    pub duration: u64,
    /// What to drive: mortar (the server at --url), redis://… or etcd http://… (a peer).
    #[arg(long, default_value = "mortar")]
    pub target: String,
    /// Contended hand-off: all workers on one lock; report release → next grant latency.
    #[arg(long)]
    pub contended: bool,
}

struct Stats {
    latencies_us: Vec<u64>,
    errors: u64,
}

pub async fn run(args: &ClientArgs, b: &BenchArgs) -> Result<String, String> {
    let duration = Duration::from_secs(b.duration.max(1));
    let deadline = Instant::now() + duration;
    let start = Instant::now();
    let last_release = Arc::new(AtomicU64::new(0));
    let epoch = Instant::now();
    let mut workers = Vec::new();
    for w in 0..b.concurrency.max(1) {
        let target = b.target.clone();
        let base = args.url.trim_end_matches('/').to_owned();
        let token = args.token.clone();
        let contended = b.contended;
        let last_release = last_release.clone();
        workers.push(tokio::spawn(async move {
            let name = if contended {
                "bench-contended".to_owned()
            } else {
                format!("bench-{w}-{}", std::process::id())
            };
            let mut stats = Stats {
                latencies_us: Vec::new(),
                errors: 0,
            };
            let driver = Driver::new(&target, &base, token).await?;
            while Instant::now() < deadline {
                let t0 = Instant::now();
                match driver.pair(&name, contended, &last_release, epoch).await {
                    Ok(Some(handoff_us)) => stats.latencies_us.push(handoff_us),
                    Ok(None) => stats.latencies_us.push(t0.elapsed().as_micros() as u64),
                    Err(_) => stats.errors += 1,
                }
            }
            Ok::<_, String>(stats)
        }));
    }
    let mut lat = Vec::new();
    let mut errors = 0;
    for w in workers {
        let s = w.await.map_err(|e| e.to_string())??;
        lat.extend(s.latencies_us);
        errors += s.errors;
    }
    let elapsed = start.elapsed().as_secs_f64();
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((p / 100.0) * (lat.len().max(1) - 1) as f64) as usize)
            .copied()
            .unwrap_or(0) as f64
            / 1000.0
    };
    let what = if b.contended {
        "hand-off (release → next grant)"
    } else {
        "acquire+release pairs"
    };
    Ok(format!(
        "{} {what}: {:.0} pairs/s over {elapsed:.1} s ({} pairs, {errors} errors, {} workers)\nlatency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  max {:.3}\n",
        b.target,
        lat.len() as f64 / elapsed,
        lat.len(),
        b.concurrency,
        pct(50.0),
        pct(90.0),
        pct(99.0),
        pct(100.0)
    ))
}

enum Driver {
    Mortar {
        http: reqwest::Client,
        base: String,
        token: Option<String>,
    },
    Redis {
        conn: redis::aio::MultiplexedConnection,
        release: redis::Script,
    },
    Etcd {
        http: reqwest::Client,
        base: String,
    },
}

const COMPARE_AND_DELETE: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";

impl Driver {
    async fn new(target: &str, base: &str, token: Option<String>) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(1)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| e.to_string())?;
        if target.starts_with("redis://") {
            let client = redis::Client::open(target).map_err(|e| e.to_string())?;
            let conn = client
                .get_multiplexed_async_connection()
                .await
                .map_err(|e| e.to_string())?;
            Ok(Driver::Redis {
                conn,
                release: redis::Script::new(COMPARE_AND_DELETE),
            })
        } else if target.starts_with("http") {
            Ok(Driver::Etcd {
                http,
                base: target.trim_end_matches('/').to_owned(),
            })
        } else {
            Ok(Driver::Mortar {
                http,
                base: base.to_owned(),
                token,
            })
        }
    }

    /// One acquire + release. In contended mode returns the hand-off latency of this grant.
    async fn pair(
        &self,
        name: &str,
        contended: bool,
        last_release: &AtomicU64,
        epoch: Instant,
    ) -> Result<Option<u64>, String> {
        let e = |e: &dyn std::fmt::Display| e.to_string();
        let handoff = |granted: Instant| {
            let released = last_release.load(Ordering::SeqCst);
            let now = granted.duration_since(epoch).as_micros() as u64;
            (contended && released > 0).then(|| now.saturating_sub(released))
        };
        match self {
            Driver::Mortar { http, base, token } => {
                let auth = |r: reqwest::RequestBuilder| match token {
                    Some(t) => r.bearer_auth(t),
                    None => r,
                };
                let wait = if contended { 30_000 } else { 0 };
                let r = auth(http.post(format!("{base}/v1/locks/{name}/acquire")))
                    .json(&json!({"ttl_ms": 10_000, "owner": "bench", "wait_ms": wait}))
                    .send()
                    .await
                    .map_err(|x| e(&x))?;
                if !r.status().is_success() {
                    return Err(format!("acquire: {}", r.status()));
                }
                let granted = Instant::now();
                let v: Value = r.json().await.map_err(|x| e(&x))?;
                let h = handoff(granted);
                last_release.store(
                    Instant::now().duration_since(epoch).as_micros() as u64,
                    Ordering::SeqCst,
                );
                let r = auth(http.post(format!("{base}/v1/locks/{name}/release")))
                    .json(&json!({"lease_id": v["lease_id"]}))
                    .send()
                    .await
                    .map_err(|x| e(&x))?;
                if !r.status().is_success() {
                    return Err(format!("release: {}", r.status()));
                }
                Ok(h)
            }
            Driver::Redis { conn, release } => {
                let mut c = conn.clone();
                let id = mortar_core::ids::new_id();
                let ok: Option<String> = redis::cmd("SET")
                    .arg(name)
                    .arg(&id)
                    .arg("NX")
                    .arg("PX")
                    .arg(10_000)
                    .query_async(&mut c)
                    .await
                    .map_err(|x| e(&x))?;
                if ok.is_none() {
                    return Err("held".into());
                }
                let _: i64 = release
                    .key(name)
                    .arg(&id)
                    .invoke_async(&mut c)
                    .await
                    .map_err(|x| e(&x))?;
                Ok(None)
            }
            Driver::Etcd { http, base } => {
                // Every gateway answer is checked: an error must not count as a pair.
                let call = |path: &'static str, body: Value| async move {
                    let r = http
                        .post(format!("{base}{path}"))
                        .json(&body)
                        .send()
                        .await
                        .map_err(|x| x.to_string())?;
                    let status = r.status();
                    let v: Value = r.json().await.map_err(|x| x.to_string())?;
                    if !status.is_success() || v.get("error").is_some() || v.get("code").is_some() {
                        return Err(format!("etcd {path}: {status} {v}"));
                    }
                    Ok::<_, String>(v)
                };
                let lease = call("/v3/lease/grant", json!({"TTL": 10})).await?["ID"].clone();
                let key = mortar_core::client::base64(name.as_bytes());
                let v = call("/v3/lock/lock", json!({"name": key, "lease": lease})).await?;
                if v["key"].is_null() {
                    return Err(format!("etcd lock: no key in {v}"));
                }
                let granted = Instant::now();
                let h = handoff(granted);
                last_release.store(
                    Instant::now().duration_since(epoch).as_micros() as u64,
                    Ordering::SeqCst,
                );
                call("/v3/lock/unlock", json!({"key": v["key"]})).await?;
                call("/v3/lease/revoke", json!({"ID": lease})).await?;
                Ok(h)
            }
        }
    }
}
