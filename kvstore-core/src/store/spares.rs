//! The spare pool: value files kept for reuse, filled in place and swapped in by `RENAME_EXCHANGE` (see docs/DESIGN.md).

use super::*;

/// The spare files of one subdirectory, by id: each may be overwritten by
/// the next write. Every change to the value files in `Periodic` and
/// `Always` follows a durable journal entry, so a freed file is reusable at
/// once (a power cut that leaves a torn reuse is repaired by replay).
#[derive(Default)]
pub(super) struct SparePool {
    pub(super) ready: Vec<u64>,
}

impl SparePool {
    pub(super) fn contains(&self, id: u64) -> bool {
        self.ready.contains(&id)
    }

    pub(super) fn len(&self) -> usize {
        self.ready.len()
    }
}

impl Inner {
    /// Turns a value file into a spare (or removes it when the pool is
    /// full). A missing file is fine.
    pub(super) fn retire_file(&self, gen: &Generation, hash: u64, path: &Path) -> Result<()> {
        let sub = layout::subdir_index(hash);
        let mut pool = gen.spares[sub].lock();
        let res = if pool.len() < SPARES_PER_SUBDIR {
            let id = gen.spare_counter.fetch_add(1, Ordering::Relaxed);
            let spare = gen.spare_path(sub, id);
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
}

impl Inner {
    /// Writes `rec` into a new spare file of subdirectory `sub` (when
    /// [`Inner::fill_pooled_spare`] found none); returns its id.
    pub(super) fn create_spare(&self, gen: &Generation, sub: usize, rec: &[u8]) -> Result<u64> {
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

    /// Writes `rec` into a pooled spare of subdirectory `sub` and returns
    /// its id; `None` when the pool has no usable spare.
    pub(super) fn fill_pooled_spare(
        &self,
        gen: &Generation,
        sub: usize,
        rec: &[u8],
    ) -> Option<u64> {
        loop {
            let pooled = gen.spares[sub].lock().ready.pop();
            let id = pooled?;
            let path = gen.spare_path(sub, id);
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
}

impl Inner {
    /// Returns the old file of an exchange to the spare pool (or removes it
    /// when the pool is full).
    pub(super) fn recycle_spare(&self, gen: &Generation, sub: usize, old: Option<u64>) {
        let Some(id) = old else { return };
        let mut pool = gen.spares[sub].lock();
        if pool.len() < SPARES_PER_SUBDIR {
            pool.ready.push(id);
        } else {
            drop(pool);
            let _ = self.fs.remove_file(&gen.spare_path(sub, id));
        }
    }

    /// Returns an unused spare (maybe written with a record) to the pool.
    pub(super) fn give_back(&self, gen: &Generation, sub: usize, id: u64) {
        gen.spares[sub].lock().ready.push(id);
    }
}
