//! Validation and compilation of flag and segment definitions: every problem is reported with
//! the path of its field (`environments.prod.rules[0].serve.split[1].weight`), all of them at
//! once, and nothing invalid is ever evaluated.

use foldhash::HashSet;
use std::fmt;

use super::bucket::{BUCKETS, Layout};
use super::compiled::{Flag, Rule, Segment, Segments, Serve, Split, Targeting, Variant};
use super::operator::{Attr, Condition};
use super::spec::{ConditionSpec, FlagSpec, RuleSpec, SegmentSpec, ServeSpec, TargetingSpec};
use super::{
    MAX_CONDITIONS, MAX_ENVIRONMENTS, MAX_KEY_LEN, MAX_NAME_LEN, MAX_RULE_SEGMENTS, MAX_RULES,
    MAX_STRING_BYTES, MAX_USERS, MAX_VARIANTS, NOW, is_flag_key, is_name,
};

/// One invalid field: where (a JSON path) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

const NAME_RULE: &str = "1 to 64 characters of letters, digits, `_` and `-`";

/// Checks a segment definition.
pub fn validate_segment(spec: &SegmentSpec) -> Result<(), Vec<FieldError>> {
    compile_segment(spec).map(drop)
}

pub(crate) fn compile_segment(spec: &SegmentSpec) -> Result<Segment, Vec<FieldError>> {
    let mut errors = Vec::new();
    if !is_name(&spec.key) {
        errors.push(FieldError::new("key", NAME_RULE));
    }
    let conditions = conditions(&spec.conditions, "", &mut errors);
    let included = users(&spec.included, "included", &mut errors);
    let excluded = users(&spec.excluded, "excluded", &mut errors);
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Segment {
        key: spec.key.clone(),
        conditions,
        included: included.unwrap_or_default(),
        excluded: excluded.unwrap_or_default(),
    })
}

pub(crate) fn compile_flag(spec: &FlagSpec, segments: &Segments) -> Result<Flag, Vec<FieldError>> {
    let mut errors = Vec::new();
    if !is_flag_key(&spec.key) {
        errors.push(FieldError::new(
            "key",
            format!("1 to {MAX_KEY_LEN} characters of letters, digits, `_`, `-` and `.`"),
        ));
    }
    if !is_name(&spec.salt) {
        errors.push(FieldError::new("salt", NAME_RULE));
    }
    let mut variants: Vec<Variant> = Vec::with_capacity(spec.variants.len());
    if spec.variants.is_empty() || spec.variants.len() > MAX_VARIANTS {
        errors.push(FieldError::new(
            "variants",
            format!("1 to {MAX_VARIANTS} variants"),
        ));
    }
    for (i, v) in spec.variants.iter().enumerate() {
        let field = if is_name(&v.name) {
            format!("variants.{}", v.name)
        } else {
            errors.push(FieldError::new(
                format!("variants[{i}]"),
                format!("names are {NAME_RULE}"),
            ));
            continue;
        };
        if variants.iter().any(|w| w.name == v.name) {
            errors.push(FieldError::new(field, "a second variant of this name"));
        } else if !spec.kind.admits(&v.value) {
            let want = match spec.kind.as_str() {
                "object" => "an object or array",
                other => other,
            };
            errors.push(FieldError::new(
                field,
                format!(
                    "the flag is of type {}: its values are {want}, not {}",
                    spec.kind.as_str(),
                    v.value.type_name()
                ),
            ));
        } else {
            variants.push(Variant {
                name: v.name.clone(),
                value: v.value.clone(),
            });
        }
    }
    let names: Vec<&str> = spec.variants.iter().map(|v| v.name.as_str()).collect();
    let default_variant = variant(
        &names,
        &spec.default_variant,
        "default_variant",
        &mut errors,
    );
    let off_variant = variant(&names, &spec.off_variant, "off_variant", &mut errors);
    if spec.environments.len() > MAX_ENVIRONMENTS {
        errors.push(FieldError::new(
            "environments",
            format!("at most {MAX_ENVIRONMENTS} environments"),
        ));
    }
    let cx = Cx {
        names: &names,
        segments,
    };
    let mut environments = Vec::with_capacity(spec.environments.len());
    for (env, t) in &spec.environments {
        let path = format!("environments.{env}");
        if !is_name(env) {
            errors.push(FieldError::new(
                path,
                format!("environment names are {NAME_RULE}"),
            ));
        } else if environments.iter().any(|(e, _)| e == env) {
            errors.push(FieldError::new(path, "a second state for this environment"));
        } else if let Some(t) = cx.targeting(t, &path, default_variant, &mut errors) {
            environments.push((env.clone(), t));
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Flag {
        key: spec.key.clone(),
        salt: spec.salt.clone(),
        kind: spec.kind,
        variants,
        default_variant: default_variant.unwrap_or_default(),
        off_variant: off_variant.unwrap_or_default(),
        environments,
    })
}

/// What compiling a flag's states needs: its variant names, and the segments.
struct Cx<'a> {
    names: &'a [&'a str],
    segments: &'a Segments,
}

impl Cx<'_> {
    fn targeting(
        &self,
        spec: &TargetingSpec,
        path: &str,
        default_variant: Option<usize>,
        errors: &mut Vec<FieldError>,
    ) -> Option<Targeting> {
        let before = errors.len();
        if spec.rules.len() > MAX_RULES {
            errors.push(FieldError::new(
                format!("{path}.rules"),
                format!("at most {MAX_RULES} rules"),
            ));
        }
        let mut ids = HashSet::default();
        let rules: Vec<Rule> = spec
            .rules
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                let path = format!("{path}.rules[{i}]");
                if let Some(id) = &r.id {
                    if !is_name(id) {
                        errors.push(FieldError::new(format!("{path}.id"), NAME_RULE));
                    } else if !ids.insert(id.as_str()) {
                        errors.push(FieldError::new(
                            format!("{path}.id"),
                            "another rule of this environment has this id",
                        ));
                    }
                }
                self.rule(r, &path, errors)
            })
            .collect();
        let default = match &spec.default {
            Some(serve) => self.serve(serve, &format!("{path}.default"), errors),
            None => default_variant.map(Serve::Variant),
        };
        if errors.len() > before {
            return None;
        }
        Some(Targeting {
            enabled: spec.enabled,
            rules,
            default: default?,
        })
    }

    fn rule(&self, spec: &RuleSpec, path: &str, errors: &mut Vec<FieldError>) -> Option<Rule> {
        let before = errors.len();
        let users = users(&spec.users, &format!("{path}.users"), errors);
        if spec.segments.len() > MAX_RULE_SEGMENTS {
            errors.push(FieldError::new(
                format!("{path}.segments"),
                format!("at most {MAX_RULE_SEGMENTS} segments"),
            ));
        }
        let mut segments = Vec::with_capacity(spec.segments.len());
        for (j, s) in spec.segments.iter().enumerate() {
            match self.segments.by_key.get(s) {
                Some(&i) => segments.push(i),
                None => errors.push(FieldError::new(
                    format!("{path}.segments[{j}]"),
                    format!("unknown segment `{}`", clip(s)),
                )),
            }
        }
        let conditions = conditions(&spec.conditions, path, errors);
        let serve = self.serve(&spec.serve, &format!("{path}.serve"), errors);
        if errors.len() > before {
            return None;
        }
        Some(Rule {
            id: spec.id.clone(),
            users,
            segments,
            conditions,
            serve: serve?,
        })
    }

    fn serve(&self, spec: &ServeSpec, path: &str, errors: &mut Vec<FieldError>) -> Option<Serve> {
        match (&spec.variant, &spec.split) {
            (Some(v), None) => {
                variant(self.names, v, &format!("{path}.variant"), errors).map(Serve::Variant)
            }
            (None, Some(split)) => {
                let before = errors.len();
                let path = format!("{path}.split");
                if split.weights.is_empty() {
                    errors.push(FieldError::new(&path, "at least one variant"));
                    return None;
                }
                let mut variants = Vec::with_capacity(split.weights.len());
                let mut weights = Vec::with_capacity(split.weights.len());
                let mut total: u64 = 0;
                for (i, (name, pct)) in split.weights.iter().enumerate() {
                    let at = format!("{path}[{i}]");
                    if let Some(v) = variant(self.names, name, &format!("{at}.variant"), errors) {
                        if variants.contains(&v) {
                            errors.push(FieldError::new(
                                format!("{at}.variant"),
                                "already in this split",
                            ));
                        }
                        variants.push(v);
                    }
                    let hundredths = (pct * 100.0).round();
                    if !pct.is_finite() || !(0.0..=100.0).contains(pct) {
                        errors.push(FieldError::new(
                            format!("{at}.weight"),
                            "a percentage from 0 to 100",
                        ));
                    } else if (pct * 100.0 - hundredths).abs() > 1e-6 {
                        errors.push(FieldError::new(
                            format!("{at}.weight"),
                            "percentages have at most two decimals (0.01 % steps)",
                        ));
                    } else {
                        total += hundredths as u64;
                        weights.push(hundredths as u16);
                    }
                }
                if errors.len() == before && total != u64::from(BUCKETS) {
                    errors.push(FieldError::new(
                        &path,
                        format!("the weights sum to {} %, not 100 %", total as f64 / 100.0),
                    ));
                }
                let bucket_by = match split.bucket_by.as_deref() {
                    None => Attr::TargetingKey,
                    Some(NOW) => {
                        errors.push(FieldError::new(
                            format!("{path}.bucket_by"),
                            "`$now` changes every millisecond: bucket by a context attribute",
                        ));
                        Attr::Now
                    }
                    Some(a) if a.is_empty() || a.len() > 256 => {
                        errors.push(FieldError::new(
                            format!("{path}.bucket_by"),
                            "must be 1 to 256 bytes",
                        ));
                        Attr::Now
                    }
                    Some(a) => Attr::parse(a),
                };
                if split.salt.as_deref().is_some_and(|s| !is_name(s)) {
                    errors.push(FieldError::new(format!("{path}.salt"), NAME_RULE));
                }
                if errors.len() > before {
                    return None;
                }
                Some(Serve::Split(Split {
                    variants,
                    layout: Layout::new(&weights)?,
                    bucket_by,
                    salt: split.salt.clone(),
                }))
            }
            _ => {
                errors.push(FieldError::new(
                    path,
                    "give exactly one of `variant` or `split`",
                ));
                None
            }
        }
    }
}

fn variant(names: &[&str], name: &str, field: &str, errors: &mut Vec<FieldError>) -> Option<usize> {
    let found = names.iter().position(|n| *n == name);
    if found.is_none() {
        errors.push(FieldError::new(
            field,
            format!(
                "no variant `{}`; the variants are: {}",
                clip(name),
                names.join(", ")
            ),
        ));
    }
    found
}

fn conditions(specs: &[ConditionSpec], path: &str, errors: &mut Vec<FieldError>) -> Vec<Condition> {
    let sep = if path.is_empty() { "" } else { "." };
    if specs.len() > MAX_CONDITIONS {
        errors.push(FieldError::new(
            format!("{path}{sep}conditions"),
            format!("at most {MAX_CONDITIONS} conditions"),
        ));
    }
    specs
        .iter()
        .enumerate()
        .filter_map(|(j, c)| Condition::compile(c, &format!("{path}{sep}conditions[{j}]"), errors))
        .collect()
}

/// A user list (`None` when empty).
fn users(list: &[String], field: &str, errors: &mut Vec<FieldError>) -> Option<HashSet<String>> {
    if list.len() > MAX_USERS {
        errors.push(FieldError::new(field, format!("at most {MAX_USERS} users")));
    }
    if let Some(i) = list
        .iter()
        .position(|u| u.is_empty() || u.len() > MAX_STRING_BYTES)
    {
        errors.push(FieldError::new(
            format!("{field}[{i}]"),
            format!("targeting keys are 1 to {MAX_STRING_BYTES} bytes"),
        ));
    }
    (!list.is_empty()).then(|| list.iter().cloned().collect())
}

/// A name quoted in a message, cut to a readable length.
fn clip(s: &str) -> &str {
    match s.char_indices().nth(MAX_NAME_LEN) {
        Some((at, _)) => &s[..at],
        None => s,
    }
}

#[cfg(test)]
mod tests;
