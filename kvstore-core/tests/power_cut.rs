//! Power-cut simulation for `Durability::Always` and `Periodic`
//! (ALICE-style).
//!
//! A [`RecordingFs`] wraps the real file system: every mutating call is
//! performed on a real directory *and* appended to a log of logical
//! operations on inodes (mkdir, link a new name, write bytes into an inode,
//! set its length, rename, exchange, unlink). It models the page cache: an
//! operation is volatile until a sync covers it (`sync_file` / the append
//! file's `sync_data` cover the data operations of that inode, `sync_dir`
//! covers the name operations in that directory, `syncfs` covers everything
//! so far).
//!
//! At a cut point `c` (a position in the log) the disk a power cut would
//! leave is built from the operations before `c`: every operation that was
//! durable at `c`, plus a random subset of the volatile ones (each kept or
//! dropped independently, applied in their original order; a rename whose
//! source name did not survive is dropped). The store is opened on that disk
//! and every key is checked against what the writers saw acknowledged before
//! `c`: the last acknowledged value, or the value of the one operation that
//! was in flight on that key at `c`. A `clear` in flight must be all or
//! nothing. Under `Periodic` the guarantee is the last journal flush
//! completed before `c`: every write acknowledged before the flusher's
//! sync of the journal (the recorder notes which syncs the flusher thread
//! made).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use kvstore_core::io::{AppendFile, FileSystem, StdFileSystem};
use kvstore_core::{Durability, Options, Store};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

type Ino = u64;

#[derive(Debug, Clone)]
enum Op {
    Mkdir(PathBuf),
    Rmdir(PathBuf),
    Link(PathBuf, Ino),
    /// `append`: written through the map log's append handle.
    Write {
        ino: Ino,
        off: u64,
        data: Vec<u8>,
        append: bool,
    },
    SetLen {
        ino: Ino,
        len: u64,
    },
    Rename {
        from: PathBuf,
        to: PathBuf,
    },
    Exchange(PathBuf, PathBuf),
    Unlink(PathBuf),
    /// A sync of a file or directory (a cut point worth trying just after
    /// it).
    Sync,
    /// A `syncfs`: everything before it is durable.
    SyncAll,
}

impl Op {
    /// The inode whose data this operation changes.
    fn data_ino(&self) -> Option<Ino> {
        match self {
            Op::Write { ino, .. } | Op::SetLen { ino, .. } => Some(*ino),
            _ => None,
        }
    }

    /// The directories whose entries this operation changes.
    fn dirs(&self) -> Vec<PathBuf> {
        let parent = |p: &Path| p.parent().map(Path::to_path_buf).unwrap_or_default();
        match self {
            Op::Mkdir(p) | Op::Rmdir(p) | Op::Link(p, _) | Op::Unlink(p) => vec![parent(p)],
            Op::Rename { from, to } => vec![parent(from), parent(to)],
            Op::Exchange(a, b) => vec![parent(a), parent(b)],
            _ => Vec::new(),
        }
    }
}

#[derive(Default)]
struct Log {
    ops: Vec<Op>,
    /// Position in `ops` at which each op became durable.
    durable_at: Vec<Option<usize>>,
    /// Live names of files -> inode.
    names: HashMap<PathBuf, Ino>,
    next_ino: Ino,
    /// `Periodic`: positions of the flusher's syncs of the journal file
    /// that entries are written to. A writer's journal entry is written to
    /// the file before the write is acknowledged, so every write
    /// acknowledged at or before such a position is durable once the sync
    /// is (a checkpoint syncs the old file before it switches to a new
    /// one). The sync of a new file's header, made while entries still go
    /// to the old one, is not a flush.
    flushes: Vec<usize>,
    /// The journal file entries were last written to.
    entries_ino: Option<Ino>,
}

/// Whether the calling thread is the store's `Periodic` flusher.
fn on_flusher() -> bool {
    std::thread::current().name() == Some("kvstore-flusher")
}

fn is_journal(rel: &Path) -> bool {
    rel.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("journal.") && n != "journal.spare")
}

impl Log {
    fn push(&mut self, op: Op) {
        self.ops.push(op);
        self.durable_at.push(None);
    }

    fn mark(&mut self, pred: impl Fn(&Op) -> bool, marker: Op) {
        let now = self.ops.len();
        for i in 0..now {
            if self.durable_at[i].is_none() && pred(&self.ops[i]) {
                self.durable_at[i] = Some(now);
            }
        }
        self.push(marker);
        self.durable_at[now] = Some(now);
    }

    fn new_ino(&mut self) -> Ino {
        self.next_ino += 1;
        self.next_ino
    }
}

struct RecordingFs {
    root: PathBuf,
    log: Arc<Mutex<Log>>,
    /// Answers `rename_exchange` with `Unsupported`, as a file system
    /// without `RENAME_EXCHANGE` does (the store falls back to rename).
    no_exchange: bool,
}

impl RecordingFs {
    fn rel(&self, p: &Path) -> PathBuf {
        p.strip_prefix(&self.root)
            .unwrap_or_else(|_| panic!("store touched {} outside its root", p.display()))
            .to_path_buf()
    }
}

struct RecordingAppend {
    inner: Box<dyn AppendFile>,
    ino: Ino,
    log: Arc<Mutex<Log>>,
    len: u64,
}

impl AppendFile for RecordingAppend {
    fn append(&mut self, data: &[u8]) -> io::Result<()> {
        let mut log = self.log.lock().unwrap();
        self.inner.append(data)?;
        log.push(Op::Write {
            ino: self.ino,
            off: self.len,
            data: data.to_vec(),
            append: true,
        });
        self.len += data.len() as u64;
        Ok(())
    }

    fn sync_data(&mut self) -> io::Result<()> {
        let mut log = self.log.lock().unwrap();
        self.inner.sync_data()?;
        let ino = self.ino;
        log.mark(|op| op.data_ino() == Some(ino), Op::Sync);
        Ok(())
    }
}

impl FileSystem for RecordingFs {
    fn create_dir(&self, path: &Path) -> io::Result<()> {
        let mut log = self.log.lock().unwrap();
        StdFileSystem.create_dir(path)?;
        log.push(Op::Mkdir(self.rel(path)));
        Ok(())
    }

    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        let mut log = self.log.lock().unwrap();
        StdFileSystem.remove_dir(path)?;
        log.push(Op::Rmdir(self.rel(path)));
        Ok(())
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<OsString>> {
        StdFileSystem.list_dir(path)
    }

    fn create_new(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        let mut log = self.log.lock().unwrap();
        let r = StdFileSystem.create_new(path, data);
        if r.is_err() && StdFileSystem.file_len(path)?.is_none() {
            return r;
        }
        // Created (maybe partly written): record the name and the data.
        let ino = log.new_ino();
        let rel = self.rel(path);
        log.names.insert(rel.clone(), ino);
        log.push(Op::Link(rel, ino));
        if r.is_ok() {
            log.push(Op::Write {
                ino,
                off: 0,
                data: data.to_vec(),
                append: false,
            });
        }
        r
    }

    fn write_at(&self, path: &Path, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut log = self.log.lock().unwrap();
        StdFileSystem.write_at(path, offset, data)?;
        let rel = self.rel(path);
        let ino = log.names[&rel];
        // Past the 20-byte header: entries (or the zeros ahead of them).
        if is_journal(&rel) && offset >= 20 {
            log.entries_ino = Some(ino);
        }
        log.push(Op::Write {
            ino,
            off: offset,
            data: data.to_vec(),
            append: false,
        });
        Ok(())
    }

    fn read_at(&self, path: &Path, offset: u64, max_len: usize) -> io::Result<Vec<u8>> {
        StdFileSystem.read_at(path, offset, max_len)
    }

    fn file_len(&self, path: &Path) -> io::Result<Option<u64>> {
        StdFileSystem.file_len(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut log = self.log.lock().unwrap();
        StdFileSystem.rename(from, to)?;
        let (f, t) = (self.rel(from), self.rel(to));
        let ino = log.names.remove(&f).expect("renamed an unknown file");
        log.names.insert(t.clone(), ino);
        log.push(Op::Rename { from: f, to: t });
        Ok(())
    }

    fn rename_noreplace(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut log = self.log.lock().unwrap();
        StdFileSystem.rename_noreplace(from, to)?;
        let (f, t) = (self.rel(from), self.rel(to));
        let ino = log.names.remove(&f).expect("renamed an unknown file");
        log.names.insert(t.clone(), ino);
        log.push(Op::Rename { from: f, to: t });
        Ok(())
    }

    fn rename_exchange(&self, a: &Path, b: &Path) -> io::Result<()> {
        if self.no_exchange {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "no RENAME_EXCHANGE here",
            ));
        }
        let mut log = self.log.lock().unwrap();
        StdFileSystem.rename_exchange(a, b)?;
        let (ra, rb) = (self.rel(a), self.rel(b));
        let ia = log.names[&ra];
        let ib = log.names[&rb];
        log.names.insert(ra.clone(), ib);
        log.names.insert(rb.clone(), ia);
        log.push(Op::Exchange(ra, rb));
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut log = self.log.lock().unwrap();
        StdFileSystem.remove_file(path)?;
        let rel = self.rel(path);
        log.names.remove(&rel);
        log.push(Op::Unlink(rel));
        Ok(())
    }

    fn set_len(&self, path: &Path, len: u64) -> io::Result<()> {
        let mut log = self.log.lock().unwrap();
        StdFileSystem.set_len(path, len)?;
        let ino = log.names[&self.rel(path)];
        log.push(Op::SetLen { ino, len });
        Ok(())
    }

    fn sync_file(&self, path: &Path) -> io::Result<()> {
        let mut log = self.log.lock().unwrap();
        StdFileSystem.sync_file(path)?;
        let rel = self.rel(path);
        let ino = log.names[&rel];
        log.mark(|op| op.data_ino() == Some(ino), Op::Sync);
        if on_flusher() && is_journal(&rel) && log.entries_ino == Some(ino) {
            let at = log.ops.len() - 1;
            log.flushes.push(at);
        }
        Ok(())
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        let mut log = self.log.lock().unwrap();
        StdFileSystem.sync_dir(path)?;
        let dir = self.rel(path);
        log.mark(|op| op.dirs().contains(&dir), Op::Sync);
        Ok(())
    }

    fn syncfs(&self, path: &Path) -> io::Result<()> {
        // Widen the window between an operation and the flush that makes
        // it durable, so that other writers' operations land in it.
        std::thread::sleep(std::time::Duration::from_micros(200));
        let mut log = self.log.lock().unwrap();
        StdFileSystem.syncfs(path)?;
        log.mark(|_| true, Op::SyncAll);
        Ok(())
    }

    fn open_append(&self, path: &Path) -> io::Result<Box<dyn AppendFile>> {
        let mut log = self.log.lock().unwrap();
        let existed = StdFileSystem.file_len(path)?;
        let inner = StdFileSystem.open_append(path)?;
        let rel = self.rel(path);
        let ino = match (existed, log.names.get(&rel)) {
            (Some(_), Some(&ino)) => ino,
            (Some(_), None) => panic!("append to a file created outside the recorder"),
            (None, _) => {
                let ino = log.new_ino();
                log.names.insert(rel.clone(), ino);
                log.push(Op::Link(rel, ino));
                ino
            }
        };
        Ok(Box::new(RecordingAppend {
            inner,
            ino,
            log: self.log.clone(),
            len: existed.unwrap_or(0),
        }))
    }

    fn open_lock_file(&self, path: &Path) -> io::Result<File> {
        // The lock file's content does not matter after a crash.
        StdFileSystem.open_lock_file(path)
    }
}

/// The disk a power cut at `cut` leaves: durable ops, plus each volatile op
/// with probability `keep` (0.0: only what was synced; 1.0: everything).
///
/// Appends to one file are kept as a prefix: once a volatile append is
/// dropped, the later ones of that file are too (successive appends share
/// pages, which reach the disk whole; a hole in the middle of the log would
/// be a state no disk produces).
fn crash_state(log: &Log, cut: usize, keep: f64, rng: &mut StdRng) -> (Disk, Vec<bool>) {
    let mut disk = Disk::default();
    // Whether each operation before the cut reached the disk.
    let mut kept = Vec::with_capacity(cut);
    let mut torn: std::collections::HashSet<Ino> = std::collections::HashSet::new();
    for (op, durable_at) in log.ops[..cut].iter().zip(&log.durable_at) {
        let durable = durable_at.is_some_and(|d| d <= cut);
        let append_of = match op {
            Op::Write {
                ino, append: true, ..
            } => Some(*ino),
            _ => None,
        };
        let lands = durable
            || (!append_of.is_some_and(|ino| torn.contains(&ino)) && {
                let lands = rng.gen_bool(keep);
                if let (false, Some(ino)) = (lands, append_of) {
                    torn.insert(ino);
                }
                lands
            });
        kept.push(lands);
        if lands {
            disk.apply(op);
        }
    }
    (disk, kept)
}

/// What a write's bytes are, for the diagnostics.
fn describe(data: &[u8]) -> String {
    if data.len() >= 36 && (&data[..4] == b"KVSR" || &data[..4] == b"KVSD") {
        let klen = u16::from_le_bytes([data[6], data[7]]) as usize;
        let vlen = u32::from_le_bytes(data[12..16].try_into().unwrap()) as usize;
        let cas = u64::from_le_bytes(data[24..32].try_into().unwrap()) & ((1 << 40) - 1);
        let key = String::from_utf8_lossy(&data[36..(36 + klen).min(data.len())]).into_owned();
        if &data[..4] == b"KVSD" {
            return format!("TOMB {key} cas {cas}");
        }
        let v = &data[(36 + klen).min(data.len())..];
        let end = v
            .iter()
            .position(|&b| b == b'>')
            .map_or(v.len().min(12), |p| p + 1);
        return format!(
            "REC {key} cas {cas} {} ({vlen} B)",
            String::from_utf8_lossy(&v[..end])
        );
    }
    if data == [0u8; 4] {
        return "NEUTRAL".into();
    }
    format!("{} bytes {:?}", data.len(), &data[..data.len().min(6)])
}

/// Diagnostics (`KVSTORE_DEBUG`) for a key found with a wrong value: the
/// key's operations, then every logged operation on the key's value names
/// and on the inodes that ever were under them or held a record of the key
/// (up to 40 operations past the cut; flushes from 400 before it), each
/// marked durable, volatile kept, volatile dropped or after the cut; then
/// those names and inodes on the disk the cut left. With
/// `KVSTORE_DEBUG_ALL`, every operation up to the cut and the journal
/// flushes first.
#[allow(clippy::too_many_arguments)]
fn dump_key_history(
    log: &Log,
    cut: usize,
    guaranteed: usize,
    kept: &[bool],
    disk: &Disk,
    key: &str,
    run: &Run,
) {
    let hex = format!("{:016x}", crowded_hash(key.as_bytes()));
    let kb = key.as_bytes();
    let is_key_rec = |d: &[u8]| {
        d.len() >= 36 && (&d[..4] == b"KVSR" || &d[..4] == b"KVSD") && {
            let klen = u16::from_le_bytes([d[6], d[7]]) as usize;
            d.get(36..36 + klen) == Some(kb)
        }
    };
    let mut inos: BTreeSet<Ino> = BTreeSet::new();
    let mut names: HashMap<PathBuf, Ino> = HashMap::new();
    for op in &log.ops {
        match op {
            Op::Link(p, ino) => {
                names.insert(p.clone(), *ino);
                if p.to_string_lossy().contains(&hex) {
                    inos.insert(*ino);
                }
            }
            Op::Write {
                ino,
                data,
                append: false,
                ..
            } if is_key_rec(data) => {
                inos.insert(*ino);
            }
            Op::Rename { from, to } => {
                if let Some(i) = names.remove(from) {
                    if to.to_string_lossy().contains(&hex) {
                        inos.insert(i);
                    }
                    names.insert(to.clone(), i);
                }
            }
            Op::Exchange(a, b) => {
                let (ia, ib) = (names[a], names[b]);
                if a.to_string_lossy().contains(&hex) || b.to_string_lossy().contains(&hex) {
                    inos.insert(ia);
                    inos.insert(ib);
                }
                names.insert(a.clone(), ib);
                names.insert(b.clone(), ia);
            }
            _ => {}
        }
    }
    eprintln!("==== key {key} (names *{hex}*) cut {cut} guaranteed {guaranteed} inodes {inos:?}");
    if std::env::var("KVSTORE_DEBUG_ALL").is_ok() {
        for (i, op) in log.ops.iter().enumerate().take(cut + 5) {
            let d = match op {
                Op::Write { ino, off, data, .. } => {
                    format!("WRITE ino {ino} @{off} {}", describe(data))
                }
                other => format!("{other:?}"),
            };
            eprintln!(
                "  ALL {i} {d} kept={:?} durable={:?}",
                kept.get(i),
                log.durable_at[i]
            );
        }
        eprintln!("  FLUSHES {:?}", log.flushes);
    }
    for e in run.events.iter().filter(|e| e.key == key) {
        eprintln!(
            "  event [{}, {}] {:?}",
            e.start,
            e.ack,
            e.after.as_deref().map(show)
        );
    }
    for c in &run.clears {
        eprintln!("  clear [{}, {}]", c.0, c.1);
    }
    let mut names: HashMap<PathBuf, Ino> = HashMap::new();
    let upto = (cut + 40).min(log.ops.len());
    for (i, op) in log.ops.iter().enumerate().take(upto) {
        let ino_of = |p: &PathBuf, names: &HashMap<PathBuf, Ino>| names.get(p).copied();
        let line = match op {
            Op::Link(p, ino) => {
                names.insert(p.clone(), *ino);
                inos.contains(ino)
                    .then(|| format!("LINK {} -> ino {ino}", p.display()))
            }
            Op::Write {
                ino, data, append, ..
            } => (!append && inos.contains(ino))
                .then(|| format!("WRITE ino {ino}: {}", describe(data))),
            Op::SetLen { ino, len } => inos
                .contains(ino)
                .then(|| format!("SETLEN ino {ino} {len}")),
            Op::Rename { from, to } => {
                let i = names.remove(from);
                if let Some(i) = i {
                    names.insert(to.clone(), i);
                }
                i.filter(|i| inos.contains(i))
                    .map(|i| format!("RENAME {} -> {} (ino {i})", from.display(), to.display()))
            }
            Op::Exchange(a, b) => {
                let (ia, ib) = (ino_of(a, &names), ino_of(b, &names));
                if let (Some(x), Some(y)) = (ia, ib) {
                    names.insert(a.clone(), y);
                    names.insert(b.clone(), x);
                }
                (ia.is_some_and(|x| inos.contains(&x)) || ib.is_some_and(|x| inos.contains(&x)))
                    .then(|| {
                        format!(
                            "EXCHANGE {} (ino {ia:?}) <-> {} (ino {ib:?})",
                            a.display(),
                            b.display()
                        )
                    })
            }
            Op::Unlink(p) => {
                let i = names.remove(p);
                i.filter(|i| inos.contains(i))
                    .map(|i| format!("UNLINK {} (ino {i})", p.display()))
            }
            Op::SyncAll => Some("---- syncfs".to_string()),
            _ => None,
        };
        if let Some(line) = line {
            let state = if i >= cut {
                "after-cut".to_string()
            } else {
                match log.durable_at[i] {
                    Some(d) if d <= cut => format!("durable@{d}"),
                    _ if kept[i] => "volatile KEPT".to_string(),
                    _ => "volatile DROPPED".to_string(),
                }
            };
            if line.starts_with("----") {
                if i + 1 >= cut.saturating_sub(400) {
                    eprintln!("  {i:5} {line}");
                }
            } else {
                eprintln!("  {i:5} {line}   [{state}]");
            }
        }
    }
    for (name, ino) in &disk.names {
        let data = &disk.inodes[ino];
        if name.to_string_lossy().contains(&hex) || inos.contains(ino) {
            eprintln!("  DISK {} -> ino {ino}: {}", name.display(), describe(data));
        }
    }
}

#[derive(Default)]
struct Disk {
    dirs: BTreeSet<PathBuf>,
    names: BTreeMap<PathBuf, Ino>,
    inodes: HashMap<Ino, Vec<u8>>,
}

impl Disk {
    fn dir_exists(&self, p: &Path) -> bool {
        p.as_os_str().is_empty() || self.dirs.contains(p)
    }

    fn parent_exists(&self, p: &Path) -> bool {
        self.dir_exists(p.parent().unwrap_or(Path::new("")))
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::Mkdir(p) => {
                if self.parent_exists(p) {
                    self.dirs.insert(p.clone());
                }
            }
            Op::Rmdir(p) => {
                self.dirs.retain(|d| !d.starts_with(p));
                self.names.retain(|n, _| !n.starts_with(p));
            }
            Op::Link(p, ino) => {
                self.inodes.entry(*ino).or_default();
                if self.parent_exists(p) {
                    self.names.insert(p.clone(), *ino);
                }
            }
            Op::Write { ino, off, data, .. } => {
                let f = self.inodes.entry(*ino).or_default();
                let end = *off as usize + data.len();
                if f.len() < end {
                    f.resize(end, 0);
                }
                f[*off as usize..end].copy_from_slice(data);
            }
            Op::SetLen { ino, len } => {
                self.inodes
                    .entry(*ino)
                    .or_default()
                    .resize(*len as usize, 0);
            }
            Op::Rename { from, to } => {
                if self.parent_exists(to) {
                    if let Some(ino) = self.names.remove(from) {
                        self.names.insert(to.clone(), ino);
                    }
                }
            }
            Op::Exchange(a, b) => {
                if let (Some(&ia), Some(&ib)) = (self.names.get(a), self.names.get(b)) {
                    self.names.insert(a.clone(), ib);
                    self.names.insert(b.clone(), ia);
                }
            }
            Op::Unlink(p) => {
                self.names.remove(p);
            }
            Op::Sync | Op::SyncAll => {}
        }
    }

    fn materialize(&self, root: &Path) {
        for d in &self.dirs {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        for (name, ino) in &self.names {
            std::fs::write(root.join(name), &self.inodes[ino]).unwrap();
        }
    }
}

fn scratch_dir() -> tempfile::TempDir {
    // tmpfs makes the syncs of the recorded run cheap; the recording, not
    // the real disk, is what the test is about.
    match tempfile::tempdir_in("/dev/shm") {
        Ok(d) => d,
        Err(_) => tempfile::tempdir().unwrap(),
    }
}

/// Every key in one of 2 subdirectories, so that writers of different keys
/// share (and recycle) spare files.
fn crowded_hash(key: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h & 0x01ff_ffff_ffff_ffff
}

fn options(fs: Arc<dyn FileSystem>, durability: Durability) -> Options {
    Options::new()
        .durability(durability)
        .cache_bytes(0)
        .file_system(fs)
        .key_hasher(crowded_hash)
        // `Always`: many journal checkpoints during the workload.
        .checkpoint_interval(std::time::Duration::from_millis(3))
        // `Periodic`: a table this small is often full, so writers apply
        // changes themselves beside the flusher (back-pressure).
        .max_pending_bytes(2 << 10)
}

/// One acknowledged (or in-flight) operation on one key.
#[derive(Debug, Clone)]
struct Event {
    key: String,
    start: usize,
    /// Log position when it returned `Ok`; `usize::MAX` for a clear not
    /// acknowledged (never happens here: every op returns).
    ack: usize,
    after: Option<Vec<u8>>,
}

fn value(key: &str, n: usize, len: usize) -> Vec<u8> {
    let mut v = format!("<{key}#{n}>").into_bytes();
    while v.len() < len {
        v.push(b'a' + (n % 26) as u8);
    }
    v
}

const THREADS: usize = 4;
const KEYS_PER_THREAD: usize = 5;
const OPS_PER_THREAD: usize = 40;

/// The writers' workload, run through the recorder; returns the per-key
/// events and the clears' (start, ack, keys-before) windows.
fn record_workload(store: &Store, log: &Arc<Mutex<Log>>, seed: u64) -> Run {
    let pos = || log.lock().unwrap().ops.len();
    let mut run = Run::default();
    let mut state: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for phase in 0..3 {
        let results: Vec<(Vec<Event>, State)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..THREADS)
                .map(|t| {
                    let mut mine: BTreeMap<String, Vec<u8>> = state
                        .iter()
                        .filter(|(k, _)| k.starts_with(&format!("t{t}-")))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                    s.spawn(move || {
                        let mut rng = StdRng::seed_from_u64(seed ^ (t as u64 * 7919 + phase));
                        let mut events = Vec::new();
                        for i in 0..OPS_PER_THREAD {
                            let key = format!("t{t}-k{}", rng.gen_range(0..KEYS_PER_THREAD));
                            let start = pos();
                            let after = match rng.gen_range(0..10) {
                                0..=5 => {
                                    let v = value(&key, i, rng.gen_range(0..6000));
                                    store.set(&key, &v).unwrap();
                                    Some(v)
                                }
                                6 | 7 => {
                                    let add = format!("+{i}");
                                    let out = store.append(&key, &add).unwrap();
                                    match mine.get(&key) {
                                        Some(old) => {
                                            assert!(matches!(
                                                out,
                                                kvstore_core::StoreOutcome::Stored { .. }
                                            ));
                                            let mut v = old.clone();
                                            v.extend_from_slice(add.as_bytes());
                                            Some(v)
                                        }
                                        None => None,
                                    }
                                }
                                _ => {
                                    store.delete(&key).unwrap();
                                    None
                                }
                            };
                            let ack = pos();
                            match &after {
                                Some(v) => {
                                    mine.insert(key.clone(), v.clone());
                                }
                                None => {
                                    mine.remove(&key);
                                }
                            }
                            events.push(Event {
                                key,
                                start,
                                ack,
                                after,
                            });
                        }
                        (events, mine)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        state.clear();
        for (events, mine) in results {
            run.events.extend(events);
            state.extend(mine);
        }
        if phase < 2 {
            let start = pos();
            store.clear().unwrap();
            let ack = pos();
            run.clears.push((start, ack, state.clone()));
            state.clear();
        }
    }
    run
}

type State = BTreeMap<String, Vec<u8>>;

#[derive(Default)]
struct Run {
    events: Vec<Event>,
    clears: Vec<(usize, usize, BTreeMap<String, Vec<u8>>)>,
}

impl Run {
    /// For each key, the values a disk cut at `cut` may show when every
    /// operation acknowledged at or before `guaranteed` must have survived:
    /// the value after the last such operation, or after any later one on
    /// that key that had started before the cut. (`Always`: `guaranteed`
    /// is the cut itself, so only the one operation in flight may add a
    /// value; `Periodic`: it is the last completed flush.)
    fn allowed(&self, cut: usize, guaranteed: usize) -> BTreeMap<String, Vec<Option<Vec<u8>>>> {
        let mut out = BTreeMap::new();
        for t in 0..THREADS {
            for k in 0..KEYS_PER_THREAD {
                let key = format!("t{t}-k{k}");
                // This key's operations and the clears, in order (each key
                // has one writer; clears run while the writers wait).
                let mut timeline: Vec<(usize, usize, Option<Vec<u8>>)> = self
                    .events
                    .iter()
                    .filter(|e| e.key == key)
                    .map(|e| (e.start, e.ack, e.after.clone()))
                    .chain(self.clears.iter().map(|c| (c.0, c.1, None)))
                    .collect();
                timeline.sort_by_key(|x| x.0);
                let j0 = timeline.iter().rposition(|x| x.1 <= guaranteed);
                let mut values = vec![j0.and_then(|j| timeline[j].2.clone())];
                let from = j0.map_or(0, |j| j + 1);
                for (start, _, after) in &timeline[from..] {
                    if *start < cut {
                        values.push(after.clone());
                    }
                }
                out.insert(key, values);
            }
        }
        out
    }

    /// Every value `key` ever had (and absence).
    fn history(&self, key: &str) -> Vec<Option<Vec<u8>>> {
        let mut h: Vec<Option<Vec<u8>>> = vec![None];
        h.extend(
            self.events
                .iter()
                .filter(|e| e.key == key)
                .map(|e| e.after.clone()),
        );
        h
    }

    fn clear_in_flight(&self, cut: usize) -> Option<&BTreeMap<String, Vec<u8>>> {
        self.clears
            .iter()
            .find(|c| c.0 < cut && cut < c.1)
            .map(|c| &c.2)
    }
}

fn show(v: &[u8]) -> String {
    let head = String::from_utf8_lossy(&v[..v.len().min(12)]).into_owned();
    let tail = String::from_utf8_lossy(&v[v.len().saturating_sub(8)..]).into_owned();
    format!("{head}..{tail} ({} B)", v.len())
}

#[test]
fn acknowledged_writes_survive_simulated_power_cuts() {
    power_cuts(Durability::Always, 300, false);
}

#[test]
fn periodic_loses_at_most_the_writes_since_the_last_flush() {
    power_cuts(
        Durability::Periodic(std::time::Duration::from_millis(2)),
        150,
        false,
    );
}

/// Where names cannot be exchanged, an overwrite renames its spare over
/// the old file, which frees the old data at once.
#[test]
fn periodic_without_rename_exchange_loses_at_most_the_last_writes() {
    power_cuts(
        Durability::Periodic(std::time::Duration::from_millis(2)),
        100,
        true,
    );
}

/// The rule the journal is there for, checked on the recorded operations
/// themselves rather than through cuts: no value file is given a record
/// before a journal entry holding that record is durable (a sync of its
/// journal file, or a `syncfs`, came between). One line per write that
/// broke it.
fn journal_first_violations(log: &Log, from: usize) -> Vec<String> {
    // Which inodes are journal files: follow the names through the log.
    let mut names: HashMap<PathBuf, Ino> = HashMap::new();
    let mut journal_inos = std::collections::HashSet::new();
    for op in &log.ops {
        match op {
            Op::Link(p, ino) => {
                names.insert(p.clone(), *ino);
                if is_journal(p) {
                    journal_inos.insert(*ino);
                }
            }
            Op::Rename { from, to } => {
                if let Some(ino) = names.remove(from) {
                    if is_journal(to) {
                        journal_inos.insert(ino);
                    }
                    names.insert(to.clone(), ino);
                }
            }
            Op::Exchange(a, b) => {
                let (ia, ib) = (names.remove(a), names.remove(b));
                if let Some(i) = ib {
                    names.insert(a.clone(), i);
                }
                if let Some(i) = ia {
                    names.insert(b.clone(), i);
                }
            }
            Op::Unlink(p) => {
                names.remove(p);
            }
            _ => {}
        }
    }
    // Each record put in the journal, with the position at which the first
    // write holding it became durable. A write holds batches: an 8-byte
    // header (length, checksum), then frames: length u32, checksum u32,
    // kind (1: put), generation u64, the record.
    let mut durable: HashMap<&[u8], usize> = HashMap::new();
    for (i, op) in log.ops.iter().enumerate() {
        let Op::Write { ino, data, .. } = op else {
            continue;
        };
        if !journal_inos.contains(ino) {
            continue;
        }
        let Some(at) = log.durable_at[i] else {
            continue;
        };
        let u32_at = |b: &[u8], o: usize| {
            b.get(o..o + 4)
                .map(|x| u32::from_le_bytes(x.try_into().unwrap()) as usize)
        };
        let mut pos = 0;
        while let Some(batch_len) = u32_at(data, pos).filter(|&l| l > 0) {
            let end = (pos + 8 + batch_len).min(data.len());
            let mut f = pos + 8;
            while let Some(len) = u32_at(data, f).filter(|&l| l > 0 && f + 8 + l <= end) {
                let payload = &data[f + 8..f + 8 + len];
                if payload[0] == 1 && payload.len() > 9 {
                    let e = durable.entry(&payload[9..]).or_insert(at);
                    *e = (*e).min(at);
                }
                f += 8 + len;
            }
            pos = end;
        }
    }
    let mut out = Vec::new();
    for (j, op) in log.ops.iter().enumerate().skip(from) {
        let Op::Write {
            ino, data, append, ..
        } = op
        else {
            continue;
        };
        if *append || journal_inos.contains(ino) || !data.starts_with(b"KVSR") {
            continue;
        }
        match durable.get(data.as_slice()) {
            Some(&at) if at <= j => {}
            Some(&at) => out.push(format!(
                "op {j}: a value file got a record whose journal entry is durable only at op {at}"
            )),
            None => out.push(format!(
                "op {j}: a value file got a record that no durable journal entry holds"
            )),
        }
    }
    out
}

fn power_cuts(durability: Durability, default_cuts: usize, no_exchange: bool) {
    let cuts: usize = std::env::var("KVSTORE_POWER_CUTS")
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .map_or(default_cuts, |n| n * default_cuts / 300);
    let seed: u64 = std::env::var("KVSTORE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen());
    eprintln!("power-cut seed {seed} (KVSTORE_SEED to replay)");
    let live = scratch_dir();
    let root = live.path().join("store");
    std::fs::create_dir(&root).unwrap();
    let log = Arc::new(Mutex::new(Log::default()));
    let fs = Arc::new(RecordingFs {
        root: root.clone(),
        log: log.clone(),
        no_exchange,
    });
    let store = Store::open_with(&root, options(fs, durability)).unwrap();
    let opened_at = log.lock().unwrap().ops.len();
    let run = record_workload(&store, &log, seed);
    drop(store);
    let log = log.lock().unwrap();
    let total = log.ops.len();
    let out_of_order = journal_first_violations(&log, opened_at);
    let value_writes = log.ops[opened_at..]
        .iter()
        .filter(
            |op| matches!(op, Op::Write { data, append: false, .. } if data.starts_with(b"KVSR")),
        )
        .count();
    eprintln!(
        "journal first ({durability:?}): {value_writes} value-file writes, each after its journal entry was durable: violations {}",
        out_of_order.len()
    );
    assert!(value_writes > 0, "the workload wrote no value file");
    assert!(
        out_of_order.is_empty(),
        "{} value-file writes ahead of their journal entry:\n{}",
        out_of_order.len(),
        out_of_order.join("\n")
    );

    let mut rng = StdRng::seed_from_u64(seed);
    let mut violations = Vec::new();
    let mut checked_keys = 0usize;
    // Periodic: keys that came back with an older value of their own than
    // the flushed one, or none (violations too, counted apart in the
    // summary: the failure the spare life cycle is there to prevent).
    let mut stale = 0usize;
    for n in 0..cuts {
        // A quarter of the cuts just after a sync, a quarter just before a
        // syncfs (where the most volatile state has piled up), the rest
        // anywhere. `keep` cycles through 0, 0.5 and 1, weighted towards
        // random subsets.
        let syncs: Vec<usize> = (opened_at..total)
            .filter(|&i| matches!(log.ops[i], Op::Sync | Op::SyncAll))
            .collect();
        let cut = match n % 4 {
            0 => syncs[rng.gen_range(0..syncs.len())] + 1,
            1 => syncs[rng.gen_range(0..syncs.len())],
            _ => rng.gen_range(opened_at..=total),
        };
        let keep = [0.0, 0.5, 0.5, 1.0, 0.5][n % 5];
        let (disk, kept) = crash_state(&log, cut, keep, &mut rng);
        let dir = scratch_dir();
        disk.materialize(dir.path());
        // A `Periodic` store reopened in another mode must recover as
        // `Periodic` would (its session did not close): one cut in three
        // each.
        let reopen_in = match (durability, n % 3) {
            (Durability::Periodic(_), 1) => Durability::Never,
            (Durability::Periodic(_), 2) => Durability::Always,
            _ => Durability::default(),
        };
        let store = match Store::open_with(
            dir.path(),
            Options::new()
                .cache_bytes(0)
                .key_hasher(crowded_hash)
                .durability(reopen_in),
        ) {
            Ok(s) => s,
            Err(e) => {
                violations.push(format!("cut {cut} keep {keep}: open failed: {e}"));
                continue;
            }
        };
        let guaranteed = match durability {
            Durability::Always => cut,
            // The last journal flush that completed before the cut.
            _ => log
                .flushes
                .iter()
                .copied()
                .filter(|&at| at < cut)
                .max()
                .unwrap_or(0),
        };
        let allowed = run.allowed(cut, guaranteed);
        let mut found = BTreeMap::new();
        for (key, values) in &allowed {
            let got = store.get(key).unwrap_or_else(|e| {
                violations.push(format!("cut {cut}: get {key}: {e}"));
                None
            });
            checked_keys += 1;
            // Always: acknowledged or in flight. Periodic: the value
            // flushed last, or that of an operation on the key that started
            // after that flush and before the cut; never an older value,
            // never gone when a value was flushed (unless deleted since).
            let ok = values.contains(&got);
            if !ok {
                let reverted = durability != Durability::Always && run.history(key).contains(&got);
                if reverted {
                    stale += 1;
                }
                violations.push(format!(
                    "cut {cut} keep {keep}: key {key} = {:?}{}, allowed {:?}",
                    got.as_deref().map(show),
                    if reverted {
                        " (older than flushed)"
                    } else {
                        ""
                    },
                    values
                        .iter()
                        .map(|v| v.as_deref().map(show))
                        .collect::<Vec<_>>(),
                ));
                if std::env::var("KVSTORE_DEBUG").is_ok() {
                    dump_key_history(&log, cut, guaranteed, &kept, &disk, key, &run);
                }
            }
            if let Some(v) = got {
                found.insert(key.clone(), v);
            }
        }
        // All or nothing: with `Always` every key acknowledged before the
        // clear is on disk, so a surviving state must be all of it. (With
        // `Periodic` the keys of the last window may be gone either way;
        // the per-key check above still applies.)
        let all_acked_durable = durability == Durability::Always;
        if let Some(before) = run.clear_in_flight(cut).filter(|_| all_acked_durable) {
            if !found.is_empty() && found != *before {
                violations.push(format!(
                    "cut {cut} keep {keep}: clear not all-or-nothing: {} keys of {} survive, differently",
                    found.len(),
                    before.len()
                ));
            }
        }
        let extra = store.keys().unwrap().len();
        if extra != found.len() {
            violations.push(format!(
                "cut {cut}: store lists {extra} keys, {} readable",
                found.len()
            ));
        }
    }
    let acked = run.events.len() + run.clears.len();
    eprintln!(
        "power cuts ({durability:?}): {cuts} cuts over {total} recorded operations, {acked} writes acknowledged, \
         {checked_keys} key checks, violations {}{}",
        violations.len(),
        if durability == Durability::Always {
            String::new()
        } else {
            format!(" (of which keys older than flushed or gone: {stale})")
        }
    );
    if !violations.is_empty() && std::env::var("KVSTORE_DEBUG").is_ok() {
        for e in &run.events {
            eprintln!(
                "{} [{}, {}] {:?}",
                e.key,
                e.start,
                e.ack,
                e.after.as_deref().map(show)
            );
        }
        for c in &run.clears {
            eprintln!("clear [{}, {}]", c.0, c.1);
        }
    }
    assert!(
        violations.is_empty(),
        "{} violations (seed {seed}), first ones:\n{}",
        violations.len(),
        violations[..violations.len().min(10)].join("\n")
    );
}
