//! The API kit every block's routes share: one pagination rule ([`Page`], [`PageParams`]) and one
//! name validator ([`NameRule`]), so that lists and names behave the same in every block.
//!
//! Pagination: `?limit=&cursor=` → `{items, next_cursor}`. A store fetches `limit + 1` rows after
//! the cursor; [`Page::from_overfetch`] keeps `limit` and sets `next_cursor` only when the extra
//! row proved there is more, so a client never gets a final empty page. Cursors are opaque to
//! clients (today: the last item's sort key). A `limit` outside `1..=max` is a 422 naming the
//! field.

use serde::{Deserialize, Serialize};

use crate::problem::{FieldError, Problem};

/// One page of a list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// The page from `rows` fetched with `limit + 1`: at most `limit` items, and a cursor (the
    /// last kept item's, by `cursor_of`) only when a further row exists.
    pub fn from_overfetch(mut rows: Vec<T>, limit: u32, cursor_of: impl Fn(&T) -> String) -> Self {
        let limit = limit as usize;
        let next_cursor = if rows.len() > limit {
            rows.truncate(limit);
            rows.last().map(cursor_of)
        } else {
            None
        };
        Self {
            items: rows,
            next_cursor,
        }
    }

    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Page<U> {
        Page {
            items: self.items.into_iter().map(f).collect(),
            next_cursor: self.next_cursor,
        }
    }
}

/// `?limit=&cursor=`.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// Most items to return.
    #[param(minimum = 1)]
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

impl PageParams {
    /// The limit asked for, or `default`; 422 (naming `limit`) unless it is 1 to `max`.
    pub fn limit(&self, default: u32, max: u32) -> Result<u32, Problem> {
        page_limit(self.limit, default, max)
    }

    /// The cursor, `""` for the first page.
    pub fn cursor(&self) -> &str {
        self.cursor.as_deref().unwrap_or("")
    }
}

/// A list route's `limit` (for query structs that carry filters besides `limit` and `cursor`):
/// `default` when absent, 422 naming `limit` unless it is 1 to `max`.
pub fn page_limit(limit: Option<u32>, default: u32, max: u32) -> Result<u32, Problem> {
    match limit.unwrap_or(default) {
        l if (1..=max).contains(&l) => Ok(l),
        _ => Err(Problem::validation(vec![FieldError::new(
            "limit",
            format!("must be 1 to {max}"),
        )])),
    }
}

/// What a block accepts as a name (of a queue, a policy, a lock, …): ASCII letters and digits
/// plus some punctuation, 1 to `max_len` bytes, none of the `reserved` words (route segments).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NameRule {
    pub max_len: usize,
    /// Punctuation allowed besides letters and digits.
    pub punctuation: &'static str,
    pub reserved: &'static [&'static str],
}

/// The default name: 1 to 128 of letters, digits, `_`, `.`, `-`, `:`.
pub const NAME: NameRule = NameRule::new(128, "_.-:");

impl NameRule {
    pub const fn new(max_len: usize, punctuation: &'static str) -> Self {
        Self {
            max_len,
            punctuation,
            reserved: &[],
        }
    }

    /// The same rule, refusing `words` (route segments that a name would shadow).
    #[must_use]
    pub const fn reserving(self, words: &'static [&'static str]) -> Self {
        Self {
            reserved: words,
            ..self
        }
    }

    pub fn is_valid(&self, s: &str) -> bool {
        !s.is_empty()
            && s.len() <= self.max_len
            && s.bytes().all(|b| {
                b.is_ascii_alphanumeric() || (b.is_ascii() && self.punctuation.contains(b as char))
            })
            && !self.reserved.contains(&s)
    }

    /// `Ok`, or the field error saying the rule.
    pub fn check(&self, field: &str, s: &str) -> Result<(), FieldError> {
        if self.is_valid(s) {
            Ok(())
        } else if self.reserved.contains(&s) {
            Err(FieldError::new(field, format!("`{s}` is reserved")))
        } else {
            Err(FieldError::new(
                field,
                format!("must be {}", self.describe()),
            ))
        }
    }

    /// "1 to 128 of letters, digits, `_`, `.`, `-`, `:`".
    pub fn describe(&self) -> String {
        let mut out = format!("1 to {} of letters, digits", self.max_len);
        for c in self.punctuation.chars() {
            out.push_str(", `");
            out.push(c);
            out.push('`');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_has_a_cursor_only_when_more_rows_exist() {
        let page = Page::from_overfetch(vec![1, 2, 3], 2, ToString::to_string);
        assert_eq!(page.items, [1, 2]);
        assert_eq!(page.next_cursor.as_deref(), Some("2"));
        let last = Page::from_overfetch(vec![3], 2, ToString::to_string);
        assert_eq!((last.items, last.next_cursor), (vec![3], None));
        let exact = Page::from_overfetch(vec![1, 2], 2, ToString::to_string);
        assert_eq!(exact.next_cursor, None, "no final empty page");
        let json =
            serde_json::to_value(Page::from_overfetch(vec![1], 5, ToString::to_string)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"items": [1]}),
            "next_cursor omitted"
        );
    }

    #[test]
    fn limits_are_checked() {
        let p = |l| PageParams {
            limit: l,
            cursor: None,
        };
        assert_eq!(p(None).limit(50, 1000).unwrap(), 50);
        assert_eq!(p(Some(1000)).limit(50, 1000).unwrap(), 1000);
        for bad in [0, 1001] {
            let e = p(Some(bad)).limit(50, 1000).unwrap_err();
            assert_eq!(e.status, 422);
        }
    }

    #[test]
    fn names_follow_one_rule_with_one_message() {
        assert!(NAME.is_valid("billing.emails:v2"));
        for bad in ["", "a b", "é", "a/b"] {
            assert!(!NAME.is_valid(bad), "{bad:?}");
        }
        assert!(!NAME.is_valid(&"a".repeat(129)));
        let e = NAME.check("queue", "a b").unwrap_err();
        assert_eq!(e.field, "queue");
        assert_eq!(
            e.message,
            "must be 1 to 128 of letters, digits, `_`, `.`, `-`, `:`"
        );
        let policies = NameRule::new(128, "_.-").reserving(&["check"]);
        assert_eq!(
            policies.check("name", "check").unwrap_err().message,
            "`check` is reserved"
        );
    }
}
