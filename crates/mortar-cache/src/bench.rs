//! `mortar bench cache`: GET/SET load on the RESP port with a Redis client (the same kind of
//! client applications use), reporting throughput and latency percentiles.

use std::time::{Duration, Instant};

/// GET/SET load on the cache's RESP port (throughput, latency percentiles).
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// RESP address of the cache.
    #[arg(long, default_value = "redis://127.0.0.1:6380")]
    pub resp: String,
    /// Concurrent connections.
    #[arg(long, short = 'c', default_value_t = 50)]
    pub concurrency: usize,
    /// How long to run, in seconds.
    #[arg(long, short = 'd', default_value_t = 10)]
    pub duration: u64,
    /// Distinct keys.
    #[arg(long, default_value_t = 100_000)]
    pub keys: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    pub value_size: usize,
    /// Percentage of SETs (the rest are GETs).
    #[arg(long, default_value_t = 10)]
    pub set_percent: u64,
}

pub async fn run(b: &BenchArgs, token: Option<&str>) -> Result<String, String> {
    let client = redis::Client::open(b.resp.as_str()).map_err(|e| e.to_string())?;
    let value = vec![b'x'; b.value_size];
    let deadline = Instant::now() + Duration::from_secs(b.duration.max(1));
    let start = Instant::now();
    let mut workers = Vec::new();
    for w in 0..b.concurrency.max(1) {
        let client = client.clone();
        let value = value.clone();
        let (keys, set_percent) = (b.keys.max(1), b.set_percent);
        let token = token.map(str::to_owned);
        workers.push(tokio::spawn(async move {
            let mut conn = client
                .get_multiplexed_async_connection()
                .await
                .map_err(|e| e.to_string())?;
            if let Some(t) = token {
                redis::cmd("AUTH")
                    .arg(t)
                    .query_async::<()>(&mut conn)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            let mut rng = fastrand::Rng::with_seed(w as u64);
            let (mut lat, mut errors) = (Vec::new(), 0u64);
            while Instant::now() < deadline {
                let key = format!("bench:{}", rng.u64(0..keys));
                let t0 = Instant::now();
                let ok = if rng.u64(0..100) < set_percent {
                    redis::cmd("SET")
                        .arg(&key)
                        .arg(&value[..])
                        .query_async::<()>(&mut conn)
                        .await
                        .is_ok()
                } else {
                    redis::cmd("GET")
                        .arg(&key)
                        .query_async::<Option<Vec<u8>>>(&mut conn)
                        .await
                        .is_ok()
                };
                lat.push(t0.elapsed().as_micros() as u64);
                errors += u64::from(!ok);
            }
            Ok::<_, String>((lat, errors))
        }));
    }
    let (mut lat, mut errors) = (Vec::new(), 0);
    for w in workers {
        let (l, e) = w.await.map_err(|e| e.to_string())??;
        lat.extend(l);
        errors += e;
    }
    let secs = start.elapsed().as_secs_f64();
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((p / 100.0) * (lat.len().max(1) - 1) as f64) as usize)
            .copied()
            .unwrap_or(0) as f64
            / 1000.0
    };
    Ok(format!(
        "cache {} ({}% SET, {} keys, {} B values, {} connections): {:.0} ops/s over {secs:.1} s ({} ops, {errors} errors)\n\
         latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  max {:.3}\n",
        b.resp,
        b.set_percent,
        b.keys,
        b.value_size,
        b.concurrency,
        lat.len() as f64 / secs,
        lat.len(),
        pct(50.0),
        pct(90.0),
        pct(99.0),
        pct(100.0)
    ))
}
