//! The write-ahead journal of `Durability::Always`: what a reopen replays
//! onto the value files, what it must not, and what a value file that
//! cannot be written behind a durable journal entry does.
//!
//! A [`KeepJournal`] hook never lets a journal file be removed or set
//! aside (so the journal of a closed store is still there to replay, as
//! after a power cut) and can make writes to the value files fail (so that
//! applying a change fails after its journal entry is durable).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use kvstore_core::{Durability, Options, Store};

use crate::common;
use common::{Hook, HookedFs, Step};

#[derive(Default)]
struct KeepJournal {
    /// Renames fail, and so do creates in the value subdirectories, after
    /// leaving half of a file behind as a failing write can.
    fail_value_writes: AtomicBool,
}

/// A numbered journal file (`journal.<n>`), not the set-aside spare.
fn is_journal(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("journal."))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// A file in a value subdirectory (`gen-<n>/<xx>/...`).
fn in_value_dir(path: &Path) -> bool {
    path.parent()
        .and_then(Path::parent)
        .and_then(Path::file_name)
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("gen-"))
}

/// EIO.
fn eio() -> io::Error {
    io::Error::from_raw_os_error(5)
}

impl Hook for KeepJournal {
    fn before(&self, step: Step<'_>) -> Option<io::Result<()>> {
        let failing = self.fail_value_writes.load(Ordering::SeqCst);
        match step {
            // Removing or setting aside a journal: keep it instead.
            Step::RemoveFile(p) | Step::Rename(p, _) if is_journal(p) => Some(Ok(())),
            Step::Rename(..) | Step::RenameExchange(..) | Step::RenameNoreplace(..) if failing => {
                Some(Err(eio()))
            }
            Step::CreateNew(p) if failing && in_value_dir(p) => {
                Some(fs::write(p, b"half").and(Err(eio())))
            }
            _ => None,
        }
    }
}

fn always(fs: &Arc<HookedFs<KeepJournal>>) -> Options {
    Options::new()
        .durability(Durability::Always)
        .file_system(fs.clone())
        // No checkpoint during a test: the whole history stays journaled.
        .checkpoint_interval(std::time::Duration::from_secs(3600))
}

fn journals(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| is_journal(p))
        .collect();
    out.sort();
    out
}

/// Every value file (not spare) of the live generation.
fn value_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for gen in fs::read_dir(dir).unwrap() {
        let gen = gen.unwrap().path();
        let is_gen = gen
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("gen-"));
        if !is_gen {
            continue;
        }
        for sub in fs::read_dir(&gen).unwrap() {
            let sub = sub.unwrap().path();
            if !sub.is_dir() {
                continue;
            }
            for f in fs::read_dir(&sub).unwrap() {
                let f = f.unwrap().path();
                let name = f.file_name().unwrap().to_string_lossy().into_owned();
                if !name.starts_with('~') {
                    out.push(f);
                }
            }
        }
    }
    out
}

#[test]
fn reopen_replays_journaled_writes_that_never_reached_the_files() {
    let tmp = tempfile::tempdir().unwrap();
    let fs = Arc::new(HookedFs::new(KeepJournal::default()));
    {
        let store = Store::open_with(tmp.path(), always(&fs)).unwrap();
        for i in 0..20 {
            store.set(format!("k{i}"), format!("v{i}")).unwrap();
        }
        store.set("k3", "overwritten").unwrap();
        assert!(store.delete("k4").unwrap());
        store.append("k5", "+tail").unwrap();
    }
    assert!(
        !journals(tmp.path()).is_empty(),
        "journal kept for the test"
    );
    // What a power cut can leave: value files that never got their data.
    let files = value_files(tmp.path());
    assert_eq!(files.len(), 19);
    for f in &files {
        fs::write(f, b"").unwrap();
    }
    let replayed = journals(tmp.path());
    let store = Store::open(tmp.path()).unwrap();
    assert!(
        replayed.iter().all(|j| !j.exists()),
        "replayed journals are removed"
    );
    assert_eq!(store.len(), 19);
    for i in 0..20 {
        let want = match i {
            3 => Some(b"overwritten".to_vec()),
            4 => None,
            5 => Some(b"v5+tail".to_vec()),
            _ => Some(format!("v{i}").into_bytes()),
        };
        assert_eq!(store.get(format!("k{i}")).unwrap(), want, "k{i}");
    }
    drop(store);
    assert!(Store::verify(tmp.path()).unwrap().is_ok());
}

#[test]
fn replay_does_not_resurrect_a_removed_key() {
    let tmp = tempfile::tempdir().unwrap();
    let fs = Arc::new(HookedFs::new(KeepJournal::default()));
    let old_file;
    {
        let store = Store::open_with(tmp.path(), always(&fs)).unwrap();
        store.set("gone", "old value").unwrap();
        // Applied to the value files.
        store.flush().unwrap();
        let files = value_files(tmp.path());
        assert_eq!(files.len(), 1);
        old_file = (files[0].clone(), fs::read(&files[0]).unwrap());
        assert!(store.delete("gone").unwrap());
        store.set("other", "x").unwrap();
    }
    // The removal did not reach the disk: the old file is back in place.
    fs::write(&old_file.0, &old_file.1).unwrap();
    let store = Store::open(tmp.path()).unwrap();
    assert_eq!(store.get("gone").unwrap(), None);
    assert_eq!(store.get("other").unwrap(), Some(b"x".to_vec()));
    assert_eq!(store.len(), 1);
}

#[test]
fn a_change_that_cannot_be_applied_stays_readable_and_is_replayed() {
    let tmp = tempfile::tempdir().unwrap();
    let fs = Arc::new(HookedFs::new(KeepJournal::default()));
    {
        let store = Store::open_with(tmp.path(), always(&fs)).unwrap();
        store.set("kept", "1").unwrap();
        store.set("changed", "old").unwrap();
        store.flush().unwrap();
        fs.0.fail_value_writes.store(true, Ordering::SeqCst);
        // Acknowledged: the journal entries are durable.
        store.set("changed", "new").unwrap();
        store.set("fresh", "1").unwrap();
        // Applying them to the value files fails: the store turns
        // read-only, and reads still see every acknowledged write.
        assert!(store.flush().is_err());
        assert!(matches!(
            store.set("after", "2"),
            Err(kvstore_core::Error::ReadOnly { .. })
        ));
        fs.0.fail_value_writes.store(false, Ordering::SeqCst);
        assert_eq!(store.get("changed").unwrap(), Some(b"new".to_vec()));
        assert_eq!(store.get("fresh").unwrap(), Some(b"1".to_vec()));
    }
    // The next open replays the journal onto the files.
    let store = Store::open(tmp.path()).unwrap();
    assert_eq!(store.get("changed").unwrap(), Some(b"new".to_vec()));
    assert_eq!(store.get("fresh").unwrap(), Some(b"1".to_vec()));
    assert_eq!(store.get("kept").unwrap(), Some(b"1".to_vec()));
    assert_eq!(store.len(), 3);
    drop(store);
    assert!(Store::verify(tmp.path()).unwrap().is_ok());
}

#[test]
fn entries_of_a_cleared_generation_are_not_replayed() {
    let tmp = tempfile::tempdir().unwrap();
    let fs = Arc::new(HookedFs::new(KeepJournal::default()));
    {
        let store = Store::open_with(tmp.path(), always(&fs)).unwrap();
        store.set("before", "1").unwrap();
        store.clear().unwrap();
        store.set("after", "2").unwrap();
    }
    let store = Store::open(tmp.path()).unwrap();
    assert_eq!(store.get("before").unwrap(), None);
    assert_eq!(store.get("after").unwrap(), Some(b"2".to_vec()));
    assert_eq!(store.len(), 1);
}

#[test]
fn a_torn_journal_tail_is_ignored() {
    let tmp = tempfile::tempdir().unwrap();
    let fs = Arc::new(HookedFs::new(KeepJournal::default()));
    {
        let store = Store::open_with(tmp.path(), always(&fs)).unwrap();
        store.set("a", "1").unwrap();
        store.set("b", "2").unwrap();
    }
    let files = journals(tmp.path());
    let last = files.last().unwrap();
    let mut bytes = fs::read(last).unwrap();
    // Half of a batch more right after the last one (before the zeros the
    // file grows by), as a power cut in the middle of its write leaves it.
    let end = bytes.iter().rposition(|&b| b != 0).unwrap() + 1;
    let torn = [40, 0, 0, 0, 1, 2, 3, 4, 1, 0];
    bytes.truncate(end);
    bytes.extend_from_slice(&torn);
    fs::write(last, &bytes).unwrap();
    let store = Store::open(tmp.path()).unwrap();
    assert_eq!(store.get("a").unwrap(), Some(b"1".to_vec()));
    assert_eq!(store.get("b").unwrap(), Some(b"2".to_vec()));
    assert!(files.iter().all(|j| !j.exists()), "replayed");
}

#[test]
fn a_clean_close_leaves_no_journal_and_checkpoints_remove_old_files() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let store = Store::open_with(
            tmp.path(),
            Options::new()
                .durability(Durability::Always)
                .checkpoint_interval(std::time::Duration::from_millis(5)),
        )
        .unwrap();
        for i in 0..50 {
            store.set(format!("k{i}"), "v").unwrap();
        }
        // Checkpoints keep at most the current file and one being retired.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while journals(tmp.path()).len() > 1 {
            assert!(std::time::Instant::now() < deadline, "old journals stay");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
    assert!(
        journals(tmp.path()).is_empty(),
        "{:?}",
        fs::read_dir(tmp.path()).unwrap().collect::<Vec<_>>()
    );
    assert!(
        tmp.path().join("journal.spare").exists(),
        "the last journal is set aside for reuse"
    );
    let store =
        Store::open_with(tmp.path(), Options::new().durability(Durability::Always)).unwrap();
    assert!(!tmp.path().join("journal.spare").exists(), "and reused");
    store.set("k50", "v").unwrap();
    drop(store);
    let store = Store::open(tmp.path()).unwrap();
    assert_eq!(store.len(), 51);
}

#[test]
fn repair_replays_the_journal_first() {
    let tmp = tempfile::tempdir().unwrap();
    let fs = Arc::new(HookedFs::new(KeepJournal::default()));
    {
        let store = Store::open_with(tmp.path(), always(&fs)).unwrap();
        store.set("a", "1").unwrap();
        store.set("b", "2").unwrap();
    }
    for f in value_files(tmp.path()) {
        fs::remove_file(f).unwrap();
    }
    // Verify does not replay, but says there is something to replay.
    let report = Store::verify(tmp.path()).unwrap();
    assert_eq!(report.journal_files, 1, "{report}");
    assert!(
        report
            .to_string()
            .contains("journal files awaiting replay: 1"),
        "{report}"
    );
    let report = Store::repair(tmp.path()).unwrap();
    assert_eq!(report.keys_recovered, 2, "{report}");
    let store = Store::open(tmp.path()).unwrap();
    assert_eq!(store.get("a").unwrap(), Some(b"1".to_vec()));
    assert_eq!(store.get("b").unwrap(), Some(b"2".to_vec()));
    drop(store);
    let report = Store::verify(tmp.path()).unwrap();
    assert_eq!(report.journal_files, 0, "{report}");
    assert!(!report.to_string().contains("journal"), "{report}");
    assert!(report.is_ok(), "{report}");
}

#[test]
fn writers_and_frequent_checkpoints_neither_lose_nor_hang() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = || {
        Options::new()
            .durability(Durability::Always)
            .checkpoint_interval(std::time::Duration::from_millis(1))
    };
    {
        let store = Store::open_with(tmp.path(), opts()).unwrap();
        std::thread::scope(|s| {
            for t in 0..8 {
                let store = &store;
                s.spawn(move || {
                    for i in 0..150 {
                        store
                            .set(format!("t{t}-{}", i % 40), format!("{i}"))
                            .unwrap();
                        if i % 7 == 0 {
                            store.delete(format!("t{t}-{}", (i + 3) % 40)).unwrap();
                        }
                    }
                });
            }
        });
    }
    // The same history, computed.
    let mut want = std::collections::BTreeMap::new();
    for t in 0..8 {
        for i in 0..150 {
            want.insert(format!("t{t}-{}", i % 40), format!("{i}"));
            if i % 7 == 0 {
                want.remove(&format!("t{t}-{}", (i + 3) % 40));
            }
        }
    }
    let store = Store::open_with(tmp.path(), opts()).unwrap();
    assert_eq!(store.len(), want.len());
    for (k, v) in &want {
        assert_eq!(store.get(k).unwrap(), Some(v.clone().into_bytes()), "{k}");
    }
}
