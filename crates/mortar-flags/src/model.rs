//! The JSON shapes of flag and segment definitions and of evaluation contexts (what the API
//! accepts, the store keeps and the SDK downloads), and their conversion to and from the
//! engine's types.
//!
//! ```json
//! {"key": "new-checkout", "type": "boolean", "salt": "01JD…",
//!  "variants": {"on": true, "off": false}, "default_variant": "off", "off_variant": "off",
//!  "environments": {"prod": {"enabled": true,
//!    "rules": [{"id": "beta", "segments": ["beta-testers"], "serve": {"variant": "on"}},
//!              {"conditions": [{"attribute": "app_version", "operator": "semver_gte", "value": "2.1.0"}],
//!               "serve": {"split": [{"variant": "on", "weight": 25}, {"variant": "off", "weight": 75}],
//!                         "bucket_by": "org_id"}}],
//!    "default": {"variant": "off"}}}}
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};

use crate::engine::{
    ConditionSpec, Context, FieldError, FlagSpec, FlagType, RuleSpec, SegmentSpec, ServeSpec,
    SplitSpec, TARGETING_KEY, TargetingSpec, Value, VariantSpec,
};

/// A flag definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlagDoc {
    pub key: String,
    /// Set by the server at creation, then fixed (what bucketing hashes instead of the key).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub salt: String,
    /// `boolean`, `string`, `number` or `object`.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// A temporary flag (a release toggle) is expected to be removed; a permanent one (a kill
    /// switch, an entitlement) is never reported stale for being fully rolled out.
    #[serde(default = "yes")]
    pub temporary: bool,
    /// RFC 3339: after it the flag is reported stale.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// Variant name → value (of the flag's type).
    pub variants: BTreeMap<String, Json>,
    pub default_variant: String,
    pub off_variant: String,
    /// Environment → the flag's state there.
    #[serde(default)]
    pub environments: BTreeMap<String, StateDoc>,
}

fn yes() -> bool {
    true
}

/// A flag's state in one environment.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateDoc {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default)]
    pub rules: Vec<RuleDoc>,
    /// Served when no rule matches; absent: the flag's default variant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<ServeDoc>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleDoc {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Targeting keys this rule is limited to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<String>,
    /// Segments the context must all be in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub segments: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<ConditionDoc>,
    pub serve: ServeDoc,
}

/// `{"attribute", "operator", "value"}` or `{…, "values": […]}` (for the list operators).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConditionDoc {
    pub attribute: String,
    pub operator: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Json>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<Json>,
}

/// `{"variant": "on"}` or `{"split": [{"variant", "weight"}…], "bucket_by"?, "salt"?}`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeDoc {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<Vec<WeightDoc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub salt: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightDoc {
    pub variant: String,
    /// Percent, 0 to 100 in steps of 0.01.
    pub weight: f64,
}

/// A segment definition.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentDoc {
    pub key: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<ConditionDoc>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub included: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excluded: Vec<String>,
}

impl FlagDoc {
    /// The engine's definition; problems the engine cannot see (the type's name, a serve's
    /// stray fields) with their paths. The engine's own validation follows at compile.
    pub fn to_spec(&self) -> Result<FlagSpec, Vec<FieldError>> {
        let mut errors = Vec::new();
        let kind = FlagType::parse(&self.kind).unwrap_or_else(|| {
            errors.push(FieldError::new(
                "type",
                "one of: boolean, string, number, object",
            ));
            FlagType::Boolean
        });
        let environments = self
            .environments
            .iter()
            .map(|(env, s)| {
                let path = format!("environments.{env}");
                let rules = s
                    .rules
                    .iter()
                    .enumerate()
                    .map(|(i, r)| RuleSpec {
                        id: r.id.clone(),
                        users: r.users.clone(),
                        segments: r.segments.clone(),
                        conditions: r.conditions.iter().map(ConditionDoc::to_spec).collect(),
                        serve: r
                            .serve
                            .to_spec(&format!("{path}.rules[{i}].serve"), &mut errors),
                    })
                    .collect();
                let default = s
                    .default
                    .as_ref()
                    .map(|d| d.to_spec(&format!("{path}.default"), &mut errors));
                let state = TargetingSpec {
                    enabled: s.enabled,
                    rules,
                    default,
                };
                (env.clone(), state)
            })
            .collect();
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(FlagSpec {
            key: self.key.clone(),
            salt: self.salt.clone(),
            kind,
            variants: self
                .variants
                .iter()
                .map(|(name, v)| VariantSpec {
                    name: name.clone(),
                    value: value_from_json(v),
                })
                .collect(),
            default_variant: self.default_variant.clone(),
            off_variant: self.off_variant.clone(),
            environments,
        })
    }
}

impl ServeDoc {
    fn to_spec(&self, path: &str, errors: &mut Vec<FieldError>) -> ServeSpec {
        if self.split.is_none() {
            for (field, given) in [("bucket_by", &self.bucket_by), ("salt", &self.salt)] {
                if given.is_some() {
                    errors.push(FieldError::new(
                        format!("{path}.{field}"),
                        "only with `split`",
                    ));
                }
            }
        }
        ServeSpec {
            variant: self.variant.clone(),
            split: self.split.as_ref().map(|weights| SplitSpec {
                weights: weights
                    .iter()
                    .map(|w| (w.variant.clone(), w.weight))
                    .collect(),
                bucket_by: self.bucket_by.clone(),
                salt: self.salt.clone(),
            }),
        }
    }
}

impl ConditionDoc {
    fn to_spec(&self) -> ConditionSpec {
        ConditionSpec {
            attribute: self.attribute.clone(),
            operator: self.operator.clone(),
            values: self
                .value
                .iter()
                .chain(&self.values)
                .map(value_from_json)
                .collect(),
        }
    }
}

impl SegmentDoc {
    pub fn to_spec(&self) -> SegmentSpec {
        SegmentSpec {
            key: self.key.clone(),
            conditions: self.conditions.iter().map(ConditionDoc::to_spec).collect(),
            included: self.included.clone(),
            excluded: self.excluded.clone(),
        }
    }
}

/// A JSON value as the engine's.
pub fn value_from_json(v: &Json) -> Value {
    match v {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => Value::Number(n.as_f64().unwrap_or(f64::NAN)),
        Json::String(s) => Value::String(s.clone()),
        Json::Array(items) => Value::Array(items.iter().map(value_from_json).collect()),
        Json::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), value_from_json(v)))
                .collect(),
        ),
    }
}

/// An engine value as JSON; whole numbers are written as integers (`3`, not `3.0`).
pub fn value_to_json(v: &Value) -> Json {
    match v {
        Value::Null => Json::Null,
        Value::Bool(b) => Json::Bool(*b),
        Value::Number(n) if n.fract() == 0.0 && n.abs() < 9.0e15 => Json::from(*n as i64),
        Value::Number(n) => serde_json::Number::from_f64(*n).map_or(Json::Null, Json::Number),
        Value::String(s) => Json::String(s.clone()),
        Value::Array(items) => Json::Array(items.iter().map(value_to_json).collect()),
        Value::Object(map) => Json::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), value_to_json(v)))
                .collect(),
        ),
    }
}

/// An OFREP evaluation context (`{"targetingKey": "u1", "plan": "pro", …}`) as the engine's,
/// checked against the limits; the error is `INVALID_CONTEXT`'s detail.
pub fn context(json: &Map<String, Json>) -> Result<Context, String> {
    let mut ctx = Context::anonymous();
    for (name, v) in json {
        if name == TARGETING_KEY && !v.is_string() {
            return Err(format!("`{TARGETING_KEY}` must be a string"));
        }
        ctx.set(name.clone(), value_from_json(v));
    }
    match ctx.problem() {
        Some(p) => Err(p),
        None => Ok(ctx),
    }
}

#[cfg(test)]
mod tests;
