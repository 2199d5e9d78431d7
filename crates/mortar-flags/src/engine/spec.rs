//! Definitions as written (by the API, the CLI, a stored row), before validation: names are
//! strings, operators are strings, weights are percentages. `compile` turns them into the
//! evaluated form or field-path errors.

use super::Value;

/// A flag's value type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FlagType {
    Boolean,
    String,
    Number,
    /// A JSON object or array (OpenFeature's structure).
    Object,
}

impl FlagType {
    pub const ALL: [FlagType; 4] = [Self::Boolean, Self::String, Self::Number, Self::Object];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Boolean => "boolean",
            Self::String => "string",
            Self::Number => "number",
            Self::Object => "object",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// Whether `value` is of this type.
    pub fn admits(self, value: &Value) -> bool {
        matches!(
            (self, value),
            (Self::Boolean, Value::Bool(_))
                | (Self::String, Value::String(_))
                | (Self::Number, Value::Number(_))
                | (Self::Object, Value::Object(_) | Value::Array(_))
        )
    }
}

/// A flag definition.
#[derive(Debug, Clone, PartialEq)]
pub struct FlagSpec {
    pub key: String,
    /// Fixed at creation; what bucketing hashes instead of the key.
    pub salt: String,
    pub kind: FlagType,
    pub variants: Vec<VariantSpec>,
    /// Served when no rule matches (and the state has no default serve of its own), and with
    /// an error reason when evaluation cannot proceed.
    pub default_variant: String,
    /// Served while the flag is disabled.
    pub off_variant: String,
    /// Each environment's state, by environment name.
    pub environments: Vec<(String, TargetingSpec)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct VariantSpec {
    pub name: String,
    pub value: Value,
}

/// A flag's state in one environment.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TargetingSpec {
    pub enabled: bool,
    pub rules: Vec<RuleSpec>,
    /// Served when no rule matches; `None`: the flag's default variant.
    pub default: Option<ServeSpec>,
}

/// A targeting rule: matches when the context's targeting key is in `users` (when given), every
/// condition matches and the context is in every segment.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RuleSpec {
    /// An optional stable name, reported in the evaluation's metadata.
    pub id: Option<String>,
    pub users: Vec<String>,
    pub segments: Vec<String>,
    pub conditions: Vec<ConditionSpec>,
    pub serve: ServeSpec,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ConditionSpec {
    pub attribute: String,
    pub operator: String,
    pub values: Vec<Value>,
}

/// What a rule (or the default) serves: exactly one of a variant or a split.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ServeSpec {
    pub variant: Option<String>,
    pub split: Option<SplitSpec>,
}

impl ServeSpec {
    pub fn variant(name: impl Into<String>) -> Self {
        Self {
            variant: Some(name.into()),
            split: None,
        }
    }

    pub fn split(weights: &[(&str, f64)]) -> Self {
        Self {
            variant: None,
            split: Some(SplitSpec {
                weights: weights.iter().map(|(v, w)| ((*v).to_owned(), *w)).collect(),
                bucket_by: None,
                salt: None,
            }),
        }
    }
}

/// A percentage split. The last variant is the *rest*: see [`super::Layout`].
#[derive(Debug, Clone, PartialEq)]
pub struct SplitSpec {
    /// Variant and percentage (0 to 100, steps of 0.01), summing to exactly 100.
    pub weights: Vec<(String, f64)>,
    /// The attribute hashed into a bucket; `None`: `targetingKey`.
    pub bucket_by: Option<String>,
    /// Hashed instead of the flag's salt (re-randomises this split only).
    pub salt: Option<String>,
}

/// A segment definition.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SegmentSpec {
    pub key: String,
    /// All must match (a segment without conditions holds only its included users).
    pub conditions: Vec<ConditionSpec>,
    pub included: Vec<String>,
    /// Never in the segment, even when included or matching.
    pub excluded: Vec<String>,
}
