//! RFC 9457 problem details: the one error body Mortar ever sends.

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use serde::Serialize;

/// The media type of every error response.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Base of the `type` URIs; each problem kind has a stable slug under it.
pub const TYPE_BASE: &str = "https://mortar.dev/problems/";

/// An RFC 9457 problem. Build one with a constructor, refine it with the `with_*` methods and
/// return it from a handler: it renders as `application/problem+json` with its status.
///
/// A problem may carry extra members specific to its kind (`dependency` on a 503, `line` and
/// `column` on malformed JSON, `holders` on a held lock, every check field on a 429, …).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// A URI naming the kind of problem.
    #[serde(rename = "type")]
    pub kind: String,
    /// A short, human-readable summary of the kind of problem.
    pub title: String,
    /// The HTTP status code.
    #[schema(minimum = 400, maximum = 599)]
    pub status: u16,
    /// What went wrong this time and what to do about it.
    pub detail: String,
    /// Field-level validation errors.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// Extra members specific to the problem kind (documented as additional properties).
    #[serde(flatten, skip_serializing_if = "serde_json::Map::is_empty")]
    #[schema(ignore)]
    pub extensions: serde_json::Map<String, serde_json::Value>,
    /// Seconds to put in `Retry-After` (429, 503).
    #[serde(skip)]
    pub retry_after_secs: Option<u64>,
    /// Extra response headers (e.g. `WWW-Authenticate`, `Allow`).
    #[serde(skip)]
    pub headers: Vec<(header::HeaderName, HeaderValue)>,
}

/// One invalid field: where (a JSON path such as `policies[0].limit`) and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl Problem {
    /// A problem with an explicit status, type slug, title and detail.
    pub fn new(status: StatusCode, slug: &str, title: &str, detail: impl Into<String>) -> Self {
        Self {
            kind: format!("{TYPE_BASE}{slug}"),
            title: title.to_owned(),
            status: status.as_u16(),
            detail: detail.into(),
            errors: Vec::new(),
            extensions: serde_json::Map::new(),
            retry_after_secs: None,
            headers: Vec::new(),
        }
    }

    /// A problem for a bare status, titled with the status's reason phrase.
    pub fn from_status(status: StatusCode, detail: impl Into<String>) -> Self {
        let title = status
            .canonical_reason()
            .unwrap_or("error")
            .to_ascii_lowercase();
        let slug = title.replace(' ', "-");
        Self::new(status, &slug, &title, detail)
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "bad-request",
            "bad request",
            detail,
        )
    }

    /// 400 with field errors: the body had the wrong shape (types, missing fields).
    pub fn invalid_body(errors: Vec<FieldError>) -> Self {
        let detail = summarize(&errors);
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid-body",
            "invalid request body",
            detail,
        )
        .with_errors(errors)
    }

    /// 422 with field errors: well-formed input that breaks a rule (range, format, relation).
    pub fn validation(errors: Vec<FieldError>) -> Self {
        let detail = summarize(&errors);
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation",
            "validation failed",
            detail,
        )
        .with_errors(errors)
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", "not found", detail)
    }

    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", "conflict", detail)
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "unauthorized",
            detail,
        )
        .with_header(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", "forbidden", detail)
    }

    /// 503 naming the dependency that is down.
    pub fn unavailable(dependency: &str, detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "dependency-unavailable",
            "dependency unavailable",
            detail,
        )
        .with_extension("dependency", dependency)
        .with_retry_after(1)
    }

    /// 500 for a bug on our side. The detail never carries internals; they go to the log.
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
            "the server hit an unexpected error; it has been logged",
        )
    }

    #[must_use]
    pub fn with_errors(mut self, errors: Vec<FieldError>) -> Self {
        self.errors = errors;
        self
    }

    #[must_use]
    pub fn with_extension(mut self, key: &str, value: impl Into<serde_json::Value>) -> Self {
        self.extensions.insert(key.to_owned(), value.into());
        self
    }

    #[must_use]
    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(secs);
        self
    }

    #[must_use]
    pub fn with_header(mut self, name: header::HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    pub fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

fn summarize(errors: &[FieldError]) -> String {
    match errors {
        [] => "the request is invalid".to_owned(),
        [one] => format!("{}: {}", one.field, one.message),
        [first, rest @ ..] => {
            format!(
                "{}: {} (and {} more)",
                first.field,
                first.message,
                rest.len()
            )
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status, self.title, self.detail)
    }
}

impl std::error::Error for Problem {}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self.status_code();
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut res = (status, body).into_response();
        let headers = res.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(secs) = self.retry_after_secs {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        for (name, value) in self.headers {
            headers.insert(name, value);
        }
        res
    }
}

/// How problems appear in the OpenAPI document.
///
/// Handlers annotate their own outcomes (`(status = 404, body = Problem)`); [`complete`] then
/// turns every such response into `application/problem+json` and adds the answers the shared
/// layers give on any route — the extractors' 400/413/415, the auth middleware's 401/403, the
/// 503 of a dependency that is down, and the idempotency layer's 409/422 on operations that take
/// `Idempotency-Key` — so no route documents them by hand and none can forget them.
pub mod openapi {
    use utoipa::openapi::path::{Operation, ParameterIn};
    use utoipa::openapi::request_body::RequestBody;
    use utoipa::openapi::security::SecurityRequirement;
    use utoipa::openapi::{Content, OpenApi, Ref, RefOr, Response};

    use super::PROBLEM_JSON;
    use crate::auth::{Need, need_for};

    /// The security scheme name protected operations require (an `http` `bearer` scheme).
    pub const BEARER: &str = "bearer";

    /// A response whose body is a [`Problem`](super::Problem) as `application/problem+json`.
    pub fn response(description: impl Into<String>) -> Response {
        let mut res = Response::new(description);
        res.content.insert(
            PROBLEM_JSON.to_owned(),
            Content::new(Some(Ref::from_schema_name("Problem"))),
        );
        res
    }

    /// Completes an assembled document (see the module docs). Idempotent.
    pub fn complete(doc: &mut OpenApi) {
        for (path, item) in &mut doc.paths.paths {
            let ops = [
                (http::Method::GET, &mut item.get),
                (http::Method::PUT, &mut item.put),
                (http::Method::POST, &mut item.post),
                (http::Method::DELETE, &mut item.delete),
                (http::Method::PATCH, &mut item.patch),
                (http::Method::HEAD, &mut item.head),
                (http::Method::OPTIONS, &mut item.options),
                (http::Method::TRACE, &mut item.trace),
            ];
            for (method, op) in ops {
                if let Some(op) = op {
                    complete_operation(&method, path, op);
                }
            }
        }
    }

    fn complete_operation(method: &http::Method, path: &str, op: &mut Operation) {
        for (status, res) in &mut op.responses.responses {
            if let RefOr::T(res) = res {
                as_problem_json(status, res);
            }
        }
        let takes_input = op
            .parameters
            .iter()
            .flatten()
            .any(|p| matches!(p.parameter_in, ParameterIn::Path | ParameterIn::Query));
        let json_body = op.request_body.as_ref().is_some_and(is_json);
        if takes_input || json_body {
            add(
                op,
                400,
                "bad input: malformed JSON, a field or parameter of the wrong type, or a value \
                 out of range",
            );
        }
        if op.request_body.is_some() {
            add(op, 413, "the body is larger than `http.max_body_bytes`");
        }
        if json_body {
            add(op, 415, "the body is not `Content-Type: application/json`");
        }
        let idempotent = op.parameters.iter().flatten().any(|p| {
            p.parameter_in == ParameterIn::Header && p.name.eq_ignore_ascii_case("idempotency-key")
        });
        if idempotent {
            add(
                op,
                409,
                "a request with this Idempotency-Key is still being answered; retry after \
                 `Retry-After`",
            );
            add(
                op,
                422,
                "this Idempotency-Key was used with a different request",
            );
        }
        let need = need_for(method, path);
        if need != Need::Public {
            if op.security.is_none() {
                op.security = Some(vec![SecurityRequirement::new::<_, [&str; 0], &str>(
                    BEARER,
                    [],
                )]);
            }
            add(
                op,
                401,
                "no bearer token, or one that is unknown or revoked",
            );
            if matches!(need, Need::Admin | Need::Block { .. }) {
                add(
                    op,
                    403,
                    "the API key lacks the scope this route needs (or the route is admin-only)",
                );
            }
            add(
                op,
                503,
                "a dependency is down (named in `dependency`) or the node is shutting down; \
                 retry after `Retry-After`",
            );
        }
    }

    /// Adds a problem response for `status` unless the operation documents one.
    fn add(op: &mut Operation, status: u16, description: &str) {
        op.responses
            .responses
            .entry(status.to_string())
            .or_insert_with(|| RefOr::T(response(description)));
    }

    /// A `Problem` body documented as `application/json` (what `body = Problem` gives) becomes
    /// `application/problem+json`; an empty description gets the status's reason phrase.
    fn as_problem_json(status: &str, res: &mut Response) {
        if let Some(i) = res
            .content
            .iter()
            .position(|(ct, c)| ct == "application/json" && is_problem(c))
        {
            let (_, content) = res.content.shift_remove_index(i).expect("index in range");
            res.content.insert(PROBLEM_JSON.to_owned(), content);
        }
        if res.description.is_empty() {
            res.description = status
                .parse::<u16>()
                .ok()
                .and_then(|s| http::StatusCode::from_u16(s).ok())
                .and_then(|s| s.canonical_reason())
                .unwrap_or_default()
                .to_ascii_lowercase();
        }
    }

    fn is_problem(content: &Content) -> bool {
        matches!(&content.schema, Some(RefOr::Ref(r)) if r.ref_location.ends_with("/Problem"))
    }

    fn is_json(body: &RequestBody) -> bool {
        body.content.keys().any(|ct| ct == "application/json")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_rfc9457_members() {
        let p = Problem::validation(vec![FieldError::new("limit", "must be at least 1")]);
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(v["type"], "https://mortar.dev/problems/validation");
        assert_eq!(v["status"], 422);
        assert_eq!(v["detail"], "limit: must be at least 1");
        assert_eq!(v["errors"][0]["field"], "limit");
        assert!(v.get("retry_after_secs").is_none());
    }

    #[test]
    fn response_has_problem_content_type_and_retry_after() {
        let res = Problem::unavailable("redis", "connection refused").into_response();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(res.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
        assert_eq!(res.headers()[header::RETRY_AFTER], "1");
    }

    #[test]
    fn from_status_uses_reason_phrase() {
        let p = Problem::from_status(StatusCode::METHOD_NOT_ALLOWED, "x");
        assert_eq!(p.title, "method not allowed");
        assert!(p.kind.ends_with("method-not-allowed"));
    }
}
