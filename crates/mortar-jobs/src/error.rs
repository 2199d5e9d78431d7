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
    /// A call on an attempt that ran past its deadline (`timeout_ms`): the attempt failed as
    /// timed out.
    #[error("{0}")]
    TimedOut(String),
    /// A call on an attempt whose job was cancelled while it ran.
    #[error("{0}")]
    Cancelled(String),
    #[error("{0} is unavailable")]
    Unavailable(String),
}
