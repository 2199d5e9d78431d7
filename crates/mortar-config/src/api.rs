//! `/v1/config/…`: values (effective, per key, as `.env`), writes with CAS, change sets,
//! history, rollback, schemas, and the watch (SSE or long-poll).

use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt as _;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use mortar_core::Problem;
use mortar_core::api::Page;
use mortar_core::auth::Principal;
use mortar_core::extract::{ApiJson, ApiPath, ApiQuery};
use mortar_core::problem::FieldError;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::service::{
    Author, Change, ConfigError, ConfigService, Expect, KeyValue, Op, OpKind, Values, Written,
};
use crate::watch::{Filter, Stream};

type Svc = State<Arc<ConfigService>>;

pub fn router(svc: Arc<ConfigService>) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(namespaces))
        .routes(routes!(environments))
        .routes(routes!(values, apply))
        .routes(routes!(get_key, put_key, delete_key))
        .routes(routes!(history))
        .routes(routes!(rollback))
        .routes(routes!(watch))
        .routes(routes!(get_schema, put_schema, delete_schema))
        .with_state(svc)
}

/// The routes that honour `Idempotency-Key` (the stored answer is replayed).
pub const IDEMPOTENT: &[mortar_core::idempotency::Route] = &[
    route("PUT", "/v1/config/{ns}/{env}/{key}"),
    route("DELETE", "/v1/config/{ns}/{env}/{key}"),
    route("POST", "/v1/config/{ns}/{env}"),
    route("POST", "/v1/config/{ns}/{env}/rollback"),
    route("PUT", "/v1/config/{ns}/schema"),
];

const fn route(method: &'static str, path: &'static str) -> mortar_core::idempotency::Route {
    mortar_core::idempotency::Route {
        method,
        path,
        replay: mortar_core::idempotency::Replay::Stored,
    }
}

/// Whether the caller may see secret values (`config:secrets`, the admin, or auth off).
fn reveals(p: Option<&Extension<Principal>>) -> bool {
    p.is_none_or(|Extension(p)| p.reveals("config"))
}

/// Who made a change, for the history.
fn who(p: Option<Extension<Principal>>) -> String {
    match p.map(|Extension(p)| p) {
        Some(Principal::Key(k)) => k.name,
        Some(Principal::Admin) => "admin".into(),
        Some(Principal::Open) | None => "anonymous".into(),
    }
}

fn author<'a>(principal: &'a str, message: &'a str) -> Author<'a> {
    Author { principal, message }
}

/// `{ns}`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct NsPath {
    /// The namespace: 1 to 64 of letters, digits, `_`, `-`.
    #[param(pattern = r"^[A-Za-z0-9_-]{1,64}$")]
    pub ns: String,
}

/// `{ns}/{env}`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct EnvPath {
    /// The namespace: 1 to 64 of letters, digits, `_`, `-`.
    #[param(pattern = r"^[A-Za-z0-9_-]{1,64}$")]
    pub ns: String,
    /// The environment (`base`, `dev`, `prod`, …): 1 to 64 of letters, digits, `_`, `-`.
    #[param(pattern = r"^[A-Za-z0-9_-]{1,64}$")]
    pub env: String,
}

/// `{ns}/{env}/{key}`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct KeyPath {
    /// The namespace.
    #[param(pattern = r"^[A-Za-z0-9_-]{1,64}$")]
    pub ns: String,
    /// The environment.
    #[param(pattern = r"^[A-Za-z0-9_-]{1,64}$")]
    pub env: String,
    /// The key: a dotted path of letters, digits, `_`, `-` (1 to 256 characters).
    #[param(pattern = r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$", max_length = 256)]
    pub key: String,
}

/// A namespace and its newest revision.
#[derive(Debug, Serialize, ToSchema)]
pub struct Namespace {
    pub name: String,
    pub revision: i64,
}

/// `?limit=&cursor=` of the namespace list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Most namespaces to return (1 to 1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Namespaces, by name.
#[utoipa::path(get, path = "/v1/config", tag = "config", operation_id = "config_namespaces", params(ListParams),
    responses((status = 200, body = Page<Namespace>), (status = 422, description = "Bad limit", body = Problem),
        (status = 503, description = "Store unavailable", body = Problem)))]
async fn namespaces(
    State(svc): Svc,
    ApiQuery(p): ApiQuery<ListParams>,
) -> Result<ApiJson<Page<Namespace>>, Problem> {
    let limit = mortar_core::api::page_limit(p.limit, 100, 1000)?;
    let page = svc
        .namespaces(p.cursor.as_deref().unwrap_or(""), limit)
        .await?;
    Ok(ApiJson(
        page.map(|(name, revision)| Namespace { name, revision }),
    ))
}

/// A namespace's environments.
#[derive(Debug, Serialize, ToSchema)]
pub struct Environments {
    pub namespace: String,
    /// Each environment written to, with its newest revision.
    pub environments: std::collections::BTreeMap<String, i64>,
}

/// A namespace's environments and their newest revisions.
#[utoipa::path(get, path = "/v1/config/{ns}", tag = "config", operation_id = "config_environments", params(NsPath),
    responses((status = 200, body = Environments), (status = 404, description = "No such namespace", body = Problem),
        (status = 422, description = "Bad name", body = Problem), (status = 503, description = "Store unavailable", body = Problem)))]
async fn environments(
    State(svc): Svc,
    ApiPath(p): ApiPath<NsPath>,
) -> Result<ApiJson<Environments>, Problem> {
    let environments = svc.environments(&p.ns).await?;
    Ok(ApiJson(Environments {
        namespace: p.ns,
        environments,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ValuesParams {
    /// `json` (default) or `env`: `KEY=value` lines for a shell to source (keys upper-cased,
    /// dots and dashes as `_`; strings as they are, other values as JSON; single-quoted).
    #[param(pattern = "^(json|env)$", nullable = false)]
    pub format: Option<String>,
}

/// Every effective value of an environment, with where each comes from.
#[utoipa::path(get, path = "/v1/config/{ns}/{env}", tag = "config", operation_id = "config_values", params(EnvPath, ValuesParams),
    responses((status = 200, description = "The values (JSON), or with `format=env` `KEY='value'` lines",
            content((Values = "application/json"), (String = "text/plain"))),
        (status = 404, description = "No such namespace or environment", body = Problem),
        (status = 422, description = "Bad name or format", body = Problem), (status = 503, description = "Store unavailable", body = Problem)))]
async fn values(
    State(svc): Svc,
    principal: Option<Extension<Principal>>,
    ApiPath(p): ApiPath<EnvPath>,
    ApiQuery(q): ApiQuery<ValuesParams>,
) -> Result<Response, Problem> {
    let values = svc
        .values(&p.ns, &p.env, reveals(principal.as_ref()))
        .await?;
    let revision = header_value(values.revision);
    let mut res = match q.format.as_deref().unwrap_or("json") {
        "json" => ApiJson(values).into_response(),
        "env" => (
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            crate::format::render(&values),
        )
            .into_response(),
        _ => {
            return Err(Problem::validation(vec![FieldError::new(
                "format",
                "must be `json` or `env`",
            )]));
        }
    };
    res.headers_mut().insert("x-config-revision", revision);
    Ok(res)
}

fn header_value(n: i64) -> HeaderValue {
    HeaderValue::from_str(&n.to_string()).unwrap_or(HeaderValue::from_static("0"))
}

/// One key's effective value (`ETag` = the key's revision, for `If-Match`).
#[utoipa::path(get, path = "/v1/config/{ns}/{env}/{key}", tag = "config", operation_id = "config_get_key", params(KeyPath),
    responses((status = 200, body = KeyValue), (status = 404, description = "Not set anywhere in the chain", body = Problem),
        (status = 422, description = "Bad name or key", body = Problem), (status = 503, description = "Store unavailable", body = Problem)))]
async fn get_key(
    State(svc): Svc,
    principal: Option<Extension<Principal>>,
    ApiPath(p): ApiPath<KeyPath>,
) -> Result<Response, Problem> {
    let kv = svc
        .get(&p.ns, &p.env, &p.key, reveals(principal.as_ref()))
        .await?;
    let etag = HeaderValue::from_str(&format!("\"{}\"", kv.entry.revision)).ok();
    let mut res = ApiJson(kv).into_response();
    if let Some(etag) = etag {
        res.headers_mut().insert(header::ETAG, etag);
    }
    Ok(res)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WriteParams {
    /// Why (kept in the history).
    #[param(max_length = 1000)]
    pub message: Option<String>,
    /// `PUT`: store the value encrypted, shown as `"***"` without the `config:secrets` scope
    /// (needs `[config] secret_key`). Absent: as the key is now.
    pub secret: Option<bool>,
}

/// The `If-Match` header of a key's write.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Header)]
pub struct IfMatch {
    /// The key's revision the write expects (its `ETag`; quotes optional); `0`: the key must
    /// not exist.
    #[param(
        rename = "If-Match",
        pattern = r#"^"?[0-9]{1,18}"?$"#,
        nullable = false
    )]
    pub if_match: Option<String>,
}

/// `If-Match: <revision>` (quotes optional; `0`: the key must not exist).
fn if_match(headers: &HeaderMap) -> Result<Expect, Problem> {
    let Some(v) = headers.get(header::IF_MATCH) else {
        return Ok(Expect::Anything);
    };
    let text = v.to_str().unwrap_or("").trim().trim_matches('"');
    text.parse::<i64>()
        .ok()
        .filter(|n| *n >= 0)
        .map(Expect::Key)
        .ok_or_else(|| {
            Problem::bad_request(format!(
                "If-Match: `{text}` is not a revision; send the key's revision (its ETag), or 0 for a key that must not exist"
            ))
        })
}

fn message(m: Option<String>) -> Result<String, Problem> {
    let m = m.unwrap_or_default();
    if m.len() > 1000 {
        return Err(Problem::validation(vec![FieldError::new(
            "message",
            "at most 1000 bytes",
        )]));
    }
    Ok(m)
}

/// Sets a key; the body is the JSON value itself.
#[utoipa::path(put, path = "/v1/config/{ns}/{env}/{key}", tag = "config", operation_id = "config_put_key", params(KeyPath, WriteParams, IfMatch),
    request_body(content = serde_json::Value, description = "The value: any JSON", content_type = "application/json"),
    responses((status = 200, body = Written), (status = 400, description = "Malformed JSON or If-Match", body = Problem),
        (status = 412, description = "The key moved (If-Match)", body = Problem),
        (status = 413, description = "Value too large", body = Problem), (status = 415, description = "Not JSON", body = Problem),
        (status = 422, description = "Bad name or key, or the schema refuses it", body = Problem),
        (status = 503, description = "Store unavailable", body = Problem)))]
async fn put_key(
    State(svc): Svc,
    principal: Option<Extension<Principal>>,
    ApiPath(p): ApiPath<KeyPath>,
    ApiQuery(q): ApiQuery<WriteParams>,
    headers: HeaderMap,
    ApiJson(value): ApiJson<Value>,
) -> Result<ApiJson<Written>, Problem> {
    let expect = if_match(&headers)?;
    let message = message(q.message)?;
    let op = Op {
        op: OpKind::Set,
        key: p.key,
        value: Some(value),
        secret: q.secret,
    };
    let who = who(principal);
    let by = author(&who, &message);
    Ok(ApiJson(
        svc.apply(&p.ns, &p.env, vec![op], expect, by)
            .await
            .map_err(one_key)?,
    ))
}

/// Deletes a key from an environment (what it falls back to shows through).
#[utoipa::path(delete, path = "/v1/config/{ns}/{env}/{key}", tag = "config", operation_id = "config_delete_key", params(KeyPath, WriteParams, IfMatch),
    responses((status = 200, body = Written), (status = 400, description = "Bad If-Match", body = Problem),
        (status = 404, description = "Not set in this environment", body = Problem),
        (status = 412, description = "The key moved (If-Match)", body = Problem),
        (status = 422, description = "Bad name or key, or the schema refuses it", body = Problem),
        (status = 503, description = "Store unavailable", body = Problem)))]
async fn delete_key(
    State(svc): Svc,
    principal: Option<Extension<Principal>>,
    ApiPath(p): ApiPath<KeyPath>,
    ApiQuery(q): ApiQuery<WriteParams>,
    headers: HeaderMap,
) -> Result<ApiJson<Written>, Problem> {
    let expect = if_match(&headers)?;
    let message = message(q.message)?;
    Ok(ApiJson(
        svc.delete(
            &p.ns,
            &p.env,
            &p.key,
            expect,
            author(&who(principal), &message),
        )
        .await
        .map_err(one_key)?,
    ))
}

/// A one-key write's problem: its fields named as the route names them (`secret`, not
/// `ops[0].secret`).
fn one_key(e: ConfigError) -> Problem {
    match e {
        ConfigError::Invalid(errors) => Problem::validation(
            errors
                .into_iter()
                .map(|f| {
                    let field = f
                        .field
                        .strip_prefix("ops[0].")
                        .unwrap_or(&f.field)
                        .to_owned();
                    FieldError::new(field, f.message)
                })
                .collect(),
        ),
        e => e.into(),
    }
}

/// `{ns}/{env}:apply`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct ApplyPath {
    /// The namespace.
    #[param(pattern = r"^[A-Za-z0-9_-]{1,64}$")]
    pub ns: String,
    /// `<environment>:apply`.
    #[param(pattern = r"^[A-Za-z0-9_-]{1,64}:apply$")]
    pub env: String,
}

/// A change set.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApplyBody {
    /// 1 to 1000 operations, applied atomically as one revision.
    #[schema(min_items = 1, max_items = 1000)]
    pub ops: Vec<Op>,
    /// The environment's newest revision the change set expects (0: never written); a
    /// mismatch is a 412 and changes nothing.
    #[schema(minimum = 0)]
    pub expected_revision: Option<i64>,
    /// Why (kept in the history).
    pub message: Option<String>,
}

/// Applies a change set to an environment atomically: `POST /v1/config/{ns}/{env}:apply`.
#[utoipa::path(post, path = "/v1/config/{ns}/{env}", tag = "config", operation_id = "config_apply", params(ApplyPath),
    request_body = ApplyBody,
    responses((status = 200, body = Written), (status = 400, description = "Malformed body", body = Problem),
        (status = 404, description = "Not `<env>:apply`, or a deleted key is not set", body = Problem),
        (status = 412, description = "The environment moved (expected_revision)", body = Problem),
        (status = 413, description = "A value is too large", body = Problem), (status = 415, description = "Not JSON", body = Problem),
        (status = 422, description = "Bad operations, or the schema refuses them", body = Problem),
        (status = 503, description = "Store unavailable", body = Problem)))]
async fn apply(
    State(svc): Svc,
    principal: Option<Extension<Principal>>,
    ApiPath(p): ApiPath<ApplyPath>,
    ApiJson(body): ApiJson<ApplyBody>,
) -> Result<ApiJson<Written>, Problem> {
    let Some(env) = p.env.strip_suffix(":apply") else {
        return Err(Problem::not_found(format!(
            "no route POST /v1/config/{}/{}: change sets go to /v1/config/<ns>/<env>:apply",
            p.ns, p.env
        )));
    };
    let expect = match body.expected_revision {
        Some(r) if r < 0 => {
            return Err(Problem::validation(vec![FieldError::new(
                "expected_revision",
                "must be 0 or more",
            )]));
        }
        Some(r) => Expect::Env(r),
        None => Expect::Anything,
    };
    let message = message(body.message)?;
    Ok(ApiJson(
        svc.apply(
            &p.ns,
            env,
            body.ops,
            expect,
            author(&who(principal), &message),
        )
        .await?,
    ))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryParams {
    /// Only this key's changes.
    pub key: Option<String>,
    /// Most changes to return (1 to 1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    #[param(pattern = r"^[0-9]{0,18}$")]
    pub cursor: Option<String>,
}

/// An environment's changes, newest first, each with its diff.
#[utoipa::path(get, path = "/v1/config/{ns}/{env}/history", tag = "config", operation_id = "config_history", params(EnvPath, HistoryParams),
    responses((status = 200, body = Page<Change>), (status = 400, description = "Bad cursor", body = Problem),
        (status = 404, description = "No such namespace or environment", body = Problem),
        (status = 422, description = "Bad name or limit", body = Problem), (status = 503, description = "Store unavailable", body = Problem)))]
async fn history(
    State(svc): Svc,
    principal: Option<Extension<Principal>>,
    ApiPath(p): ApiPath<EnvPath>,
    ApiQuery(q): ApiQuery<HistoryParams>,
) -> Result<ApiJson<Page<Change>>, Problem> {
    let limit = mortar_core::api::page_limit(q.limit, 100, 1000)?;
    let before = match q.cursor.as_deref() {
        None | Some("") => None,
        Some(c) => Some(c.parse::<i64>().map_err(|_| {
            Problem::bad_request("cursor: send back a next_cursor this route gave")
        })?),
    };
    Ok(ApiJson(
        svc.history(
            &p.ns,
            &p.env,
            q.key.as_deref(),
            before,
            limit,
            reveals(principal.as_ref()),
        )
        .await?,
    ))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackBody {
    /// Restore the environment as it was at this revision.
    #[schema(minimum = 0)]
    pub to_revision: i64,
}

/// Restores an environment as it was at a revision, as a new revision.
#[utoipa::path(post, path = "/v1/config/{ns}/{env}/rollback", tag = "config", operation_id = "config_rollback", params(EnvPath),
    request_body = RollbackBody,
    responses((status = 200, body = Written), (status = 400, description = "Malformed body", body = Problem),
        (status = 404, description = "No such namespace or environment", body = Problem),
        (status = 409, description = "Nothing to roll back", body = Problem),
        (status = 412, description = "The environment moved meanwhile", body = Problem),
        (status = 415, description = "Not JSON", body = Problem),
        (status = 422, description = "Revision not kept, or the schema refuses the old values", body = Problem),
        (status = 503, description = "Store unavailable", body = Problem)))]
async fn rollback(
    State(svc): Svc,
    principal: Option<Extension<Principal>>,
    ApiPath(p): ApiPath<EnvPath>,
    ApiJson(body): ApiJson<RollbackBody>,
) -> Result<ApiJson<Written>, Problem> {
    Ok(ApiJson(
        svc.rollback(&p.ns, &p.env, body.to_revision, &who(principal))
            .await?,
    ))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WatchParams {
    /// Resume after this revision (`Last-Event-ID` takes precedence). Omitted: start with a
    /// snapshot.
    #[param(minimum = 0)]
    pub after_revision: Option<i64>,
    /// Long-poll instead of streaming: wait up to this long (0 to 60000 ms) for the first
    /// event, answer JSON `{items, revision}`.
    #[param(minimum = 0, maximum = 60_000)]
    pub wait_ms: Option<u64>,
    /// Only this key.
    pub key: Option<String>,
    /// Only keys starting with this.
    pub prefix: Option<String>,
    /// Long-poll: at most this many events (1 to 1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// One watch event, as long-poll answers it.
#[derive(Debug, Serialize, ToSchema)]
pub struct WatchEvent {
    /// The revision it brings you to (resume after it).
    pub revision: i64,
    /// `snapshot`, `reset` (re-read: the snapshot is in `data`) or `change`.
    pub event: String,
    #[schema(value_type = Object)]
    pub data: Box<serde_json::value::RawValue>,
}

/// A long-poll's answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct WatchPolled {
    pub items: Vec<WatchEvent>,
    /// Send it back as `after_revision`.
    pub revision: i64,
}

/// Watches an environment's effective values: a `snapshot` (or the revisions missed since
/// `Last-Event-ID` / `after_revision`, or a `reset` snapshot when those were compacted), then a
/// `change` event per revision. SSE (`id:` = revision), or long-poll with `wait_ms`.
#[utoipa::path(get, path = "/v1/config/{ns}/{env}/watch", tag = "config", operation_id = "config_watch", params(EnvPath, WatchParams),
    responses((status = 200, description = "SSE events `snapshot`, `reset`, `change`; or with `wait_ms` the events that came",
            content((mortar_core::stream::SseFrame = "text/event-stream"), (WatchPolled = "application/json"))),
        (status = 400, description = "Bad Last-Event-ID", body = Problem),
        (status = 404, description = "No such namespace or environment", body = Problem),
        (status = 422, description = "Bad name, wait_ms or limit", body = Problem),
        (status = 503, description = "Store unavailable", body = Problem)))]
async fn watch(
    State(svc): Svc,
    principal: Option<Extension<Principal>>,
    ApiPath(p): ApiPath<EnvPath>,
    ApiQuery(q): ApiQuery<WatchParams>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let from = match headers.get("last-event-id") {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.parse::<i64>().ok())
                .filter(|n| *n >= 0)
                .ok_or_else(|| {
                    Problem::bad_request(
                        "Last-Event-ID: send back an `id` this stream gave you (a revision)",
                    )
                })?,
        ),
        None => q.after_revision,
    };
    if from.is_some_and(|r| r < 0) {
        return Err(Problem::validation(vec![FieldError::new(
            "after_revision",
            "must be 0 or more",
        )]));
    }
    if q.wait_ms
        .is_some_and(|w| w > mortar_core::stream::MAX_WAIT_MS)
    {
        return Err(Problem::validation(vec![FieldError::new(
            "wait_ms",
            "must be 0 to 60000",
        )]));
    }
    let limit = mortar_core::api::page_limit(q.limit, 100, 1000)? as usize;
    let filter = Filter {
        key: q.key,
        prefix: q.prefix,
    };
    let reveal = reveals(principal.as_ref());
    let mut stream = Stream::open(&svc, &p.ns, &p.env, from, filter, reveal).await?;
    let stopping = svc.hub().stopping.clone();
    if let Some(wait) = q.wait_ms {
        let mut items = Vec::new();
        let first = tokio::select! {
            o = stream.next() => o,
            () = tokio::time::sleep(Duration::from_millis(wait)) => None,
            () = stopping.wait() => None,
        };
        if let Some(o) = first {
            items.push(o);
            while items.len() < limit {
                match stream.try_next() {
                    Some(o) => items.push(o),
                    None => break,
                }
            }
        }
        let revision = stream.revision(items.last());
        let items = items
            .into_iter()
            .map(|o| WatchEvent {
                revision: o.revision,
                event: o.event.into(),
                data: serde_json::value::RawValue::from_string(o.data).unwrap_or_else(|_| {
                    serde_json::value::RawValue::from_string("null".into()).expect("null")
                }),
            })
            .collect();
        return Ok(ApiJson(WatchPolled { items, revision }).into_response());
    }
    let keepalive = svc.hub().keepalive();
    let events = futures_util::stream::unfold(stream, |mut s| async move {
        let o = s.next().await?;
        let event = SseEvent::default()
            .event(o.event)
            .id(o.revision.to_string())
            .data(o.data);
        Some((Ok::<_, std::convert::Infallible>(event), s))
    })
    .take_until(async move { stopping.wait().await });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(keepalive))
        .into_response())
}

/// A namespace's JSON Schema.
#[utoipa::path(get, path = "/v1/config/{ns}/schema", tag = "config", operation_id = "config_get_schema", params(NsPath),
    responses((status = 200, body = Object), (status = 404, description = "No such namespace or no schema", body = Problem),
        (status = 422, description = "Bad name", body = Problem), (status = 503, description = "Store unavailable", body = Problem)))]
async fn get_schema(
    State(svc): Svc,
    ApiPath(p): ApiPath<NsPath>,
) -> Result<ApiJson<Value>, Problem> {
    Ok(ApiJson(svc.schema(&p.ns).await?))
}

/// Sets a namespace's JSON Schema (draft 2020-12) over each environment's effective document
/// (an object whose properties are the keys); refused when a stored value breaks it.
#[utoipa::path(put, path = "/v1/config/{ns}/schema", tag = "config", operation_id = "config_put_schema", params(NsPath),
    request_body(content = Object, description = "A JSON Schema", content_type = "application/json"),
    responses((status = 204, description = "Set"), (status = 400, description = "Malformed JSON", body = Problem),
        (status = 415, description = "Not JSON", body = Problem),
        (status = 422, description = "Not a usable schema, or stored values break it", body = Problem),
        (status = 503, description = "Store unavailable", body = Problem)))]
async fn put_schema(
    State(svc): Svc,
    principal: Option<Extension<Principal>>,
    ApiPath(p): ApiPath<NsPath>,
    ApiJson(schema): ApiJson<Value>,
) -> Result<StatusCode, Problem> {
    svc.set_schema(&p.ns, Some(schema), &who(principal)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Removes a namespace's schema.
#[utoipa::path(delete, path = "/v1/config/{ns}/schema", tag = "config", operation_id = "config_delete_schema", params(NsPath),
    responses((status = 204, description = "Removed"), (status = 422, description = "Bad name", body = Problem),
        (status = 503, description = "Store unavailable", body = Problem)))]
async fn delete_schema(
    State(svc): Svc,
    principal: Option<Extension<Principal>>,
    ApiPath(p): ApiPath<NsPath>,
) -> Result<StatusCode, Problem> {
    svc.set_schema(&p.ns, None, &who(principal)).await?;
    Ok(StatusCode::NO_CONTENT)
}
