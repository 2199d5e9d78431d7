//! The block's errors. Mapping to problem+json happens in `api.rs`.

use mortar_core::FieldError;

use crate::store::LockInfo;

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("invalid request")]
    Invalid(Vec<FieldError>),
    /// Held (and `wait_ms` ran out, or was 0).
    #[error("lock `{}` is held", .0.name)]
    Busy(Box<LockInfo>),
    #[error("lock `{name}` has {existing} permits while in use; asked for {asked}")]
    PermitsMismatch {
        name: String,
        existing: u32,
        asked: u32,
    },
    /// The lease expired or was released (or never existed).
    #[error("lease `{lease_id}` on `{name}` is gone (expired, released or unknown)")]
    LeaseLost { name: String, lease_id: String },
    /// A force-release found nothing live to end.
    #[error("{}", match .lease_id {
        Some(id) => format!("lease `{id}` does not hold lock `{name}` (expired, released or unknown)"),
        None => format!("nobody holds lock `{name}`: nothing to release"),
    })]
    NotHeld {
        name: String,
        lease_id: Option<String>,
    },
    #[error("{0} is unavailable")]
    Unavailable(String),
    /// The node began to shut down while the request waited in line (it left the line).
    #[error("the node is shutting down")]
    ShuttingDown,
}
