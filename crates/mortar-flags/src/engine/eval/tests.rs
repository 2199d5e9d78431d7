//! Evaluation: reasons and error codes, environments, segments and user lists, and the
//! properties — first match wins, renames move no one, rollouts are monotone.

use proptest::prelude::*;

use super::*;
use crate::engine::{ConditionSpec, RuleSpec, ServeSpec, TargetingSpec, VariantSpec};

const NOW: i64 = 1_800_000_000_000;

fn flag(key: &str, state: TargetingSpec) -> FlagSpec {
    FlagSpec {
        key: key.into(),
        salt: "01JDSALT".into(),
        kind: FlagType::Boolean,
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
        environments: vec![("base".into(), state)],
    }
}

fn enabled(rules: Vec<RuleSpec>, default: Option<ServeSpec>) -> TargetingSpec {
    TargetingSpec {
        enabled: true,
        rules,
        default,
    }
}

fn rule(conditions: Vec<ConditionSpec>, serve: ServeSpec) -> RuleSpec {
    RuleSpec {
        conditions,
        serve,
        ..RuleSpec::default()
    }
}

fn when(attribute: &str, operator: &str, value: impl Into<Value>) -> ConditionSpec {
    ConditionSpec {
        attribute: attribute.into(),
        operator: operator.into(),
        values: vec![value.into()],
    }
}

fn rollout(percent: f64) -> ServeSpec {
    ServeSpec::split(&[("on", percent), ("off", 100.0 - percent)])
}

fn one(spec: FlagSpec) -> Ruleset {
    let r = Ruleset::build(&[], &[spec]);
    assert!(r.problems().is_empty(), "{:?}", r.problems());
    r
}

const BASE: [&str; 1] = ["base"];

#[test]
fn reasons() {
    let u = Context::new("u1").with("plan", "pro");
    let off = one(flag("f", TargetingSpec::default()));
    let e = off.evaluate("f", &BASE, &u, NOW);
    assert_eq!(
        (e.variant_name(), e.reason),
        (Some("off"), Reason::Disabled)
    );
    assert_eq!(e.environment, Some("base"));

    let st = one(flag("f", enabled(vec![], Some(ServeSpec::variant("on")))));
    let e = st.evaluate("f", &BASE, &u, NOW);
    assert_eq!(
        (e.value(), e.reason),
        (Some(&Value::Bool(true)), Reason::Static)
    );

    let mut r = rule(
        vec![when("plan", "equals", "pro")],
        ServeSpec::variant("on"),
    );
    r.id = Some("pros".into());
    let tm = one(flag("f", enabled(vec![r], None)));
    let e = tm.evaluate("f", &BASE, &u, NOW);
    assert_eq!(
        (e.variant_name(), e.reason),
        (Some("on"), Reason::TargetingMatch)
    );
    assert_eq!((e.rule, e.rule_id), (Some(0), Some("pros")));
    let e = tm.evaluate("f", &BASE, &Context::new("u2"), NOW);
    assert_eq!(
        (e.variant_name(), e.reason, e.rule),
        (Some("off"), Reason::Default, None)
    );

    let sp = one(flag("f", enabled(vec![], Some(rollout(50.0)))));
    assert_eq!(sp.evaluate("f", &BASE, &u, NOW).reason, Reason::Split);
}

#[test]
fn errors_answer_the_default_or_nothing() {
    let sp = one(flag("f", enabled(vec![], Some(rollout(50.0)))));
    let e = sp.evaluate("f", &BASE, &Context::anonymous(), NOW);
    assert_eq!((e.variant_name(), e.reason), (Some("off"), Reason::Error));
    assert_eq!(e.error.unwrap().0, ErrorCode::TargetingKeyMissing);

    let e = sp.evaluate("nope", &BASE, &Context::new("u"), NOW);
    assert_eq!((e.variant, e.reason), (None, Reason::Error));
    assert_eq!(e.error.unwrap().0, ErrorCode::FlagNotFound);

    let e = sp.evaluate_as("f", FlagType::String, &BASE, &Context::new("u"), NOW);
    assert_eq!(e.error.unwrap().0, ErrorCode::TypeMismatch);
    let e = sp.evaluate_as("f", FlagType::Boolean, &BASE, &Context::new("u"), NOW);
    assert_eq!(e.reason, Reason::Split);

    // Bucketing by another attribute: missing or not a string/number → INVALID_CONTEXT.
    let mut by_org = rollout(50.0);
    by_org.split.as_mut().unwrap().bucket_by = Some("org_id".into());
    let org = one(flag("f", enabled(vec![], Some(by_org))));
    for ctx in [Context::new("u"), Context::new("u").with("org_id", true)] {
        let e = org.evaluate("f", &BASE, &ctx, NOW);
        assert_eq!(
            (e.variant_name(), e.error.map(|e| e.0)),
            (Some("off"), Some(ErrorCode::InvalidContext))
        );
    }
    // Everyone of an org gets the same variant, with or without a targeting key; 42 and 42.0
    // are the same number.
    let v = |ctx: Context| org.evaluate("f", &BASE, &ctx, NOW).variant_name();
    let first = v(Context::anonymous().with("org_id", 42_i64));
    assert!(first.is_some());
    assert_eq!(v(Context::new("a").with("org_id", 42.0)), first);
    assert_eq!(v(Context::new("b").with("org_id", "42")), first);
}

#[test]
fn a_broken_flag_is_a_parse_error_and_breaks_nothing_else() {
    let mut bad = flag("bad", enabled(vec![], None));
    bad.environments[0].1.rules.push(RuleSpec {
        segments: vec!["gone".into()],
        serve: ServeSpec::variant("on"),
        ..RuleSpec::default()
    });
    let r = Ruleset::build(&[], &[bad, flag("good", enabled(vec![], None))]);
    let e = r.evaluate("bad", &BASE, &Context::new("u"), NOW);
    assert_eq!(
        (e.variant, e.error.map(|e| e.0)),
        (None, Some(ErrorCode::ParseError))
    );
    assert_eq!(
        r.evaluate("good", &BASE, &Context::new("u"), NOW).reason,
        Reason::Static
    );
    assert_eq!(r.problems().len(), 1);
    assert_eq!(r.keys(), ["bad", "good"]);
}

#[test]
fn the_first_environment_of_the_chain_with_a_state_decides() {
    let mut f = flag("f", enabled(vec![], Some(ServeSpec::variant("on"))));
    f.environments
        .push(("staging".into(), TargetingSpec::default()));
    let r = one(f);
    let u = Context::new("u");
    let e = r.evaluate("f", &["prod", "staging", "base"], &u, NOW);
    assert_eq!(
        (e.environment, e.reason),
        (Some("staging"), Reason::Disabled)
    );
    let e = r.evaluate("f", &["dev", "base"], &u, NOW);
    assert_eq!(
        (e.environment, e.variant_name()),
        (Some("base"), Some("on"))
    );
    assert!(r.flag("f").unwrap().enabled(&["dev", "base"]));
    // No state anywhere in the chain: off.
    let e = r.evaluate("f", &["other"], &u, NOW);
    assert_eq!(
        (e.environment, e.reason, e.variant_name()),
        (None, Reason::Disabled, Some("off"))
    );
}

#[test]
fn segments_and_user_lists() {
    let segment = SegmentSpec {
        key: "eu".into(),
        conditions: vec![
            when("country", "in", "FR"),
            when("age", "number_gte", 18_i64),
        ],
        included: vec!["vip".into(), "both".into()],
        excluded: vec!["banned".into(), "both".into()],
    };
    let only_listed = SegmentSpec {
        key: "listed".into(),
        included: vec!["ann".into()],
        ..SegmentSpec::default()
    };
    let rules = vec![
        RuleSpec {
            segments: vec!["eu".into()],
            serve: ServeSpec::variant("on"),
            ..RuleSpec::default()
        },
        RuleSpec {
            segments: vec!["listed".into()],
            users: vec!["ann".into(), "bob".into()],
            serve: ServeSpec::variant("on"),
            ..RuleSpec::default()
        },
    ];
    let r = Ruleset::build(&[segment, only_listed], &[flag("f", enabled(rules, None))]);
    assert!(r.problems().is_empty());
    let rule_of = |ctx: Context| r.evaluate("f", &BASE, &ctx, NOW).rule;
    assert_eq!(
        rule_of(Context::new("x").with("country", "FR").with("age", 30_i64)),
        Some(0)
    );
    assert_eq!(
        rule_of(Context::new("x").with("country", "FR").with("age", 17_i64)),
        None
    );
    assert_eq!(
        rule_of(Context::new("x").with("country", "FR")),
        None,
        "all conditions"
    );
    assert_eq!(rule_of(Context::new("vip")), Some(0), "included");
    let banned = Context::new("banned")
        .with("country", "FR")
        .with("age", 30_i64);
    assert_eq!(rule_of(banned), None, "excluded beats matching");
    assert_eq!(
        rule_of(Context::new("both")),
        None,
        "excluded beats included"
    );
    assert_eq!(rule_of(Context::new("ann")), Some(1));
    assert_eq!(
        rule_of(Context::new("bob")),
        None,
        "in the rule's list, not the segment"
    );
    assert_eq!(rule_of(Context::anonymous()), None);
}

/// Contexts `user-0`… with attribute `n` in 0..4 and `tier` in a, b, c.
fn population(n: usize) -> Vec<Context> {
    (0..n)
        .map(|i| {
            Context::new(format!("user-{i}"))
                .with("n", (i % 4) as i64)
                .with("tier", ["a", "b", "c"][i % 3])
        })
        .collect()
}

/// A rule of the rule-order property: a condition that is `n == x` or `tier == t`.
fn random_rule() -> impl Strategy<Value = (bool, i64, usize, bool)> {
    (any::<bool>(), 0i64..4, 0usize..3, any::<bool>())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn the_first_matching_rule_wins(rules in prop::collection::vec(random_rule(), 0..12)) {
        let specs: Vec<RuleSpec> = rules
            .iter()
            .map(|&(by_n, x, t, on)| {
                let c = if by_n { when("n", "number_eq", x) } else { when("tier", "equals", ["a", "b", "c"][t]) };
                rule(vec![c], ServeSpec::variant(if on { "on" } else { "off" }))
            })
            .collect();
        let r = one(flag("f", enabled(specs, Some(ServeSpec::variant("off")))));
        for (i, ctx) in population(24).iter().enumerate() {
            let (n, tier) = ((i % 4) as i64, i % 3);
            let want = rules.iter().position(|&(by_n, x, t, _)| if by_n { n == x } else { tier == t });
            let e = r.evaluate("f", &BASE, ctx, NOW);
            prop_assert_eq!(e.rule, want);
            let served = want.map_or("off", |w| if rules[w].3 { "on" } else { "off" });
            prop_assert_eq!(e.variant_name(), Some(served));
        }
    }

    #[test]
    fn renaming_a_flag_moves_no_one(
        a in "[a-z][a-z0-9.-]{0,20}",
        b in "[a-z][a-z0-9.-]{0,20}",
        pct in 1u32..100,
    ) {
        let state = || enabled(vec![], Some(rollout(f64::from(pct))));
        let (ra, rb) = (one(flag(&a, state())), one(flag(&b, state())));
        let mut other = flag(&a, state());
        other.salt = "another-salt".into();
        let resalted = one(other);
        let mut moved = 0;
        for ctx in population(500) {
            let va = ra.evaluate(&a, &BASE, &ctx, NOW).variant_name();
            prop_assert_eq!(va, rb.evaluate(&b, &BASE, &ctx, NOW).variant_name());
            moved += usize::from(va != resalted.evaluate(&a, &BASE, &ctx, NOW).variant_name());
        }
        // The salt, not the key, is what is hashed: a new salt does move people.
        prop_assert!(moved > 0);
    }

    #[test]
    fn rollouts_are_monotone(p in 0u32..=10_000, q in 0u32..=10_000) {
        let pct = |x: u32| f64::from(x) / 100.0;
        let (lo, hi) = (p.min(q), p.max(q));
        let on_at = |x: u32| {
            let r = one(flag("f", enabled(vec![], Some(rollout(pct(x))))));
            population(2000)
                .iter()
                .filter(|c| r.evaluate("f", &BASE, c, NOW).variant_name() == Some("on"))
                .map(|c| c.targeting_key().unwrap_or_default().to_owned())
                .collect::<std::collections::BTreeSet<_>>()
        };
        let (low, high) = (on_at(lo), on_at(hi));
        // Raising adds only; lowering removes only, the highest buckets (the latest added);
        // returning restores the same set.
        prop_assert!(low.is_subset(&high));
        let b = |k: &String| bucket("01JDSALT", k);
        let kept_max = low.iter().map(b).max();
        prop_assert!(high.difference(&low).all(|k| kept_max.is_none_or(|m| b(k) > m)));
        prop_assert_eq!(on_at(lo), low);
    }
}
