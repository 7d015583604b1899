//! Measures opening a large store and the memory its map costs per key.
//!
//! Builds a store of 1,000,000 keys (16-byte keys, 100-byte values) ONCE in
//! a temporary directory on the project's file system, then measures
//! `Store::open` (cold-ish: right after the build, and again warm), the
//! growth of the resident set size across the open, divided by the number
//! of keys, and an open in `Periodic` mode (which makes a journal). Deletes
//! the directory at the end (that takes a while: deleting many files is slow
//! on this disk).
//!
//! Run: `cargo run --release -p kvstore-core --example open_1m [KEYS]`
//! Data goes to `$KVSTORE_BENCH_DIR` (default `target/tmp`). With
//! `KVSTORE_KEEP=1` the store is kept (its path is printed) and reused by
//! the next run with the same `KVSTORE_BENCH_DIR` and key count, so the
//! build (and the slow mass delete) happen once.
//!
//! Memory is measured two ways: live heap bytes (a counting global
//! allocator: exact, without allocator overhead) and resident set size.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use kvstore_core::{Durability, Options, Store};

/// Counts live heap bytes.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator, only counting sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size, Ordering::Relaxed);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Resident set size of this process in bytes (Linux).
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * page.max(0) as u64
}

fn key(i: u64) -> String {
    format!("key-{i:012}")
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(1_000_000);
    let root = std::env::var_os("KVSTORE_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/tmp"));
    std::fs::create_dir_all(&root)?;
    let keep = std::env::var_os("KVSTORE_KEEP").is_some();
    let dir = root.join(format!("open_1m-{n}"));
    let opts = || Options::new().durability(Durability::Never).cache_bytes(0);

    if dir.join("CURRENT").exists() {
        println!("reusing the store in {}", dir.display());
    } else {
        let start = Instant::now();
        let store = Store::open_with(&dir, opts())?;
        let value = vec![b'v'; 100];
        let threads = 2;
        std::thread::scope(|s| {
            for t in 0..threads {
                let (store, value) = (&store, &value);
                s.spawn(move || {
                    let mut i = t;
                    while i < n {
                        store.set(key(i), value).expect("set");
                        i += threads;
                    }
                });
            }
        });
        store.flush()?;
        drop(store);
        let build = start.elapsed();
        println!(
            "built {n} keys in {:.1} s ({:.0} sets/s)",
            build.as_secs_f64(),
            n as f64 / build.as_secs_f64()
        );
    }

    for attempt in ["first", "second"] {
        let (heap0, rss0) = (LIVE.load(Ordering::Relaxed), rss_bytes());
        let start = Instant::now();
        let store = Store::open_with(&dir, opts())?;
        let open = start.elapsed();
        let (heap1, rss1) = (LIVE.load(Ordering::Relaxed), rss_bytes());
        assert_eq!(store.len() as u64, n);
        assert_eq!(store.get(key(n / 2))?.map(|v| v.len()), Some(100));
        println!(
            "{attempt} open: {:.3} s; map memory: heap {:.1} MiB = {:.1} B/key, rss +{:.1} MiB = {:.1} B/key",
            open.as_secs_f64(),
            heap1.saturating_sub(heap0) as f64 / (1 << 20) as f64,
            heap1.saturating_sub(heap0) as f64 / n as f64,
            rss1.saturating_sub(rss0) as f64 / (1 << 20) as f64,
            rss1.saturating_sub(rss0) as f64 / n as f64,
        );
    }

    // An open in `Periodic` mode (the default) also makes its journal.
    let start = Instant::now();
    let store = Store::open_with(&dir, Options::new().cache_bytes(0))?;
    println!(
        "open in Periodic mode: {:.3} s",
        start.elapsed().as_secs_f64()
    );
    assert_eq!(store.len() as u64, n);
    drop(store);

    if keep {
        println!("kept {}", dir.display());
    } else {
        let start = Instant::now();
        std::fs::remove_dir_all(&dir)?;
        println!(
            "deleted the store in {:.1} s",
            start.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
