//! Bucketing and split layout: the hash is standard and frozen, buckets are uniform, every
//! layout gives each variant exactly its weight, and rollouts are monotone.

use proptest::prelude::*;

use super::*;

/// Slot of every bucket of `layout`.
fn slots(layout: &Layout) -> Vec<usize> {
    (0..BUCKETS).map(|b| layout.slot(b)).collect()
}

/// The buckets of `slot`.
fn set(slots: &[usize], slot: usize) -> Vec<u16> {
    (0..BUCKETS)
        .filter(|&b| slots[usize::from(b)] == slot)
        .collect()
}

fn subset(a: &[u16], b: &[u16]) -> bool {
    a.iter().all(|x| b.binary_search(x).is_ok())
}

/// Weights (in buckets) of `k` variants summing to [`BUCKETS`], from `k − 1` cut points.
fn weights(k: usize) -> impl Strategy<Value = Vec<u16>> {
    prop::collection::vec(0..=BUCKETS, k - 1).prop_map(|mut cuts| {
        cuts.sort_unstable();
        let mut out = Vec::with_capacity(cuts.len() + 1);
        let mut at = 0;
        for c in cuts {
            out.push(c - at);
            at = c;
        }
        out.push(BUCKETS - at);
        out
    })
}

/// Weights of `k` variants where each non-rest variant fits its lane: any in-lane amount,
/// the rest takes the remainder.
fn lane_weights(k: usize) -> impl Strategy<Value = Vec<u16>> {
    let lanes: Vec<_> = (0..k - 1)
        .map(|i| {
            let (s, e) = Layout::lane(k, i);
            0..=e - s
        })
        .collect();
    lanes.prop_map(|mut w| {
        let used: u16 = w.iter().sum();
        w.push(BUCKETS - used);
        w
    })
}

#[test]
fn the_hash_is_standard_murmur3() {
    // MurmurHash3_x86_32, seed 0: the vector mmh3 and the reference implementation give.
    let mut input = &b"Hello, world!"[..];
    assert_eq!(murmur3::murmur3_32(&mut input, 0).unwrap(), 0xc036_3e43);
    // salt ":" value, scaled to 0..10 000 by multiply-shift.
    let mut joined = &b"s:u"[..];
    let h = murmur3::murmur3_32(&mut joined, 0).unwrap();
    assert_eq!(u64::from(bucket("s", "u")), (u64::from(h) * 10_000) >> 32);
}

#[test]
fn buckets_are_frozen() {
    // Changing any of these re-buckets every user of every flag: never. (Computed as well by
    // an independent MurmurHash3_x86_32 written from the reference, in Python.)
    let pinned = [
        ("01JDFLAG", "user-1", 1778),
        ("01JDFLAG", "user-2", 3845),
        ("other-salt", "user-1", 6043),
        ("x", "", 5947),
    ];
    for (salt, value, want) in pinned {
        assert_eq!(bucket(salt, value), want, "bucket({salt:?}, {value:?})");
    }
}

#[test]
fn layouts_refuse_weights_not_summing_to_the_range() {
    assert_eq!(Layout::new(&[]), None);
    assert_eq!(Layout::new(&[5000, 4999]), None);
    assert_eq!(Layout::new(&[10_000, 1]), None);
    let one = Layout::new(&[10_000]).unwrap();
    assert!(slots(&one).iter().all(|&s| s == 0));
}

#[test]
fn a_boolean_rollout_is_the_low_buckets() {
    let l = Layout::new(&[2500, 7500]).unwrap();
    assert_eq!(l.slot(0), 0);
    assert_eq!(l.slot(2499), 0);
    assert_eq!(l.slot(2500), 1);
    assert_eq!(l.slot(9999), 1);
}

#[test]
fn three_arms_grow_from_their_own_lanes() {
    // Lanes of 5000 for `a` and `b`; `off` is the rest.
    let l = Layout::new(&[1000, 1000, 8000]).unwrap();
    let s = slots(&l);
    assert_eq!(set(&s, 0), (0..1000).collect::<Vec<_>>());
    assert_eq!(set(&s, 1), (5000..6000).collect::<Vec<_>>());
    // Over its lane, `a` keeps [0, 5000) and takes the rest of the top of the free space.
    let l = Layout::new(&[7000, 2000, 1000]).unwrap();
    let s = slots(&l);
    assert!((0..5000).all(|b| s[b] == 0));
    assert!((5000..7000).all(|b| s[b] == 1));
    assert!((8000..10_000).all(|b| s[b] == 0));
    assert!((7000..8000).all(|b| s[b] == 2));
}

/// `n` keys' buckets under one salt.
fn buckets(salt: &str, prefix: &str, n: usize) -> Vec<u16> {
    (0..n)
        .map(|i| bucket(salt, &format!("{prefix}{i}")))
        .collect()
}

/// A split size and weights for it.
fn sized(lo: usize, hi: usize) -> impl Strategy<Value = (usize, Vec<u16>)> {
    (lo..=hi).prop_flat_map(|k| (Just(k), weights(k)))
}

/// A split size and two lane-bounded weight vectors for it (before and after a change).
fn lane_change() -> impl Strategy<Value = (usize, Vec<u16>, Vec<u16>)> {
    (3usize..=6).prop_flat_map(|k| (Just(k), lane_weights(k), lane_weights(k)))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn every_variant_gets_exactly_its_weight((_k, w) in sized(1, 8)) {
        let s = slots(&Layout::new(&w).unwrap());
        for (i, &wi) in w.iter().enumerate() {
            prop_assert_eq!(set(&s, i).len(), usize::from(wi));
        }
    }

    #[test]
    fn two_variants_are_monotone_in_either_order(a in 0..=BUCKETS, b in 0..=BUCKETS, on_last in any::<bool>()) {
        // `on` at `a` then `b` buckets, listed first ([on, off]) or last ([off, on]).
        let layout = |p: u16| if on_last {
            Layout::new(&[BUCKETS - p, p]).unwrap()
        } else {
            Layout::new(&[p, BUCKETS - p]).unwrap()
        };
        let on = usize::from(on_last);
        let (lo, hi) = (a.min(b), a.max(b));
        let small = set(&slots(&layout(lo)), on);
        let large = set(&slots(&layout(hi)), on);
        prop_assert!(subset(&small, &large), "raising adds only, lowering removes only");
        prop_assert_eq!(large.len() - small.len(), usize::from(hi - lo));
        prop_assert_eq!(set(&slots(&layout(lo)), on), small, "returning restores the same set");
    }

    #[test]
    fn each_step_up_adds_one_bucket_above_all_others(k in 2usize..=6, i in 0usize..5, x in 0u16..BUCKETS) {
        // So lowering, which undoes steps, removes the most recently added first.
        let i = i % (k - 1);
        let (s, e) = Layout::lane(k, i);
        let x = x % (e - s);
        let with = |x: u16| {
            let mut ws = vec![0; k];
            ws[i] = x;
            ws[k - 1] = BUCKETS - x;
            set(&slots(&Layout::new(&ws).unwrap()), i)
        };
        let (before, after) = (with(x), with(x + 1));
        prop_assert!(subset(&before, &after));
        let added: Vec<u16> = after.iter().copied().filter(|b| before.binary_search(b).is_err()).collect();
        prop_assert_eq!(added.len(), 1);
        prop_assert!(before.iter().all(|&b| b < added[0]));
    }

    #[test]
    fn in_lane_variants_move_with_their_own_weight_only((k, w, v) in lane_change()) {
        let (a, b) = (slots(&Layout::new(&w).unwrap()), slots(&Layout::new(&v).unwrap()));
        for i in 0..k - 1 {
            let (before, after) = (set(&a, i), set(&b, i));
            if v[i] >= w[i] {
                prop_assert!(subset(&before, &after), "variant {} raised {} → {} lost users", i, w[i], v[i]);
            } else {
                prop_assert!(subset(&after, &before), "variant {} lowered {} → {} gained users", i, w[i], v[i]);
            }
            if v[i] == w[i] {
                prop_assert_eq!(before, after);
            }
        }
        // The rest changes only by what the others gave up or took.
        for bucket in 0..usize::from(BUCKETS) {
            let (was, is) = (a[bucket], b[bucket]);
            if was != is {
                prop_assert!(
                    was == k - 1 || is == k - 1,
                    "bucket {} moved {} → {} between two arms", bucket, was, is
                );
            }
        }
    }

    #[test]
    fn a_variant_keeps_its_lane_full_when_it_overflows((k, w) in sized(2, 6)) {
        let s = slots(&Layout::new(&w).unwrap());
        for (i, &wi) in w[..k - 1].iter().enumerate() {
            let (start, end) = Layout::lane(k, i);
            let own = wi.min(end - start);
            prop_assert!((start..start + own).all(|b| s[usize::from(b)] == i));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4))]

    #[test]
    fn buckets_are_uniform_within_one_percent(salt in "[A-Za-z0-9_-]{1,26}", prefix in "[a-z]{0,8}") {
        const KEYS: usize = 100_000;
        let bs = buckets(&salt, &prefix, KEYS);
        let mut deciles = [0usize; 10];
        for &b in &bs {
            deciles[usize::from(b / 1000)] += 1;
        }
        for (d, &n) in deciles.iter().enumerate() {
            prop_assert!((9_000..=11_000).contains(&n), "decile {}: {} of {}", d, n, KEYS);
        }
        let half = Layout::new(&[5000, 5000]).unwrap();
        let on = bs.iter().filter(|&&b| half.slot(b) == 0).count();
        prop_assert!((49_000..=51_000).contains(&on), "50 % split: {} of {}", on, KEYS);
    }
}
