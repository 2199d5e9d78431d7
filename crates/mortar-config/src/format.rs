//! Rendering an environment's values for a process: `.env` lines (`KEY='value'`).

use serde_json::Value;

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
    }
}
