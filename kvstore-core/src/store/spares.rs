//! The spare pool and its life cycle: filling, recycling, neutralization, recovery from spares.

use super::*;

/// The spare files of one subdirectory, by id.
///
/// `ready` spares may be overwritten by the next write. In `Periodic` mode
/// a freed file goes through two waiting states first (see the module
/// docs): `held` (it may still hold the flushed value of a key whose
/// exchange is not durable yet) and `neutral` (overwritten with
/// [`NEUTRAL`], waiting until that is durable).
#[derive(Default)]
pub(super) struct SparePool {
    pub(super) ready: Vec<u64>,
    pub(super) held: Vec<Held>,
    /// (id, flush number that makes its neutralization durable).
    pub(super) neutral: Vec<(u64, u64)>,
}

/// `Held::idx` of a spare of an earlier session: the name it left is
/// unknown; a removal of any key of its hash tombstones it.
pub(super) const ANY_IDX: u16 = u16::MAX;

/// A freed file that may hold the last flushed record of the key whose
/// name it was swapped out of.
pub(super) struct Held {
    pub(super) id: u64,
    /// The value name it was swapped out of.
    pub(super) hash: u64,
    pub(super) idx: u16,
    /// Flush number that makes the swap durable.
    pub(super) need: u64,
}

impl SparePool {
    pub(super) fn contains(&self, id: u64) -> bool {
        self.ready.contains(&id)
            || self.held.iter().any(|h| h.id == id)
            || self.neutral.iter().any(|&(n, _)| n == id)
    }

    pub(super) fn forget(&mut self, id: u64) {
        self.ready.retain(|&n| n != id);
        self.held.retain(|h| h.id != id);
        self.neutral.retain(|&(n, _)| n != id);
    }

    /// Spares counted against the pool's size; held ones are not
    /// (they are bounded by the writes of one or two flush intervals).
    pub(super) fn len(&self) -> usize {
        self.ready.len() + self.neutral.len()
    }
}

/// Where recovery found a record or tombstone of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Source {
    /// A spare file, by id.
    Spare(u64),
    /// The value file of another collision index of the key's hash: a
    /// file the key left (a removal whose move to the spares did not reach
    /// the disk) before it was placed under its current index.
    Value(u16),
}

/// The newest record or tombstone of a key outside its own file.
pub(super) struct Latest {
    pub(super) cas: u64,
    pub(super) source: Source,
    /// Its path.
    pub(super) path: PathBuf,
    /// `None` for a tombstone: the key was removed after its last record.
    pub(super) item: Option<CachedItem>,
}

/// `Periodic` recovery (rule 3), the search: the record or tombstone of
/// `key` with the highest cas among the spares of its subdirectory of the
/// generation in `gen_dir` and the value files of the other collision
/// indexes of its hash (`idx` is the key's own). Used by reads and the
/// sweep through [`Inner::recover`], and by verify and repair.
pub(super) fn find_latest(
    fs: &dyn FileSystem,
    gen_dir: &Path,
    hash: u64,
    idx: u16,
    key: &[u8],
) -> Result<Option<Latest>> {
    let dir = gen_dir.join(layout::subdir_name(hash));
    let names = match fs.list_dir(&dir) {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(&dir, e)),
    };
    let mut best: Option<Latest> = None;
    for name in names {
        let Some(name) = name.to_str() else { continue };
        let source = if let Some(id) = layout::parse_spare_name(name) {
            Source::Spare(id)
        } else {
            match layout::parse_value_name(name) {
                Some((h, i)) if h == hash && i != idx => Source::Value(i),
                _ => continue,
            }
        };
        let path = dir.join(name);
        let (cas, item) = match read_record(fs, &path, key)? {
            FileRead::Found(item) => (item.cas, Some(item)),
            FileRead::Tombstone(cas) => (cas, None),
            _ => continue,
        };
        if best.as_ref().is_none_or(|b| cas > b.cas) {
            best = Some(Latest {
                cas,
                source,
                path,
                item,
            });
        }
    }
    Ok(best)
}

impl Inner {
    /// `Periodic` mode, stripe lock held: the key's file holds no good
    /// record of it (a power cut let the swap reach the disk before the
    /// data, or the file is damaged). The file that held its last flushed
    /// record is still in the subdirectory: among the spares (held until
    /// the swap is durable), or under the value name of another collision
    /// index of its hash (a removal moves the key's file to the spares, and
    /// the key comes back under a new index while that move is not durable,
    /// rule 4). The record or tombstone of the key with the highest cas
    /// found in either place ([`find_latest`]) decides: a record is swapped
    /// back in, and the bad file is neutralized and pooled; a tombstone
    /// means the key was removed after its last record. `None` when no file
    /// holds a record newer than every tombstone.
    pub(super) fn recover(
        &self,
        gen: &Generation,
        hash: u64,
        idx: u16,
        key: &[u8],
    ) -> Result<Option<CachedItem>> {
        let sub = layout::subdir_index(hash);
        let Some(Latest {
            source,
            path: from,
            item: Some(item),
            ..
        }) = find_latest(&*self.fs, &gen.dir, hash, idx, key)?
        else {
            return Ok(None);
        };
        let target = gen.value_path(hash, idx);
        if let Source::Spare(id) = source {
            lock(&gen.spares[sub]).forget(id);
        }
        if let Err(e) = self.fs.rename_exchange(&from, &target) {
            return Err(io_err(&target, e));
        }
        log::warn!(
            "value file {} held no good record: recovered cas {} from {}",
            target.display(),
            item.cas,
            from.display()
        );
        self.stripe(hash).seq.fetch_add(1, Ordering::Release);
        self.cache.remove(hash, key);
        match source {
            Source::Spare(id) => self.give_back(gen, sub, id),
            // The bad file, now under a name no key maps to (unless
            // another key of the same hash does): neutralized and pooled
            // like a stray.
            Source::Value(i) if !self.index_mapped(gen, hash, i) => {
                if let Err(e) = self.retire_file(gen, hash, &from) {
                    log::warn!("cannot recycle {}: {e}", from.display());
                }
            }
            Source::Value(_) => {}
        }
        self.changes.fetch_add(1, Ordering::SeqCst);
        Ok(Some(item))
    }
}

impl Inner {
    /// Whether some key of the map has the value name (`hash`, `idx`).
    /// Scans one shard: for the rare recovery path only.
    fn index_mapped(&self, gen: &Generation, hash: u64, idx: u16) -> bool {
        gen.shard(hash)
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|(k, &i)| i == idx && (self.hasher)(k) == hash)
    }
}

impl Inner {
    /// Turns a value file into a spare (or removes it when the pool is
    /// full). A missing file is fine.
    ///
    /// In `Periodic` mode the file is neutralized first, so that a flush
    /// that makes its removal durable also makes it unreadable as a record
    /// (a spare must never bring back a removed value).
    pub(super) fn retire_file(&self, gen: &Generation, hash: u64, path: &Path) -> Result<()> {
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
    ///
    /// In `Periodic` mode the old file may hold the key's last flushed
    /// value and the exchange may not be durable yet: it is *held* (see
    /// the module docs) under the value name (`hash`, `idx`) it left.
    pub(super) fn recycle_spare(
        &self,
        gen: &Generation,
        sub: usize,
        old: Option<u64>,
        hash: u64,
        idx: u16,
    ) {
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
    pub(super) fn periodic(&self) -> bool {
        matches!(self.durability, Durability::Periodic(_))
    }

    /// Spares kept per subdirectory.
    pub(super) fn spare_cap(&self) -> usize {
        if self.periodic() {
            PERIODIC_SPARES_PER_SUBDIR
        } else {
            SPARES_PER_SUBDIR
        }
    }

    /// The number of the first flush that starts after this call.
    pub(super) fn next_flush(&self) -> u64 {
        self.flush_started.load(Ordering::SeqCst) + 1
    }

    /// Returns an unused spare (maybe written with a record) to the pool.
    pub(super) fn give_back(&self, gen: &Generation, sub: usize, id: u64) {
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
    pub(super) fn retire_removed(
        &self,
        gen: &Generation,
        hash: u64,
        idx: u16,
        key: &[u8],
    ) -> Result<()> {
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
        self.note_change();
        Ok(())
    }

    /// `Periodic` mode: whether the value name (`hash`, `idx`) was left by
    /// a file in a way no completed flush covers yet. A new key is not put
    /// there: on the disk a power cut leaves, its rename could land on the
    /// name while the departure of the file before it did not, and that
    /// file (with the last flushed record) would be lost.
    pub(super) fn recently_vacated(
        &self,
        gen: &Generation,
        sub: usize,
        hash: u64,
        idx: u16,
    ) -> bool {
        let done = self.flush_done.load(Ordering::SeqCst);
        lock(&gen.spares[sub])
            .held
            .iter()
            .any(|h| h.hash == hash && h.idx == idx && h.need > done)
    }

    /// `Periodic` flusher, after a completed flush: neutralizes the held
    /// spares whose swap that flush made durable. Returns whether it
    /// neutralized any (they become reusable after the next flush).
    pub(super) fn neutralize_matured(&self) -> bool {
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
}
