//! The read path: the pending table, then the cache, then the file; a bad file is dropped.

use super::*;

/// What a read of a value file found.
pub(super) enum FileRead {
    /// A good record of the key asked for.
    Found(CachedItem),
    /// No file by that name.
    Missing,
    /// A good record of another key.
    OtherKey,
    /// A damaged file.
    Corrupt(String),
}

/// The key's state as seen under its stripe lock.
pub(super) struct Current {
    /// The collision index of its file, per the map.
    pub(super) idx: Option<u16>,
    /// Its live item (not expired).
    pub(super) item: Option<Arc<CachedItem>>,
    /// Its latest change is staged (`Some(true)` a put,
    /// `Some(false)` a removal), and the files may not show it yet.
    pub(super) staged: Option<bool>,
}

impl Current {
    fn absent() -> Current {
        Current {
            idx: None,
            item: None,
            staged: None,
        }
    }

    /// Whether the key has something to remove: a staged put, or a file
    /// when nothing is staged.
    pub(super) fn present(&self) -> bool {
        match self.staged {
            Some(put) => put,
            None => self.idx.is_some(),
        }
    }
}

impl Inner {
    /// Reads the key's item (cache, then file) without taking its stripe
    /// lock; falls back to a locked read when the file looks inconsistent.
    pub(super) fn fetch(&self, key: &[u8]) -> Result<Option<Arc<CachedItem>>> {
        self.clear_if_due()?;
        validate_key(key)?;
        let hash = (self.hasher)(key);
        // Staged changes are newer than the cache and the files.
        if let Some(found) = self.staged_item(hash, key)? {
            return Ok(found);
        }
        if let Some(it) = self.cache.get(hash, key) {
            if !expired(it.expiry) {
                return Ok(Some(it));
            }
            self.remove_if_expired(key)?;
            return Ok(None);
        }
        let stripe = self.stripe(hash);
        // Loaded before a second look at the table: a change staged after
        // that look bumps it, so what the files show then is not cached
        // (a stale cache entry would outlive the staged change).
        let seq = stripe.seq.load(Ordering::Acquire);
        if let Some(found) = self.staged_item(hash, key)? {
            return Ok(found);
        }
        let gen = self.gen_read();
        let Some(idx) = gen.map.lookup(hash, key) else {
            return Ok(None);
        };
        if let FileRead::Found(item) = self.read_file(&gen, hash, idx, key)? {
            if expired(item.expiry) {
                drop(gen);
                self.remove_if_expired(key)?;
                return Ok(None);
            }
            let item = Arc::new(item);
            if self.cache_enabled {
                self.cache.insert_if(hash, key, item.clone(), || {
                    stripe.seq.load(Ordering::Acquire) == seq
                });
            }
            return Ok(Some(item));
        }
        // Missing, another key, or damage: look again under the lock, where
        // no writer can be between steps.
        let item = {
            let _g = stripe.lock.lock();
            let cur = self.current(&gen, hash, key)?;
            if let Some(item) = &cur.item {
                self.cache.insert(hash, key, item.clone());
            }
            cur.item
        };
        drop(gen);
        self.settle(true)?;
        Ok(item)
    }

    /// The key's staged change, if it has one: `Some(None)` for a removal
    /// (or an expired item, removed now).
    fn staged_item(&self, hash: u64, key: &[u8]) -> Result<Option<Option<Arc<CachedItem>>>> {
        let Some((n, staged)) = self.pending.get(hash, key) else {
            return Ok(None);
        };
        // What a read returns is acknowledged like a change.
        acks::owe(n);
        self.settle(true)?;
        match staged {
            Some(it) if !expired(it.expiry) => Ok(Some(Some(it))),
            Some(_) => {
                self.remove_if_expired(key)?;
                Ok(Some(None))
            }
            None => Ok(Some(None)),
        }
    }

    /// Reads and checks the value file of (hash, idx).
    pub(super) fn read_file(
        &self,
        gen: &Generation,
        hash: u64,
        idx: u16,
        key: &[u8],
    ) -> Result<FileRead> {
        self.read_record(&gen.value_path(hash, idx), key)
    }

    /// Reads and checks the file at `path` as a record of `key`.
    pub(super) fn read_record(&self, path: &Path, key: &[u8]) -> Result<FileRead> {
        read_record(&*self.fs, path, key)
    }

    /// The key's state; the caller holds its stripe lock. Repairs what it
    /// finds inconsistent: a map entry without a good file is dropped.
    pub(super) fn current(&self, gen: &Generation, hash: u64, key: &[u8]) -> Result<Current> {
        let idx = gen.map.lookup(hash, key);
        if let Some((n, staged)) = self.pending.get(hash, key) {
            // The caller settles after letting its locks go.
            acks::owe(n);
            return Ok(Current {
                idx,
                staged: Some(staged.is_some()),
                item: staged.filter(|it| !expired(it.expiry)),
            });
        }
        let Some(idx) = idx else {
            return Ok(Current::absent());
        };
        if let Some(it) = self.cache.get(hash, key) {
            let item = (!expired(it.expiry)).then_some(it);
            return Ok(Current {
                idx: Some(idx),
                item,
                staged: None,
            });
        }
        match self.read_file(gen, hash, idx, key)? {
            FileRead::Found(item) => {
                let item = (!expired(item.expiry)).then(|| Arc::new(item));
                Ok(Current {
                    idx: Some(idx),
                    item,
                    staged: None,
                })
            }
            found => self.drop_bad_file(gen, hash, idx, key, found),
        }
    }
}

impl Inner {
    /// Drops the key whose file is missing, another key's or damaged.
    pub(super) fn drop_bad_file(
        &self,
        gen: &Generation,
        hash: u64,
        idx: u16,
        key: &[u8],
        found: FileRead,
    ) -> Result<Current> {
        match found {
            FileRead::Found(_) | FileRead::Missing | FileRead::OtherKey => {
                // The file went away (interrupted delete) or the name was
                // reused for another key: the key is absent.
                gen.map.remove(hash, key)?;
                Ok(Current::absent())
            }
            FileRead::Corrupt(what) => {
                let path = gen.value_path(hash, idx);
                log::warn!("dropping damaged value file {}: {what}", path.display());
                gen.spares.retire_file(hash, &path)?;
                gen.map.remove(hash, key)?;
                Ok(Current::absent())
            }
        }
    }
}

/// Reads and checks the file at `path` as a record of `key`.
pub(super) fn read_record(fs: &dyn FileSystem, path: &Path, key: &[u8]) -> Result<FileRead> {
    let path = path.to_path_buf();
    let mut buf = match fs.read_at(&path, 0, FIRST_READ) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(FileRead::Missing),
        Err(e) => return Err(io_err(&path, e)),
    };
    let header = match record::decode_header(&buf) {
        Ok(h) => h,
        Err(what) => return Ok(FileRead::Corrupt(what)),
    };
    let len = header.record_len();
    if len > buf.len() && buf.len() == FIRST_READ {
        let rest = fs
            .read_at(&path, FIRST_READ as u64, len - FIRST_READ)
            .map_err(|e| io_err(&path, e))?;
        buf.extend_from_slice(&rest);
    }
    match record::decode(&buf) {
        Ok(rec) if rec.key == key => Ok(FileRead::Found(CachedItem {
            value: rec.value.to_vec(),
            flags: rec.flags,
            expiry: rec.expiry,
            cas: rec.cas,
        })),
        Ok(_) => Ok(FileRead::OtherKey),
        Err(what) => Ok(FileRead::Corrupt(what)),
    }
}
