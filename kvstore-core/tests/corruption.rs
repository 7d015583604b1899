//! Damage on disk: torn or garbled map log, garbled value files, a deleted
//! map, planted symlinks, what a `Periodic` power cut leaves; verify and
//! repair.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use kvstore_core::{Durability, Options, Store};

fn never() -> Options {
    Options::new().durability(Durability::Never)
}

fn fnv1a64(key: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for &b in key {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

fn gen_dir(dir: &Path) -> PathBuf {
    let current = fs::read_to_string(dir.join("CURRENT")).unwrap();
    let n = current
        .lines()
        .nth(1)
        .unwrap()
        .strip_prefix("gen ")
        .unwrap();
    dir.join(format!("gen-{n}"))
}

fn value_file(dir: &Path, key: &str) -> PathBuf {
    let h = fnv1a64(key.as_bytes());
    gen_dir(dir)
        .join(format!("{:02x}", h >> 56))
        .join(format!("{h:016x}"))
}

fn map_log(dir: &Path) -> PathBuf {
    gen_dir(dir).join("map.log")
}

/// A closed store with keys k0..k19 = v0..v19.
fn populated() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open_with(tmp.path(), never()).unwrap();
    for i in 0..20 {
        store.set(format!("k{i}"), format!("v{i}")).unwrap();
    }
    tmp
}

fn assert_keys(store: &Store, present: impl Fn(usize) -> bool) {
    for i in 0..20 {
        let want = present(i).then(|| format!("v{i}").into_bytes());
        assert_eq!(store.get(format!("k{i}")).unwrap(), want, "k{i}");
    }
}

#[test]
fn torn_map_log_tail_drops_only_the_last_key() {
    let tmp = populated();
    let log = map_log(tmp.path());
    let len = fs::metadata(&log).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&log)
        .unwrap()
        .set_len(len - 3)
        .unwrap();
    let report = Store::verify(tmp.path()).unwrap();
    assert!(!report.is_ok(), "a torn tail is reported");
    let store = Store::open_with(tmp.path(), never()).unwrap();
    assert_keys(&store, |i| i != 19);
    assert_eq!(store.len(), 19);
    // Writing after the repair of the tail works and persists.
    store.set("after", "x").unwrap();
    drop(store);
    let store = Store::open_with(tmp.path(), never()).unwrap();
    assert_eq!(store.get("after").unwrap(), Some(b"x".to_vec()));
    assert_keys(&store, |i| i != 19);
    drop(store);
    let report = Store::verify(tmp.path()).unwrap();
    assert!(report.is_ok(), "{report}");
    assert!(report.stray_files <= 1, "{report}");
}

#[test]
fn stray_value_files_are_recycled_after_open() {
    let tmp = populated();
    // Forget k19 in the map only: its file becomes a stray, as after a
    // crash between the rename and the map record.
    let log = map_log(tmp.path());
    let len = fs::metadata(&log).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&log)
        .unwrap()
        .set_len(len - 1)
        .unwrap();
    {
        let store = Store::open_with(tmp.path(), never()).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !store.background_sweep_done() {
            assert!(std::time::Instant::now() < deadline, "sweep never finished");
            std::thread::yield_now();
        }
        assert_keys(&store, |i| i != 19);
    }
    let report = Store::verify(tmp.path()).unwrap();
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.stray_files, 0, "{report}");
    assert_eq!(report.spare_files, 1, "{report}");
    assert!(!value_file(tmp.path(), "k19").exists());
}

#[test]
fn garbled_map_log_tail_drops_only_the_last_key() {
    let tmp = populated();
    let log = map_log(tmp.path());
    let mut bytes = fs::read(&log).unwrap();
    let n = bytes.len();
    bytes[n - 2] ^= 0xff;
    fs::write(&log, &bytes).unwrap();
    let store = Store::open_with(tmp.path(), never()).unwrap();
    assert_keys(&store, |i| i != 19);
}

#[test]
fn garbled_map_log_middle_rebuilds_the_map_from_the_files() {
    let tmp = populated();
    let log = map_log(tmp.path());
    let mut bytes = fs::read(&log).unwrap();
    bytes[20] ^= 0xff;
    fs::write(&log, &bytes).unwrap();
    let store = Store::open_with(tmp.path(), never()).unwrap();
    assert_keys(&store, |_| true);
    assert_eq!(store.len(), 20);
    drop(store);
    assert!(Store::verify(tmp.path()).unwrap().is_ok());
}

#[test]
fn deleted_map_is_rebuilt_from_the_files() {
    let tmp = populated();
    {
        let store = Store::open_with(tmp.path(), never()).unwrap();
        assert!(store.delete("k3").unwrap());
        store.set("k4", "v4").unwrap();
    }
    fs::remove_file(map_log(tmp.path())).unwrap();
    let store = Store::open_with(tmp.path(), never()).unwrap();
    assert_keys(&store, |i| i != 3);
    assert!(map_log(tmp.path()).exists());
    drop(store);
    let report = Store::verify(tmp.path()).unwrap();
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.keys_ok, 19);
}

#[test]
fn garbled_value_file_drops_that_key_only() {
    let tmp = populated();
    let file = value_file(tmp.path(), "k5");
    let mut bytes = fs::read(&file).unwrap();
    let n = bytes.len();
    bytes[n - 1] ^= 0x01;
    fs::write(&file, &bytes).unwrap();

    let report = Store::verify(tmp.path()).unwrap();
    assert!(!report.is_ok());
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.contains(&*file.to_string_lossy())),
        "{report}"
    );
    assert!(report.to_string().contains("problems: "), "{report}");

    let store = Store::open_with(
        tmp.path(),
        Options::new().durability(Durability::Never).cache_bytes(0),
    )
    .unwrap();
    assert_keys(&store, |i| i != 5);
    assert_eq!(store.len(), 19, "the damaged key is dropped from the map");
    store.set("k5", "v5").unwrap();
    assert_keys(&store, |_| true);
}

#[test]
fn truncated_value_file_drops_that_key_only() {
    let tmp = populated();
    let file = value_file(tmp.path(), "k7");
    fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(10)
        .unwrap();
    let store = Store::open_with(tmp.path(), never()).unwrap();
    assert_keys(&store, |i| i != 7);
}

#[test]
fn repair_drops_damaged_files_and_rebuilds_the_map() {
    let tmp = populated();
    let file = value_file(tmp.path(), "k9");
    fs::write(&file, b"garbage").unwrap();
    fs::write(map_log(tmp.path()), b"also garbage").unwrap();
    let report = Store::repair(tmp.path()).unwrap();
    assert_eq!(report.files_scanned, 20);
    assert_eq!(report.keys_recovered, 19);
    assert_eq!(report.files_dropped, 1);
    assert!(
        report.to_string().contains("keys recovered: 19"),
        "{report}"
    );
    let verify = Store::verify(tmp.path()).unwrap();
    assert!(verify.is_ok(), "{verify}");
    let store = Store::open_with(tmp.path(), never()).unwrap();
    assert_keys(&store, |i| i != 9);
}

#[test]
fn symlinked_value_file_is_not_followed() {
    let tmp = populated();
    let outside = tempfile::tempdir().unwrap();
    let secret = outside.path().join("secret");
    fs::write(&secret, b"do not read or overwrite").unwrap();
    let file = value_file(tmp.path(), "k2");
    fs::remove_file(&file).unwrap();
    std::os::unix::fs::symlink(&secret, &file).unwrap();
    let store = Store::open_with(tmp.path(), never().cache_bytes(0)).unwrap();
    assert!(store.get("k2").is_err() || store.get("k2").unwrap().is_none());
    let _ = store.set("k2", "new");
    let _ = store.delete("k2");
    assert_eq!(fs::read(&secret).unwrap(), b"do not read or overwrite");
}

#[test]
fn files_and_directories_are_owner_only() {
    let tmp = populated();
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&gen_dir(tmp.path())), 0o700);
    assert_eq!(mode(value_file(tmp.path(), "k1").parent().unwrap()), 0o700);
    assert_eq!(mode(&value_file(tmp.path(), "k1")), 0o600);
    assert_eq!(mode(&map_log(tmp.path())), 0o600);
    assert_eq!(mode(&tmp.path().join("LOCK")), 0o600);
    assert_eq!(mode(&tmp.path().join("CURRENT")), 0o600);
}

#[test]
fn temporary_leftovers_are_removed_on_open() {
    let tmp = populated();
    let leftovers = [
        tmp.path().join("CURRENT.~tmp"),
        gen_dir(tmp.path()).join("map.log.~tmp"),
    ];
    for l in &leftovers {
        fs::write(l, b"half-written").unwrap();
    }
    let store = Store::open_with(tmp.path(), never()).unwrap();
    for l in &leftovers {
        assert!(!l.exists(), "{} survived open", l.display());
    }
    assert_keys(&store, |_| true);
}

#[test]
fn damaged_epoch_fails_open_and_repair_fixes_it_keeping_cas_unique() {
    let tmp = populated();
    let old_cas = {
        let store = Store::open_with(tmp.path(), never()).unwrap();
        store.get_item("k1").unwrap().unwrap().cas
    };
    fs::write(tmp.path().join("EPOCH"), b"not a number").unwrap();
    assert!(matches!(
        Store::open_with(tmp.path(), never()),
        Err(kvstore_core::Error::Corrupt { .. })
    ));
    let report = Store::repair(tmp.path()).unwrap();
    assert!(
        report.problems.iter().any(|p| p.contains("EPOCH")),
        "{report}"
    );
    let store = Store::open_with(tmp.path(), never()).unwrap();
    let cas = store.set_with("k1", "new", Default::default()).unwrap();
    assert!(cas > old_cas, "cas {cas} not past {old_cas}");
}

#[test]
fn symlinked_subdirectory_is_not_followed() {
    let tmp = populated();
    let outside = tempfile::tempdir().unwrap();
    // Replace the subdirectory of k1 by a symlink to a directory outside.
    let sub = value_file(tmp.path(), "k1").parent().unwrap().to_path_buf();
    fs::rename(&sub, outside.path().join("moved")).unwrap();
    std::os::unix::fs::symlink(outside.path(), &sub).unwrap();
    let store = Store::open_with(tmp.path(), never()).unwrap();
    assert_eq!(
        store.get("k1").unwrap(),
        None,
        "the value moved out is gone"
    );
    store.set("k1", "again").unwrap();
    assert_eq!(store.get("k1").unwrap(), Some(b"again".to_vec()));
    drop(store);
    assert!(
        fs::symlink_metadata(&sub).unwrap().is_dir(),
        "the link was replaced by a directory"
    );
    let outside_names: Vec<_> = fs::read_dir(outside.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        outside_names,
        vec![std::ffi::OsString::from("moved")],
        "nothing was written outside"
    );
}

fn periodic() -> Options {
    // Long enough that the flusher never runs during a test: spares freed
    // by a swap stay held, with their records, as a power cut finds them.
    Options::new()
        .durability(Durability::Periodic(std::time::Duration::from_secs(3600)))
        .cache_bytes(0)
}

/// The spare files of `key`'s subdirectory holding a record (`magic`
/// `KVSR`) or a tombstone (`KVSD`) of `key`.
fn spares_starting_with(dir: &Path, key: &str, magic: &[u8]) -> Vec<PathBuf> {
    let sub = value_file(dir, key).parent().unwrap().to_path_buf();
    let mut out: Vec<PathBuf> = fs::read_dir(&sub)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("~spare.")
        })
        .filter(|p| {
            let b = fs::read(p).unwrap();
            // Header: magic, version, reserved, key length (u16 LE) ...;
            // the key at offset 36.
            b.len() >= 36
                && b.starts_with(magic)
                && usize::from(u16::from_le_bytes([b[6], b[7]])) == key.len()
                && b[36..].starts_with(key.as_bytes())
        })
        .collect();
    out.sort();
    out
}

/// What a `Periodic` power cut leaves when a swap reached the disk before
/// the data written into the spare: the key's name shows the neutralized
/// old content of a recycled spare (first bytes zeroed).
fn neutralize(file: &Path) {
    let mut bytes = fs::read(file).unwrap();
    bytes[..4].copy_from_slice(&[0; 4]);
    fs::write(file, &bytes).unwrap();
}

/// k0..k19 flushed as old{i}, then overwritten with v{i}; k5's new data
/// never reached the disk (its file neutralized) and its old record sits
/// in a spare: what a `Periodic` power cut can leave. (The store keeps the
/// old file held as a spare until a flush, but writers short of spares can
/// ask the flusher for one at any moment: the spare is planted, so that
/// tests do not depend on that timing.)
fn periodic_cut_with_k5_in_a_spare() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    {
        let store = Store::open_with(tmp.path(), periodic()).unwrap();
        for i in 0..20 {
            store.set(format!("k{i}"), format!("old{i}")).unwrap();
        }
    }
    let old5 = fs::read(value_file(tmp.path(), "k5")).unwrap();
    {
        let store = Store::open_with(tmp.path(), periodic()).unwrap();
        for i in 0..20 {
            store.set(format!("k{i}"), format!("v{i}")).unwrap();
        }
    }
    let sub = value_file(tmp.path(), "k5").parent().unwrap().to_path_buf();
    for p in spares_starting_with(tmp.path(), "k5", b"KVS") {
        fs::remove_file(p).unwrap();
    }
    fs::write(sub.join("~spare.999"), &old5).unwrap();
    neutralize(&value_file(tmp.path(), "k5"));
    tmp
}

#[test]
fn periodic_key_with_a_bad_file_is_recoverable_from_a_spare_and_repair_restores_it() {
    let tmp = periodic_cut_with_k5_in_a_spare();
    assert_eq!(spares_starting_with(tmp.path(), "k5", b"KVSR").len(), 1);

    let report = Store::verify(tmp.path()).unwrap();
    assert_eq!(report.recoverable_keys, 1, "{report}");
    assert_eq!(report.keys_ok, 19, "{report}");
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.contains("\"k5\"") && p.contains("recoverable")),
        "{report}"
    );
    assert!(report
        .to_string()
        .contains("keys recoverable from spares: 1"));
    // Without the Periodic recovery path (another durability), the key is
    // just damaged.
    let report = Store::verify_with(tmp.path(), never()).unwrap();
    assert_eq!(report.recoverable_keys, 0, "{report}");
    assert!(!report.is_ok());

    let report = Store::repair(tmp.path()).unwrap();
    assert_eq!(report.keys_restored, 1, "{report}");
    assert_eq!(report.keys_recovered, 20, "{report}");
    assert!(
        report.to_string().contains("keys restored from spares: 1"),
        "{report}"
    );
    let verify = Store::verify(tmp.path()).unwrap();
    assert!(verify.is_ok(), "{verify}");
    assert_eq!(verify.keys_ok, 20, "{verify}");
    // Opened in a mode that does not recover: the restored record is there.
    let store = Store::open_with(tmp.path(), never().cache_bytes(0)).unwrap();
    assert_eq!(store.get("k5").unwrap(), Some(b"old5".to_vec()));
    for i in (0..20).filter(|&i| i != 5) {
        assert_eq!(
            store.get(format!("k{i}")).unwrap(),
            Some(format!("v{i}").into_bytes())
        );
    }
}

#[test]
fn periodic_key_removed_after_its_spare_record_is_not_recoverable() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let store = Store::open_with(tmp.path(), periodic()).unwrap();
        store.set("k5", "old5").unwrap();
        store.flush().unwrap();
        store.set("k5", "v5").unwrap();
    }
    // A tombstone of k5 with a higher cas than both records: made by a
    // removal in another store of later sessions (higher boot epochs), its
    // file planted as a spare here.
    let other = tempfile::tempdir().unwrap();
    for _ in 0..3 {
        drop(Store::open_with(other.path(), periodic()).unwrap());
    }
    {
        let store = Store::open_with(other.path(), periodic()).unwrap();
        store.set("k5", "gone").unwrap();
        assert!(store.delete("k5").unwrap());
    }
    let tombs = spares_starting_with(other.path(), "k5", b"KVSD");
    assert!(!tombs.is_empty(), "the removal left a tombstone");
    let sub = value_file(tmp.path(), "k5").parent().unwrap().to_path_buf();
    fs::copy(&tombs[0], sub.join("~spare.999")).unwrap();
    assert_eq!(spares_starting_with(tmp.path(), "k5", b"KVSR").len(), 1);
    neutralize(&value_file(tmp.path(), "k5"));

    let report = Store::verify(tmp.path()).unwrap();
    assert_eq!(report.recoverable_keys, 0, "{report}");
    // Open drops k5 (the tombstone is its newest state) and loses nothing:
    // a dangling entry, not a problem.
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.dangling_entries, 1, "{report}");
    let report = Store::repair(tmp.path()).unwrap();
    assert_eq!(report.keys_restored, 0, "{report}");
    assert_eq!(report.keys_recovered, 0, "{report}");
    let store = Store::open_with(tmp.path(), periodic()).unwrap();
    assert_eq!(store.get("k5").unwrap(), None);
}

/// The disk a `Periodic` power cut can leave after a removal and a new set
/// of `k5` in one flush window (bug 5 in docs/RELIABILITY.md), built by
/// hand: the key's mapped file shows a neutralized spare (the new data did
/// not land), the file the removal should have moved away still sits under
/// another collision index of the hash with `left_behind` (the flushed
/// record, or the removal's tombstone), and (if `old_spare`) a spare still
/// holds an older record ("old", its neutralization not durable). Returns
/// the store dir.
fn removal_cut_state(left_behind: &[u8], old_spare: bool) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let session = |f: &dyn Fn(&Store)| {
        let store = Store::open_with(tmp.path(), periodic()).unwrap();
        f(&store);
    };
    session(&|s| s.set("k5", "old").unwrap());
    let old = fs::read(value_file(tmp.path(), "k5")).unwrap();
    session(&|s| s.set("k5", "new").unwrap());
    let sub = value_file(tmp.path(), "k5").parent().unwrap().to_path_buf();
    for p in spares_starting_with(tmp.path(), "k5", b"KVS") {
        fs::remove_file(p).unwrap();
    }
    if old_spare {
        fs::write(sub.join("~spare.999"), &old).unwrap();
    }
    let stray = format!("{}.1", value_file(tmp.path(), "k5").display());
    fs::write(stray, left_behind).unwrap();
    neutralize(&value_file(tmp.path(), "k5"));
    tmp
}

/// A record of `k5` with `value` and a cas past every earlier session's,
/// and a tombstone of `k5` with a cas past that (from another store dir,
/// sessions 1 to 4 and 5).
fn later_record_and_tombstone(value: &str) -> (Vec<u8>, Vec<u8>) {
    let other = tempfile::tempdir().unwrap();
    for _ in 0..3 {
        drop(Store::open_with(other.path(), periodic()).unwrap());
    }
    {
        let store = Store::open_with(other.path(), periodic()).unwrap();
        store.set("k5", value).unwrap();
    }
    let record = fs::read(value_file(other.path(), "k5")).unwrap();
    {
        let store = Store::open_with(other.path(), periodic()).unwrap();
        assert!(store.delete("k5").unwrap());
    }
    let tombs = spares_starting_with(other.path(), "k5", b"KVSD");
    assert!(!tombs.is_empty(), "the removal left a tombstone");
    (record, fs::read(&tombs[0]).unwrap())
}

fn get_after_sweep(dir: &Path) -> Option<Vec<u8>> {
    let store = Store::open_with(dir, periodic()).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !store.background_sweep_done() {
        assert!(std::time::Instant::now() < deadline, "sweep never finished");
        std::thread::yield_now();
    }
    store.get("k5").unwrap()
}

#[test]
fn periodic_recovery_finds_the_flushed_record_left_under_another_index() {
    let (flushed, _) = later_record_and_tombstone("flushed");
    // Read at once: the read recovers the key.
    let tmp = removal_cut_state(&flushed, true);
    let store = Store::open_with(tmp.path(), periodic()).unwrap();
    assert_eq!(store.get("k5").unwrap(), Some(b"flushed".to_vec()));
    drop(store);
    // Read after the sweep, which must not neutralize the stray before
    // the key is recovered (without the old spare, whose sweep would
    // recover the key first).
    for old_spare in [true, false] {
        let tmp = removal_cut_state(&flushed, old_spare);
        assert_eq!(get_after_sweep(tmp.path()), Some(b"flushed".to_vec()));
    }
    // Verify and repair see the same.
    let tmp = removal_cut_state(&flushed, true);
    let report = Store::verify(tmp.path()).unwrap();
    assert_eq!(report.recoverable_keys, 1, "{report}");
    assert!(report.problems.iter().any(|p| p.contains(".1")), "{report}");
    let report = Store::repair(tmp.path()).unwrap();
    assert_eq!(report.keys_restored, 1, "{report}");
    let store = Store::open_with(tmp.path(), never()).unwrap();
    assert_eq!(store.get("k5").unwrap(), Some(b"flushed".to_vec()));
}

#[test]
fn periodic_recovery_honours_a_tombstone_left_under_another_index() {
    let (_, tomb) = later_record_and_tombstone("gone");
    let tmp = removal_cut_state(&tomb, true);
    let store = Store::open_with(tmp.path(), periodic()).unwrap();
    assert_eq!(store.get("k5").unwrap(), None);
    drop(store);
    let tmp = removal_cut_state(&tomb, true);
    assert_eq!(get_after_sweep(tmp.path()), None);
    let tmp = removal_cut_state(&tomb, true);
    assert_eq!(Store::verify(tmp.path()).unwrap().recoverable_keys, 0);
    assert_eq!(Store::repair(tmp.path()).unwrap().keys_restored, 0);
    let store = Store::open_with(tmp.path(), never()).unwrap();
    assert_eq!(store.get("k5").unwrap(), None);
}

// Leftovers of a `Periodic` power cut under a value name: a tombstone or a
// neutralized file, with or without a map entry pointing to it.

/// CRC-32 (IEEE), as the record format uses, over `parts` in order.
fn crc32(parts: &[&[u8]]) -> u32 {
    let mut crc = !0u32;
    for &b in parts.iter().flat_map(|p| p.iter()) {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A record (`magic` `KVSR`) or tombstone (`KVSD`, empty value) of `key`
/// with `cas`, encoded by hand (format in kvstore-core/src/record.rs).
fn encode(magic: &[u8; 4], key: &str, value: &str, cas: u64) -> Vec<u8> {
    let mut b = magic.to_vec();
    b.extend_from_slice(&[1, 0]);
    b.extend_from_slice(&(key.len() as u16).to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&(value.len() as u32).to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes());
    b.extend_from_slice(&cas.to_le_bytes());
    let crc = crc32(&[&b[..32], key.as_bytes(), value.as_bytes()]);
    b.extend_from_slice(&crc.to_le_bytes());
    b.extend_from_slice(key.as_bytes());
    b.extend_from_slice(value.as_bytes());
    b
}

fn tombstone(key: &str, cas: u64) -> Vec<u8> {
    encode(b"KVSD", key, "", cas)
}

/// The cas of the record in the value file of `key`.
fn file_cas(dir: &Path, key: &str) -> u64 {
    let b = fs::read(value_file(dir, key)).unwrap();
    u64::from_le_bytes(b[24..32].try_into().unwrap())
}

/// A closed `Periodic` store with keys k0..k19 = v0..v19, each written
/// once (new keys: no spare holds a record of them).
fn populated_periodic() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open_with(tmp.path(), periodic()).unwrap();
    for i in 0..20 {
        store.set(format!("k{i}"), format!("v{i}")).unwrap();
    }
    drop(store);
    assert!(spares_starting_with(tmp.path(), "k5", b"KVS").is_empty());
    tmp
}

/// Opens the store in the mode of `options`, reads every key (k5 must read
/// as absent, the others as before), lets the sweep finish, closes it.
fn open_and_read(dir: &Path, options: Options) {
    let store = Store::open_with(dir, options).unwrap();
    assert_keys(&store, |i| i != 5);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !store.background_sweep_done() {
        assert!(std::time::Instant::now() < deadline, "sweep never finished");
        std::thread::yield_now();
    }
    assert_keys(&store, |i| i != 5);
}

/// Verify with `Periodic` (the default) and with `Never` options: no
/// problem, and the counts given.
fn assert_verify_ok(dir: &Path, keys_ok: u64, stray: u64, dangling: u64) {
    for options in [Options::new(), never()] {
        let report = Store::verify_with(dir, options).unwrap();
        assert!(report.is_ok(), "{report}");
        assert!(report.to_string().ends_with("status: ok"), "{report}");
        assert_eq!(report.keys_ok, keys_ok, "{report}");
        assert_eq!(report.stray_files, stray, "{report}");
        assert_eq!(report.dangling_entries, dangling, "{report}");
        assert_eq!(report.recoverable_keys, 0, "{report}");
    }
}

#[test]
fn periodic_tombstone_left_under_a_removed_keys_name_is_a_stray() {
    // A removal logged its map record and wrote its tombstone over k5's
    // file, but the move of that file to the spares did not land.
    for options in [periodic(), never()] {
        let tmp = populated_periodic();
        let cas = file_cas(tmp.path(), "k5");
        {
            let store = Store::open_with(tmp.path(), periodic()).unwrap();
            assert!(store.delete("k5").unwrap());
        }
        let file = value_file(tmp.path(), "k5");
        assert!(!file.exists());
        fs::write(&file, tombstone("k5", cas + 1)).unwrap();
        assert_verify_ok(tmp.path(), 19, 1, 0);
        open_and_read(tmp.path(), options);
        assert!(!file.exists(), "the sweep recycles the tombstone");
        assert_verify_ok(tmp.path(), 19, 0, 0);
    }
}

#[test]
fn periodic_neutralized_file_left_under_a_free_name_is_a_stray() {
    // A stray (or a removed key's file) was neutralized to be recycled,
    // but its move to the spares did not land.
    for options in [periodic(), never()] {
        let tmp = populated_periodic();
        let file = value_file(tmp.path(), "k5");
        let old = fs::read(&file).unwrap();
        {
            let store = Store::open_with(tmp.path(), never()).unwrap();
            assert!(store.delete("k5").unwrap());
        }
        assert!(!file.exists());
        fs::write(&file, &old).unwrap();
        neutralize(&file);
        assert_verify_ok(tmp.path(), 19, 1, 0);
        open_and_read(tmp.path(), options);
        assert!(!file.exists(), "the sweep recycles the neutralized file");
        assert_verify_ok(tmp.path(), 19, 0, 0);
    }
}

#[test]
fn periodic_tombstone_under_a_mapped_name_is_a_dangling_entry() {
    // A removal wrote its tombstone over k5's file, but neither its map
    // record nor the move of the file landed: the map still points there.
    for options in [periodic(), never()] {
        let tmp = populated_periodic();
        let file = value_file(tmp.path(), "k5");
        fs::write(&file, tombstone("k5", file_cas(tmp.path(), "k5") + 1)).unwrap();
        assert_verify_ok(tmp.path(), 19, 0, 1);
        open_and_read(tmp.path(), options);
        assert_verify_ok(tmp.path(), 19, 0, 0);
    }
}

#[test]
fn periodic_neutralized_file_under_a_mapped_name_is_a_dangling_entry() {
    // A new key's file is in place and mapped, but its data did not land:
    // the name shows the neutralized spare it was written into. No other
    // record of k5 exists: opening drops it and loses nothing.
    for options in [periodic(), never()] {
        let tmp = populated_periodic();
        let file = value_file(tmp.path(), "k5");
        neutralize(&file);
        assert_verify_ok(tmp.path(), 19, 0, 1);
        open_and_read(tmp.path(), options);
        assert!(!file.exists(), "the read drops the neutralized file");
        assert_verify_ok(tmp.path(), 19, 0, 0);
    }
}

#[test]
fn periodic_leftovers_that_hide_a_record_or_cannot_come_from_a_store_stay_problems() {
    let tmp = populated_periodic();
    let file = value_file(tmp.path(), "k5");
    let cas = file_cas(tmp.path(), "k5");
    let sub = file.parent().unwrap().to_path_buf();
    fs::write(&file, tombstone("k5", cas + 1)).unwrap();
    assert_verify_ok(tmp.path(), 19, 0, 1);

    // A record of k5 newer than the tombstone in its file: opening drops
    // k5 all the same (the tombstone in its own file decides), so verify
    // must not call that harmless, in any mode.
    let newer = sub.join("~spare.999");
    fs::write(&newer, encode(b"KVSR", "k5", "newer", cas + 2)).unwrap();
    for options in [Options::new(), never()] {
        let report = Store::verify_with(tmp.path(), options).unwrap();
        assert!(!report.is_ok(), "{report}");
        assert_eq!(report.dangling_entries, 0, "{report}");
        assert!(
            report.problems.iter().any(|p| p.contains("\"k5\"")
                && p.contains("its tombstone")
                && p.contains("~spare.999")),
            "{report}"
        );
    }
    // An older one (the removal came after it) hides nothing.
    fs::write(&newer, encode(b"KVSR", "k5", "older", cas)).unwrap();
    assert_verify_ok(tmp.path(), 19, 0, 1);
    fs::remove_file(&newer).unwrap();

    // A neutralized file under k5's name with its older record in a spare:
    // only opening in `Periodic` mode restores it. Verify with `Periodic`
    // options counts it recoverable, with other options as hidden; both
    // are problems.
    fs::write(&file, encode(b"KVSR", "k5", "new", cas + 2)).unwrap();
    neutralize(&file);
    fs::write(&newer, encode(b"KVSR", "k5", "old", cas + 1)).unwrap();
    let report = Store::verify(tmp.path()).unwrap();
    assert!(!report.is_ok(), "{report}");
    assert_eq!(report.recoverable_keys, 1, "{report}");
    let report = Store::verify_with(tmp.path(), never()).unwrap();
    assert!(!report.is_ok(), "{report}");
    assert_eq!(report.recoverable_keys, 0, "{report}");
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.contains("\"k5\"") && p.contains("a neutralized file")),
        "{report}"
    );
    fs::remove_file(&newer).unwrap();
    assert_verify_ok(tmp.path(), 19, 0, 1);

    // Unmapped: garbage that is neither a tombstone nor neutralized, and a
    // tombstone of a key that does not hash to the file's name.
    let stray = format!("{}.1", file.display());
    fs::write(&stray, b"\x01\x02\x03\x04 not a record").unwrap();
    let report = Store::verify(tmp.path()).unwrap();
    assert!(
        report.problems.iter().any(|p| p.contains(&stray)),
        "{report}"
    );
    fs::write(&stray, tombstone("k6", cas + 3)).unwrap();
    let report = Store::verify(tmp.path()).unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.contains(&stray) && p.contains("does not hash")),
        "{report}"
    );
    fs::write(&stray, tombstone("k5", cas + 3)).unwrap();
    assert_verify_ok(tmp.path(), 19, 1, 1);
}

/// `Always` creates a new key's file under its final name; a leftover
/// already there (no map entry points to it) is swapped out, not
/// overwritten in place and not taken for the key.
#[test]
fn always_new_key_swaps_out_a_leftover_under_its_name() {
    let tmp = tempfile::tempdir().unwrap();
    let always = || Options::new().durability(Durability::Always).cache_bytes(0);
    {
        let store = Store::open_with(tmp.path(), always()).unwrap();
        store.set("k0", "v0").unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !store.background_sweep_done() {
            assert!(std::time::Instant::now() < deadline, "sweep never finished");
            std::thread::yield_now();
        }
        // Planted after the sweep, so that the write meets it.
        let path = value_file(tmp.path(), "x");
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, b"half a file a crash left").unwrap();
        store.set("x", "new").unwrap();
        assert_eq!(store.get("x").unwrap(), Some(b"new".to_vec()));
        assert_eq!(
            fs::read(&path).unwrap()[..4],
            *b"KVSR",
            "x's record is in place"
        );
    }
    let report = Store::verify(tmp.path()).unwrap();
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.keys_ok, 2, "{report}");
    let store = Store::open_with(tmp.path(), always()).unwrap();
    assert_eq!(store.get("x").unwrap(), Some(b"new".to_vec()));
    assert_eq!(store.get("k0").unwrap(), Some(b"v0".to_vec()));
}

#[test]
fn a_periodic_session_marks_the_store_until_it_closes() {
    let tmp = tempfile::tempdir().unwrap();
    let mark = tmp.path().join("PERIODIC");
    {
        let _store = Store::open_with(tmp.path(), periodic()).unwrap();
        assert!(mark.exists(), "marked while open");
    }
    assert!(!mark.exists(), "a clean close removes the mark");
    for options in [never(), Options::new().durability(Durability::Always)] {
        let _store = Store::open_with(tmp.path(), options).unwrap();
        assert!(!mark.exists(), "other modes do not mark");
    }
}

/// Reopened in another mode after a `Periodic` session that did not close,
/// the store still recovers as `Periodic` would; once that session is
/// closed, or without one, it does not.
#[test]
fn any_mode_recovers_after_a_periodic_session_that_did_not_close() {
    let always = || Options::new().durability(Durability::Always).cache_bytes(0);
    for (name, options) in [("never", never().cache_bytes(0)), ("always", always())] {
        let tmp = periodic_cut_with_k5_in_a_spare();
        let mark = tmp.path().join("PERIODIC");
        // The cut session's mark (its clean close removed it here).
        fs::write(&mark, b"").unwrap();

        let report = Store::verify_with(tmp.path(), options.clone()).unwrap();
        assert_eq!(report.recoverable_keys, 1, "{name}: {report}");
        let store = Store::open_with(tmp.path(), options.clone()).unwrap();
        assert_eq!(
            store.get("k5").unwrap(),
            Some(b"old5".to_vec()),
            "{name}: recovered"
        );
        for i in (0..20).filter(|&i| i != 5) {
            assert_eq!(
                store.get(format!("k{i}")).unwrap(),
                Some(format!("v{i}").into_bytes()),
                "{name}"
            );
        }
        assert!(!mark.exists(), "{name}: the recovery session closed");
        drop(store);
        let report = Store::verify_with(tmp.path(), options.clone()).unwrap();
        assert!(report.is_ok(), "{name}: {report}");

        // The same disk without the mark: dropped, as before.
        let tmp = periodic_cut_with_k5_in_a_spare();
        let report = Store::verify_with(tmp.path(), options.clone()).unwrap();
        assert_eq!(report.recoverable_keys, 0, "{name}: {report}");
        let store = Store::open_with(tmp.path(), options).unwrap();
        assert_eq!(
            store.get("k5").unwrap(),
            None,
            "{name}: no mark, no recovery"
        );
    }
}
