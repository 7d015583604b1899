//! Fault injection through the I/O seam: a workload runs with the N-th
//! mutating file-system call failing (EIO), for every N; nothing panics,
//! and after a reopen on a healthy file system every acknowledged write is
//! there and every failed one left the old or the new value.

use crate::common;

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::{Hook, HookedFs, Step};
use kvstore_core::{Durability, Options, Store};

/// Fails the `fail_at`-th mutating call (1-based); counts all of them
/// (every step but listing a directory).
struct FailNth {
    calls: Arc<AtomicUsize>,
    fail_at: usize,
}

impl Hook for FailNth {
    fn before(&self, step: Step<'_>) -> Option<io::Result<()>> {
        if let Step::ListDir(_) = step {
            return None;
        }
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        (n == self.fail_at).then(|| Err(io::Error::from_raw_os_error(libc_eio())))
    }
}

fn libc_eio() -> i32 {
    5
}

#[derive(Clone, Debug)]
enum Op {
    Set(&'static str, &'static str),
    Delete(&'static str),
    Clear,
}

const WORKLOAD: &[Op] = &[
    Op::Set("a", "1"),
    Op::Set("b", "2"),
    Op::Set("c", "3"),
    Op::Set("a", "11"),
    Op::Delete("b"),
    Op::Set("d", "4"),
    Op::Set("b", "22"),
    Op::Set("c", "33"),
    Op::Clear,
    Op::Set("e", "5"),
    Op::Set("a", "111"),
    Op::Delete("e"),
    Op::Set("f", "6"),
];

/// Runs the workload with call `fail_at` failing; returns the number of
/// mutating calls made.
fn run(durability: Durability, workload: &[Op], fail_at: usize) -> usize {
    let tmp = tempfile::tempdir().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let fs = Arc::new(HookedFs::new(FailNth {
        calls: calls.clone(),
        fail_at,
    }));
    // Each key: the values it may have (several after a failed write).
    let mut possible: HashMap<&str, Vec<Option<&str>>> = HashMap::new();
    let keys = ["a", "b", "c", "d", "e", "f"];
    for k in keys {
        possible.insert(k, vec![None]);
    }
    match Store::open_with(
        tmp.path(),
        Options::new().durability(durability).file_system(fs),
    ) {
        Err(_) => {} // the failure hit open itself: nothing acknowledged
        Ok(store) => {
            for op in workload {
                let (res, touched): (Result<(), _>, Vec<(&str, Option<&str>)>) = match op {
                    Op::Set(k, v) => (store.set(k, v), vec![(k, Some(*v))]),
                    Op::Delete(k) => (store.delete(k).map(|_| ()), vec![(k, None)]),
                    Op::Clear => (store.clear(), keys.iter().map(|k| (*k, None)).collect()),
                };
                for (k, v) in touched {
                    let p = possible.get_mut(k).unwrap();
                    if res.is_ok() {
                        *p = vec![v];
                    } else if !p.contains(&v) {
                        p.push(v);
                    }
                }
            }
            // Reads never panic on a store that saw a failure.
            for k in keys {
                let _ = store.get(k);
            }
        }
    }
    let made = calls.load(Ordering::SeqCst);
    let store = Store::open_with(tmp.path(), Options::new().durability(Durability::Never)).unwrap();
    for k in keys {
        let got = store.get(k).unwrap();
        let got = got.as_deref().map(|v| std::str::from_utf8(v).unwrap());
        assert!(
            possible[k].contains(&got),
            "fail_at {fail_at}: key {k} is {got:?}, expected one of {:?}",
            possible[k]
        );
    }
    drop(store);
    let report = Store::verify(tmp.path()).unwrap();
    assert!(report.is_ok(), "fail_at {fail_at}:\n{report}");
    made
}

#[test]
fn every_single_failure_leaves_a_consistent_store() {
    // `Always` flushes at every step (slow here): a shorter workload.
    for (durability, workload) in [
        (Durability::Never, WORKLOAD),
        (Durability::Always, &WORKLOAD[..6]),
    ] {
        let total = run(durability, workload, usize::MAX);
        assert!(total > workload.len(), "{total} calls");
        for n in 1..=total {
            run(durability, workload, n);
        }
    }
}
