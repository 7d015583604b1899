//! Basic behaviour of the Store: the API, persistence, metadata, clear,
//! locking, collisions.

use std::sync::Arc;
use std::time::Duration;

use kvstore_core::{
    CasOutcome, CounterOutcome, Durability, Error, Expiry, ItemMeta, Options, Store, StoreOutcome,
    TouchOutcome, MAX_KEY_BYTES,
};

fn never() -> Options {
    Options::new().durability(Durability::Never)
}

#[test]
fn store_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Store>();
    assert_send_sync::<Arc<Store>>();
}

#[test]
fn set_get_delete_and_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("nested/data");
    {
        let store = Store::open_with(&dir, never()).unwrap();
        assert!(store.is_empty());
        store.set("a", "1").unwrap();
        store.set("b", "2").unwrap();
        store.set("a", "one").unwrap();
        store.set([0u8, 255, 10], b"binary key").unwrap();
        assert_eq!(store.get("a").unwrap(), Some(b"one".to_vec()));
        assert_eq!(store.len(), 3);
        assert!(store.delete("b").unwrap());
        assert!(!store.delete("b").unwrap());
        assert_eq!(store.get("b").unwrap(), None);
        assert!(store.contains_key("a").unwrap());
        assert!(!store.contains_key("zz").unwrap());
        let mut keys = store.keys().unwrap();
        keys.sort();
        assert_eq!(keys, vec![vec![0u8, 255, 10], b"a".to_vec()]);
        assert_eq!(store.dir(), dir.as_path());
    }
    let store = Store::open(&dir).unwrap();
    assert_eq!(store.get("a").unwrap(), Some(b"one".to_vec()));
    assert_eq!(
        store.get([0u8, 255, 10]).unwrap(),
        Some(b"binary key".to_vec())
    );
    assert_eq!(store.get("b").unwrap(), None);
    assert_eq!(store.len(), 2);
}

#[test]
fn overwrites_many_times_keep_the_last_value_without_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = || never().cache_bytes(0);
    {
        let store = Store::open_with(tmp.path(), opts()).unwrap();
        for i in 0..200 {
            // Alternate long and short values: spares are reused without
            // truncation, the header says how long the record is.
            let v = if i % 2 == 0 {
                vec![b'x'; 3000 + i]
            } else {
                format!("v{i}").into_bytes()
            };
            store.set(format!("k{}", i % 7), &v).unwrap();
            assert_eq!(store.get(format!("k{}", i % 7)).unwrap(), Some(v));
        }
        assert_eq!(store.len(), 7);
        store.set("big", vec![7u8; 100_000]).unwrap();
        assert_eq!(store.get("big").unwrap().unwrap().len(), 100_000);
    }
    let store = Store::open_with(tmp.path(), opts()).unwrap();
    assert_eq!(store.get("k3").unwrap(), Some(b"v199".to_vec()));
    assert_eq!(store.get("k2").unwrap(), Some(vec![b'x'; 3000 + 198]));
    assert_eq!(store.get("big").unwrap().unwrap(), vec![7u8; 100_000]);
}

#[test]
fn key_and_value_limits() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open_with(tmp.path(), never().max_value_bytes(10)).unwrap();
    assert!(matches!(store.set("", "x"), Err(Error::InvalidKey { .. })));
    assert!(matches!(store.get(""), Err(Error::InvalidKey { .. })));
    let long = vec![b'k'; MAX_KEY_BYTES + 1];
    assert!(matches!(
        store.set(&long, "x"),
        Err(Error::KeyTooLong { len: 251, max: 250 })
    ));
    let longest = vec![b'k'; MAX_KEY_BYTES];
    store.set(&longest, "ok").unwrap();
    assert_eq!(store.get(&longest).unwrap(), Some(b"ok".to_vec()));
    assert!(matches!(
        store.set("k", vec![0u8; 11]),
        Err(Error::ValueTooLarge { len: 11, max: 10 })
    ));
    store.set("k", vec![0u8; 10]).unwrap();
    assert!(matches!(
        store.append("k", "x"),
        Err(Error::ValueTooLarge { .. })
    ));
    store.set("empty", "").unwrap();
    assert_eq!(store.get("empty").unwrap(), Some(Vec::new()));
}

#[test]
fn metadata_and_conditional_operations() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open_with(tmp.path(), never()).unwrap();
    let meta = ItemMeta {
        flags: 42,
        expiry: Expiry::Never,
    };
    let cas1 = store.set_with("k", "v", meta).unwrap();
    let item = store.get_item("k").unwrap().unwrap();
    assert_eq!(
        (item.value.as_slice(), item.flags, item.cas),
        (&b"v"[..], 42, cas1)
    );

    assert_eq!(
        store.add("k", "other", meta).unwrap(),
        StoreOutcome::NotStored
    );
    assert!(matches!(
        store.add("new", "n", meta).unwrap(),
        StoreOutcome::Stored { .. }
    ));
    assert_eq!(
        store.replace("absent", "x", meta).unwrap(),
        StoreOutcome::NotStored
    );
    let StoreOutcome::Stored { cas: cas2 } = store.replace("k", "w", ItemMeta::default()).unwrap()
    else {
        panic!("replace of a present key must store");
    };
    assert_ne!(cas1, cas2);
    assert_eq!(store.get_item("k").unwrap().unwrap().flags, 0);

    assert_eq!(
        store.append("absent", "x").unwrap(),
        StoreOutcome::NotStored
    );
    assert_eq!(
        store.prepend("absent", "x").unwrap(),
        StoreOutcome::NotStored
    );
    store.set_with("k", "mid", meta).unwrap();
    assert!(matches!(
        store.append("k", ">").unwrap(),
        StoreOutcome::Stored { .. }
    ));
    assert!(matches!(
        store.prepend("k", "<").unwrap(),
        StoreOutcome::Stored { .. }
    ));
    let item = store.get_item("k").unwrap().unwrap();
    assert_eq!(item.value, b"<mid>");
    assert_eq!(item.flags, 42, "append keeps the flags");

    assert_eq!(
        store.compare_and_swap("absent", "x", meta, 1).unwrap(),
        CasOutcome::NotFound
    );
    assert_eq!(
        store
            .compare_and_swap("k", "x", meta, item.cas + 1)
            .unwrap(),
        CasOutcome::Exists
    );
    let CasOutcome::Stored { cas } = store.compare_and_swap("k", "x", meta, item.cas).unwrap()
    else {
        panic!("cas with the current cas must store");
    };
    assert_eq!(store.get_item("k").unwrap().unwrap().cas, cas);
    assert_eq!(
        store.compare_and_swap("k", "y", meta, item.cas).unwrap(),
        CasOutcome::Exists
    );

    assert_eq!(store.incr("absent", 1).unwrap(), CounterOutcome::NotFound);
    assert_eq!(store.incr("k", 1).unwrap(), CounterOutcome::NotNumeric);
    store.set("n", "10").unwrap();
    assert_eq!(store.incr("n", 5).unwrap(), CounterOutcome::Value(15));
    assert_eq!(store.decr("n", 20).unwrap(), CounterOutcome::Value(0));
    store.set("n", u64::MAX.to_string()).unwrap();
    assert_eq!(store.incr("n", 2).unwrap(), CounterOutcome::Value(1));
    assert_eq!(store.get("n").unwrap(), Some(b"1".to_vec()));
    store.set("n", "18446744073709551616").unwrap();
    assert_eq!(store.incr("n", 1).unwrap(), CounterOutcome::NotNumeric);
    store.set("n", "-1").unwrap();
    assert_eq!(store.decr("n", 1).unwrap(), CounterOutcome::NotNumeric);
}

#[test]
fn expiry_touch_and_cas_uniqueness_across_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    let mut seen = std::collections::HashSet::new();
    {
        let store = Store::open_with(tmp.path(), never()).unwrap();
        let past = ItemMeta {
            flags: 0,
            expiry: Expiry::At(1),
        };
        store.set_with("gone", "v", past).unwrap();
        assert_eq!(store.get("gone").unwrap(), None);
        assert!(
            !store.delete("gone").unwrap(),
            "an expired item is not present"
        );
        assert!(
            matches!(
                store.add("gone", "again", past).unwrap(),
                StoreOutcome::Stored { .. }
            ),
            "add over an expired item stores"
        );
        store.set("t", "v").unwrap();
        let cas = store.get_item("t").unwrap().unwrap().cas;
        assert_eq!(
            store
                .touch("t", Expiry::after(Duration::from_secs(100)))
                .unwrap(),
            TouchOutcome::Touched
        );
        let item = store.get_item("t").unwrap().unwrap();
        assert!(matches!(item.expiry, Expiry::At(_)));
        assert_eq!(item.cas, cas, "touch keeps the cas");
        assert_eq!(
            store.touch("absent", Expiry::Never).unwrap(),
            TouchOutcome::NotFound
        );
        let gat = store.get_and_touch("t", Expiry::Never).unwrap().unwrap();
        assert_eq!(gat.expiry, Expiry::Never);
        assert_eq!(store.get_and_touch("absent", Expiry::Never).unwrap(), None);
        assert_eq!(
            store.touch("t", Expiry::At(1)).unwrap(),
            TouchOutcome::Touched
        );
        assert_eq!(store.get("t").unwrap(), None);
        for i in 0..10 {
            assert!(seen.insert(
                store
                    .set_with("c", i.to_string(), ItemMeta::default())
                    .unwrap()
            ));
        }
    }
    let store = Store::open_with(tmp.path(), never()).unwrap();
    for i in 0..10 {
        assert!(
            seen.insert(
                store
                    .set_with("c", i.to_string(), ItemMeta::default())
                    .unwrap()
            ),
            "cas reused after restart"
        );
    }
}

#[test]
fn clear_removes_everything_and_survives_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let store = Store::open_with(tmp.path(), never()).unwrap();
        for i in 0..50 {
            store.set(format!("k{i}"), "v").unwrap();
        }
        store.clear().unwrap();
        assert_eq!(store.len(), 0);
        assert_eq!(store.get("k1").unwrap(), None);
        store.set("after", "x").unwrap();
    }
    let store = Store::open_with(tmp.path(), never()).unwrap();
    assert_eq!(store.len(), 1);
    assert_eq!(store.get("after").unwrap(), Some(b"x".to_vec()));
    assert_eq!(store.get("k1").unwrap(), None);
}

#[test]
fn clear_after_is_persisted_and_zero_clears_now() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let store = Store::open_with(tmp.path(), never()).unwrap();
        store.set("a", "1").unwrap();
        store.clear_after(Duration::ZERO).unwrap();
        assert_eq!(store.get("a").unwrap(), None);
        store.set("b", "2").unwrap();
        let delay = Duration::from_millis(300);
        let asked = std::time::Instant::now();
        store.clear_after(delay).unwrap();
        let value = store.get("b").unwrap();
        // Before the delay has run out the value is still there; a machine
        // slow enough to let it run out already must see it gone.
        if asked.elapsed() < delay {
            assert_eq!(value, Some(b"2".to_vec()));
        }
    }
    let store = Store::open_with(tmp.path(), never()).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while store.get("b").unwrap().is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "pending clear never happened"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    store.set("c", "3").unwrap();
    assert_eq!(
        store.get("c").unwrap(),
        Some(b"3".to_vec()),
        "the clear happens once"
    );
}

#[test]
fn second_open_is_locked_until_drop() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open_with(tmp.path(), never()).unwrap();
    match Store::open_with(tmp.path(), never()) {
        Err(Error::Locked { dir, pid }) => {
            assert_eq!(dir, tmp.path());
            assert_eq!(pid, Some(std::process::id()));
        }
        Err(e) => panic!("expected Locked, got {e}"),
        Ok(_) => panic!("expected Locked, got a second store"),
    }
    let msg = Store::verify(tmp.path()).unwrap_err().to_string();
    assert!(msg.contains("cannot lock store directory"), "{msg}");
    drop(store);
    let _again = Store::open_with(tmp.path(), never()).unwrap();
}

fn weak_hash(key: &[u8]) -> u64 {
    // Only 4 distinct hashes: every few keys collide.
    (key.iter().map(|&b| b as u64).sum::<u64>() % 4).wrapping_mul(0x0101_0101_0101_0101)
}

#[test]
fn colliding_keys_all_live() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = || never().key_hasher(weak_hash).cache_bytes(0);
    {
        let store = Store::open_with(tmp.path(), opts()).unwrap();
        for i in 0..40 {
            store.set(format!("key{i}"), format!("value{i}")).unwrap();
        }
        for i in (0..40).step_by(3) {
            assert!(store.delete(format!("key{i}")).unwrap());
        }
        for i in 0..40 {
            let want = (i % 3 != 0).then(|| format!("value{i}").into_bytes());
            assert_eq!(store.get(format!("key{i}")).unwrap(), want, "key{i}");
        }
        // New keys reuse the freed collision slots.
        for i in 40..50 {
            store.set(format!("key{i}"), format!("value{i}")).unwrap();
        }
    }
    let store = Store::open_with(tmp.path(), opts()).unwrap();
    for i in 0..50 {
        let want = (i >= 40 || i % 3 != 0).then(|| format!("value{i}").into_bytes());
        assert_eq!(
            store.get(format!("key{i}")).unwrap(),
            want,
            "key{i} after reopen"
        );
    }
    drop(store);
    let report = Store::verify_with(tmp.path(), opts()).unwrap();
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.keys_ok, store_len(tmp.path(), opts()));
}

fn store_len(dir: &std::path::Path, opts: Options) -> u64 {
    Store::open_with(dir, opts).unwrap().len() as u64
}

#[test]
fn all_durability_modes_work() {
    for d in [
        Durability::Never,
        Durability::Periodic(Duration::from_millis(5)),
        Durability::Always,
    ] {
        let tmp = tempfile::tempdir().unwrap();
        {
            let store = Store::open_with(tmp.path(), Options::new().durability(d)).unwrap();
            store.set("a", "1").unwrap();
            store.set("a", "2").unwrap();
            store.set("b", "3").unwrap();
            assert!(store.delete("b").unwrap());
            store.flush().unwrap();
        }
        let store = Store::open(tmp.path()).unwrap();
        assert_eq!(store.get("a").unwrap(), Some(b"2".to_vec()), "{d:?}");
        assert_eq!(store.get("b").unwrap(), None, "{d:?}");
    }
}

#[test]
fn get_item_with_borrows_the_item() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open_with(tmp.path(), never()).unwrap();
    store
        .set_with(
            "k",
            "hello",
            ItemMeta {
                flags: 3,
                expiry: Expiry::Never,
            },
        )
        .unwrap();
    let got = store
        .get_item_with("k", |it| (it.value.len(), it.flags))
        .unwrap();
    assert_eq!(got, Some((5, 3)));
    assert_eq!(
        store.get_item_with("absent", |it| it.value.len()).unwrap(),
        None
    );
}

#[test]
fn expired_items_are_removed_in_the_background_after_open() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let store = Store::open_with(tmp.path(), never()).unwrap();
        // This session's own pass after open would remove an expired item
        // it meets: let it finish first (it lost that race under load).
        wait_for_sweep(&store);
        let expired = ItemMeta {
            flags: 0,
            expiry: Expiry::At(1),
        };
        store.set_with("old", "v", expired).unwrap();
        store
            .set_with(
                "fresh",
                "v",
                ItemMeta {
                    flags: 0,
                    expiry: Expiry::after(Duration::from_secs(3600)),
                },
            )
            .unwrap();
        store.set("plain", "v").unwrap();
        assert_eq!(
            store.len(),
            3,
            "expired items stay in the map until removed"
        );
    }
    let store = Store::open_with(tmp.path(), never()).unwrap();
    wait_for_sweep(&store);
    assert_eq!(store.len(), 2);
    assert_eq!(store.get("fresh").unwrap(), Some(b"v".to_vec()));
}

fn wait_for_sweep(store: &Store) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !store.background_sweep_done() {
        assert!(std::time::Instant::now() < deadline, "sweep never finished");
        std::thread::yield_now();
    }
}
