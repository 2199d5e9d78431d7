//! The block's errors. Mapping to problem+json happens in `api.rs` only.

use mortar_core::FieldError;

use crate::breaker::State;
use crate::permits::MAX_IN_FLIGHT;

#[derive(Debug, thiserror::Error)]
pub enum ResilienceError {
    #[error("invalid request: {}", .0.iter().map(|e| format!("{}: {}", e.field, e.message)).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<FieldError>),
    #[error("no circuit breaker named `{0}`")]
    NotFound(String),
    /// The breaker exists on this node for a block, with default settings, but has no
    /// definition to delete.
    #[error(
        "circuit breaker `{0}` was not created through the API (a block of this node uses it with \
         default settings): there is no definition to delete"
    )]
    NotDefined(String),
    #[error(
        "circuit breaker `{0}` is defined in mortar.toml and is read-only through the API; change it there"
    )]
    ConfigBreaker(String),
    /// The breaker does not admit the call now.
    #[error("circuit breaker `{name}` is {}", state.as_str())]
    Rejected {
        name: String,
        state: State,
        retry_after_ms: u64,
    },
    #[error(transparent)]
    Permit(#[from] PermitError),
    /// As many permits as a breaker may have in flight are unrecorded.
    #[error(
        "circuit breaker `{0}` has {MAX_IN_FLIGHT} permits in flight: record (or cancel) them, or \
         let them expire, before acquiring more"
    )]
    TooManyPermits(String),
    /// A dependency (`postgres`, `sqlite`, `redis`) did not answer.
    #[error("{0} is unavailable")]
    Unavailable(&'static str),
}

impl ResilienceError {
    pub fn field(field: &str, message: impl Into<String>) -> Self {
        ResilienceError::Invalid(vec![FieldError::new(field, message)])
    }
}

/// Why a permit handed to `/record` cannot be recorded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PermitError {
    #[error("`{0}` is not a permit: use the `permit` that /acquire returned")]
    Malformed(String),
    #[error("the permit was issued for circuit breaker `{0}`: record it there")]
    OtherBreaker(String),
    #[error(
        "the permit was issued by another node, or by this node before it restarted: breakers are \
         per node, so record on the node that answered /acquire (or define the breaker with \
         shared = true, where any node records any permit)"
    )]
    OtherNode,
    #[error(
        "the permit expired: it was not recorded within {ttl_ms} ms (the breaker's slow_call_ms \
         plus 60 s) and counted as nothing"
    )]
    Expired { ttl_ms: u64 },
    #[error("the permit was already recorded: a permit records one outcome")]
    Used,
    #[error(
        "the permit is a shared breaker's, but circuit breaker `{0}` is not shared (its \
         definition changed since /acquire, or this node has no Redis)"
    )]
    NotShared(String),
}
