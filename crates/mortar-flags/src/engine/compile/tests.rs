//! Validation: every refused definition names its field, all problems at once.

use super::*;
use crate::engine::{Value, VariantSpec};

fn boolean_flag() -> FlagSpec {
    FlagSpec {
        key: "new-checkout".into(),
        salt: "01JDSALT".into(),
        kind: super::super::FlagType::Boolean,
        variants: vec![
            VariantSpec {
                name: "on".into(),
                value: Value::Bool(true),
            },
            VariantSpec {
                name: "off".into(),
                value: Value::Bool(false),
            },
        ],
        default_variant: "off".into(),
        off_variant: "off".into(),
        environments: vec![("prod".into(), TargetingSpec::default())],
    }
}

fn with_rule(rule: RuleSpec) -> FlagSpec {
    let mut f = boolean_flag();
    f.environments[0].1.rules.push(rule);
    f
}

fn segments() -> Segments {
    let mut s = Segments::default();
    s.insert(
        compile_segment(&SegmentSpec {
            key: "beta-testers".into(),
            included: vec!["u1".into()],
            ..SegmentSpec::default()
        })
        .unwrap(),
    );
    s
}

/// The fields of `spec`'s problems.
fn problems(spec: &FlagSpec) -> Vec<String> {
    compile_flag(spec, &segments())
        .expect_err("refused")
        .into_iter()
        .map(|e| e.field)
        .collect()
}

fn condition(attribute: &str, operator: &str, values: Vec<Value>) -> ConditionSpec {
    ConditionSpec {
        attribute: attribute.into(),
        operator: operator.into(),
        values,
    }
}

#[test]
fn a_valid_flag_compiles() {
    let f = compile_flag(
        &with_rule(RuleSpec {
            id: Some("beta".into()),
            segments: vec!["beta-testers".into()],
            conditions: vec![condition("plan", "in", vec!["pro".into()])],
            serve: ServeSpec::split(&[("on", 33.33), ("off", 66.67)]),
            ..RuleSpec::default()
        }),
        &segments(),
    )
    .unwrap();
    assert_eq!(f.default_variant().name, "off");
    assert_eq!(f.environments().collect::<Vec<_>>(), ["prod"]);
}

#[test]
fn unknown_operator_and_bad_regex() {
    let spec = with_rule(RuleSpec {
        conditions: vec![
            condition("a", "like", vec!["x".into()]),
            condition("b", "regex", vec!["[".into()]),
        ],
        serve: ServeSpec::variant("on"),
        ..RuleSpec::default()
    });
    assert_eq!(
        problems(&spec),
        [
            "environments.prod.rules[0].conditions[0].operator",
            "environments.prod.rules[0].conditions[1].values[0]",
        ]
    );
}

#[test]
fn splits_must_sum_to_exactly_one_hundred() {
    let split = |w: &[(&str, f64)]| {
        with_rule(RuleSpec {
            serve: ServeSpec::split(w),
            ..RuleSpec::default()
        })
    };
    let path = "environments.prod.rules[0].serve.split";
    assert_eq!(problems(&split(&[("on", 50.0), ("off", 49.99)])), [path]);
    let e = compile_flag(&split(&[("on", 60.0), ("off", 60.0)]), &segments()).unwrap_err();
    assert!(e[0].message.contains("120 %"), "{e:?}");
    assert_eq!(
        problems(&split(&[("on", 33.333), ("off", 66.667)])),
        [format!("{path}[0].weight"), format!("{path}[1].weight")]
    );
    assert_eq!(
        problems(&split(&[("on", -10.0), ("off", 110.0)])),
        [format!("{path}[0].weight"), format!("{path}[1].weight")]
    );
    assert_eq!(
        problems(&split(&[("on", 50.0), ("on", 50.0)])),
        [format!("{path}[1].variant")]
    );
    assert_eq!(
        problems(&split(&[("maybe", 100.0)])),
        [format!("{path}[0].variant")]
    );
    assert_eq!(problems(&split(&[])), [path]);
    // 0 % variants are fine (a ramp starting), and float noise is not a third decimal.
    assert!(compile_flag(&split(&[("on", 0.0), ("off", 100.0)]), &segments()).is_ok());
    assert!(compile_flag(&split(&[("on", 0.1 + 0.2), ("off", 99.7)]), &segments()).is_ok());
}

#[test]
fn serves_name_exactly_one_thing() {
    let mut both = ServeSpec::split(&[("on", 100.0)]);
    both.variant = Some("on".into());
    let spec = with_rule(RuleSpec {
        serve: both,
        ..RuleSpec::default()
    });
    assert_eq!(problems(&spec), ["environments.prod.rules[0].serve"]);
    let spec = with_rule(RuleSpec::default());
    assert_eq!(problems(&spec), ["environments.prod.rules[0].serve"]);
    let mut now = ServeSpec::split(&[("on", 100.0)]);
    if let Some(s) = now.split.as_mut() {
        s.bucket_by = Some("$now".into());
        s.salt = Some("bad salt".into());
    }
    let spec = with_rule(RuleSpec {
        serve: now,
        ..RuleSpec::default()
    });
    assert_eq!(
        problems(&spec),
        [
            "environments.prod.rules[0].serve.split.bucket_by",
            "environments.prod.rules[0].serve.split.salt",
        ]
    );
}

#[test]
fn variants_match_the_flag_type_and_defaults_exist() {
    let mut f = boolean_flag();
    f.variants[0].value = Value::from("yes");
    f.default_variant = "missing".into();
    f.off_variant = String::new();
    assert_eq!(
        problems(&f),
        ["variants.on", "default_variant", "off_variant"]
    );
    let e = compile_flag(&f, &segments()).unwrap_err();
    assert!(e[0].message.contains("boolean, not string"), "{e:?}");
    assert!(e[1].message.contains("on, off"));
    let mut f = boolean_flag();
    f.variants.push(f.variants[0].clone());
    f.variants.push(VariantSpec {
        name: "a b".into(),
        value: Value::Bool(true),
    });
    assert_eq!(problems(&f), ["variants.on", "variants[3]"]);
    let mut f = boolean_flag();
    f.variants.clear();
    assert_eq!(problems(&f), ["variants", "default_variant", "off_variant"]);
    // Object flags take objects and arrays.
    let mut f = boolean_flag();
    f.kind = super::super::FlagType::Object;
    f.variants[0].value = Value::Object(std::collections::BTreeMap::new());
    f.variants[1].value = Value::Array(vec![]);
    assert!(compile_flag(&f, &segments()).is_ok());
}

#[test]
fn rules_reference_known_segments_and_unique_ids() {
    let mut f = with_rule(RuleSpec {
        id: Some("r".into()),
        segments: vec!["beta-testers".into(), "eu-customers".into()],
        serve: ServeSpec::variant("on"),
        ..RuleSpec::default()
    });
    f.environments[0].1.rules.push(RuleSpec {
        id: Some("r".into()),
        users: vec![String::new()],
        serve: ServeSpec::variant("on"),
        ..RuleSpec::default()
    });
    assert_eq!(
        problems(&f),
        [
            "environments.prod.rules[0].segments[1]",
            "environments.prod.rules[1].id",
            "environments.prod.rules[1].users[0]",
        ]
    );
    let e = compile_flag(&f, &segments()).unwrap_err();
    assert!(e[0].message.contains("unknown segment `eu-customers`"));
}

#[test]
fn names_and_limits() {
    let mut f = boolean_flag();
    f.key = "has space".into();
    f.salt = String::new();
    f.environments
        .push(("prod".into(), TargetingSpec::default()));
    f.environments
        .push(("no/slash".into(), TargetingSpec::default()));
    assert_eq!(
        problems(&f),
        ["key", "salt", "environments.prod", "environments.no/slash"]
    );
    let mut f = boolean_flag();
    f.environments[0].1.rules = vec![
        RuleSpec {
            serve: ServeSpec::variant("on"),
            ..RuleSpec::default()
        };
        MAX_RULES + 1
    ];
    assert_eq!(problems(&f), ["environments.prod.rules"]);
    let f = with_rule(RuleSpec {
        conditions: vec![condition("a", "equals", vec!["x".into()]); MAX_CONDITIONS + 1],
        serve: ServeSpec::variant("on"),
        ..RuleSpec::default()
    });
    assert_eq!(problems(&f), ["environments.prod.rules[0].conditions"]);
}

#[test]
fn segments_are_validated_with_paths() {
    let e = validate_segment(&SegmentSpec {
        key: "eu customers".into(),
        conditions: vec![condition("country", "in", vec![])],
        included: vec![String::new()],
        excluded: vec![],
    })
    .unwrap_err();
    let fields: Vec<&str> = e.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(fields, ["key", "conditions[0].values", "included[0]"]);
}
