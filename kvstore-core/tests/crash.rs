//! Tests with a second process: crash (SIGKILL) during concurrent writes
//! (rounds in `Never`, `Periodic` and `Always` in turn) and during
//! `clear()`, and the directory lock across processes.
//!
//! The child is this test binary itself, re-invoked to run only
//! `child_entry` with `KVSTORE_TEST_CHILD=<role>:<dir>` in its environment;
//! it reports progress as `ACK ...` lines on stdout.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use kvstore_core::{Durability, Error, Options, Store};
use rand::{Rng, SeedableRng};

const CHILD_ENV: &str = "KVSTORE_TEST_CHILD";
const WRITERS: usize = 4;
const CLEAR_KEYS: usize = 30;

fn never() -> Options {
    Options::new().durability(Durability::Never)
}

/// The durability mode named `name` (the writer rounds cycle through all).
fn mode(name: &str) -> Options {
    let durability = match name {
        "never" => Durability::Never,
        // Long enough that the flusher's own passes are rare: writes are
        // mostly in the journal and the pending table when the kill comes.
        "periodic" => Durability::Periodic(Duration::from_millis(200)),
        "always" => Durability::Always,
        other => panic!("unknown mode {other}"),
    };
    Options::new().durability(durability)
}

const MODES: [&str; 3] = ["never", "periodic", "always"];

/// Operation `i` of writer `t` in round `r`: a set (value names key and
/// step, length varies up to past one page) or, every 7th, a delete.
fn op(r: u32, t: usize, i: u64) -> (String, Option<Vec<u8>>) {
    let key = format!("r{r}-t{t}-k{}", i % 23);
    if i % 7 == 6 {
        return (key, None);
    }
    let mut v = format!("{key}|{i}|").into_bytes();
    v.resize(v.len() + ((i * 737) % 6000) as usize, b'a' + (i % 26) as u8);
    (key, Some(v))
}

fn ack(line: &str) {
    let mut out = std::io::stdout().lock();
    // One write per line: a pipe write this small is atomic.
    let _ = out.write_all(format!("ACK {line}\n").as_bytes());
    let _ = out.flush();
}

/// Entry point of the child process; a no-op in a normal test run.
#[test]
fn child_entry() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (role, dir) = spec.split_once(':').expect("role:dir");
    let dir = Path::new(dir);
    match role.split_once('=').unwrap_or((role, "")) {
        ("writer", spec) => {
            let (round, mode_name) = spec.split_once('/').expect("round/mode");
            let round: u32 = round.parse().unwrap();
            let store = Store::open_with(dir, mode(mode_name)).unwrap();
            ack("READY");
            std::thread::scope(|s| {
                for t in 0..WRITERS {
                    let store = &store;
                    s.spawn(move || {
                        for i in 0.. {
                            let (key, value) = op(round, t, i);
                            match value {
                                Some(v) => store.set(&key, &v).unwrap(),
                                None => {
                                    store.delete(&key).unwrap();
                                }
                            }
                            ack(&format!("{t} {i}"));
                        }
                    });
                }
            });
        }
        ("clearer", _) => {
            let store = Store::open_with(dir, never()).unwrap();
            ack("READY");
            for r in 0u64.. {
                for k in 0..CLEAR_KEYS {
                    store.set(format!("c{k}"), r.to_string()).unwrap();
                }
                ack(&format!("FILLED {r}"));
                store.clear().unwrap();
                ack(&format!("CLEARED {r}"));
            }
        }
        ("open", _) => match Store::open_with(dir, never()) {
            Ok(_) => ack("OPENED"),
            Err(Error::Locked { pid, .. }) => ack(&format!("LOCKED {}", pid.unwrap_or(0))),
            Err(e) => ack(&format!("ERROR {e}")),
        },
        (other, _) => panic!("unknown child role {other}"),
    }
}

/// Starts the child; returns it and a channel of its `ACK` lines.
fn spawn_child(role: &str, dir: &Path) -> (Child, mpsc::Receiver<String>) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crash::child_entry",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, format!("{role}:{}", dir.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(pos) = line.find("ACK ") {
                if tx.send(line[pos + 4..].to_string()).is_err() {
                    break;
                }
            }
        }
    });
    (child, rx)
}

fn wait_for(rx: &mpsc::Receiver<String>, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line == want => return,
            Ok(_) => {}
            Err(e) => panic!("child never said {want}: {e}"),
        }
    }
}

/// Kills the child with SIGKILL after `after`, then drains its acks.
fn kill_after(mut child: Child, rx: &mpsc::Receiver<String>, after: Duration) -> Vec<String> {
    let mut acks = Vec::new();
    let deadline = Instant::now() + after;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) => acks.push(line),
            Err(mpsc::RecvTimeoutError::Timeout) => break,
            Err(mpsc::RecvTimeoutError::Disconnected) => panic!("child exited early"),
        }
    }
    // Child::kill sends SIGKILL to this pid only.
    child.kill().unwrap();
    child.wait().unwrap();
    // The reader thread ends at EOF: everything the child wrote is here.
    acks.extend(rx.iter());
    acks
}

fn seed() -> u64 {
    let seed = std::env::var("KVSTORE_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            now.as_nanos() as u64 ^ std::process::id() as u64
        });
    eprintln!("crash test seed {seed} (set KVSTORE_CRASH_SEED to replay)");
    seed
}

#[test]
fn sigkill_during_concurrent_writes_loses_no_acknowledged_write() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed());
    // Expected state of the keys of every finished round.
    let mut settled: HashMap<String, Option<Vec<u8>>> = HashMap::new();
    let rounds = 6;
    let mut total_acks = 0;
    for round in 0..rounds {
        let mode_name = MODES[round as usize % MODES.len()];
        let (child, rx) = spawn_child(&format!("writer={round}/{mode_name}"), &dir);
        wait_for(&rx, "READY");
        let acks = kill_after(child, &rx, Duration::from_millis(rng.gen_range(30..300)));
        let mut last: Vec<Option<u64>> = vec![None; WRITERS];
        for a in &acks {
            let (t, i) = a.split_once(' ').unwrap();
            let (t, i): (usize, u64) = (t.parse().unwrap(), i.parse().unwrap());
            assert_eq!(
                last[t].map_or(0, |l| l + 1),
                i,
                "acks of writer {t} out of order"
            );
            last[t] = Some(i);
        }
        let store = Store::open_with(&dir, never()).unwrap();
        for (t, last) in last.iter().enumerate() {
            // Replay the acknowledged operations of this writer.
            let mut expect: HashMap<String, Option<Vec<u8>>> = HashMap::new();
            let done = last.map_or(0, |l| l + 1);
            for i in 0..done {
                let (k, v) = op(round, t, i);
                expect.insert(k, v);
            }
            // The next operation may have happened without its ack.
            let (next_key, next_value) = op(round, t, done);
            for k in 0..23 {
                let key = format!("r{round}-t{t}-k{k}");
                let got = store.get(&key).unwrap();
                let acked = expect.get(&key).cloned().flatten();
                let ok = got == acked || (key == next_key && got == next_value);
                assert!(
                    ok,
                    "round {round} ({mode_name}) key {key}: got {:?}, acknowledged {:?} (writer {t} acked {done} ops)",
                    got.as_ref().map(|v| String::from_utf8_lossy(&v[..v.len().min(40)]).to_string()),
                    acked.as_ref().map(|v| String::from_utf8_lossy(&v[..v.len().min(40)]).to_string()),
                );
                settled.insert(key, got);
            }
        }
        total_acks += acks.len();
        for (key, want) in &settled {
            assert_eq!(
                &store.get(key).unwrap(),
                want,
                "key {key} of an earlier round changed"
            );
        }
        drop(store);
        let report = Store::verify(&dir).unwrap();
        assert!(report.is_ok(), "round {round}:\n{report}");
    }
    assert!(
        total_acks >= 20,
        "the child wrote too little to test anything: {total_acks} acks"
    );
}

#[test]
fn sigkill_during_clear_leaves_all_old_keys_or_none() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed());
    let mut mid_clear = 0;
    for round in 0..8 {
        let (child, rx) = spawn_child("clearer", &dir);
        wait_for(&rx, "READY");
        let acks = kill_after(child, &rx, Duration::from_millis(rng.gen_range(5..120)));
        let filled = acks
            .iter()
            .filter_map(|a| a.strip_prefix("FILLED "))
            .filter_map(|r| r.parse::<u64>().ok())
            .max();
        let cleared = acks
            .iter()
            .filter_map(|a| a.strip_prefix("CLEARED "))
            .filter_map(|r| r.parse::<u64>().ok())
            .max();
        let store = Store::open_with(&dir, never()).unwrap();
        let mut by_round: HashMap<u64, usize> = HashMap::new();
        for k in 0..CLEAR_KEYS {
            if let Some(v) = store.get(format!("c{k}")).unwrap() {
                let r: u64 = String::from_utf8(v).unwrap().parse().unwrap();
                *by_round.entry(r).or_default() += 1;
            }
        }
        if let Some(f) = filled {
            for (&r, &n) in &by_round {
                assert!(
                    r >= f,
                    "round {round}: keys of cleared fill {r} survive: {by_round:?}"
                );
                if r == f {
                    assert!(
                        cleared != Some(f),
                        "round {round}: acknowledged clear of fill {f} undone"
                    );
                    assert_eq!(
                        n, CLEAR_KEYS,
                        "round {round}: clear of fill {f} left part of it: {by_round:?}"
                    );
                    mid_clear += 1;
                }
                if r == f + 1 {
                    assert!(!by_round.contains_key(&f), "round {round}: {by_round:?}");
                }
            }
        }
        assert!(store.len() <= CLEAR_KEYS);
        // The next child starts its fills at 0 again: start from empty.
        store.clear().unwrap();
    }
    eprintln!("{mid_clear} of 8 kills left a whole fill whose clear was not acknowledged");
}

#[test]
fn second_open_from_another_process_is_locked_until_drop() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open_with(tmp.path(), never()).unwrap();
    let (mut child, rx) = spawn_child("open", tmp.path());
    let line = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!(line, format!("LOCKED {}", std::process::id()));
    child.wait().unwrap();
    drop(store);
    let (mut child, rx) = spawn_child("open", tmp.path());
    assert_eq!(rx.recv_timeout(Duration::from_secs(30)).unwrap(), "OPENED");
    child.wait().unwrap();
}
