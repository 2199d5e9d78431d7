//! Evaluation: a [`Ruleset`] (the compiled flags and segments of one revision) answers a flag
//! for a context with a variant, an OpenFeature reason, an error code when it could not
//! proceed, and the environment and rule that decided.

use foldhash::HashMap;

use super::bucket::bucket;
use super::compile::{FieldError, compile_flag, compile_segment};
use super::compiled::{Flag, Rule, Segments, Serve, Split, Variant};
use super::operator::Attr;
use super::spec::{FlagSpec, SegmentSpec};
use super::{Context, FlagType, TARGETING_KEY, Value};

/// Why an evaluation answered what it did (OpenFeature's reasons).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Enabled, no rules, the default variant.
    Static,
    /// A rule matched and served its variant.
    TargetingMatch,
    /// A percentage split chose the variant (in a rule or as the default).
    Split,
    /// Rules exist, none matched: the default variant.
    Default,
    /// The flag is off (or has no state in the environment): the off variant.
    Disabled,
    /// The evaluation could not proceed: see the error code.
    Error,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Static => "STATIC",
            Self::TargetingMatch => "TARGETING_MATCH",
            Self::Split => "SPLIT",
            Self::Default => "DEFAULT",
            Self::Disabled => "DISABLED",
            Self::Error => "ERROR",
        }
    }
}

/// OpenFeature's error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    FlagNotFound,
    TargetingKeyMissing,
    InvalidContext,
    TypeMismatch,
    ParseError,
    General,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FlagNotFound => "FLAG_NOT_FOUND",
            Self::TargetingKeyMissing => "TARGETING_KEY_MISSING",
            Self::InvalidContext => "INVALID_CONTEXT",
            Self::TypeMismatch => "TYPE_MISMATCH",
            Self::ParseError => "PARSE_ERROR",
            Self::General => "GENERAL",
        }
    }
}

/// The answer for one flag and context.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation<'a> {
    /// `None` only with `FLAG_NOT_FOUND`, `PARSE_ERROR` or `TYPE_MISMATCH` (no usable
    /// definition: the caller's own default applies).
    pub variant: Option<&'a Variant>,
    pub reason: Reason,
    /// With reason `ERROR`: the code and a message.
    pub error: Option<(ErrorCode, String)>,
    /// The environment whose state decided.
    pub environment: Option<&'a str>,
    /// The index of the rule that matched.
    pub rule: Option<usize>,
    /// Its id, when it has one.
    pub rule_id: Option<&'a str>,
}

impl<'a> Evaluation<'a> {
    pub fn value(&self) -> Option<&'a Value> {
        self.variant.map(|v| &v.value)
    }

    pub fn variant_name(&self) -> Option<&'a str> {
        self.variant.map(|v| v.name.as_str())
    }

    fn failed(code: ErrorCode, message: String) -> Self {
        Self {
            variant: None,
            reason: Reason::Error,
            error: Some((code, message)),
            environment: None,
            rule: None,
            rule_id: None,
        }
    }
}

/// The compiled flags and segments of one revision. Flags that do not compile are kept as
/// their problems and answer `PARSE_ERROR`; the others are unaffected.
#[derive(Debug, Clone, Default)]
pub struct Ruleset {
    flags: HashMap<String, Result<Flag, Vec<FieldError>>>,
    segments: Segments,
    broken_segments: Vec<(String, Vec<FieldError>)>,
}

impl Ruleset {
    /// Compiles every segment, then every flag against them. A flag referencing a segment that
    /// does not compile is broken too (`unknown segment`).
    pub fn build(segments: &[SegmentSpec], flags: &[FlagSpec]) -> Self {
        let mut out = Self::default();
        for spec in segments {
            match compile_segment(spec) {
                Ok(s) => out.segments.insert(s),
                Err(e) => out.broken_segments.push((spec.key.clone(), e)),
            }
        }
        for spec in flags {
            out.flags
                .insert(spec.key.clone(), compile_flag(spec, &out.segments));
        }
        out
    }

    /// Validates and compiles a flag against this ruleset's segments (what a write checks).
    pub fn compile(&self, spec: &FlagSpec) -> Result<Flag, Vec<FieldError>> {
        compile_flag(spec, &self.segments)
    }

    /// The flag `key`, when it compiled.
    pub fn flag(&self, key: &str) -> Option<&Flag> {
        self.flags.get(key).and_then(|f| f.as_ref().ok())
    }

    /// Every flag key, sorted.
    pub fn keys(&self) -> Vec<&str> {
        let mut keys: Vec<&str> = self.flags.keys().map(String::as_str).collect();
        keys.sort_unstable();
        keys
    }

    /// Flags and segments that did not compile, with their problems.
    pub fn problems(&self) -> Vec<(&str, &[FieldError])> {
        let flags = self
            .flags
            .iter()
            .filter_map(|(k, f)| f.as_ref().err().map(|e| (k.as_str(), e.as_slice())));
        let segments = self
            .broken_segments
            .iter()
            .map(|(k, e)| (k.as_str(), e.as_slice()));
        flags.chain(segments).collect()
    }

    /// Evaluates flag `key` for `ctx` in the environment whose chain is `chain` (the
    /// environment first, then those it falls back to), at `now_ms`.
    pub fn evaluate<S: AsRef<str>>(
        &self,
        key: &str,
        chain: &[S],
        ctx: &Context,
        now_ms: i64,
    ) -> Evaluation<'_> {
        match self.flags.get(key) {
            None => Evaluation::failed(ErrorCode::FlagNotFound, format!("no flag `{key}`")),
            Some(Err(problems)) => Evaluation::failed(
                ErrorCode::ParseError,
                format!(
                    "the flag's definition does not load: {}",
                    problems
                        .first()
                        .map(ToString::to_string)
                        .unwrap_or_default()
                ),
            ),
            Some(Ok(flag)) => self.evaluate_flag(flag, chain, ctx, now_ms),
        }
    }

    /// As [`Self::evaluate`], for a caller that expects a flag of type `kind`:
    /// `TYPE_MISMATCH` when the flag is of another.
    pub fn evaluate_as<S: AsRef<str>>(
        &self,
        key: &str,
        kind: FlagType,
        chain: &[S],
        ctx: &Context,
        now_ms: i64,
    ) -> Evaluation<'_> {
        match self.flag(key) {
            Some(flag) if flag.kind != kind => Evaluation::failed(
                ErrorCode::TypeMismatch,
                format!(
                    "`{key}` is a {} flag, not {}",
                    flag.kind.as_str(),
                    kind.as_str()
                ),
            ),
            _ => self.evaluate(key, chain, ctx, now_ms),
        }
    }

    /// Evaluates a compiled flag (which must have been compiled against this ruleset's
    /// segments: [`Self::compile`] or [`Self::build`]).
    pub fn evaluate_flag<'a, S: AsRef<str>>(
        &'a self,
        flag: &'a Flag,
        chain: &[S],
        ctx: &Context,
        now_ms: i64,
    ) -> Evaluation<'a> {
        let mut out = Evaluation {
            variant: Some(&flag.variants[flag.off_variant]),
            reason: Reason::Disabled,
            error: None,
            environment: None,
            rule: None,
            rule_id: None,
        };
        let Some((env, state)) = flag.state(chain) else {
            return out;
        };
        out.environment = Some(env);
        if !state.enabled {
            return out;
        }
        let (serve, reason) = match state
            .rules
            .iter()
            .position(|r| self.matches(r, ctx, now_ms))
        {
            Some(i) => {
                let rule = &state.rules[i];
                out.rule = Some(i);
                out.rule_id = rule.id.as_deref();
                (&rule.serve, Reason::TargetingMatch)
            }
            None if state.rules.is_empty() => (&state.default, Reason::Static),
            None => (&state.default, Reason::Default),
        };
        match serve {
            Serve::Variant(v) => {
                out.variant = Some(&flag.variants[*v]);
                out.reason = reason;
            }
            Serve::Split(split) => match pick(split, &flag.salt, ctx) {
                Ok(v) => {
                    out.variant = Some(&flag.variants[v]);
                    out.reason = Reason::Split;
                }
                Err(e) => {
                    out.variant = Some(&flag.variants[flag.default_variant]);
                    out.reason = Reason::Error;
                    out.error = Some(e);
                }
            },
        }
        out
    }

    fn matches(&self, rule: &Rule, ctx: &Context, now_ms: i64) -> bool {
        if let Some(users) = &rule.users
            && !ctx.targeting_key().is_some_and(|k| users.contains(k))
        {
            return false;
        }
        rule.conditions.iter().all(|c| c.matches(ctx, now_ms))
            && rule
                .segments
                .iter()
                .all(|&s| self.segments.list[s].contains(ctx, now_ms))
    }
}

/// The flag variant a split gives the context, or why it cannot choose.
fn pick(split: &Split, flag_salt: &str, ctx: &Context) -> Result<usize, (ErrorCode, String)> {
    let salt = split.salt.as_deref().unwrap_or(flag_salt);
    let b = match &split.bucket_by {
        Attr::Named(name) => match ctx.get(name) {
            Some(Value::String(s)) => bucket(salt, s),
            Some(Value::Number(n)) => bucket(salt, &number_text(*n)),
            Some(other) => {
                return Err((
                    ErrorCode::InvalidContext,
                    format!(
                        "the split buckets by `{name}`, a string or number here, not {}",
                        other.type_name()
                    ),
                ));
            }
            None => {
                return Err((
                    ErrorCode::InvalidContext,
                    format!("the split buckets by `{name}`, which the context lacks"),
                ));
            }
        },
        Attr::TargetingKey | Attr::Now => match ctx.targeting_key() {
            Some(k) => bucket(salt, k),
            None => {
                return Err((
                    ErrorCode::TargetingKeyMissing,
                    format!("the split buckets by `{TARGETING_KEY}`, which the context lacks"),
                ));
            }
        },
    };
    Ok(split.variants[split.layout.slot(b)])
}

/// A number as bucketing hashes it: integers without a fraction (`42`, not `42.0`).
fn number_text(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 9.0e15 {
        format!("{}", n as i64)
    } else {
        format!("{n}")
    }
}

#[cfg(test)]
mod tests;
