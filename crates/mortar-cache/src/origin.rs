//! Origins per namespace: read-through on a miss (one load per key however many callers miss
//! at once — singleflight), and write-through. Origin calls go through a circuit breaker and a
//! timeout (mortar-resilience), so a failing origin costs callers milliseconds, not seconds.
//!
//! A read fetches `GET {origin_url}/{key}`: 200 → cached for the response's
//! `Cache-Control: max-age` (or the namespace's `ttl_ms`), 404 → a miss (not cached),
//! anything else → an error. A write-through `SET` first sends `PUT {origin_url}/{key}`; only a
//! 2xx lets the cache take the value. A write-behind `SET` is taken at once and queued; a
//! background task sends the latest value of each queued key every `flush_ms` (writes to one
//! key in between coalesce). **Loss window**: values written in the last `flush_ms`, plus any
//! the origin keeps refusing, are lost if the node dies; graceful shutdown flushes first.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt, Shared};
use mortar_resilience::Breaker;
use serde::{Deserialize, Serialize};

/// `[cache.namespaces.<name>]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceConfig {
    /// Base URL: a miss on key `k` loads `{origin_url}/{k}`.
    pub origin_url: String,
    /// TTL of loaded values when the origin sends no `Cache-Control: max-age`.
    #[serde(default = "default_ttl")]
    pub ttl_ms: u64,
    /// `through`: writes go to the origin first; `behind`: writes are queued and flushed every
    /// `flush_ms`; `none`: the origin is read-only.
    #[serde(default)]
    pub write: WriteMode,
    /// Deadline of one origin call.
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// Write-behind: how often queued writes are sent.
    #[serde(default = "default_flush")]
    pub flush_ms: u64,
}

fn default_flush() -> u64 {
    1_000
}

fn default_ttl() -> u64 {
    60_000
}

fn default_timeout() -> u64 {
    2_000
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WriteMode {
    #[default]
    None,
    Through,
    Behind,
}

/// What a load found: the value and its TTL, or nothing.
pub type Loaded = Result<Option<(Bytes, u64)>, String>;

/// One namespace's origin.
pub struct Origin {
    pub cfg: NamespaceConfig,
    http: reqwest::Client,
    breaker: Arc<Breaker>,
    inflight: Mutex<HashMap<Bytes, Shared<BoxFuture<'static, Loaded>>>>,
    /// Write-behind queue: the latest value per key.
    pending: Mutex<HashMap<Bytes, Bytes>>,
}

impl std::fmt::Debug for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Origin")
            .field("url", &self.cfg.origin_url)
            .finish_non_exhaustive()
    }
}

impl Origin {
    pub fn new(cfg: NamespaceConfig, breaker: Arc<Breaker>) -> Arc<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(cfg.timeout_ms))
            .build()
            .unwrap_or_default();
        let origin = Arc::new(Self {
            cfg,
            http,
            breaker,
            inflight: Mutex::default(),
            pending: Mutex::default(),
        });
        if origin.cfg.write == WriteMode::Behind
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            let weak = Arc::downgrade(&origin);
            let every = Duration::from_millis(origin.cfg.flush_ms.max(1));
            rt.spawn(async move {
                let mut tick = tokio::time::interval(every);
                loop {
                    tick.tick().await;
                    let Some(o) = weak.upgrade() else { break };
                    o.flush().await;
                }
            });
        }
        origin
    }

    /// Queues a write-behind value (the newest value of a key wins).
    pub fn queue(&self, key: Bytes, value: Bytes) {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, value);
    }

    /// Writes queued for the origin but not yet sent.
    pub fn queued(&self) -> usize {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Sends every queued write (concurrently); failed ones are queued again unless newer
    /// values arrived meanwhile.
    pub async fn flush(&self) {
        let batch: Vec<(Bytes, Bytes)> = self
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain()
            .collect();
        if batch.is_empty() {
            return;
        }
        let results = futures_util::future::join_all(batch.into_iter().map(|(k, v)| async move {
            let r = self.write(&k, v.clone()).await;
            (k, v, r)
        }))
        .await;
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        for (k, v, r) in results {
            if let Err(e) = r {
                tracing::warn!(error = %e, "cache write-behind: origin refused a write; will retry");
                pending.entry(k).or_insert(v);
            }
        }
    }

    fn url(&self, key: &[u8]) -> String {
        format!(
            "{}/{}",
            self.cfg.origin_url.trim_end_matches('/'),
            mortar_core::client::encode_segment(key)
        )
    }

    /// Loads `key` (the part after `namespace:`); concurrent callers share one request.
    pub async fn load(self: &Arc<Self>, key: Bytes) -> Loaded {
        let fut = {
            let mut inflight = self.inflight.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(f) = inflight.get(&key) {
                f.clone()
            } else {
                let this = self.clone();
                let k = key.clone();
                let f = async move {
                    let out = this.fetch(&k).await;
                    this.inflight
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .remove(&k);
                    out
                }
                .boxed()
                .shared();
                inflight.insert(key, f.clone());
                f
            }
        };
        fut.await
    }

    async fn fetch(&self, key: &[u8]) -> Loaded {
        let url = self.url(key);
        let ttl = self.cfg.ttl_ms;
        let result = self
            .breaker
            .call_classified(
                || async {
                    let r = self
                        .http
                        .get(&url)
                        .send()
                        .await
                        .map_err(|e| format!("origin {url}: {e}"))?;
                    let status = r.status();
                    if status == reqwest::StatusCode::NOT_FOUND {
                        return Ok(None);
                    }
                    if !status.is_success() {
                        return Err(format!("origin {url} answered {status}"));
                    }
                    let ttl = max_age_ms(r.headers()).unwrap_or(ttl);
                    let body = r.bytes().await.map_err(|e| format!("origin {url}: {e}"))?;
                    Ok(Some((body, ttl)))
                },
                Result::is_err,
            )
            .await;
        result.map_err(|e| e.to_string())
    }

    /// Writes through to the origin; the cache takes the value only if this succeeds.
    pub async fn write(&self, key: &[u8], value: Bytes) -> Result<(), String> {
        let url = self.url(key);
        self.breaker
            .call(|| async {
                let r = self
                    .http
                    .put(&url)
                    .body(value)
                    .send()
                    .await
                    .map_err(|e| format!("origin {url}: {e}"))?;
                if r.status().is_success() {
                    Ok(())
                } else {
                    Err(format!("origin {url} answered {}", r.status()))
                }
            })
            .await
            .map_err(|e| e.to_string())
    }
}

/// `Cache-Control: max-age=N` in milliseconds (`no-store`/`no-cache` → 0: do not cache).
fn max_age_ms(h: &reqwest::header::HeaderMap) -> Option<u64> {
    let cc = h
        .get(reqwest::header::CACHE_CONTROL)?
        .to_str()
        .ok()?
        .to_ascii_lowercase();
    if cc.contains("no-store") || cc.contains("no-cache") {
        return Some(0);
    }
    cc.split(',').find_map(|d| {
        d.trim()
            .strip_prefix("max-age=")?
            .parse::<u64>()
            .ok()
            .map(|s| s * 1000)
    })
}
