//! The store's unit tests (eviction policies, TTLs, memory bound), kept apart from `store/mod.rs`.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{ENTRY_OVERHEAD, Policy, Store, Value, now_ms};

fn val(data: &[u8]) -> Value {
    Value {
        data: Bytes::copy_from_slice(data),
        expires_at_ms: None,
    }
}

fn ttl_val(data: &[u8], at: u64) -> Value {
    Value {
        data: Bytes::copy_from_slice(data),
        expires_at_ms: Some(at),
    }
}

fn key(i: usize) -> Vec<u8> {
    format!("key:{i:012}").into_bytes()
}

/// `used_memory` is exactly the sum over stored entries.
fn assert_accounting(s: &Store) {
    let sum: u64 = s
        .keys()
        .iter()
        .map(|k| (k.len() + s.peek(k).expect("listed").data.len() + ENTRY_OVERHEAD) as u64)
        .sum();
    assert_eq!(s.used_memory(), sum, "used_memory drifted from the entries");
}

fn stat(c: &std::sync::atomic::AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

#[test]
fn set_get_peek_remove_update() {
    for policy in [Policy::TinyLfu, Policy::Lru, Policy::Lfu] {
        let s = Store::new(1 << 20, policy);
        assert_eq!(s.get(b"a"), None);
        s.set(b"a", &val(b"1"));
        assert_eq!(s.get(b"a"), Some(val(b"1")));
        assert_eq!(s.peek(b"a"), Some(val(b"1")));
        assert_eq!((stat(&s.stats.hits), stat(&s.stats.misses)), (1, 1));
        s.set(b"a", &val(b"22"));
        assert_eq!(s.peek(b"a").unwrap().data, "22");
        let r = s.update(b"a", |v| (Some(val(b"333")), v.map(|v| v.data)));
        assert_eq!(r.as_deref(), Some(&b"22"[..]));
        assert_eq!(s.update(b"a", |v| (None, v)), Some(val(b"333")));
        assert_eq!(s.peek(b"a"), None);
        assert_eq!(s.remove(b"a"), None);
        s.set(b"e", &val(b""));
        assert_eq!(s.peek(b"e"), Some(val(b"")));
        assert_eq!(s.remove(b"e"), Some(val(b"")));
        assert_eq!(s.used_memory(), 0);
    }
}

#[test]
fn stores_owned_copies() {
    let s = Store::new(1 << 20, Policy::Lru);
    let buf = Bytes::from(vec![b'z'; 4096]);
    s.set(&buf[..3], &val(&buf[..10]));
    let v = s.peek(b"zzz").unwrap();
    // The value is a slice of the entry's own key-and-value allocation, not of `buf`.
    assert_eq!(v.data.len(), 10);
    assert!(!buf.as_ptr_range().contains(&v.data.as_ptr()));
}

#[test]
fn clear_counts_keys() {
    let s = Store::new(1 << 20, Policy::TinyLfu);
    for i in 0..100 {
        s.set(&key(i), &val(b"v"));
    }
    let far = now_ms() + 60_000;
    for i in 100..130 {
        s.set(&key(i), &ttl_val(b"v", far));
    }
    s.set(b"gone", &ttl_val(b"v", 1));
    assert_eq!(s.counts(), (130, 30));
    let keys: HashSet<Bytes> = s.keys().into_iter().collect();
    assert_eq!(keys.len(), 130);
    assert!(keys.contains(&Bytes::from(key(7))));
    assert!(!keys.contains(&Bytes::from_static(b"gone")));
    // Expired entries count until reclaimed (the sweep thread may have been by already).
    let live: u64 = (0..130)
        .map(|i| (key(i).len() + 1 + ENTRY_OVERHEAD) as u64)
        .sum();
    let used = s.used_memory();
    assert!(
        used == live || used == live + (4 + 1 + ENTRY_OVERHEAD) as u64,
        "{used}"
    );
    s.reclaim_expired();
    assert_accounting(&s);
    s.clear();
    assert_eq!(s.counts(), (0, 0));
    assert!(s.keys().is_empty());
    assert_eq!(s.used_memory(), 0);
    s.set(b"again", &val(b"v"));
    assert_eq!(s.counts(), (1, 0));
}

#[test]
fn memory_bound_holds_and_evictions_are_counted() {
    for policy in [Policy::Lru, Policy::TinyLfu, Policy::Lfu] {
        let max = 256 * 1024;
        let s = Store::new(max, policy);
        let n = 20_000;
        for i in 0..n {
            let len = fastrand::usize(0..400);
            s.set(&key(i), &val(&vec![b'x'; len]));
            assert!(
                s.used_memory() <= max,
                "{policy:?}: {} > {max} after {i}",
                s.used_memory()
            );
        }
        let (live, _) = s.counts();
        let evicted = stat(&s.stats.evicted);
        assert!(evicted > 0);
        // Every distinct key written is either stored or was evicted (or refused admission).
        assert_eq!(live + evicted, n as u64, "{policy:?}");
        // Still well used: sampling evicts one entry at a time, not in bulk.
        assert!(
            s.used_memory() > max * 9 / 10,
            "{policy:?}: {}",
            s.used_memory()
        );
        assert_accounting(&s);
        assert_eq!(stat(&s.stats.expired), 0);
    }
}

#[test]
fn memory_bound_holds_under_concurrent_writers() {
    let max = 512 * 1024;
    let s = Store::new(max, Policy::TinyLfu);
    std::thread::scope(|sc| {
        for t in 0..4 {
            let s = &s;
            sc.spawn(move || {
                for i in 0..10_000 {
                    let k = key(t * 1_000_000 + i % 3_000);
                    if i % 7 == 0 {
                        s.update(&k, |v| (v.map(|v| val(&[&v.data[..], b"+"].concat())), ()));
                    } else {
                        s.set(&k, &val(&vec![b'y'; fastrand::usize(0..300)]));
                    }
                    let _ = s.get(&key(fastrand::usize(0..3_000)));
                }
            });
        }
    });
    assert!(s.used_memory() <= max, "{} > {max}", s.used_memory());
    assert_accounting(&s);
}

#[test]
fn a_value_larger_than_the_bound_is_not_stored() {
    let s = Store::new(64 * 1024, Policy::Lru);
    s.set(b"k", &val(b"small"));
    s.set(b"k", &val(&vec![0; 100 * 1024]));
    assert_eq!(s.peek(b"k"), None);
    assert_eq!(s.used_memory(), 0);
    assert_eq!(stat(&s.stats.evicted), 1);
}

#[test]
fn growing_a_value_in_place_evicts_others_not_itself() {
    let max = 64 * 1024;
    let s = Store::new(max, Policy::Lru);
    for i in 0..200 {
        s.set(&key(i), &val(&[b'a'; 200]));
    }
    s.set(b"big", &val(b"x"));
    s.update(b"big", |_| (Some(val(&vec![b'b'; 40 * 1024])), ()));
    assert_eq!(s.peek(b"big").unwrap().data.len(), 40 * 1024);
    assert!(s.used_memory() <= max);
    assert_accounting(&s);
}

#[test]
fn lru_keeps_recently_read_keys_over_cold_ones() {
    let per = (16 + 100 + ENTRY_OVERHEAD) as u64;
    let s = Store::new(per * 2_000, Policy::Lru);
    let v = val(&[b'v'; 100]);
    for i in 0..2_000 {
        s.set(&key(i), &v);
    }
    assert_eq!(stat(&s.stats.evicted), 0);
    // 200 hot keys, read between every batch of new writes.
    for round in 0..10 {
        for i in 0..200 {
            assert!(s.get(&key(i)).is_some() || round > 0);
        }
        for i in 0..100 {
            s.set(&key(10_000 + round * 100 + i), &v);
        }
    }
    let hot = (0..200).filter(|&i| s.peek(&key(i)).is_some()).count();
    let cold = (200..2_000).filter(|&i| s.peek(&key(i)).is_some()).count();
    assert!(hot >= 190, "hot keys kept: {hot}/200");
    // The 1 000 new keys pushed out cold ones (and hardly any new or hot ones).
    assert!(cold <= 850, "cold keys kept: {cold}/1800");
}

/// Room for exactly 1 000 entries of a 100-byte value.
const SCAN_PER: u64 = (16 + 100 + ENTRY_OVERHEAD) as u64;

/// 1 000 keys, of which 300 are read 8 times each, then a scan of 5 000 keys written once and
/// never read (`each` runs after every scan write). Returns the store and the hot keys it kept.
fn hot_set_then_scan(policy: Policy, each: impl Fn(&Store, &[u8])) -> (Store, usize) {
    let s = Store::new(SCAN_PER * 1_000, policy);
    let v = val(&[b'v'; 100]);
    for i in 0..1_000 {
        s.set(&key(i), &v);
    }
    for _ in 0..8 {
        for i in 0..300 {
            assert!(s.get(&key(i)).is_some());
        }
    }
    for i in 0..5_000 {
        let k = key(100_000 + i);
        s.set(&k, &v);
        each(&s, &k);
    }
    let hot = (0..300).filter(|&i| s.peek(&key(i)).is_some()).count();
    (s, hot)
}

#[test]
fn lfu_admits_every_key_and_evicts_the_least_frequent() {
    // Each scan key gets in (no admission filter), and what makes room for it is the least
    // frequent of a sample: the scan's own earlier keys and the cold ones, not the hot set.
    let (s, hot) = hot_set_then_scan(Policy::Lfu, |s, k| {
        assert!(s.peek(k).is_some(), "LFU admits every new key");
        assert!(s.used_memory() <= SCAN_PER * 1_000);
    });
    assert!(hot >= 290, "hot keys kept: {hot}/300");
    let cold = (300..1_000).filter(|&i| s.peek(&key(i)).is_some()).count();
    assert!(cold < 100, "cold keys kept: {cold}/700");
    assert_accounting(&s);
}

#[test]
fn tinylfu_keeps_a_hot_set_against_a_scan() {
    let (s, hot) = hot_set_then_scan(Policy::TinyLfu, |_, _| {});
    assert!(hot >= 290, "hot keys kept: {hot}/300");
    assert!(s.used_memory() <= SCAN_PER * 1_000);
    // The LRU policy, same workload, loses the hot set: the scan is more recent.
    let (_, hot) = hot_set_then_scan(Policy::Lru, |_, _| {});
    assert!(hot < 100, "LRU kept {hot}/300 through a scan");
}

#[test]
fn expired_entries_are_invisible_at_once() {
    let s = Store::new(1 << 20, Policy::TinyLfu);
    let at = now_ms() + 100;
    s.set(b"t", &ttl_val(b"v", at));
    s.set(b"p", &val(b"v"));
    assert_eq!(s.peek(b"t").unwrap().expires_at_ms, Some(at));
    assert_eq!(s.counts(), (2, 1));
    while now_ms() <= at {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(s.get(b"t"), None);
    assert_eq!(s.peek(b"t"), None);
    assert_eq!(s.remove(b"t"), None);
    assert!(!s.keys().iter().any(|k| &k[..] == b"t"));
    assert_eq!(s.counts(), (1, 0));
    // A write sees it as absent.
    assert!(s.update(b"u", |v| (None, v.is_none())));
    s.set(b"t2", &ttl_val(b"v", 1));
    assert!(s.update(b"t2", |v| (Some(val(b"new")), v.is_none())));
    assert_eq!(s.peek(b"t2").unwrap(), val(b"new"));
}

#[test]
fn expired_entries_are_reclaimed_without_access() {
    let s = Store::new(4 << 20, Policy::Lru);
    let at = now_ms() + 50;
    for i in 0..5_000 {
        s.set(&key(i), &ttl_val(&[b'x'; 100], at));
    }
    s.set(b"stays", &val(b"v"));
    let keep = (b"stays".len() + 1 + ENTRY_OVERHEAD) as u64;
    // The background sweep frees them; nothing reads or writes meanwhile.
    let t = Instant::now();
    while s.used_memory() > keep {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{} bytes still used",
            s.used_memory()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(stat(&s.stats.expired), 5_000);
    assert_eq!(stat(&s.stats.evicted), 0);
    assert_eq!(s.counts(), (1, 0));
    assert_eq!(s.peek(b"stays"), Some(val(b"v")));
}

#[test]
fn reclaim_expired_sweeps_on_demand() {
    let s = Store::new(4 << 20, Policy::TinyLfu);
    for i in 0..3_000 {
        // Already past: stored, invisible, reclaimable.
        s.set(&key(i), &ttl_val(b"x", 1));
    }
    assert_eq!(s.counts(), (0, 0));
    // Each pass goes on through a shard while it keeps finding expired entries.
    let got = s.reclaim_expired();
    assert!(got > 0);
    assert_eq!(s.reclaim_expired(), 0);
    // (The background sweep may have taken some.)
    assert_eq!(stat(&s.stats.expired), 3_000);
    assert_eq!(s.used_memory(), 0);
}

#[test]
fn eviction_reclaims_expired_entries_first() {
    let per = (16 + 100 + ENTRY_OVERHEAD) as u64;
    let s = Store::new(per * 1_000, Policy::Lru);
    let at = now_ms() + 30;
    for i in 0..1_000 {
        s.set(&key(i), &ttl_val(&[b'x'; 100], at));
    }
    std::thread::sleep(Duration::from_millis(40));
    for i in 0..500 {
        s.set(&key(10_000 + i), &val(&[b'y'; 100]));
    }
    // (The sweep thread may reclaim some of them meanwhile: they count as expired too.)
    assert!(stat(&s.stats.evicted) < 10, "{}", stat(&s.stats.evicted));
    assert!(stat(&s.stats.expired) >= 490);
}

#[test]
fn update_is_atomic_under_concurrent_incr() {
    let s = Store::new(1 << 20, Policy::TinyLfu);
    let incr = |k: &[u8]| {
        s.update(k, |v| {
            let n: u64 = v.map_or(0, |v| {
                std::str::from_utf8(&v.data).unwrap().parse().unwrap()
            });
            (Some(val((n + 1).to_string().as_bytes())), n + 1)
        })
    };
    std::thread::scope(|sc| {
        for _ in 0..8 {
            sc.spawn(|| {
                for i in 0..4_800 {
                    incr(b"counter");
                    incr(&key(i % 16));
                }
            });
        }
    });
    assert_eq!(s.peek(b"counter").unwrap().data, "38400");
    for i in 0..16 {
        assert_eq!(s.peek(&key(i)).unwrap().data, (8 * 4_800 / 16).to_string());
    }
}

#[test]
fn tables_shrink_after_most_keys_go() {
    let s = Store::new(64 << 20, Policy::Lru);
    for i in 0..50_000 {
        s.set(&key(i), &val(b"v"));
    }
    let buckets = |s: &Store| -> usize {
        s.inner
            .shards
            .iter()
            .map(|sh| sh.table.read().map.num_buckets())
            .sum()
    };
    let before = buckets(&s);
    for i in 0..49_900 {
        assert!(s.remove(&key(i)).is_some());
    }
    // 50 000 keys fill each of the 64 shards to 1024 buckets or more; with a few keys left a
    // shard shrinks to the floor of 256 buckets (capacity 224, which no longer shrinks).
    let after = buckets(&s);
    assert!(after * 4 <= before, "{after} of {before} buckets left");
    for sh in &s.inner.shards {
        let n = sh.table.read().map.num_buckets();
        assert!(
            n <= 256,
            "a shard kept {n} buckets for {} keys",
            sh.table.read().map.len()
        );
    }
    assert_eq!(s.counts(), (100, 0));
    assert_accounting(&s);
}
