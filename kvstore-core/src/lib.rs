//! # kvstore-core: the embeddable persistent store
//!
//! A persistent key-value store in one directory: one file per key, an
//! append-only map log, crash-safe replacement and clear, and the atomic
//! per-key operations of memcached (add, replace, append, prepend, cas,
//! incr/decr, touch) with flags, expiry and cas numbers.
//!
//! ```
//! use kvstore_core::Store;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let tmp = tempfile::tempdir()?;
//! # let dir = tmp.path().join("data");
//! let store = Store::open(&dir)?;
//! store.set("greeting", "hello")?;
//! assert_eq!(store.get("greeting")?, Some(b"hello".to_vec()));
//! assert!(store.delete("greeting")?);
//! assert_eq!(store.get("greeting")?, None);
//! store.set("kept", "across restarts")?;
//! drop(store);
//!
//! let store = Store::open(&dir)?;
//! assert_eq!(store.get("kept")?, Some(b"across restarts".to_vec()));
//! # Ok(())
//! # }
//! ```
//!
//! This is the crate to add for the store alone (no networking, no
//! command-line crates). The `kvstore` facade re-exports it together with
//! the clients of `kvstore-server`; `kvstore-net` serves a store over TCP.
//!
//! ## Overview
//! - [`Store`] (`store/`): the only code that decides which file holds
//!   what. `Send + Sync`; share it by `&` or `Arc`. Besides `get`/`get_item`,
//!   [`Store::get_item_with`] hands a borrowed [`ItemRef`] to a closure, so
//!   a cached value reaches a socket buffer without an extra copy.
//! - [`Options`] / [`Durability`]: how the store is opened and what a write
//!   promises (`Never`, `Periodic(interval)`, `Always` with group commit).
//! - [`Item`], [`ItemMeta`], [`Expiry`] and the outcome enums
//!   ([`StoreOutcome`], [`CasOutcome`], [`CounterOutcome`],
//!   [`TouchOutcome`]): conditional results are values, not errors.
//! - [`Error`]: one enum for everything that can fail.
//! - [`io`]: the file-system seam every disk access goes through; tests wrap
//!   it to record operations or inject faults.
//!
//! Internals: `layout.rs` (key -> FNV-1a 64 path under 256 subdirectories,
//! file names), `record.rs` (value-file format with crc32), `maplog.rs` (the
//! map log format), `journal.rs` (the write-ahead journal format of
//! `Durability::Periodic` and `Always`), `lock.rs` (the fs2 directory
//! lock), `cache.rs` (the bounded value cache).
//!
//! ## On disk
//! ```text
//! <dir>/LOCK  CURRENT  EPOCH  [CLEAR_AT]
//! <dir>/journal.<n>  journal.spare     (`Periodic`, `Always`: write-ahead journal)
//! <dir>/gen-<N>/map.log
//! <dir>/gen-<N>/<hh>/<fnv1a64 hex>[.<collision index>]
//! ```
//! The design (media assumptions, byte tables of every file, the write
//! protocol of each durability mode, recovery on open) is in
//! docs/DESIGN.md; `docs/PERFORMANCE.md` has the measured figures.
#![warn(missing_docs)]

mod cache;
pub mod error;
pub mod io;
pub mod item;
mod journal;
mod layout;
mod lock;
mod maplog;
pub mod options;
mod record;
mod retry;
mod store;

pub use error::{Error, Result};
pub use item::{CasOutcome, CounterOutcome, Expiry, Item, ItemMeta, StoreOutcome, TouchOutcome};
pub use options::{Durability, Options};
pub use store::{DeferredAcks, ItemRef, RepairReport, ScanCursor, Store, Unsynced, VerifyReport};

/// The longest key accepted, in bytes (memcached's limit).
pub const MAX_KEY_BYTES: usize = 250;

/// The README's code blocks, compiled as doctests so that they keep up with
/// the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
