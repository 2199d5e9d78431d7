//! The block's errors. Mapping to problem+json happens in `api.rs` only.

use mortar_core::FieldError;

#[derive(Debug, thiserror::Error)]
pub enum RateLimitError {
    #[error("invalid request: {}", .0.iter().map(|e| format!("{}: {}", e.field, e.message)).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<FieldError>),
    #[error("no policy named `{0}`")]
    UnknownPolicy(String),
    #[error("policy `{0}` is defined in mortar.toml; change it there")]
    ConfigPolicy(String),
    #[error("{0} is unavailable")]
    Unavailable(String),
}

impl RateLimitError {
    pub fn field(field: &str, message: impl Into<String>) -> Self {
        RateLimitError::Invalid(vec![FieldError::new(field, message)])
    }
}
