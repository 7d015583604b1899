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
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use super::files::read_optional;
use super::health::Health;
use super::io_err;
use super::Stop;
use crate::error::Result;
use crate::io::FileSystem;
use crate::journal::{self, Entry};
use crate::{layout, record};

/// A journal file grows by at least this much at a time (zeros).
const JOURNAL_GROW: u64 = 1 << 20;
/// A journal file longer than this asks for a checkpoint at once.
pub(super) const CHECKPOINT_BYTES: u64 = 32 << 20;

/// The journal of a `Periodic` or `Always` store.
///
/// A writer appends its entry itself, as a batch of one frame, under the
/// file's lock (which numbers the entries in file order and keeps the
/// write short: one `pwrite`), and goes on: a `Periodic` writer at once
/// (the flusher makes the entry durable later, [`Journal::flush`]), an
/// `Always` writer once a `fdatasync` that started after its write has
/// finished. One `fdatasync` runs at a time; an `Always` writer that finds
/// none running leads one for every entry written so far, and the writers
/// that arrived meanwhile park until it unparks them (group commit, see
/// [`Journal::wait_durable`]). No writer waits for another one's write.
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
    /// `Always` writers waiting for a flush, and whether one of them is
    /// running it.
    group: Mutex<GroupCommit>,
    fs: Arc<dyn FileSystem>,
    dir: PathBuf,
    /// `Always`: a writer returns only once its entry is durable.
    durable_acks: bool,
    /// Turned read-only by a failed flush.
    health: Arc<Health>,
    /// Kicked when the file passes [`CHECKPOINT_BYTES`].
    flusher: Arc<Stop>,
}

/// The writers of a group commit.
#[derive(Default)]
struct GroupCommit {
    leading: bool,
    /// Parked writers: the entry each waits for, and its thread.
    waiters: Vec<(u64, std::thread::Thread)>,
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
            fs,
            dir: dir.to_path_buf(),
            durable_acks,
            health,
            flusher,
        })
    }

    /// Appends `entry` to the journal file and returns its number, once
    /// it is durable (`Always`) or written (`Periodic`: a process crash
    /// can no longer lose it; the flusher makes it durable). On an error
    /// nothing of the entry stays in the file.
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
        if self.durable_acks {
            self.wait_durable(n)?;
        }
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

    /// Waits until entry `n` is durable. When no writer is flushing, this
    /// one leads: it runs a `fdatasync` covering every entry written so
    /// far, then unparks every waiting writer it served, and one of the
    /// others to lead the next flush. Otherwise it parks until a leader
    /// unparks it. (Waiters queued on a lock instead would be handed the
    /// lock one at a time, a wake-up each, after every flush.)
    fn wait_durable(&self, n: u64) -> Result<()> {
        loop {
            if self.synced.load(Ordering::Acquire) >= n {
                return Ok(());
            }
            let mut group = self.group.lock();
            if self.synced.load(Ordering::Acquire) >= n {
                return Ok(());
            }
            self.health.check()?;
            if group.leading {
                group.waiters.push((n, std::thread::current()));
                drop(group);
                // A stale unpark only makes the loop look again.
                std::thread::park();
                continue;
            }
            group.leading = true;
            drop(group);
            let flushed = self.flush();
            let mut group = self.group.lock();
            group.leading = false;
            let upto = self.synced.load(Ordering::Acquire);
            // On an error every waiter looks (the store is read-only).
            let mut wake = Vec::new();
            group.waiters.retain(|(m, thread)| {
                let served = flushed.is_err() || *m <= upto;
                if served {
                    wake.push(thread.clone());
                }
                !served
            });
            if let Some((_, next)) = group.waiters.pop() {
                wake.push(next);
            }
            drop(group);
            wake.into_iter().for_each(|t| t.unpark());
            flushed?;
        }
    }

    /// Makes every entry written to the journal file so far durable
    /// (`fdatasync`; in `Always` mode their writers have mostly done so
    /// already); returns the number of the last one.
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
