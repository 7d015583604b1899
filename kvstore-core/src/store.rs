//! The `Store`: the only code that decides which file holds what.
//!
//! SKELETON: signatures are the contract; bodies are being written.

use std::path::Path;
use std::time::Duration;

use crate::error::Result;
use crate::item::{CasOutcome, CounterOutcome, Expiry, Item, ItemMeta, StoreOutcome, TouchOutcome};
use crate::options::Options;

/// A persistent key-value store in one directory. `Send + Sync`: share it by
/// `&` or `Arc` between threads.
pub struct Store {
    _private: (),
}

/// What [`Store::verify`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Value files read and checked.
    pub files_checked: u64,
    /// Keys whose file matched the map and its checksum.
    pub keys_ok: u64,
    /// One line per problem found; empty when the store is sound.
    pub problems: Vec<String>,
}

/// What [`Store::repair`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepairReport {
    /// Value files read.
    pub files_scanned: u64,
    /// Keys the rebuilt map holds.
    pub keys_recovered: u64,
    /// Damaged or stray files removed.
    pub files_dropped: u64,
    /// One line per problem found and dealt with.
    pub problems: Vec<String>,
}

#[allow(unused_variables)]
impl Store {
    /// Opens (creating if missing) the store in `dir` with default options.
    pub fn open(dir: impl AsRef<Path>) -> Result<Store> {
        Store::open_with(dir, Options::new())
    }
    /// Opens (creating if missing) the store in `dir`.
    pub fn open_with(dir: impl AsRef<Path>, options: Options) -> Result<Store> {
        todo!()
    }
    /// The value of `key`, if present and not expired.
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Vec<u8>>> {
        todo!()
    }
    /// The item (value, flags, expiry, cas) of `key`, if present and not expired.
    pub fn get_item(&self, key: impl AsRef<[u8]>) -> Result<Option<Item>> {
        todo!()
    }
    /// Gets the item and sets its expiry in one step (memcached `gat`).
    pub fn get_and_touch(&self, key: impl AsRef<[u8]>, expiry: Expiry) -> Result<Option<Item>> {
        todo!()
    }
    /// Stores `value` under `key` with no flags and no expiry.
    pub fn set(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<()> {
        todo!()
    }
    /// Stores `value` under `key` with metadata; returns the new cas.
    pub fn set_with(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        meta: ItemMeta,
    ) -> Result<u64> {
        todo!()
    }
    /// Stores only if `key` is absent.
    pub fn add(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        meta: ItemMeta,
    ) -> Result<StoreOutcome> {
        todo!()
    }
    /// Stores only if `key` is present.
    pub fn replace(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        meta: ItemMeta,
    ) -> Result<StoreOutcome> {
        todo!()
    }
    /// Appends `data` to an existing value (flags and expiry unchanged).
    pub fn append(&self, key: impl AsRef<[u8]>, data: impl AsRef<[u8]>) -> Result<StoreOutcome> {
        todo!()
    }
    /// Prepends `data` to an existing value (flags and expiry unchanged).
    pub fn prepend(&self, key: impl AsRef<[u8]>, data: impl AsRef<[u8]>) -> Result<StoreOutcome> {
        todo!()
    }
    /// Stores only if the item's cas is still `expected_cas`.
    pub fn compare_and_swap(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        meta: ItemMeta,
        expected_cas: u64,
    ) -> Result<CasOutcome> {
        todo!()
    }
    /// Adds `delta` to a decimal counter, wrapping at 2^64.
    pub fn incr(&self, key: impl AsRef<[u8]>, delta: u64) -> Result<CounterOutcome> {
        todo!()
    }
    /// Subtracts `delta` from a decimal counter, stopping at 0.
    pub fn decr(&self, key: impl AsRef<[u8]>, delta: u64) -> Result<CounterOutcome> {
        todo!()
    }
    /// Sets a new expiry on an existing item.
    pub fn touch(&self, key: impl AsRef<[u8]>, expiry: Expiry) -> Result<TouchOutcome> {
        todo!()
    }
    /// Removes `key`; `true` if it was present.
    pub fn delete(&self, key: impl AsRef<[u8]>) -> Result<bool> {
        todo!()
    }
    /// Removes every key, atomically: after a crash, all old data or none.
    pub fn clear(&self) -> Result<()> {
        todo!()
    }
    /// Clears the store `delay` from now (memcached `flush_all <delay>`);
    /// the pending clear is persisted. A zero delay clears now.
    pub fn clear_after(&self, delay: Duration) -> Result<()> {
        todo!()
    }
    /// Whether `key` is present and not expired.
    pub fn contains_key(&self, key: impl AsRef<[u8]>) -> Result<bool> {
        todo!()
    }
    /// Number of keys in the map.
    pub fn len(&self) -> usize {
        todo!()
    }
    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        todo!()
    }
    /// All keys, in no particular order.
    pub fn keys(&self) -> Result<Vec<Vec<u8>>> {
        todo!()
    }
    /// Makes everything written so far durable.
    pub fn flush(&self) -> Result<()> {
        todo!()
    }
    /// The store directory.
    pub fn dir(&self) -> &Path {
        todo!()
    }
    /// Checks every file of the (closed) store in `dir` against the map and
    /// its checksum.
    pub fn verify(dir: impl AsRef<Path>) -> Result<VerifyReport> {
        todo!()
    }
    /// Rebuilds the map of the (closed) store in `dir` from its value files.
    pub fn repair(dir: impl AsRef<Path>) -> Result<RepairReport> {
        todo!()
    }
}
