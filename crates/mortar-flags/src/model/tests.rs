//! The JSON shapes: a documented example loads and evaluates, mistakes have paths, contexts
//! are checked, values round-trip.

use serde_json::json;

use super::*;
use crate::engine::{ErrorCode, Reason, Ruleset};

fn example() -> Json {
    json!({
        "key": "new-checkout", "type": "boolean", "salt": "01JDSALT",
        "description": "the one-page checkout", "tags": ["checkout"], "owner": "payments",
        "variants": {"on": true, "off": false},
        "default_variant": "off", "off_variant": "off",
        "environments": {"prod": {"enabled": true,
            "rules": [
                {"id": "beta", "segments": ["beta-testers"], "serve": {"variant": "on"}},
                {"conditions": [{"attribute": "app_version", "operator": "semver_gte", "value": "2.1.0"}],
                 "serve": {"split": [{"variant": "on", "weight": 25}, {"variant": "off", "weight": 75}],
                           "bucket_by": "org_id"}}],
            "default": {"variant": "off"}}}
    })
}

fn segment() -> SegmentDoc {
    serde_json::from_value(json!({"key": "beta-testers", "included": ["ann"]})).unwrap()
}

fn ctx(v: &Json) -> Context {
    context(v.as_object().unwrap()).unwrap()
}

#[test]
fn the_documented_example_loads_and_evaluates() {
    let doc: FlagDoc = serde_json::from_value(example()).unwrap();
    assert!(doc.temporary, "flags are temporary unless said otherwise");
    let r = Ruleset::build(&[segment().to_spec()], &[doc.to_spec().unwrap()]);
    assert!(r.problems().is_empty(), "{:?}", r.problems());
    let prod = ["prod", "base"];
    let e = r.evaluate(
        "new-checkout",
        &prod,
        &ctx(&json!({"targetingKey": "ann"})),
        0,
    );
    assert_eq!((e.variant_name(), e.rule_id), (Some("on"), Some("beta")));
    let e = r.evaluate(
        "new-checkout",
        &prod,
        &ctx(&json!({"targetingKey": "bob", "app_version": "2.3.0", "org_id": 7})),
        0,
    );
    assert_eq!((e.reason, e.rule), (Reason::Split, Some(1)));
    let e = r.evaluate(
        "new-checkout",
        &prod,
        &ctx(&json!({"targetingKey": "bob"})),
        0,
    );
    assert_eq!(e.reason, Reason::Default);
    // It serializes back to the same document (weights become floats: `25.0`).
    let back = serde_json::to_value(&doc).unwrap();
    let state = |v: &Json| v["environments"]["prod"]["rules"][0].clone();
    assert_eq!(state(&back), state(&example()));
    assert_eq!(back["variants"], example()["variants"]);
}

#[test]
fn mistakes_have_paths() {
    let mut v = example();
    v["type"] = json!("bool");
    v["environments"]["prod"]["default"] = json!({"variant": "off", "bucket_by": "org_id"});
    let doc: FlagDoc = serde_json::from_value(v).unwrap();
    let fields: Vec<String> = doc
        .to_spec()
        .unwrap_err()
        .into_iter()
        .map(|e| e.field)
        .collect();
    assert_eq!(fields, ["type", "environments.prod.default.bucket_by"]);
    // Unknown fields are refused by the shape itself.
    let mut v = example();
    v["environments"]["prod"]["rules"][0]["serve"]["percent"] = json!(5);
    assert!(serde_json::from_value::<FlagDoc>(v).is_err());
    // The engine's validation sees through `value` and `values`.
    let mut v = example();
    v["environments"]["prod"]["rules"][1]["conditions"][0]["values"] = json!(["3.0.0"]);
    let spec = serde_json::from_value::<FlagDoc>(v)
        .unwrap()
        .to_spec()
        .unwrap();
    let e = Ruleset::build(&[segment().to_spec()], &[])
        .compile(&spec)
        .unwrap_err();
    assert_eq!(
        e[0].field,
        "environments.prod.rules[1].conditions[0].values"
    );
}

#[test]
fn contexts_are_checked() {
    assert!(context(json!({"targetingKey": 5}).as_object().unwrap()).is_err());
    let big: Map<String, Json> = (0..300).map(|i| (format!("a{i}"), json!(i))).collect();
    assert!(context(&big).unwrap_err().contains("attributes"));
    let c = ctx(&json!({"targetingKey": "u", "groups": ["beta"], "n": 1.5}));
    assert_eq!(c.targeting_key(), Some("u"));
    assert_eq!(c.get("n"), Some(&Value::Number(1.5)));
    // Without a targeting key a split cannot bucket: the default, with the error code.
    let doc: FlagDoc = serde_json::from_value(json!({
        "key": "f", "type": "string", "salt": "s",
        "variants": {"a": "A", "b": "B"}, "default_variant": "a", "off_variant": "a",
        "environments": {"base": {"enabled": true, "default": {"split": [
            {"variant": "a", "weight": 50}, {"variant": "b", "weight": 50}]}}}
    }))
    .unwrap();
    let r = Ruleset::build(&[], &[doc.to_spec().unwrap()]);
    let e = r.evaluate("f", &["base"], &ctx(&json!({"plan": "pro"})), 0);
    assert_eq!(e.value(), Some(&Value::from("A")));
    assert_eq!(e.error.map(|e| e.0), Some(ErrorCode::TargetingKeyMissing));
}

#[test]
fn values_round_trip_and_integers_stay_integers() {
    let v = json!({"limit": 3, "ratio": 0.25, "tags": ["a", null, true], "nested": {"x": -7}});
    assert_eq!(value_to_json(&value_from_json(&v)), v);
    assert_eq!(value_to_json(&Value::Number(3.0)).to_string(), "3");
}
