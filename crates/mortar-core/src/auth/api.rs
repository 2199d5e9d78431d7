//! `/v1/keys`: create, list and revoke scoped API keys (admin only; enforced by the middleware).

use std::sync::Arc;

use axum::extract::State;
use http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ApiKey, KeyStore};
use crate::clock::rfc3339;
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::problem::Problem;

/// The keys API.
pub fn router(keys: KeyStore) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(create_key, list_keys))
        .routes(routes!(get_key, revoke_key))
        .with_state(Arc::new(keys))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// What the key is for (shown in listings): 1 to 200 bytes, not only spaces.
    #[schema(min_length = 1, max_length = 200, pattern = r"\S")]
    pub name: String,
    /// At least one `<block>:read` or `<block>:write`; `*` stands for every block.
    #[schema(value_type = Vec<ScopeName>, min_items = 1)]
    pub scopes: Vec<String>,
}

/// A scope: `<block>:read` or `<block>:write` (`block`: `*`, or 1 to 64 lowercase letters,
/// digits, `-`, `_`).
#[derive(ToSchema)]
#[schema(pattern = r"^(\*|[a-z0-9_-]{1,64}):(read|write)$")]
pub struct ScopeName(pub String);

/// `{id}` in a key's path.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct KeyPath {
    /// The key's id.
    pub id: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KeyView {
    pub id: String,
    pub name: String,
    pub scopes: Vec<String>,
    pub created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedKey {
    #[serde(flatten)]
    pub key: KeyView,
    /// The bearer token. Shown only now: store it.
    pub secret: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KeyList {
    pub items: Vec<KeyView>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

impl From<ApiKey> for KeyView {
    fn from(k: ApiKey) -> Self {
        Self {
            id: k.id,
            name: k.name,
            scopes: k.scopes.iter().map(ToString::to_string).collect(),
            created_at: rfc3339(k.created_at_ms),
            revoked_at: k.revoked_at_ms.map(rfc3339),
        }
    }
}

/// Create an API key.
#[utoipa::path(post, path = "/v1/keys", tag = "keys", request_body = CreateKey,
    responses((status = 201, body = CreatedKey),
        (status = 422, body = Problem, description = "an empty or too long name, no scopes, or an invalid scope")))]
async fn create_key(
    State(keys): State<Arc<KeyStore>>,
    ApiJson(body): ApiJson<CreateKey>,
) -> Result<(StatusCode, ApiJson<CreatedKey>), Problem> {
    let (key, secret) = keys.create(&body.name, &body.scopes).await?;
    tracing::info!(key_id = %key.id, name = %key.name, "api key created");
    Ok((
        StatusCode::CREATED,
        ApiJson(CreatedKey {
            key: key.into(),
            secret,
        }),
    ))
}

/// List API keys, oldest first (revoked keys included).
#[utoipa::path(get, path = "/v1/keys", tag = "keys", params(ListParams),
    responses((status = 200, body = KeyList), (status = 422, body = Problem, description = "`limit` out of range")))]
async fn list_keys(
    State(keys): State<Arc<KeyStore>>,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<ApiJson<KeyList>, Problem> {
    let limit = crate::api::page_limit(params.limit, 100, 1000)?;
    let page = keys.list(limit as usize, params.cursor.as_deref()).await?;
    Ok(ApiJson(KeyList {
        items: page.items.into_iter().map(Into::into).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// Show one API key.
#[utoipa::path(get, path = "/v1/keys/{id}", tag = "keys", params(KeyPath),
    responses((status = 200, body = KeyView), (status = 404, body = Problem)))]
async fn get_key(
    State(keys): State<Arc<KeyStore>>,
    ApiPath(KeyPath { id }): ApiPath<KeyPath>,
) -> Result<ApiJson<KeyView>, Problem> {
    keys.get(&id)
        .await?
        .map(|k| ApiJson(k.into()))
        .ok_or_else(|| not_found(&id))
}

/// Revoke an API key. Takes effect on the next request that uses it, on every node.
#[utoipa::path(delete, path = "/v1/keys/{id}", tag = "keys", params(KeyPath),
    responses((status = 200, body = KeyView), (status = 404, body = Problem)))]
async fn revoke_key(
    State(keys): State<Arc<KeyStore>>,
    ApiPath(KeyPath { id }): ApiPath<KeyPath>,
) -> Result<ApiJson<KeyView>, Problem> {
    let key = keys.revoke(&id).await?.ok_or_else(|| not_found(&id))?;
    tracing::info!(key_id = %key.id, "api key revoked");
    Ok(ApiJson(key.into()))
}

fn not_found(id: &str) -> Problem {
    Problem::not_found(format!("no API key with id `{id}`"))
}
