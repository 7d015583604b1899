//! Parser throughput of every dialect on typical requests: what the
//! protocol layer costs per request, apart from sockets and the store.
//!
//! Run: `cargo bench -p kvstore-net --bench parse`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kvstore_net::protocol::{memcached, meta, seed, KeyPolicy, Parsed};

fn pipeline(one: &[u8], n: usize) -> Vec<u8> {
    one.repeat(n)
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("parse");
    let value = vec![b'v'; 100];
    let mut mc_set = b"set key:000123 0 0 100\r\n".to_vec();
    mc_set.extend_from_slice(&value);
    mc_set.extend_from_slice(b"\r\n");
    let mut seed_set = b"set key:000123 100\r\n".to_vec();
    seed_set.extend_from_slice(&value);
    seed_set.extend_from_slice(b"\r\n");
    let mc_limits = memcached::Limits {
        max_value_bytes: 1 << 20,
        keys: KeyPolicy::Strict,
    };
    let seed_limits = seed::Limits {
        max_value_bytes: 1 << 20,
        keys: KeyPolicy::Strict,
    };
    let mut meta_set = b"ms key:000123 100 T0 F5\r\n".to_vec();
    meta_set.extend_from_slice(&value);
    meta_set.extend_from_slice(b"\r\n");
    let cases: [(&str, Vec<u8>); 6] = [
        ("memcached get", b"get key:000123\r\n".to_vec()),
        ("memcached set 100 B", mc_set),
        ("meta mg v f t", b"mg key:000123 v f t\r\n".to_vec()),
        ("meta ms 100 B", meta_set),
        ("seed get", b"get key:000123\r\n".to_vec()),
        ("seed set 100 B", seed_set),
    ];
    for (name, one) in cases {
        let buf = pipeline(&one, 100);
        group.throughput(Throughput::Elements(100));
        group.bench_with_input(BenchmarkId::new(name, "100 pipelined"), &buf, |b, buf| {
            b.iter(|| {
                let mut pos = 0;
                let mut n = 0;
                while pos < buf.len() {
                    let consumed = if name.starts_with("meta") {
                        match meta::parse(&buf[pos..], &mc_limits) {
                            Parsed::Request { consumed, .. } => consumed,
                            other => panic!("{other:?}"),
                        }
                    } else if name.starts_with("memcached") {
                        match memcached::parse(&buf[pos..], &mc_limits) {
                            Parsed::Request { consumed, .. } => consumed,
                            other => panic!("{other:?}"),
                        }
                    } else {
                        match seed::parse(&buf[pos..], &seed_limits) {
                            Parsed::Request { consumed, .. } => consumed,
                            other => panic!("{other:?}"),
                        }
                    };
                    pos += consumed;
                    n += 1;
                }
                n
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
