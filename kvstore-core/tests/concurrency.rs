//! Threads sharing one Store: per-key atomicity of incr and cas, readers
//! never seeing torn or foreign values, group commit, and a failed flush
//! turning the store read-only (through the I/O seam).

use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};

use crate::common;
use common::{Hook, HookedFs, JournalGate, Step};

use kvstore_core::{CasOutcome, CounterOutcome, Durability, Error, ItemMeta, Options, Store};

const THREADS: usize = 8;

fn opts(cache: bool) -> Options {
    Options::new()
        .durability(Durability::Never)
        .cache_bytes(if cache { 1 << 20 } else { 0 })
}

#[test]
fn concurrent_incr_on_one_key_counts_exactly() {
    for cache in [true, false] {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open_with(tmp.path(), opts(cache)).unwrap();
        store.set("n", "0").unwrap();
        let barrier = Barrier::new(THREADS);
        std::thread::scope(|s| {
            for _ in 0..THREADS {
                s.spawn(|| {
                    barrier.wait();
                    for _ in 0..100 {
                        assert!(matches!(
                            store.incr("n", 1).unwrap(),
                            CounterOutcome::Value(_)
                        ));
                    }
                });
            }
        });
        let want = (THREADS * 100).to_string().into_bytes();
        assert_eq!(store.get("n").unwrap(), Some(want.clone()), "cache {cache}");
        drop(store);
        let store = Store::open_with(tmp.path(), opts(cache)).unwrap();
        assert_eq!(store.get("n").unwrap(), Some(want));
    }
}

#[test]
fn cas_race_has_exactly_one_winner() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open_with(tmp.path(), opts(true)).unwrap();
    for round in 0..20 {
        store.set("k", format!("round {round}")).unwrap();
        let cas = store.get_item("k").unwrap().unwrap().cas;
        let barrier = Barrier::new(THREADS);
        let winners = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for t in 0..THREADS {
                let (barrier, winners, store) = (&barrier, &winners, &store);
                s.spawn(move || {
                    barrier.wait();
                    match store
                        .compare_and_swap("k", format!("winner {t}"), ItemMeta::default(), cas)
                        .unwrap()
                    {
                        CasOutcome::Stored { .. } => {
                            winners.fetch_add(1, Ordering::SeqCst);
                        }
                        CasOutcome::Exists => {}
                        CasOutcome::NotFound => panic!("key vanished"),
                    }
                });
            }
        });
        assert_eq!(winners.load(Ordering::SeqCst), 1, "round {round}");
        assert!(store.get("k").unwrap().unwrap().starts_with(b"winner "));
    }
}

#[test]
fn concurrent_add_has_exactly_one_winner_per_key() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open_with(tmp.path(), opts(false)).unwrap();
    let barrier = Barrier::new(THREADS);
    let wins = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (barrier, wins, store) = (&barrier, &wins, &store);
            s.spawn(move || {
                barrier.wait();
                for k in 0..50 {
                    if let kvstore_core::StoreOutcome::Stored { .. } = store
                        .add(format!("k{k}"), format!("{t}"), ItemMeta::default())
                        .unwrap()
                    {
                        wins.fetch_add(1, Ordering::SeqCst);
                    }
                }
            });
        }
    });
    assert_eq!(wins.load(Ordering::SeqCst), 50);
    assert_eq!(store.len(), 50);
}

#[test]
fn readers_never_see_torn_or_foreign_values_during_overwrites() {
    for cache in [false, true] {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open_with(tmp.path(), opts(cache)).unwrap();
        let keys: Vec<String> = (0..8).map(|k| format!("key{k}")).collect();
        let value = |k: &str, i: usize| {
            let mut v = format!("{k}:{i}:").into_bytes();
            v.resize(v.len() + (i * 97) % 5000, b'#');
            v
        };
        for k in &keys {
            store.set(k, value(k, 0)).unwrap();
        }
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            for w in 0..2 {
                let (store, keys, stop) = (&store, &keys, &stop);
                s.spawn(move || {
                    for i in 1..400 {
                        let k = &keys[(i + w) % keys.len()];
                        store.set(k, value(k, i)).unwrap();
                    }
                    stop.store(true, Ordering::SeqCst);
                });
            }
            for _ in 0..3 {
                let (store, keys, stop) = (&store, &keys, &stop);
                s.spawn(move || {
                    let mut n = 0;
                    while !stop.load(Ordering::SeqCst) || n < 100 {
                        let k = &keys[n % keys.len()];
                        let v = store
                            .get(k)
                            .unwrap()
                            .expect("key vanished during overwrite");
                        let text = String::from_utf8_lossy(&v);
                        let mut parts = text.splitn(3, ':');
                        assert_eq!(parts.next(), Some(k.as_str()), "foreign value for {k}");
                        let i: usize = parts.next().unwrap().parse().unwrap();
                        assert_eq!(v, value(k, i), "torn value for {k}");
                        n += 1;
                    }
                });
            }
        });
    }
}

#[test]
fn always_mode_with_concurrent_writers_persists_everything() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let store =
            Store::open_with(tmp.path(), Options::new().durability(Durability::Always)).unwrap();
        std::thread::scope(|s| {
            for t in 0..THREADS {
                let store = &store;
                s.spawn(move || {
                    for i in 0..10 {
                        store.set(format!("t{t}-{i}"), format!("{t}/{i}")).unwrap();
                    }
                    store.set(format!("t{t}-0"), "overwritten").unwrap();
                    assert!(store.delete(format!("t{t}-9")).unwrap());
                });
            }
        });
    }
    let store = Store::open(tmp.path()).unwrap();
    assert_eq!(store.len(), THREADS * 9);
    assert_eq!(store.get("t3-0").unwrap(), Some(b"overwritten".to_vec()));
    assert_eq!(store.get("t3-5").unwrap(), Some(b"3/5".to_vec()));
}

/// A hook whose flushes (`syncfs`, and `fdatasync` of a file such as the
/// `Always` journal) fail once `fail` is set, counting calls; with
/// `no_exchange`, names cannot be exchanged atomically.
#[derive(Default)]
struct FlakySync {
    fail: AtomicBool,
    syncs: AtomicUsize,
    no_exchange: bool,
}

impl Hook for FlakySync {
    fn before(&self, step: Step<'_>) -> Option<io::Result<()>> {
        match step {
            Step::Syncfs(_) | Step::SyncFileData(_) => {
                self.syncs.fetch_add(1, Ordering::SeqCst);
                self.fail
                    .load(Ordering::SeqCst)
                    .then(|| Err(io::Error::from_raw_os_error(5)))
            }
            Step::RenameExchange(..) if self.no_exchange => Some(Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "no exchange here",
            ))),
            _ => None,
        }
    }
}

/// An `Always` store in `dir` on the hooked file system `fs`.
fn always_with<H: Hook>(fs: Arc<HookedFs<H>>, dir: &std::path::Path) -> Store {
    Store::open_with(
        dir,
        Options::new()
            .durability(Durability::Always)
            .file_system(fs),
    )
    .unwrap()
}

#[test]
fn group_commit_shares_flushes_between_writers() {
    let tmp = tempfile::tempdir().unwrap();
    let fs = Arc::new(HookedFs::new(FlakySync::default()));
    let store = always_with(fs.clone(), tmp.path());
    let writes = 16 * 8;
    std::thread::scope(|s| {
        for t in 0..16 {
            let store = &store;
            s.spawn(move || {
                for i in 0..8 {
                    store.set(format!("t{t}-{i}"), "v").unwrap();
                }
            });
        }
    });
    // One journal flush per write if nothing were shared.
    let syncs = fs.0.syncs.load(Ordering::SeqCst);
    assert!(
        syncs > 0 && syncs < writes,
        "{syncs} flushes for {writes} writes"
    );
}

#[test]
fn failed_flush_makes_the_store_read_only_until_reopened() {
    let tmp = tempfile::tempdir().unwrap();
    let fs = Arc::new(HookedFs::new(FlakySync::default()));
    let opts = || {
        Options::new()
            .durability(Durability::Always)
            .file_system(fs.clone())
    };
    let store = Store::open_with(tmp.path(), opts()).unwrap();
    store.set("a", "1").unwrap();
    fs.0.fail.store(true, Ordering::SeqCst);
    assert!(matches!(store.set("b", "2"), Err(Error::Io { .. })));
    let err = store.set("c", "3").unwrap_err();
    assert!(matches!(err, Error::ReadOnly { .. }), "{err}");
    assert!(err.to_string().contains("read-only"), "{err}");
    assert!(matches!(store.flush(), Err(Error::ReadOnly { .. })));
    assert_eq!(
        store.get("a").unwrap(),
        Some(b"1".to_vec()),
        "reads still work"
    );
    drop(store);
    fs.0.fail.store(false, Ordering::SeqCst);
    let store = Store::open_with(tmp.path(), opts()).unwrap();
    store.set("c", "3").unwrap();
    assert_eq!(store.get("a").unwrap(), Some(b"1".to_vec()));
}

#[test]
fn works_without_rename_exchange_or_noreplace() {
    let tmp = tempfile::tempdir().unwrap();
    let fs = Arc::new(HookedFs::new(FlakySync {
        no_exchange: true,
        ..FlakySync::default()
    }));
    let opts = || {
        Options::new()
            .durability(Durability::Never)
            .cache_bytes(0)
            .file_system(fs.clone())
    };
    {
        let store = Store::open_with(tmp.path(), opts()).unwrap();
        for round in 0..3 {
            for k in 0..20 {
                store.set(format!("k{k}"), format!("{round}-{k}")).unwrap();
            }
        }
        for k in 0..5 {
            assert!(store.delete(format!("k{k}")).unwrap());
        }
        for k in 0..20 {
            let want = (k >= 5).then(|| format!("2-{k}").into_bytes());
            assert_eq!(store.get(format!("k{k}")).unwrap(), want);
        }
    }
    let store = Store::open_with(tmp.path(), opts()).unwrap();
    assert_eq!(store.len(), 15);
    assert_eq!(store.get("k7").unwrap(), Some(b"2-7".to_vec()));
}

#[test]
fn deferred_acks_share_one_journal_flush() {
    let tmp = tempfile::tempdir().unwrap();
    let fs = Arc::new(HookedFs::new(JournalGate::default()));
    let store = always_with(fs.clone(), tmp.path());
    let flushes = || fs.0.flushes();

    // Without a deferral each set waits for its own flush.
    let before = flushes();
    for i in 0..20 {
        store.set(format!("plain-{i}"), "v").unwrap();
    }
    assert!(flushes() - before >= 20, "{} flushes", flushes() - before);

    // With one, the sets return at once and share the flush `take` waits
    // for (the flusher's own pass may add one).
    let acks = store.defer_acks();
    let before = flushes();
    for i in 0..20 {
        store.set(format!("deferred-{i}"), "v").unwrap();
    }
    if let Some(unsynced) = acks.take() {
        unsynced.wait().unwrap();
    }
    assert!(flushes() - before <= 2, "{} flushes", flushes() - before);
    assert!(acks.take().is_none(), "nothing is owed after the wait");
    drop(acks);
    drop(store);
    let store = Store::open(tmp.path()).unwrap();
    assert_eq!(store.len(), 40);
}

#[test]
fn nothing_is_deferred_outside_always() {
    let tmp = tempfile::tempdir().unwrap();
    for durability in [Durability::Never, Durability::default()] {
        let dir = tmp.path().join(format!("{durability:?}"));
        let store = Store::open_with(&dir, Options::new().durability(durability)).unwrap();
        let acks = store.defer_acks();
        store.set("k", "v").unwrap();
        assert!(acks.take().is_none(), "{durability:?}");
    }
}

#[test]
fn a_read_of_a_write_not_yet_durable_waits_for_its_flush() {
    let tmp = tempfile::tempdir().unwrap();
    let fs = Arc::new(HookedFs::new(JournalGate::default()));
    let store = always_with(fs.clone(), tmp.path());
    store.set("k", "old").unwrap();
    let closed = JournalGate::close(&fs.0);
    let acks = store.defer_acks();
    store.set("k", "new").unwrap();
    let unsynced = acks.take().expect("the set is not durable yet");
    std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::channel();
        let store = &store;
        s.spawn(move || tx.send(store.get("k").unwrap()).unwrap());
        // The reader cannot return before the flush: it would pass on a
        // value a power cut could still undo.
        let early = rx.recv_timeout(std::time::Duration::from_millis(200));
        assert!(early.is_err(), "read returned {early:?} before the flush");
        drop(closed);
        let read = rx.recv_timeout(std::time::Duration::from_secs(30));
        assert_eq!(read.unwrap(), Some(b"new".to_vec()));
    });
    unsynced.wait().unwrap();
}

#[test]
fn a_deferred_ack_reports_a_failed_flush() {
    let tmp = tempfile::tempdir().unwrap();
    let fs = Arc::new(HookedFs::new(FlakySync::default()));
    let store = always_with(fs.clone(), tmp.path());
    let acks = store.defer_acks();
    fs.0.fail.store(true, Ordering::SeqCst);
    store.set("k", "v").unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    acks.take()
        .expect("the set is not durable")
        .then(move |durable| tx.send(durable.map_err(|e| e.to_string())).unwrap());
    let outcome = rx.recv_timeout(std::time::Duration::from_secs(30)).unwrap();
    let err = outcome.unwrap_err();
    assert!(err.contains("i/o error"), "{err}");
    assert!(matches!(store.set("x", "y"), Err(Error::ReadOnly { .. })));
}
