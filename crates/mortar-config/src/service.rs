//! The configuration service: writes (CAS, validation, one revision each), effective reads,
//! history, rollback, schemas, and the node's history follower and compaction.

mod schema;
mod settings;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use mortar_core::api::Page;
use mortar_core::clock::Clock;
use mortar_core::problem::{FieldError, Problem};
use mortar_core::storage::{Durable, Storage};
use mortar_core::watch::Hub;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::engine::{self, BASE, MAX_CHANGES, SCOPE_NAME};
use crate::store::{ChangeRow, ConfigStore, State, ValueRow, Write, WriteError, WriteSet};
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
    #[schema(value_type = Option<Object>)]
    pub value: Option<Value>,
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
    #[schema(value_type = Object)]
    pub value: Value,
    /// The environment of the chain it came from.
    pub env: String,
    /// The revision that last changed it there.
    pub revision: i64,
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
    #[schema(value_type = Option<Object>)]
    pub value: Option<Value>,
    #[schema(value_type = Option<Object>)]
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
    pub fn new(storage: &Storage, settings: &Settings, clock: Arc<dyn Clock>) -> Arc<Self> {
        Arc::new(Self {
            store: ConfigStore::new(storage.durable.clone()),
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

    /// Sets one key.
    pub async fn put(
        &self,
        ns: &str,
        env: &str,
        key: &str,
        value: Value,
        expect: Expect,
        by: Author<'_>,
    ) -> Result<Written, ConfigError> {
        let op = Op {
            op: OpKind::Set,
            key: key.to_owned(),
            value: Some(value),
        };
        self.apply(ns, env, vec![op], expect, by).await
    }

    /// Deletes one key (404 when it is not set in `env`).
    pub async fn delete(
        &self,
        ns: &str,
        env: &str,
        key: &str,
        expect: Expect,
        by: Author<'_>,
    ) -> Result<Written, ConfigError> {
        let op = Op {
            op: OpKind::Delete,
            key: key.to_owned(),
            value: None,
        };
        self.apply(ns, env, vec![op], expect, by).await
    }

    /// Applies a change set atomically, as one revision.
    pub async fn apply(
        &self,
        ns: &str,
        env: &str,
        ops: Vec<Op>,
        expect: Expect,
        by: Author<'_>,
    ) -> Result<Written, ConfigError> {
        let planned = self.check_ops(ns, env, ops)?;
        let set = WriteSet {
            ns: ns.to_owned(),
            env: env.to_owned(),
            keys: planned.iter().map(|(k, _)| k.clone()).collect(),
            principal: by.principal.to_owned(),
            message: by.message.to_owned(),
            at_ms: self.clock.now_ms() as i64,
        };
        let configured = self.settings.environments.clone();
        let (env_owned, planned_ops, schemas) = (env.to_owned(), planned, self.schemas.clone());
        let decide = move |state: &State| {
            let writes = decide(&env_owned, &planned_ops, expect, state)?;
            if let Some(text) = &state.schema {
                schemas
                    .compiled(text)?
                    .check_write(state, &env_owned, &writes, &configured)?;
            }
            Ok(writes)
        };
        let (revision, writes) = self.store.write(set, decide).await.map_err(|e| match e {
            WriteError::Refused(e) => e,
            WriteError::Store(e) => self.db_error()(e),
        })?;
        self.written.notify_one();
        crate::follow::ring(self, revision);
        metrics::counter!("mortar_config_writes_total").increment(1);
        Ok(Written {
            revision,
            namespace: ns.to_owned(),
            environment: env.to_owned(),
            keys: writes.into_iter().map(|w| w.key).collect(),
        })
    }

    /// Checks names, keys and sizes; the ops as (key, JSON text or `None` to delete).
    fn check_ops(
        &self,
        ns: &str,
        env: &str,
        ops: Vec<Op>,
    ) -> Result<Vec<(String, Option<String>)>, ConfigError> {
        let mut errors = check_scope(ns, env);
        if ops.is_empty() || ops.len() > MAX_CHANGES {
            errors.push(FieldError::new(
                "ops",
                format!("must hold 1 to {MAX_CHANGES} operations"),
            ));
        }
        let mut out: Vec<(String, Option<String>)> = Vec::with_capacity(ops.len());
        for (i, op) in ops.into_iter().enumerate() {
            let field = |f: &str| format!("ops[{i}].{f}");
            if let Some(why) = engine::key_problem(&op.key) {
                errors.push(FieldError::new(field("key"), why));
            }
            if out.iter().any(|(k, _)| *k == op.key) {
                errors.push(FieldError::new(
                    field("key"),
                    "appears twice in one change set",
                ));
            }
            let value = match (op.op, op.value) {
                (OpKind::Set, Some(v)) => {
                    let text = v.to_string();
                    if text.len() > self.settings.max_value_bytes {
                        return Err(ConfigError::TooLarge(format!(
                            "`{}` is {} bytes of JSON; values may be at most {} ([config] max_value_bytes)",
                            op.key,
                            text.len(),
                            self.settings.max_value_bytes
                        )));
                    }
                    Some(text)
                }
                (OpKind::Set, None) => {
                    errors.push(FieldError::new(field("value"), "`set` needs a value"));
                    None
                }
                (OpKind::Delete, Some(_)) => {
                    errors.push(FieldError::new(field("value"), "`delete` takes no value"));
                    None
                }
                (OpKind::Delete, None) => None,
            };
            out.push((op.key, value));
        }
        if errors.is_empty() {
            Ok(out)
        } else {
            Err(ConfigError::Invalid(errors))
        }
    }

    /// The namespace's environments (404 when the namespace has never been written).
    async fn known_envs(&self, ns: &str) -> Result<BTreeMap<String, i64>, ConfigError> {
        let errors = check_scope(ns, BASE);
        if !errors.is_empty() {
            return Err(ConfigError::Invalid(errors));
        }
        let envs = self.store.envs(ns).await.map_err(self.db_error())?;
        if envs.is_empty() {
            return Err(ConfigError::NotFound(format!(
                "no namespace `{ns}`: a namespace is created by its first write"
            )));
        }
        Ok(envs)
    }

    /// Checks that `env` can be read in `ns`: written to, `base`, or configured.
    pub(crate) async fn readable(&self, ns: &str, env: &str) -> Result<(), ConfigError> {
        let errors = check_scope(ns, env);
        if !errors.is_empty() {
            return Err(ConfigError::Invalid(errors));
        }
        let envs = self.known_envs(ns).await?;
        if env == BASE || envs.contains_key(env) || self.settings.environments.contains_key(env) {
            Ok(())
        } else {
            Err(ConfigError::NotFound(format!(
                "namespace `{ns}` has no environment `{env}` (known: {}); write to it, or configure it in [config.environments]",
                envs.keys().cloned().collect::<Vec<_>>().join(", ")
            )))
        }
    }

    /// Every effective value of `env`.
    pub async fn values(&self, ns: &str, env: &str) -> Result<Values, ConfigError> {
        self.readable(ns, env).await?;
        let chain = self.chain(env);
        let (rows, revision) = self
            .store
            .values(ns, &chain)
            .await
            .map_err(self.db_error())?;
        Ok(Values {
            namespace: ns.to_owned(),
            environment: env.to_owned(),
            revision,
            values: effective_entries(rows, &chain),
            chain,
        })
    }

    /// One key's effective value in `env`.
    pub async fn get(&self, ns: &str, env: &str, key: &str) -> Result<KeyValue, ConfigError> {
        if let Some(why) = engine::key_problem(key) {
            return Err(ConfigError::Invalid(vec![FieldError::new("key", why)]));
        }
        let values = self.values(ns, env).await?;
        let entry = values.values.get(key).cloned().ok_or_else(|| {
            ConfigError::NotFound(format!(
                "`{key}` is not set in `{ns}` for `{env}` nor in the environments it falls back to ({})",
                values.chain.join(" → ")
            ))
        })?;
        Ok(KeyValue {
            key: key.to_owned(),
            entry,
            as_of: values.revision,
        })
    }

    /// The history of `env` (its own changes), newest first, optionally of one key.
    pub async fn history(
        &self,
        ns: &str,
        env: &str,
        key: Option<&str>,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Page<Change>, ConfigError> {
        self.readable(ns, env).await?;
        let rows = self
            .store
            .history(ns, env, key, before.unwrap_or(i64::MAX), limit + 1)
            .await
            .map_err(self.db_error())?;
        Ok(Page::from_overfetch(rows, limit, |r| r.revision.to_string()).map(change))
    }

    /// Restores `env` as it was at `to_revision`, as a new revision.
    pub async fn rollback(
        &self,
        ns: &str,
        env: &str,
        to_revision: i64,
        principal: &str,
    ) -> Result<Written, ConfigError> {
        self.readable(ns, env).await?;
        let (head, floor) = self.store.head().await.map_err(self.db_error())?;
        if to_revision < floor || to_revision > head || to_revision < 0 {
            return Err(ConfigError::Invalid(vec![FieldError::new(
                "to_revision",
                format!(
                    "must be a kept revision, {floor} to {head} (history below {floor} is compacted)"
                ),
            )]));
        }
        let target = self
            .store
            .env_at(ns, env, to_revision)
            .await
            .map_err(self.db_error())?;
        let (current, _) = self
            .store
            .values(ns, &[env.to_owned()])
            .await
            .map_err(self.db_error())?;
        let env_revision = self
            .store
            .envs(ns)
            .await
            .map_err(self.db_error())?
            .get(env)
            .copied()
            .unwrap_or(0);
        let mut ops = Vec::new();
        for row in &current {
            match target.get(&row.key) {
                Some((v, _)) if *v == row.value => {}
                Some(_) => {}
                None => ops.push(Op {
                    op: OpKind::Delete,
                    key: row.key.clone(),
                    value: None,
                }),
            }
        }
        for (key, (value, _)) in &target {
            if current.iter().any(|r| r.key == *key && r.value == *value) {
                continue;
            }
            ops.push(Op {
                op: OpKind::Set,
                key: key.clone(),
                value: Some(serde_json::from_str(value).unwrap_or(Value::Null)),
            });
        }
        if ops.is_empty() {
            return Err(ConfigError::Conflict(format!(
                "`{env}` already holds what it held at revision {to_revision}: nothing to roll back"
            )));
        }
        let message = format!("rollback to revision {to_revision}");
        let by = Author {
            principal,
            message: &message,
        };
        self.apply(ns, env, ops, Expect::Env(env_revision), by)
            .await
    }

    /// Namespaces, by name.
    pub async fn namespaces(
        &self,
        after: &str,
        limit: u32,
    ) -> Result<Page<(String, i64)>, ConfigError> {
        let rows = self
            .store
            .namespaces(after, limit + 1)
            .await
            .map_err(self.db_error())?;
        Ok(Page::from_overfetch(rows, limit, |r| r.0.clone()))
    }

    /// A namespace's environments and their newest revisions.
    pub async fn environments(&self, ns: &str) -> Result<BTreeMap<String, i64>, ConfigError> {
        self.known_envs(ns).await
    }

    /// A namespace's schema.
    pub async fn schema(&self, ns: &str) -> Result<Value, ConfigError> {
        self.known_envs(ns).await?;
        let text = self.store.schema(ns).await.map_err(self.db_error())?;
        let text =
            text.ok_or_else(|| ConfigError::NotFound(format!("namespace `{ns}` has no schema")))?;
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Sets (or with `None` removes) a namespace's schema, refused when a stored value breaks it.
    pub async fn set_schema(
        &self,
        ns: &str,
        schema: Option<Value>,
        principal: &str,
    ) -> Result<(), ConfigError> {
        let errors = check_scope(ns, BASE);
        if !errors.is_empty() {
            return Err(ConfigError::Invalid(errors));
        }
        if schema.as_ref().is_some_and(|s| !s.is_object()) {
            return Err(ConfigError::Invalid(vec![FieldError::new(
                "schema",
                "must be a JSON object (a JSON Schema of the environment's document)",
            )]));
        }
        let validator = schema.as_ref().map(schema::Checker::compile).transpose()?;
        let configured = self.settings.environments.clone();
        let text = schema.map(|s| s.to_string());
        let check = move |values: &HashMap<String, BTreeMap<String, ValueRow>>| match &validator {
            Some(v) => v.check_all(values, &configured),
            None => Ok(()),
        };
        let at = self.clock.now_ms() as i64;
        self.store
            .set_schema(ns, text, principal, at, check)
            .await
            .map_err(|e| match e {
                WriteError::Refused(e) => e,
                WriteError::Store(e) => self.db_error()(e),
            })?;
        Ok(())
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

/// The rows a change set writes, after its expectation is checked against `state`.
fn decide(
    env: &str,
    ops: &[(String, Option<String>)],
    expect: Expect,
    state: &State,
) -> Result<Vec<Write>, ConfigError> {
    let current = state.values.get(env);
    let stored = |key: &str| current.and_then(|c| c.get(key));
    match expect {
        Expect::Anything => {}
        Expect::Key(rev) => {
            let (key, _) = &ops[0];
            let actual = stored(key).map_or(0, |v| v.revision);
            if actual != rev {
                return Err(ConfigError::Precondition(format!(
                    "`{key}` is at revision {actual}, not {rev} (If-Match): read it again and retry"
                )));
            }
        }
        Expect::Env(rev) => {
            let actual = state.envs.get(env).copied().unwrap_or(0);
            if actual != rev {
                return Err(ConfigError::Precondition(format!(
                    "`{env}` is at revision {actual}, not {rev} (expected_revision): read it again and retry"
                )));
            }
        }
    }
    let mut writes = Vec::with_capacity(ops.len());
    for (key, value) in ops {
        let prev = stored(key);
        if value.is_none() && prev.is_none() {
            return Err(ConfigError::NotFound(format!(
                "`{key}` is not set in `{env}`: nothing to delete"
            )));
        }
        writes.push(Write {
            key: key.clone(),
            value: value.clone(),
            prev: prev.map(|p| p.value.clone()),
            secret: false,
        });
    }
    Ok(writes)
}

/// Effective entries from stored rows of a chain's environments.
pub(crate) fn effective_entries(rows: Vec<ValueRow>, chain: &[String]) -> BTreeMap<String, Entry> {
    let mut layers: HashMap<String, BTreeMap<String, (String, i64)>> = HashMap::new();
    for r in rows {
        layers
            .entry(r.env)
            .or_default()
            .insert(r.key, (r.value, r.revision));
    }
    engine::effective(&layers, chain)
        .into_iter()
        .map(|(k, e)| {
            let (text, revision) = e.value;
            let value = serde_json::from_str(&text).unwrap_or(Value::Null);
            (
                k,
                Entry {
                    value,
                    env: e.env,
                    revision,
                },
            )
        })
        .collect()
}

fn parse(text: Option<&str>) -> Option<Value> {
    text.map(|t| serde_json::from_str(t).unwrap_or(Value::Null))
}

/// A history row as the API shows it.
pub(crate) fn change(r: ChangeRow) -> Change {
    let (value, previous) = (parse(r.value.as_deref()), parse(r.prev.as_deref()));
    let diff = serde_json::to_value(json_patch::diff(
        previous.as_ref().unwrap_or(&Value::Null),
        value.as_ref().unwrap_or(&Value::Null),
    ))
    .unwrap_or(Value::Null);
    Change {
        revision: r.revision,
        key: r.key,
        op: if value.is_some() {
            OpKind::Set
        } else {
            OpKind::Delete
        },
        value,
        previous,
        diff,
        principal: r.principal,
        message: r.message,
        at: mortar_core::clock::rfc3339(r.at_ms.max(0) as u64),
    }
}
