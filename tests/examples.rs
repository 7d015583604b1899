//! Runs the real examples end to end: `driver --clients 100 --no-shell`
//! and `embedded`, each twice over one data directory; the second run finds
//! the data of the first.
//!
//! `cargo test` builds the examples of the package before it runs its
//! tests, so the example binary sits in `target/<profile>/examples/`
//! beside this test's `deps/` directory.

use std::path::PathBuf;
use std::process::{Command, Stdio};

fn example_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let bin = profile_dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "{} not built: run this test through `cargo test`, which builds the examples",
        bin.display()
    );
    bin
}

fn run_driver(dir: &std::path::Path) -> String {
    run_example("driver", &["--clients", "100", "--no-shell", "--dir"], dir)
}

fn run_example(name: &str, args: &[&str], dir: &std::path::Path) -> String {
    let out = Command::new(example_bin(name))
        .args(args)
        .arg(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "status {:?}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn driver_runs_100_clients_and_keeps_the_data() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("kvstore-data");
    let d = dir.display();

    let first = run_driver(&dir);
    let lines: Vec<&str> = first.lines().collect();
    assert_eq!(lines[0], format!("store {d}: 0 keys found"), "{first}");
    assert!(
        lines[1].starts_with("server listening on 127.0.0.1:"),
        "{first}"
    );
    assert!(lines.contains(&"clients=100 ok=100 failed=0"), "{first}");
    assert_eq!(
        lines.last(),
        Some(&format!("server stopped; 100 keys in {d}").as_str()),
        "{first}"
    );

    // The second run starts from the first one's 100 keys (its own random
    // keys may coincide with some of them, so its final count is not pinned).
    let second = run_driver(&dir);
    assert!(
        second.starts_with(&format!("store {d}: 100 keys found\n")),
        "{second}"
    );
    assert!(
        second.contains("\nclients=100 ok=100 failed=0\n"),
        "{second}"
    );
}

#[test]
fn embedded_example_keeps_its_counters_across_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("embedded-data");

    let first = run_example("embedded", &[], &dir);
    assert!(first.contains("\nhits = 4 "), "{first}");
    assert!(first.contains("\nthis is run number 1 "), "{first}");

    let second = run_example("embedded", &[], &dir);
    assert!(second.contains(": 3 keys\n"), "{second}");
    assert!(second.contains("\nhits = 8 "), "{second}");
    assert!(second.contains("\nthis is run number 2 "), "{second}");
}
