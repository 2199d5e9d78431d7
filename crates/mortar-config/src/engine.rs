//! Configuration rules, pure: names and keys, environment chains, effective values.

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;

use mortar_core::api::NameRule;

/// The environment every chain ends with.
pub const BASE: &str = "base";

/// Namespace and environment names.
pub const SCOPE_NAME: NameRule = NameRule::new(64, "_-");

/// Longest key.
pub const MAX_KEY_LEN: usize = 256;

/// Most keys one change set may touch.
pub const MAX_CHANGES: usize = 1000;

/// Keys that name an environment's routes (`…/{env}/history`, `watch`, `rollback`).
pub const RESERVED_KEYS: [&str; 3] = ["history", "watch", "rollback"];

/// Environment names that name a namespace's routes (`/v1/config/{ns}/schema`).
pub const RESERVED_ENVS: [&str; 1] = ["schema"];

/// Why a key is refused, or `None` when it is a valid dotted path.
pub fn key_problem(key: &str) -> Option<String> {
    if RESERVED_KEYS.contains(&key) {
        return Some(format!(
            "`{key}` is reserved (it names a route); use it inside a path, e.g. `app.{key}`"
        ));
    }
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Some(format!("must be 1 to {MAX_KEY_LEN} characters"));
    }
    if let Some(c) = key
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        return Some(format!(
            "`{c}` is not allowed: use letters, digits, `_`, `-` and `.` between segments"
        ));
    }
    if key.split('.').any(str::is_empty) {
        return Some("segments between dots must not be empty (`a.b`, not `a..b` or `.a`)".into());
    }
    None
}

/// The chain of `env`: itself, the environments `[config.environments]` gives it, then `base`
/// (each once).
pub fn chain(env: &str, configured: &BTreeMap<String, Vec<String>>) -> Vec<String> {
    let mut out = vec![env.to_owned()];
    for e in configured.get(env).into_iter().flatten() {
        if !out.contains(e) {
            out.push(e.clone());
        }
    }
    if !out.iter().any(|e| e == BASE) {
        out.push(BASE.to_owned());
    }
    out
}

/// Problems with `[config.environments]`: names, and chains that name `base` before their end
/// or name the environment itself.
pub fn chains_problems(configured: &BTreeMap<String, Vec<String>>) -> Vec<String> {
    let mut out = Vec::new();
    for (env, falls_back) in configured {
        if !SCOPE_NAME.is_valid(env) {
            out.push(format!("`{env}`: {}", SCOPE_NAME.describe()));
        }
        if env == BASE {
            out.push("`base` is the end of every chain; it falls back to nothing".into());
        }
        for e in falls_back {
            if !SCOPE_NAME.is_valid(e) {
                out.push(format!("`{env}` → `{e}`: {}", SCOPE_NAME.describe()));
            }
            if e == env {
                out.push(format!("`{env}` falls back to itself"));
            }
        }
    }
    out
}

/// An effective value: the value and the environment of the chain it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Effective<V> {
    pub value: V,
    pub env: String,
}

/// The effective values of the environment whose chain is `chain`, from each environment's own
/// values (`layers`).
pub fn effective<V: Clone, S: BuildHasher>(
    layers: &HashMap<String, BTreeMap<String, V>, S>,
    chain: &[String],
) -> BTreeMap<String, Effective<V>> {
    let mut out = BTreeMap::new();
    for env in chain.iter().rev() {
        for (k, v) in layers.get(env).into_iter().flatten() {
            out.insert(
                k.clone(),
                Effective {
                    value: v.clone(),
                    env: env.clone(),
                },
            );
        }
    }
    out
}

/// The effective value of one key for `chain`, from the key's value in each environment
/// (environments without it are absent from `by_env`).
pub fn effective_one<V: Clone, S: BuildHasher>(
    by_env: &HashMap<String, V, S>,
    chain: &[String],
) -> Option<Effective<V>> {
    chain.iter().find_map(|env| {
        by_env.get(env).map(|v| Effective {
            value: v.clone(),
            env: env.clone(),
        })
    })
}

/// The environments among `known` whose effective values a write to `env` may change (those
/// whose chain contains it), `env` included.
pub fn dependents(
    env: &str,
    known: &[String],
    configured: &BTreeMap<String, Vec<String>>,
) -> Vec<String> {
    let mut out = vec![env.to_owned()];
    for k in known {
        if !out.contains(k) && chain(k, configured).iter().any(|e| e == env) {
            out.push(k.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn configured() -> BTreeMap<String, Vec<String>> {
        BTreeMap::from([("prod".into(), vec!["staging".into()])])
    }

    #[test]
    fn keys_are_dotted_paths() {
        assert_eq!(key_problem("db.pool.max"), None);
        assert_eq!(key_problem("feature_x-enabled"), None);
        assert!(key_problem("").is_some());
        assert!(key_problem("a..b").unwrap().contains("empty"));
        assert!(key_problem(".a").is_some());
        assert!(key_problem("a/b").unwrap().contains('/'));
        assert!(key_problem(&"k".repeat(257)).is_some());
        assert!(key_problem("history").unwrap().contains("reserved"));
        assert_eq!(key_problem("ui.history"), None);
    }

    #[test]
    fn chains_end_in_base() {
        assert_eq!(chain("dev", &configured()), ["dev", "base"]);
        assert_eq!(chain("prod", &configured()), ["prod", "staging", "base"]);
        assert_eq!(chain("base", &configured()), ["base"]);
        let bad = BTreeMap::from([("x".into(), vec!["x".into()]), ("base".into(), vec![])]);
        assert_eq!(chains_problems(&bad).len(), 2);
    }

    #[test]
    fn the_first_environment_with_a_key_wins() {
        let layers = HashMap::from([
            (
                "base".to_owned(),
                BTreeMap::from([("a".to_owned(), 1), ("b".to_owned(), 2)]),
            ),
            ("staging".to_owned(), BTreeMap::from([("b".to_owned(), 20)])),
            ("prod".to_owned(), BTreeMap::from([("c".to_owned(), 300)])),
        ]);
        let chain = chain("prod", &configured());
        let eff = effective(&layers, &chain);
        assert_eq!(
            eff["a"],
            Effective {
                value: 1,
                env: "base".into()
            }
        );
        assert_eq!(
            eff["b"],
            Effective {
                value: 20,
                env: "staging".into()
            }
        );
        assert_eq!(eff["c"].env, "prod");
        let one = HashMap::from([("base".to_owned(), 1), ("staging".to_owned(), 2)]);
        assert_eq!(effective_one(&one, &chain).unwrap().env, "staging");
        assert_eq!(effective_one(&one, &["dev".to_owned()]), None);
    }

    #[test]
    fn a_write_reaches_the_environments_that_fall_back_to_it() {
        let known = ["dev", "prod", "staging", "base"]
            .map(String::from)
            .to_vec();
        assert_eq!(
            dependents("staging", &known, &configured()),
            ["staging", "prod"]
        );
        assert_eq!(dependents("base", &known, &configured()).len(), 4);
        assert_eq!(dependents("dev", &known, &configured()), ["dev"]);
    }
}
