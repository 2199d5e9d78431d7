//! Each operator: matches, non-matches, a missing attribute, the wrong type, and the values
//! it refuses at load.

use super::*;
use crate::engine::{MAX_REGEX_LEN, MAX_STRING_BYTES, MAX_VALUES};

fn cond(attribute: &str, operator: &str, values: Vec<Value>) -> Condition {
    let mut errors = Vec::new();
    let c = Condition::compile(
        &ConditionSpec {
            attribute: attribute.into(),
            operator: operator.into(),
            values,
        },
        "c",
        &mut errors,
    );
    assert!(errors.is_empty(), "{errors:?}");
    c.unwrap()
}

fn refused(operator: &str, values: Vec<Value>) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let c = Condition::compile(
        &ConditionSpec {
            attribute: "a".into(),
            operator: operator.into(),
            values,
        },
        "c",
        &mut errors,
    );
    assert!(c.is_none());
    assert!(!errors.is_empty());
    errors
}

fn ctx(name: &str, v: impl Into<Value>) -> Context {
    Context::new("user-1").with(name, v)
}

fn s(v: &str) -> Value {
    Value::from(v)
}

fn n(v: f64) -> Value {
    Value::from(v)
}

const NOW: i64 = 1_800_000_000_000;

#[test]
fn equals_and_not_equals() {
    let eq = cond("plan", "equals", vec![s("pro")]);
    let ne = cond("plan", "not_equals", vec![s("pro")]);
    assert!(eq.matches(&ctx("plan", "pro"), NOW));
    assert!(!eq.matches(&ctx("plan", "Pro"), NOW), "case-sensitive");
    assert!(ne.matches(&ctx("plan", "free"), NOW));
    assert!(!ne.matches(&ctx("plan", "pro"), NOW));
    // Missing or of another type: neither matches.
    for c in [&eq, &ne] {
        assert!(!c.matches(&Context::new("u"), NOW));
        assert!(!c.matches(&ctx("plan", 3_i64), NOW));
        assert!(!c.matches(&ctx("plan", Value::Null), NOW));
        assert!(!c.matches(&ctx("plan", Value::Array(vec![s("pro")])), NOW));
    }
    let num = cond("n", "equals", vec![n(3.0)]);
    assert!(num.matches(&ctx("n", 3_i64), NOW));
    assert!(!num.matches(&ctx("n", "3"), NOW), "no coercion");
    let yes = cond("beta", "equals", vec![Value::Bool(true)]);
    assert!(yes.matches(&ctx("beta", true), NOW));
    assert!(!yes.matches(&ctx("beta", false), NOW));
    assert!(!yes.matches(&ctx("beta", "true"), NOW));
    // The targeting key is an attribute like any other.
    let tk = cond("targetingKey", "equals", vec![s("user-1")]);
    assert!(tk.matches(&Context::new("user-1"), NOW));
    assert!(!tk.matches(&Context::anonymous(), NOW));
}

#[test]
fn in_and_not_in() {
    let list = vec![s("FR"), s("DE"), n(7.0)];
    let is_in = cond("country", "in", list.clone());
    let not_in = cond("country", "not_in", list);
    assert!(is_in.matches(&ctx("country", "DE"), NOW));
    assert!(is_in.matches(&ctx("country", 7_i64), NOW));
    assert!(!is_in.matches(&ctx("country", "US"), NOW));
    assert!(not_in.matches(&ctx("country", "US"), NOW));
    assert!(not_in.matches(&ctx("country", 8_i64), NOW));
    assert!(!not_in.matches(&ctx("country", "FR"), NOW));
    for c in [&is_in, &not_in] {
        assert!(!c.matches(&Context::new("u"), NOW), "missing");
        assert!(
            !c.matches(&ctx("country", true), NOW),
            "no boolean among the values"
        );
        assert!(
            !c.matches(&ctx("country", Value::Array(vec![s("FR")])), NOW),
            "a list"
        );
    }
}

#[test]
fn contains_starts_with_ends_with() {
    let c = cond("email", "contains", vec![s("@acme."), s("@corp.")]);
    assert!(c.matches(&ctx("email", "ann@acme.io"), NOW));
    assert!(c.matches(&ctx("email", "bob@corp.com"), NOW));
    assert!(!c.matches(&ctx("email", "eve@evil.io"), NOW));
    assert!(!c.matches(&ctx("email", 5_i64), NOW));
    assert!(!c.matches(&Context::new("u"), NOW));
    // On a list attribute: an element equal to a value.
    let groups = cond("groups", "contains", vec![s("beta")]);
    assert!(groups.matches(
        &ctx("groups", Value::Array(vec![s("staff"), s("beta")])),
        NOW
    ));
    assert!(!groups.matches(&ctx("groups", Value::Array(vec![s("betas")])), NOW));
    assert!(!groups.matches(&ctx("groups", Value::Array(vec![])), NOW));
    // The empty string is in every string.
    assert!(cond("a", "contains", vec![s("")]).matches(&ctx("a", ""), NOW));
    let sw = cond("path", "starts_with", vec![s("/api/"), s("/v2/")]);
    assert!(sw.matches(&ctx("path", "/v2/x"), NOW));
    assert!(!sw.matches(&ctx("path", "/API/x"), NOW));
    assert!(!sw.matches(&ctx("path", Value::Array(vec![s("/api/")])), NOW));
    let ew = cond("email", "ends_with", vec![s(".fr")]);
    assert!(ew.matches(&ctx("email", "a@b.fr"), NOW));
    assert!(!ew.matches(&ctx("email", "a@b.fr.com"), NOW));
    assert!(!ew.matches(&ctx("email", 1_i64), NOW));
    assert!(refused("contains", vec![n(1.0)])[0].field == "c.values[0]");
    assert!(refused("starts_with", vec![])[0].message.contains("1 to"));
}

#[test]
fn regex() {
    let r = cond("email", "regex", vec![s(r"@(acme|corp)\.com$")]);
    assert!(r.matches(&ctx("email", "x@acme.com"), NOW));
    assert!(!r.matches(&ctx("email", "x@acme.com.evil"), NOW));
    assert!(!r.matches(&ctx("email", 3_i64), NOW));
    assert!(!r.matches(&Context::new("u"), NOW));
    // Unanchored unless written so.
    assert!(cond("a", "regex", vec![s("b")]).matches(&ctx("a", "abc"), NOW));
    let bad = refused("regex", vec![s("(unclosed")]);
    assert_eq!(bad[0].field, "c.values[0]");
    assert!(bad[0].message.contains("does not compile"));
    let huge = refused("regex", vec![s(r"\w{1000}\w{1000}\w{1000}")]);
    assert!(huge[0].message.contains("does not compile"), "{huge:?}");
    let long = refused("regex", vec![s(&"a".repeat(MAX_REGEX_LEN + 1))]);
    assert!(long[0].message.contains("at most"));
    assert!(
        refused("regex", vec![s("a"), s("b")])[0]
            .message
            .contains("exactly one")
    );
    assert!(
        refused("regex", vec![n(1.0)])[0]
            .message
            .contains("pattern")
    );
}

#[test]
fn semver_comparisons() {
    let v = |op: &str, want: &str, have: &str| {
        cond("app", op, vec![s(want)]).matches(&ctx("app", have), NOW)
    };
    assert!(v("semver_eq", "1.2.3", "1.2.3"));
    assert!(v("semver_eq", "1.2.3", "v1.2.3"), "a leading v");
    assert!(
        v("semver_eq", "1.2.3", "1.2.3+build.7"),
        "build metadata has no precedence"
    );
    assert!(!v("semver_eq", "1.2.3", "1.2.4"));
    assert!(v("semver_lt", "1.10.0", "1.9.9"), "numeric, not lexical");
    assert!(
        v("semver_lt", "1.0.0", "1.0.0-rc.1"),
        "a pre-release precedes its release"
    );
    assert!(v("semver_lt", "1.0.0-beta", "1.0.0-alpha.2"));
    assert!(v("semver_lte", "2.0.0", "2.0.0"));
    assert!(!v("semver_lte", "2.0.0", "2.0.1"));
    assert!(v("semver_gt", "2.0.0", "10.0.0"));
    assert!(v("semver_gte", "2.0.0", "2.0.0"));
    assert!(!v("semver_gte", "2.0.0", "2.0.0-rc.9"));
    // Not a version: no match, whatever the comparison.
    for op in ["semver_eq", "semver_lt", "semver_gt"] {
        assert!(!v(op, "1.0.0", "1.0"));
        assert!(!v(op, "1.0.0", "latest"));
        assert!(!cond("app", op, vec![s("1.0.0")]).matches(&ctx("app", 1_i64), NOW));
        assert!(!cond("app", op, vec![s("1.0.0")]).matches(&Context::new("u"), NOW));
    }
    assert_eq!(
        refused("semver_gte", vec![s("1.2")])[0].field,
        "c.values[0]"
    );
    assert!(!refused("semver_gte", vec![n(1.0)]).is_empty());
}

#[test]
fn number_comparisons() {
    let v = |op: &str, want: f64, have: Value| {
        cond("age", op, vec![n(want)]).matches(&Context::new("u").with("age", have), NOW)
    };
    assert!(v("number_eq", 30.0, n(30.0)));
    assert!(!v("number_eq", 30.0, n(30.5)));
    assert!(v("number_lt", 30.0, n(29.99)));
    assert!(!v("number_lt", 30.0, n(30.0)));
    assert!(v("number_lte", 30.0, n(30.0)));
    assert!(v("number_gt", -1.0, n(0.0)));
    assert!(!v("number_gt", 30.0, n(30.0)));
    assert!(v("number_gte", 30.0, n(30.0)));
    assert!(!v("number_gte", 30.0, n(-30.0)));
    for op in ["number_eq", "number_lt", "number_gte"] {
        assert!(!v(op, 30.0, s("30")), "a numeric string is not a number");
        assert!(!v(op, 30.0, Value::Bool(true)));
        assert!(!cond("age", op, vec![n(1.0)]).matches(&Context::new("u"), NOW));
    }
    // `$now` is the evaluation time in epoch milliseconds.
    let after = cond("$now", "number_gte", vec![n(1_800_000_000_000.0)]);
    assert!(after.matches(&Context::anonymous(), NOW));
    assert!(!after.matches(&Context::anonymous(), NOW - 1));
    assert!(
        refused("number_lt", vec![s("30")])[0]
            .message
            .contains("a number")
    );
    assert!(
        refused("number_lt", vec![])[0]
            .message
            .contains("exactly one")
    );
}

#[test]
fn date_comparisons() {
    let before = cond("signup", "date_before", vec![s("2026-01-01T00:00:00Z")]);
    let after = cond("signup", "date_after", vec![n(1_767_225_600_000.0)]); // 2026-01-01
    assert!(before.matches(&ctx("signup", "2025-12-31T23:59:59.999Z"), NOW));
    assert!(
        !before.matches(&ctx("signup", "2026-01-01T00:00:00Z"), NOW),
        "strictly before"
    );
    assert!(
        before.matches(&ctx("signup", "2026-01-01T00:30:00+01:00"), NOW),
        "offsets count"
    );
    assert!(
        before.matches(&ctx("signup", 1_000_i64), NOW),
        "epoch milliseconds"
    );
    assert!(after.matches(&ctx("signup", "2026-01-01T00:00:00.001Z"), NOW));
    assert!(
        !after.matches(&ctx("signup", "2026-01-01T00:00:00Z"), NOW),
        "strictly after"
    );
    assert!(after.matches(&ctx("signup", 1_767_225_600_001_i64), NOW));
    for c in [&before, &after] {
        assert!(!c.matches(&ctx("signup", "yesterday"), NOW));
        assert!(
            !c.matches(&ctx("signup", "2026-01-01"), NOW),
            "a date without a time"
        );
        assert!(
            !c.matches(&ctx("signup", 1.5), NOW),
            "not whole milliseconds"
        );
        assert!(!c.matches(&ctx("signup", true), NOW));
        assert!(!c.matches(&Context::new("u"), NOW));
    }
    // A scheduled release: on from a moment.
    let launch = cond("$now", "date_after", vec![s("2027-01-15T09:00:00Z")]);
    let at = |t: &str| {
        chrono::DateTime::parse_from_rfc3339(t)
            .unwrap()
            .timestamp_millis()
    };
    assert!(!launch.matches(&Context::anonymous(), at("2027-01-15T08:59:59Z")));
    assert!(launch.matches(&Context::anonymous(), at("2027-01-15T09:00:01Z")));
    assert!(
        refused("date_after", vec![s("soon")])[0]
            .message
            .contains("RFC 3339")
    );
    assert!(!refused("date_before", vec![n(1.5)]).is_empty());
}

#[test]
fn refused_conditions_name_their_field() {
    let mut errors = Vec::new();
    let spec = ConditionSpec {
        attribute: String::new(),
        operator: "matches".into(),
        values: vec![],
    };
    assert!(Condition::compile(&spec, "rules[0].conditions[2]", &mut errors).is_none());
    let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "rules[0].conditions[2].attribute",
            "rules[0].conditions[2].operator"
        ]
    );
    assert!(errors[1].message.contains("unknown operator `matches`"));
    assert!(errors[1].message.contains("semver_gte"));
    let e = refused("in", vec![s("a"), Value::Null]);
    assert_eq!(e[0].field, "c.values[1]");
    let e = refused("equals", vec![s("a"), s("b")]);
    assert_eq!(e[0].field, "c.values");
    let e = refused("in", vec![s("x"); MAX_VALUES + 1]);
    assert!(e[0].message.contains("1 to 1000"));
    let e = refused("equals", vec![s(&"x".repeat(MAX_STRING_BYTES + 1))]);
    assert_eq!(e[0].field, "c.values[0]");
    for op in Operator::ALL {
        assert_eq!(Operator::parse(op.as_str()), Some(op));
    }
}
