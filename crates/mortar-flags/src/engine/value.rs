//! The engine's values (variant values, condition values, context attributes) and the
//! evaluation context.

use std::collections::BTreeMap;

use foldhash::HashMap;

use super::{MAX_CONTEXT_ATTRIBUTES, MAX_CONTEXT_DEPTH, MAX_STRING_BYTES, TARGETING_KEY};

/// A JSON-like value, owned by the engine (the wire format converts to and from it).
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Value {
    #[default]
    Null,
    Bool(bool),
    Number(f64),
    String(String),
    Array(Vec<Value>),
    Object(BTreeMap<String, Value>),
}

impl Value {
    /// The value's JSON type name (for messages).
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Null => "null",
            Self::Bool(_) => "boolean",
            Self::Number(_) => "number",
            Self::String(_) => "string",
            Self::Array(_) => "array",
            Self::Object(_) => "object",
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Self::Number(n) => Some(*n),
            _ => None,
        }
    }

    /// Nesting depth: 0 for a scalar, 1 for an array or object of scalars, …
    pub fn depth(&self) -> usize {
        match self {
            Self::Array(items) => 1 + items.iter().map(Value::depth).max().unwrap_or(0),
            Self::Object(map) => 1 + map.values().map(Value::depth).max().unwrap_or(0),
            _ => 0,
        }
    }

    /// The longest string in the value (keys of objects included), in bytes.
    fn longest_string(&self) -> usize {
        match self {
            Self::String(s) => s.len(),
            Self::Array(items) => items.iter().map(Value::longest_string).max().unwrap_or(0),
            Self::Object(map) => map
                .iter()
                .map(|(k, v)| k.len().max(v.longest_string()))
                .max()
                .unwrap_or(0),
            _ => 0,
        }
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Self::Bool(b)
    }
}

impl From<f64> for Value {
    fn from(n: f64) -> Self {
        Self::Number(n)
    }
}

impl From<i64> for Value {
    fn from(n: i64) -> Self {
        Self::Number(n as f64)
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Self::String(s.to_owned())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Self::String(s)
    }
}

/// What a flag is evaluated for: an optional targeting key and named attributes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Context {
    targeting_key: Option<String>,
    attributes: HashMap<String, Value>,
}

impl Context {
    /// A context for `targeting_key` without attributes.
    pub fn new(targeting_key: impl Into<String>) -> Self {
        Self {
            targeting_key: Some(targeting_key.into()),
            attributes: HashMap::default(),
        }
    }

    /// A context without a targeting key (anonymous).
    pub fn anonymous() -> Self {
        Self::default()
    }

    /// With attribute `name` set to `value` (`targetingKey` sets the targeting key when
    /// `value` is a string).
    #[must_use]
    pub fn with(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        self.set(name, value);
        self
    }

    /// Sets attribute `name`; `targetingKey` with a string sets the targeting key.
    pub fn set(&mut self, name: impl Into<String>, value: impl Into<Value>) {
        let name = name.into();
        match value.into() {
            Value::String(s) if name == TARGETING_KEY => self.targeting_key = Some(s),
            v => {
                self.attributes.insert(name, v);
            }
        }
    }

    pub fn targeting_key(&self) -> Option<&str> {
        self.targeting_key.as_deref()
    }

    /// An attribute other than the targeting key.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.attributes.get(name)
    }

    /// Why the context is over the limits (attributes, nesting, string sizes), if it is.
    pub fn problem(&self) -> Option<String> {
        let count = self.attributes.len() + usize::from(self.targeting_key.is_some());
        if count > MAX_CONTEXT_ATTRIBUTES {
            return Some(format!(
                "{count} attributes; at most {MAX_CONTEXT_ATTRIBUTES}"
            ));
        }
        if self
            .targeting_key
            .as_ref()
            .is_some_and(|k| k.len() > MAX_STRING_BYTES)
        {
            return Some(format!(
                "`{TARGETING_KEY}` is over {MAX_STRING_BYTES} bytes"
            ));
        }
        for (name, value) in &self.attributes {
            if name.len() > MAX_STRING_BYTES || value.longest_string() > MAX_STRING_BYTES {
                return Some(format!(
                    "attribute `{}`: strings are at most {MAX_STRING_BYTES} bytes",
                    truncate(name, 64)
                ));
            }
            if value.depth() > MAX_CONTEXT_DEPTH {
                return Some(format!(
                    "attribute `{}`: nested deeper than {MAX_CONTEXT_DEPTH}",
                    truncate(name, 64)
                ));
            }
        }
        None
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((at, _)) => &s[..at],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targeting_key_is_not_an_attribute() {
        let ctx = Context::anonymous()
            .with("targetingKey", "u1")
            .with("n", 3_i64);
        assert_eq!(ctx.targeting_key(), Some("u1"));
        assert_eq!(ctx.get("targetingKey"), None);
        assert_eq!(ctx.get("n"), Some(&Value::Number(3.0)));
        // A non-string targeting key is kept as an attribute (the wire layer refuses it).
        let odd = Context::anonymous().with("targetingKey", 7_i64);
        assert_eq!(odd.targeting_key(), None);
    }

    #[test]
    fn contexts_over_the_limits_are_named() {
        let mut big = Context::new("u");
        for i in 0..MAX_CONTEXT_ATTRIBUTES {
            big.set(format!("a{i}"), true);
        }
        assert!(big.problem().unwrap().contains("attributes"));
        let long = Context::new("u").with("s", "x".repeat(MAX_STRING_BYTES + 1));
        assert!(long.problem().unwrap().contains("`s`"));
        let mut deep = Value::Null;
        for _ in 0..=MAX_CONTEXT_DEPTH {
            deep = Value::Array(vec![deep]);
        }
        assert!(
            Context::new("u")
                .with("d", deep)
                .problem()
                .unwrap()
                .contains("nested")
        );
        assert_eq!(Context::new("u").with("s", "ok").problem(), None);
    }
}
