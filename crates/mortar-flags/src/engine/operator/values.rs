//! An operator's values, checked and parsed once at load: counts, types, sizes, regexes
//! compiled under the size limit, versions and times parsed.

use regex::RegexBuilder;
use semver::Version;

use super::{Matcher, Operator, Scalars};
use crate::engine::compile::FieldError;
use crate::engine::{MAX_REGEX_BYTES, MAX_REGEX_LEN, MAX_STRING_BYTES, MAX_VALUES, Value};

/// The matcher of `op` over `values` (at `path`), or its problems appended to `errors`.
pub(super) fn matcher(
    op: Operator,
    values: &[Value],
    path: &str,
    errors: &mut Vec<FieldError>,
) -> Option<Matcher> {
    let mut fail = |at: Option<usize>, msg: String| {
        let field = at.map_or_else(|| path.to_owned(), |i| format!("{path}[{i}]"));
        errors.push(FieldError::new(field, msg));
        None
    };
    let many = matches!(
        op,
        Operator::In
            | Operator::NotIn
            | Operator::Contains
            | Operator::StartsWith
            | Operator::EndsWith
    );
    if values.is_empty() || (!many && values.len() > 1) || values.len() > MAX_VALUES {
        let want = if many {
            format!("1 to {MAX_VALUES} values")
        } else {
            "exactly one value".to_owned()
        };
        return fail(None, format!("`{}` takes {want}", op.as_str()));
    }
    if let Some(i) = values
        .iter()
        .position(|v| v.as_str().is_some_and(|s| s.len() > MAX_STRING_BYTES))
    {
        return fail(
            Some(i),
            format!("strings are at most {MAX_STRING_BYTES} bytes"),
        );
    }
    let one = &values[0];
    match op {
        Operator::Equals | Operator::NotEquals | Operator::In | Operator::NotIn => {
            let mut set = Scalars::default();
            for (i, v) in values.iter().enumerate() {
                match v {
                    Value::String(s) => {
                        set.strings.insert(s.clone());
                    }
                    Value::Number(n) => set.numbers.push(*n),
                    Value::Bool(b) => set.bools.push(*b),
                    other => {
                        return fail(
                            Some(i),
                            format!("a string, number or boolean, not {}", other.type_name()),
                        );
                    }
                }
            }
            let negated = matches!(op, Operator::NotEquals | Operator::NotIn);
            Some(Matcher::OneOf {
                values: set,
                negated,
            })
        }
        Operator::Contains | Operator::StartsWith | Operator::EndsWith => {
            if let Some(i) = values.iter().position(|v| v.as_str().is_none()) {
                let kind = values[i].type_name();
                return fail(Some(i), format!("a string, not {kind}"));
            }
            let strings = values
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect();
            Some(match op {
                Operator::Contains => Matcher::Contains(strings),
                Operator::StartsWith => Matcher::StartsWith(strings),
                _ => Matcher::EndsWith(strings),
            })
        }
        Operator::Regex => {
            let Value::String(pattern) = one else {
                return fail(
                    Some(0),
                    format!("a pattern string, not {}", one.type_name()),
                );
            };
            if pattern.chars().count() > MAX_REGEX_LEN {
                return fail(
                    Some(0),
                    format!("patterns are at most {MAX_REGEX_LEN} characters"),
                );
            }
            match RegexBuilder::new(pattern)
                .size_limit(MAX_REGEX_BYTES)
                .dfa_size_limit(MAX_REGEX_BYTES)
                .build()
            {
                Ok(re) => Some(Matcher::Regex(re)),
                Err(e) => fail(
                    Some(0),
                    format!("the regex does not compile: {}", one_line(&e.to_string())),
                ),
            }
        }
        Operator::SemverEq
        | Operator::SemverLt
        | Operator::SemverLte
        | Operator::SemverGt
        | Operator::SemverGte => match one.as_str().and_then(parse_version) {
            Some(v) => Some(Matcher::Semver(op.cmp(), v)),
            None => fail(
                Some(0),
                "a semantic version string such as `1.4.0` or `2.0.0-rc.1`".into(),
            ),
        },
        Operator::NumberEq
        | Operator::NumberLt
        | Operator::NumberLte
        | Operator::NumberGt
        | Operator::NumberGte => match one {
            Value::Number(n) => Some(Matcher::Number(op.cmp(), *n)),
            other => fail(Some(0), format!("a number, not {}", other.type_name())),
        },
        Operator::DateBefore | Operator::DateAfter => {
            let at = match one {
                Value::String(s) => parse_date(s),
                Value::Number(n) => epoch_ms(*n),
                _ => None,
            };
            match at {
                Some(at) => Some(Matcher::Date(op == Operator::DateBefore, at)),
                None => fail(
                    Some(0),
                    "an RFC 3339 time (`2027-01-01T00:00:00Z`) or epoch milliseconds".into(),
                ),
            }
        }
    }
}

/// A version, with an optional leading `v`.
pub(super) fn parse_version(s: &str) -> Option<Version> {
    let s = s.strip_prefix(['v', 'V']).unwrap_or(s);
    Version::parse(s).ok()
}

pub(super) fn parse_date(s: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|d| d.timestamp_millis())
}

/// A number as epoch milliseconds: finite and whole.
pub(super) fn epoch_ms(n: f64) -> Option<i64> {
    (n.is_finite() && n.fract() == 0.0 && n.abs() < 9.0e15).then_some(n as i64)
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
