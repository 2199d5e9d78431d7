//! The configuration service: writes (CAS, validation, one revision each), effective reads,
//! history, rollback, schemas, and the node's history follower and compaction.

mod read;
mod schema;
pub mod secret;
mod settings;
mod write;

use std::collections::BTreeMap;
use std::sync::Arc;

use mortar_core::clock::Clock;
use mortar_core::problem::{FieldError, Problem};
use mortar_core::storage::{Durable, Storage};
use mortar_core::watch::Hub;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::engine::{self, SCOPE_NAME};
use crate::store::ConfigStore;
pub use settings::{Settings, migrations};

/// One operation of a change set.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Op {
    /// `set` or `delete`.
    pub op: OpKind,
    /// A dotted path of letters, digits, `_`, `-` (1 to 256 characters).
    #[schema(pattern = r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$", max_length = 256)]
    pub key: String,
    /// The value to set (any JSON); absent for `delete`.
    #[serde(default)]
    #[schema(value_type = Option<serde_json::Value>)]
    pub value: Option<Value>,
    /// `set`: store the value encrypted and show it as `"***"` without the `config:secrets`
    /// scope. Absent: as the key is now (a new key is not secret).
    #[serde(default)]
    pub secret: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    Set,
    Delete,
}

/// What a write expects to find.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    Anything,
    /// The key's revision (0: the key does not exist).
    Key(i64),
    /// The environment's newest revision (0: nothing was ever written to it).
    Env(i64),
}

/// Who makes a change and why (kept in the history).
#[derive(Debug, Clone, Copy)]
pub struct Author<'a> {
    /// An API key's name, `admin`, or `anonymous` when auth is off.
    pub principal: &'a str,
    pub message: &'a str,
}

/// A write's answer.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Written {
    /// The new revision.
    pub revision: i64,
    pub namespace: String,
    pub environment: String,
    /// The keys it changed.
    pub keys: Vec<String>,
}

/// An effective value.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Entry {
    #[schema(value_type = serde_json::Value)]
    pub value: Value,
    /// The environment of the chain it came from.
    pub env: String,
    /// The revision that last changed it there.
    pub revision: i64,
    /// A secret: `value` is `"***"` unless the caller has the `config:secrets` scope.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub secret: bool,
}

/// One key's effective value, and the revision the read reflects.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct KeyValue {
    pub key: String,
    #[serde(flatten)]
    pub entry: Entry,
    /// The newest revision when it was read.
    pub as_of: i64,
}

/// Every effective value of an environment.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Values {
    pub namespace: String,
    pub environment: String,
    /// The revision these values reflect.
    pub revision: i64,
    /// The chain the values come from, nearest first.
    pub chain: Vec<String>,
    pub values: BTreeMap<String, Entry>,
}

/// One change in the history.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Change {
    pub revision: i64,
    pub key: String,
    /// `set` or `delete`.
    pub op: OpKind,
    #[schema(value_type = Option<serde_json::Value>)]
    pub value: Option<Value>,
    #[schema(value_type = Option<serde_json::Value>)]
    pub previous: Option<Value>,
    /// RFC 6902 JSON Patch from the previous value to this one.
    #[schema(value_type = Vec<Object>)]
    pub diff: Value,
    /// Who: an API key's name, or `admin`.
    pub principal: String,
    pub message: String,
    /// RFC 3339.
    pub at: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Precondition(String),
    #[error("invalid")]
    Invalid(Vec<FieldError>),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unavailable(Problem),
}

impl From<ConfigError> for Problem {
    fn from(e: ConfigError) -> Self {
        match e {
            ConfigError::NotFound(m) => Problem::not_found(m),
            ConfigError::Precondition(m) => Problem::new(
                http::StatusCode::PRECONDITION_FAILED,
                "precondition-failed",
                "Precondition failed",
                m,
            ),
            ConfigError::Invalid(errors) => Problem::validation(errors),
            ConfigError::TooLarge(m) => Problem::new(
                http::StatusCode::PAYLOAD_TOO_LARGE,
                "too-large",
                "Value too large",
                m,
            ),
            ConfigError::Conflict(m) => Problem::conflict(m),
            ConfigError::Unavailable(p) => p,
        }
    }
}

pub struct ConfigService {
    store: ConfigStore,
    /// `[config] secret_key`, when set.
    sealer: Option<Arc<secret::Sealer>>,
    settings: Settings,
    clock: Arc<dyn Clock>,
    hub: Arc<Hub>,
    schemas: Arc<schema::Schemas>,
    /// Wakes the node's history follower after a local write.
    pub(crate) written: Arc<tokio::sync::Notify>,
    /// Environments watched on this node.
    pub(crate) watched: crate::follow::Watched,
}

impl std::fmt::Debug for ConfigService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigService").finish_non_exhaustive()
    }
}

impl ConfigService {
    /// The service; `settings` must have passed [`Settings::validate`] (a bad `secret_key` is
    /// treated as none).
    pub fn new(storage: &Storage, settings: &Settings, clock: Arc<dyn Clock>) -> Arc<Self> {
        let sealer = settings
            .secret_key
            .as_deref()
            .and_then(|k| secret::Sealer::new(k).ok())
            .map(Arc::new);
        Arc::new(Self {
            store: ConfigStore::new(storage.durable.clone()),
            sealer,
            settings: settings.clone(),
            clock,
            hub: storage.hub.clone(),
            schemas: Arc::default(),
            written: Arc::default(),
            watched: crate::follow::Watched::default(),
        })
    }

    /// Starts the node's history follower and compaction.
    pub fn spawn(self: &Arc<Self>) {
        tokio::spawn(crate::follow::run(self.clone()));
        tokio::spawn(compact(self.clone()));
    }

    pub(crate) fn now_ms(&self) -> i64 {
        self.clock.now_ms() as i64
    }

    pub fn store(&self) -> &ConfigStore {
        &self.store
    }

    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub(crate) fn sealer(&self) -> Option<&secret::Sealer> {
        self.sealer.as_deref()
    }

    fn durable(&self) -> &Durable {
        self.store.durable()
    }

    pub(crate) fn db_error(&self) -> impl Fn(sqlx::Error) -> ConfigError + '_ {
        move |e| {
            let dep = self.durable().failed("config", &e);
            ConfigError::Unavailable(Problem::unavailable(
                dep,
                format!("{dep} did not answer; retry shortly"),
            ))
        }
    }

    /// The chain of `env`.
    pub fn chain(&self, env: &str) -> Vec<String> {
        engine::chain(env, &self.settings.environments)
    }
}

/// Compacts the history every `compact_every_ms`, keeping `history_keep` revisions in full.
async fn compact(svc: Arc<ConfigService>) {
    let stopping = svc.hub.stopping.clone();
    let every = std::time::Duration::from_millis(svc.settings.compact_every_ms);
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = stopping.wait() => return,
        }
        let keep = i64::try_from(svc.settings.history_keep).unwrap_or(i64::MAX);
        match svc.store.head().await {
            Ok((head, floor)) if head - keep > floor => {
                match svc.store.compact(head - keep).await {
                    Ok(n) => tracing::debug!(
                        removed = n,
                        floor = head - keep,
                        "config: history compacted"
                    ),
                    Err(e) => tracing::warn!(error = %e, "config: compacting the history failed"),
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "config: reading the head revision failed"),
        }
    }
}

/// Names of a namespace and an environment.
pub(crate) fn check_scope(ns: &str, env: &str) -> Vec<FieldError> {
    let mut errors = Vec::new();
    for (field, v) in [("namespace", ns), ("environment", env)] {
        if let Err(e) = SCOPE_NAME.check(field, v) {
            errors.push(e);
        }
    }
    if engine::RESERVED_ENVS.contains(&env) {
        errors.push(FieldError::new(
            "environment",
            format!("`{env}` is reserved (it names a route)"),
        ));
    }
    errors
}
