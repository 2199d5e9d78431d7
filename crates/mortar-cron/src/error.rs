//! The block's errors; mapped to problems in `api.rs`.

use mortar_core::FieldError;

#[derive(Debug, thiserror::Error)]
pub enum CronError {
    /// Malformed input (400): an expression, a time zone, a timestamp, a policy name.
    #[error("invalid request")]
    Invalid(Vec<FieldError>),
    /// Well-formed input that breaks a rule (422): end before start, limits.
    #[error("validation failed")]
    Rejected(Vec<FieldError>),
    #[error("no schedule `{0}`")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0} is unavailable")]
    Unavailable(String),
}
