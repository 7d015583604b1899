//! The write-ahead journal at run time: appends, the group commit of
//! `Always` writers' `fdatasync`s (in `Periodic` the flusher's), the switch
//! of files at a checkpoint, the reuse of retired files, and reading the
//! journal back for replay on open (`store/open.rs` applies it). The file
//! format is in `crate::journal`; the protocol and why each step is there
//! in docs/DESIGN.md (sections 3.2, 3.3, 3.5 and 4).
//!
//! Reusing a retired file (renamed from `journal.spare`) instead of
//! creating one, and growing a file by [`JOURNAL_GROW`] of zeros at once,
//! both let a `fdatasync` rewrite data blocks without writing the inode
//! (measured: 19k against 25-28k overwrites/s of 1000 B with 16 writers
//! over 8 s, append and unlink against reuse; 24-27k -> 29-33k overwrites/s
//! of 100 B for the growth by zeros).

use std::collections::{HashMap, HashSet};
use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::files::read_optional;
use super::health::Health;
use super::io_err;
use super::Stop;
use crate::error::{Error, Result};
use crate::io::FileSystem;
use crate::journal::{self, Entry};
use crate::{layout, record};

/// A journal file grows by at least this much at a time (zeros).
const JOURNAL_GROW: u64 = 1 << 20;
/// A journal file longer than this asks for a checkpoint at once. It
/// bounds the journal's disk space (this file and the retired one kept
/// for reuse) and the replay after a power cut; the further apart
/// checkpoints are, the more rewrites of a value file reach the disk as
/// one (measured: `always` over the wire at 0.93x Redis's sets with
/// checkpoints every 30 s or 256 MiB, 0.8x every 1 s or 32 MiB).
pub(super) const CHECKPOINT_BYTES: u64 = 128 << 20;

/// The journal of a `Periodic` or `Always` store.
///
/// A writer appends its entry itself, as a batch of one frame, under the
/// file's lock (which numbers the entries in file order and keeps the
/// write short: one `pwrite`), and goes on at once: nothing is
/// acknowledged yet. The syncer thread ([`Journal::syncer_loop`]) makes
/// entries durable, one `fdatasync` at a time for every entry written so
/// far: in `Periodic` every interval, in `Always` as soon as someone waits
/// for an entry ([`Journal::wait_durable`], [`Journal::when_durable`]),
/// and each flush serves every waiter it covers at once (group commit).
/// No writer waits for another one's write, and none holds a lock while
/// it waits.
pub(super) struct Journal {
    /// The file being written. Lock order: `flushing`, then `file`.
    file: Mutex<JournalFile>,
    /// Entries written to the file: entry `n` is once `written >= n`.
    /// Moves under `file`'s lock.
    written: AtomicU64,
    /// Entries known durable: entry `n` is once `synced >= n`.
    synced: AtomicU64,
    /// Held for each `fdatasync`, one at a time.
    flushing: Mutex<()>,
    /// Who waits for a flush; the syncer sleeps on `wake`.
    group: Mutex<GroupCommit>,
    wake: Condvar,
    fs: Arc<dyn FileSystem>,
    dir: PathBuf,
    /// `Always`: a change is acknowledged only once its entry is durable.
    durable_acks: bool,
    /// Turned read-only by a failed flush.
    health: Arc<Health>,
    /// The first failed flush: its file and error, given to the waiters
    /// it leaves behind.
    failure: Mutex<Option<FlushFailure>>,
    /// Kicked when the file passes [`CHECKPOINT_BYTES`].
    flusher: Arc<Stop>,
}

/// A failed flush, kept to report it again: the file, the error's kind,
/// its OS error number and its text.
type FlushFailure = (PathBuf, io::ErrorKind, Option<i32>, String);

/// What runs once an entry is durable (or the store failed): a thread
/// parked in [`Journal::wait_durable`] is unparked, a callback of
/// [`Journal::when_durable`] is called with the outcome.
enum Waiter {
    Thread(std::thread::Thread),
    Then(Box<dyn FnOnce(Result<()>) + Send>),
}

/// The waiters of the group commit and the syncer's state.
#[derive(Default)]
struct GroupCommit {
    /// The entry each waits for.
    waiters: Vec<(u64, Waiter)>,
    /// The syncer sleeps on `wake`: a new waiter must wake it.
    idle: bool,
    /// A waiting thread runs a flush itself (the syncer was idle).
    leading: bool,
    /// The store is closing: the syncer serves who waits and stops, and
    /// later waiters flush for themselves.
    closing: bool,
}

/// The journal file being written: `journal.<seq>`, written up to `len`
/// (it may be longer: a reused file keeps its old bytes after the end).
struct JournalFile {
    seq: u64,
    path: PathBuf,
    len: u64,
    /// The file's size: batches up to it are written in place.
    allocated: u64,
    /// Entries written to it (a checkpoint is due only after some).
    entries: u64,
}

/// Makes journal file `seq`: the set-aside file of an earlier checkpoint
/// renamed (its blocks are rewritten in place, so flushes do not have to
/// update the inode), or a new one; the header is written and flushed and
/// the name made durable before any entry goes in.
fn create_journal_file(fs: &dyn FileSystem, dir: &Path, seq: u64) -> Result<JournalFile> {
    let path = dir.join(layout::journal_name(seq));
    let spare = dir.join(layout::JOURNAL_SPARE);
    let reused = match fs.rename(&spare, &path) {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(e) => return Err(io_err(&spare, e)),
    };
    let header = journal::header(seq);
    if reused {
        fs.write_at(&path, 0, &header)
    } else {
        let _ = fs.remove_file(&path);
        fs.create_new(&path, &header)
    }
    .and_then(|()| fs.sync_file_data(&path))
    .map_err(|e| io_err(&path, e))?;
    fs.sync_dir(dir).map_err(|e| io_err(dir, e))?;
    let allocated = fs
        .file_len(&path)
        .map_err(|e| io_err(&path, e))?
        .unwrap_or(0);
    Ok(JournalFile {
        seq,
        path,
        len: journal::HEADER_LEN as u64,
        allocated,
        entries: 0,
    })
}

impl Journal {
    /// Opens a new journal file numbered `seq` in `dir`. `durable_acks`:
    /// `Always` (a writer waits for its entry's `fdatasync`).
    pub(super) fn create(
        fs: Arc<dyn FileSystem>,
        dir: &Path,
        seq: u64,
        durable_acks: bool,
        health: Arc<Health>,
        flusher: Arc<Stop>,
    ) -> Result<Journal> {
        Ok(Journal {
            file: Mutex::new(create_journal_file(&*fs, dir, seq)?),
            written: AtomicU64::new(0),
            synced: AtomicU64::new(0),
            flushing: Mutex::new(()),
            group: Mutex::new(GroupCommit::default()),
            wake: Condvar::new(),
            fs,
            dir: dir.to_path_buf(),
            durable_acks,
            health,
            failure: Mutex::new(None),
            flusher,
        })
    }

    /// Appends `entry` to the journal file and returns its number: a
    /// process crash can no longer lose it, a power cut can until the
    /// syncer's next flush (an `Always` change is acknowledged only after
    /// that, see [`Journal::owes`]). On an error nothing of the entry stays
    /// in the file.
    pub(super) fn append(&self, entry: &Entry<'_>) -> Result<u64> {
        self.health.check()?;
        // One batch of one frame: the batch header is filled in under the
        // lock (its checksum covers the file's number).
        let mut batch = vec![0u8; journal::FRAME_HEADER];
        journal::encode(entry, &mut batch);
        let n = {
            let mut f = self.file.lock();
            let header = journal::batch_header(f.seq, &batch[journal::FRAME_HEADER..]);
            batch[..journal::FRAME_HEADER].copy_from_slice(&header);
            self.write_at_end(&mut f, &batch)?;
            f.entries += 1;
            if f.len > CHECKPOINT_BYTES {
                self.flusher.kick();
            }
            let n = self.written.load(Ordering::Relaxed) + 1;
            self.written.store(n, Ordering::Release);
            n
        };
        Ok(n)
    }

    /// Writes `batch` at the end of the file (`file`'s lock held). A
    /// failed write is cut off again: its complete frames must not read
    /// as good after a shorter batch written over its start.
    fn write_at_end(&self, f: &mut JournalFile, batch: &[u8]) -> Result<()> {
        let end = f.len + batch.len() as u64;
        if end > f.allocated {
            // Zeros ahead of the batches (they read as the end), so that
            // most batches are written in place and their flush does not
            // have to write the inode for a new length. On a disk too full
            // for them the batch alone still goes in (the file grows by
            // what the write adds).
            let to = end.max(f.allocated + JOURNAL_GROW);
            let zeros = vec![0u8; (to - f.allocated) as usize];
            match self.fs.write_at(&f.path, f.allocated, &zeros) {
                Ok(()) => f.allocated = to,
                Err(e) => {
                    log::debug!("journal {}: no room to grow ahead: {e}", f.path.display());
                    let _ = self.fs.set_len(&f.path, f.len);
                    f.allocated = f.len;
                }
            }
        }
        let written = self.fs.write_at(&f.path, f.len, batch);
        if let Err(e) = written {
            if let Err(e2) = self.fs.set_len(&f.path, f.len) {
                self.health.fail(format!(
                    "journal {} has a torn entry that cannot be cut off: {e2}",
                    f.path.display()
                ));
            }
            f.allocated = f.len;
            return Err(io_err(&f.path, e));
        }
        f.len = end;
        f.allocated = f.allocated.max(end);
        Ok(())
    }

    /// Whether a change or a read of entry `n` may be acknowledged only
    /// once the entry is durable: `Always`, and not durable yet.
    pub(super) fn owes(&self, n: u64) -> bool {
        self.durable_acks && self.synced.load(Ordering::Acquire) < n
    }

    /// Waits until entry `n` is durable: parks until the syncer's flush
    /// that covers it unparks this thread; or, when the syncer is idle and
    /// nobody else flushes, runs that flush itself (a lone writer then
    /// waits for its `fdatasync` alone, not for two thread switches too).
    pub(super) fn wait_durable(&self, n: u64) -> Result<()> {
        {
            let mut group = self.group.lock();
            if self.synced.load(Ordering::Acquire) >= n {
                return Ok(());
            }
            self.health.check()?;
            if group.closing {
                drop(group);
                return self.flush().map(drop);
            }
            if group.idle && !group.leading {
                group.leading = true;
                drop(group);
                let flushed = self.flush();
                let served = {
                    let mut group = self.group.lock();
                    group.leading = false;
                    let served = self.take_served(&mut group, flushed.is_ok());
                    // Who came meanwhile is the syncer's.
                    if !group.waiters.is_empty() {
                        self.wake.notify_one();
                    }
                    served
                };
                self.serve(served, flushed.is_ok());
                return flushed.map(drop);
            }
            group
                .waiters
                .push((n, Waiter::Thread(std::thread::current())));
            if group.idle {
                self.wake.notify_one();
            }
        }
        // A stale unpark only makes the loop look again.
        while self.synced.load(Ordering::Acquire) < n {
            if self.health.read_only() {
                return Err(self.failure());
            }
            std::thread::park();
        }
        Ok(())
    }

    /// Why an entry will not be made durable: the failed flush, or what
    /// else turned the store read-only.
    fn failure(&self) -> Error {
        match &*self.failure.lock() {
            Some((path, kind, code, what)) => io_err(
                path,
                match code {
                    Some(code) => io::Error::from_raw_os_error(*code),
                    None => io::Error::new(*kind, what.clone()),
                },
            ),
            None => match self.health.check() {
                Err(e) => e,
                Ok(()) => Error::ReadOnly {
                    reason: "the journal could not be flushed".into(),
                },
            },
        }
    }

    /// Calls `then` once entry `n` is durable, with `Ok`, or with the error
    /// that turned the store read-only before it was: on this thread if
    /// that is already known, else on the syncer's after its flush. This
    /// thread does not wait.
    pub(super) fn when_durable(&self, n: u64, then: Box<dyn FnOnce(Result<()>) + Send>) {
        let mut group = self.group.lock();
        if self.synced.load(Ordering::Acquire) >= n {
            drop(group);
            return then(Ok(()));
        }
        if self.health.read_only() {
            drop(group);
            return then(Err(self.failure()));
        }
        if group.closing {
            drop(group);
            return then(self.flush().map(drop));
        }
        group.waiters.push((n, Waiter::Then(then)));
        if group.idle {
            self.wake.notify_one();
        }
    }

    /// The syncer thread: a flush as soon as someone waits (`Always`),
    /// and one every `every` when entries were written since the last
    /// (`Periodic`); each flush covers every entry written when it starts
    /// and serves every waiter it covers at once. Returns once
    /// [`Journal::stop_syncer`] was called and nobody waits.
    pub(super) fn syncer_loop(&self, every: Option<Duration>) {
        let mut last = Instant::now();
        loop {
            {
                let mut group = self.group.lock();
                loop {
                    if !group.waiters.is_empty() {
                        break;
                    }
                    if group.closing {
                        return;
                    }
                    let behind =
                        self.written.load(Ordering::Acquire) > self.synced.load(Ordering::Acquire);
                    group.idle = true;
                    match every {
                        Some(every) => {
                            let left = every.saturating_sub(last.elapsed());
                            if left.is_zero() && behind && !self.health.read_only() {
                                group.idle = false;
                                break;
                            }
                            let left = if left.is_zero() { every } else { left };
                            self.wake.wait_for(&mut group, left);
                        }
                        None => self.wake.wait(&mut group),
                    }
                    group.idle = false;
                }
            }
            let flushed = self.flush();
            last = Instant::now();
            let served = self.take_served(&mut self.group.lock(), flushed.is_ok());
            self.serve(served, flushed.is_ok());
        }
    }

    /// Takes the waiters a flush served: those it made durable, or after
    /// a failed one (`flushed` false) all of them.
    fn take_served(&self, group: &mut GroupCommit, flushed: bool) -> Vec<(u64, Waiter)> {
        let upto = self.synced.load(Ordering::Acquire);
        let (served, left) = std::mem::take(&mut group.waiters)
            .into_iter()
            .partition(|(m, _)| !flushed || *m <= upto);
        group.waiters = left;
        served
    }

    /// Wakes the waiters a flush served, or calls them back, with the
    /// failure when it failed.
    fn serve(&self, served: Vec<(u64, Waiter)>, flushed: bool) {
        for (_, waiter) in served {
            match waiter {
                Waiter::Thread(t) => t.unpark(),
                Waiter::Then(then) => {
                    let outcome = if flushed { Ok(()) } else { Err(self.failure()) };
                    // A callback that panics must not take the syncer,
                    // which every later acknowledgement needs.
                    let called = panic::catch_unwind(AssertUnwindSafe(|| then(outcome)));
                    if called.is_err() {
                        log::error!("a callback of Unsynced::then panicked");
                    }
                }
            }
        }
    }

    /// Makes the syncer serve who waits and return; later waiters flush
    /// for themselves.
    pub(super) fn stop_syncer(&self) {
        self.group.lock().closing = true;
        self.wake.notify_all();
    }

    /// Makes every entry written to the journal file so far durable
    /// (`fdatasync`, unless the syncer has already); returns the number of
    /// the last one.
    pub(super) fn flush(&self) -> Result<u64> {
        let _one = self.flushing.lock();
        self.flush_locked()
    }

    /// [`Journal::flush`] with `flushing` held.
    fn flush_locked(&self) -> Result<u64> {
        self.health.check()?;
        // Read under the file's lock: entries up to `upto` are in this
        // file (a switch makes the old file's entries durable first).
        let (upto, path) = {
            let f = self.file.lock();
            (self.written.load(Ordering::Acquire), f.path.clone())
        };
        self.sync_upto(&path, upto)?;
        Ok(upto)
    }

    /// Makes entries up to `upto`, all in the file at `path`, durable
    /// unless they are already; a failure turns the store read-only.
    fn sync_upto(&self, path: &Path, upto: u64) -> Result<()> {
        if upto <= self.synced.load(Ordering::Acquire) {
            return Ok(());
        }
        if let Err(e) = self.fs.sync_file_data(path) {
            self.failure.lock().get_or_insert_with(|| {
                (
                    path.to_path_buf(),
                    e.kind(),
                    e.raw_os_error(),
                    e.to_string(),
                )
            });
            let e = io_err(path, e);
            self.health
                .fail(format!("flush of the journal failed: {e}"));
            return Err(e);
        }
        self.synced.fetch_max(upto, Ordering::AcqRel);
        Ok(())
    }

    /// Checkpoint, first half: switches to a new journal file and returns
    /// the old one's path and the number of its last entry. Every entry of
    /// the old file is made durable first.
    pub(super) fn switch(&self) -> Result<(PathBuf, u64)> {
        let next_seq = self.file.lock().seq + 1;
        let new = create_journal_file(&*self.fs, &self.dir, next_seq)?;
        let _one = self.flushing.lock();
        self.flush_locked()?;
        let mut f = self.file.lock();
        // Entries appended since that flush are made durable under the
        // file's lock, which holds further appends off.
        let last = self.written.load(Ordering::Acquire);
        self.sync_upto(&f.path, last)?;
        let old = std::mem::replace(&mut *f, new);
        Ok((old.path, last))
    }

    /// Checkpoint, second half: sets the old file `old` aside for reuse
    /// (`journal.spare`). The caller has made the value files durable
    /// (`syncfs`), so nothing in it is needed any more.
    pub(super) fn set_aside(&self, old: &Path) -> Result<()> {
        let spare = self.dir.join(layout::JOURNAL_SPARE);
        self.fs.rename(old, &spare).map_err(|e| io_err(old, e))
    }

    /// At a clean close, after everything was applied and made durable:
    /// sets the current file aside (nothing to replay).
    pub(super) fn close(&self) -> Result<()> {
        self.set_aside(&self.path())
    }

    /// Gives back the zeros the current file was grown by ahead of its
    /// entries (on a full disk); `true` if there were any.
    pub(super) fn release_reserve(&self) -> bool {
        let mut f = self.file.lock();
        if f.allocated <= f.len || self.fs.set_len(&f.path, f.len).is_err() {
            return false;
        }
        f.allocated = f.len;
        true
    }

    /// Bytes written to the current journal file.
    pub(super) fn len(&self) -> u64 {
        self.file.lock().len
    }

    /// Entries written since the last checkpoint.
    pub(super) fn since_checkpoint(&self) -> u64 {
        self.file.lock().entries
    }

    /// The path of the journal file being written.
    fn path(&self) -> PathBuf {
        self.file.lock().path.clone()
    }
}

/// One journal entry of a key: its cas and its record (`None` for a
/// removal).
type Logged = (u64, Option<Vec<u8>>);

/// What the journal says about one key: its last entry that was not
/// cancelled.
pub(super) enum Final {
    /// Its whole value record.
    Put(Vec<u8>),
    Remove,
}

/// Reads journal files (`(number, path)`, sorted) and returns, per key of
/// generation `gen_no` in the order keys first appear, its last entry
/// that was not cancelled: its cas and what it does. Reading a file stops
/// at its first bad batch (the usual end of a reused file).
pub(super) fn read_final(
    fs: &dyn FileSystem,
    files: &[(u64, PathBuf)],
    gen_no: u64,
) -> Result<Vec<(Vec<u8>, u64, Final)>> {
    // Per key, its entries in order.
    let mut ops: HashMap<Vec<u8>, Vec<Logged>> = HashMap::new();
    let mut order: Vec<Vec<u8>> = Vec::new();
    let mut cancelled: HashSet<u64> = HashSet::new();
    for (seq, path) in files {
        let Some(bytes) = read_optional(fs, path, usize::MAX)? else {
            continue;
        };
        let end = journal::decode(&bytes, *seq, |entry| {
            let (key, cas, rec) = match entry {
                Entry::Put { gen, record } if gen == gen_no => {
                    let Ok(r) = record::decode(record) else {
                        return;
                    };
                    (r.key, r.cas, Some(record.to_vec()))
                }
                Entry::Remove { gen, cas, key } if gen == gen_no => (key, cas, None),
                Entry::Cancel { gen, cas } if gen == gen_no => {
                    cancelled.insert(cas);
                    return;
                }
                _ => return,
            };
            match ops.get_mut(key) {
                Some(v) => v.push((cas, rec)),
                None => {
                    order.push(key.to_vec());
                    ops.insert(key.to_vec(), vec![(cas, rec)]);
                }
            }
        });
        if let journal::End::Stopped { at, what } = end {
            log::debug!("journal {}: replay stops at {at} ({what})", path.display());
        }
    }
    let mut out = Vec::with_capacity(order.len());
    for key in order {
        let Some(entries) = ops.remove(&key) else {
            continue;
        };
        let last = entries
            .into_iter()
            .rev()
            .find(|(cas, _)| !cancelled.contains(cas));
        if let Some((cas, rec)) = last {
            let op = match rec {
                Some(r) => Final::Put(r),
                None => Final::Remove,
            };
            out.push((key, cas, op));
        }
    }
    Ok(out)
}
