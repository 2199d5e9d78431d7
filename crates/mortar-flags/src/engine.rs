//! Flag evaluation, pure: definitions in ([`FlagSpec`], [`SegmentSpec`]), validated and compiled
//! once ([`Ruleset::build`], [`Ruleset::compile`]: regexes, versions, dates and user lists
//! parsed, segments and variants resolved to indexes), then evaluated against a [`Context`]
//! with `now` passed in. No IO, no clock, no wire format: the server and the SDK share it.
//!
//! * `value` — [`Value`] (the engine's JSON-like values) and [`Context`].
//! * `spec` — definitions as written, before validation.
//! * `compiled` — what evaluation runs on; `compile` — validation with field paths.
//! * `operator` — the condition operators; `bucket` — hashing and the split layout.
//! * `eval` — [`Ruleset`], [`Evaluation`], reasons and error codes.

mod bucket;
mod compile;
mod compiled;
mod eval;
mod operator;
mod spec;
mod value;

pub use bucket::{BUCKETS, Layout, bucket};
pub use compile::{FieldError, validate_segment};
pub use compiled::{Flag, Segment, Variant};
pub use eval::{ErrorCode, Evaluation, Reason, Ruleset};
pub use operator::Operator;
pub use spec::{
    ConditionSpec, FlagSpec, FlagType, RuleSpec, SegmentSpec, ServeSpec, SplitSpec, TargetingSpec,
    VariantSpec,
};
pub use value::{Context, Value};

/// Longest flag key (`A-Z a-z 0-9 _ - .`).
pub const MAX_KEY_LEN: usize = 128;
/// Longest name of a variant, segment, environment, rule id or salt (`A-Z a-z 0-9 _ -`).
pub const MAX_NAME_LEN: usize = 64;
/// Most variants of a flag.
pub const MAX_VARIANTS: usize = 64;
/// Most environments with a state, per flag.
pub const MAX_ENVIRONMENTS: usize = 64;
/// Most rules per environment.
pub const MAX_RULES: usize = 200;
/// Most conditions per rule or segment.
pub const MAX_CONDITIONS: usize = 50;
/// Most segments one rule references.
pub const MAX_RULE_SEGMENTS: usize = 20;
/// Most users in a rule's or a segment's list.
pub const MAX_USERS: usize = 10_000;
/// Most values of one condition.
pub const MAX_VALUES: usize = 1000;
/// Longest string in a definition or a context, in bytes.
pub const MAX_STRING_BYTES: usize = 4096;
/// Longest regex pattern, in characters.
pub const MAX_REGEX_LEN: usize = 1024;
/// Largest compiled regex, in bytes (`regex::RegexBuilder::size_limit`).
pub const MAX_REGEX_BYTES: usize = 256 * 1024;
/// Most attributes of a context (`targetingKey` included).
pub const MAX_CONTEXT_ATTRIBUTES: usize = 256;
/// Deepest nesting of arrays and objects in a context value.
pub const MAX_CONTEXT_DEPTH: usize = 8;

/// The attribute naming the context's targeting key.
pub const TARGETING_KEY: &str = "targetingKey";
/// The attribute naming the evaluation time (epoch milliseconds).
pub const NOW: &str = "$now";

/// A flag key: 1 to [`MAX_KEY_LEN`] characters of `A-Z a-z 0-9 _ - .`.
pub fn is_flag_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= MAX_KEY_LEN
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// A name (variant, segment, environment, rule id, salt): 1 to [`MAX_NAME_LEN`] characters of
/// `A-Z a-z 0-9 _ -`.
pub fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
}

#[cfg(test)]
mod tests;
