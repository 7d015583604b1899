//! Concurrent writers against one store for a few seconds: prints the rate.
//! Meant for side-by-side comparisons of durability modes, run alternately
//! (the bench runs its cells one after the other, minutes apart, while the
//! disk's state drifts).
//!
//! ```text
//! cargo run --release -p kvstore-core --example writers -- <mode> <threads> <value bytes> <new|overwrite> [seconds]
//! cargo run --release -p kvstore-core --example writers -- always 16 100 new 3
//! ```
//! `mode` is `never`, `periodic` (1 s) or `always`, or `raw-fsync`: no
//! store, each write creates a temp file, writes, fsyncs it and renames it
//! to the key's name (the reference of `Always`). `WRITERS_CHECKPOINT_MS`
//! sets `Options::checkpoint_interval`. The store lives under
//! `target/tmp` (same file system as the project) and is kept afterwards,
//! because a mass delete slows later creates on ext4 for minutes; remove
//! `target/tmp/writers-*` when done.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kvstore_core::{Durability, Options, Store};

/// Keys written before an overwrite run.
const OVERWRITE_KEYS: usize = 4000;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 4 {
        return Err("usage: writers <never|periodic|always> <threads> <value bytes> <new|overwrite> [seconds]".into());
    }
    let durability = match args[0].as_str() {
        "never" | "raw-fsync" => Durability::Never,
        "periodic" => Durability::Periodic(Duration::from_secs(1)),
        "always" => Durability::Always,
        other => return Err(format!("unknown mode {other}").into()),
    };
    let raw = args[0] == "raw-fsync";
    let threads: usize = args[1].parse()?;
    let value = vec![b'v'; args[2].parse()?];
    let overwrite = match args[3].as_str() {
        "new" => false,
        "overwrite" => true,
        other => return Err(format!("expected new or overwrite, not {other}").into()),
    };
    let secs: u64 = args.get(4).map_or(Ok(3), |s| s.parse())?;

    std::fs::create_dir_all("target/tmp")?;
    let dir = tempfile::Builder::new()
        .prefix("writers-")
        .tempdir_in("target/tmp")?
        .keep();
    let mut options = Options::new().durability(durability);
    if let Some(ms) = std::env::var("WRITERS_CHECKPOINT_MS")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        options = options.checkpoint_interval(Duration::from_millis(ms));
    }
    let store = Store::open_with(&dir, options)?;
    let raw_dir = dir.join("raw");
    if raw {
        std::fs::create_dir(&raw_dir)?;
    }
    let write =
        |key: String, value: &[u8]| -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
            if raw {
                raw_write(&raw_dir, &key, value)?;
            } else {
                store.set(key, value)?;
            }
            Ok(())
        };
    if overwrite {
        for i in 0..OVERWRITE_KEYS {
            write(format!("k{i}"), &value).map_err(|e| e.to_string())?;
        }
    }
    let done = AtomicU64::new(0);
    let start = Instant::now();
    let run = Duration::from_secs(secs);
    std::thread::scope(
        |s| -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
            let workers: Vec<_> = (0..threads)
                .map(|t| {
                    let (write, value, done) = (&write, &value, &done);
                    s.spawn(
                        move || -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
                            let mut i = 0usize;
                            while start.elapsed() < run {
                                let key = if overwrite {
                                    format!("k{}", (i * threads + t) % OVERWRITE_KEYS)
                                } else {
                                    format!("t{t}-{i}")
                                };
                                write(key, value)?;
                                i += 1;
                                done.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(())
                        },
                    )
                })
                .collect();
            for w in workers {
                w.join().unwrap_or_else(|p| std::panic::resume_unwind(p))?;
            }
            Ok(())
        },
    )
    .map_err(|e| e.to_string())?;
    let rate = done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();
    println!(
        "{} {} threads, {} B, {}: {rate:.0} sets/s ({})",
        args[0],
        threads,
        value.len(),
        args[3],
        dir.display()
    );
    Ok(())
}

/// One write of the `raw-fsync` reference: temp file, write, fsync,
/// rename to the key's name.
fn raw_write(dir: &std::path::Path, key: &str, value: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let target = dir.join(key);
    let tmp = dir.join(format!("{key}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(value)?;
    f.sync_all()?;
    std::fs::rename(tmp, target)
}
