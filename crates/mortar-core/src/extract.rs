//! Extractors whose rejections are problem+json: `ApiJson`, `ApiPath`, `ApiQuery`.
//!
//! axum's own extractors answer bad input with plain text. Handlers use these instead, so a
//! malformed body names the line and column, a wrong type names the field, and an oversized
//! body is a 413 — all as problems.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::request::Parts;
use http::{StatusCode, header};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::problem::{FieldError, Problem};

/// A JSON request body (`Content-Type: application/json` or `…+json`) and a JSON response.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Problem> {
        if !is_json(req.headers()) {
            return Err(Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "unsupported media type",
                "the body must be JSON: send `Content-Type: application/json`",
            ));
        }
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| body_problem(&e))?;
        parse_json(&bytes).map(ApiJson)
    }
}

impl<T: Serialize> IntoResponse for ApiJson<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// Parses a JSON document, mapping syntax errors to 400 with line/column and shape errors
/// (wrong type, missing field, unknown variant) to 400 with the offending field's path.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut *de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            Problem::new(
                StatusCode::BAD_REQUEST,
                "malformed-json",
                "malformed JSON",
                format!(
                    "the body is not valid JSON at line {} column {}: {}",
                    inner.line(),
                    inner.column(),
                    strip_position(&inner.to_string())
                ),
            )
            .with_extension("line", inner.line())
            .with_extension("column", inner.column())
        } else {
            let field = if path == "." { "body".to_owned() } else { path };
            Problem::invalid_body(vec![FieldError::new(
                field,
                strip_position(&inner.to_string()),
            )])
        }
    })?;
    de.end().map_err(|e| {
        Problem::bad_request(format!(
            "trailing characters after the JSON document at line {} column {}",
            e.line(),
            e.column()
        ))
    })?;
    Ok(value)
}

/// Path parameters, with a problem naming the bad segment on failure.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiPath<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Send,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| ApiPath(p.0))
            .map_err(|e| Problem::bad_request(e.body_text()))
    }
}

/// Query parameters, with a problem naming the bad parameter on failure.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Problem> {
        let query = parts.uri.query().unwrap_or_default();
        let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(de)
            .map(ApiQuery)
            .map_err(|err| {
                let field = err.path().to_string();
                Problem::invalid_body(vec![FieldError::new(field, err.into_inner().to_string())])
                    .with_extension("in", "query")
            })
    }
}

fn is_json(headers: &http::HeaderMap) -> bool {
    let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = ct
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

fn body_problem(err: &axum::extract::rejection::BytesRejection) -> Problem {
    let status = err.status();
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        payload_too_large()
    } else {
        Problem::from_status(status, err.body_text())
    }
}

/// The OpenAPI schema of a raw (`application/octet-stream`) body: any bytes.
#[derive(utoipa::ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct Binary(pub Vec<u8>);

/// 413: the body is over `http.max_body_bytes`.
pub fn payload_too_large() -> Problem {
    Problem::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload-too-large",
        "payload too large",
        "the request body is larger than the server accepts (http.max_body_bytes)",
    )
}

/// serde_json appends " at line L column C" to its messages; we report position separately.
fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_owned(),
        None => msg.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Body {
        name: String,
        limit: u32,
        #[serde(default)]
        tags: Vec<String>,
    }

    #[test]
    fn syntax_error_has_line_and_column() {
        let p = parse_json::<Body>(b"{\n  \"name\": \"a\",\n  oops\n}").unwrap_err();
        assert_eq!(p.status, 400);
        assert!(p.kind.ends_with("malformed-json"));
        assert_eq!(p.extensions["line"], 3);
        assert_eq!(p.extensions["column"], 3);
        assert!(p.detail.contains("line 3 column 3"), "{}", p.detail);
    }

    #[test]
    fn wrong_type_names_the_field() {
        let p = parse_json::<Body>(br#"{"name":"a","limit":"ten"}"#).unwrap_err();
        assert_eq!(p.status, 400);
        assert_eq!(p.errors[0].field, "limit");
        assert!(
            p.errors[0].message.contains("invalid type"),
            "{}",
            p.errors[0].message
        );
    }

    #[test]
    fn nested_path_is_reported() {
        let p = parse_json::<Body>(br#"{"name":"a","limit":1,"tags":["x",3]}"#).unwrap_err();
        assert_eq!(p.errors[0].field, "tags[1]");
    }

    #[test]
    fn missing_field_is_reported() {
        let p = parse_json::<Body>(br#"{"name":"a"}"#).unwrap_err();
        assert_eq!(p.status, 400);
        assert!(p.errors[0].message.contains("missing field `limit`"));
    }

    #[test]
    fn empty_body_is_malformed() {
        let p = parse_json::<Body>(b"").unwrap_err();
        assert!(p.kind.ends_with("malformed-json"));
    }

    #[test]
    fn trailing_garbage_is_rejected() {
        let p = parse_json::<Body>(br#"{"name":"a","limit":1} x"#).unwrap_err();
        assert_eq!(p.status, 400);
    }

    #[test]
    fn json_content_types() {
        let mut h = http::HeaderMap::new();
        assert!(!is_json(&h));
        h.insert(
            header::CONTENT_TYPE,
            "application/json; charset=utf-8".parse().unwrap(),
        );
        assert!(is_json(&h));
        h.insert(
            header::CONTENT_TYPE,
            "application/merge-patch+json".parse().unwrap(),
        );
        assert!(is_json(&h));
        h.insert(header::CONTENT_TYPE, "text/plain".parse().unwrap());
        assert!(!is_json(&h));
    }
}
