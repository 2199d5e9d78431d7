//! Values as documents: `.env` lines for a process (`KEY='value'`), JSON and YAML objects for
//! export, and JSON or YAML documents read for import (nested objects flattened into dotted
//! keys).

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::service::Values;

/// The environment variable name of a key: upper-cased, `.` and `-` as `_`.
pub fn env_name(key: &str) -> String {
    key.chars()
        .map(|c| match c {
            '.' | '-' => '_',
            c => c.to_ascii_uppercase(),
        })
        .collect()
}

/// A value as an environment variable's text: strings as they are, anything else as JSON.
pub fn env_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        v => v.to_string(),
    }
}

/// `KEY='value'` lines, single-quoted for a POSIX shell (`'` written as `'\''`).
pub fn render(values: &Values) -> String {
    let mut out = String::new();
    for (k, e) in &values.values {
        let text = env_text(&e.value).replace('\'', r"'\''");
        out.push_str(&format!("{}='{text}'\n", env_name(k)));
    }
    out
}

/// The effective values as one flat object, `{"db.pool.max": 10, …}`.
pub fn flat(values: &Values) -> BTreeMap<String, Value> {
    values
        .values
        .iter()
        .map(|(k, e)| (k.clone(), e.value.clone()))
        .collect()
}

/// `values` as YAML.
pub fn yaml(values: &BTreeMap<String, Value>) -> Result<String, String> {
    serde_norway::to_string(values).map_err(|e| e.to_string())
}

/// A JSON or YAML document (`format` `json` or `yaml`) as keys and values: nested objects
/// become dotted keys; arrays and scalars are values.
pub fn parse(text: &str, format: &str) -> Result<BTreeMap<String, Value>, String> {
    let doc: Value = match format {
        "json" => serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?,
        "yaml" => serde_norway::from_str(text).map_err(|e| format!("not YAML: {e}"))?,
        other => return Err(format!("`{other}`: import reads json or yaml")),
    };
    let Value::Object(top) = doc else {
        return Err("the document must be an object of keys and values".into());
    };
    let mut out = BTreeMap::new();
    flatten("", top, &mut out);
    Ok(out)
}

fn flatten(prefix: &str, object: Map<String, Value>, out: &mut BTreeMap<String, Value>) {
    for (k, v) in object {
        let key = if prefix.is_empty() {
            k
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            Value::Object(inner) if !inner.is_empty() => flatten(&key, inner, out),
            v => {
                out.insert(key, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_quoting() {
        assert_eq!(env_name("db.pool-size"), "DB_POOL_SIZE");
        assert_eq!(env_text(&Value::from("a b")), "a b");
        assert_eq!(env_text(&serde_json::json!({"a": 1})), r#"{"a":1}"#);
        let values = Values {
            namespace: "n".into(),
            environment: "e".into(),
            revision: 1,
            chain: vec!["e".into()],
            values: [(
                "greeting".to_owned(),
                crate::service::Entry {
                    value: Value::from("it's"),
                    env: "e".into(),
                    revision: 1,
                    secret: false,
                },
            )]
            .into(),
        };
        assert_eq!(render(&values), "GREETING='it'\\''s'\n");
        assert_eq!(yaml(&flat(&values)).unwrap(), "greeting: it's\n");
    }

    #[test]
    fn documents_flatten_into_dotted_keys() {
        let yaml = "db:\n  pool:\n    max: 10\n  hosts: [a, b]\nfeature.search: true\n";
        let got = parse(yaml, "yaml").unwrap();
        assert_eq!(got["db.pool.max"], 10);
        assert_eq!(got["db.hosts"], serde_json::json!(["a", "b"]));
        assert_eq!(got["feature.search"], true);
        assert_eq!(parse(r#"{"a": {"b": 1}}"#, "json").unwrap()["a.b"], 1);
        assert!(parse("[1, 2]", "json").is_err());
        assert!(parse("a: [", "yaml").unwrap_err().contains("YAML"));
    }
}
