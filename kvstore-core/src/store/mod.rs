//! The `Store`: the only code that decides which file holds what.
//!
//! The design (media assumptions, on-disk formats, the write protocol of
//! each durability mode, recovery on open) is in docs/DESIGN.md. A write
//! reads top to bottom in [`Inner::update`] (`store/write.rs`): decide
//! under the key's stripe lock, then, by mode:
//!
//! - `Never`: change the value files now ([`Inner::write_files`]);
//! - `Periodic` and `Always`: append the change to the journal
//!   (`store/journal.rs`; `Always` waits for its group commit, `Periodic`
//!   only for the write to the file) and stage it in the pending table
//!   (`store/pending.rs`). The flusher makes the journal durable and then
//!   applies the staged changes to the value files (`store/durability.rs`);
//!   so no value file changes before the journal entry behind it is
//!   durable, in either mode.
//!
//! Readers take no lock: the pending table, then the cache, then the file.
//!
//! Each [`Generation`] owns its map of keys to value files with the map
//! log ([`KeyMap`], `store/map.rs`) and its pool of spare files
//! ([`Spares`], `store/spares.rs`).

use std::borrow::Cow;
use std::collections::HashMap;
use std::ffi::OsString;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::cache::{Cache, CachedItem};
use crate::error::{Error, Result};
use crate::io::{AppendFile, FileSystem};
use crate::item::{
    unix_now, CasOutcome, CounterOutcome, Expiry, Item, ItemMeta, StoreOutcome, TouchOutcome,
};
use crate::layout::{self, SUBDIRS};
use crate::lock::{lock_dir, DirLock};
use crate::maplog::{self, Bytes, LogEnd, MapRecord};
use crate::options::{Durability, Options};
use crate::record;
use crate::MAX_KEY_BYTES;

mod acks;
mod clear;
mod durability;
mod files;
mod health;
mod journal;
mod map;
mod open;
mod pending;
mod read;
mod scan;
mod spares;
mod verify;
mod write;

pub use self::acks::{DeferredAcks, Unsynced};
pub use scan::ScanCursor;

use self::clear::*;
use self::durability::*;
use self::files::*;
use self::health::Health;
use self::journal::*;
use self::map::*;
use self::open::*;
use self::pending::*;
use self::read::*;
use self::spares::*;
use self::verify::offline;
pub use self::verify::{RepairReport, VerifyReport};
use self::write::*;

/// Number of per-key writer locks (striped by key hash).
const STRIPES: usize = 1024;
/// Number of shards of the in-memory map.
const MAP_SHARDS: usize = 64;
/// Spare files kept per subdirectory; beyond that, freed files are removed.
const SPARES_PER_SUBDIR: usize = 64;
/// First read of a value file; larger records take a second read.
const FIRST_READ: usize = 4096;

/// A persistent key-value store in one directory. `Send + Sync`: share it by
/// `&` or `Arc` between threads.
///
/// Dropping the store stops its background threads, flushes what was
/// written (best effort: errors are ignored; call [`Store::flush`] first to
/// see them) and releases the directory lock.
pub struct Store {
    inner: Arc<Inner>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// A borrowed view of an item, for [`Store::get_item_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ItemRef<'a> {
    /// The value bytes.
    pub value: &'a [u8],
    /// Opaque client flags.
    pub flags: u32,
    /// When the item expires.
    pub expiry: Expiry,
    /// The item's cas number.
    pub cas: u64,
}

fn io_err(path: &Path, source: io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Whether an item with this expiry is expired now (reads the clock only
/// for items that can expire).
fn expired(expiry: Expiry) -> bool {
    expiry != Expiry::Never && expiry.is_expired_at(unix_now())
}

fn validate_key(key: &[u8]) -> Result<()> {
    if key.is_empty() {
        return Err(Error::InvalidKey {
            reason: "empty key",
        });
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(Error::KeyTooLong {
            len: key.len(),
            max: MAX_KEY_BYTES,
        });
    }
    Ok(())
}

struct Stripe {
    lock: Mutex<()>,
    /// Bumped by every writer of a key of this stripe after the file
    /// changed and before the cache is updated (see `Cache::insert_if`).
    seq: AtomicU64,
}

/// Background thread control.
#[derive(Default)]
struct Stop {
    flag: AtomicBool,
    /// Set by [`Stop::kick`]: the waiting thread (the flusher) should run
    /// now rather than at the end of its interval.
    kicked: AtomicBool,
    mutex: Mutex<()>,
    cv: Condvar,
}

impl Stop {
    fn stopped(&self) -> bool {
        self.flag.load(Ordering::Relaxed)
    }

    /// Sleeps up to `d` (less if kicked); `true` if stopped.
    fn wait(&self, d: Duration) -> bool {
        let mut guard = self.mutex.lock();
        if self.stopped() {
            return true;
        }
        if !self.kicked.swap(false, Ordering::SeqCst) {
            let _ = self.cv.wait_for(&mut guard, d);
            self.kicked.store(false, Ordering::SeqCst);
        }
        self.stopped()
    }

    /// Ends the current [`Stop::wait`] early (or the next one at once).
    fn kick(&self) {
        if !self.kicked.swap(true, Ordering::SeqCst) {
            let _guard = self.mutex.lock();
            self.cv.notify_all();
        }
    }

    fn stop(&self) {
        let _guard = self.mutex.lock();
        self.flag.store(true, Ordering::Relaxed);
        self.cv.notify_all();
    }
}

/// One generation: a directory of value files with its map and its spare
/// pool.
struct Generation {
    dir: PathBuf,
    /// Its number (the `<N>` of `gen-<N>`), which journal entries carry.
    number: u64,
    /// Its keys, in memory and in its map log.
    map: KeyMap,
    subdir_ready: Box<[AtomicBool]>,
    /// Its spare files, which writes fill and swap in.
    spares: Spares,
    expiring_marked: AtomicBool,
}

impl Generation {
    fn value_path(&self, hash: u64, idx: u16) -> PathBuf {
        self.dir.join(layout::value_rel_path(hash, idx))
    }

    fn subdir_path(&self, sub: usize) -> PathBuf {
        self.dir.join(format!("{sub:02x}"))
    }
}

struct Inner {
    dir: PathBuf,
    fs: Arc<dyn FileSystem>,
    hasher: fn(&[u8]) -> u64,
    durability: Durability,
    max_value_bytes: usize,
    gen: RwLock<Arc<Generation>>,
    next_gen: AtomicU64,
    stripes: Box<[Stripe]>,
    cache: Cache,
    cache_enabled: bool,
    epoch: u64,
    cas_counter: AtomicU64,
    /// Pending `clear_after` deadline in Unix milliseconds; 0 = none.
    clear_deadline: AtomicU64,
    clear_lock: Mutex<()>,
    health: Arc<Health>,
    group: GroupSync,
    exchange_supported: AtomicBool,
    noreplace_supported: AtomicBool,
    stop: Arc<Stop>,
    /// Set when the background sweep after open has finished.
    sweep_done: AtomicBool,
    /// The write-ahead journal (`Periodic` and `Always`).
    journal: Option<Journal>,
    /// Changes journaled but not yet in the value files.
    pending: Pending,
    /// One flush-and-apply pass at a time (the flusher, `Store::flush`,
    /// close).
    tick: Mutex<TickState>,
    /// The old journal file of a checkpoint, handed from the
    /// flusher to the retirer thread.
    retire: Mutex<Option<PathBuf>>,
    retire_cv: Condvar,
    checkpoint_interval: Duration,
    /// Generation directories waiting to be deleted in the background.
    doomed: Mutex<Vec<PathBuf>>,
    doomed_cv: Condvar,
    _lock: DirLock,
}

impl Store {
    /// Opens (creating if missing) the store in `dir` with default options.
    ///
    /// # Errors
    /// See [`Store::open_with`].
    pub fn open(dir: impl AsRef<Path>) -> Result<Store> {
        Store::open_with(dir, Options::new())
    }

    /// Opens (creating if missing) the store in `dir`.
    ///
    /// Opening reads only the map log, not the value files; leftovers of a
    /// crash (other generations, temporary files) are cleaned up, partly in
    /// the background.
    ///
    /// # Errors
    /// [`Error::Locked`] if another `Store` (in this or another process) has
    /// the directory open; [`Error::Io`] if it cannot be created or read;
    /// [`Error::Corrupt`] if `CURRENT` or `EPOCH` is damaged (run
    /// [`Store::repair`]).
    pub fn open_with(dir: impl AsRef<Path>, options: Options) -> Result<Store> {
        let dir = dir.as_ref().to_path_buf();
        let fs = options.file_system.clone();
        create_dir_all(&*fs, &dir)?;
        let dir_lock = lock_dir(&*fs, &dir)?;
        let sync_meta = options.durability != Durability::Never;

        let epoch = read_u64_file(&*fs, &dir.join(layout::EPOCH_FILE))?.unwrap_or(0) + 1;
        if epoch >= 1 << 24 {
            return Err(Error::Corrupt {
                path: dir.join(layout::EPOCH_FILE),
                what: format!("boot epoch {epoch} out of range"),
            });
        }
        write_small_file(
            &*fs,
            &dir,
            layout::EPOCH_FILE,
            format!("{epoch}\n").as_bytes(),
            sync_meta,
        )?;

        // Generations present, leftovers of interrupted small-file writes.
        let mut gens = Vec::new();
        let mut journals = Vec::new();
        for name in list_names(&*fs, &dir)? {
            if let Some(n) = layout::parse_gen_name(&name) {
                gens.push(n);
            } else if let Some(n) = layout::parse_journal_name(&name) {
                journals.push((n, dir.join(&name)));
            } else if name.ends_with(layout::TMP_SUFFIX) {
                let _ = fs.remove_file(&dir.join(&name));
            }
        }
        let current_path = dir.join(layout::CURRENT_FILE);
        let current = match read_optional(&*fs, &current_path, 256)? {
            Some(bytes) => layout::parse_current(&bytes).map_err(|what| Error::Corrupt {
                path: current_path.clone(),
                what,
            })?,
            None => gens.iter().copied().max().unwrap_or(0),
        };
        let gen_dir = dir.join(layout::gen_name(current));
        if !gens.contains(&current) {
            create_generation_dir(&*fs, &gen_dir, sync_meta)?;
        }
        require_real_dir(&*fs, &gen_dir)?;
        let mut fresh_current = true;
        if let Some(bytes) = read_optional(&*fs, &current_path, 256)? {
            fresh_current = layout::parse_current(&bytes).ok() != Some(current);
        }
        if fresh_current {
            write_small_file(
                &*fs,
                &dir,
                layout::CURRENT_FILE,
                layout::current_contents(current).as_bytes(),
                sync_meta,
            )?;
        }
        let generation = load_generation(&fs, &gen_dir, options.key_hasher, sync_meta, epoch)?;

        let clear_deadline = read_u64_file(&*fs, &dir.join(layout::CLEAR_AT_FILE))?.unwrap_or(0);
        let doomed: Vec<PathBuf> = gens
            .iter()
            .filter(|&&n| n != current)
            .map(|&n| dir.join(layout::gen_name(n)))
            .collect();
        let next_gen = gens.iter().copied().chain([current]).max().unwrap_or(0) + 1;
        let health = Arc::new(Health::default());
        let stop = Arc::new(Stop::default());
        let journal = match options.durability {
            Durability::Always | Durability::Periodic(_) => {
                let seq = journals.iter().map(|&(n, _)| n + 1).max().unwrap_or(0);
                Some(Journal::create(
                    fs.clone(),
                    &dir,
                    seq,
                    options.durability == Durability::Always,
                    health.clone(),
                    stop.clone(),
                )?)
            }
            _ => None,
        };

        let inner = Arc::new(Inner {
            dir,
            fs,
            hasher: options.key_hasher,
            durability: options.durability,
            max_value_bytes: options.max_value_bytes.min(u32::MAX as usize),
            gen: RwLock::new(Arc::new(generation)),
            next_gen: AtomicU64::new(next_gen),
            stripes: (0..STRIPES)
                .map(|_| Stripe {
                    lock: Mutex::new(()),
                    seq: AtomicU64::new(0),
                })
                .collect(),
            cache: Cache::new(options.cache_bytes),
            cache_enabled: options.cache_bytes > 0,
            epoch,
            cas_counter: AtomicU64::new(0),
            clear_deadline: AtomicU64::new(clear_deadline),
            clear_lock: Mutex::new(()),
            health,
            group: GroupSync::default(),
            exchange_supported: AtomicBool::new(true),
            noreplace_supported: AtomicBool::new(true),
            stop,
            sweep_done: AtomicBool::new(false),
            journal,
            pending: Pending::new(options.max_pending_bytes),
            tick: Mutex::new(TickState::new()),
            retire: Mutex::new(None),
            retire_cv: Condvar::new(),
            checkpoint_interval: options.checkpoint_interval,
            doomed: Mutex::new(doomed),
            doomed_cv: Condvar::new(),
            _lock: dir_lock,
        });
        // Writes an `Always` session journaled but may not have finished
        // in the value files (any mode replays them).
        inner.replay_journals(&mut journals)?;

        let mut threads = Vec::new();
        {
            let inner = inner.clone();
            threads.push(spawn("kvstore-deleter", move || inner.deleter_loop())?);
        }
        {
            let inner = inner.clone();
            threads.push(spawn(SWEEPER, move || {
                inner.sweep();
                inner.sweep_done.store(true, Ordering::SeqCst);
            })?);
        }
        // The flusher applies the pending table every interval
        // (`Periodic`: its own; `Always`: every second, or the checkpoint
        // interval if shorter), the retirer finishes its checkpoints.
        let flush_every = match options.durability {
            Durability::Periodic(every) => Some(every),
            Durability::Always => Some(options.checkpoint_interval.min(ALWAYS_APPLY_INTERVAL)),
            Durability::Never => None,
        };
        if let Some(every) = flush_every {
            let flusher = inner.clone();
            let every = every.max(Duration::from_millis(1));
            threads.push(spawn("kvstore-flusher", move || {
                flusher.flusher_loop(every)
            })?);
            let retirer = inner.clone();
            threads.push(spawn("kvstore-retirer", move || retirer.retirer_loop())?);
            // The syncer flushes the journal: every interval in `Periodic`,
            // whenever an acknowledgement waits in `Always`.
            let syncer = inner.clone();
            let every = match options.durability {
                Durability::Periodic(every) => Some(every),
                _ => None,
            };
            threads.push(spawn("kvstore-syncer", move || {
                if let Some(j) = &syncer.journal {
                    j.syncer_loop(every);
                }
            })?);
        }
        Ok(Store {
            inner,
            threads: Mutex::new(threads),
        })
    }

    /// The value of `key`, if present and not expired.
    ///
    /// # Errors
    /// Key errors; [`Error::Io`] if the value file cannot be read.
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Vec<u8>>> {
        Ok(self.inner.fetch(key.as_ref())?.map(|it| it.value.clone()))
    }

    /// The item (value, flags, expiry, cas) of `key`, if present and not expired.
    ///
    /// # Errors
    /// As [`Store::get`].
    pub fn get_item(&self, key: impl AsRef<[u8]>) -> Result<Option<Item>> {
        Ok(self.inner.fetch(key.as_ref())?.map(|it| to_item(&it)))
    }

    /// Calls `f` with a borrowed view of the item of `key`, if present and
    /// not expired, and returns what `f` returns. A cached item is not
    /// copied: a server can write the bytes straight to its output buffer.
    ///
    /// # Errors
    /// As [`Store::get`].
    pub fn get_item_with<R>(
        &self,
        key: impl AsRef<[u8]>,
        f: impl FnOnce(ItemRef<'_>) -> R,
    ) -> Result<Option<R>> {
        Ok(self.inner.fetch(key.as_ref())?.map(|it| {
            f(ItemRef {
                value: &it.value,
                flags: it.flags,
                expiry: it.expiry,
                cas: it.cas,
            })
        }))
    }

    /// Gets the item and sets its expiry in one step (memcached `gat`).
    /// The cas number does not change.
    ///
    /// # Errors
    /// As [`Store::set`].
    pub fn get_and_touch(&self, key: impl AsRef<[u8]>, expiry: Expiry) -> Result<Option<Item>> {
        let mut out = None;
        self.inner.update(key.as_ref(), |cur| match cur {
            None => Ok(Action::Keep),
            Some(it) => {
                out = Some(Item {
                    value: it.value.clone(),
                    flags: it.flags,
                    expiry,
                    cas: it.cas,
                });
                Ok(Action::Write {
                    value: Cow::Owned(it.value.clone()),
                    flags: it.flags,
                    expiry,
                    cas: Some(it.cas),
                })
            }
        })?;
        Ok(out)
    }

    /// Stores `value` under `key` with no flags and no expiry.
    ///
    /// # Errors
    /// Key errors, [`Error::ValueTooLarge`], [`Error::Io`],
    /// [`Error::ReadOnly`] after a failed flush.
    pub fn set(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<()> {
        self.set_with(key, value, ItemMeta::default()).map(|_| ())
    }

    /// Stores `value` under `key` with metadata; returns the new cas.
    ///
    /// # Errors
    /// As [`Store::set`].
    pub fn set_with(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        meta: ItemMeta,
    ) -> Result<u64> {
        let value = value.as_ref();
        self.inner.check_value(value.len())?;
        let cas = self.inner.update(key.as_ref(), |_| {
            Ok(Action::Write {
                value: Cow::Borrowed(value),
                flags: meta.flags,
                expiry: meta.expiry,
                cas: None,
            })
        })?;
        Ok(cas.unwrap_or(0))
    }

    /// Stores only if `key` is absent (or expired).
    ///
    /// # Errors
    /// As [`Store::set`].
    pub fn add(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        meta: ItemMeta,
    ) -> Result<StoreOutcome> {
        self.store_if(key.as_ref(), value.as_ref(), meta, false)
    }

    /// Stores only if `key` is present.
    ///
    /// # Errors
    /// As [`Store::set`].
    pub fn replace(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        meta: ItemMeta,
    ) -> Result<StoreOutcome> {
        self.store_if(key.as_ref(), value.as_ref(), meta, true)
    }

    /// `add` (`present == false`) and `replace` (`present == true`): stores
    /// only if the key's presence is as wanted.
    fn store_if(
        &self,
        key: &[u8],
        value: &[u8],
        meta: ItemMeta,
        present: bool,
    ) -> Result<StoreOutcome> {
        self.inner.check_value(value.len())?;
        let cas = self.inner.update(key, |cur| {
            Ok(if cur.is_some() != present {
                Action::Keep
            } else {
                Action::Write {
                    value: Cow::Borrowed(value),
                    flags: meta.flags,
                    expiry: meta.expiry,
                    cas: None,
                }
            })
        })?;
        Ok(stored(cas))
    }

    /// Appends `data` to an existing value (flags and expiry unchanged).
    ///
    /// # Errors
    /// As [`Store::set`]; [`Error::ValueTooLarge`] if the result would be.
    pub fn append(&self, key: impl AsRef<[u8]>, data: impl AsRef<[u8]>) -> Result<StoreOutcome> {
        self.concat(key.as_ref(), data.as_ref(), false)
    }

    /// Prepends `data` to an existing value (flags and expiry unchanged).
    ///
    /// # Errors
    /// As [`Store::append`].
    pub fn prepend(&self, key: impl AsRef<[u8]>, data: impl AsRef<[u8]>) -> Result<StoreOutcome> {
        self.concat(key.as_ref(), data.as_ref(), true)
    }

    fn concat(&self, key: &[u8], data: &[u8], front: bool) -> Result<StoreOutcome> {
        let max = self.inner.max_value_bytes;
        let cas = self.inner.update(key, |cur| {
            let Some(it) = cur else {
                return Ok(Action::Keep);
            };
            let len = it.value.len() + data.len();
            if len > max {
                return Err(Error::ValueTooLarge { len, max });
            }
            let mut value = Vec::with_capacity(len);
            if front {
                value.extend_from_slice(data);
                value.extend_from_slice(&it.value);
            } else {
                value.extend_from_slice(&it.value);
                value.extend_from_slice(data);
            }
            Ok(Action::Write {
                value: Cow::Owned(value),
                flags: it.flags,
                expiry: it.expiry,
                cas: None,
            })
        })?;
        Ok(stored(cas))
    }

    /// Stores only if the item's cas is still `expected_cas`.
    ///
    /// # Errors
    /// As [`Store::set`].
    pub fn compare_and_swap(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        meta: ItemMeta,
        expected_cas: u64,
    ) -> Result<CasOutcome> {
        let value = value.as_ref();
        self.inner.check_value(value.len())?;
        let mut outcome = CasOutcome::NotFound;
        let cas = self.inner.update(key.as_ref(), |cur| {
            Ok(match cur {
                None => Action::Keep,
                Some(it) if it.cas != expected_cas => {
                    outcome = CasOutcome::Exists;
                    Action::Keep
                }
                Some(_) => Action::Write {
                    value: Cow::Borrowed(value),
                    flags: meta.flags,
                    expiry: meta.expiry,
                    cas: None,
                },
            })
        })?;
        Ok(match cas {
            Some(cas) => CasOutcome::Stored { cas },
            None => outcome,
        })
    }

    /// Adds `delta` to a decimal counter, wrapping at 2^64.
    ///
    /// # Errors
    /// As [`Store::set`].
    pub fn incr(&self, key: impl AsRef<[u8]>, delta: u64) -> Result<CounterOutcome> {
        self.counter(key.as_ref(), |v| v.wrapping_add(delta))
    }

    /// Subtracts `delta` from a decimal counter, stopping at 0.
    ///
    /// # Errors
    /// As [`Store::set`].
    pub fn decr(&self, key: impl AsRef<[u8]>, delta: u64) -> Result<CounterOutcome> {
        self.counter(key.as_ref(), |v| v.saturating_sub(delta))
    }

    fn counter(&self, key: &[u8], op: impl FnOnce(u64) -> u64) -> Result<CounterOutcome> {
        let mut outcome = CounterOutcome::NotFound;
        self.inner.update(key, |cur| {
            let Some(it) = cur else {
                return Ok(Action::Keep);
            };
            let Some(n) = parse_counter(&it.value) else {
                outcome = CounterOutcome::NotNumeric;
                return Ok(Action::Keep);
            };
            let n = op(n);
            outcome = CounterOutcome::Value(n);
            Ok(Action::Write {
                value: Cow::Owned(n.to_string().into_bytes()),
                flags: it.flags,
                expiry: it.expiry,
                cas: None,
            })
        })?;
        Ok(outcome)
    }

    /// Sets a new expiry on an existing item (its cas does not change).
    ///
    /// # Errors
    /// As [`Store::set`].
    pub fn touch(&self, key: impl AsRef<[u8]>, expiry: Expiry) -> Result<TouchOutcome> {
        let done = self.inner.update(key.as_ref(), |cur| {
            Ok(match cur {
                None => Action::Keep,
                Some(it) => Action::Write {
                    value: Cow::Owned(it.value.clone()),
                    flags: it.flags,
                    expiry,
                    cas: Some(it.cas),
                },
            })
        })?;
        Ok(if done.is_some() {
            TouchOutcome::Touched
        } else {
            TouchOutcome::NotFound
        })
    }

    /// Removes `key`; `true` if it was present (and not expired).
    ///
    /// # Errors
    /// Key errors, [`Error::Io`], [`Error::ReadOnly`].
    pub fn delete(&self, key: impl AsRef<[u8]>) -> Result<bool> {
        self.inner.delete(key.as_ref())
    }

    /// Removes every key, atomically: after a crash, all old data or none.
    /// Also cancels a pending [`Store::clear_after`].
    ///
    /// # Errors
    /// [`Error::Io`] if the new generation cannot be created,
    /// [`Error::ReadOnly`].
    pub fn clear(&self) -> Result<()> {
        self.inner.clear_now()
    }

    /// Clears the store `delay` from now (memcached `flush_all <delay>`);
    /// the pending clear is persisted and survives a restart. A zero delay
    /// clears now. A later call replaces an earlier pending one.
    ///
    /// # Errors
    /// As [`Store::clear`]; [`Error::Io`] if the deadline cannot be saved.
    pub fn clear_after(&self, delay: Duration) -> Result<()> {
        if delay.is_zero() {
            return self.inner.clear_now();
        }
        let inner = &self.inner;
        inner.check_writable()?;
        let _c = inner.clear_lock.lock();
        let deadline = now_millis().saturating_add(delay.as_millis() as u64).max(1);
        write_small_file(
            &*inner.fs,
            &inner.dir,
            layout::CLEAR_AT_FILE,
            format!("{deadline}\n").as_bytes(),
            inner.durability != Durability::Never,
        )?;
        inner.clear_deadline.store(deadline, Ordering::SeqCst);
        Ok(())
    }

    /// Whether `key` is present and not expired.
    ///
    /// # Errors
    /// As [`Store::get`].
    pub fn contains_key(&self, key: impl AsRef<[u8]>) -> Result<bool> {
        Ok(self.inner.fetch(key.as_ref())?.is_some())
    }

    /// Number of keys in the map (expired items not yet removed count).
    pub fn len(&self) -> usize {
        let _ = self.inner.clear_if_due();
        let gen = self.inner.current_gen();
        self.inner.counted(|| {
            let mut count = gen.map.len();
            // Staged changes the map does not reflect yet.
            for (key, put) in self.inner.pending.snapshot() {
                let mapped = gen.map.lookup((self.inner.hasher)(&key), &key).is_some();
                match (put, mapped) {
                    (true, false) => count += 1,
                    (false, true) => count = count.saturating_sub(1),
                    _ => {}
                }
            }
            count
        })
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// All keys, in no particular order (expired items not yet removed
    /// included).
    ///
    /// # Errors
    /// [`Error::Io`] if a pending clear is due and fails.
    pub fn keys(&self) -> Result<Vec<Vec<u8>>> {
        self.inner.clear_if_due()?;
        let gen = self.inner.current_gen();
        Ok(self.inner.counted(|| {
            let staged = self.inner.pending.snapshot();
            if staged.is_empty() {
                return gen
                    .map
                    .snapshot()
                    .into_iter()
                    .map(|(k, _)| k.into_vec())
                    .collect();
            }
            // Staged changes the map does not reflect yet.
            let staged: HashMap<Box<[u8]>, bool> = staged.into_iter().collect();
            let mut keys: Vec<Vec<u8>> = gen
                .map
                .snapshot()
                .into_iter()
                .filter(|(k, _)| staged.get(k).copied().unwrap_or(true))
                .map(|(k, _)| k.into_vec())
                .collect();
            keys.extend(
                staged
                    .into_iter()
                    .filter(|(k, put)| *put && gen.map.lookup((self.inner.hasher)(k), k).is_none())
                    .map(|(k, _)| k.into_vec()),
            );
            keys
        }))
    }

    /// Defers, on this thread, the wait for the journal flush that a
    /// `Durability::Always` store makes before each call returns, so that
    /// a batch of calls (a server's pipeline of requests) shares one wait,
    /// or hands it off ([`Unsynced::then`]). See [`DeferredAcks`]: the
    /// results of the calls made while it lives must not be passed on
    /// before its [`DeferredAcks::take`] is durable. Nothing changes in
    /// the other modes.
    ///
    /// ```
    /// # fn main() -> kvstore_core::Result<()> {
    /// use kvstore_core::{Durability, Options, Store};
    /// let dir = tempfile::tempdir().unwrap();
    /// let store = Store::open_with(dir.path(), Options::default().durability(Durability::Always))?;
    /// let acks = store.defer_acks();
    /// store.set("a", "1")?;
    /// store.set("b", "2")?;
    /// // One flush for both sets; only then are they reported as done.
    /// if let Some(unsynced) = acks.take() {
    ///     unsynced.wait()?;
    /// }
    /// # Ok(()) }
    /// ```
    pub fn defer_acks(&self) -> DeferredAcks {
        DeferredAcks::begin(self.inner.clone())
    }

    /// Makes everything written so far durable (`syncfs`), whatever the
    /// durability mode.
    ///
    /// # Errors
    /// [`Error::Io`] if the flush fails (the store then turns read-only),
    /// [`Error::ReadOnly`] if an earlier one did.
    pub fn flush(&self) -> Result<()> {
        self.inner.check_writable()?;
        if self.inner.journaled_behind() {
            self.inner.flush_and_apply(false)?;
        }
        self.inner.group_sync()
    }

    /// Bytes of acknowledged changes waiting to be applied to the value
    /// files (`Durability::Periodic` and `Always`; 0 in `Never`). Bounded by
    /// [`Options::max_pending_bytes`].
    pub fn pending_bytes(&self) -> usize {
        self.inner.pending.bytes()
    }

    /// The bound of [`Store::pending_bytes`]
    /// ([`Options::max_pending_bytes`]).
    pub fn max_pending_bytes(&self) -> usize {
        self.inner.pending.max_bytes()
    }

    /// Testing hook (cargo feature `test-support`, for this crate's own
    /// tests): whether the background pass after open (recycling leftover
    /// files, removing expired items) has finished.
    #[cfg(feature = "test-support")]
    pub fn background_sweep_done(&self) -> bool {
        self.inner.sweep_done.load(Ordering::SeqCst)
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Checks every file of the (closed) store in `dir` against the map and
    /// its checksum.
    ///
    /// # Errors
    /// [`Error::Locked`] while a store has the directory open; [`Error::Io`].
    pub fn verify(dir: impl AsRef<Path>) -> Result<VerifyReport> {
        Store::verify_with(dir, Options::new())
    }

    /// [`Store::verify`] with the file system and key hasher of `options`.
    ///
    /// # Errors
    /// As [`Store::verify`].
    pub fn verify_with(dir: impl AsRef<Path>, options: Options) -> Result<VerifyReport> {
        crate::store::offline::verify(dir.as_ref(), &options)
    }

    /// Rebuilds the map of the (closed) store in `dir` from its value files.
    ///
    /// # Errors
    /// [`Error::Locked`] while a store has the directory open; [`Error::Io`].
    pub fn repair(dir: impl AsRef<Path>) -> Result<RepairReport> {
        Store::repair_with(dir, Options::new())
    }

    /// [`Store::repair`] with the file system and key hasher of `options`.
    ///
    /// # Errors
    /// As [`Store::repair`].
    pub fn repair_with(dir: impl AsRef<Path>, options: Options) -> Result<RepairReport> {
        let dir = dir.as_ref();
        // Writes an `Always` session journaled are replayed first (by an
        // open), so that the rebuilt map sees them. A store too damaged to
        // open is repaired as it is; its journal stays for the next open.
        let journaled = list_names(&*options.file_system, dir)?
            .iter()
            .any(|n| layout::parse_journal_name(n).is_some());
        if journaled {
            match Store::open_with(dir, options.clone().durability(Durability::Never)) {
                Ok(store) => drop(store),
                Err(e @ Error::Locked { .. }) => return Err(e),
                Err(e) => log::warn!("cannot replay the journal before repair: {e}"),
            }
        }
        crate::store::offline::repair(dir, &options)
    }
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.inner.dir)
            .field("durability", &self.inner.durability)
            .field("keys", &self.inner.current_gen().map.len())
            .field("read_only", &self.inner.health.read_only())
            .finish_non_exhaustive()
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.inner.stop.stop();
        if let Some(j) = &self.inner.journal {
            j.stop_syncer();
        }
        {
            let _g = self.inner.doomed.lock();
            self.inner.doomed_cv.notify_all();
        }
        {
            let _g = self.inner.retire.lock();
            self.inner.retire_cv.notify_all();
        }
        for t in self.threads.lock().drain(..) {
            let _ = t.join();
        }
        let inner = &self.inner;
        // A checkpoint the flusher finished after the retirer had stopped.
        let handed_over = inner.retire.lock().take();
        if let Some(old) = handed_over {
            if let Err(e) = inner.retire_journal(&old) {
                log::error!("journal checkpoint failed: {e}");
            }
        }
        if inner.durability != Durability::Never && !inner.health.read_only() {
            // Every staged change is applied first; one that cannot be
            // keeps the journal for the next open to replay.
            let applied = !inner.journaled_behind() || inner.flush_and_apply(false).is_ok();
            if applied && inner.pending.bytes() == 0 {
                let _ = inner.close_journal();
            }
        }
    }
}

/// How often the flusher of an `Always` store applies the pending table
/// (and checkpoints when one is due): often enough to keep the table
/// small, whatever the checkpoint interval.
const ALWAYS_APPLY_INTERVAL: Duration = Duration::from_secs(1);

/// Name of the thread of the pass after open.
const SWEEPER: &str = "kvstore-sweeper";

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(f)
        .map_err(|e| io_err(Path::new(name), e))
}

fn stored(cas: Option<u64>) -> StoreOutcome {
    match cas {
        Some(cas) => StoreOutcome::Stored { cas },
        None => StoreOutcome::NotStored,
    }
}

fn to_item(it: &CachedItem) -> Item {
    Item {
        value: it.value.clone(),
        flags: it.flags,
        expiry: it.expiry,
        cas: it.cas,
    }
}

/// A counter value: ASCII decimal digits only, fitting in 64 bits
/// (memcached also accepts trailing spaces, as written by `incr` into a
/// longer value).
fn parse_counter(value: &[u8]) -> Option<u64> {
    let digits = value.strip_suffix(b"\r\n").unwrap_or(value);
    let end = digits.iter().rposition(|&b| b != b' ').map_or(0, |p| p + 1);
    let digits = &digits[..end];
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

impl Inner {
    /// Runs `view`, a reading of the pending table together with the map,
    /// while no staged change moves from one to the other.
    fn counted<T>(&self, view: impl FnMut() -> T) -> T {
        self.pending.consistent(view)
    }

    fn current_gen(&self) -> Arc<Generation> {
        self.gen.read().clone()
    }

    fn gen_read(&self) -> RwLockReadGuard<'_, Arc<Generation>> {
        self.gen.read()
    }

    fn stripe(&self, hash: u64) -> &Stripe {
        &self.stripes[(hash ^ (hash >> 32)) as usize % STRIPES]
    }

    fn check_value(&self, len: usize) -> Result<()> {
        if len > self.max_value_bytes {
            return Err(Error::ValueTooLarge {
                len,
                max: self.max_value_bytes,
            });
        }
        Ok(())
    }

    fn check_writable(&self) -> Result<()> {
        self.health.check()
    }

    fn set_read_only(&self, reason: String) {
        self.health.fail(reason)
    }

    fn next_cas(&self) -> u64 {
        let n = self.cas_counter.fetch_add(1, Ordering::Relaxed) + 1;
        (self.epoch << 40) | (n & ((1 << 40) - 1))
    }
}
