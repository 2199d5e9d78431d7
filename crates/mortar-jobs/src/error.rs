//! The block's errors; mapped to problems in `api.rs`.

use mortar_core::FieldError;

#[derive(Debug, thiserror::Error)]
pub enum JobsError {
    #[error("invalid request")]
    Invalid(Vec<FieldError>),
    #[error("no job `{0}`")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0} is unavailable")]
    Unavailable(String),
}
