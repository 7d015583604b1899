//! Crash consistency over the wire: the real `kvstore-server` (each
//! durability mode in turn) under concurrent writers in both dialects
//! (seed set/delete/clear, memcached set/append/incr/delete/flush_all), killed
//! with SIGKILL at a random moment, restarted on the same directory, and
//! every key checked against what the writers saw acknowledged.
//!
//! Every key belongs to one writer, so its operations are ordered; each is
//! stamped with a global logical clock when sent and when its reply arrived.
//! The one `clear` per cycle may take effect anywhere in its own window
//! (between sending and the reply), so for each key the test computes every
//! value a real-time-respecting order allows (the clear at each admissible
//! place; the operation in flight at the kill applied or not) and checks:
//! - nothing acknowledged is lost and no value is torn or mixed (the value
//!   read is one of those candidates, compared byte for byte);
//! - the clear is all or nothing (one choice, "happened" or "did not", must
//!   explain every key at once; an acknowledged clear must have happened).
//!
//! `KVSTORE_CRASH_CYCLES` sets the number of kill/restart cycles (default 6,
//! two per mode; scripts/reliability.sh runs 50).

use crate::common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{server_command, spawn, ChildServer, DEADLINE};
use kvstore_net::{Client, McClient};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const BIN: &str = env!("CARGO_BIN_EXE_kvstore-server");
const WRITERS: usize = 4;
const STRING_KEYS: usize = 8;
const COUNTER_KEYS: usize = 2;
const MODES: [&str; 3] = ["never", "periodic", "always"];

#[derive(Debug, Clone)]
enum Effect {
    Set(Vec<u8>),
    Append(Vec<u8>),
    Incr(u64),
    Delete,
}

impl Effect {
    fn apply(&self, v: Option<Vec<u8>>) -> Option<Vec<u8>> {
        match self {
            Effect::Set(x) => Some(x.clone()),
            Effect::Append(x) => v.map(|mut o| {
                o.extend_from_slice(x);
                o
            }),
            Effect::Incr(d) => v.map(|o| {
                let n: u64 = std::str::from_utf8(&o).unwrap().trim().parse().unwrap();
                n.wrapping_add(*d).to_string().into_bytes()
            }),
            Effect::Delete => None,
        }
    }
}

#[derive(Debug, Clone)]
struct OpRec {
    key: String,
    start: u64,
    /// Logical time of the reply; `None`: in flight when the server died.
    ack: Option<u64>,
    effect: Effect,
}

fn keys() -> Vec<String> {
    let mut out = Vec::new();
    for w in 0..WRITERS {
        for i in 0..STRING_KEYS {
            out.push(format!("w{w}-s{i}"));
        }
        for i in 0..COUNTER_KEYS {
            out.push(format!("w{w}-c{i}"));
        }
    }
    out
}

fn string_value(w: usize, i: usize, seq: u64, len: usize) -> Vec<u8> {
    let mut v = format!("<w{w}s{i}#{seq}>").into_bytes();
    let fill = b'a' + (seq % 26) as u8;
    while v.len() < len {
        v.push(fill);
    }
    v
}

/// One writer: random operations on its own keys until the server dies.
fn writer(
    w: usize,
    srv: (std::net::SocketAddr, std::net::SocketAddr),
    clock: &AtomicU64,
    acked: &AtomicU64,
    seed: u64,
) -> Vec<OpRec> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut recs = Vec::new();
    let (Ok(mut seed_c), Ok(mut mc)) = (Client::connect(srv.0), McClient::connect(srv.1)) else {
        return recs;
    };
    for seq in 0.. {
        let counter = rng.gen_range(0..5) == 0;
        let (key, effect) = if counter {
            let i = rng.gen_range(0..COUNTER_KEYS);
            let key = format!("w{w}-c{i}");
            match rng.gen_range(0..6) {
                0 => (
                    key,
                    Effect::Set(rng.gen_range(0..1000u64).to_string().into_bytes()),
                ),
                5 => (key, Effect::Delete),
                _ => (key, Effect::Incr(rng.gen_range(1..100))),
            }
        } else {
            let i = rng.gen_range(0..STRING_KEYS);
            let key = format!("w{w}-s{i}");
            match rng.gen_range(0..10) {
                0..=5 => {
                    let len = rng.gen_range(0..6000);
                    (key, Effect::Set(string_value(w, i, seq, len)))
                }
                6 | 7 => (key, Effect::Append(format!("+{w}.{seq}").into_bytes())),
                _ => (key, Effect::Delete),
            }
        };
        let start = clock.fetch_add(1, Ordering::SeqCst);
        let seed_dialect = rng.gen_bool(0.5);
        let ok = match &effect {
            Effect::Set(v) if seed_dialect => seed_c.set(&key, v).is_ok(),
            Effect::Set(v) => mc.set(&key, v, 7, 0).is_ok(),
            Effect::Append(x) => mc.append(&key, x).is_ok(),
            Effect::Incr(d) => mc.incr(&key, *d).is_ok(),
            Effect::Delete if seed_dialect => seed_c.delete(&key).is_ok(),
            Effect::Delete => mc.delete(&key).is_ok(),
        };
        let ack = ok.then(|| clock.fetch_add(1, Ordering::SeqCst));
        recs.push(OpRec {
            key,
            start,
            ack,
            effect,
        });
        if !ok {
            // The server is gone (or refused): the outcome is unknown.
            return recs;
        }
        acked.fetch_add(1, Ordering::SeqCst);
    }
    recs
}

/// Possible values of one key (`None`: absent).
type Values = Vec<Option<Vec<u8>>>;

/// Every value `key` may hold: (if the clear did not happen, if it did).
fn candidates(
    initial: Option<&Vec<u8>>,
    ops: &[&OpRec],
    clear: Option<(u64, Option<u64>)>,
) -> (Values, Values) {
    let n = ops.len();
    let last_unacked = ops.last().is_some_and(|o| o.ack.is_none());
    let fold = |upto: usize, clear_at: Option<usize>| -> Option<Vec<u8>> {
        let mut v = initial.cloned();
        for (j, op) in ops[..upto].iter().enumerate() {
            if clear_at == Some(j) {
                v = None;
            }
            v = op.effect.apply(v);
        }
        if clear_at == Some(upto) {
            v = None;
        }
        v
    };
    let lengths: Vec<usize> = if last_unacked {
        vec![n - 1, n]
    } else {
        vec![n]
    };
    let mut without = Vec::new();
    let mut with = Vec::new();
    for &len in &lengths {
        without.push(fold(len, None));
        if let Some((cs, ce)) = clear {
            let ce = ce.unwrap_or(u64::MAX);
            // Clear placed before op j (j == len: after all).
            for j in 0..=len {
                let after_prev = j == 0 || ops[j - 1].start < ce;
                let before_next = j == len || ops[j].ack.is_none_or(|a| cs < a);
                if after_prev && before_next {
                    with.push(fold(len, Some(j)));
                }
            }
        }
    }
    (without, with)
}

struct Cycle {
    acked: u64,
    violations: Vec<String>,
}

fn kill(mut srv: ChildServer) {
    // SIGKILL of our own child (not yet waited for), then reap it.
    srv.child.kill().unwrap();
    srv.child.wait().unwrap();
}

fn start(dir: &Path, mode: &str) -> ChildServer {
    let mut cmd = server_command(BIN, dir);
    cmd.args(["--durability", mode, "--sync-interval-ms", "20"]);
    spawn(cmd)
}

fn read_state(srv: &ChildServer) -> BTreeMap<String, Vec<u8>> {
    let mut mc = McClient::connect(srv.mc.unwrap()).unwrap();
    let mut out = BTreeMap::new();
    for k in keys() {
        if let Some(item) = mc.get(&k).unwrap() {
            out.insert(k, item.value);
        }
    }
    out
}

fn run_cycle(dir: &Path, mode: &str, rng: &mut StdRng) -> Cycle {
    let srv = start(dir, mode);
    let initial = read_state(&srv);
    let addrs = (srv.seed, srv.mc.unwrap());
    let clock = AtomicU64::new(1);
    let acked = AtomicU64::new(0);
    let kill_at = rng.gen_range(20..250u64);
    let clear_at = rng.gen_range(0..kill_at + 40);
    let clear_seed_dialect = rng.gen_bool(0.5);
    let seed: u64 = rng.gen();
    let clear_window: Mutex<Option<(u64, Option<u64>)>> = Mutex::new(None);
    let stop_clear = AtomicBool::new(false);
    let srv_cell = Mutex::new(Some(srv));
    let records: Vec<OpRec> = std::thread::scope(|s| {
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let (clock, acked) = (&clock, &acked);
                s.spawn(move || writer(w, addrs, clock, acked, seed ^ w as u64))
            })
            .collect();
        s.spawn(|| {
            let deadline = Instant::now() + DEADLINE;
            while acked.load(Ordering::SeqCst) < clear_at {
                if stop_clear.load(Ordering::SeqCst) || Instant::now() > deadline {
                    return;
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            let cs = clock.fetch_add(1, Ordering::SeqCst);
            *clear_window.lock().unwrap() = Some((cs, None));
            let ok = if clear_seed_dialect {
                Client::connect(addrs.0).and_then(|mut c| c.clear()).is_ok()
            } else {
                McClient::connect(addrs.1)
                    .and_then(|mut c| c.flush_all(0))
                    .is_ok()
            };
            if ok {
                let ce = clock.fetch_add(1, Ordering::SeqCst);
                *clear_window.lock().unwrap() = Some((cs, Some(ce)));
            }
        });
        // The killer: wait for the target number of acknowledgements.
        let deadline = Instant::now() + DEADLINE;
        while acked.load(Ordering::SeqCst) < kill_at {
            assert!(Instant::now() < deadline, "writers made no progress");
            std::thread::sleep(Duration::from_micros(200));
        }
        kill(srv_cell.lock().unwrap().take().unwrap());
        stop_clear.store(true, Ordering::SeqCst);
        writers
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let clear = *clear_window.lock().unwrap();

    // Restart on the same directory and compare.
    let srv = start(dir, mode);
    let after = read_state(&srv);
    drop(srv);
    let mut per_key: BTreeMap<String, Vec<&OpRec>> = BTreeMap::new();
    for r in &records {
        per_key.entry(r.key.clone()).or_default().push(r);
    }
    for ops in per_key.values_mut() {
        ops.sort_by_key(|o| o.start);
    }
    let mut violations = Vec::new();
    let mut fits_without = true;
    let mut fits_with = true;
    for k in keys() {
        let ops = per_key.get(&k).cloned().unwrap_or_default();
        let (without, with) = candidates(initial.get(&k), &ops, clear);
        let got = after.get(&k).cloned();
        let in_without = without.contains(&got);
        let in_with = with.contains(&got);
        if !in_without && !in_with {
            violations.push(format!(
                "{mode}: key {k} reads {:?}; no acknowledged history explains it ({} ops, last acked {:?})",
                got.as_deref().map(|v| String::from_utf8_lossy(&v[..v.len().min(40)]).into_owned()),
                ops.len(),
                ops.last().map(|o| o.ack.is_some()),
            ));
        }
        fits_without &= in_without;
        fits_with &= in_with;
    }
    match clear {
        None => {}
        Some((_, Some(_))) if !fits_with && violations.is_empty() => violations.push(format!(
            "{mode}: an acknowledged clear was not (wholly) applied"
        )),
        Some(_) if !fits_with && !fits_without && violations.is_empty() => {
            violations.push(format!("{mode}: clear applied to some keys only"))
        }
        _ => {}
    }
    if clear.is_none() && !fits_without && violations.is_empty() {
        violations.push(format!("{mode}: state not explained"));
    }
    Cycle {
        acked: acked.load(Ordering::SeqCst),
        violations,
    }
}

#[test]
fn sigkill_loses_nothing_acknowledged_in_any_durability_mode() {
    let cycles: usize = std::env::var("KVSTORE_CRASH_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6);
    let seed: u64 = std::env::var("KVSTORE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen());
    let mut rng = StdRng::seed_from_u64(seed);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let started = Instant::now();
    let mut acked = 0;
    let mut violations = Vec::new();
    for c in 0..cycles {
        let mode = MODES[c % MODES.len()];
        let cycle = run_cycle(&dir, mode, &mut rng);
        acked += cycle.acked;
        violations.extend(
            cycle
                .violations
                .into_iter()
                .map(|v| format!("cycle {c}: {v}")),
        );
    }
    println!(
        "crash_wire: cycles {cycles}, writes acknowledged {acked}, violations {} (seed {seed}, {:.1} s)",
        violations.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        violations.is_empty(),
        "seed {seed}:\n{}",
        violations.join("\n")
    );
}

#[test]
fn candidates_respect_the_clear_window() {
    let op = |start, ack: Option<u64>, effect| OpRec {
        key: "k".into(),
        start,
        ack,
        effect,
    };
    let a = op(1, Some(2), Effect::Set(b"a".to_vec()));
    let b = op(3, Some(4), Effect::Append(b"b".to_vec()));
    let c = op(5, None, Effect::Set(b"c".to_vec()));
    // No clear: "ab", or "c" if the unacknowledged set landed.
    let (without, with) = candidates(None, &[&a, &b, &c], None);
    assert_eq!(without, vec![Some(b"ab".to_vec()), Some(b"c".to_vec())]);
    assert!(with.is_empty());
    // A clear acknowledged between b and c: nothing, or "c".
    let (_, with) = candidates(None, &[&a, &b, &c], Some((4, Some(5))));
    assert!(with.contains(&None) && with.contains(&Some(b"c".to_vec())));
    assert!(!with.contains(&Some(b"ab".to_vec())));
    // A clear overlapping b: b may come after it (append to nothing).
    let (_, with) = candidates(None, &[&a, &b], Some((3, Some(4))));
    assert_eq!(with, vec![None, None]);
    let lost = Some(b"a".to_vec());
    let (without, with) = candidates(None, &[&a, &b], Some((3, Some(4))));
    assert!(!without.contains(&lost) && !with.contains(&lost));
}
