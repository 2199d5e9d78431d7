//! Flags and segments as evaluation runs them: validated, names resolved to indexes, regexes
//! compiled, user lists hashed. Built only by `compile`, so every index is in range.

use foldhash::{HashMap, HashSet};

use super::bucket::Layout;
use super::operator::{Attr, Condition};
use super::{Context, FlagType, Value};

/// A named value of a flag.
#[derive(Debug, Clone, PartialEq)]
pub struct Variant {
    pub name: String,
    pub value: Value,
}

/// A validated flag.
#[derive(Debug, Clone)]
pub struct Flag {
    pub(crate) key: String,
    pub(crate) salt: String,
    pub(crate) kind: FlagType,
    pub(crate) variants: Vec<Variant>,
    pub(crate) default_variant: usize,
    pub(crate) off_variant: usize,
    pub(crate) environments: Vec<(String, Targeting)>,
}

impl Flag {
    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn salt(&self) -> &str {
        &self.salt
    }

    pub fn kind(&self) -> FlagType {
        self.kind
    }

    pub fn variants(&self) -> &[Variant] {
        &self.variants
    }

    pub fn default_variant(&self) -> &Variant {
        &self.variants[self.default_variant]
    }

    pub fn off_variant(&self) -> &Variant {
        &self.variants[self.off_variant]
    }

    /// The environments that have a state of their own.
    pub fn environments(&self) -> impl Iterator<Item = &str> {
        self.environments.iter().map(|(e, _)| e.as_str())
    }

    /// Whether the flag is enabled in the first environment of `chain` that has a state.
    pub fn enabled<S: AsRef<str>>(&self, chain: &[S]) -> bool {
        self.state(chain).is_some_and(|(_, t)| t.enabled)
    }

    /// The state that serves `chain`: the first environment of it that has one.
    pub(crate) fn state<S: AsRef<str>>(&self, chain: &[S]) -> Option<(&str, &Targeting)> {
        chain.iter().find_map(|env| {
            let env = env.as_ref();
            self.environments
                .iter()
                .find(|(e, _)| e == env)
                .map(|(e, t)| (e.as_str(), t))
        })
    }
}

/// A flag's state in one environment.
#[derive(Debug, Clone)]
pub(crate) struct Targeting {
    pub enabled: bool,
    pub rules: Vec<Rule>,
    pub default: Serve,
}

#[derive(Debug, Clone)]
pub(crate) struct Rule {
    pub id: Option<String>,
    /// `None`: any targeting key (or none).
    pub users: Option<HashSet<String>>,
    /// Indexes into the ruleset's segments.
    pub segments: Vec<usize>,
    pub conditions: Vec<Condition>,
    pub serve: Serve,
}

#[derive(Debug, Clone)]
pub(crate) enum Serve {
    /// An index into the flag's variants.
    Variant(usize),
    Split(Split),
}

#[derive(Debug, Clone)]
pub(crate) struct Split {
    /// The flag's variant of each slot of the layout (the split's order).
    pub variants: Vec<usize>,
    pub layout: Layout,
    /// `TargetingKey` or `Named` (never `Now`: refused at validation).
    pub bucket_by: Attr,
    /// Replaces the flag's salt for this split.
    pub salt: Option<String>,
}

/// A validated segment.
#[derive(Debug, Clone)]
pub struct Segment {
    pub(crate) key: String,
    pub(crate) conditions: Vec<Condition>,
    pub(crate) included: HashSet<String>,
    pub(crate) excluded: HashSet<String>,
}

impl Segment {
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Whether the context is in the segment: not excluded, and included or (with at least one
    /// condition) matching every condition.
    pub fn contains(&self, ctx: &Context, now_ms: i64) -> bool {
        if let Some(k) = ctx.targeting_key() {
            if self.excluded.contains(k) {
                return false;
            }
            if self.included.contains(k) {
                return true;
            }
        }
        !self.conditions.is_empty() && self.conditions.iter().all(|c| c.matches(ctx, now_ms))
    }
}

/// The segments flags are compiled against.
#[derive(Debug, Clone, Default)]
pub(crate) struct Segments {
    pub list: Vec<Segment>,
    pub by_key: HashMap<String, usize>,
}

impl Segments {
    pub fn insert(&mut self, segment: Segment) {
        match self.by_key.get(&segment.key) {
            Some(&i) => self.list[i] = segment,
            None => {
                self.by_key.insert(segment.key.clone(), self.list.len());
                self.list.push(segment);
            }
        }
    }
}
