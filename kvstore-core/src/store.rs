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
//! `Always` flushes the spare's data before the swap and the swap before
//! the old file is reused, so a power cut finds every acknowledged record.
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
//!    recovered from its subdirectory's spares: the record of that key
//!    with the highest cas (the held old file, or a newer one that made it)
//!    is swapped back in. Reads do it under the key's stripe lock (only on
//!    that failure path: a good file costs nothing extra), and so does the
//!    sweep after open for every spare of an earlier session that holds a
//!    record, before it neutralizes the spare.
//! 4. **Tombstones.** A removal writes a tombstone (the key and a new cas,
//!    [`record::TOMBSTONE_MAGIC`]) over the key's file and over its held
//!    old files before moving the file to the spares, so recovery never
//!    brings back a removed value (a tombstone with a higher cas than every
//!    record means absent), and a new key is not placed on a name that a
//!    file left since the last completed flush (the next collision index
//!    is used), so that the departed file, which may hold the flushed
//!    record, cannot be lost under the new name.
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

/// What [`Store::verify`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Value files read and checked.
    pub files_checked: u64,
    /// Keys whose file matched the map and its checksum.
    pub keys_ok: u64,
    /// One line per problem found; empty when the store is sound.
    pub problems: Vec<String>,
    /// Value files no map entry points to: leftovers of an interrupted
    /// write, harmless (recycled on the next open), not counted as problems.
    pub stray_files: u64,
    /// Recycled spare files (not values).
    pub spare_files: u64,
    /// The live generation.
    pub generation: u64,
    /// Directories of cleared generations not yet deleted (deletion runs
    /// in the background and resumes on the next open); not problems.
    pub old_generations: u64,
    /// Map entries whose value file is missing: left by a delete
    /// interrupted between its two steps; they read as absent and are
    /// dropped on the next access, so not counted as problems.
    pub dangling_entries: u64,
}

impl VerifyReport {
    /// Whether no problem was found.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "generation: {}", self.generation)?;
        writeln!(f, "value files checked: {}", self.files_checked)?;
        writeln!(f, "keys ok: {}", self.keys_ok)?;
        writeln!(f, "stray files: {}", self.stray_files)?;
        writeln!(f, "spare files: {}", self.spare_files)?;
        writeln!(f, "dangling map entries: {}", self.dangling_entries)?;
        writeln!(
            f,
            "old generations pending deletion: {}",
            self.old_generations
        )?;
        if self.problems.is_empty() {
            write!(f, "status: ok")
        } else {
            writeln!(f, "problems: {}", self.problems.len())?;
            for p in &self.problems {
                writeln!(f, "  {p}")?;
            }
            write!(f, "status: damaged (run repair)")
        }
    }
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

impl fmt::Display for RepairReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "value files scanned: {}", self.files_scanned)?;
        writeln!(f, "keys recovered: {}", self.keys_recovered)?;
        writeln!(f, "files dropped: {}", self.files_dropped)?;
        if self.problems.is_empty() {
            write!(f, "problems: none")
        } else {
            write!(f, "problems: {}", self.problems.len())?;
            for p in &self.problems {
                write!(f, "\n  {p}")?;
            }
            Ok(())
        }
    }
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

/// Group commit: a writer waits until a flush that started after its
/// writes has finished; one leader flushes for all waiting writers.
#[derive(Default)]
struct GroupSync {
    state: Mutex<SyncState>,
    cv: Condvar,
}

#[derive(Default)]
struct SyncState {
    requested: u64,
    done: u64,
    running: bool,
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

struct LogState {
    file: Box<dyn AppendFile>,
    /// Records in the file (live and dead).
    records: u64,
}

/// One shard of the in-memory map: key -> collision index of its file.
type MapShard = RwLock<HashMap<Box<[u8]>, u16>>;

/// One generation: a directory of value files with its map.
struct Generation {
    dir: PathBuf,
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

    fn map_snapshot(&self) -> Vec<(Box<[u8]>, u16)> {
        let mut out = Vec::with_capacity(self.count.load(Ordering::Relaxed));
        for shard in self.shards.iter() {
            let shard = shard.read().unwrap_or_else(|e| e.into_inner());
            out.extend(shard.iter().map(|(k, &i)| (k.clone(), i)));
        }
        out
    }
}

/// The spare files of one subdirectory, by id.
///
/// `ready` spares may be overwritten by the next write. In `Periodic` mode
/// a freed file goes through two waiting states first (see the module
/// docs): `held` (it may still hold the flushed value of a key whose
/// exchange is not durable yet) and `neutral` (overwritten with
/// [`NEUTRAL`], waiting until that is durable).
#[derive(Default)]
struct SparePool {
    ready: Vec<u64>,
    held: Vec<Held>,
    /// (id, flush number that makes its neutralization durable).
    neutral: Vec<(u64, u64)>,
}

/// `Held::idx` of a spare of an earlier session: the name it left is
/// unknown; a removal of any key of its hash tombstones it.
const ANY_IDX: u16 = u16::MAX;

/// A freed file that may hold the last flushed record of the key whose
/// name it was swapped out of.
struct Held {
    id: u64,
    /// The value name it was swapped out of.
    hash: u64,
    idx: u16,
    /// Flush number that makes the swap durable.
    need: u64,
}

impl SparePool {
    fn contains(&self, id: u64) -> bool {
        self.ready.contains(&id)
            || self.held.iter().any(|h| h.id == id)
            || self.neutral.iter().any(|&(n, _)| n == id)
    }

    fn forget(&mut self, id: u64) {
        self.ready.retain(|&n| n != id);
        self.held.retain(|h| h.id != id);
        self.neutral.retain(|&(n, _)| n != id);
    }

    /// Spares counted against the pool's size; held ones are not
    /// (they are bounded by the writes of one or two flush intervals).
    fn len(&self) -> usize {
        self.ready.len() + self.neutral.len()
    }
}

/// What a read of a value file found.
enum FileRead {
    /// A good record of the key asked for.
    Found(CachedItem),
    /// No file by that name.
    Missing,
    /// A good record of another key.
    OtherKey,
    /// A damaged file.
    Corrupt(String),
    /// A tombstone of the key asked for (`Periodic`: a removal), with its
    /// cas.
    Tombstone(u64),
}

/// What a conditional update decides.
enum Action<'a> {
    /// Leave the key alone.
    Keep,
    /// Write this value; `cas: None` draws a new cas.
    Write {
        value: Cow<'a, [u8]>,
        flags: u32,
        expiry: Expiry,
        cas: Option<u64>,
    },
}

/// The key's state as seen under its stripe lock.
struct Current {
    idx: Option<u16>,
    item: Option<Arc<CachedItem>>,
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
        for name in list_names(&*fs, &dir)? {
            if let Some(n) = layout::parse_gen_name(&name) {
                gens.push(n);
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
            doomed: Mutex::new(doomed),
            doomed_cv: Condvar::new(),
            _lock: dir_lock,
        });

        let mut threads = Vec::new();
        {
            let inner = inner.clone();
            threads.push(spawn("kvstore-deleter", move || inner.deleter_loop())?);
        }
        {
            let inner = inner.clone();
            threads.push(spawn("kvstore-sweeper", move || {
                inner.sweep();
                inner.sweep_done.store(true, Ordering::SeqCst);
            })?);
        }
        if let Durability::Periodic(every) = options.durability {
            let inner = inner.clone();
            let every = every.max(Duration::from_millis(1));
            threads.push(spawn("kvstore-flusher", move || inner.flusher_loop(every))?);
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
        crate::store::offline::repair(dir.as_ref(), &options)
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
            let _ = self.inner.group_sync();
        }
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

    /// Clears the store if a `clear_after` deadline has passed.
    fn clear_if_due(&self) -> Result<()> {
        let deadline = self.clear_deadline.load(Ordering::Relaxed);
        if deadline == 0 || now_millis() < deadline {
            return Ok(());
        }
        let guard = lock(&self.clear_lock);
        let deadline = self.clear_deadline.load(Ordering::SeqCst);
        if deadline == 0 || now_millis() < deadline {
            return Ok(());
        }
        self.clear_locked(guard)
    }

    fn clear_now(&self) -> Result<()> {
        let guard = lock(&self.clear_lock);
        self.clear_locked(guard)
    }

    /// Switches to a fresh generation. Holds the clear lock (so a due
    /// deadline is acted on once) and the generation write lock (so no
    /// operation is in flight).
    fn clear_locked(&self, _clear: MutexGuard<'_, ()>) -> Result<()> {
        self.check_writable()?;
        let sync_meta = self.durability != Durability::Never;
        let mut gen = self.gen.write().unwrap_or_else(|e| e.into_inner());
        let n = self.next_gen.fetch_add(1, Ordering::SeqCst);
        let gen_dir = self.dir.join(layout::gen_name(n));
        create_generation_dir(&*self.fs, &gen_dir, sync_meta)?;
        let new_gen = match load_generation(&*self.fs, &gen_dir, self.hasher, sync_meta, self.epoch)
        {
            Ok(g) => g,
            Err(e) => {
                lock(&self.doomed).push(gen_dir);
                return Err(e);
            }
        };
        if let Err(e) = write_small_file(
            &*self.fs,
            &self.dir,
            layout::CURRENT_FILE,
            layout::current_contents(n).as_bytes(),
            sync_meta,
        ) {
            // Whether CURRENT was switched is unknown now (the rename or
            // its flush failed): refuse writes until a reopen decides.
            self.set_read_only(format!("switching generation failed: {e}"));
            return Err(e);
        }
        self.changes.fetch_add(1, Ordering::SeqCst);
        let old = std::mem::replace(&mut *gen, Arc::new(new_gen));
        self.cache.clear();
        for s in self.stripes.iter() {
            s.seq.fetch_add(1, Ordering::Release);
        }
        drop(gen);
        if self.clear_deadline.swap(0, Ordering::SeqCst) != 0 {
            let _ = self.fs.remove_file(&self.dir.join(layout::CLEAR_AT_FILE));
        }
        let mut doomed = lock(&self.doomed);
        doomed.push(old.dir.clone());
        self.doomed_cv.notify_all();
        Ok(())
    }

    /// Reads the key's item (cache, then file) without taking its stripe
    /// lock; falls back to a locked read when the file looks inconsistent.
    fn fetch(&self, key: &[u8]) -> Result<Option<Arc<CachedItem>>> {
        self.clear_if_due()?;
        validate_key(key)?;
        let hash = (self.hasher)(key);
        if let Some(it) = self.cache.get(hash, key) {
            if !expired(it.expiry) {
                return Ok(Some(it));
            }
            self.remove_if_expired(key)?;
            return Ok(None);
        }
        let gen = self.gen_read();
        let stripe = self.stripe(hash);
        let seq = stripe.seq.load(Ordering::Acquire);
        let Some(idx) = gen.lookup(hash, key) else {
            return Ok(None);
        };
        if let FileRead::Found(item) = self.read_file(&gen, hash, idx, key)? {
            if expired(item.expiry) {
                drop(gen);
                self.remove_if_expired(key)?;
                return Ok(None);
            }
            let item = Arc::new(item);
            if self.cache_enabled {
                self.cache.insert_if(hash, key, item.clone(), || {
                    stripe.seq.load(Ordering::Acquire) == seq
                });
            }
            return Ok(Some(item));
        }
        // Missing, another key, or damage: look again under the lock, where
        // no writer can be between steps.
        let _g = lock(&stripe.lock);
        let cur = self.current(&gen, hash, key)?;
        if let Some(item) = &cur.item {
            self.cache.insert(hash, key, item.clone());
        }
        Ok(cur.item)
    }

    /// Reads and checks the value file of (hash, idx).
    fn read_file(&self, gen: &Generation, hash: u64, idx: u16, key: &[u8]) -> Result<FileRead> {
        self.read_record(&gen.value_path(hash, idx), key)
    }

    /// Reads and checks the file at `path` as a record of `key`.
    fn read_record(&self, path: &Path, key: &[u8]) -> Result<FileRead> {
        let path = path.to_path_buf();
        let mut buf = match self.fs.read_at(&path, 0, FIRST_READ) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(FileRead::Missing),
            Err(e) => return Err(io_err(&path, e)),
        };
        let header = match record::decode_header(&buf) {
            Ok(h) => h,
            Err(what) => {
                return Ok(match record::decode_tombstone(&buf) {
                    Some((k, cas)) if k == key => FileRead::Tombstone(cas),
                    Some(_) => FileRead::OtherKey,
                    None => FileRead::Corrupt(what),
                })
            }
        };
        let len = header.record_len();
        if len > buf.len() && buf.len() == FIRST_READ {
            let rest = self
                .fs
                .read_at(&path, FIRST_READ as u64, len - FIRST_READ)
                .map_err(|e| io_err(&path, e))?;
            buf.extend_from_slice(&rest);
        }
        match record::decode(&buf) {
            Ok(rec) if rec.key == key => Ok(FileRead::Found(CachedItem {
                value: rec.value.to_vec(),
                flags: rec.flags,
                expiry: rec.expiry,
                cas: rec.cas,
            })),
            Ok(_) => Ok(FileRead::OtherKey),
            Err(what) => Ok(FileRead::Corrupt(what)),
        }
    }

    /// The key's state; the caller holds its stripe lock. Repairs what it
    /// finds inconsistent: a map entry without a good file is dropped.
    fn current(&self, gen: &Generation, hash: u64, key: &[u8]) -> Result<Current> {
        let Some(idx) = gen.lookup(hash, key) else {
            return Ok(Current {
                idx: None,
                item: None,
            });
        };
        if let Some(it) = self.cache.get(hash, key) {
            let item = (!expired(it.expiry)).then_some(it);
            return Ok(Current {
                idx: Some(idx),
                item,
            });
        }
        match self.read_file(gen, hash, idx, key)? {
            FileRead::Found(item) => {
                let item = (!expired(item.expiry)).then(|| Arc::new(item));
                Ok(Current {
                    idx: Some(idx),
                    item,
                })
            }
            found @ (FileRead::OtherKey | FileRead::Corrupt(_)) if self.periodic() => {
                match self.recover(gen, hash, idx, key)? {
                    Some(item) => {
                        let item = (!expired(item.expiry)).then(|| Arc::new(item));
                        Ok(Current {
                            idx: Some(idx),
                            item,
                        })
                    }
                    None => self.drop_bad_file(gen, hash, idx, key, found),
                }
            }
            found => self.drop_bad_file(gen, hash, idx, key, found),
        }
    }

    /// `Periodic` mode, stripe lock held: the key's file holds no good
    /// record of it (a power cut let the swap reach the disk before the
    /// data, or the file is damaged). The freed file that held its last
    /// flushed record is still among the subdirectory's spares (held until
    /// the swap is durable): the good record of the key with the highest
    /// cas found there is swapped back in, and the bad file becomes a
    /// neutralized spare. `None` when no spare holds one.
    fn recover(
        &self,
        gen: &Generation,
        hash: u64,
        idx: u16,
        key: &[u8],
    ) -> Result<Option<CachedItem>> {
        let sub = layout::subdir_index(hash);
        let dir = gen.subdir_path(sub);
        let names = match self.fs.list_dir(&dir) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&dir, e)),
        };
        // (cas, spare id, record; `None` for a tombstone).
        let mut best: Option<(u64, u64, Option<CachedItem>)> = None;
        for name in names {
            let Some(id) = name.to_str().and_then(layout::parse_spare_name) else {
                continue;
            };
            let (cas, item) = match self.read_record(&gen.spare_path(sub, id), key)? {
                FileRead::Found(item) => (item.cas, Some(item)),
                FileRead::Tombstone(cas) => (cas, None),
                _ => continue,
            };
            if best.as_ref().map_or(true, |b| cas > b.0) {
                best = Some((cas, id, item));
            }
        }
        // Nothing, or the key was removed after its last record.
        let Some((_, id, Some(item))) = best else {
            return Ok(None);
        };
        let spare = gen.spare_path(sub, id);
        let target = gen.value_path(hash, idx);
        lock(&gen.spares[sub]).forget(id);
        if let Err(e) = self.fs.rename_exchange(&spare, &target) {
            return Err(io_err(&target, e));
        }
        log::warn!(
            "value file {} held no good record: recovered cas {} from a spare",
            target.display(),
            item.cas
        );
        self.stripe(hash).seq.fetch_add(1, Ordering::Release);
        self.cache.remove(hash, key);
        self.give_back(gen, sub, id);
        self.changes.fetch_add(1, Ordering::SeqCst);
        Ok(Some(item))
    }

    /// Drops the key whose file is missing, another key's or damaged.
    fn drop_bad_file(
        &self,
        gen: &Generation,
        hash: u64,
        idx: u16,
        key: &[u8],
        found: FileRead,
    ) -> Result<Current> {
        match found {
            FileRead::Tombstone(_) => {
                // A removal interrupted after its tombstone: finish it.
                self.log_remove(gen, hash, key)?;
                self.retire_file(gen, hash, &gen.value_path(hash, idx))?;
                Ok(Current {
                    idx: None,
                    item: None,
                })
            }
            FileRead::Found(_) | FileRead::Missing | FileRead::OtherKey => {
                // The file went away (interrupted delete) or the name was
                // reused for another key: the key is absent.
                self.log_remove(gen, hash, key)?;
                Ok(Current {
                    idx: None,
                    item: None,
                })
            }
            FileRead::Corrupt(what) => {
                let path = gen.value_path(hash, idx);
                log::warn!("dropping damaged value file {}: {what}", path.display());
                self.retire_file(gen, hash, &path)?;
                self.log_remove(gen, hash, key)?;
                Ok(Current {
                    idx: None,
                    item: None,
                })
            }
        }
    }

    /// Runs `decide` on the key's current item under its stripe lock and
    /// carries out the decision. Returns the cas written, if anything was.
    fn update<'a>(
        &self,
        key: &[u8],
        decide: impl FnOnce(Option<&CachedItem>) -> Result<Action<'a>>,
    ) -> Result<Option<u64>> {
        self.clear_if_due()?;
        validate_key(key)?;
        self.check_writable()?;
        let hash = (self.hasher)(key);
        let gen = self.gen_read();
        let stripe = self.stripe(hash);
        let _g = lock(&stripe.lock);
        let cur = self.current(&gen, hash, key)?;
        let (value, flags, expiry, cas) = match decide(cur.item.as_deref())? {
            Action::Keep => {
                // An expired item found on the way is removed now.
                if cur.item.is_none() && cur.idx.is_some() {
                    self.remove_locked(&gen, hash, key, cur.idx)?;
                }
                return Ok(None);
            }
            Action::Write {
                value,
                flags,
                expiry,
                cas,
            } => (value, flags, expiry, cas.unwrap_or_else(|| self.next_cas())),
        };
        let rec = record::encode(key, &value, flags, expiry, cas).ok_or(Error::ValueTooLarge {
            len: value.len(),
            max: self.max_value_bytes,
        })?;
        if expiry != Expiry::Never {
            self.mark_expiring(&gen)?;
        }
        let written = self.write_record(&gen, hash, key, cur.idx, &rec);
        stripe.seq.fetch_add(1, Ordering::Release);
        if let Err(e) = written {
            // The file may or may not have changed: the cache must not
            // claim either.
            self.cache.remove(hash, key);
            return Err(e);
        }
        if self.cache_enabled {
            let item = CachedItem {
                value: value.into_owned(),
                flags,
                expiry,
                cas,
            };
            self.cache.insert(hash, key, Arc::new(item));
        }
        Ok(Some(cas))
    }

    fn delete(&self, key: &[u8]) -> Result<bool> {
        self.clear_if_due()?;
        validate_key(key)?;
        self.check_writable()?;
        let hash = (self.hasher)(key);
        let gen = self.gen_read();
        let stripe = self.stripe(hash);
        let _g = lock(&stripe.lock);
        let cur = self.current(&gen, hash, key)?;
        if cur.idx.is_some() {
            self.remove_locked(&gen, hash, key, cur.idx)?;
        }
        Ok(cur.item.is_some())
    }

    /// Removes the key if it is (still) expired.
    fn remove_if_expired(&self, key: &[u8]) -> Result<()> {
        if self.read_only.load(Ordering::SeqCst) {
            return Ok(());
        }
        let hash = (self.hasher)(key);
        let gen = self.gen_read();
        let stripe = self.stripe(hash);
        let _g = lock(&stripe.lock);
        let cur = self.current(&gen, hash, key)?;
        if cur.item.is_none() && cur.idx.is_some() {
            self.remove_locked(&gen, hash, key, cur.idx)?;
        }
        Ok(())
    }

    /// Logs the removal, then moves the key's file to the spare pool. The
    /// caller holds the stripe lock.
    ///
    /// The log record comes first so that a failed append leaves the key
    /// and its file untouched (the previous value stays readable); once it
    /// is written the key is gone, and a file that cannot be moved away is
    /// a harmless stray (verify counts it, the next write of that hash
    /// reuses it).
    fn remove_locked(
        &self,
        gen: &Generation,
        hash: u64,
        key: &[u8],
        idx: Option<u16>,
    ) -> Result<()> {
        let Some(idx) = idx else { return Ok(()) };
        self.log_remove(gen, hash, key)?;
        self.stripe(hash).seq.fetch_add(1, Ordering::Release);
        self.cache.remove(hash, key);
        self.barrier()?;
        let path = gen.value_path(hash, idx);
        if self.periodic() {
            return self.retire_removed(gen, hash, idx, key);
        }
        if let Err(e) = self.retire_file(gen, hash, &path) {
            log::warn!("removed key's file left in place: {e}");
        }
        self.barrier()
    }

    /// Turns a value file into a spare (or removes it when the pool is
    /// full). A missing file is fine.
    ///
    /// In `Periodic` mode the file is neutralized first, so that a flush
    /// that makes its removal durable also makes it unreadable as a record
    /// (a spare must never bring back a removed value).
    fn retire_file(&self, gen: &Generation, hash: u64, path: &Path) -> Result<()> {
        let sub = layout::subdir_index(hash);
        if self.periodic() {
            match self.fs.write_at(path, 0, &NEUTRAL) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(io_err(path, e)),
            }
        }
        let mut pool = lock(&gen.spares[sub]);
        let res = if pool.len() < self.spare_cap() {
            let id = gen.spare_counter.fetch_add(1, Ordering::Relaxed);
            let spare = gen.spare_path(sub, id);
            let r = self.fs.rename(path, &spare);
            if r.is_ok() {
                if self.periodic() {
                    let need = self.next_flush();
                    pool.neutral.push((id, need));
                } else {
                    pool.ready.push(id);
                }
            }
            r
        } else {
            drop(pool);
            self.fs.remove_file(path)
        };
        match res {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(path, e)),
        }
    }

    fn mark_expiring(&self, gen: &Generation) -> Result<()> {
        if gen.expiring_marked.load(Ordering::Relaxed) {
            return Ok(());
        }
        let path = gen.dir.join(layout::EXPIRING_MARK);
        match self.fs.create_new(&path, b"") {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err(&path, e)),
        }
        gen.expiring_marked.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Called after each step of a write: `Always` waits for a group
    /// flush; other modes only note that there is something to flush.
    fn barrier(&self) -> Result<()> {
        self.changes.fetch_add(1, Ordering::SeqCst);
        if self.durability == Durability::Always {
            self.group_sync()
        } else {
            Ok(())
        }
    }

    /// Waits until a `syncfs` that started after this call has finished;
    /// one leader flushes for all waiting callers (group commit).
    fn group_sync(&self) -> Result<()> {
        let mut st = lock(&self.group.state);
        st.requested += 1;
        let ticket = st.requested;
        loop {
            self.check_writable()?;
            if st.done >= ticket {
                return Ok(());
            }
            if !st.running {
                st.running = true;
                let target = st.requested;
                drop(st);
                let number = self.flush_started.fetch_add(1, Ordering::SeqCst) + 1;
                let res = self.fs.syncfs(&self.dir);
                st = lock(&self.group.state);
                st.running = false;
                match res {
                    Ok(()) => {
                        st.done = st.done.max(target);
                        self.flush_done.fetch_max(number, Ordering::SeqCst);
                    }
                    Err(e) => {
                        self.set_read_only(format!("flush of {} failed: {e}", self.dir.display()));
                        self.group.cv.notify_all();
                        return Err(io_err(&self.dir, e));
                    }
                }
                self.group.cv.notify_all();
            } else {
                st = self.group.cv.wait(st).unwrap_or_else(|e| e.into_inner());
            }
        }
    }

    fn ensure_subdir(&self, gen: &Generation, sub: usize) -> Result<()> {
        if gen.subdir_ready[sub].load(Ordering::Acquire) {
            return Ok(());
        }
        let path = gen.subdir_path(sub);
        match self.fs.create_dir(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                require_real_dir(&*self.fs, &path)?
            }
            Err(e) => return Err(io_err(&path, e)),
        }
        gen.subdir_ready[sub].store(true, Ordering::Release);
        Ok(())
    }

    /// Writes `rec` into a spare file of the subdirectory; returns its id.
    fn fill_spare(&self, gen: &Generation, sub: usize, rec: &[u8]) -> Result<u64> {
        loop {
            let pooled = {
                let mut pool = lock(&gen.spares[sub]);
                if pool.ready.is_empty() && !pool.neutral.is_empty() {
                    let done = self.flush_done.load(Ordering::SeqCst);
                    let SparePool { ready, neutral, .. } = &mut *pool;
                    neutral.retain(|&(id, need)| {
                        let mature = need <= done;
                        if mature {
                            ready.push(id);
                        }
                        !mature
                    });
                }
                let id = pool.ready.pop();
                if id.is_none() && self.periodic() && pool.held.len() + pool.neutral.len() > 0 {
                    // Freed files are waiting for a flush to become
                    // reusable: ask the flusher for it now rather than
                    // create files until the interval ends.
                    self.stop.kick();
                }
                id
            };
            let Some(id) = pooled else { break };
            let path = gen.spare_path(sub, id);
            match self.fs.write_at(&path, 0, rec) {
                Ok(()) => return Ok(id),
                // A spare that vanished (removed by hand): try the next.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                // Unusable (a planted symlink, a failing write): forget it
                // and make a fresh one, whose error, if any, is returned.
                Err(e) => {
                    log::warn!("dropping unusable spare file {}: {e}", path.display());
                    let _ = self.fs.remove_file(&path);
                    break;
                }
            }
        }
        loop {
            let id = gen.spare_counter.fetch_add(1, Ordering::Relaxed);
            let path = gen.spare_path(sub, id);
            match self.fs.create_new(&path, rec) {
                Ok(()) => return Ok(id),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    // Do not leave a half-written file under a name that
                    // would be reused as a spare without its length known.
                    let _ = self.fs.remove_file(&path);
                    return Err(io_err(&path, e));
                }
            }
        }
    }

    /// Puts the filled spare `id` in place of `target`. With exchange, the
    /// old file becomes a spare, returned as `Some(id)`: the caller recycles
    /// it with [`Inner::recycle_spare`] only after the exchange is durable
    /// (until then a power cut can bring the old name back to that inode,
    /// so another writer must not overwrite it in place). Without exchange
    /// the old file is replaced (and freed).
    fn swap_in(&self, gen: &Generation, sub: usize, id: u64, target: &Path) -> Result<Option<u64>> {
        let spare = gen.spare_path(sub, id);
        if self.exchange_supported.load(Ordering::Relaxed) {
            match self.fs.rename_exchange(&spare, target) {
                Ok(()) => return Ok(Some(id)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) if e.kind() == io::ErrorKind::Unsupported => {
                    self.exchange_supported.store(false, Ordering::Relaxed);
                }
                Err(e) => {
                    self.give_back(gen, sub, id);
                    return Err(io_err(target, e));
                }
            }
        }
        self.fs.rename(&spare, target).map(|()| None).map_err(|e| {
            self.give_back(gen, sub, id);
            io_err(target, e)
        })
    }

    /// Returns the old file of an exchange to the spare pool (or removes it
    /// when the pool is full).
    ///
    /// In `Periodic` mode the old file may hold the key's last flushed
    /// value and the exchange may not be durable yet: it is *held* (see
    /// the module docs) under the value name (`hash`, `idx`) it left.
    fn recycle_spare(&self, gen: &Generation, sub: usize, old: Option<u64>, hash: u64, idx: u16) {
        let Some(id) = old else { return };
        if self.periodic() {
            let need = self.next_flush();
            lock(&gen.spares[sub]).held.push(Held {
                id,
                hash,
                idx,
                need,
            });
            return;
        }
        let mut pool = lock(&gen.spares[sub]);
        if pool.len() < SPARES_PER_SUBDIR {
            pool.ready.push(id);
        } else {
            drop(pool);
            let _ = self.fs.remove_file(&gen.spare_path(sub, id));
        }
    }

    /// Whether freed files go through the held and neutral states
    /// (`Periodic` mode: writes are not flushed before their exchange).
    fn periodic(&self) -> bool {
        matches!(self.durability, Durability::Periodic(_))
    }

    /// Spares kept per subdirectory.
    fn spare_cap(&self) -> usize {
        if self.periodic() {
            PERIODIC_SPARES_PER_SUBDIR
        } else {
            SPARES_PER_SUBDIR
        }
    }

    /// The number of the first flush that starts after this call.
    fn next_flush(&self) -> u64 {
        self.flush_started.load(Ordering::SeqCst) + 1
    }

    /// Returns an unused spare (maybe written with a record) to the pool.
    fn give_back(&self, gen: &Generation, sub: usize, id: u64) {
        if self.periodic() {
            let path = gen.spare_path(sub, id);
            if self.fs.write_at(&path, 0, &NEUTRAL).is_err() {
                let _ = self.fs.remove_file(&path);
                return;
            }
            let need = self.next_flush();
            lock(&gen.spares[sub]).neutral.push((id, need));
        } else {
            lock(&gen.spares[sub]).ready.push(id);
        }
    }

    /// `Periodic` mode, stripe lock held, removal logged: writes a
    /// tombstone over the key's file and over the held spares that left
    /// its name (its older records), then moves the file to the spares,
    /// held like the old file of an exchange. A flush that makes the
    /// removal durable makes the tombstones durable too, so recovery after
    /// a later power cut never brings back a removed value; a power cut
    /// before it finds the tombstone (the key reads as absent, which the
    /// removal allows) or the old record.
    fn retire_removed(&self, gen: &Generation, hash: u64, idx: u16, key: &[u8]) -> Result<()> {
        let sub = layout::subdir_index(hash);
        let path = gen.value_path(hash, idx);
        let tomb = record::encode_tombstone(key, self.next_cas()).ok_or(Error::InvalidKey {
            reason: "key too long",
        })?;
        match self.fs.write_at(&path, 0, &tomb) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                log::warn!("removed key's file left in place: {e}");
                return Ok(());
            }
        }
        let held: Vec<u64> = lock(&gen.spares[sub])
            .held
            .iter()
            .filter(|h| h.hash == hash && (h.idx == idx || h.idx == ANY_IDX))
            .map(|h| h.id)
            .collect();
        for id in held {
            let spare = gen.spare_path(sub, id);
            if self.fs.write_at(&spare, 0, &tomb).is_err() {
                // Unusable: gone with its old record.
                lock(&gen.spares[sub]).forget(id);
                let _ = self.fs.remove_file(&spare);
            }
        }
        let id = gen.spare_counter.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.fs.rename(&path, &gen.spare_path(sub, id)) {
            // The tombstone keeps reading as absent; the next write of the
            // key replaces it.
            log::warn!("removed key's file left in place: {e}");
            return Ok(());
        }
        let need = self.next_flush();
        let mut pool = lock(&gen.spares[sub]);
        for h in pool.held.iter_mut() {
            if h.hash == hash && (h.idx == idx || h.idx == ANY_IDX) {
                h.need = h.need.max(need);
            }
        }
        pool.held.push(Held {
            id,
            hash,
            idx,
            need,
        });
        drop(pool);
        self.barrier()
    }

    /// `Periodic` mode: whether the value name (`hash`, `idx`) was left by
    /// a file in a way no completed flush covers yet. A new key is not put
    /// there: on the disk a power cut leaves, its rename could land on the
    /// name while the departure of the file before it did not, and that
    /// file (with the last flushed record) would be lost.
    fn recently_vacated(&self, gen: &Generation, sub: usize, hash: u64, idx: u16) -> bool {
        let done = self.flush_done.load(Ordering::SeqCst);
        lock(&gen.spares[sub])
            .held
            .iter()
            .any(|h| h.hash == hash && h.idx == idx && h.need > done)
    }

    /// `Periodic` flusher, after a completed flush: neutralizes the held
    /// spares whose swap that flush made durable. Returns whether it
    /// neutralized any (they become reusable after the next flush).
    fn neutralize_matured(&self) -> bool {
        let gen = self.current_gen();
        let done = self.flush_done.load(Ordering::SeqCst);
        let mut any = false;
        for sub in 0..SUBDIRS {
            let matured: Vec<u64> = {
                let mut pool = lock(&gen.spares[sub]);
                if pool.held.is_empty() {
                    continue;
                }
                let mut matured = Vec::new();
                pool.held.retain(|h| {
                    let mature = h.need <= done;
                    if mature {
                        matured.push(h.id);
                    }
                    !mature
                });
                matured
            };
            for id in matured {
                any = true;
                self.give_back(&gen, sub, id);
            }
            // Beyond the pool's size, mature spares are removed.
            let extra: Vec<u64> = {
                let mut pool = lock(&gen.spares[sub]);
                let over = pool.len().saturating_sub(self.spare_cap());
                let mut extra = Vec::new();
                while extra.len() < over {
                    if let Some(id) = pool.ready.pop() {
                        extra.push(id);
                    } else if let Some((id, _)) = pool.neutral.pop() {
                        extra.push(id);
                    } else {
                        break;
                    }
                }
                extra
            };
            for id in extra {
                let _ = self.fs.remove_file(&gen.spare_path(sub, id));
            }
        }
        if any {
            self.changes.fetch_add(1, Ordering::SeqCst);
        }
        any
    }

    /// Writes a record for `key` (stripe lock held): into a spare, then
    /// swapped in; a new key also gets a collision index and a map record.
    /// In `Always` mode: data flushed, renamed, directory flushed, then the
    /// map record flushed.
    fn write_record(
        &self,
        gen: &Generation,
        hash: u64,
        key: &[u8],
        idx: Option<u16>,
        rec: &[u8],
    ) -> Result<()> {
        let sub = layout::subdir_index(hash);
        self.ensure_subdir(gen, sub)?;
        let id = self.fill_spare(gen, sub, rec)?;
        if let Err(e) = self.barrier() {
            self.give_back(gen, sub, id);
            return Err(e);
        }
        match idx {
            Some(idx) => {
                let old = self.swap_in(gen, sub, id, &gen.value_path(hash, idx))?;
                self.barrier()?;
                self.recycle_spare(gen, sub, old, hash, idx);
                Ok(())
            }
            None => {
                let (idx, old) = self.place_new(gen, sub, id, hash)?;
                self.barrier()?;
                self.recycle_spare(gen, sub, old, hash, idx);
                self.log_put(gen, hash, key, idx)?;
                self.barrier()
            }
        }
    }

    /// Puts the filled spare `id` under the first collision index of `hash`
    /// whose name is free (or holds a leftover no map entry points to, which
    /// becomes a spare); returns that index and the leftover's spare id, to
    /// recycle once durable (see [`Inner::swap_in`]). Stripe lock of `hash`
    /// held.
    fn place_new(
        &self,
        gen: &Generation,
        sub: usize,
        id: u64,
        hash: u64,
    ) -> Result<(u16, Option<u64>)> {
        let spare = gen.spare_path(sub, id);
        for idx in 0..=layout::MAX_COLLISION_INDEX {
            if self.periodic() && self.recently_vacated(gen, sub, hash, idx) {
                continue;
            }
            let target = gen.value_path(hash, idx);
            let taken = if self.noreplace_supported.load(Ordering::Relaxed) {
                match self.fs.rename_noreplace(&spare, &target) {
                    Ok(()) => return Ok((idx, None)),
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => true,
                    Err(e) if e.kind() == io::ErrorKind::Unsupported => {
                        self.noreplace_supported.store(false, Ordering::Relaxed);
                        self.name_taken(&target)
                            .inspect_err(|_| self.give_back(gen, sub, id))?
                    }
                    Err(e) => {
                        self.give_back(gen, sub, id);
                        return Err(io_err(&target, e));
                    }
                }
            } else {
                self.name_taken(&target)
                    .inspect_err(|_| self.give_back(gen, sub, id))?
            };
            if taken && self.owned_by_mapped_key(gen, &target, hash, idx)? {
                continue;
            }
            // Free, or a leftover: swap in (the leftover becomes a spare).
            let old = self.swap_in(gen, sub, id, &target)?;
            return Ok((idx, old));
        }
        self.give_back(gen, sub, id);
        Err(Error::InvalidKey {
            reason: "too many keys share one hash",
        })
    }

    fn name_taken(&self, path: &Path) -> Result<bool> {
        self.fs
            .file_len(path)
            .map(|len| len.is_some())
            .map_err(|e| io_err(path, e))
    }

    /// Whether the value file `path` (hash, idx) belongs to a key the map
    /// points to it.
    fn owned_by_mapped_key(
        &self,
        gen: &Generation,
        path: &Path,
        hash: u64,
        idx: u16,
    ) -> Result<bool> {
        let buf = match self.fs.read_at(path, 0, record::HEADER_LEN + MAX_KEY_BYTES) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io_err(path, e)),
        };
        let owner = record::decode_header(&buf).ok().and_then(|h| {
            let end = record::HEADER_LEN + h.key_len;
            buf.get(record::HEADER_LEN..end)
        });
        Ok(owner.is_some_and(|other| {
            (self.hasher)(other) == hash && gen.lookup(hash, other) == Some(idx)
        }))
    }

    fn append_log(
        &self,
        gen: &Generation,
        log: &mut LogState,
        record: &MapRecord<'_>,
    ) -> Result<()> {
        let mut frame = Vec::with_capacity(64);
        maplog::encode_frame(record, &mut frame);
        log.file
            .append(&frame)
            .map_err(|e| io_err(&gen.log_path(), e))?;
        log.records += 1;
        Ok(())
    }

    fn log_put(&self, gen: &Generation, hash: u64, key: &[u8], idx: u16) -> Result<()> {
        let mut log = lock(&gen.log);
        self.append_log(
            gen,
            &mut log,
            &MapRecord::Put {
                key: Bytes(key),
                idx,
            },
        )?;
        let old = gen
            .shard(hash)
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.into(), idx);
        if old.is_none() {
            gen.count.fetch_add(1, Ordering::Relaxed);
        }
        self.maybe_compact(gen, &mut log);
        Ok(())
    }

    fn log_remove(&self, gen: &Generation, hash: u64, key: &[u8]) -> Result<()> {
        let mut log = lock(&gen.log);
        // Only a logged removal is forgotten: if the append fails, the key
        // and its file stay as they were.
        self.append_log(gen, &mut log, &MapRecord::Remove { key: Bytes(key) })?;
        let old = gen
            .shard(hash)
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
        if old.is_some() {
            gen.count.fetch_sub(1, Ordering::Relaxed);
        }
        self.maybe_compact(gen, &mut log);
        Ok(())
    }

    /// Rewrites the log with only live records when dead ones dominate.
    /// Failure is not fatal: the old log stays valid.
    fn maybe_compact(&self, gen: &Generation, log: &mut LogState) {
        let live = gen.count.load(Ordering::Relaxed) as u64;
        let dead = log.records.saturating_sub(live);
        if dead < COMPACT_MIN_DEAD || dead < live.saturating_mul(COMPACT_DEAD_RATIO) {
            return;
        }
        let sync = self.durability != Durability::Never;
        match write_log_snapshot(&*self.fs, gen, sync) {
            Ok((file, records)) => {
                log.file = file;
                log.records = records;
            }
            Err(e) => log::warn!("map log compaction failed: {e}"),
        }
    }

    fn flusher_loop(&self, every: Duration) {
        let mut flushed = 0;
        let mut last = std::time::Instant::now();
        while !self.stop.wait(every) {
            // Kicked by a writer short of spares: not more often than
            // every KICK_GAP.
            let since = last.elapsed();
            if since < KICK_GAP.min(every) {
                std::thread::sleep(KICK_GAP.min(every) - since);
                if self.stop.stopped() {
                    return;
                }
            }
            last = std::time::Instant::now();
            let changes = self.changes.load(Ordering::SeqCst);
            if self.read_only.load(Ordering::SeqCst) || changes == flushed {
                continue;
            }
            flushed = changes;
            if let Err(e) = self.group_sync() {
                log::error!("periodic flush failed, store is now read-only: {e}");
                continue;
            }
            // Spares freed before that flush are neutralized now; a second
            // flush makes them reusable right away.
            if self.neutralize_matured() {
                flushed = self.changes.load(Ordering::SeqCst);
                if let Err(e) = self.group_sync() {
                    log::error!("periodic flush failed, store is now read-only: {e}");
                }
            }
        }
    }

    /// Deletes doomed generation directories, one file at a time, until
    /// stopped.
    fn deleter_loop(&self) {
        loop {
            let next = {
                let mut doomed = lock(&self.doomed);
                loop {
                    if self.stop.stopped() {
                        return;
                    }
                    if let Some(d) = doomed.pop() {
                        break d;
                    }
                    doomed = self
                        .doomed_cv
                        .wait(doomed)
                        .unwrap_or_else(|e| e.into_inner());
                }
            };
            if let Err(e) = remove_tree(&*self.fs, &next, &self.stop) {
                log::warn!("cannot remove old generation {}: {e}", next.display());
            }
        }
    }

    /// Background work after open: collects spare files into the pools,
    /// removes leftovers, and removes expired items if the generation has
    /// any items with an expiry.
    fn sweep(&self) {
        let gen = self.current_gen();
        let expiring = gen.expiring_marked.load(Ordering::Relaxed);
        // (hash, index) of every mapped key, to spot value files no entry
        // points to (left by a write interrupted between its rename and its
        // map record) without reading every file.
        let mut mapped: Vec<(u64, u16)> = Vec::with_capacity(gen.count.load(Ordering::Relaxed));
        for shard in gen.shards.iter() {
            let shard = shard.read().unwrap_or_else(|e| e.into_inner());
            mapped.extend(shard.iter().map(|(k, &idx)| ((self.hasher)(k), idx)));
        }
        mapped.sort_unstable();
        for sub in 0..SUBDIRS {
            if self.stop.stopped() || !Arc::ptr_eq(&gen, &self.current_gen()) {
                return;
            }
            let dir = gen.subdir_path(sub);
            // Never list (and clean up) through a symlink planted in place
            // of a subdirectory; writes refuse it in `ensure_subdir`.
            if !self.fs.is_real_dir(&dir).unwrap_or(false) {
                continue;
            }
            let names = match self.fs.list_dir(&dir) {
                Ok(n) => n,
                Err(_) => continue,
            };
            gen.subdir_ready[sub].store(true, Ordering::Release);
            for name in names {
                let Some(name) = name.to_str() else { continue };
                if let Some(id) = layout::parse_spare_name(name) {
                    if id >> 40 >= self.epoch {
                        // Made in this session: already pooled or in use.
                        continue;
                    }
                    if self.periodic() {
                        self.sweep_spare(&gen, sub, id);
                        continue;
                    }
                    let mut pool = lock(&gen.spares[sub]);
                    if pool.len() < SPARES_PER_SUBDIR {
                        if !pool.contains(id) {
                            pool.ready.push(id);
                        }
                    } else if !pool.contains(id) {
                        drop(pool);
                        let _ = self.fs.remove_file(&dir.join(name));
                    }
                } else if let Some((hash, idx)) = layout::parse_value_name(name) {
                    if mapped.binary_search(&(hash, idx)).is_err() {
                        self.sweep_stray(&gen, &dir.join(name), hash, idx);
                    } else if expiring {
                        self.sweep_expired(&dir.join(name), hash);
                    }
                }
            }
        }
    }

    /// `Periodic` mode: a spare left by an earlier session may hold the
    /// last flushed value of a key whose file a power cut left without a
    /// good record. Under that key's stripe lock, reading the key recovers
    /// it (see [`Inner::recover`]); then the spare is neutralized and
    /// pooled (reusable after the next flush), or removed when the pool is
    /// full.
    fn sweep_spare(&self, gen: &Generation, sub: usize, id: u64) {
        let current = self.gen_read();
        if !std::ptr::eq(&**current, gen) || lock(&gen.spares[sub]).contains(id) {
            return;
        }
        let path = gen.spare_path(sub, id);
        let Ok(buf) = self
            .fs
            .read_at(&path, 0, record::HEADER_LEN + MAX_KEY_BYTES)
        else {
            return;
        };
        // The key of a record or of a tombstone.
        let owner: Option<Box<[u8]>> = match record::decode_header(&buf) {
            Ok(h) => buf
                .get(record::HEADER_LEN..record::HEADER_LEN + h.key_len)
                .map(Box::from),
            Err(_) => record::decode_tombstone(&buf).map(|(k, _)| Box::from(k)),
        };
        let owner = owner.filter(|k| layout::subdir_index((self.hasher)(k)) == sub);
        let _g = owner
            .as_ref()
            .map(|k| lock(&self.stripe((self.hasher)(k)).lock));
        if let Some(key) = &owner {
            if let Err(e) = self.current(gen, (self.hasher)(key), key) {
                log::warn!("cannot check the key of spare {}: {e}", path.display());
                return;
            }
        }
        let mut pool = lock(&gen.spares[sub]);
        if pool.contains(id) {
            return;
        }
        if let Some(key) = &owner {
            // Held until a flush has made what the check above changed
            // (a recovery, a removal) durable; the flusher neutralizes it
            // then, or removes it when the pool is full.
            let need = self.next_flush();
            pool.held.push(Held {
                id,
                hash: (self.hasher)(key),
                idx: ANY_IDX,
                need,
            });
            self.changes.fetch_add(1, Ordering::SeqCst);
            return;
        }
        if pool.len() >= self.spare_cap() {
            drop(pool);
            let _ = self.fs.remove_file(&path);
            return;
        }
        match self.fs.write_at(&path, 0, &NEUTRAL) {
            Ok(()) => {
                let need = self.next_flush();
                pool.neutral.push((id, need));
                self.changes.fetch_add(1, Ordering::SeqCst);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(_) => {
                drop(pool);
                let _ = self.fs.remove_file(&path);
            }
        }
    }

    /// Recycles a value file that no map entry points to, after checking
    /// again under the stripe lock (a write may have mapped it since).
    fn sweep_stray(&self, gen: &Generation, path: &Path, hash: u64, idx: u16) {
        let current = self.gen_read();
        if !std::ptr::eq(&**current, gen) {
            return;
        }
        let _g = lock(&self.stripe(hash).lock);
        if self
            .owned_by_mapped_key(gen, path, hash, idx)
            .unwrap_or(true)
        {
            return;
        }
        if let Err(e) = self.retire_file(gen, hash, path) {
            log::warn!("cannot recycle stray value file {}: {e}", path.display());
        }
    }

    fn sweep_expired(&self, path: &Path, hash: u64) {
        let Ok(buf) = self.fs.read_at(path, 0, record::HEADER_LEN + MAX_KEY_BYTES) else {
            return;
        };
        let Ok(h) = record::decode_header(&buf) else {
            return;
        };
        if !expired(h.expiry) {
            return;
        }
        let Some(key) = buf.get(record::HEADER_LEN..record::HEADER_LEN + h.key_len) else {
            return;
        };
        if (self.hasher)(key) == hash {
            if let Err(e) = self.remove_if_expired(key) {
                log::warn!("cannot remove expired item {}: {e}", path.display());
            }
        }
    }
}

/// Creates `dir` and its missing parents (mode 0700) through the seam.
fn create_dir_all(fs: &dyn FileSystem, dir: &Path) -> Result<()> {
    match fs.create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                create_dir_all(fs, parent)?;
            }
            match fs.create_dir(dir) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
                Err(e) => Err(io_err(dir, e)),
            }
        }
        Err(e) => Err(io_err(dir, e)),
    }
}

fn list_names(fs: &dyn FileSystem, dir: &Path) -> Result<Vec<String>> {
    Ok(fs
        .list_dir(dir)
        .map_err(|e| io_err(dir, e))?
        .into_iter()
        .filter_map(|n: OsString| n.into_string().ok())
        .collect())
}

fn read_optional(fs: &dyn FileSystem, path: &Path, max: usize) -> Result<Option<Vec<u8>>> {
    match fs.read_at(path, 0, max) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(path, e)),
    }
}

fn read_u64_file(fs: &dyn FileSystem, path: &Path) -> Result<Option<u64>> {
    let Some(bytes) = read_optional(fs, path, 64)? else {
        return Ok(None);
    };
    std::str::from_utf8(&bytes)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .map(Some)
        .ok_or_else(|| Error::Corrupt {
            path: path.to_path_buf(),
            what: "not a decimal number".to_string(),
        })
}

/// Replaces `dir/name` atomically: temp file, (fsync), rename, (fsync dir).
fn write_small_file(
    fs: &dyn FileSystem,
    dir: &Path,
    name: &str,
    data: &[u8],
    sync: bool,
) -> Result<()> {
    let tmp = dir.join(format!("{name}{}", layout::TMP_SUFFIX));
    let path = dir.join(name);
    let _ = fs.remove_file(&tmp);
    fs.create_new(&tmp, data).map_err(|e| io_err(&tmp, e))?;
    if sync {
        fs.sync_file(&tmp).map_err(|e| io_err(&tmp, e))?;
    }
    fs.rename(&tmp, &path).map_err(|e| io_err(&path, e))?;
    if sync {
        fs.sync_dir(dir).map_err(|e| io_err(dir, e))?;
    }
    Ok(())
}

/// Creates an empty generation directory with an empty map log.
/// An existing directory inside the store must be a directory itself, not
/// a symlink (planted or not) that would lead writes out of the store.
fn require_real_dir(fs: &dyn FileSystem, path: &Path) -> Result<()> {
    match fs.is_real_dir(path) {
        Ok(true) => Ok(()),
        Ok(false) => Err(io_err(
            path,
            io::Error::new(
                io::ErrorKind::InvalidData,
                "not a directory (a symbolic link?): refusing to write through it",
            ),
        )),
        Err(e) => Err(io_err(path, e)),
    }
}

fn create_generation_dir(fs: &dyn FileSystem, dir: &Path, sync: bool) -> Result<()> {
    match fs.create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => require_real_dir(fs, dir)?,
        Err(e) => return Err(io_err(dir, e)),
    }
    let log = dir.join(layout::MAP_LOG);
    match fs.create_new(&log, &maplog::MAGIC) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_err(&log, e)),
    }
    if sync {
        fs.sync_file(&log).map_err(|e| io_err(&log, e))?;
        fs.sync_dir(dir).map_err(|e| io_err(dir, e))?;
        if let Some(parent) = dir.parent() {
            fs.sync_dir(parent).map_err(|e| io_err(parent, e))?;
        }
    }
    Ok(())
}

fn empty_shards() -> Box<[MapShard]> {
    (0..MAP_SHARDS)
        .map(|_| RwLock::new(HashMap::new()))
        .collect()
}

/// Loads generation `n` from `dir`: reads the map log (dropping a torn
/// tail) or, if it is missing or damaged, rebuilds the map from the value
/// files and writes a fresh log.
fn load_generation(
    fs: &dyn FileSystem,
    dir: &Path,
    hasher: fn(&[u8]) -> u64,
    sync: bool,
    epoch: u64,
) -> Result<Generation> {
    let log_path = dir.join(layout::MAP_LOG);
    let shards = empty_shards();
    let mut count = 0usize;
    let mut rebuild = false;
    let mut records = 0;
    match read_optional(fs, &log_path, usize::MAX)? {
        None => rebuild = true,
        Some(bytes) => {
            let mut tmp: Vec<HashMap<Box<[u8]>, u16>> =
                (0..MAP_SHARDS).map(|_| HashMap::new()).collect();
            let (end, n_records) = maplog::decode_log(&bytes, |rec| match rec {
                MapRecord::Put { key, idx } => {
                    let h = hasher(key.0);
                    tmp[(h as usize) % MAP_SHARDS].insert(key.0.into(), idx);
                }
                MapRecord::Remove { key } => {
                    let h = hasher(key.0);
                    tmp[(h as usize) % MAP_SHARDS].remove(key.0);
                }
            });
            records = n_records;
            match end {
                LogEnd::Clean => {}
                LogEnd::TornTail { valid_len, what } => {
                    log::warn!("map log {}: dropping torn tail: {what}", log_path.display());
                    if valid_len < maplog::MAGIC.len() as u64 {
                        rebuild = true;
                    } else {
                        fs.set_len(&log_path, valid_len)
                            .map_err(|e| io_err(&log_path, e))?;
                    }
                }
                LogEnd::Damaged { at, what } => {
                    log::warn!(
                        "map log {} damaged at offset {at} ({what}): rebuilding the map from the value files",
                        log_path.display()
                    );
                    rebuild = true;
                }
            }
            if !rebuild {
                for (i, m) in tmp.into_iter().enumerate() {
                    count += m.len();
                    *shards[i].write().unwrap_or_else(|e| e.into_inner()) = m;
                }
            }
        }
    }
    for name in list_names(fs, dir)? {
        let path = dir.join(&name);
        if name.ends_with(layout::TMP_SUFFIX) {
            // Leftover of an interrupted compaction.
            let _ = fs.remove_file(&path);
        } else if name.len() == 2
            && u8::from_str_radix(&name, 16).is_ok()
            && !fs.is_real_dir(&path).map_err(|e| io_err(&path, e))?
        {
            // A value subdirectory must be a directory of its own: a
            // symlink planted here would lead writes and reads out of the
            // store. Remove the link (not what it points to).
            log::warn!("removing {}: not a directory", path.display());
            fs.remove_file(&path).map_err(|e| io_err(&path, e))?;
        }
    }
    let expiring_marked = fs
        .file_len(&dir.join(layout::EXPIRING_MARK))
        .map_err(|e| io_err(dir, e))?
        .is_some();
    let gen = Generation {
        dir: dir.to_path_buf(),
        shards,
        count: AtomicUsize::new(count),
        // Replaced below once the log is known good.
        log: Mutex::new(LogState {
            file: Box::new(NullAppend),
            records,
        }),
        subdir_ready: (0..SUBDIRS).map(|_| AtomicBool::new(false)).collect(),
        spares: (0..SUBDIRS)
            .map(|_| Mutex::new(SparePool::default()))
            .collect(),
        // Spares made in this session are numbered from `epoch << 40`, so
        // they never clash with spares of earlier sessions (smaller epochs),
        // which the sweep adds to the pools.
        spare_counter: AtomicU64::new(epoch << 40),
        expiring_marked: AtomicBool::new(expiring_marked),
    };
    if rebuild {
        let scan = scan_generation(fs, dir, hasher, true)?;
        for p in &scan.problems {
            log::warn!("rebuilding {}: {p}", dir.display());
        }
        for (key, idx) in scan.keys {
            let h = hasher(&key);
            gen.shard(h)
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key, idx);
        }
        gen.count.store(
            gen.shards
                .iter()
                .map(|s| s.read().unwrap_or_else(|e| e.into_inner()).len())
                .sum(),
            Ordering::Relaxed,
        );
        let (file, records) = write_log_snapshot(fs, &gen, sync)?;
        *lock(&gen.log) = LogState { file, records };
    } else {
        let file = fs
            .open_append(&log_path)
            .map_err(|e| io_err(&log_path, e))?;
        *lock(&gen.log) = LogState { file, records };
    }
    Ok(gen)
}

struct NullAppend;

impl AppendFile for NullAppend {
    fn append(&mut self, _data: &[u8]) -> io::Result<()> {
        Err(io::Error::other("map log not open"))
    }
    fn sync_data(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Writes a fresh log with the live map of `gen` (temp + rename) and opens
/// it for appending.
fn write_log_snapshot(
    fs: &dyn FileSystem,
    gen: &Generation,
    sync: bool,
) -> Result<(Box<dyn AppendFile>, u64)> {
    let snapshot = gen.map_snapshot();
    let mut buf = Vec::with_capacity(8 + snapshot.len() * 32);
    buf.extend_from_slice(&maplog::MAGIC);
    for (key, idx) in &snapshot {
        maplog::encode_frame(
            &MapRecord::Put {
                key: Bytes(key),
                idx: *idx,
            },
            &mut buf,
        );
    }
    let tmp = gen.dir.join(layout::MAP_LOG_TMP);
    let path = gen.log_path();
    let _ = fs.remove_file(&tmp);
    fs.create_new(&tmp, &buf).map_err(|e| io_err(&tmp, e))?;
    if sync {
        fs.sync_file(&tmp).map_err(|e| io_err(&tmp, e))?;
    }
    fs.rename(&tmp, &path).map_err(|e| io_err(&path, e))?;
    if sync {
        fs.sync_dir(&gen.dir).map_err(|e| io_err(&gen.dir, e))?;
    }
    let file = fs.open_append(&path).map_err(|e| io_err(&path, e))?;
    Ok((file, snapshot.len() as u64))
}

/// Removes a directory tree through the seam, stopping early if asked.
fn remove_tree(fs: &dyn FileSystem, dir: &Path, stop: &Stop) -> io::Result<()> {
    let names = match fs.list_dir(dir) {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for name in names {
        if stop.stopped() {
            return Ok(());
        }
        let path = dir.join(&name);
        match fs.remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(_) => remove_tree(fs, &path, stop)?,
        }
    }
    if stop.stopped() {
        return Ok(());
    }
    match fs.remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// What a scan of a generation's value files found.
struct Scan {
    keys: Vec<(Box<[u8]>, u16)>,
    /// Highest cas number of any good record.
    max_cas: u64,
    files: u64,
    dropped: u64,
    spares: u64,
    problems: Vec<String>,
}

/// Reads every value file of a generation. Damaged files, files whose key
/// does not hash to their name and duplicates (the lower cas loses) are
/// reported, and removed when `fix`.
fn scan_generation(
    fs: &dyn FileSystem,
    dir: &Path,
    hasher: fn(&[u8]) -> u64,
    fix: bool,
) -> Result<Scan> {
    let mut scan = Scan {
        keys: Vec::new(),
        max_cas: 0,
        files: 0,
        dropped: 0,
        spares: 0,
        problems: Vec::new(),
    };
    let mut best: HashMap<Box<[u8]>, (u16, u64, PathBuf)> = HashMap::new();
    for sub in 0..SUBDIRS {
        let subdir = dir.join(format!("{sub:02x}"));
        let names = match fs.list_dir(&subdir) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err(&subdir, e)),
        };
        for name in names {
            let Some(name) = name.to_str() else {
                scan.problems
                    .push(format!("unexpected file {}", subdir.join(&name).display()));
                continue;
            };
            let path = subdir.join(name);
            if layout::parse_spare_name(name).is_some() {
                scan.spares += 1;
                continue;
            }
            let Some((hash, idx)) = layout::parse_value_name(name) else {
                scan.problems
                    .push(format!("unexpected file {}", path.display()));
                continue;
            };
            scan.files += 1;
            let bytes = fs
                .read_at(&path, 0, usize::MAX)
                .map_err(|e| io_err(&path, e))?;
            let problem = match record::decode(&bytes) {
                Err(what) => Some(format!("damaged value file {}: {what}", path.display())),
                Ok(rec) if hasher(rec.key) != hash || layout::subdir_index(hash) != sub => {
                    Some(format!(
                        "value file {} holds a key that does not hash to its name",
                        path.display()
                    ))
                }
                Ok(rec) => {
                    scan.max_cas = scan.max_cas.max(rec.cas);
                    let key: Box<[u8]> = rec.key.into();
                    match best.get(&key) {
                        Some((_, cas, other)) if *cas >= rec.cas => Some(format!(
                            "value file {} duplicates newer {}",
                            path.display(),
                            other.display()
                        )),
                        Some((_, _, other)) => {
                            let other = other.clone();
                            best.insert(key, (idx, rec.cas, path.clone()));
                            scan.problems.push(format!(
                                "value file {} duplicates newer {}",
                                other.display(),
                                path.display()
                            ));
                            if fix {
                                drop_file(fs, &other, &mut scan)?;
                            }
                            None
                        }
                        None => {
                            best.insert(key, (idx, rec.cas, path.clone()));
                            None
                        }
                    }
                }
            };
            if let Some(p) = problem {
                scan.problems.push(p);
                if fix {
                    drop_file(fs, &path, &mut scan)?;
                }
            }
        }
    }
    scan.keys = best.into_iter().map(|(k, (idx, _, _))| (k, idx)).collect();
    Ok(scan)
}

fn drop_file(fs: &dyn FileSystem, path: &Path, scan: &mut Scan) -> Result<()> {
    match fs.remove_file(path) {
        Ok(()) => {
            scan.dropped += 1;
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(path, e)),
    }
}

/// `verify` and `repair`: offline passes over a closed store.
pub(crate) mod offline {
    use super::*;

    fn live_generation(fs: &dyn FileSystem, dir: &Path) -> Result<u64> {
        let current_path = dir.join(layout::CURRENT_FILE);
        match read_optional(fs, &current_path, 256)? {
            Some(bytes) => layout::parse_current(&bytes).map_err(|what| Error::Corrupt {
                path: current_path,
                what,
            }),
            None => Err(Error::Corrupt {
                path: current_path,
                what: "missing: not a store directory".to_string(),
            }),
        }
    }

    pub(crate) fn verify(dir: &Path, options: &Options) -> Result<VerifyReport> {
        let fs = &*options.file_system;
        let hasher = options.key_hasher;
        if fs.file_len(dir).map_err(|e| io_err(dir, e))?.is_none() {
            return Err(io_err(
                dir,
                io::Error::new(io::ErrorKind::NotFound, "no such directory"),
            ));
        }
        let _lock = lock_dir(fs, dir)?;
        let n = live_generation(fs, dir)?;
        let gen_dir = dir.join(layout::gen_name(n));
        let mut report = VerifyReport {
            generation: n,
            ..VerifyReport::default()
        };
        let log_path = gen_dir.join(layout::MAP_LOG);
        let mut map: HashMap<Box<[u8]>, u16> = HashMap::new();
        match read_optional(fs, &log_path, usize::MAX)? {
            None => report
                .problems
                .push(format!("map log {} is missing", log_path.display())),
            Some(bytes) => {
                let (end, _) = maplog::decode_log(&bytes, |rec| match rec {
                    MapRecord::Put { key, idx } => {
                        map.insert(key.0.into(), idx);
                    }
                    MapRecord::Remove { key } => {
                        map.remove(key.0);
                    }
                });
                match end {
                    LogEnd::Clean => {}
                    LogEnd::TornTail { what, .. } => report
                        .problems
                        .push(format!("map log {}: torn tail: {what}", log_path.display())),
                    LogEnd::Damaged { at, what } => report.problems.push(format!(
                        "map log {} damaged at offset {at}: {what}",
                        log_path.display()
                    )),
                }
            }
        }
        let scan = scan_generation(fs, &gen_dir, hasher, false)?;
        report.files_checked = scan.files;
        report.spare_files = scan.spares;
        report.problems.extend(scan.problems);
        let mut found: HashMap<Box<[u8]>, u16> = scan.keys.into_iter().collect();
        for (key, idx) in &map {
            match found.remove(key) {
                Some(i) if i == *idx => report.keys_ok += 1,
                Some(i) => report.problems.push(format!(
                    "key {} is mapped to file index {idx} but found in index {i}",
                    show_key(key)
                )),
                None => {
                    let path = gen_dir.join(layout::value_rel_path(hasher(key), *idx));
                    if fs.file_len(&path).map_err(|e| io_err(&path, e))?.is_none() {
                        report.dangling_entries += 1;
                    } else {
                        report.problems.push(format!(
                            "key {} is in the map but its value file {} is not good",
                            show_key(key),
                            path.display()
                        ));
                    }
                }
            }
        }
        report.stray_files = found.len() as u64;
        for name in list_names(fs, dir)? {
            if let Some(g) = layout::parse_gen_name(&name) {
                if g != n {
                    report.old_generations += 1;
                }
            }
        }
        Ok(report)
    }

    pub(crate) fn repair(dir: &Path, options: &Options) -> Result<RepairReport> {
        let fs = &*options.file_system;
        let hasher = options.key_hasher;
        if fs.file_len(dir).map_err(|e| io_err(dir, e))?.is_none() {
            return Err(io_err(
                dir,
                io::Error::new(io::ErrorKind::NotFound, "no such directory"),
            ));
        }
        let _lock = lock_dir(fs, dir)?;
        let mut report = RepairReport::default();
        let mut gens: Vec<u64> = list_names(fs, dir)?
            .iter()
            .filter_map(|n| layout::parse_gen_name(n))
            .collect();
        gens.sort_unstable();
        let n = match live_generation(fs, dir) {
            Ok(n) => n,
            Err(e) => {
                let n = gens.last().copied().unwrap_or(0);
                report.problems.push(format!("{e}; using generation {n}"));
                n
            }
        };
        let gen_dir = dir.join(layout::gen_name(n));
        create_generation_dir(fs, &gen_dir, true)?;
        let scan = scan_generation(fs, &gen_dir, hasher, true)?;
        let max_cas_epoch = scan.max_cas >> 40;
        report.files_scanned = scan.files;
        report.keys_recovered = scan.keys.len() as u64;
        report.files_dropped = scan.dropped;
        report.problems.extend(scan.problems);
        let gen = Generation {
            dir: gen_dir.clone(),
            shards: empty_shards(),
            count: AtomicUsize::new(0),
            log: Mutex::new(LogState {
                file: Box::new(NullAppend),
                records: 0,
            }),
            subdir_ready: Box::new([]),
            spares: Box::new([]),
            spare_counter: AtomicU64::new(0),
            expiring_marked: AtomicBool::new(false),
        };
        for (key, idx) in scan.keys {
            let h = hasher(&key);
            gen.shard(h)
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key, idx);
        }
        write_log_snapshot(fs, &gen, true)?;
        // Cas numbers must stay unique: the boot epoch must be past every
        // cas found (its high bits), whatever EPOCH says or if it is damaged.
        let epoch_path = dir.join(layout::EPOCH_FILE);
        let min_epoch = max_cas_epoch;
        let epoch_ok = matches!(read_u64_file(fs, &epoch_path), Ok(Some(e)) if e >= min_epoch);
        if !epoch_ok {
            report
                .problems
                .push(format!("{} reset to {min_epoch}", epoch_path.display()));
            write_small_file(
                fs,
                dir,
                layout::EPOCH_FILE,
                format!("{min_epoch}\n").as_bytes(),
                true,
            )?;
        }
        write_small_file(
            fs,
            dir,
            layout::CURRENT_FILE,
            layout::current_contents(n).as_bytes(),
            true,
        )?;
        let stop = Stop::default();
        for g in gens.into_iter().filter(|&g| g != n) {
            let path = dir.join(layout::gen_name(g));
            remove_tree(fs, &path, &stop).map_err(|e| io_err(&path, e))?;
            report
                .problems
                .push(format!("removed old generation {}", path.display()));
        }
        Ok(report)
    }

    fn show_key(key: &[u8]) -> String {
        match std::str::from_utf8(key) {
            Ok(s) if s.chars().all(|c| !c.is_control()) => format!("{s:?}"),
            _ => key.iter().map(|b| format!("{b:02x}")).collect(),
        }
    }
}
