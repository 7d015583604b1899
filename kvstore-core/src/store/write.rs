//! The write path: a change, from its decision under the key's stripe lock to the journal, the pending table and the value files (see docs/DESIGN.md).

use super::*;
use crate::journal::Entry;

/// What a conditional update decides.
pub(super) enum Action<'a> {
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

impl Inner {
    /// Runs `f` on the key's current state (see [`Inner::current`]) with
    /// the generation read lock and the key's stripe lock held.
    fn with_key_locked<R>(
        &self,
        key: &[u8],
        f: impl FnOnce(&Generation, u64, Current) -> Result<R>,
    ) -> Result<R> {
        let hash = (self.hasher)(key);
        let done = {
            let gen = self.gen_read();
            let _g = self.stripe(hash).lock.lock();
            self.current(&gen, hash, key)
                .and_then(|cur| f(&gen, hash, cur))?
        };
        self.settle(false)?;
        Ok(done)
    }

    /// Removes a key that is present (a file or a staged put) but has no
    /// live item (it expired). Stripe lock held.
    fn remove_if_dead(&self, gen: &Generation, hash: u64, key: &[u8], cur: &Current) -> Result<()> {
        if cur.item.is_none() && cur.present() {
            self.remove_locked(gen, hash, key, cur)?;
        }
        Ok(())
    }

    /// Runs `decide` on the key's current item under its stripe lock and
    /// carries out the decision. Returns the cas written, if anything was.
    ///
    /// This is the whole write path of every change but removals: in
    /// `Periodic` and `Always` the record goes to the journal and its
    /// change to the pending table, which the flusher applies to the value
    /// files; in `Never` the record is written to the value files here.
    pub(super) fn update<'a>(
        &self,
        key: &[u8],
        decide: impl FnOnce(Option<&CachedItem>) -> Result<Action<'a>>,
    ) -> Result<Option<u64>> {
        self.clear_if_due()?;
        validate_key(key)?;
        self.check_writable()?;
        self.wait_for_room()?;
        self.with_key_locked(key, |gen, hash, cur| {
            let (value, flags, expiry, cas) = match decide(cur.item.as_deref())? {
                Action::Keep => {
                    // An expired item found on the way is removed now.
                    self.remove_if_dead(gen, hash, key, &cur)?;
                    return Ok(None);
                }
                Action::Write {
                    value,
                    flags,
                    expiry,
                    cas,
                } => (value, flags, expiry, cas.unwrap_or_else(|| self.next_cas())),
            };
            let rec =
                record::encode(key, &value, flags, expiry, cas).ok_or(Error::ValueTooLarge {
                    len: value.len(),
                    max: self.max_value_bytes,
                })?;
            if expiry != Expiry::Never {
                self.mark_expiring(gen)?;
            }
            let item = (self.cache_enabled || self.journaled_behind()).then(|| {
                Arc::new(CachedItem {
                    value: value.into_owned(),
                    flags,
                    expiry,
                    cas,
                })
            });
            let written = match (&self.journal, &item) {
                (Some(j), Some(item)) => {
                    let entry = Entry::Put {
                        gen: gen.number,
                        record: &rec,
                    };
                    self.stage(j, hash, key, &entry, Change::Put(item.clone()))
                }
                _ => self.write_files(gen, hash, key, cur.idx, &rec),
            };
            match written {
                Ok(()) => self.changed(hash, key, item.filter(|_| self.cache_enabled)),
                // The file may or may not have changed: the cache must not
                // claim either.
                Err(e) => {
                    self.changed(hash, key, None);
                    return Err(e);
                }
            }
            Ok(Some(cas))
        })
    }

    /// Writes `entry` to the journal (a process crash no longer loses it;
    /// the syncer makes it durable, and in `Always` the call waits for that
    /// once it let its locks go, see `store/acks.rs`), then stages its
    /// change in the pending table, where reads see it at once. Stripe lock
    /// of the key held, so that the journal and the table agree on the
    /// order of the key's changes, and so that a checkpoint that has taken
    /// each stripe lock once finds every entry of the old journal file
    /// staged.
    fn stage(
        &self,
        j: &Journal,
        hash: u64,
        key: &[u8],
        entry: &Entry<'_>,
        change: Change,
    ) -> Result<()> {
        let n = j.append(entry)?;
        self.pending.stage(hash, key, n, change);
        acks::owe(n);
        Ok(())
    }

    pub(super) fn delete(&self, key: &[u8]) -> Result<bool> {
        self.clear_if_due()?;
        validate_key(key)?;
        self.check_writable()?;
        self.wait_for_room()?;
        self.with_key_locked(key, |gen, hash, cur| {
            self.remove_locked(gen, hash, key, &cur)?;
            Ok(cur.item.is_some())
        })
    }

    /// Removes the key if it is (still) expired.
    pub(super) fn remove_if_expired(&self, key: &[u8]) -> Result<()> {
        if self.health.read_only() {
            return Ok(());
        }
        self.with_key_locked(key, |gen, hash, cur| {
            self.remove_if_dead(gen, hash, key, &cur)
        })
    }

    /// Removes the key (stripe lock held): staged behind the journal in
    /// `Periodic` and `Always`, from the files at once in `Never`.
    pub(super) fn remove_locked(
        &self,
        gen: &Generation,
        hash: u64,
        key: &[u8],
        cur: &Current,
    ) -> Result<()> {
        if !cur.present() {
            return Ok(());
        }
        let Some(j) = &self.journal else {
            return self.remove_files(gen, hash, key, cur.idx);
        };
        let entry = Entry::Remove {
            gen: gen.number,
            cas: self.next_cas(),
            key,
        };
        self.stage(j, hash, key, &entry, Change::Remove)?;
        self.changed(hash, key, None);
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
    pub(super) fn remove_files(
        &self,
        gen: &Generation,
        hash: u64,
        key: &[u8],
        idx: Option<u16>,
    ) -> Result<()> {
        let Some(idx) = idx else { return Ok(()) };
        gen.map.remove(hash, key)?;
        self.changed(hash, key, None);
        let path = gen.value_path(hash, idx);
        if let Err(e) = gen.spares.retire_file(hash, &path) {
            log::warn!("removed key's file left in place: {e}");
        }
        Ok(())
    }
}

impl Inner {
    /// The bookkeeping after any change of a key (stripe lock held): its
    /// stripe's sequence number moves, so that readers that looked before
    /// do not cache what they read (see `Cache::insert_if`), then the
    /// cache holds `item` or nothing.
    pub(super) fn changed(&self, hash: u64, key: &[u8], item: Option<Arc<CachedItem>>) {
        self.stripe(hash).seq.fetch_add(1, Ordering::Release);
        match item {
            Some(item) => self.cache.insert(hash, key, item),
            None => self.cache.remove(hash, key),
        }
    }

    pub(super) fn mark_expiring(&self, gen: &Generation) -> Result<()> {
        if gen.expiring_marked.load(Ordering::Relaxed) {
            return Ok(());
        }
        create_if_missing(&*self.fs, &gen.dir.join(layout::EXPIRING_MARK), b"")?;
        gen.expiring_marked.store(true, Ordering::Relaxed);
        Ok(())
    }
}

impl Inner {
    pub(super) fn ensure_subdir(&self, gen: &Generation, sub: usize) -> Result<()> {
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
}

impl Inner {
    /// Puts the filled spare `id` in place of `target`. With exchange, the
    /// old file becomes a spare, returned as `Some(id)` for the caller to
    /// recycle ([`Spares::recycle`]); reusing it at once is safe (see
    /// docs/DESIGN.md, 3.4). Without exchange the old file is replaced (and
    /// freed).
    pub(super) fn swap_in(
        &self,
        gen: &Generation,
        sub: usize,
        id: u64,
        target: &Path,
    ) -> Result<Option<u64>> {
        let spare = gen.spares.path(sub, id);
        if self.exchange_supported.load(Ordering::Relaxed) {
            match self.fs.rename_exchange(&spare, target) {
                Ok(()) => return Ok(Some(id)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) if e.kind() == io::ErrorKind::Unsupported => {
                    self.exchange_supported.store(false, Ordering::Relaxed);
                }
                Err(e) => {
                    gen.spares.give_back(sub, id);
                    return Err(io_err(target, e));
                }
            }
        }
        // The rename frees the old file at once: in `Periodic` and `Always`
        // the journal entry of the new record is durable, so a power cut
        // that leaves the name without good data is repaired by replay.
        self.fs.rename(&spare, target).map(|()| None).map_err(|e| {
            gen.spares.give_back(sub, id);
            io_err(target, e)
        })
    }
}

impl Inner {
    /// Writes a record for `key` into the files (stripe lock held): into a
    /// spare, then swapped in (behind the journal a new key's file is
    /// created in place when no spare is pooled, see
    /// [`Inner::create_in_place`]); a
    /// new key also gets a collision index and a map record.
    pub(super) fn write_files(
        &self,
        gen: &Generation,
        hash: u64,
        key: &[u8],
        idx: Option<u16>,
        rec: &[u8],
    ) -> Result<()> {
        if let (Some(idx), true) = (idx, self.journaled_behind()) {
            if self.overwrite_in_place(gen, hash, idx, rec)? {
                return Ok(());
            }
        }
        let sub = layout::subdir_index(hash);
        self.ensure_subdir(gen, sub)?;
        let pooled = gen.spares.fill_pooled(sub, rec);
        if idx.is_none() && pooled.is_none() && self.journal.is_some() {
            if let Some(idx) = self.create_in_place(gen, hash, rec)? {
                gen.map.put(hash, key, idx)?;
                return Ok(());
            }
        }
        let id = match pooled {
            Some(id) => id,
            None => gen.spares.create(sub, rec)?,
        };
        match idx {
            Some(idx) => {
                let old = self.swap_in(gen, sub, id, &gen.value_path(hash, idx))?;
                gen.spares.recycle(sub, old);
                Ok(())
            }
            None => {
                let (idx, old) = self.place_new(gen, sub, id, hash)?;
                gen.spares.recycle(sub, old);
                gen.map.put(hash, key, idx)?;
                Ok(())
            }
        }
    }

    /// Puts the filled spare `id` under the first collision index of `hash`
    /// whose name is free (or holds a leftover no map entry points to, which
    /// becomes a spare); returns that index and the leftover's spare id, to
    /// recycle (see [`Inner::swap_in`]). Stripe lock of `hash` held.
    pub(super) fn place_new(
        &self,
        gen: &Generation,
        sub: usize,
        id: u64,
        hash: u64,
    ) -> Result<(u16, Option<u64>)> {
        let spare = gen.spares.path(sub, id);
        for idx in 0..=layout::MAX_COLLISION_INDEX {
            let target = gen.value_path(hash, idx);
            let taken = if self.noreplace_supported.load(Ordering::Relaxed) {
                match self.fs.rename_noreplace(&spare, &target) {
                    Ok(()) => return Ok((idx, None)),
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => true,
                    Err(e) if e.kind() == io::ErrorKind::Unsupported => {
                        self.noreplace_supported.store(false, Ordering::Relaxed);
                        self.name_taken(&target)
                            .inspect_err(|_| gen.spares.give_back(sub, id))?
                    }
                    Err(e) => {
                        gen.spares.give_back(sub, id);
                        return Err(io_err(&target, e));
                    }
                }
            } else {
                self.name_taken(&target)
                    .inspect_err(|_| gen.spares.give_back(sub, id))?
            };
            if taken && self.owned_by_mapped_key(gen, &target, hash, idx)? {
                continue;
            }
            // Free, or a leftover: swap in (the leftover becomes a spare).
            let old = self.swap_in(gen, sub, id, &target)?;
            return Ok((idx, old));
        }
        gen.spares.give_back(sub, id);
        Err(Error::InvalidKey {
            reason: "too many keys share one hash",
        })
    }

    /// Behind the journal, a key that has a file: rewrites the file in
    /// place rather than filling a spare and exchanging names, which
    /// saves two directory entries' changes per overwrite. `false` when
    /// the file is missing (the caller places the record anew).
    ///
    /// As with [`Inner::create_in_place`], a crash can tear the file, and
    /// the record's journal entry, durable before this runs, is replayed
    /// over it. A reader without the lock that catches the file half
    /// written finds its checksum wrong and reads again under the lock
    /// (`Inner::fetch`). Stripe lock of `hash` held.
    fn overwrite_in_place(
        &self,
        gen: &Generation,
        hash: u64,
        idx: u16,
        rec: &[u8],
    ) -> Result<bool> {
        let path = gen.value_path(hash, idx);
        match self.fs.overwrite(&path, rec) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err(&path, e)),
        }
    }

    /// Behind the journal, a new key and no pooled spare: creates the value
    /// file directly under the first free collision index of `hash` and
    /// returns that index, saving the spare's name and its rename (about a
    /// sixth of a new key's CPU here). `None` when a leftover no map entry
    /// points to is in the way: the caller swaps a spare in over it.
    ///
    /// A file written in place can be torn by a crash, which the spare and
    /// rename exist to prevent; here the record's journal entry is already
    /// durable, so replay rewrites whatever a crash leaves. Readers do not
    /// see the file before the map entry that follows it. Stripe lock of
    /// `hash` held.
    fn create_in_place(&self, gen: &Generation, hash: u64, rec: &[u8]) -> Result<Option<u16>> {
        for idx in 0..=layout::MAX_COLLISION_INDEX {
            let target = gen.value_path(hash, idx);
            match self.fs.create_new(&target, rec) {
                Ok(()) => return Ok(Some(idx)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    if self.owned_by_mapped_key(gen, &target, hash, idx)? {
                        continue;
                    }
                    return Ok(None);
                }
                Err(e) => {
                    // A half-written file of ours (no map entry points to
                    // it) must not stay under the name: remove it if it is
                    // there and nobody's.
                    if matches!(self.owned_by_mapped_key(gen, &target, hash, idx), Ok(false)) {
                        let _ = self.fs.remove_file(&target);
                    }
                    return Err(io_err(&target, e));
                }
            }
        }
        Err(Error::InvalidKey {
            reason: "too many keys share one hash",
        })
    }

    pub(super) fn name_taken(&self, path: &Path) -> Result<bool> {
        self.fs
            .file_len(path)
            .map(|len| len.is_some())
            .map_err(|e| io_err(path, e))
    }

    /// Whether the value file `path` (hash, idx) belongs to a key the map
    /// points to it.
    pub(super) fn owned_by_mapped_key(
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
        Ok(record::header_key(&buf).is_some_and(|other| {
            (self.hasher)(other) == hash && gen.map.lookup(hash, other) == Some(idx)
        }))
    }
}
