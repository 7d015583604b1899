//! How fast the flusher applies journaled changes to the value files:
//! sets `keys` keys (100-byte values) in a `Periodic` store whose flusher
//! does not run by itself, applies them, then overwrites every key and
//! times `Store::flush`, which applies the staged overwrites and runs
//! `syncfs`. The rate bounds what `Periodic` and `Always` sustain once
//! the pending table is full.
//!
//! ```text
//! cargo run --release -p kvstore-core --example apply_rate -- 50000
//! round 0: 91804 overwrites applied/s
//! ```

use std::time::{Duration, Instant};

use kvstore_core::{Durability, Options, Store};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let keys: usize = std::env::args().nth(1).map_or(Ok(50_000), |s| s.parse())?;
    std::fs::create_dir_all("target/tmp")?;
    let dir = tempfile::Builder::new()
        .prefix("apply-rate-")
        .tempdir_in("target/tmp")?;
    let options = Options::new()
        .durability(Durability::Periodic(Duration::from_secs(3600)))
        .checkpoint_interval(Duration::from_secs(3600))
        .max_pending_bytes(1 << 30);
    let store = Store::open_with(dir.path(), options)?;
    let value = vec![b'v'; 100];
    for i in 0..keys {
        store.set(format!("key-{i}"), &value)?;
    }
    store.flush()?;
    for round in 0..3 {
        for i in 0..keys {
            store.set(format!("key-{i}"), &value)?;
        }
        let start = Instant::now();
        store.flush()?;
        let rate = keys as f64 / start.elapsed().as_secs_f64();
        println!("round {round}: {rate:.0} overwrites applied/s");
    }
    Ok(())
}
