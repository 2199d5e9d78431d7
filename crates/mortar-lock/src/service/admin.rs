//! An operator's force-release: ends a lock's leases (every holder, or one holder of a
//! semaphore) without their holders' consent, and hands the freed permits to the line.

use mortar_core::FieldError;

use super::{LockService, unavailable};
use crate::engine::Holder;
use crate::error::LockError;

/// Longest `reason` accepted, in characters (as JSON Schema's `maxLength` counts).
pub const MAX_REASON: usize = 1024;

/// Longest `lease_id` accepted, in characters (a lease id is a 26-character ULID).
pub const MAX_LEASE_ID: usize = 256;

/// What a force-release ends, and why.
#[derive(Debug, Clone, Default)]
pub struct ForceRelease {
    /// Only this lease (one holder of a semaphore); every holder when `None`.
    pub lease_id: Option<String>,
    /// Why, for the log (at most [`MAX_REASON`] characters).
    pub reason: Option<String>,
    /// Who asked, for the log: an API key's name, `admin` or `anonymous`.
    pub by: String,
}

impl LockService {
    /// Ends `name`'s live leases by force (the one `req.lease_id` names, or every one), as if
    /// they had expired: their renewals answer 410 and their releases too, the fencing counter
    /// is untouched (the next grant's token is larger), and the waiters in line are woken as
    /// after a release. Returns the ended leases; [`LockError::NotHeld`] when none matched.
    pub async fn force_release(
        &self,
        name: &str,
        req: &ForceRelease,
    ) -> Result<Vec<Holder>, LockError> {
        let mut errors = Vec::new();
        if let Err(e) = super::check_name(name) {
            errors.push(e);
        }
        if req
            .reason
            .as_ref()
            .is_some_and(|r| r.chars().count() > MAX_REASON)
        {
            errors.push(FieldError::new(
                "reason",
                format!("must be at most {MAX_REASON} characters"),
            ));
        }
        if let Some(id) = &req.lease_id
            && (id.is_empty() || id.chars().count() > MAX_LEASE_ID)
        {
            errors.push(FieldError::new(
                "lease_id",
                format!(
                    "must be 1 to {MAX_LEASE_ID} characters (leave it out to release every holder)"
                ),
            ));
        }
        if !errors.is_empty() {
            return Err(LockError::Invalid(errors));
        }
        let evicted = self
            .store
            .force_release(name, req.lease_id.as_deref())
            .await
            .map_err(unavailable)?;
        if evicted.is_empty() {
            return Err(LockError::NotHeld {
                name: name.to_owned(),
                lease_id: req.lease_id.clone(),
            });
        }
        self.wake(name);
        metrics::counter!(super::FORCED).increment(evicted.len() as u64);
        // Debug formatting quotes and escapes: a reason cannot forge log lines. Lease ids
        // stay out of the log (they are the holders' credentials).
        let owners: Vec<&str> = evicted.iter().map(|h| h.owner.as_str()).collect();
        let tokens: Vec<u64> = evicted.iter().map(|h| h.token).collect();
        tracing::warn!(
            lock = name,
            reason = ?req.reason.as_deref().unwrap_or(""),
            by = ?req.by,
            evicted = ?owners,
            fencing_tokens = ?tokens,
            "lock: force-released"
        );
        Ok(evicted)
    }
}
