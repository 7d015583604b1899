//! Model test: random sequences of operations, including reopening the
//! store and flushing it, applied both to a `Store` and to a `HashMap`;
//! every read agrees. Each case runs in one durability mode (`Periodic`
//! with a flusher that only runs when asked or when its small pending table
//! is full, so reads meet changes not yet applied), with or without the
//! cache and with or without a hasher that forces collisions.

use std::collections::HashMap;

use kvstore_core::{
    CasOutcome, CounterOutcome, Durability, ItemMeta, Options, Store, StoreOutcome,
};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Set(u8, Vec<u8>),
    Get(u8),
    Delete(u8),
    Clear,
    Add(u8, Vec<u8>),
    /// `true`: use the item's current cas; `false`: a stale one.
    Cas(u8, Vec<u8>, bool),
    Append(u8, Vec<u8>),
    Incr(u8, u64),
    Reopen,
    Flush,
}

/// How a case opens its store.
#[derive(Debug, Clone, Copy)]
struct Setup {
    mode: Durability,
    cache: bool,
    collide: bool,
}

fn setup() -> impl Strategy<Value = Setup> {
    let mode = prop_oneof![
        Just(Durability::Never),
        // The flusher does not run by itself during a case: only
        // `Store::flush`, a full pending table (16 KiB) or a close apply
        // the pending changes.
        Just(Durability::Periodic(std::time::Duration::from_secs(3600))),
        Just(Durability::Periodic(std::time::Duration::from_millis(1))),
        Just(Durability::Always),
    ];
    (mode, any::<bool>(), any::<bool>()).prop_map(|(mode, cache, collide)| Setup {
        mode,
        cache,
        collide,
    })
}

/// Four hashes for every key: keys share names and collision indexes.
fn colliding_hash(key: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h & 3
}

fn key(k: u8) -> Vec<u8> {
    // A small alphabet so operations hit the same keys often; one key is
    // binary and one is of the maximum length.
    match k {
        0 => b"a".to_vec(),
        1 => b"bb".to_vec(),
        2 => vec![0, 255, b'\n'],
        3 => vec![b'L'; kvstore_core::MAX_KEY_BYTES],
        k => format!("key-{k}").into_bytes(),
    }
}

fn value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(b"0".to_vec()),
        Just(b"41".to_vec()),
        Just(b"18446744073709551615".to_vec()),
        Just(Vec::new()),
        prop::collection::vec(any::<u8>(), 0..40),
        // Longer than the first read of a value file.
        (0u8..255, 4000usize..6000).prop_map(|(b, n)| vec![b; n]),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let k = 0u8..6;
    prop_oneof![
        4 => (k.clone(), value()).prop_map(|(k, v)| Op::Set(k, v)),
        4 => k.clone().prop_map(Op::Get),
        2 => k.clone().prop_map(Op::Delete),
        1 => Just(Op::Clear),
        2 => (k.clone(), value()).prop_map(|(k, v)| Op::Add(k, v)),
        2 => (k.clone(), value(), any::<bool>()).prop_map(|(k, v, c)| Op::Cas(k, v, c)),
        2 => (k.clone(), value()).prop_map(|(k, v)| Op::Append(k, v)),
        2 => (k, prop_oneof![Just(1u64), Just(u64::MAX), 0u64..1000]).prop_map(|(k, d)| Op::Incr(k, d)),
        2 => Just(Op::Reopen),
        1 => Just(Op::Flush),
    ]
}

fn options(setup: Setup) -> Options {
    let cache_bytes = if setup.cache { 1 << 20 } else { 0 };
    let options = Options::new()
        .durability(setup.mode)
        .cache_bytes(cache_bytes)
        .max_pending_bytes(16 << 10);
    if setup.collide {
        options.key_hasher(colliding_hash)
    } else {
        options
    }
}

fn open(dir: &std::path::Path, setup: Setup) -> Store {
    Store::open_with(dir, options(setup)).unwrap()
}

fn run(ops: Vec<Op>, setup: Setup) -> Result<(), TestCaseError> {
    let tmp = tempfile::tempdir().unwrap();
    let mut store = open(tmp.path(), setup);
    let mut model: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    for op in ops {
        match op {
            Op::Set(k, v) => {
                store.set(key(k), &v).unwrap();
                model.insert(key(k), v);
            }
            Op::Get(k) => {
                prop_assert_eq!(store.get(key(k)).unwrap(), model.get(&key(k)).cloned());
            }
            Op::Delete(k) => {
                prop_assert_eq!(
                    store.delete(key(k)).unwrap(),
                    model.remove(&key(k)).is_some()
                );
            }
            Op::Clear => {
                store.clear().unwrap();
                model.clear();
            }
            Op::Add(k, v) => {
                let out = store.add(key(k), &v, ItemMeta::default()).unwrap();
                match model.entry(key(k)) {
                    std::collections::hash_map::Entry::Occupied(_) => {
                        prop_assert_eq!(out, StoreOutcome::NotStored);
                    }
                    std::collections::hash_map::Entry::Vacant(slot) => {
                        prop_assert!(
                            matches!(out, StoreOutcome::Stored { .. }),
                            "expected stored, got {:?}",
                            out
                        );
                        slot.insert(v);
                    }
                }
            }
            Op::Cas(k, v, current) => {
                let item = store.get_item(key(k)).unwrap();
                prop_assert_eq!(item.as_ref().map(|i| &i.value), model.get(&key(k)));
                let expected = match (&item, current) {
                    (Some(i), true) => i.cas,
                    (Some(i), false) => i.cas.wrapping_sub(1),
                    (None, _) => 1,
                };
                let out = store
                    .compare_and_swap(key(k), &v, ItemMeta::default(), expected)
                    .unwrap();
                match (item, current) {
                    (None, _) => prop_assert_eq!(out, CasOutcome::NotFound),
                    (Some(_), false) => prop_assert_eq!(out, CasOutcome::Exists),
                    (Some(i), true) => {
                        let CasOutcome::Stored { cas } = out else {
                            return Err(TestCaseError::fail(format!(
                                "cas with current cas gave {out:?}"
                            )));
                        };
                        prop_assert_ne!(cas, i.cas);
                        model.insert(key(k), v);
                    }
                }
            }
            Op::Append(k, v) => {
                let out = store.append(key(k), &v).unwrap();
                match model.get_mut(&key(k)) {
                    Some(old) => {
                        prop_assert!(
                            matches!(out, StoreOutcome::Stored { .. }),
                            "expected stored, got {:?}",
                            out
                        );
                        old.extend_from_slice(&v);
                    }
                    None => prop_assert_eq!(out, StoreOutcome::NotStored),
                }
            }
            Op::Incr(k, d) => {
                let out = store.incr(key(k), d).unwrap();
                match model.get_mut(&key(k)) {
                    None => prop_assert_eq!(out, CounterOutcome::NotFound),
                    Some(old) => {
                        // memcached's rule: decimal digits, then optionally
                        // trailing spaces (and a trailing CRLF).
                        let text = old.strip_suffix(b"\r\n").unwrap_or(old);
                        let n = std::str::from_utf8(text)
                            .ok()
                            .map(|s| s.trim_end_matches(' '))
                            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                            .and_then(|s| s.parse::<u64>().ok());
                        match n {
                            None => prop_assert_eq!(out, CounterOutcome::NotNumeric),
                            Some(n) => {
                                let new = n.wrapping_add(d);
                                prop_assert_eq!(out, CounterOutcome::Value(new));
                                *old = new.to_string().into_bytes();
                            }
                        }
                    }
                }
            }
            Op::Reopen => {
                drop(store);
                store = open(tmp.path(), setup);
            }
            Op::Flush => store.flush().unwrap(),
        }
        prop_assert_eq!(store.len(), model.len());
    }
    // Final full comparison, after one more reopen.
    drop(store);
    let store = open(tmp.path(), setup);
    let mut keys = store.keys().unwrap();
    keys.sort();
    let mut want: Vec<Vec<u8>> = model.keys().cloned().collect();
    want.sort();
    prop_assert_eq!(keys, want);
    for (k, v) in &model {
        prop_assert_eq!(store.get(k).unwrap(), Some(v.clone()));
    }
    drop(store);
    let report = Store::verify_with(tmp.path(), options(setup)).unwrap();
    prop_assert!(report.is_ok(), "{}", report);
    prop_assert_eq!(report.keys_ok, model.len() as u64, "{}", report);
    Ok(())
}

proptest! {
    // 96 cases keep this file at a few seconds; set KVSTORE_MODEL_CASES for
    // a longer soak.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("KVSTORE_MODEL_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(96),
        ..ProptestConfig::default()
    })]

    #[test]
    fn store_agrees_with_a_hashmap(ops in prop::collection::vec(op(), 1..60), setup in setup()) {
        run(ops, setup)?;
    }
}
