//! What a handler returns: a result, or a `JobError` (retryable or fatal).

use std::time::Duration;

use serde_json::Value;

/// What a handler returns: an optional JSON result, or why the attempt failed.
pub type HandlerResult = Result<Option<Value>, JobError>;

/// A failed attempt: retried (with the job's backoff, or after `retry_in`) or, when not
/// retryable, dead at once. Any `std::error::Error` converts to a retryable one, so `?` works.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobError {
    message: String,
    retryable: bool,
    retry_in: Option<Duration>,
}

impl JobError {
    /// A failure worth retrying (the job's backoff schedule applies).
    pub fn retryable(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: true,
            retry_in: None,
        }
    }

    /// A failure retrying will not fix: the job goes to the dead-letter queue.
    pub fn fatal(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: false,
            retry_in: None,
        }
    }

    /// Retry after `delay` instead of the backoff schedule.
    #[must_use]
    pub fn retry_in(mut self, delay: Duration) -> Self {
        self.retry_in = Some(delay);
        self
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn is_retryable(&self) -> bool {
        self.retryable
    }

    pub fn retry_delay(&self) -> Option<Duration> {
        self.retry_in
    }
}

impl std::fmt::Display for JobError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for JobError {
    fn from(e: E) -> Self {
        Self::retryable(e.to_string())
    }
}
