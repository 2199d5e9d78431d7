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

use crate::commands::Session;
use crate::resp::Reply;
use crate::service::CacheService;

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

/// Runs a command the way RESP clients do (so cluster mode applies to HTTP too).
async fn run(svc: &CacheService, args: Vec<bytes::Bytes>) -> Result<Reply, Problem> {
    let mut session = Session {
        proto: 2,
        authed: true,
        ..Session::default()
    };
    match svc.run(&mut session, &args).await {
        Reply::Error(e) if e.contains("unavailable") => Err(Problem::unavailable("redis", e)),
        Reply::Error(e) => Err(Problem::bad_request(e)),
        r => Ok(r),
    }
}

/// The raw bytes of a value (404 when absent or expired).
#[utoipa::path(get, path = "/v1/cache/{namespace}/{key}", tag = "cache",
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>), (status = 404, body = Problem)))]
async fn get_value(
    State(svc): State<Arc<CacheService>>,
    ApiPath((ns, k)): ApiPath<(String, String)>,
) -> Result<Response, Problem> {
    let key = key(&ns, &k)?;
    let Reply::Bulk(data) = run(&svc, vec!["GET".into(), key.clone()]).await? else {
        return Err(Problem::not_found(format!(
            "no key `{k}` in namespace `{ns}`"
        )));
    };
    let mut res = ([(header::CONTENT_TYPE, "application/octet-stream")], data).into_response();
    if let Ok(Reply::Int(ms)) = run(&svc, vec!["PTTL".into(), key]).await
        && ms > 0
    {
        res.headers_mut().insert("mortar-ttl-ms", ms.into());
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
    let mut args = vec!["SET".into(), key, body];
    match p.ttl_ms {
        Some(0) => {
            return Err(Problem::validation(vec![mortar_core::FieldError::new(
                "ttl_ms",
                "must be at least 1",
            )]));
        }
        Some(t) => args.extend(["PX".into(), bytes::Bytes::from(t.to_string())]),
        None => {}
    }
    run(&svc, args).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Remove a key (204 whether or not it existed).
#[utoipa::path(delete, path = "/v1/cache/{namespace}/{key}", tag = "cache", responses((status = 204)))]
async fn delete_value(
    State(svc): State<Arc<CacheService>>,
    ApiPath((ns, k)): ApiPath<(String, String)>,
) -> Result<StatusCode, Problem> {
    run(&svc, vec!["DEL".into(), key(&ns, &k)?]).await?;
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
    let mut args = vec![bytes::Bytes::from_static(b"MGET")];
    for k in &body.keys {
        args.push(key(&ns, k)?);
    }
    let Reply::Array(values) = run(&svc, args).await? else {
        return Err(Problem::internal());
    };
    let items = body
        .keys
        .into_iter()
        .zip(values)
        .map(|(key, v)| {
            let (value, encoding) = match v {
                Reply::Bulk(data) => match String::from_utf8(data.to_vec()) {
                    Ok(s) => (Some(s), Some("utf8")),
                    Err(_) => (Some(mortar_core::client::base64(&data)), Some("base64")),
                },
                _ => (None, None),
            };
            MgetItem {
                key,
                value,
                encoding,
            }
        })
        .collect();
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
    /// Invalidation messages from other nodes applied to the near-cache (cluster mode).
    pub invalidations_received: u64,
    pub resp_clients: u64,
    /// Microseconds the RESP loops spent busy-polling without finding work
    /// (`cache.resp_busy_poll_us`).
    pub resp_busy_poll_idle_us: u64,
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
        invalidations_received: s.invalidations.load(Relaxed),
        resp_clients: svc.clients.load(Relaxed),
        resp_busy_poll_idle_us: svc.busy_poll_us.load(Relaxed),
    })
}
