//! Namespace schemas: JSON Schema (draft 2020-12, no network or file resolution) over each
//! environment's effective document, an object whose properties are the keys.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use mortar_core::problem::FieldError;
use serde_json::{Map, Value};

use super::ConfigError;
use crate::engine;
use crate::store::{ValueRow, Write};

/// A compiled schema.
pub(crate) struct Checker {
    validator: jsonschema::Validator,
}

impl Checker {
    pub fn compile(schema: &Value) -> Result<Self, ConfigError> {
        jsonschema::draft202012::options()
            .build(schema)
            .map(|validator| Self { validator })
            .map_err(|e| {
                ConfigError::Invalid(vec![FieldError::new(
                    "schema",
                    format!(
                        "not a usable JSON Schema (draft 2020-12; references must be local): {e}"
                    ),
                )])
            })
    }

    /// Validates the effective document of every environment `write` to `env` reaches.
    pub fn check_write(
        &self,
        values: &HashMap<String, BTreeMap<String, ValueRow>>,
        envs: &BTreeMap<String, i64>,
        env: &str,
        writes: &[Write],
        configured: &BTreeMap<String, Vec<String>>,
    ) -> Result<(), ConfigError> {
        let mut layers = layers(values);
        let own = layers.entry(env.to_owned()).or_default();
        for w in writes {
            match &w.value {
                Some(v) => own.insert(w.key.clone(), parse(v)),
                None => own.remove(&w.key),
            };
        }
        let known: Vec<String> = envs.keys().chain(configured.keys()).cloned().collect();
        let mut secret = secret_keys(values);
        secret.extend(writes.iter().filter(|w| w.secret).map(|w| w.key.clone()));
        self.check_envs(
            &layers,
            &secret,
            &engine::dependents(env, &known, configured),
            configured,
        )
    }

    /// Validates every environment of a namespace (a new schema against the stored values).
    pub fn check_all(
        &self,
        values: &HashMap<String, BTreeMap<String, ValueRow>>,
        configured: &BTreeMap<String, Vec<String>>,
    ) -> Result<(), ConfigError> {
        let layers = layers(values);
        let mut envs: Vec<String> = layers.keys().chain(configured.keys()).cloned().collect();
        envs.sort();
        envs.dedup();
        self.check_envs(&layers, &secret_keys(values), &envs, configured)
    }

    /// Each failure names the pointer and the rule; a secret's value is never quoted.
    fn check_envs(
        &self,
        layers: &HashMap<String, BTreeMap<String, Value>>,
        secret: &HashSet<String>,
        envs: &[String],
        configured: &BTreeMap<String, Vec<String>>,
    ) -> Result<(), ConfigError> {
        let mut errors = Vec::new();
        for env in envs {
            let doc: Map<String, Value> =
                engine::effective(layers, &engine::chain(env, configured))
                    .into_iter()
                    .map(|(k, e)| (k, e.value))
                    .collect();
            let doc = Value::Object(doc);
            for e in self.validator.iter_errors(&doc) {
                let pointer = e.instance_path().to_string();
                let key = pointer
                    .split('/')
                    .nth(1)
                    .map(|k| k.replace("~1", "/").replace("~0", "~"));
                let message = if key.is_some_and(|k| secret.contains(&k)) {
                    format!(
                        "in `{env}`: the secret value does not satisfy schema rule {} (secret \
                         values are never shown)",
                        e.schema_path()
                    )
                } else {
                    format!("in `{env}`: {e} (schema rule {})", e.schema_path())
                };
                errors.push(FieldError::new(
                    if pointer.is_empty() {
                        "/".to_owned()
                    } else {
                        pointer
                    },
                    message,
                ));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            metrics::counter!("mortar_config_validation_failures_total").increment(1);
            Err(ConfigError::Invalid(errors))
        }
    }
}

fn parse(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or(Value::Null)
}

/// The keys that hold a secret in some environment.
fn secret_keys(values: &HashMap<String, BTreeMap<String, ValueRow>>) -> HashSet<String> {
    values
        .values()
        .flat_map(|rows| {
            rows.iter()
                .filter(|(_, r)| r.secret)
                .map(|(k, _)| k.clone())
        })
        .collect()
}

fn layers(
    values: &HashMap<String, BTreeMap<String, ValueRow>>,
) -> HashMap<String, BTreeMap<String, Value>> {
    values
        .iter()
        .map(|(env, rows)| {
            let layer = rows
                .iter()
                .map(|(k, r)| (k.clone(), parse(&r.value)))
                .collect();
            (env.clone(), layer)
        })
        .collect()
}

/// Compiled schemas, by their text (a write reads its namespace's schema in its transaction, so
/// a schema changed on another node applies at once; compiling is what is cached).
#[derive(Default)]
pub(crate) struct Schemas {
    cache: Mutex<HashMap<String, Arc<Checker>>>,
}

impl Schemas {
    /// The compiled form of `text`.
    pub fn compiled(&self, text: &str) -> Result<Arc<Checker>, ConfigError> {
        if let Some(c) = self
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(text)
        {
            return Ok(c.clone());
        }
        let checker = Arc::new(Checker::compile(&parse(text))?);
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= 1024 {
            cache.clear();
        }
        cache.insert(text.to_owned(), checker.clone());
        Ok(checker)
    }
}
