//! The storage contract: the only thing a backend implements.

pub mod memory;
pub mod redis;

use futures_util::future::BoxFuture;

use crate::engine::{Decision, Limit};

/// One policy applied to one key.
#[derive(Debug, Clone, Copy)]
pub struct Check<'a> {
    pub policy: &'a str,
    pub limit: Limit,
    pub key: &'a str,
}

pub use mortar_core::storage::sql::StoreError;

/// Where rate-limit state lives.
///
/// Contract (checked by the conformance suite in `tests/conformance.rs` for every backend):
/// * `check` decides every check at one instant and takes `cost` units from **all** of them
///   only if **all** allow — never a partial consumption, even under concurrency;
/// * `cost` 0 peeks: decisions without consuming;
/// * decisions are exactly those of [`crate::engine::decide`] for the same times;
/// * state expires by itself once it no longer matters (`engine::ttl_ms`);
/// * `reset` forgets a key's state for one policy.
pub trait RateLimitStore: Send + Sync + 'static {
    /// Backend name for metrics and errors (`memory`, `redis`).
    fn name(&self) -> &'static str;

    fn check<'a>(
        &'a self,
        checks: &'a [Check<'a>],
        cost: u64,
    ) -> BoxFuture<'a, Result<Vec<Decision>, StoreError>>;

    /// Decides one check synchronously, without a future or a `Vec`, when the backend can
    /// (the in-process one); `None` means: use [`check`](Self::check).
    fn check_one_now(&self, check: &Check<'_>, cost: u64) -> Option<Decision> {
        let _ = (check, cost);
        None
    }

    fn reset<'a>(&'a self, policy: &'a str, key: &'a str) -> BoxFuture<'a, Result<(), StoreError>>;
}
