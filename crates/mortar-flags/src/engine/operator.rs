//! Condition operators: parsed and checked once at load (regexes compiled, versions and dates
//! parsed), then matched against a context. A missing attribute, or one of a type the operator
//! does not take, never matches — for the negated operators too.

use std::cmp::Ordering;

use foldhash::HashSet;
use regex::Regex;
use semver::Version;

use self::values::{epoch_ms, matcher, parse_date, parse_version};
use super::compile::FieldError;
use super::spec::ConditionSpec;
use super::{Context, NOW, TARGETING_KEY, Value};

/// A condition's operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operator {
    Equals,
    NotEquals,
    In,
    NotIn,
    Contains,
    StartsWith,
    EndsWith,
    Regex,
    SemverEq,
    SemverLt,
    SemverLte,
    SemverGt,
    SemverGte,
    NumberEq,
    NumberLt,
    NumberLte,
    NumberGt,
    NumberGte,
    DateBefore,
    DateAfter,
}

impl Operator {
    pub const ALL: [Operator; 20] = [
        Self::Equals,
        Self::NotEquals,
        Self::In,
        Self::NotIn,
        Self::Contains,
        Self::StartsWith,
        Self::EndsWith,
        Self::Regex,
        Self::SemverEq,
        Self::SemverLt,
        Self::SemverLte,
        Self::SemverGt,
        Self::SemverGte,
        Self::NumberEq,
        Self::NumberLt,
        Self::NumberLte,
        Self::NumberGt,
        Self::NumberGte,
        Self::DateBefore,
        Self::DateAfter,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Equals => "equals",
            Self::NotEquals => "not_equals",
            Self::In => "in",
            Self::NotIn => "not_in",
            Self::Contains => "contains",
            Self::StartsWith => "starts_with",
            Self::EndsWith => "ends_with",
            Self::Regex => "regex",
            Self::SemverEq => "semver_eq",
            Self::SemverLt => "semver_lt",
            Self::SemverLte => "semver_lte",
            Self::SemverGt => "semver_gt",
            Self::SemverGte => "semver_gte",
            Self::NumberEq => "number_eq",
            Self::NumberLt => "number_lt",
            Self::NumberLte => "number_lte",
            Self::NumberGt => "number_gt",
            Self::NumberGte => "number_gte",
            Self::DateBefore => "date_before",
            Self::DateAfter => "date_after",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|o| o.as_str() == s)
    }

    /// The comparison of a semver or number operator.
    fn cmp(self) -> Cmp {
        match self {
            Self::SemverLt | Self::NumberLt => Cmp::Lt,
            Self::SemverLte | Self::NumberLte => Cmp::Lte,
            Self::SemverGt | Self::NumberGt => Cmp::Gt,
            Self::SemverGte | Self::NumberGte => Cmp::Gte,
            _ => Cmp::Eq,
        }
    }
}

/// Where a condition reads its operand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Attr {
    TargetingKey,
    Now,
    Named(String),
}

impl Attr {
    pub(crate) fn parse(name: &str) -> Self {
        match name {
            TARGETING_KEY => Self::TargetingKey,
            NOW => Self::Now,
            n => Self::Named(n.to_owned()),
        }
    }

    fn read<'a>(&'a self, ctx: &'a Context, now_ms: i64) -> Option<Operand<'a>> {
        match self {
            Self::TargetingKey => ctx.targeting_key().map(Operand::Str),
            Self::Now => Some(Operand::Num(now_ms as f64)),
            Self::Named(n) => ctx.get(n).map(|v| match v {
                Value::String(s) => Operand::Str(s),
                Value::Number(n) => Operand::Num(*n),
                Value::Bool(b) => Operand::Bool(*b),
                Value::Array(items) => Operand::List(items),
                Value::Null | Value::Object(_) => Operand::Other,
            }),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Operand<'a> {
    Str(&'a str),
    Num(f64),
    Bool(bool),
    List(&'a [Value]),
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cmp {
    Eq,
    Lt,
    Lte,
    Gt,
    Gte,
}

impl Cmp {
    fn holds(self, o: Ordering) -> bool {
        match self {
            Self::Eq => o == Ordering::Equal,
            Self::Lt => o == Ordering::Less,
            Self::Lte => o != Ordering::Greater,
            Self::Gt => o == Ordering::Greater,
            Self::Gte => o != Ordering::Less,
        }
    }
}

/// The scalar values of `equals`, `not_equals`, `in`, `not_in`, by type.
#[derive(Debug, Clone, Default)]
struct Scalars {
    strings: HashSet<String>,
    numbers: Vec<f64>,
    bools: Vec<bool>,
}

impl Scalars {
    /// `Some(contained)` when the operand is of a type among the values, else `None`.
    fn contains(&self, op: Operand<'_>) -> Option<bool> {
        match op {
            Operand::Str(s) if !self.strings.is_empty() => Some(self.strings.contains(s)),
            Operand::Num(n) if !self.numbers.is_empty() => Some(self.numbers.contains(&n)),
            Operand::Bool(b) if !self.bools.is_empty() => Some(self.bools.contains(&b)),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
enum Matcher {
    /// `equals`/`in` (`negated`: `not_equals`/`not_in`).
    OneOf {
        values: Scalars,
        negated: bool,
    },
    Contains(Vec<String>),
    StartsWith(Vec<String>),
    EndsWith(Vec<String>),
    Regex(Regex),
    Semver(Cmp, Version),
    Number(Cmp, f64),
    /// `true`: before.
    Date(bool, i64),
}

/// A compiled condition.
#[derive(Debug, Clone)]
pub(crate) struct Condition {
    attr: Attr,
    matcher: Matcher,
}

impl Condition {
    /// Validates `spec` (at `path`, e.g. `rules[0].conditions[1]`) and compiles it; its
    /// problems are appended to `errors`.
    pub(crate) fn compile(
        spec: &ConditionSpec,
        path: &str,
        errors: &mut Vec<FieldError>,
    ) -> Option<Self> {
        let before = errors.len();
        if spec.attribute.is_empty() || spec.attribute.len() > 256 {
            errors.push(FieldError::new(
                format!("{path}.attribute"),
                "must be 1 to 256 bytes",
            ));
        }
        let Some(op) = Operator::parse(&spec.operator) else {
            errors.push(FieldError::new(
                format!("{path}.operator"),
                format!(
                    "unknown operator `{}`; one of: {}",
                    spec.operator,
                    Operator::ALL.map(Operator::as_str).join(", ")
                ),
            ));
            return None;
        };
        let matcher = matcher(op, &spec.values, &format!("{path}.values"), errors);
        if errors.len() > before {
            return None;
        }
        Some(Self {
            attr: Attr::parse(&spec.attribute),
            matcher: matcher?,
        })
    }

    /// Whether the context satisfies the condition at `now_ms`.
    pub(crate) fn matches(&self, ctx: &Context, now_ms: i64) -> bool {
        let Some(op) = self.attr.read(ctx, now_ms) else {
            return false;
        };
        match (&self.matcher, op) {
            (Matcher::OneOf { values, negated }, op) => {
                values.contains(op).is_some_and(|c| c != *negated)
            }
            (Matcher::Contains(needles), Operand::Str(s)) => {
                needles.iter().any(|n| s.contains(n.as_str()))
            }
            (Matcher::Contains(needles), Operand::List(items)) => items
                .iter()
                .any(|i| i.as_str().is_some_and(|i| needles.iter().any(|n| n == i))),
            (Matcher::StartsWith(p), Operand::Str(s)) => {
                p.iter().any(|p| s.starts_with(p.as_str()))
            }
            (Matcher::EndsWith(p), Operand::Str(s)) => p.iter().any(|p| s.ends_with(p.as_str())),
            (Matcher::Regex(re), Operand::Str(s)) => re.is_match(s),
            (Matcher::Semver(cmp, want), Operand::Str(s)) => {
                parse_version(s).is_some_and(|v| cmp.holds(precedence(&v, want)))
            }
            (Matcher::Number(cmp, want), Operand::Num(n)) => {
                n.partial_cmp(want).is_some_and(|o| cmp.holds(o))
            }
            (Matcher::Date(before, want), op) => {
                let at = match op {
                    Operand::Str(s) => parse_date(s),
                    Operand::Num(n) => epoch_ms(n),
                    _ => None,
                };
                at.is_some_and(|at| if *before { at < *want } else { at > *want })
            }
            _ => false,
        }
    }
}

/// SemVer precedence: build metadata does not count (`1.0.0+a` equals `1.0.0`).
fn precedence(a: &Version, b: &Version) -> Ordering {
    (a.major, a.minor, a.patch, &a.pre).cmp(&(b.major, b.minor, b.patch, &b.pre))
}

mod values;

#[cfg(test)]
mod tests;
