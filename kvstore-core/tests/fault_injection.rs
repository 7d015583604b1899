//! Fault injection through the I/O seam: `ENOSPC`, `EIO` and `EACCES` at
//! the Nth call of each kind of file-system step (write, create, rename,
//! exchange, rename-without-replace, remove, truncate, fsync, syncfs,
//! directory create/remove, log append and its sync) during set (new key and existing key), append,
//! delete, clear and map-log compaction, in `Never`, `Periodic` and
//! `Always` modes. In `Periodic` and `Always` the operation is followed by
//! `Store::flush`, which makes the journal durable and runs the applier
//! (the background flusher does not run during the test), so its steps are
//! injected too.
//!
//! Each injection runs on a fresh copy of a prepared store directory. A
//! first, fault-free run counts the calls of each kind the operation makes;
//! then every (kind, N <= count, error) combination is injected. Checks:
//! - the operation returns an error, or succeeds if the store could work
//!   around the fault (e.g. compaction failing is not fatal), and then a
//!   reopen in the same mode shows its outcome (so a swallowed error that
//!   lost a map record does not pass as worked around);
//! - after an error the previous value is still what a read returns (for
//!   a failed *flush* the outcome is unknowable, as after a timeout: the old
//!   or the new value, and the store turns read-only as docs/DESIGN.md
//!   says; a failed `clear` also turns it read-only); `clear` is all or
//!   nothing. In `Periodic` and `Always`, an operation acknowledged before its flush
//!   failed stays readable until the store is reopened, which shows the old
//!   or the new state (the journal write may or may not have failed);
//! - the other keys stay readable while the fault lasts;
//! - once the fault clears, the same operation succeeds (after a reopen if
//!   the store turned read-only), and a reopen shows exactly what was read.
//!
//! ENOSPC and EACCES are sticky (every later call of that kind fails too,
//! like a full disk or a permission change); EIO hits one call.

use crate::common;

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use common::{Hook, HookedFs, Step};
use kvstore_core::{Durability, Error, Options, Store};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Kind {
    CreateDir,
    RemoveDir,
    ListDir,
    CreateNew,
    WriteAt,
    Rename,
    RenameNoReplace,
    Exchange,
    RemoveFile,
    SetLen,
    SyncFile,
    SyncDir,
    Syncfs,
    OpenAppend,
    Append,
    AppendSync,
}

impl Kind {
    fn is_flush(self) -> bool {
        matches!(
            self,
            Kind::SyncFile | Kind::SyncDir | Kind::Syncfs | Kind::AppendSync
        )
    }
}

#[derive(Debug, Clone, Copy)]
struct Fault {
    kind: Kind,
    nth: usize,
    errno: i32,
    sticky: bool,
}

#[derive(Default)]
struct State {
    counts: HashMap<Kind, usize>,
    fault: Option<Fault>,
    injected: usize,
    /// Paths created (to see that compaction ran).
    created: Vec<PathBuf>,
}

/// Counts every step by kind and fails the one the armed [`Fault`] names.
#[derive(Default)]
struct Faults {
    state: Mutex<State>,
}

type FaultyFs = HookedFs<Faults>;

impl Faults {
    fn step(&self, kind: Kind) -> io::Result<()> {
        let mut st = self.state.lock().unwrap();
        let n = st.counts.entry(kind).or_insert(0);
        *n += 1;
        let n = *n;
        if let Some(f) = st.fault {
            if f.kind == kind && (n == f.nth || (f.sticky && n > f.nth)) {
                st.injected += 1;
                return Err(io::Error::from_raw_os_error(f.errno));
            }
        }
        Ok(())
    }
    fn arm(&self, fault: Option<Fault>) {
        let mut st = self.state.lock().unwrap();
        st.counts.clear();
        st.fault = fault;
        st.created.clear();
    }
    fn counts(&self) -> HashMap<Kind, usize> {
        self.state.lock().unwrap().counts.clone()
    }
}

impl Hook for Faults {
    fn before(&self, step: Step<'_>) -> Option<io::Result<()>> {
        let kind = match step {
            Step::CreateDir(_) => Kind::CreateDir,
            Step::RemoveDir(_) => Kind::RemoveDir,
            Step::ListDir(_) => Kind::ListDir,
            Step::CreateNew(_) => Kind::CreateNew,
            Step::WriteAt(_) => Kind::WriteAt,
            Step::Rename(..) => Kind::Rename,
            Step::RenameNoreplace(..) => Kind::RenameNoReplace,
            Step::RenameExchange(..) => Kind::Exchange,
            Step::RemoveFile(_) => Kind::RemoveFile,
            Step::SetLen(_) => Kind::SetLen,
            Step::SyncFile(_) | Step::SyncFileData(_) => Kind::SyncFile,
            Step::SyncDir(_) => Kind::SyncDir,
            Step::Syncfs(_) => Kind::Syncfs,
            Step::OpenAppend(_) => Kind::OpenAppend,
            Step::Append(_) => Kind::Append,
            Step::SyncAppend(_) => Kind::AppendSync,
        };
        if let Err(e) = self.step(kind) {
            return Some(Err(e));
        }
        if let Step::CreateNew(p) = step {
            self.state.lock().unwrap().created.push(p.to_path_buf());
        }
        None
    }

    /// A short write, as a full disk gives: part of the record lands
    /// before the error.
    fn torn_append_len(&self, len: usize) -> usize {
        len / 2
    }
}

fn scratch() -> tempfile::TempDir {
    tempfile::tempdir_in("/dev/shm").unwrap_or_else(|_| tempfile::tempdir().unwrap())
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), dest).unwrap();
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    SetExisting,
    SetNew,
    Append,
    Delete,
    Clear,
    /// A delete that pushes the map log past its compaction threshold.
    CompactingDelete,
}

const BASE: [(&str, &str); 3] = [("a", "alpha"), ("b", "bravo"), ("c", "charlie")];

type Map = BTreeMap<String, Vec<u8>>;

fn base_map() -> Map {
    BASE.iter()
        .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
        .collect()
}

impl Scenario {
    /// Runs the operation; returns the state it would leave on success.
    fn run(self, store: &Store, before: &Map) -> (Result<(), Error>, Map) {
        let mut after = before.clone();
        let r = match self {
            Scenario::SetExisting => {
                after.insert("a".into(), b"ALPHA-2".to_vec());
                store.set("a", "ALPHA-2")
            }
            Scenario::SetNew => {
                after.insert("n".into(), b"november".to_vec());
                store.set("n", "november")
            }
            Scenario::Append => {
                after.get_mut("a").unwrap().extend_from_slice(b"+tail");
                store.append("a", "+tail").map(|_| ())
            }
            Scenario::Delete | Scenario::CompactingDelete => {
                after.remove("b");
                store.delete("b").map(|_| ())
            }
            Scenario::Clear => {
                after.clear();
                store.clear()
            }
        };
        (r, after)
    }
}

fn read_all(store: &Store) -> Result<Map, Error> {
    let mut m = Map::new();
    for k in ["a", "b", "c", "n"] {
        if let Some(v) = store.get(k)? {
            m.insert(k.to_string(), v);
        }
    }
    Ok(m)
}

/// A prepared store directory for a scenario (closed).
fn template(scenario: Scenario) -> tempfile::TempDir {
    let dir = scratch();
    let store = Store::open_with(dir.path(), Options::new().durability(Durability::Never)).unwrap();
    for (k, v) in BASE {
        store.set(k, v).unwrap();
    }
    if scenario == Scenario::CompactingDelete {
        // 3 live records + 2 * 2047 dead ones; the scenario's delete makes
        // dead records reach the compaction threshold (4096).
        for _ in 0..2047 {
            store.set("x", "temporary").unwrap();
            store.delete("x").unwrap();
        }
    }
    drop(store);
    dir
}

struct Tally {
    injections: usize,
    not_reached: usize,
    errors: usize,
    worked_around: usize,
    violations: Vec<String>,
}

/// Whether the mode applies changes to the value files behind the journal
/// (the operation is acknowledged, then `Store::flush` applies it).
fn periodic(mode: Durability) -> bool {
    matches!(mode, Durability::Periodic(_) | Durability::Always)
}

fn run_scenario(scenario: Scenario, mode: Durability, tally: &mut Tally) {
    let tpl = template(scenario);
    let opts = |fs: Arc<FaultyFs>| {
        Options::new()
            .durability(mode)
            .cache_bytes(0)
            .file_system(fs)
            // `Always`: no flusher pass or checkpoint by itself.
            .checkpoint_interval(std::time::Duration::from_secs(3600))
    };
    // Fault-free run: how many calls of each kind does the operation make?
    let work = scratch();
    copy_tree(tpl.path(), work.path());
    let fs = Arc::new(FaultyFs::new(Faults::default()));
    let store = Store::open_with(work.path(), opts(fs.clone())).unwrap();
    fs.0.arm(None);
    let (r, expected_after) = scenario.run(&store, &base_map());
    r.unwrap();
    if periodic(mode) {
        store.flush().unwrap();
    }
    let counts = fs.0.counts();
    if scenario == Scenario::CompactingDelete {
        let created = fs.0.state.lock().unwrap().created.clone();
        assert!(
            created.iter().any(|p| p.ends_with("map.log.~tmp")),
            "the compaction scenario did not compact: {created:?}"
        );
    }
    assert_eq!(read_all(&store).unwrap(), expected_after);
    drop(store);

    let mut kinds: Vec<(Kind, usize)> = counts.into_iter().collect();
    kinds.sort();
    for (kind, count) in kinds {
        for nth in 1..=count.min(4) {
            for (errno, sticky) in [
                (libc::ENOSPC, true),
                (libc::EIO, false),
                (libc::EACCES, true),
            ] {
                let fault = Fault {
                    kind,
                    nth,
                    errno,
                    sticky,
                };
                let what = format!("{scenario:?} {mode:?} {fault:?}");
                if let Err(v) = inject(tpl.path(), scenario, mode, fault, &opts, tally) {
                    tally.violations.push(format!("{what}: {v}"));
                }
            }
        }
    }
}

fn inject(
    tpl: &Path,
    scenario: Scenario,
    mode: Durability,
    fault: Fault,
    opts: &dyn Fn(Arc<FaultyFs>) -> Options,
    tally: &mut Tally,
) -> Result<(), String> {
    let work = scratch();
    copy_tree(tpl, work.path());
    let fs = Arc::new(FaultyFs::new(Faults::default()));
    let store = Store::open_with(work.path(), opts(fs.clone())).map_err(|e| e.to_string())?;
    let before = base_map();
    fs.0.arm(Some(fault));
    let (r, after) = scenario.run(&store, &before);
    // `Periodic`: acknowledged, then flushed (journal and applier).
    let acked = periodic(mode) && r.is_ok();
    let r = if acked { store.flush() } else { r };
    if fs.0.state.lock().unwrap().injected == 0 {
        // Only a background thread (sweeper, deleter) made that call in
        // the counting run.
        tally.not_reached += 1;
        return Ok(());
    }
    tally.injections += 1;
    // While the fault lasts: what do reads show?
    let seen = read_all(&store).map_err(|e| format!("read during fault: {e}"))?;
    let store = match &r {
        Ok(()) => {
            tally.worked_around += 1;
            if seen != after {
                return Err(format!("succeeded but reads show {seen:?}"));
            }
            // What succeeded despite the fault is on disk: a reopen in the
            // same mode (no `Periodic` recovery to hide a lost map record)
            // shows it.
            fs.0.arm(None);
            drop(store);
            let store = Store::open_with(work.path(), opts(fs.clone()))
                .map_err(|e| format!("reopen after a worked-around fault: {e}"))?;
            let again = read_all(&store).map_err(|e| e.to_string())?;
            if again != after {
                return Err(format!("succeeded, but a reopen shows {again:?}"));
            }
            store
        }
        Err(e) => {
            tally.errors += 1;
            let ok = if acked {
                seen == after
            } else {
                seen == before || (fault.kind.is_flush() && seen == after)
            };
            if !ok {
                return Err(format!(
                    "failed ({e}) but reads show {seen:?} instead of the previous state"
                ));
            }
            store
        }
    };
    // The fault clears.
    fs.0.arm(None);
    let read_only = matches!(store.set("probe", "1"), Err(Error::ReadOnly { .. }));
    let store = if read_only {
        // DESIGN.md: a failed flush turns the store read-only until it is
        // reopened; so does a failed generation switch (clear).
        if !(r.is_err() && (fault.kind.is_flush() || scenario == Scenario::Clear || acked)) {
            return Err("store turned read-only without a failed flush or clear".into());
        }
        drop(store);
        Store::open_with(work.path(), opts(fs.clone())).map_err(|e| format!("reopen: {e}"))?
    } else {
        store
            .delete("probe")
            .map_err(|e| format!("probe delete: {e}"))?;
        store
    };
    let now = read_all(&store).map_err(|e| format!("read after fault: {e}"))?;
    // After a failed flush the disk may hold the operation's outcome even
    // though the running store kept showing the old state.
    // So may a `Periodic` store whose flush failed show the state before
    // the acknowledged operation (its journal write failed).
    let flush_outcome = read_only
        && ((fault.kind.is_flush() && now == after) || (acked && (now == after || now == before)));
    if now != seen && !flush_outcome {
        return Err(format!("state changed by itself: {seen:?} -> {now:?}"));
    }
    // The operation works again (a clear or set is idempotent; append is
    // redone on the state now present).
    let (r2, after2) = scenario.run(&store, &now);
    r2.map_err(|e| format!("operation still fails after the fault cleared: {e}"))?;
    store
        .flush()
        .map_err(|e| format!("flush still fails after the fault cleared: {e}"))?;
    let got = read_all(&store).map_err(|e| e.to_string())?;
    if got != after2 {
        return Err(format!("after retry {got:?}, expected {after2:?}"));
    }
    store.set("z", "after").map_err(|e| e.to_string())?;
    drop(store);
    let store =
        Store::open_with(work.path(), Options::new()).map_err(|e| format!("reopen: {e}"))?;
    let mut expect = after2;
    let reopened = read_all(&store).map_err(|e| e.to_string())?;
    if reopened != expect {
        return Err(format!("after reopen {reopened:?}, expected {expect:?}"));
    }
    expect.insert("z".into(), b"after".to_vec());
    if store.get("z").map_err(|e| e.to_string())?.as_deref() != Some(&b"after"[..]) {
        return Err("write after the fault lost on reopen".into());
    }
    drop(store);
    let report = Store::verify(work.path()).map_err(|e| format!("verify: {e}"))?;
    if !report.is_ok() {
        return Err(format!("verify after the fault: {report:?}"));
    }
    Ok(())
}

fn run_all(mode: Durability) {
    let mut tally = Tally {
        injections: 0,
        not_reached: 0,
        errors: 0,
        worked_around: 0,
        violations: Vec::new(),
    };
    for scenario in [
        Scenario::SetExisting,
        Scenario::SetNew,
        Scenario::Append,
        Scenario::Delete,
        Scenario::Clear,
        Scenario::CompactingDelete,
    ] {
        run_scenario(scenario, mode, &mut tally);
    }
    eprintln!(
        "fault injection {mode:?}: {} faults injected, {} reported as errors, {} worked around, violations {}",
        tally.injections,
        tally.errors,
        tally.worked_around,
        tally.violations.len()
    );
    assert!(
        tally.violations.is_empty(),
        "{} violations:\n{}",
        tally.violations.len(),
        tally.violations.join("\n")
    );
}

#[test]
fn faults_during_writes_with_durability_never() {
    run_all(Durability::Never);
}

#[test]
fn faults_during_writes_with_durability_periodic() {
    // The flusher does not run by itself during the test.
    run_all(Durability::Periodic(std::time::Duration::from_secs(3600)));
}

#[test]
fn faults_during_writes_with_durability_always() {
    run_all(Durability::Always);
}
