//! Store benchmarks with the raw file-system reference loops in the same
//! run, so ratios are taken side by side.
//!
//! Run: `cargo bench -p kvstore-core --bench store` (about 3 minutes).
//! `KVSTORE_BENCH_SECS` sets criterion's measurement time per benchmark
//! (default 1 s); `KVSTORE_BENCH_DIR` the directory for the data (default
//! `target/tmp`, on the same file system as the project);
//! `KVSTORE_BENCH_KEYS` the keys per store for gets and overwrites (4000);
//! `KVSTORE_BENCH_SET_CACHE` the cache of the `set_new` stores in bytes
//! (default 64 MiB); `KVSTORE_BENCH_KEEP=1` keeps the data instead of deleting it at the end
//! (a mass delete makes creates slow for minutes: delete it later). At the end a
//! table of median rates and ratios is printed and written to
//! `target/kvstore-bench-summary.md`.
//!
//! Order matters on ext4 with `discard`: freeing inodes makes later creates
//! slow for minutes, so all fresh-create measurements run first, nothing is
//! deleted until the end, and the raw overwrite reference (which frees an
//! inode per write) runs last.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, BenchmarkId, Criterion, SamplingMode, Throughput};
use kvstore_core::io::{FileSystem, StdFileSystem};
use kvstore_core::{Durability, Options, Store};
use rand::{RngCore, SeedableRng};

/// Per-sample rates (ops/s) of every benchmark, for the summary.
static RATES: Mutex<BTreeMap<String, Vec<f64>>> = Mutex::new(BTreeMap::new());
/// Every directory made, deleted only at the very end.
static DIRS: Mutex<Vec<tempfile::TempDir>> = Mutex::new(Vec::new());
static COUNTER: AtomicU64 = AtomicU64::new(0);

const SIZES: [usize; 2] = [100, 1000];
const THREADS: [usize; 2] = [1, 16];
/// Keys per store for get and overwrite benchmarks (`KVSTORE_BENCH_KEYS`).
fn keys_per_store() -> usize {
    std::env::var("KVSTORE_BENCH_KEYS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4000)
}

fn bench_root() -> PathBuf {
    std::env::var_os("KVSTORE_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")))
}

fn new_dir() -> PathBuf {
    let root = bench_root();
    fs::create_dir_all(&root).unwrap();
    let dir = tempfile::tempdir_in(&root).unwrap();
    let path = dir.path().to_path_buf();
    DIRS.lock().unwrap().push(dir);
    path
}

fn fnv1a64(key: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for &b in key {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

fn value(size: usize) -> Vec<u8> {
    let mut v = vec![0u8; size];
    rand::rngs::StdRng::seed_from_u64(size as u64).fill_bytes(&mut v);
    v
}

fn fresh_key() -> String {
    format!("key-{:012}", COUNTER.fetch_add(1, Ordering::Relaxed))
}

fn mode_name(d: Durability) -> &'static str {
    match d {
        Durability::Never => "never",
        Durability::Periodic(_) => "periodic",
        Durability::Always => "always",
    }
}

const MODES: [Durability; 3] = [
    Durability::Never,
    Durability::Periodic(Duration::from_secs(1)),
    Durability::Always,
];

/// Runs `iters` operations split over `threads` threads; `op(thread, i)`.
fn run_parallel(iters: u64, threads: usize, op: &(dyn Fn(usize, u64) + Sync)) -> Duration {
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let n = iters / threads as u64 + u64::from((t as u64) < iters % threads as u64);
            s.spawn(move || {
                for i in 0..n {
                    op(t, i);
                }
            });
        }
    });
    start.elapsed()
}

/// Times `iters` operations and records the rate for the summary.
fn timed(name: &str, iters: u64, threads: usize, op: &(dyn Fn(usize, u64) + Sync)) -> Duration {
    let elapsed = run_parallel(iters, threads, op);
    RATES
        .lock()
        .unwrap()
        .entry(name.to_string())
        .or_default()
        .push(iters as f64 / elapsed.as_secs_f64());
    elapsed
}

/// The raw reference: create a temp file, write, rename to the hashed
/// name (under 256 subdirectories), optionally fsync the file first.
struct Raw {
    dir: PathBuf,
}

impl Raw {
    fn new() -> Raw {
        let dir = new_dir();
        for i in 0..256 {
            fs::create_dir(dir.join(format!("{i:02x}"))).unwrap();
        }
        Raw { dir }
    }

    fn path(&self, key: &[u8]) -> PathBuf {
        let h = fnv1a64(key);
        self.dir.join(format!("{:02x}/{h:016x}", h >> 56))
    }

    fn write(&self, key: &[u8], value: &[u8], fsync: bool) {
        let target = self.path(key);
        let tmp = target.with_extension(format!("tmp{}", COUNTER.fetch_add(1, Ordering::Relaxed)));
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .unwrap();
        f.write_all(value).unwrap();
        if fsync {
            f.sync_all().unwrap();
        }
        drop(f);
        fs::rename(&tmp, &target).unwrap();
    }

    fn read(&self, key: &[u8]) -> Vec<u8> {
        let mut f = File::open(self.path(key)).unwrap();
        let mut buf = Vec::new();
        f.read_to_end(&mut buf).unwrap();
        buf
    }
}

fn settle(dir: &Path) {
    // Start each measurement without a backlog of dirty data.
    let _ = StdFileSystem.syncfs(dir);
}

fn configure<'a>(c: &'a mut Criterion, name: &str) -> BenchmarkGroup<'a, WallTime> {
    let secs: f64 = std::env::var("KVSTORE_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    let mut g = c.benchmark_group(name);
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(200))
        .measurement_time(Duration::from_secs_f64(secs))
        .sampling_mode(SamplingMode::Flat)
        .throughput(Throughput::Elements(1));
    g
}

fn set_new(c: &mut Criterion) {
    let mut g = configure(c, "set_new");
    for size in SIZES {
        let v = value(size);
        for threads in THREADS {
            // The raw reference runs before and after the store variants
            // and its samples are pooled: a stall of the shared disk during
            // one of them then moves the ratio less.
            let raw = Raw::new();
            settle(&raw.dir);
            let name = format!("set_new/raw_create/{size}B/{threads}t");
            let raw_bench = |g: &mut BenchmarkGroup<'_, WallTime>, label: &str| {
                g.bench_function(
                    BenchmarkId::from_parameter(format!("{label}/{size}B/{threads}t")),
                    |b| {
                        b.iter_custom(|iters| {
                            timed(&name, iters, threads, &|_, _| {
                                raw.write(fresh_key().as_bytes(), &v, false)
                            })
                        })
                    },
                );
            };
            raw_bench(&mut g, "raw_create");
            for mode in MODES {
                let dir = new_dir();
                let cache = std::env::var("KVSTORE_BENCH_SET_CACHE")
                    .ok()
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(kvstore_core::options::DEFAULT_CACHE_BYTES);
                let store =
                    Store::open_with(&dir, Options::new().durability(mode).cache_bytes(cache))
                        .unwrap();
                settle(&dir);
                let name = format!("set_new/store_{}/{size}B/{threads}t", mode_name(mode));
                g.bench_function(id(&name), |b| {
                    b.iter_custom(|iters| {
                        timed(&name, iters, threads, &|_, _| {
                            store.set(fresh_key(), &v).unwrap()
                        })
                    })
                });
            }
            raw_bench(&mut g, "raw_create_again");
        }
    }
    // Reference for `Always` with 16 writers: one fsync per write.
    for threads in THREADS {
        let raw = Raw::new();
        let v = value(100);
        settle(&raw.dir);
        let name = format!("set_new/raw_create_fsync/100B/{threads}t");
        g.bench_function(id(&name), |b| {
            b.iter_custom(|iters| {
                timed(&name, iters, threads, &|_, _| {
                    raw.write(fresh_key().as_bytes(), &v, true)
                })
            })
        });
    }
    g.finish();
}

fn populated_store(mode: Durability, cache: usize, size: usize) -> (Store, Vec<String>) {
    let dir = new_dir();
    let store = Store::open_with(
        &dir,
        Options::new()
            .durability(Durability::Never)
            .cache_bytes(cache),
    )
    .unwrap();
    let keys: Vec<String> = (0..keys_per_store()).map(|_| fresh_key()).collect();
    let v = value(size);
    for k in &keys {
        store.set(k, &v).unwrap();
    }
    drop(store);
    settle(&dir);
    (
        Store::open_with(&dir, Options::new().durability(mode).cache_bytes(cache)).unwrap(),
        keys,
    )
}

fn get(c: &mut Criterion) {
    let nkeys = keys_per_store();
    let mut g = configure(c, "get");
    for size in SIZES {
        let v = value(size);
        let raw = Raw::new();
        let keys: Vec<String> = (0..keys_per_store()).map(|_| fresh_key()).collect();
        for k in &keys {
            raw.write(k.as_bytes(), &v, false);
        }
        let name = format!("get/raw_open_read/{size}B/1t");
        g.bench_function(id(&name), |b| {
            b.iter_custom(|iters| {
                timed(&name, iters, 1, &|_, i| {
                    std::hint::black_box(raw.read(keys[i as usize % nkeys].as_bytes()));
                })
            })
        });
        let (store, skeys) = populated_store(Durability::Never, 0, size);
        let name = format!("get/store_uncached/{size}B/1t");
        g.bench_function(id(&name), |b| {
            b.iter_custom(|iters| {
                timed(&name, iters, 1, &|_, i| {
                    std::hint::black_box(store.get(&skeys[i as usize % nkeys]).unwrap());
                })
            })
        });
        let (store, skeys) = populated_store(Durability::Never, 64 << 20, size);
        for k in &skeys {
            store.get(k).unwrap();
        }
        for threads in THREADS {
            let name = format!("get/store_cached/{size}B/{threads}t");
            g.bench_function(id(&name), |b| {
                b.iter_custom(|iters| {
                    timed(&name, iters, threads, &|t, i| {
                        let k = &skeys[(i as usize * 7 + t * 131) % nkeys];
                        std::hint::black_box(store.get(k).unwrap());
                    })
                })
            });
        }
    }
    g.finish();
}

fn overwrite(c: &mut Criterion) {
    let nkeys = keys_per_store();
    let mut g = configure(c, "overwrite");
    for size in SIZES {
        let v = value(size);
        for mode in MODES {
            let (store, keys) = populated_store(mode, 64 << 20, size);
            for threads in THREADS {
                let name = format!("overwrite/store_{}/{size}B/{threads}t", mode_name(mode));
                g.bench_function(id(&name), |b| {
                    b.iter_custom(|iters| {
                        timed(&name, iters, threads, &|t, i| {
                            let k = &keys[(i as usize * 16 + t) % nkeys];
                            store.set(k, &v).unwrap();
                        })
                    })
                });
            }
        }
    }
    // Last: the naive overwrite (temp + rename over an existing file frees
    // an inode per write, which slows every later create).
    for size in SIZES {
        let v = value(size);
        let raw = Raw::new();
        let keys: Vec<String> = (0..keys_per_store()).map(|_| fresh_key()).collect();
        for k in &keys {
            raw.write(k.as_bytes(), &v, false);
        }
        let name = format!("overwrite/raw_rename_over/{size}B/1t");
        g.bench_function(id(&name), |b| {
            b.iter_custom(|iters| {
                timed(&name, iters, 1, &|_, i| {
                    raw.write(keys[i as usize % nkeys].as_bytes(), &v, false)
                })
            })
        });
    }
    g.finish();
}

/// The criterion id of a summary name (`group/rest` -> `rest`).
fn id(name: &str) -> BenchmarkId {
    BenchmarkId::from_parameter(name.split_once('/').map_or(name, |(_, rest)| rest))
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        0.0
    } else {
        v[v.len() / 2]
    }
}

fn summary() {
    let rates = RATES.lock().unwrap();
    let med = |k: &str| rates.get(k).map(|v| median(v));
    let mut out =
        String::from("| benchmark | median ops/s | reference | ratio |\n|---|---:|---|---:|\n");
    for (name, samples) in rates.iter() {
        let parts: Vec<&str> = name.split('/').collect();
        // name = group/bench/size/threads
        let (group, bench, size, threads) = (parts[0], parts[1], parts[2], parts[3]);
        let group_ref = match (group, bench) {
            ("get", "store_uncached") => Some(format!("get/raw_open_read/{size}/1t")),
            // The target: `Always` against one writer's fsync per write.
            (_, "store_always") => Some("set_new/raw_create_fsync/100B/1t".to_string()),
            ("set_new" | "overwrite", b) if b.starts_with("store_") => {
                Some(format!("set_new/raw_create/{size}/{threads}"))
            }
            ("overwrite", "raw_rename_over") => Some(format!("set_new/raw_create/{size}/1t")),
            _ => None,
        };
        let m = median(samples);
        let (rname, ratio) = match group_ref
            .as_deref()
            .and_then(|r| med(r).map(|rm| (r.to_string(), m / rm)))
        {
            Some((r, x)) => (r, format!("{x:.2}")),
            None => ("-".to_string(), "-".to_string()),
        };
        out.push_str(&format!("| {name} | {m:.0} | {rname} | {ratio} |\n"));
    }
    println!("\n{out}");
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("../kvstore-bench-summary.md");
    let _ = fs::write(path, out);
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    // The store's new-key path is set_new; overwrites and gets follow.
    set_new(&mut c);
    get(&mut c);
    overwrite(&mut c);
    c.final_summary();
    summary();
    if std::env::var_os("KVSTORE_BENCH_KEEP").is_some() {
        for d in DIRS.lock().unwrap().drain(..) {
            eprintln!("kept {}", d.keep().display());
        }
    } else {
        eprintln!("removing benchmark data (may take a while)...");
        DIRS.lock().unwrap().clear();
    }
}
