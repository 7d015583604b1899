//! Embedding kvstore in a program: open a store, use the basic and the
//! memcached-style operations from several threads, and find the data again
//! after a reopen.
//!
//! Run: `cargo run --example embedded -- [DIR]` (default
//! `./kvstore-embedded-data`); run it twice to see the counter survive.

use std::sync::Arc;
use std::thread;

use kvstore::{CasOutcome, CounterOutcome, Durability, ItemMeta, Options, Store, StoreOutcome};

fn main() -> Result<(), kvstore::Error> {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "./kvstore-embedded-data".to_string());

    // `Always`: every write below is on stable storage when it returns.
    let store = Arc::new(Store::open_with(
        &dir,
        Options::new().durability(Durability::Always),
    )?);
    println!("opened {dir}: {} keys", store.len());

    store.set("greeting", "hello")?;
    let greeting = store.get("greeting")?.unwrap_or_default();
    println!("greeting = {}", String::from_utf8_lossy(&greeting));

    // add only stores a key that is absent: the first run creates the counter.
    if let StoreOutcome::Stored { .. } = store.add("runs", "0", ItemMeta::default())? {
        println!("created the runs counter");
    }

    // Four threads increment one counter; per-key locking makes incr atomic.
    store.add("hits", "0", ItemMeta::default())?;
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let store = Arc::clone(&store);
            thread::spawn(move || store.incr("hits", 1))
        })
        .collect();
    for worker in workers {
        if let Ok(Err(e)) = worker.join() {
            return Err(e);
        }
    }
    let hits = store.get("hits")?.unwrap_or_default();
    println!(
        "hits = {} (4 more each run)",
        String::from_utf8_lossy(&hits)
    );

    if let CounterOutcome::Value(n) = store.incr("runs", 1)? {
        println!("this is run number {n} on this directory");
    }

    // Compare-and-swap: read the cas, then write only if nobody changed it.
    if let Some(item) = store.get_item("greeting")? {
        match store.compare_and_swap("greeting", "hello again", ItemMeta::default(), item.cas)? {
            CasOutcome::Stored { cas } => println!("greeting replaced (cas {cas})"),
            CasOutcome::Exists => println!("greeting changed meanwhile"),
            CasOutcome::NotFound => println!("greeting vanished meanwhile"),
        }
    }

    store.flush()?; // see the errors of the final flush instead of losing them on drop
    println!("{} keys in {dir}", store.len());
    Ok(())
}
