//! The HTTP client behind every `mortar <block> <verb>` command, and its output helpers.
//!
//! Commands print a human table by default and the raw JSON with `--json`. On an error
//! response the problem's `detail` goes to stderr and the process exits non-zero.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::Value;

/// Flags shared by every client command.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// Server to talk to.
    #[arg(
        long,
        env = "MORTAR_URL",
        default_value = "http://127.0.0.1:8700",
        global = true
    )]
    pub url: String,
    /// Bearer token (admin token or API key).
    #[arg(long, env = "MORTAR_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// Print the JSON response instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

/// What went wrong talking to the server.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with a problem.
    #[error("{detail}")]
    Problem {
        status: u16,
        title: String,
        detail: String,
        body: Value,
    },
    /// The server could not be reached or answered garbage.
    #[error("{0}")]
    Transport(String),
}

impl ClientError {
    /// The process exit code for this error: 1 for problems, 2 when the server is unreachable.
    pub fn exit_code(&self) -> i32 {
        match self {
            ClientError::Problem { .. } => 1,
            ClientError::Transport(_) => 2,
        }
    }
}

/// A client of one Mortar server.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    pub fn new(args: &ClientArgs) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("mortar-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default();
        Self {
            http,
            base: args.url.trim_end_matches('/').to_owned(),
            token: args.token.clone(),
        }
    }

    pub async fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.send(self.http.get(self.url(path))).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        self.send(self.http.post(self.url(path)).json(body)).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        self.send(self.http.put(self.url(path)).json(body)).await
    }

    /// [`Client::put`] with extra request headers (e.g. `If-Match`).
    pub async fn put_with(
        &self,
        path: &str,
        body: &Value,
        headers: &[(&str, &str)],
    ) -> Result<Value, ClientError> {
        let mut req = self.http.put(self.url(path)).json(body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.send(req).await
    }

    pub async fn delete(&self, path: &str) -> Result<Value, ClientError> {
        self.send(self.http.delete(self.url(path))).await
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// POSTs `body` and parses a success straight into `T` (no intermediate `Value`: hot paths
    /// such as a worker's leases and completions).
    pub async fn post_as<B, T>(&self, path: &str, body: &B) -> Result<T, ClientError>
    where
        B: serde::Serialize + ?Sized,
        T: serde::de::DeserializeOwned,
    {
        self.post_as_with(path, body, &[]).await
    }

    /// [`Client::post_as`] with extra request headers (e.g. `Prefer: return=minimal`).
    pub async fn post_as_with<B, T>(
        &self,
        path: &str,
        body: &B,
        headers: &[(&str, &str)],
    ) -> Result<T, ClientError>
    where
        B: serde::Serialize + ?Sized,
        T: serde::de::DeserializeOwned,
    {
        let mut req = self.http.post(self.url(path)).json(body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.send(req).await
    }

    async fn send<T: serde::de::DeserializeOwned>(
        &self,
        mut req: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let res = req.send().await.map_err(|e| {
            ClientError::Transport(format!(
                "cannot reach the mortar server at {}: {e}",
                self.base
            ))
        })?;
        let status = res.status();
        let bytes = res
            .bytes()
            .await
            .map_err(|e| ClientError::Transport(format!("reading the response failed: {e}")))?;
        let not_json = |e: serde_json::Error| {
            ClientError::Transport(format!(
                "the server at {} answered {status} with a body that is not the JSON expected: {e}",
                self.base
            ))
        };
        if status.is_success() {
            return if bytes.is_empty() {
                serde_json::from_value(Value::Null)
            } else {
                serde_json::from_slice(&bytes)
            }
            .map_err(not_json);
        }
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).map_err(not_json)?
        };
        let text = |k: &str| body.get(k).and_then(Value::as_str).map(ToOwned::to_owned);
        Err(ClientError::Problem {
            status: status.as_u16(),
            title: text("title").unwrap_or_else(|| status.to_string()),
            detail: text("detail").unwrap_or_else(|| status.to_string()),
            body,
        })
    }
}

/// Renders rows as an aligned text table with a header line.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: &mut dyn Iterator<Item = &str>| {
        let parts: Vec<String> = cells
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", parts.join("  ").trim_end());
    };
    line(&mut out, &mut headers.iter().copied());
    for row in rows {
        line(&mut out, &mut row.iter().map(String::as_str));
    }
    out
}

/// A JSON value as a table cell (strings unquoted, null as `-`).
pub fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(cell).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// Parses `10s`, `500ms`, `2m`, `1h` or plain milliseconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, ""), |i| s.split_at(i));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (e.g. 10s, 500ms, 2m)"))?;
    let ms = match unit {
        "" | "ms" => Some(n),
        "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        u if u.starts_with(['.', ',']) => {
            return Err(format!(
                "`{s}`: whole numbers only; use a smaller unit (e.g. 1500ms for 1.5s)"
            ));
        }
        _ => return Err(format!("unknown unit in `{s}`: use ms, s, m or h")),
    };
    ms.map(Duration::from_millis)
        .ok_or_else(|| format!("`{s}` is too long a duration"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1500").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5d").is_err());
        assert!(
            parse_duration("1.5s")
                .unwrap_err()
                .contains("whole numbers only")
        );
        assert!(parse_duration("99999999999999999h").is_err());
    }

    #[test]
    fn tables_align() {
        let t = table(
            &["ID", "NAME"],
            &[
                vec!["1".into(), "alpha".into()],
                vec!["22".into(), "b".into()],
            ],
        );
        assert_eq!(t, "ID  NAME\n1   alpha\n22  b\n");
    }

    #[test]
    fn cells() {
        assert_eq!(cell(&Value::Null), "-");
        assert_eq!(cell(&serde_json::json!(["a", "b"])), "a,b");
        assert_eq!(cell(&serde_json::json!(3)), "3");
    }

    #[tokio::test]
    async fn unreachable_server_is_a_transport_error() {
        let args = ClientArgs {
            url: "http://127.0.0.1:1".into(),
            token: None,
            json: false,
        };
        let err = Client::new(&args).get("/v1/status").await.unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("cannot reach"), "{err}");
    }
}

/// What a `mortar bench …` run measured.
#[derive(Debug, Clone)]
pub struct BenchReport {
    pub requests: u64,
    pub errors: u64,
    pub elapsed: Duration,
    /// Latencies in microseconds, sorted.
    latencies_us: Vec<u64>,
}

impl BenchReport {
    pub fn per_second(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The `p`-th percentile latency in milliseconds (`p` in 0..=100).
    pub fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        let i = ((p / 100.0) * (self.latencies_us.len() - 1) as f64).round() as usize;
        self.latencies_us[i.min(self.latencies_us.len() - 1)] as f64 / 1000.0
    }

    /// The human summary (like `redis-benchmark -q` plus percentiles).
    pub fn render(&self, what: &str) -> String {
        format!(
            "{what}: {:.0} requests/s over {:.1} s ({} requests, {} errors)\n\
             latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}\n",
            self.per_second(),
            self.elapsed.as_secs_f64(),
            self.requests,
            self.errors,
            self.percentile_ms(50.0),
            self.percentile_ms(90.0),
            self.percentile_ms(99.0),
            self.percentile_ms(99.9),
            self.percentile_ms(100.0),
        )
    }
}

/// Drives `concurrency` keep-alive workers for `duration`, each sending `request(worker, n)`
/// back to back. A response counts as an error when `ok(status)` is false or it fails.
pub async fn bench<F>(
    args: &ClientArgs,
    concurrency: usize,
    duration: Duration,
    request: F,
    ok: fn(u16) -> bool,
) -> BenchReport
where
    F: Fn(&reqwest::Client, &str, usize, u64) -> reqwest::RequestBuilder + Send + Sync + 'static,
{
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .tcp_nodelay(true)
        .build()
        .unwrap_or_default();
    let base: std::sync::Arc<str> = args.url.trim_end_matches('/').into();
    let token = args.token.clone();
    let request = std::sync::Arc::new(request);
    let start = std::time::Instant::now();
    let deadline = start + duration;
    let workers: Vec<_> = (0..concurrency)
        .map(|w| {
            let (http, base, token, request) =
                (http.clone(), base.clone(), token.clone(), request.clone());
            tokio::spawn(async move {
                let (mut lat, mut errors, mut n) = (Vec::new(), 0u64, 0u64);
                while std::time::Instant::now() < deadline {
                    let mut req = request(&http, &base, w, n);
                    if let Some(t) = &token {
                        req = req.bearer_auth(t);
                    }
                    let t0 = std::time::Instant::now();
                    let good = match req.send().await {
                        Ok(r) => {
                            let status = r.status().as_u16();
                            r.bytes().await.is_ok() && ok(status)
                        }
                        Err(_) => false,
                    };
                    lat.push(t0.elapsed().as_micros() as u64);
                    errors += u64::from(!good);
                    n += 1;
                }
                (lat, errors)
            })
        })
        .collect();
    let mut latencies_us = Vec::new();
    let mut errors = 0;
    for w in workers {
        if let Ok((lat, e)) = w.await {
            latencies_us.extend(lat);
            errors += e;
        }
    }
    let elapsed = start.elapsed();
    latencies_us.sort_unstable();
    BenchReport {
        requests: latencies_us.len() as u64,
        errors,
        elapsed,
        latencies_us,
    }
}

/// Percent-encodes `s` for one URL path segment (unreserved characters and `:` stay as they are).
pub fn encode_segment(s: impl AsRef<[u8]>) -> String {
    let mut out = String::new();
    for &b in s.as_ref() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b':') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Standard base64 with padding (JSON fields carrying bytes: etcd's gateway, cache values).
pub fn base64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            out.push(if i <= chunk.len() {
                T[(n >> (18 - 6 * i) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    out
}

#[cfg(test)]
mod encoding_tests {
    #[test]
    fn segments_and_base64() {
        assert_eq!(
            super::encode_segment("jobs/nightly:1 x"),
            "jobs%2Fnightly:1%20x"
        );
        assert_eq!(super::base64(b"lock"), "bG9jaw==");
        assert_eq!(super::base64(b"abc"), "YWJj");
        assert_eq!(super::base64(b"bench-1"), "YmVuY2gtMQ==");
    }
}
