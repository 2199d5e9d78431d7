//! `/v1/cache/…`: the same cache over HTTP. `{namespace}/{key}` is the RESP key
//! `{namespace}:{key}`, so both protocols see the same entries.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{StatusCode, header};
use mortar_core::Problem;
use mortar_core::extract::{ApiJson, ApiPath, ApiQuery};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::service::CacheService;
use crate::store::{Value, now_ms};

pub fn router(svc: Arc<CacheService>) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(get_value, put_value, delete_value))
        .routes(routes!(mget))
        .routes(routes!(stats))
        .with_state(svc)
}

fn key(ns: &str, k: &str) -> Result<bytes::Bytes, Problem> {
    if ns.is_empty() || ns.contains(':') || ns.len() > 256 {
        return Err(Problem::validation(vec![mortar_core::FieldError::new(
            "namespace",
            "1 to 256 characters, no `:`",
        )]));
    }
    if k.is_empty() || k.len() > 64 * 1024 {
        return Err(Problem::validation(vec![mortar_core::FieldError::new(
            "key",
            "1 byte to 64 KiB",
        )]));
    }
    Ok(bytes::Bytes::from(format!("{ns}:{k}")))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PutParams {
    /// Time to live in milliseconds (none: no expiry).
    pub ttl_ms: Option<u64>,
}

/// The raw bytes of a value (404 when absent or expired).
#[utoipa::path(get, path = "/v1/cache/{namespace}/{key}", tag = "cache",
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>), (status = 404, body = Problem)))]
async fn get_value(
    State(svc): State<Arc<CacheService>>,
    ApiPath((ns, k)): ApiPath<(String, String)>,
) -> Result<Response, Problem> {
    let v = svc
        .store
        .get(&key(&ns, &k)?)
        .ok_or_else(|| Problem::not_found(format!("no key `{k}` in namespace `{ns}`")))?;
    let mut res = ([(header::CONTENT_TYPE, "application/octet-stream")], v.data).into_response();
    if let Some(at) = v.expires_at_ms {
        res.headers_mut()
            .insert("mortar-ttl-ms", at.saturating_sub(now_ms()).into());
    }
    Ok(res)
}

/// Store raw bytes (any content type), optionally with `?ttl_ms=`.
#[utoipa::path(put, path = "/v1/cache/{namespace}/{key}", tag = "cache", params(PutParams),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 204), (status = 413, body = Problem)))]
async fn put_value(
    State(svc): State<Arc<CacheService>>,
    ApiPath((ns, k)): ApiPath<(String, String)>,
    ApiQuery(p): ApiQuery<PutParams>,
    body: Bytes,
) -> Result<StatusCode, Problem> {
    let key = key(&ns, &k)?;
    if p.ttl_ms == Some(0) {
        return Err(Problem::validation(vec![mortar_core::FieldError::new(
            "ttl_ms",
            "must be at least 1",
        )]));
    }
    svc.store.set(
        &key,
        &Value {
            data: body,
            expires_at_ms: p.ttl_ms.map(|t| now_ms().saturating_add(t)),
        },
    );
    Ok(StatusCode::NO_CONTENT)
}

/// Remove a key (204 whether or not it existed).
#[utoipa::path(delete, path = "/v1/cache/{namespace}/{key}", tag = "cache", responses((status = 204)))]
async fn delete_value(
    State(svc): State<Arc<CacheService>>,
    ApiPath((ns, k)): ApiPath<(String, String)>,
) -> Result<StatusCode, Problem> {
    svc.store.remove(&key(&ns, &k)?);
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MgetBody {
    /// Up to 1000 keys.
    pub keys: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MgetItem {
    pub key: String,
    /// The value as text when it is UTF-8, else base64 (see `encoding`); absent when missing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encoding: Option<&'static str>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MgetResponse {
    pub items: Vec<MgetItem>,
}

/// Read many keys of a namespace at once.
#[utoipa::path(post, path = "/v1/cache/{namespace}/mget", tag = "cache", request_body = MgetBody,
    responses((status = 200, body = MgetResponse), (status = 400, body = Problem)))]
async fn mget(
    State(svc): State<Arc<CacheService>>,
    ApiPath(ns): ApiPath<String>,
    ApiJson(body): ApiJson<MgetBody>,
) -> Result<ApiJson<MgetResponse>, Problem> {
    if body.keys.is_empty() || body.keys.len() > 1000 {
        return Err(Problem::invalid_body(vec![mortar_core::FieldError::new(
            "keys",
            "give 1 to 1000 keys",
        )]));
    }
    let mut items = Vec::with_capacity(body.keys.len());
    for k in body.keys {
        let v = svc.store.get(&key(&ns, &k)?);
        let (value, encoding) = match v {
            None => (None, None),
            Some(v) => match String::from_utf8(v.data.to_vec()) {
                Ok(s) => (Some(s), Some("utf8")),
                Err(_) => (Some(base64(&v.data)), Some("base64")),
            },
        };
        items.push(MgetItem {
            key: k,
            value,
            encoding,
        });
    }
    Ok(ApiJson(MgetResponse { items }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Stats {
    pub keys: u64,
    pub keys_with_ttl: u64,
    pub used_memory: u64,
    pub max_memory: u64,
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
    pub expirations: u64,
    pub resp_clients: u64,
}

/// Sizes and counters.
#[utoipa::path(get, path = "/v1/cache/stats", tag = "cache", responses((status = 200, body = Stats)))]
async fn stats(State(svc): State<Arc<CacheService>>) -> ApiJson<Stats> {
    use std::sync::atomic::Ordering::Relaxed;
    let (keys, keys_with_ttl) = svc.store.counts();
    let s = &svc.store.stats;
    ApiJson(Stats {
        keys,
        keys_with_ttl,
        used_memory: svc.store.used_memory(),
        max_memory: svc.store.max_memory(),
        hits: s.hits.load(Relaxed),
        misses: s.misses.load(Relaxed),
        evictions: s.evicted.load(Relaxed),
        expirations: s.expired.load(Relaxed),
        resp_clients: svc.clients.load(Relaxed),
    })
}

fn base64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
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
