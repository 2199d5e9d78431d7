//! In-process cache hit (the L1 path every RESP GET and HTTP GET takes), and a miss.

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use mortar_cache::store::{Policy, Store, Value};

fn bench(c: &mut Criterion) {
    let store = Store::new(256 * 1024 * 1024, Policy::TinyLfu);
    let keys: Vec<Bytes> = (0..10_000)
        .map(|i| Bytes::from(format!("user:{i}")))
        .collect();
    for k in &keys {
        store.set(
            k,
            &Value {
                data: Bytes::from(vec![b'x'; 100]),
                expires_at_ms: None,
            },
        );
    }
    let mut g = c.benchmark_group("l1");
    let mut i = 0;
    g.bench_function("hit_100_byte_value", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            black_box(store.get(&keys[i]))
        });
    });
    g.bench_function("miss", |b| b.iter(|| black_box(store.get(b"absent:key"))));
    let value = Value {
        data: Bytes::from(vec![b'y'; 100]),
        expires_at_ms: None,
    };
    g.bench_function("set_existing_100_byte_value", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            store.set(&keys[i], &value);
        });
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
