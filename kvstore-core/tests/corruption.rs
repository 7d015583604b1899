//! Damage on disk: torn or garbled map log, garbled value files, a deleted
//! map, planted symlinks; verify and
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

/// Behind the journal (`Always` here) a new key's file is created under
/// its final name; a leftover
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
        // Applied to the value files.
        store.flush().unwrap();
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
