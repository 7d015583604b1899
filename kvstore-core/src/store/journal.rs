//! The write-ahead journal at run time: group commit (writers lead
//! batches: written to the file in `Periodic`, and made durable in
//! `Always`), the flusher's `fdatasync`, checkpoints, reuse of journal
//! files, and reading the journal back for replay on open
//! (`store/open.rs` applies it). The file format is in
//! `crate::journal`; the protocol and why each step is there in
//! docs/DESIGN.md (sections 3.2, 3.3, 3.5 and 4).
//!
//! Reusing a checkpointed file (renamed from `journal.spare`) instead of
//! creating one, and growing a file by [`JOURNAL_GROW`] of zeros at once,
//! both let a batch's `fdatasync` rewrite data blocks without writing the
//! inode (measured: 19k against 25-28k overwrites/s of 1000 B with 16
//! writers over 8 s, append and unlink against reuse; 24-27k -> 29-33k
//! overwrites/s of 100 B for the growth by zeros).

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
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

/// Most batches one leader flushes in a row.
const LEAD_ROUNDS: u32 = 3;
/// A journal file grows by at least this much at a time (zeros).
const JOURNAL_GROW: u64 = 1 << 20;
/// A journal file longer than this asks for a checkpoint at once.
pub(super) const CHECKPOINT_BYTES: u64 = 32 << 20;

/// The journal of a `Periodic` or `Always` store.
///
/// Group commit: writers encode their entry into `state.buffer` and wait;
/// one leader at a time takes the whole buffer, writes it to the file in
/// one write and (`Always`) runs one `fdatasync`, for every writer whose
/// entry was in it; the writers then stage their changes in the pending
/// table, which the flusher applies to the value files. Writers that arrive meanwhile fill the next buffer. A
/// waiting writer parks; the leader publishes `written` (and `synced`) and
/// unparks exactly the writers it served (waking them through a condvar
/// would send them all to fight for the state mutex). In `Periodic` the
/// flusher runs the `fdatasync` later ([`Journal::flush`]).
pub(super) struct Journal {
    /// The file being written, held by the leader for its write and flush.
    /// Lock order: `file`, then `state`.
    file: Mutex<JournalFile>,
    state: Mutex<JournalState>,
    /// Entries known durable: entry `n` is once `synced >= n`.
    pub(super) synced: AtomicU64,
    /// Entries whose batch is written to the file (not necessarily
    /// durable): in `Periodic` mode a writer waits for this, not `synced`.
    pub(super) written: AtomicU64,
    /// Bytes of `state.buffer`, readable without the lock (`Periodic`
    /// back-pressure bounds it).
    pub(super) buffered: AtomicUsize,
    /// Set while some entry's batch failed and its writer has not read
    /// the error yet (`state.failed`): the lock-free check is then off.
    any_failed: AtomicBool,
    /// Held by [`Journal::flush`] for its `fdatasync`.
    flushing: Mutex<()>,
    fs: Arc<dyn FileSystem>,
    dir: PathBuf,
    /// `Always`: a batch is flushed before its writers are acknowledged.
    durable_acks: bool,
    /// Turned read-only by a failed write or flush.
    health: Arc<Health>,
    /// Kicked when the file passes [`CHECKPOINT_BYTES`].
    flusher: Arc<Stop>,
}

/// The journal file being written: `journal.<seq>`, written up to `len`
/// (it may be longer: a reused file keeps its old bytes after the end).
struct JournalFile {
    seq: u64,
    path: PathBuf,
    len: u64,
    /// The file's size: batches up to it are written in place.
    allocated: u64,
}

#[derive(Default)]
struct JournalState {
    /// Frames not yet written to the file.
    buffer: Vec<u8>,
    /// Entries numbered so far / taken into batches.
    appended: u64,
    taken: u64,
    /// A leader is writing and flushing.
    syncing: bool,
    /// Parked writers: (entry number, thread).
    waiters: Vec<(u64, std::thread::Thread)>,
    /// Entries whose batch could not be written (cut off again): the
    /// writer reads its error here.
    failed: HashMap<u64, (io::ErrorKind, String)>,
    /// Entries written since the last checkpoint switched files.
    since_checkpoint: u64,
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
    })
}

impl Journal {
    /// Opens a new journal file numbered `seq` in `dir`. `durable_acks`:
    /// `Always` (a batch's writers wait for its `fdatasync`).
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
            state: Mutex::new(JournalState::default()),
            synced: AtomicU64::new(0),
            written: AtomicU64::new(0),
            buffered: AtomicUsize::new(0),
            any_failed: AtomicBool::new(false),
            flushing: Mutex::new(()),
            fs,
            dir: dir.to_path_buf(),
            durable_acks,
            health,
            flusher,
        })
    }

    /// Adds `entry` to the journal and waits until its batch is durable
    /// (`Always`) or written to the file (`Periodic`: a process crash can
    /// no longer lose it, and the flusher makes it durable, see
    /// [`Journal::flush`]); returns its number. Writers share the
    /// writes and flushes of their batches (group commit).
    pub(super) fn append(&self, entry: &Entry<'_>) -> Result<u64> {
        self.health.check()?;
        let n = {
            let mut st = self.state.lock();
            journal::encode(entry, &mut st.buffer);
            self.buffered.store(st.buffer.len(), Ordering::Relaxed);
            st.appended += 1;
            st.appended
        };
        self.wait_for(n)?;
        Ok(n)
    }

    /// Makes every entry written to the journal file so far durable
    /// (`fdatasync`; in `Always` mode their batches have done so already);
    /// returns the number of the last one.
    pub(super) fn flush(&self) -> Result<u64> {
        // One flush at a time: callers that waited for it find their
        // entries durable and skip their own (the flusher and helping
        // writers flush concurrently).
        let _one = self.flushing.lock();
        // Read under the file's lock: no batch is half written.
        let (upto, path) = {
            let f = self.file.lock();
            (self.written.load(Ordering::SeqCst), f.path.clone())
        };
        if upto <= self.synced.load(Ordering::SeqCst) {
            return Ok(upto);
        }
        if let Err(e) = self.fs.sync_file_data(&path) {
            let e = io_err(&path, e);
            self.health
                .fail(format!("flush of the journal failed: {e}"));
            return Err(e);
        }
        self.synced.fetch_max(upto, Ordering::SeqCst);
        Ok(upto)
    }

    /// Waits until entry `n` is durable (`Always`) or written to the file
    /// (`Periodic`, where the flusher makes it durable), leading batches
    /// when no other writer is.
    fn wait_for(&self, n: u64) -> Result<()> {
        let done = if self.durable_acks {
            &self.synced
        } else {
            &self.written
        };
        loop {
            if done.load(Ordering::SeqCst) >= n && !self.any_failed.load(Ordering::SeqCst) {
                return Ok(());
            }
            let mut st = self.state.lock();
            if let Some((kind, what)) = st.failed.remove(&n) {
                self.any_failed
                    .store(!st.failed.is_empty(), Ordering::SeqCst);
                drop(st);
                let path = self.path();
                return Err(io_err(&path, io::Error::new(kind, what)));
            }
            if done.load(Ordering::SeqCst) >= n {
                return Ok(());
            }
            self.health.check()?;
            if st.syncing {
                st.waiters.push((n, std::thread::current()));
                drop(st);
                // A stale unpark only makes this loop look again.
                std::thread::park();
                continue;
            }
            st.syncing = true;
            drop(st);
            self.lead_batches()?;
        }
    }

    /// The leader: writes and flushes the buffer as a batch and, while
    /// writers keep coming, up to `LEAD_ROUNDS - 1` more (it is already
    /// running, where a hand-over costs a wake-up). Unparks the writers of
    /// each batch, and at the end one waiting writer to lead the next.
    fn lead_batches(&self) -> Result<()> {
        for round in 1..=LEAD_ROUNDS {
            let (frames, from, upto) = {
                let mut st = self.state.lock();
                let frames = std::mem::take(&mut st.buffer);
                self.buffered.store(0, Ordering::Relaxed);
                let (from, upto) = (st.taken, st.appended);
                st.taken = upto;
                (frames, from, upto)
            };
            let res = if frames.is_empty() {
                Ok(())
            } else {
                self.write_batch(&frames, from, upto)
            };
            let mut st = self.state.lock();
            if res.is_ok() && self.durable_acks {
                self.synced.fetch_max(upto, Ordering::SeqCst);
            }
            // Entries up to `upto` are durable or failed; on an error every
            // writer looks (the store is read-only now).
            let mut wake = Vec::new();
            st.waiters.retain(|(n, th)| {
                let done = res.is_err() || *n <= upto;
                if done {
                    wake.push(th.clone());
                }
                !done
            });
            let last = res.is_err() || st.buffer.is_empty() || round == LEAD_ROUNDS;
            if last {
                st.syncing = false;
                if !st.buffer.is_empty() {
                    // One writer of the next batch leads it (if none is
                    // parked yet, the next to look will).
                    if let Some((_, th)) = st.waiters.pop() {
                        wake.push(th);
                    }
                }
            }
            drop(st);
            wake.into_iter().for_each(|th| th.unpark());
            res?;
            if last {
                return Ok(());
            }
        }
        Ok(())
    }

    /// The leader's part: writes a batch (entries `from + 1 ..= upto`) to
    /// the file and flushes it. A failed write marks the entries failed
    /// (their writers read the error) and cuts the torn batch off.
    fn write_batch(&self, frames: &[u8], from: u64, upto: u64) -> Result<()> {
        let mut f = self.file.lock();
        let mut batch = Vec::with_capacity(journal::FRAME_HEADER + frames.len());
        batch.extend_from_slice(&journal::batch_header(f.seq, frames));
        batch.extend_from_slice(frames);
        let end = f.len + batch.len() as u64;
        let grown = if end > f.allocated {
            // Zeros ahead of the batches (they read as the end), so that
            // most batches are written in place and their flush does not
            // have to write the inode for a new length.
            let to = end.max(f.allocated + JOURNAL_GROW);
            let zeros = vec![0u8; (to - f.allocated) as usize];
            self.fs.write_at(&f.path, f.allocated, &zeros).map(|()| to)
        } else {
            Ok(f.allocated)
        };
        let written = grown.and_then(|to| {
            f.allocated = to;
            self.fs.write_at(&f.path, f.len, &batch)
        });
        if let Err(e) = written {
            // Cut the torn batch off: its complete frames must not read as
            // good after a shorter batch written over its start.
            if let Err(e2) = self.fs.set_len(&f.path, f.len) {
                self.health.fail(format!(
                    "journal {} has a torn entry that cannot be cut off: {e2}",
                    f.path.display()
                ));
            }
            f.allocated = f.len;
            let mut st = self.state.lock();
            for n in from + 1..=upto {
                st.failed.insert(n, (e.kind(), e.to_string()));
            }
            self.any_failed.store(true, Ordering::SeqCst);
            return Ok(());
        }
        f.len += batch.len() as u64;
        self.written.fetch_max(upto, Ordering::SeqCst);
        // `Periodic`: the flusher makes it durable ([`Journal::flush`]).
        if self.durable_acks {
            if let Err(e) = self.fs.sync_file_data(&f.path) {
                let e = io_err(&f.path, e);
                self.health
                    .fail(format!("flush of the journal failed: {e}"));
                return Err(e);
            }
        }
        if f.len > CHECKPOINT_BYTES {
            self.flusher.kick();
        }
        self.state.lock().since_checkpoint += upto - from;
        Ok(())
    }

    /// Checkpoint, first half: switches to a new journal file
    /// and returns the old one's path. The caller (the flusher) holds every
    /// stripe lock and has applied every change written to the old file.
    pub(super) fn switch(&self) -> Result<PathBuf> {
        let next_seq = self.file.lock().seq + 1;
        let new = create_journal_file(&*self.fs, &self.dir, next_seq)?;
        let mut f = self.file.lock();
        let old = std::mem::replace(&mut *f, new);
        self.state.lock().since_checkpoint = 0;
        Ok(old.path)
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

    /// Bytes written to the current journal file.
    pub(super) fn len(&self) -> u64 {
        self.file.lock().len
    }

    /// Entries written since the last checkpoint.
    pub(super) fn since_checkpoint(&self) -> u64 {
        self.state.lock().since_checkpoint
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
