//! Opening: loading and scanning a generation, replaying the journal onto it, and the background sweep after open.

use super::journal::{self, Final};
use super::*;

impl Inner {
    /// Background work after open: collects spare files into the pools,
    /// removes leftovers, and removes expired items if the generation has
    /// any items with an expiry.
    pub(super) fn sweep(&self) {
        let gen = self.current_gen();
        let expiring = gen.expiring_marked.load(Ordering::Relaxed);
        // (hash, index) of every mapped key, to spot value files no entry
        // points to (left by a write interrupted between its rename and its
        // map record) without reading every file.
        let mut mapped: Vec<(u64, u16)> = Vec::with_capacity(gen.map.len());
        for shard in gen.map.read_shards() {
            mapped.extend(shard.iter().map(|(k, &idx)| ((self.hasher)(k), idx)));
        }
        mapped.sort_unstable();
        for sub in 0..SUBDIRS {
            if self.stop.stopped() || !Arc::ptr_eq(&gen, &self.current_gen()) {
                return;
            }
            let dir = gen.subdir_path(sub);
            // Never list (and clean up) through a symlink planted in place
            // of a subdirectory; writes refuse it in `ensure_subdir`.
            if !self.fs.is_real_dir(&dir).unwrap_or(false) {
                continue;
            }
            let names = match self.fs.list_dir(&dir) {
                Ok(n) => n,
                Err(_) => continue,
            };
            gen.subdir_ready[sub].store(true, Ordering::Release);
            for name in names {
                let Some(name) = name.to_str() else { continue };
                if let Some(id) = layout::parse_spare_name(name) {
                    if id >> 40 >= self.epoch {
                        // Made in this session: already pooled or in use.
                        continue;
                    }
                    gen.spares.adopt(sub, id, &dir.join(name));
                } else if let Some((hash, idx)) = layout::parse_value_name(name) {
                    if mapped.binary_search(&(hash, idx)).is_err() {
                        self.sweep_stray(&gen, &dir.join(name), hash, idx);
                    } else if expiring {
                        self.sweep_expired(&dir.join(name), hash);
                    }
                }
            }
        }
    }

    /// Recycles a value file that no map entry points to, after checking
    /// again under the stripe lock (a write may have mapped it since).
    pub(super) fn sweep_stray(&self, gen: &Generation, path: &Path, hash: u64, idx: u16) {
        let current = self.gen_read();
        if !std::ptr::eq(&**current, gen) {
            return;
        }
        let _g = self.stripe(hash).lock.lock();
        if self
            .owned_by_mapped_key(gen, path, hash, idx)
            .unwrap_or(true)
        {
            return;
        }
        if let Err(e) = gen.spares.retire_file(hash, path) {
            log::warn!("cannot recycle stray value file {}: {e}", path.display());
        }
    }

    pub(super) fn sweep_expired(&self, path: &Path, hash: u64) {
        let Ok(buf) = self.fs.read_at(path, 0, record::HEADER_LEN + MAX_KEY_BYTES) else {
            return;
        };
        let Ok(h) = record::decode_header(&buf) else {
            return;
        };
        if !expired(h.expiry) {
            return;
        }
        let Some(key) = buf.get(record::HEADER_LEN..record::HEADER_LEN + h.key_len) else {
            return;
        };
        if (self.hasher)(key) == hash {
            if let Err(e) = self.remove_if_expired(key) {
                log::warn!("cannot remove expired item {}: {e}", path.display());
            }
        }
    }
}

/// Loads generation `n` from `dir`: reads the map log (dropping a torn
/// tail) or, if it is missing or damaged, rebuilds the map from the value
/// files and writes a fresh log.
pub(super) fn load_generation(
    shared_fs: &Arc<dyn FileSystem>,
    dir: &Path,
    hasher: fn(&[u8]) -> u64,
    sync: bool,
    epoch: u64,
) -> Result<Generation> {
    let fs = &**shared_fs;
    let log_path = dir.join(layout::MAP_LOG);
    let mut loaded = Vec::new();
    let mut rebuild = false;
    let mut records = 0;
    match read_optional(fs, &log_path, usize::MAX)? {
        None => rebuild = true,
        Some(bytes) => {
            let mut tmp: Vec<HashMap<Box<[u8]>, u16>> =
                (0..MAP_SHARDS).map(|_| HashMap::new()).collect();
            let (end, n_records) = maplog::decode_log(&bytes, |rec| match rec {
                MapRecord::Put { key, idx } => {
                    let h = hasher(key.0);
                    tmp[(h as usize) % MAP_SHARDS].insert(key.0.into(), idx);
                }
                MapRecord::Remove { key } => {
                    let h = hasher(key.0);
                    tmp[(h as usize) % MAP_SHARDS].remove(key.0);
                }
            });
            records = n_records;
            match end {
                LogEnd::Clean => {}
                LogEnd::TornTail { valid_len, what } => {
                    log::warn!("map log {}: dropping torn tail: {what}", log_path.display());
                    if valid_len < maplog::MAGIC.len() as u64 {
                        rebuild = true;
                    } else {
                        fs.set_len(&log_path, valid_len)
                            .map_err(|e| io_err(&log_path, e))?;
                    }
                }
                LogEnd::Damaged { at, what } => {
                    log::warn!(
                        "map log {} damaged at offset {at} ({what}): rebuilding the map from the value files",
                        log_path.display()
                    );
                    rebuild = true;
                }
            }
            if !rebuild {
                loaded = tmp;
            }
        }
    }
    for name in list_names(fs, dir)? {
        let path = dir.join(&name);
        if name.ends_with(layout::TMP_SUFFIX) {
            // Leftover of an interrupted compaction.
            let _ = fs.remove_file(&path);
        } else if name.len() == 2
            && u8::from_str_radix(&name, 16).is_ok()
            && !fs.is_real_dir(&path).map_err(|e| io_err(&path, e))?
        {
            // A value subdirectory must be a directory of its own: a
            // symlink planted here would lead writes and reads out of the
            // store. Remove the link (not what it points to).
            log::warn!("removing {}: not a directory", path.display());
            fs.remove_file(&path).map_err(|e| io_err(&path, e))?;
        }
    }
    let expiring_marked = fs
        .file_len(&dir.join(layout::EXPIRING_MARK))
        .map_err(|e| io_err(dir, e))?
        .is_some();
    let gen = Generation {
        dir: dir.to_path_buf(),
        number: dir
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(layout::parse_gen_name)
            .unwrap_or(0),
        // Its log is opened below once it is known good.
        map: KeyMap::new(shared_fs.clone(), dir, sync, loaded, records),
        subdir_ready: (0..SUBDIRS).map(|_| AtomicBool::new(false)).collect(),
        spares: Spares::new(shared_fs.clone(), dir, epoch),
        expiring_marked: AtomicBool::new(expiring_marked),
    };
    if rebuild {
        let scan = scan_generation(fs, dir, hasher, true)?;
        for p in &scan.problems {
            log::warn!("rebuilding {}: {p}", dir.display());
        }
        gen.map.insert_scanned(scan.keys, hasher);
        gen.map.rewrite_log()?;
    } else {
        gen.map.open_log()?;
    }
    Ok(gen)
}

/// What a scan of a generation's value files found.
pub(super) struct Scan {
    pub(super) keys: Vec<(Box<[u8]>, u16)>,
    /// Highest cas number of any good record.
    pub(super) max_cas: u64,
    pub(super) files: u64,
    pub(super) dropped: u64,
    pub(super) spares: u64,
    pub(super) problems: Vec<String>,
}

/// Reads every value file of a generation. Damaged files, files whose key
/// does not hash to their name and duplicates (the lower cas loses) are
/// reported, and removed when `fix`.
pub(super) fn scan_generation(
    fs: &dyn FileSystem,
    dir: &Path,
    hasher: fn(&[u8]) -> u64,
    fix: bool,
) -> Result<Scan> {
    let mut scan = Scan {
        keys: Vec::new(),
        max_cas: 0,
        files: 0,
        dropped: 0,
        spares: 0,
        problems: Vec::new(),
    };
    let mut best: HashMap<Box<[u8]>, (u16, u64, PathBuf)> = HashMap::new();
    for sub in 0..SUBDIRS {
        let subdir = dir.join(format!("{sub:02x}"));
        let names = match fs.list_dir(&subdir) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err(&subdir, e)),
        };
        for name in names {
            let Some(name) = name.to_str() else {
                scan.problems
                    .push(format!("unexpected file {}", subdir.join(&name).display()));
                continue;
            };
            let path = subdir.join(name);
            if layout::parse_spare_name(name).is_some() {
                scan.spares += 1;
                continue;
            }
            let Some((hash, idx)) = layout::parse_value_name(name) else {
                scan.problems
                    .push(format!("unexpected file {}", path.display()));
                continue;
            };
            scan.files += 1;
            let bytes = fs
                .read_at(&path, 0, usize::MAX)
                .map_err(|e| io_err(&path, e))?;
            let problem = match record::decode(&bytes) {
                Err(what) => Some(format!("damaged value file {}: {what}", path.display())),
                Ok(rec) if hasher(rec.key) != hash || layout::subdir_index(hash) != sub => {
                    Some(format!(
                        "value file {} holds a key that does not hash to its name",
                        path.display()
                    ))
                }
                Ok(rec) => {
                    scan.max_cas = scan.max_cas.max(rec.cas);
                    let key: Box<[u8]> = rec.key.into();
                    match best.get(&key) {
                        Some((_, cas, other)) if *cas >= rec.cas => Some(format!(
                            "value file {} duplicates newer {}",
                            path.display(),
                            other.display()
                        )),
                        Some((_, _, other)) => {
                            let other = other.clone();
                            best.insert(key, (idx, rec.cas, path.clone()));
                            scan.problems.push(format!(
                                "value file {} duplicates newer {}",
                                other.display(),
                                path.display()
                            ));
                            if fix {
                                drop_file(fs, &other, &mut scan)?;
                            }
                            None
                        }
                        None => {
                            best.insert(key, (idx, rec.cas, path.clone()));
                            None
                        }
                    }
                }
            };
            if let Some(p) = problem {
                scan.problems.push(p);
                if fix {
                    drop_file(fs, &path, &mut scan)?;
                }
            }
        }
    }
    scan.keys = best.into_iter().map(|(k, (idx, _, _))| (k, idx)).collect();
    Ok(scan)
}

pub(super) fn drop_file(fs: &dyn FileSystem, path: &Path, scan: &mut Scan) -> Result<()> {
    match fs.remove_file(path) {
        Ok(()) => {
            scan.dropped += 1;
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(path, e)),
    }
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
        let mut applied = 0;
        for (key, cas, op) in journal::read_final(&*self.fs, files, gen.number)? {
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
