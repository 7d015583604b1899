//! The write-ahead journal at run time: group commit (writers lead
//! batches: written to the file in `Periodic`, and made durable in
//! `Always`), the flusher's `fdatasync`, checkpoints, reuse of journal
//! files and replay on open. The file format is in
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

use super::*;
use crate::journal::{self, Entry};

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
/// flusher runs the `fdatasync` later ([`Inner::journal_flush`]).
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
    /// Held by [`Inner::journal_flush`] for its `fdatasync`.
    flushing: Mutex<()>,
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
    /// Opens a new journal file numbered `seq` in `dir`.
    pub(super) fn create(fs: &dyn FileSystem, dir: &Path, seq: u64) -> Result<Journal> {
        Ok(Journal {
            file: Mutex::new(create_journal_file(fs, dir, seq)?),
            state: Mutex::new(JournalState::default()),
            synced: AtomicU64::new(0),
            written: AtomicU64::new(0),
            buffered: AtomicUsize::new(0),
            any_failed: AtomicBool::new(false),
            flushing: Mutex::new(()),
        })
    }
}

impl Inner {
    /// Adds `entry` to the journal and waits until its batch is durable
    /// (`Always`) or written to the file (`Periodic`: a process crash can
    /// no longer lose it, and the flusher makes it durable, see
    /// [`Inner::journal_flush`]); returns its number. Writers share the
    /// writes and flushes of their batches (group commit).
    pub(super) fn journal_append(&self, j: &Journal, entry: &Entry<'_>) -> Result<u64> {
        self.check_writable()?;
        let n = {
            let mut st = j.state.lock();
            journal::encode(entry, &mut st.buffer);
            j.buffered.store(st.buffer.len(), Ordering::Relaxed);
            st.appended += 1;
            st.appended
        };
        self.journal_sync(j, n)?;
        Ok(n)
    }

    /// Makes every entry written to the journal file so far durable
    /// (`fdatasync`; in `Always` mode their batches have done so already);
    /// returns the number of the last one.
    pub(super) fn journal_flush(&self, j: &Journal) -> Result<u64> {
        // One flush at a time: callers that waited for it find their
        // entries durable and skip their own (the flusher and helping
        // writers flush concurrently).
        let _one = j.flushing.lock();
        // Read under the file's lock: no batch is half written.
        let (upto, path) = {
            let f = j.file.lock();
            (j.written.load(Ordering::SeqCst), f.path.clone())
        };
        if upto <= j.synced.load(Ordering::SeqCst) {
            return Ok(upto);
        }
        if let Err(e) = self.fs.sync_file_data(&path) {
            let e = io_err(&path, e);
            self.set_read_only(format!("flush of the journal failed: {e}"));
            return Err(e);
        }
        j.synced.fetch_max(upto, Ordering::SeqCst);
        Ok(upto)
    }

    /// Waits until entry `n` is durable (`Always`) or written to the file
    /// (`Periodic`, where the flusher makes it durable), leading batches
    /// when no other writer is.
    fn journal_sync(&self, j: &Journal, n: u64) -> Result<()> {
        let done = if self.acks_durable() {
            &j.synced
        } else {
            &j.written
        };
        loop {
            if done.load(Ordering::SeqCst) >= n && !j.any_failed.load(Ordering::SeqCst) {
                return Ok(());
            }
            let mut st = j.state.lock();
            if let Some((kind, what)) = st.failed.remove(&n) {
                j.any_failed.store(!st.failed.is_empty(), Ordering::SeqCst);
                drop(st);
                let path = lock_path(j);
                return Err(io_err(&path, io::Error::new(kind, what)));
            }
            if done.load(Ordering::SeqCst) >= n {
                return Ok(());
            }
            self.check_writable()?;
            if st.syncing {
                st.waiters.push((n, std::thread::current()));
                drop(st);
                // A stale unpark only makes this loop look again.
                std::thread::park();
                continue;
            }
            st.syncing = true;
            drop(st);
            self.lead_batches(j)?;
        }
    }

    /// The leader: writes and flushes the buffer as a batch and, while
    /// writers keep coming, up to `LEAD_ROUNDS - 1` more (it is already
    /// running, where a hand-over costs a wake-up). Unparks the writers of
    /// each batch, and at the end one waiting writer to lead the next.
    fn lead_batches(&self, j: &Journal) -> Result<()> {
        for round in 1..=LEAD_ROUNDS {
            let (frames, from, upto) = {
                let mut st = j.state.lock();
                let frames = std::mem::take(&mut st.buffer);
                j.buffered.store(0, Ordering::Relaxed);
                let (from, upto) = (st.taken, st.appended);
                st.taken = upto;
                (frames, from, upto)
            };
            let res = if frames.is_empty() {
                Ok(())
            } else {
                self.journal_write_batch(j, &frames, from, upto)
            };
            let mut st = j.state.lock();
            if res.is_ok() && self.acks_durable() {
                j.synced.fetch_max(upto, Ordering::SeqCst);
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
    fn journal_write_batch(&self, j: &Journal, frames: &[u8], from: u64, upto: u64) -> Result<()> {
        let mut f = j.file.lock();
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
                self.set_read_only(format!(
                    "journal {} has a torn entry that cannot be cut off: {e2}",
                    f.path.display()
                ));
            }
            f.allocated = f.len;
            let mut st = j.state.lock();
            for n in from + 1..=upto {
                st.failed.insert(n, (e.kind(), e.to_string()));
            }
            j.any_failed.store(true, Ordering::SeqCst);
            return Ok(());
        }
        f.len += batch.len() as u64;
        j.written.fetch_max(upto, Ordering::SeqCst);
        // `Periodic`: the flusher makes it durable ([`Inner::journal_flush`]).
        if self.acks_durable() {
            if let Err(e) = self.fs.sync_file_data(&f.path) {
                let e = io_err(&f.path, e);
                self.set_read_only(format!("flush of the journal failed: {e}"));
                return Err(e);
            }
        }
        if f.len > CHECKPOINT_BYTES {
            self.stop.kick();
        }
        j.state.lock().since_checkpoint += upto - from;
        Ok(())
    }

    /// Checkpoint, first half: switches to a new journal file
    /// and returns the old one's path. The caller (the flusher) holds every
    /// stripe lock and has applied every change written to the old file.
    pub(super) fn switch_journal(&self, j: &Journal) -> Result<PathBuf> {
        let next_seq = j.file.lock().seq + 1;
        let new = create_journal_file(&*self.fs, &self.dir, next_seq)?;
        let mut f = j.file.lock();
        let old = std::mem::replace(&mut *f, new);
        j.state.lock().since_checkpoint = 0;
        Ok(old.path)
    }

    /// Checkpoint, second half: once the value files are
    /// durable (`syncfs`), the old journal file is set aside for reuse.
    pub(super) fn retire_journal(&self, old: &Path) -> Result<()> {
        self.group_sync()?;
        let spare = self.dir.join(layout::JOURNAL_SPARE);
        self.fs.rename(old, &spare).map_err(|e| io_err(old, e))
    }

    /// Bytes written to the current journal file.
    pub(super) fn journal_len(&self, j: &Journal) -> u64 {
        j.file.lock().len
    }

    /// Entries written since the last checkpoint.
    pub(super) fn journal_since_checkpoint(&self, j: &Journal) -> u64 {
        j.state.lock().since_checkpoint
    }

    /// At close: everything is made durable and the journal removed.
    pub(super) fn close_journal(&self) -> Result<()> {
        let Some(j) = &self.journal else {
            return Ok(());
        };
        self.group_sync()?;
        // Nothing to replay: set aside for the next session to reuse.
        let path = lock_path(j);
        let spare = self.dir.join(layout::JOURNAL_SPARE);
        self.fs.rename(&path, &spare).map_err(|e| io_err(&path, e))
    }
}

/// The path of the journal file being written.
fn lock_path(j: &Journal) -> PathBuf {
    j.file.lock().path.clone()
}

/// One journal entry of a key: its cas and its record (`None` for a
/// removal).
type Logged = (u64, Option<Vec<u8>>);

/// What the journal says about one key: its last entry that was not
/// cancelled.
enum Final {
    Put(Vec<u8>),
    Remove,
}

impl Inner {
    /// Replays journal files (`(number, path)`, any order) onto the value
    /// files of the current generation, makes the result durable and
    /// removes them. Returns how many keys were rewritten or removed.
    pub(super) fn replay_journals(&self, files: &mut [(u64, PathBuf)]) -> Result<usize> {
        if files.is_empty() {
            return Ok(0);
        }
        files.sort();
        let gen = self.current_gen();
        let gen_no = gen.number;
        // Per key, its entries in order.
        let mut ops: HashMap<Vec<u8>, Vec<Logged>> = HashMap::new();
        let mut order: Vec<Vec<u8>> = Vec::new();
        let mut cancelled: HashSet<u64> = HashSet::new();
        for (seq, path) in files.iter() {
            let Some(bytes) = read_optional(&*self.fs, path, usize::MAX)? else {
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
                // The usual end of a reused file: its old batches follow.
                log::debug!("journal {}: replay stops at {at} ({what})", path.display());
            }
        }
        let mut applied = 0;
        for key in order {
            let Some(entries) = ops.remove(&key) else {
                continue;
            };
            let last = entries
                .into_iter()
                .rev()
                .find(|(cas, _)| !cancelled.contains(cas));
            let Some((cas, rec)) = last else { continue };
            let op = match rec {
                Some(r) => Final::Put(r),
                None => Final::Remove,
            };
            if self.replay_one(&gen, &key, cas, op)? {
                applied += 1;
            }
        }
        self.fs
            .syncfs(&self.dir)
            .map_err(|e| io_err(&self.dir, e))?;
        for (_, path) in files.iter() {
            if let Err(e) = self.fs.remove_file(path) {
                if e.kind() != io::ErrorKind::NotFound {
                    return Err(io_err(path, e));
                }
            }
        }
        if applied > 0 {
            log::info!(
                "replayed the journal of {}: {applied} keys restored",
                self.dir.display()
            );
        }
        Ok(applied)
    }

    /// Applies one key's final journal entry; `false` when the files
    /// already agree.
    fn replay_one(&self, gen: &Generation, key: &[u8], cas: u64, op: Final) -> Result<bool> {
        let hash = (self.hasher)(key);
        let _g = self.stripe(hash).lock.lock();
        let cur = self.current(gen, hash, key)?;
        match op {
            Final::Put(rec) => {
                if cur.item.as_ref().is_some_and(|it| it.cas == cas) {
                    return Ok(false);
                }
                self.write_files(gen, hash, key, cur.idx, &rec)?;
            }
            Final::Remove => {
                if cur.idx.is_none() {
                    return Ok(false);
                }
                self.remove_files(gen, hash, key, cur.idx)?;
            }
        }
        self.changed(hash, key, None);
        Ok(true)
    }
}
