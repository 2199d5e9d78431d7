//! `/v1/cache/…`: the same cache over HTTP. `{namespace}/{key}` is the RESP key
//! `{namespace}:{key}`, so both protocols see the same entries; the namespace `_` names keys as
//! given (`/v1/cache/_/greeting` is `greeting`), so keys without a `:` are reachable too.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{StatusCode, header};
use mortar_core::Problem;
use mortar_core::extract::{ApiJson, ApiPath, ApiQuery, Binary};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::commands::Session;
use crate::resp::Reply;
use crate::service::CacheService;

pub fn router(svc: Arc<CacheService>) -> OpenApiRouter {
    let mut router = OpenApiRouter::new()
        .routes(routes!(get_value, put_value, delete_value))
        .routes(routes!(mget))
        .routes(routes!(stats));
    // An empty value is a value: the PUT body may be absent.
    if let Some(body) = router
        .get_openapi_mut()
        .paths
        .paths
        .get_mut("/v1/cache/{namespace}/{key}")
        .and_then(|item| item.put.as_mut())
        .and_then(|op| op.request_body.as_mut())
    {
        body.required = Some(utoipa::openapi::Required::False);
    }
    router.with_state(svc)
}

/// Longest key in a path, in characters: percent-encoded (up to 12 bytes a character), the URI
/// stays under the 64 KiB the HTTP/1 parser takes. Longer keys (up to 64 KiB) are read with mget.
pub const MAX_PATH_KEY_CHARS: usize = 4096;

/// The store key of a key given in a path.
fn path_key(ns: &str, k: &str) -> Result<bytes::Bytes, Problem> {
    if k.chars().count() > MAX_PATH_KEY_CHARS {
        return Err(Problem::validation(vec![mortar_core::FieldError::new(
            "key",
            format!("1 to {MAX_PATH_KEY_CHARS} characters in a path (use mget for longer keys)"),
        )]));
    }
    key(ns, k)
}

/// The namespace that names keys as given: `/v1/cache/_/greeting` is the RESP key `greeting`.
pub const ROOT: &str = "_";

fn key(ns: &str, k: &str) -> Result<bytes::Bytes, Problem> {
    if ns.is_empty() || ns.contains(':') || ns.chars().count() > 256 {
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
    if ns == ROOT {
        return Ok(bytes::Bytes::from(k.to_owned()));
    }
    Ok(bytes::Bytes::from(format!("{ns}:{k}")))
}

/// `{namespace}/{key}` in a value's path.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct KeyPath {
    /// 1 to 256 characters, no `:`; `_` names keys as given (no namespace).
    #[param(pattern = "^[^:]{1,256}$")]
    pub namespace: String,
    /// 1 to 4096 characters (longer keys, up to 64 KiB: mget).
    #[param(min_length = 1, max_length = 4096)]
    pub key: String,
}

/// `{namespace}` in a namespace's path.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct NamespacePath {
    /// 1 to 256 characters, no `:`.
    #[param(pattern = "^[^:]{1,256}$")]
    pub namespace: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PutParams {
    /// Time to live in milliseconds, at least 1 (none: no expiry).
    #[param(minimum = 1)]
    pub ttl_ms: Option<u64>,
}

/// What a 422 on a value's route means.
const BAD_NAME: &str = "the namespace (1 to 256 characters, no `:`) or the key (1 to 4096 characters in a path, 1 byte to 64 KiB in mget) is invalid";

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
#[utoipa::path(get, path = "/v1/cache/{namespace}/{key}", tag = "cache", params(KeyPath),
    responses((status = 200, content_type = "application/octet-stream", body = Binary, description = "the value",
            headers(("mortar-ttl-ms" = u64, description = "milliseconds left to live (absent: no expiry)"))),
        (status = 404, body = Problem), (status = 422, body = Problem, description = BAD_NAME)))]
async fn get_value(
    State(svc): State<Arc<CacheService>>,
    ApiPath(KeyPath {
        namespace: ns,
        key: k,
    }): ApiPath<KeyPath>,
) -> Result<Response, Problem> {
    let key = path_key(&ns, &k)?;
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
#[utoipa::path(put, path = "/v1/cache/{namespace}/{key}", tag = "cache", params(KeyPath, PutParams),
    request_body(content = Binary, content_type = "application/octet-stream", description = "the value (may be empty)"),
    responses((status = 204, description = "stored"),
        (status = 422, body = Problem, description = "an invalid namespace or key, or `ttl_ms` 0")))]
async fn put_value(
    State(svc): State<Arc<CacheService>>,
    ApiPath(KeyPath {
        namespace: ns,
        key: k,
    }): ApiPath<KeyPath>,
    ApiQuery(p): ApiQuery<PutParams>,
    body: Bytes,
) -> Result<StatusCode, Problem> {
    let key = path_key(&ns, &k)?;
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
#[utoipa::path(delete, path = "/v1/cache/{namespace}/{key}", tag = "cache", params(KeyPath),
    responses((status = 204, description = "gone (whether or not it existed)"),
        (status = 422, body = Problem, description = BAD_NAME)))]
async fn delete_value(
    State(svc): State<Arc<CacheService>>,
    ApiPath(KeyPath {
        namespace: ns,
        key: k,
    }): ApiPath<KeyPath>,
) -> Result<StatusCode, Problem> {
    run(&svc, vec!["DEL".into(), path_key(&ns, &k)?]).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A key: 1 byte to 64 KiB.
pub struct Key(pub String);

impl utoipa::PartialSchema for Key {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::Type::String)
            .min_length(Some(1))
            .max_length(Some(64 * 1024))
            .description(Some("A key: 1 byte to 64 KiB."))
            .into()
    }
}

impl ToSchema for Key {}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MgetBody {
    /// 1 to 1000 keys, each 1 byte to 64 KiB.
    #[schema(value_type = Vec<Key>, min_items = 1, max_items = 1000)]
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
#[utoipa::path(post, path = "/v1/cache/{namespace}/mget", tag = "cache", params(NamespacePath), request_body = MgetBody,
    responses((status = 200, body = MgetResponse), (status = 400, body = Problem),
        (status = 422, body = Problem, description = BAD_NAME)))]
async fn mget(
    State(svc): State<Arc<CacheService>>,
    ApiPath(NamespacePath { namespace: ns }): ApiPath<NamespacePath>,
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
