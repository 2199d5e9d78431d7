//! Writes: one key, change sets, deletes, rollback, schemas — each checked (names, sizes, CAS,
//! the namespace's schema), secrets sealed, and stored as one revision.

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

use mortar_core::problem::FieldError;

use super::{
    Author, ConfigError, ConfigService, Expect, Op, OpKind, Written, check_scope, schema, secret,
};
use crate::engine::{self, BASE, MAX_CHANGES};
use crate::store::{State, ValueRow, Write, WriteError, WriteSet};

impl ConfigService {
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
            secret: None,
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
            secret: None,
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
            keys: planned.iter().map(|p| p.key.clone()).collect(),
            principal: by.principal.to_owned(),
            message: by.message.to_owned(),
            at_ms: self.clock.now_ms() as i64,
        };
        let configured = self.settings.environments.clone();
        let (ns_owned, env_owned) = (ns.to_owned(), env.to_owned());
        let (schemas, sealer) = (self.schemas.clone(), self.sealer.clone());
        let decide = move |state: &State| {
            let mut writes = decide(&env_owned, &planned, expect, state)?;
            if let Some(text) = &state.schema {
                let plain = super::read::opened(&state.values, &ns_owned, sealer.as_deref());
                schemas.compiled(text)?.check_write(
                    &plain,
                    &state.envs,
                    &env_owned,
                    &writes,
                    &configured,
                )?;
            }
            seal(&mut writes, sealer.as_deref(), &ns_owned, &env_owned)?;
            Ok(writes)
        };
        let (revision, writes) = self
            .store
            .write(set, decide)
            .await
            .map_err(self.write_error())?;
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

    /// Checks names, keys and sizes; the ops with their values as JSON text.
    fn check_ops(&self, ns: &str, env: &str, ops: Vec<Op>) -> Result<Vec<Planned>, ConfigError> {
        let mut errors = check_scope(ns, env);
        if ops.is_empty() || ops.len() > MAX_CHANGES {
            errors.push(FieldError::new(
                "ops",
                format!("must hold 1 to {MAX_CHANGES} operations"),
            ));
        }
        let mut out: Vec<Planned> = Vec::with_capacity(ops.len());
        for (i, op) in ops.into_iter().enumerate() {
            let field = |f: &str| format!("ops[{i}].{f}");
            if let Some(why) = engine::key_problem(&op.key) {
                errors.push(FieldError::new(field("key"), why));
            }
            if op.secret == Some(true) && self.sealer.is_none() {
                errors.push(FieldError::new(field("secret"), NO_KEY));
            }
            if out.iter().any(|p| p.key == op.key) {
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
            out.push(Planned {
                key: op.key,
                value,
                secret: op.secret,
            });
        }
        if errors.is_empty() {
            Ok(out)
        } else {
            Err(ConfigError::Invalid(errors))
        }
    }

    /// A write's failure as the caller sees it: the refusal, or the store's 503.
    fn write_error(&self) -> impl Fn(WriteError<ConfigError>) -> ConfigError + '_ {
        move |e| match e {
            WriteError::Refused(e) => e,
            WriteError::Store(e) => self.db_error()(e),
        }
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
        // Compared and restored as plaintext (a secret is sealed afresh).
        let plain = |key: &str, text: &str, secret: bool| -> Result<String, ConfigError> {
            if !secret {
                return Ok(text.to_owned());
            }
            self.sealer()
                .and_then(|s| s.open(text, &secret::aad(ns, env, key)))
                .ok_or_else(|| {
                    ConfigError::Conflict(format!(
                        "`{key}` is a secret this node's [config] secret_key cannot open"
                    ))
                })
        };
        let mut now: BTreeMap<String, (String, bool)> = BTreeMap::new();
        for row in &current {
            now.insert(
                row.key.clone(),
                (plain(&row.key, &row.value, row.secret)?, row.secret),
            );
        }
        let mut ops = Vec::new();
        for key in now.keys().filter(|k| !target.contains_key(*k)) {
            ops.push(Op {
                op: OpKind::Delete,
                key: key.clone(),
                value: None,
                secret: None,
            });
        }
        for (key, (text, secret)) in &target {
            let text = plain(key, text, *secret)?;
            if now.get(key).is_some_and(|(t, s)| *t == text && s == secret) {
                continue;
            }
            ops.push(Op {
                op: OpKind::Set,
                key: key.clone(),
                value: Some(serde_json::from_str(&text).unwrap_or(Value::Null)),
                secret: Some(*secret),
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
        let (ns_owned, sealer) = (ns.to_owned(), self.sealer.clone());
        let check = move |values: &HashMap<String, BTreeMap<String, ValueRow>>| match &validator {
            Some(v) => v.check_all(
                &super::read::opened(values, &ns_owned, sealer.as_deref()),
                &configured,
            ),
            None => Ok(()),
        };
        let at = self.clock.now_ms() as i64;
        self.store
            .set_schema(ns, text, principal, at, check)
            .await
            .map_err(self.write_error())?;
        Ok(())
    }
}

/// What a secret write needs and a node lacks.
const NO_KEY: &str = "this node has no [config] secret_key: secrets cannot be stored (set it, the same on every node)";

/// One op of a change set, checked.
pub(super) struct Planned {
    key: String,
    /// JSON text; `None` deletes.
    value: Option<String>,
    secret: Option<bool>,
}

/// The rows a change set writes (values as plaintext), after its expectation is checked against
/// `state`.
fn decide(
    env: &str,
    ops: &[Planned],
    expect: Expect,
    state: &State,
) -> Result<Vec<Write>, ConfigError> {
    let current = state.values.get(env);
    let stored = |key: &str| current.and_then(|c| c.get(key));
    match expect {
        Expect::Anything => {}
        Expect::Key(rev) => {
            let key = &ops[0].key;
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
    for op in ops {
        let prev = stored(&op.key);
        if op.value.is_none() && prev.is_none() {
            return Err(ConfigError::NotFound(format!(
                "`{}` is not set in `{env}`: nothing to delete",
                op.key
            )));
        }
        let was_secret = prev.is_some_and(|p| p.secret);
        let secret = op.value.is_some() && op.secret.unwrap_or(was_secret);
        writes.push(Write {
            key: op.key.clone(),
            value: op.value.clone(),
            prev: prev.map(|p| p.value.clone()),
            secret,
            masked: secret || was_secret,
        });
    }
    Ok(writes)
}

/// Seals the values of secret writes for `(ns, env, key)`.
fn seal(
    writes: &mut [Write],
    sealer: Option<&secret::Sealer>,
    ns: &str,
    env: &str,
) -> Result<(), ConfigError> {
    for w in writes.iter_mut().filter(|w| w.secret) {
        let Some(sealer) = sealer else {
            return Err(ConfigError::Invalid(vec![FieldError::new(
                w.key.clone(),
                NO_KEY,
            )]));
        };
        if let Some(v) = &w.value {
            w.value = Some(sealer.seal(v, &secret::aad(ns, env, &w.key)));
        }
    }
    Ok(())
}
