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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::StdFileSystem;

    /// A pool over a fresh generation directory with subdirectory 00.
    fn pool() -> (tempfile::TempDir, Spares) {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("00")).unwrap();
        let spares = Spares::new(Arc::new(StdFileSystem), tmp.path(), 1);
        (tmp, spares)
    }

    /// Spare files on disk in subdirectory 00.
    fn on_disk(dir: &Path) -> usize {
        std::fs::read_dir(dir.join("00"))
            .unwrap()
            .filter(|e| {
                let name = e.as_ref().unwrap().file_name();
                layout::parse_spare_name(name.to_str().unwrap()).is_some()
            })
            .count()
    }

    #[test]
    fn retired_files_are_pooled_up_to_the_bound_then_removed() {
        let (tmp, spares) = pool();
        for i in 0..SPARES_PER_SUBDIR + 3 {
            let path = tmp.path().join("00").join(format!("value-{i}"));
            std::fs::write(&path, b"old").unwrap();
            spares.retire_file(0x00ab, &path).unwrap();
            assert!(!path.exists(), "retired file {i} left under its name");
        }
        assert_eq!(on_disk(tmp.path()), SPARES_PER_SUBDIR);
        assert_eq!(spares.pools[0].lock().len(), SPARES_PER_SUBDIR);
        // A file already gone is not an error.
        spares
            .retire_file(0x00ab, &tmp.path().join("00").join("gone"))
            .unwrap();
    }

    #[test]
    fn a_filled_spare_is_a_pooled_one_until_the_pool_is_empty() {
        let (tmp, spares) = pool();
        let path = tmp.path().join("00").join("value");
        std::fs::write(&path, b"a longer old record").unwrap();
        spares.retire_file(0, &path).unwrap();
        let reused = spares.fill_pooled(0, b"new").unwrap();
        let bytes = std::fs::read(spares.path(0, reused)).unwrap();
        assert!(bytes.starts_with(b"new"), "record not written at offset 0");
        assert_eq!(spares.fill_pooled(0, b"new"), None);
        let made = spares.create(0, b"fresh").unwrap();
        assert_ne!(made, reused);
        assert_eq!(std::fs::read(spares.path(0, made)).unwrap(), b"fresh");
        assert_eq!(made >> 40, 1, "ids of this session start at epoch << 40");
    }

    #[test]
    fn a_vanished_spare_is_skipped() {
        let (_tmp, spares) = pool();
        let kept = spares.create(0, b"x").unwrap();
        spares.give_back(0, kept);
        let vanished = spares.create(0, b"y").unwrap();
        std::fs::remove_file(spares.path(0, vanished)).unwrap();
        spares.give_back(0, vanished);
        assert_eq!(spares.fill_pooled(0, b"z"), Some(kept));
        assert_eq!(spares.fill_pooled(0, b"z"), None);
    }

    #[test]
    fn recycled_spares_beyond_the_bound_are_removed() {
        let (tmp, spares) = pool();
        let ids: Vec<u64> = (0..SPARES_PER_SUBDIR + 2)
            .map(|_| spares.create(0, b"r").unwrap())
            .collect();
        spares.recycle(0, None);
        for &id in &ids {
            spares.recycle(0, Some(id));
        }
        assert_eq!(spares.pools[0].lock().len(), SPARES_PER_SUBDIR);
        assert_eq!(on_disk(tmp.path()), SPARES_PER_SUBDIR);
    }

    #[test]
    fn adopted_spares_are_pooled_once_and_removed_beyond_the_bound() {
        let (tmp, spares) = pool();
        let found = |id: u64| {
            let path = tmp.path().join("00").join(layout::spare_name(id));
            std::fs::write(&path, b"earlier session").unwrap();
            path
        };
        let first = found(1);
        spares.adopt(0, 1, &first);
        spares.adopt(0, 1, &first);
        assert_eq!(spares.pools[0].lock().len(), 1);
        for id in 2..=SPARES_PER_SUBDIR as u64 + 1 {
            spares.adopt(0, id, &found(id));
        }
        assert_eq!(spares.pools[0].lock().len(), SPARES_PER_SUBDIR);
        assert_eq!(on_disk(tmp.path()), SPARES_PER_SUBDIR);
        assert!(first.exists(), "a pooled spare was removed");
    }
}
