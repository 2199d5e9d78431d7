//! Reads: effective values (secrets opened for callers who may see them, `"***"` otherwise),
//! one key, history with diffs, namespaces and environments, schemas.

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

use mortar_core::api::Page;
use mortar_core::problem::FieldError;

use super::{
    Change, ConfigError, ConfigService, Entry, KeyValue, OpKind, Values, check_scope, secret,
};
use crate::engine::{self, BASE};
use crate::store::{ChangeRow, ValueRow};

impl ConfigService {
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

    /// Every effective value of `env`; secrets opened when `reveal`, else `"***"`.
    pub async fn values(&self, ns: &str, env: &str, reveal: bool) -> Result<Values, ConfigError> {
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
            values: self.effective_entries(ns, rows, &chain, reveal),
            chain,
        })
    }

    /// One key's effective value in `env`.
    pub async fn get(
        &self,
        ns: &str,
        env: &str,
        key: &str,
        reveal: bool,
    ) -> Result<KeyValue, ConfigError> {
        if let Some(why) = engine::key_problem(key) {
            return Err(ConfigError::Invalid(vec![FieldError::new("key", why)]));
        }
        let values = self.values(ns, env, reveal).await?;
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
        reveal: bool,
    ) -> Result<Page<Change>, ConfigError> {
        self.readable(ns, env).await?;
        let rows = self
            .store
            .history(ns, env, key, before.unwrap_or(i64::MAX), limit + 1)
            .await
            .map_err(self.db_error())?;
        Ok(
            Page::from_overfetch(rows, limit, |r| r.revision.to_string())
                .map(|r| change(r, self.sealer(), reveal)),
        )
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
}

impl ConfigService {
    /// Effective entries from stored rows of a chain's environments.
    fn effective_entries(
        &self,
        ns: &str,
        rows: Vec<ValueRow>,
        chain: &[String],
        reveal: bool,
    ) -> BTreeMap<String, Entry> {
        let mut layers: HashMap<String, BTreeMap<String, ValueRow>> = HashMap::new();
        for r in rows {
            layers
                .entry(r.env.clone())
                .or_default()
                .insert(r.key.clone(), r);
        }
        engine::effective(&layers, chain)
            .into_iter()
            .map(|(k, e)| {
                let row = e.value;
                let aad = secret::aad(ns, &row.env, &k);
                let value = secret::shown(self.sealer(), &row.value, row.secret, reveal, &aad);
                let entry = Entry {
                    value,
                    env: e.env,
                    revision: row.revision,
                    secret: row.secret,
                };
                (k, entry)
            })
            .collect()
    }
}

/// Stored values with every secret opened (what schemas validate); one that does not open reads
/// as `null`.
pub(super) fn opened(
    values: &HashMap<String, BTreeMap<String, ValueRow>>,
    ns: &str,
    sealer: Option<&secret::Sealer>,
) -> HashMap<String, BTreeMap<String, ValueRow>> {
    let mut out = values.clone();
    for row in out
        .values_mut()
        .flat_map(BTreeMap::values_mut)
        .filter(|r| r.secret)
    {
        let aad = secret::aad(ns, &row.env, &row.key);
        row.value = sealer
            .and_then(|s| s.open(&row.value, &aad))
            .unwrap_or_else(|| "null".into());
    }
    out
}

/// A history row as the API shows it (a secret's values opened when `reveal`, else `"***"`).
pub(crate) fn change(r: ChangeRow, sealer: Option<&secret::Sealer>, reveal: bool) -> Change {
    let aad = secret::aad(&r.ns, &r.env, &r.key);
    let show = |t: &Option<String>| {
        t.as_deref()
            .map(|t| secret::shown(sealer, t, r.secret, reveal, &aad))
    };
    let (value, previous) = (show(&r.value), show(&r.prev));
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
