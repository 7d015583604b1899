//! The spare pool of one generation: value files kept for reuse, filled in
//! place and swapped in by `RENAME_EXCHANGE` (see docs/DESIGN.md).
//!
//! [`Spares`] owns the per-subdirectory pools, the counter that names new
//! spares and what it needs to build their paths; the write path asks it
//! for a filled spare ([`Spares::fill_pooled`], [`Spares::create`]) and
//! hands freed files back ([`Spares::recycle`], [`Spares::retire_file`]).

use super::*;

/// The spare files of one subdirectory, by id: each may be overwritten by
/// the next write. Every change to the value files in `Periodic` and
/// `Always` follows a durable journal entry, so a freed file is reusable at
/// once (a power cut that leaves a torn reuse is repaired by replay).
#[derive(Default)]
struct SparePool {
    ready: Vec<u64>,
}

impl SparePool {
    fn contains(&self, id: u64) -> bool {
        self.ready.contains(&id)
    }

    fn len(&self) -> usize {
        self.ready.len()
    }
}

/// The spare pool of one generation: up to [`SPARES_PER_SUBDIR`] spares
/// per value subdirectory.
pub(super) struct Spares {
    fs: Arc<dyn FileSystem>,
    /// The generation directory the spares live in.
    dir: PathBuf,
    /// One pool per value subdirectory.
    pools: Box<[Mutex<SparePool>]>,
    /// Names new spares. Starts at `epoch << 40`, so spares made in this
    /// session never clash with spares of earlier sessions (smaller
    /// epochs), which the sweep adds to the pools.
    counter: AtomicU64,
}

impl Spares {
    /// An empty pool for the generation in `dir`, naming new spares from
    /// `epoch << 40`.
    pub(super) fn new(fs: Arc<dyn FileSystem>, dir: &Path, epoch: u64) -> Spares {
        Spares {
            fs,
            dir: dir.to_path_buf(),
            pools: (0..SUBDIRS)
                .map(|_| Mutex::new(SparePool::default()))
                .collect(),
            counter: AtomicU64::new(epoch << 40),
        }
    }

    /// The path of spare `id` of subdirectory `sub`.
    pub(super) fn path(&self, sub: usize, id: u64) -> PathBuf {
        self.dir
            .join(format!("{sub:02x}"))
            .join(layout::spare_name(id))
    }

    /// Turns a value file into a spare (or removes it when the pool is
    /// full). A missing file is fine.
    pub(super) fn retire_file(&self, hash: u64, path: &Path) -> Result<()> {
        let sub = layout::subdir_index(hash);
        let mut pool = self.pools[sub].lock();
        let res = if pool.len() < SPARES_PER_SUBDIR {
            let id = self.counter.fetch_add(1, Ordering::Relaxed);
            let spare = self.path(sub, id);
            let r = self.fs.rename(path, &spare);
            if r.is_ok() {
                pool.ready.push(id);
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

    /// Writes `rec` into a new spare file of subdirectory `sub` (when
    /// [`Spares::fill_pooled`] found none); returns its id.
    pub(super) fn create(&self, sub: usize, rec: &[u8]) -> Result<u64> {
        loop {
            let id = self.counter.fetch_add(1, Ordering::Relaxed);
            let path = self.path(sub, id);
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

    /// Writes `rec` into a pooled spare of subdirectory `sub` and returns
    /// its id; `None` when the pool has no usable spare.
    pub(super) fn fill_pooled(&self, sub: usize, rec: &[u8]) -> Option<u64> {
        loop {
            let pooled = self.pools[sub].lock().ready.pop();
            let id = pooled?;
            let path = self.path(sub, id);
            match self.fs.write_at(&path, 0, rec) {
                Ok(()) => return Some(id),
                // A spare that vanished (removed by hand): try the next.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                // Unusable (a planted symlink, a failing write): forget it;
                // the caller makes a fresh file, whose error, if any, is
                // returned.
                Err(e) => {
                    log::warn!("dropping unusable spare file {}: {e}", path.display());
                    let _ = self.fs.remove_file(&path);
                    return None;
                }
            }
        }
    }

    /// Returns the old file of an exchange to the spare pool (or removes it
    /// when the pool is full).
    pub(super) fn recycle(&self, sub: usize, old: Option<u64>) {
        let Some(id) = old else { return };
        let mut pool = self.pools[sub].lock();
        if pool.len() < SPARES_PER_SUBDIR {
            pool.ready.push(id);
        } else {
            drop(pool);
            let _ = self.fs.remove_file(&self.path(sub, id));
        }
    }

    /// Returns an unused spare (maybe written with a record) to the pool.
    pub(super) fn give_back(&self, sub: usize, id: u64) {
        self.pools[sub].lock().ready.push(id);
    }

    /// Takes spare `id` of subdirectory `sub`, a file of an earlier session
    /// found at `found` by the sweep after open, into the pool (or removes
    /// the file when the pool is full).
    pub(super) fn adopt(&self, sub: usize, id: u64, found: &Path) {
        let mut pool = self.pools[sub].lock();
        if pool.contains(id) {
            return;
        }
        if pool.len() < SPARES_PER_SUBDIR {
            pool.ready.push(id);
        } else {
            drop(pool);
            let _ = self.fs.remove_file(found);
        }
    }
}
