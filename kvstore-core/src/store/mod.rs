//! The `Store`: the only code that decides which file holds what.
//!
//! # How a write works
//! Every key lives in one value file, `gen-<N>/<hh>/<hash>[.<i>]`. A write
//! never modifies a live file: the new record goes into a *spare* file of
//! the same subdirectory (a recycled inode, written at offset 0 without
//! truncation: the record header carries its length and checksum), which is
//! then swapped with the live name by `renameat2(RENAME_EXCHANGE)`. The old
//! inode becomes the next spare, so an overwrite frees no inode and no block
//! (both are expensive on ext4 with `discard`). A new key renames a spare
//! (or a freshly created file) to its name; a delete renames the key's file
//! back to a spare name. Where exchange is unsupported the store falls back
//! to temp file + rename.
//!
//! Readers never take a lock: they open the live name and read it. A spare
//! may be rewritten while a slow reader still holds its inode; the checksum
//! and the stored key catch that, and the reader retries under the key's
//! stripe lock.
//!
//! # The life of a spare, and power cuts in `Periodic` mode
//! `Always` journals every write before it touches a file (the record is
//! appended to a write-ahead journal and flushed, shared by concurrent
//! writers), so a power cut finds every acknowledged record: reopening
//! replays the journal onto whatever the files hold (`store/journal.rs`).
//! `Never` promises nothing for a power cut: a freed file is reusable at
//! once. `Periodic` flushes only every interval, and the disk may receive
//! a swap before the data written into the spare. Its promise (a power cut
//! loses at most the writes since the last completed flush) rests on four
//! rules:
//!
//! 1. **Held.** The old file of a swap (and a removed key's file) may hold
//!    the key's last flushed record. It stays untouched, *held*, until a
//!    flush that started after the swap has completed (`flush_started` /
//!    `flush_done` number every `syncfs`, whoever runs it).
//! 2. **Neutral.** After that flush, the flusher overwrites its first bytes
//!    ([`NEUTRAL`]) so that it can never parse as a record, and it becomes
//!    reusable once the next flush (run right away) has completed. So a
//!    reused spare's durable content is never a valid record: if a swap
//!    reaches the disk before the new data, the key's name shows a
//!    neutral, torn or empty file, never an older value. Reuse thus waits
//!    for flushes: a writer that finds no reusable spare creates a file
//!    and kicks the flusher to run early (at most every `KICK_GAP`), and
//!    the pool keeps more spares (`PERIODIC_SPARES_PER_SUBDIR`).
//! 3. **Recovery.** A key whose file holds no good record of it is
//!    recovered from its subdirectory: among its spares *and* the value
//!    files of the other collision indexes of its hash (where a removal's
//!    file stays when its move to the spares did not reach the disk, see
//!    rule 4), the record or tombstone of that key with the highest cas
//!    decides; a record (the held old file, or a newer one that made it) is
//!    swapped back in. Reads do it under the key's stripe lock (only on
//!    that failure path: a good file costs nothing extra), and so does the
//!    sweep after open for every spare of an earlier session and every
//!    stray value file that holds a record or tombstone, before it
//!    neutralizes that file. [`Store::verify`] reports such a key as
//!    recoverable and [`Store::repair`] restores it (both when given
//!    `Periodic` options, the default).
//! 4. **Tombstones.** A removal writes a tombstone (the key and a new cas,
//!    [`record::TOMBSTONE_MAGIC`]) over the key's file and over its held
//!    old files before moving the file to the spares, so recovery never
//!    brings back a removed value (a tombstone with a higher cas than every
//!    record means absent), and a new key is not placed on a name that a
//!    file left since the last completed flush (the next collision index
//!    is used), so that the departed file, which may hold the flushed
//!    record, cannot be lost under the new name. If the power cut drops
//!    the move, that file (the flushed record, or its tombstone) is still
//!    under the old index when the key, re-added under the next one, shows
//!    a bad file: rule 3 looks there too. Skipping it would let an older
//!    record, in a spare whose neutralization was not durable yet, win.
//!
//! A new key's file whose data did not reach the disk reads as absent (it
//! was written in the window). Where exchange is unsupported (the rename
//! fallback), rule 1 cannot hold and `Periodic` may lose a key written in
//! the window.
//!
//! # The map and its log
//! In memory: key -> collision index (`u16`), in sharded `RwLock`ed hash
//! maps. On disk: `map.log`, appended only when a key gets a file or loses
//! it, compacted when most records are dead. The value files are the truth:
//! a map entry whose file is missing or holds another key reads as absent;
//! a file no map entry points to is a leftover (it is recycled as a spare).
//!
//! # Clear
//! Generations: the data lives in `gen-<N>/`, `CURRENT` names N. A clear
//! creates gen N+1 with an empty map log, switches `CURRENT` (temp + rename)
//! and deletes gen N in a background thread. Any generation that `CURRENT`
//! does not name is deleted on open.

use std::borrow::Cow;
use std::collections::HashMap;
use std::ffi::OsString;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard};
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

mod clear;
mod durability;
mod files;
mod journal;
mod map;
mod open;
mod read;
mod scan;
mod spares;
mod verify;
mod write;

pub use scan::ScanCursor;

use self::clear::*;
use self::durability::*;
use self::files::*;
use self::journal::*;
use self::map::*;
use self::open::*;
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
/// In `Periodic` mode, where freed files wait for a flush before reuse, the
/// pool keeps more of them (about one interval's worth of overwrites).
const PERIODIC_SPARES_PER_SUBDIR: usize = 512;
/// Shortest gap between flushes asked for by writers short of spares.
const KICK_GAP: Duration = Duration::from_millis(20);
/// What a spare is overwritten with (at offset 0) in `Periodic` mode before
/// it may be reused, so that it can never parse as a record again.
const NEUTRAL: [u8; 4] = [0; 4];
/// First read of a value file; larger records take a second read.
const FIRST_READ: usize = 4096;
/// Compaction starts when the log has more than this many dead records...
const COMPACT_MIN_DEAD: u64 = 4096;
/// ...and dead records outnumber live ones by this factor.
const COMPACT_DEAD_RATIO: u64 = 2;

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

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
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
        let guard = lock(&self.mutex);
        if self.stopped() {
            return true;
        }
        if !self.kicked.swap(false, Ordering::SeqCst) {
            let _ = self.cv.wait_timeout(guard, d);
            self.kicked.store(false, Ordering::SeqCst);
        }
        self.stopped()
    }

    /// Ends the current [`Stop::wait`] early (or the next one at once).
    fn kick(&self) {
        if !self.kicked.swap(true, Ordering::SeqCst) {
            let _guard = lock(&self.mutex);
            self.cv.notify_all();
        }
    }

    fn stop(&self) {
        let _guard = lock(&self.mutex);
        self.flag.store(true, Ordering::Relaxed);
        self.cv.notify_all();
    }
}

/// One shard of the in-memory map: key -> collision index of its file.
type MapShard = RwLock<HashMap<Box<[u8]>, u16>>;

/// One generation: a directory of value files with its map.
struct Generation {
    dir: PathBuf,
    /// Its number (the `<N>` of `gen-<N>`), which journal entries carry.
    number: u64,
    shards: Box<[MapShard]>,
    count: AtomicUsize,
    log: Mutex<LogState>,
    subdir_ready: Box<[AtomicBool]>,
    spares: Box<[Mutex<SparePool>]>,
    spare_counter: AtomicU64,
    expiring_marked: AtomicBool,
}

impl Generation {
    fn shard(&self, hash: u64) -> &MapShard {
        &self.shards[(hash as usize) % MAP_SHARDS]
    }

    fn lookup(&self, hash: u64, key: &[u8]) -> Option<u16> {
        self.shard(hash)
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .copied()
    }

    fn value_path(&self, hash: u64, idx: u16) -> PathBuf {
        self.dir.join(layout::value_rel_path(hash, idx))
    }

    fn subdir_path(&self, sub: usize) -> PathBuf {
        self.dir.join(format!("{sub:02x}"))
    }

    fn spare_path(&self, sub: usize, id: u64) -> PathBuf {
        self.subdir_path(sub).join(layout::spare_name(id))
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join(layout::MAP_LOG)
    }

    /// Puts keys found by scanning the value files into the map and
    /// recounts it.
    fn insert_scanned(&self, keys: Vec<(Box<[u8]>, u16)>, hasher: fn(&[u8]) -> u64) {
        for (key, idx) in keys {
            self.shard(hasher(&key))
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key, idx);
        }
        let count = self
            .shards
            .iter()
            .map(|s| s.read().unwrap_or_else(|e| e.into_inner()).len())
            .sum();
        self.count.store(count, Ordering::Relaxed);
    }

    fn map_snapshot(&self) -> Vec<(Box<[u8]>, u16)> {
        let mut out = Vec::with_capacity(self.count.load(Ordering::Relaxed));
        for shard in self.shards.iter() {
            let shard = shard.read().unwrap_or_else(|e| e.into_inner());
            out.extend(shard.iter().map(|(k, &i)| (k.clone(), i)));
        }
        out
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
    read_only: AtomicBool,
    read_only_reason: Mutex<String>,
    group: GroupSync,
    /// Number of the last `syncfs` started / completed (group commit and
    /// the periodic flusher alike): a spare freed when `flush_started` was
    /// `n` is covered once `flush_done > n`.
    flush_started: AtomicU64,
    flush_done: AtomicU64,
    exchange_supported: AtomicBool,
    noreplace_supported: AtomicBool,
    stop: Stop,
    /// Set when the background sweep after open has finished.
    sweep_done: AtomicBool,
    /// Bumped by every change on disk, so the periodic flusher can skip
    /// idle intervals.
    changes: AtomicU64,
    /// The write-ahead journal (`Always` mode only).
    journal: Option<Journal>,
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
        let periodic = matches!(options.durability, Durability::Periodic(_));
        if !periodic && periodic_session_left(&*fs, &dir)? {
            Store::recover_periodic_session(&dir, &options)?;
        }
        create_dir_all(&*fs, &dir)?;
        let dir_lock = lock_dir(&*fs, &dir)?;
        let sync_meta = options.durability != Durability::Never;
        if periodic {
            // Made durable with EPOCH below (same directory, synced).
            create_if_missing(&*fs, &dir.join(layout::PERIODIC_MARK), b"")?;
        }

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
        let generation = load_generation(&*fs, &gen_dir, options.key_hasher, sync_meta, epoch)?;

        let clear_deadline = read_u64_file(&*fs, &dir.join(layout::CLEAR_AT_FILE))?.unwrap_or(0);
        let doomed: Vec<PathBuf> = gens
            .iter()
            .filter(|&&n| n != current)
            .map(|&n| dir.join(layout::gen_name(n)))
            .collect();
        let next_gen = gens.iter().copied().chain([current]).max().unwrap_or(0) + 1;
        let journal = match options.durability {
            Durability::Always => {
                let seq = journals.iter().map(|&(n, _)| n + 1).max().unwrap_or(0);
                Some(Journal::create(&*fs, &dir, seq)?)
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
            read_only: AtomicBool::new(false),
            read_only_reason: Mutex::new(String::new()),
            group: GroupSync::default(),
            flush_started: AtomicU64::new(0),
            flush_done: AtomicU64::new(0),
            exchange_supported: AtomicBool::new(true),
            noreplace_supported: AtomicBool::new(true),
            stop: Stop::default(),
            sweep_done: AtomicBool::new(false),
            changes: AtomicU64::new(0),
            journal,
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
        if let Durability::Periodic(every) = options.durability {
            let inner = inner.clone();
            let every = every.max(Duration::from_millis(1));
            threads.push(spawn("kvstore-flusher", move || inner.flusher_loop(every))?);
        }
        if inner.journal.is_some() {
            let inner = inner.clone();
            let every = options.checkpoint_interval;
            threads.push(spawn("kvstore-checkpointer", move || {
                inner.checkpointer_loop(every)
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
        let _c = lock(&inner.clear_lock);
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
        self.inner.current_gen().count.load(Ordering::Relaxed)
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
        Ok(gen
            .map_snapshot()
            .into_iter()
            .map(|(k, _)| k.into_vec())
            .collect())
    }

    /// Makes everything written so far durable (`syncfs`), whatever the
    /// durability mode.
    ///
    /// # Errors
    /// [`Error::Io`] if the flush fails (the store then turns read-only),
    /// [`Error::ReadOnly`] if an earlier one did.
    pub fn flush(&self) -> Result<()> {
        self.inner.check_writable()?;
        self.inner.group_sync()
    }

    /// The last session of the store in `dir` ran in `Periodic` mode and
    /// did not close (its [`layout::PERIODIC_MARK`] is there): its power-cut
    /// leftovers may hold keys that only `Periodic`'s recovery brings back
    /// (see `store/open.rs`). Opens the store in `Periodic` mode, lets the
    /// pass after open (which reads every leftover's key, recovering it)
    /// finish, and closes it cleanly; the caller then opens it as asked.
    fn recover_periodic_session(dir: &Path, options: &Options) -> Result<()> {
        let store = Store::open_with(dir, options.clone().durability(Durability::default()))?;
        log::info!(
            "{}: the last session ran in Periodic mode and did not close; recovering as it would",
            dir.display()
        );
        loop {
            let sweeper_running = lock(&store.threads)
                .iter()
                .any(|t| t.thread().name() == Some(SWEEPER) && !t.is_finished());
            if store.background_sweep_done() || !sweeper_running {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        drop(store);
        Ok(())
    }

    /// Testing hook: whether the background pass after open (recycling
    /// leftover files, removing expired items) has finished.
    #[doc(hidden)]
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
            .field(
                "keys",
                &self.inner.current_gen().count.load(Ordering::Relaxed),
            )
            .field("read_only", &self.inner.read_only.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.inner.stop.stop();
        {
            let _g = lock(&self.inner.doomed);
            self.inner.doomed_cv.notify_all();
        }
        for t in lock(&self.threads).drain(..) {
            let _ = t.join();
        }
        if self.inner.durability != Durability::Never
            && !self.inner.read_only.load(Ordering::SeqCst)
        {
            if self.inner.journal.is_some() {
                let _ = self.inner.close_journal();
            } else if self.inner.group_sync().is_ok() && self.inner.periodic() {
                // Everything is durable: nothing for a recovery to find.
                let _ = self
                    .inner
                    .fs
                    .remove_file(&self.inner.dir.join(layout::PERIODIC_MARK));
            }
        }
    }
}

/// Name of the thread of the pass after open.
const SWEEPER: &str = "kvstore-sweeper";

/// Whether the store in `dir` has a [`layout::PERIODIC_MARK`]: its last
/// `Periodic` session did not close.
pub(crate) fn periodic_session_left(fs: &dyn FileSystem, dir: &Path) -> Result<bool> {
    let mark = dir.join(layout::PERIODIC_MARK);
    match fs.file_len(&mark) {
        Ok(len) => Ok(len.is_some()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err(&mark, e)),
    }
}

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
    fn current_gen(&self) -> Arc<Generation> {
        self.gen.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn gen_read(&self) -> RwLockReadGuard<'_, Arc<Generation>> {
        self.gen.read().unwrap_or_else(|e| e.into_inner())
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
        if self.read_only.load(Ordering::SeqCst) {
            return Err(Error::ReadOnly {
                reason: lock(&self.read_only_reason).clone(),
            });
        }
        Ok(())
    }

    fn set_read_only(&self, reason: String) {
        let mut r = lock(&self.read_only_reason);
        if !self.read_only.swap(true, Ordering::SeqCst) {
            *r = reason;
        }
    }

    fn next_cas(&self) -> u64 {
        let n = self.cas_counter.fetch_add(1, Ordering::Relaxed) + 1;
        (self.epoch << 40) | (n & ((1 << 40) - 1))
    }
}
