//! Security posture of the on-disk store: owner-only modes, keys that can
//! never name a path outside the data directory, and symlinks planted in
//! the data directory that must not lead the store out of it.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kvstore_core::{Durability, Error, Expiry, ItemMeta, Options, Store};

/// Every path under `root` (not following symlinks), relative.
fn walk(root: &Path) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            out.insert(p.strip_prefix(root).unwrap().to_path_buf());
            if e.file_type().unwrap().is_dir() {
                stack.push(p);
            }
        }
    }
    out
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

#[test]
fn data_directory_and_files_are_owner_only_even_with_umask_zero() {
    // SAFETY: umask only changes this process's file-creation mask; this
    // test binary's other tests do not depend on it.
    let old = unsafe { libc::umask(0) };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    for durability in [Durability::Never, Durability::Always] {
        let store = Store::open_with(&dir, Options::new().durability(durability)).unwrap();
        for i in 0..50 {
            store.set(format!("k{i}"), vec![b'v'; i * 100]).unwrap();
        }
        store
            .set_with(
                "expiring",
                "x",
                ItemMeta {
                    flags: 0,
                    expiry: Expiry::after(Duration::from_secs(100)),
                },
            )
            .unwrap();
        store.delete("k3").unwrap();
        store.clear().unwrap();
        store.set("after-clear", "y").unwrap();
        store.clear_after(Duration::from_secs(1000)).unwrap();
        drop(store);
    }
    unsafe { libc::umask(old) };
    assert_eq!(mode(&dir), 0o700, "data directory");
    let paths = walk(&dir);
    assert!(paths.len() > 5, "{paths:?}");
    for rel in paths {
        let p = dir.join(&rel);
        let meta = std::fs::symlink_metadata(&p).unwrap();
        let want = if meta.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode(&p), want, "{} has mode {:o}", rel.display(), mode(&p));
    }
}

#[test]
fn keys_never_name_paths_outside_the_data_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let store = Store::open(&dir).unwrap();
    let outside_before = walk(tmp.path())
        .into_iter()
        .filter(|p| !p.starts_with("data"))
        .collect::<Vec<_>>();
    let hostile: Vec<Vec<u8>> = vec![
        b"../escape".to_vec(),
        b"../../../../../../tmp/escape".to_vec(),
        b"/tmp/escape".to_vec(),
        b"/etc/passwd".to_vec(),
        b"..".to_vec(),
        b".".to_vec(),
        b"a/b/c".to_vec(),
        b"LOCK".to_vec(),
        b"CURRENT".to_vec(),
        b"map.log".to_vec(),
        b"gen-0".to_vec(),
        b"x\0y".to_vec(),
        b"\0".to_vec(),
        b"\0../escape".to_vec(),
        format!("{}/x", tmp.path().display()).into_bytes(),
    ];
    let mut stored = 0;
    for key in &hostile {
        match store.set(key, b"hostile") {
            Ok(()) => {
                stored += 1;
                assert_eq!(store.get(key).unwrap().as_deref(), Some(&b"hostile"[..]));
            }
            Err(Error::InvalidKey { .. }) | Err(Error::KeyTooLong { .. }) => {}
            Err(e) => panic!(
                "set {:?}: unexpected error {e}",
                String::from_utf8_lossy(key)
            ),
        }
    }
    assert!(stored > 5, "most path-like keys are ordinary keys");
    // The store's own files are untouched by keys that look like them.
    drop(store);
    let store = Store::open(&dir).unwrap();
    for key in &hostile {
        if let Ok(Some(v)) = store.get(key) {
            assert_eq!(v, b"hostile");
        }
    }
    let outside_after = walk(tmp.path())
        .into_iter()
        .filter(|p| !p.starts_with("data"))
        .collect::<Vec<_>>();
    assert_eq!(
        outside_before, outside_after,
        "files appeared outside the data directory"
    );
    assert!(!Path::new("/tmp/escape").exists());
    // Every value file is named by a hash: hex digits (and a collision
    // index), never a key.
    for rel in walk(&dir) {
        let name = rel.file_name().unwrap().to_string_lossy().into_owned();
        for key in &hostile {
            let k = String::from_utf8_lossy(key);
            if !matches!(&*k, "LOCK" | "CURRENT" | "map.log" | "gen-0") {
                assert!(
                    !name.contains(&*k) || k.len() < 3,
                    "{name} contains key {k}"
                );
            }
        }
    }
}

/// The relative path of the value file holding `key` in a store that has
/// only that key.
fn value_file_of(key: &str) -> PathBuf {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    store.set(key, "probe-value").unwrap();
    drop(store);
    walk(tmp.path())
        .into_iter()
        .find(|rel| {
            let p = tmp.path().join(rel);
            p.is_file()
                && std::fs::read(&p)
                    .unwrap()
                    .windows(11)
                    .any(|w| w == b"probe-value")
        })
        .expect("value file")
}

/// Plants `link` (relative to a fresh store directory) pointing at an
/// outside target, then sets and reads `key`. Nothing outside may change,
/// and a read never returns the outside content.
fn planted(link: &Path, target_is_dir: bool, key: &str) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let outside = tmp.path().join("outside");
    let victim = outside.join("victim");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(&victim, b"SECRET").unwrap();
    drop(Store::open(&dir).unwrap());
    let link_path = dir.join(link);
    if let Some(parent) = link_path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    if link_path.is_dir() {
        std::fs::remove_dir_all(&link_path).unwrap();
    } else if link_path.exists() {
        std::fs::remove_file(&link_path).unwrap();
    }
    let target = if target_is_dir { &outside } else { &victim };
    std::os::unix::fs::symlink(target, &link_path).unwrap();

    let outcome = match Store::open(&dir) {
        Err(e) => format!("open refused: {e}"),
        Ok(store) => {
            let set = store.set(key, "new value");
            let get = store.get(key);
            if let Ok(Some(v)) = &get {
                assert_ne!(v.as_slice(), b"SECRET", "read through a planted symlink");
            }
            store.clear().ok();
            drop(store);
            format!(
                "set {:?}, get {:?}",
                set.map_err(|e| e.to_string()),
                get.map_err(|e| e.to_string())
            )
        }
    };
    assert_eq!(
        std::fs::read(&victim).unwrap(),
        b"SECRET",
        "victim changed ({outcome})"
    );
    let names: Vec<_> = std::fs::read_dir(&outside)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        names,
        vec![std::ffi::OsString::from("victim")],
        "files written outside through {} ({outcome})",
        link.display()
    );
    assert!(link_path.symlink_metadata().is_err() || std::fs::read(&victim).unwrap() == b"SECRET");
    outcome
}

#[test]
fn symlinks_planted_in_the_data_directory_are_not_followed_out_of_it() {
    let key = "planted-key";
    let file = value_file_of(key);
    let subdir = file.parent().unwrap().to_path_buf();
    let gen = subdir.parent().unwrap().to_path_buf();
    let mut outcomes = Vec::new();
    // The key's value file is a symlink to an outside file.
    outcomes.push(("value file", planted(&file, false, key)));
    // The key's hash subdirectory is a symlink to an outside directory.
    outcomes.push(("hash subdirectory", planted(&subdir, true, key)));
    // The store's own files are symlinks.
    for name in ["LOCK", "CURRENT", "EPOCH"] {
        outcomes.push((name, planted(Path::new(name), false, key)));
    }
    outcomes.push(("map log", planted(&gen.join("map.log"), false, key)));
    // The live generation directory is a symlink to an outside directory.
    outcomes.push(("generation directory", planted(&gen, true, key)));
    outcomes.push((
        "hash subdirectory, planted while the store is open",
        planted_while_open(&subdir, key),
    ));
    for (what, outcome) in outcomes {
        println!("planted symlink as {what}: {outcome}");
    }
}

/// As [`planted`], but the symlink replaces the (not yet created) hash
/// subdirectory while the store is open.
fn planted_while_open(subdir: &Path, key: &str) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let outside = tmp.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let store = Store::open(&dir).unwrap();
    let link = dir.join(subdir);
    if link.is_dir() {
        std::fs::remove_dir_all(&link).unwrap();
    }
    std::os::unix::fs::symlink(&outside, &link).unwrap();
    let set = store.set(key, "new value");
    drop(store);
    let names: Vec<_> = std::fs::read_dir(&outside).unwrap().collect();
    assert!(names.is_empty(), "files written outside: {names:?}");
    format!("set {:?}", set.map_err(|e| e.to_string()))
}
