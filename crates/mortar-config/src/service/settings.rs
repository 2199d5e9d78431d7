//! `[config]` in `mortar.toml`: environment chains, limits, history kept; and the migrations.

use std::collections::BTreeMap;

use mortar_core::config::{ConfigError, KeyDoc};
use serde::{Deserialize, Serialize};

use crate::engine;

/// The block's migrations.
pub fn migrations() -> mortar_core::storage::Migrations {
    mortar_core::storage::Migrations {
        block: "config",
        sqlite: sqlx::migrate!("migrations/sqlite"),
        postgres: sqlx::migrate!("migrations/postgres"),
    }
}

/// `[config]` in `mortar.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Environment → the environments it falls back to before `base`
    /// (`prod = ["staging"]`: prod → staging → base). Unlisted environments fall back to
    /// `base`; listed ones can be read before their first write.
    pub environments: BTreeMap<String, Vec<String>>,
    /// Largest value, in bytes of JSON (413 beyond).
    pub max_value_bytes: usize,
    /// Revisions of history kept in full; older superseded changes are compacted (a key's
    /// newest change is always kept). Watchers resuming from before get a reset snapshot.
    pub history_keep: u64,
    /// How often a node compacts the history.
    pub compact_every_ms: u64,
    /// How often a node re-reads the history for changes made on other nodes when no
    /// notification arrived (a safety net; notifications normally arrive at once).
    pub follow_poll_ms: u64,
    /// The key secret values are encrypted with (AES-256-GCM): base64 of 32 random bytes, the
    /// same on every node. Without it, secrets cannot be stored.
    pub secret_key: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            environments: BTreeMap::new(),
            max_value_bytes: 64 * 1024,
            history_keep: 100_000,
            compact_every_ms: 60_000,
            follow_poll_ms: 1_000,
            secret_key: None,
        }
    }
}

impl Settings {
    pub const DOCS: &[KeyDoc] = &[
        KeyDoc::new(
            "config.environments",
            "environment → the environments it falls back to before base, e.g. prod = [\"staging\"]",
        ),
        KeyDoc::new(
            "config.max_value_bytes",
            "largest value in bytes of JSON (413 beyond)",
        ),
        KeyDoc::new(
            "config.history_keep",
            "revisions of history kept in full; older superseded changes are compacted (a key's newest change is always kept)",
        ),
        KeyDoc::new(
            "config.compact_every_ms",
            "how often a node compacts the history",
        ),
        KeyDoc::secret(
            "config.secret_key",
            "base64 of 32 random bytes (`openssl rand -base64 32`), the same on every node: secret values are encrypted with it (AES-256-GCM)",
        ),
        KeyDoc::new(
            "config.follow_poll_ms",
            "how often a node re-reads the history for other nodes' changes when no notification came",
        ),
    ];

    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = engine::chains_problems(&self.environments);
        if self.max_value_bytes == 0 {
            problems.push("max_value_bytes must be above 0".into());
        }
        if let Some(Err(e)) = self.secret_key.as_deref().map(super::secret::Sealer::new) {
            problems.push(e);
        }
        if self.history_keep == 0 || self.compact_every_ms == 0 || self.follow_poll_ms == 0 {
            problems
                .push("history_keep, compact_every_ms and follow_poll_ms must be above 0".into());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError(format!("[config]: {}", problems.join("; "))))
        }
    }
}
