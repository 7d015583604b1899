//! `verify` and `repair` of a closed store, and their reports.

use super::*;

/// What [`Store::verify`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Value files read and checked.
    pub files_checked: u64,
    /// Keys whose file matched the map and its checksum.
    pub keys_ok: u64,
    /// One line per problem found; empty when the store is sound.
    pub problems: Vec<String>,
    /// Value files no map entry points to: leftovers of an interrupted
    /// write, or (after a power cut in `Periodic` mode) of a removal or a
    /// recycling whose move to the spares did not land, which left the
    /// key's tombstone or a neutralized file under a value name. Harmless
    /// (recycled on the next open), not counted as problems.
    pub stray_files: u64,
    /// Recycled spare files (not values).
    pub spare_files: u64,
    /// The live generation.
    pub generation: u64,
    /// Directories of cleared generations not yet deleted (deletion runs
    /// in the background and resumes on the next open); not problems.
    pub old_generations: u64,
    /// Map entries whose value file is missing (left by a delete
    /// interrupted between its two steps) or, after a power cut in
    /// `Periodic` mode, holds no record but the key's tombstone (a removal
    /// whose map record did not land) or a neutralized file (a write whose
    /// data did not land), with no newer record of the key in a spare or
    /// another value file of its hash. They read as absent and are dropped
    /// on the next access, losing nothing, so not counted as problems.
    pub dangling_entries: u64,
    /// With `Periodic` options, or any options after a `Periodic` session
    /// that did not close (the store directory still has its `PERIODIC` file): keys
    /// whose value file holds no good record (a power cut let a swap reach
    /// the disk before its data) but whose last record sits in a spare or
    /// a stray file of their subdirectory, with no newer tombstone. Each is
    /// also listed in `problems`: [`Store::repair`] restores it, and so does
    /// opening the store then. (Opening in another mode once that session
    /// closed drops it.)
    pub recoverable_keys: u64,
    /// Write-ahead journal files of a `Durability::Always` session that did
    /// not close. Verify does not read them; opening the store (in any
    /// mode) or [`Store::repair`] replays them first, which finishes the
    /// writes they hold and may resolve problems listed here (a value file
    /// a crash left torn, a map entry not yet written).
    pub journal_files: u64,
}

/// A value file that holds no record, only what a power cut in `Periodic`
/// mode can leave under a value name: a tombstone (a removal writes one over
/// the key's file before moving it to the spares) or a neutralized file
/// (first bytes [`NEUTRAL`]: a file being recycled, or a reused spare whose
/// new data did not land). Found by [`scan_generation`] for verify, which
/// counts it as a leftover (a stray file, or a dangling entry when the map
/// points to it) unless it hides a record opening would not restore.
pub(super) struct Leftover {
    pub(super) path: PathBuf,
    /// The subdirectory it is in.
    pub(super) sub: usize,
    /// Its name's hash.
    pub(super) hash: u64,
    /// The tombstone's key and cas; `None` for a neutralized file.
    pub(super) tombstone: Option<(Box<[u8]>, u64)>,
}

impl Leftover {
    /// `bytes` (the whole file `path`, which holds no good record) as a
    /// leftover, if it is one.
    pub(super) fn of(bytes: &[u8], path: &Path, sub: usize, hash: u64) -> Option<Self> {
        let tombstone = match record::decode_tombstone(bytes) {
            Some((key, cas)) => Some((Box::from(key), cas)),
            None if bytes.starts_with(&NEUTRAL) => None,
            None => return None,
        };
        Some(Leftover {
            path: path.to_path_buf(),
            sub,
            hash,
            tombstone,
        })
    }

    /// What it holds, for a problem line.
    fn describe(&self, key: &[u8]) -> &'static str {
        match &self.tombstone {
            Some((k, _)) if **k == *key => "its tombstone",
            Some(_) => "a tombstone of another key",
            None => "a neutralized file",
        }
    }
}

impl VerifyReport {
    /// Whether no problem was found.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "generation: {}", self.generation)?;
        writeln!(f, "value files checked: {}", self.files_checked)?;
        writeln!(f, "keys ok: {}", self.keys_ok)?;
        writeln!(f, "stray files: {}", self.stray_files)?;
        writeln!(f, "spare files: {}", self.spare_files)?;
        writeln!(f, "dangling map entries: {}", self.dangling_entries)?;
        writeln!(f, "keys recoverable from spares: {}", self.recoverable_keys)?;
        writeln!(
            f,
            "old generations pending deletion: {}",
            self.old_generations
        )?;
        if self.journal_files > 0 {
            writeln!(
                f,
                "journal files awaiting replay: {} (open or repair replays them first)",
                self.journal_files
            )?;
        }
        if self.problems.is_empty() {
            write!(f, "status: ok")
        } else {
            writeln!(f, "problems: {}", self.problems.len())?;
            for p in &self.problems {
                writeln!(f, "  {p}")?;
            }
            write!(f, "status: damaged (run repair)")
        }
    }
}

/// What [`Store::repair`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepairReport {
    /// Value files read.
    pub files_scanned: u64,
    /// Keys the rebuilt map holds.
    pub keys_recovered: u64,
    /// Damaged or stray files removed.
    pub files_dropped: u64,
    /// With `Periodic` options, or any options after a `Periodic` session
    /// that did not close: keys whose value file held no good record,
    /// restored from the newest record of the
    /// key in a spare or stray file of their subdirectory (see
    /// [`VerifyReport::recoverable_keys`]); counted in `keys_recovered`
    /// too.
    pub keys_restored: u64,
    /// One line per problem found and dealt with.
    pub problems: Vec<String>,
}

impl fmt::Display for RepairReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "value files scanned: {}", self.files_scanned)?;
        writeln!(f, "keys recovered: {}", self.keys_recovered)?;
        writeln!(f, "files dropped: {}", self.files_dropped)?;
        writeln!(f, "keys restored from spares: {}", self.keys_restored)?;
        if self.problems.is_empty() {
            write!(f, "problems: none")
        } else {
            write!(f, "problems: {}", self.problems.len())?;
            for p in &self.problems {
                write!(f, "\n  {p}")?;
            }
            Ok(())
        }
    }
}

/// `verify` and `repair`: offline passes over a closed store.
pub(crate) mod offline {
    use super::*;

    /// Whether opening the store with `options` runs `Periodic`'s recovery:
    /// in `Periodic` mode, or in any mode after a `Periodic` session that did
    /// not close (see [`layout::PERIODIC_MARK`]).
    fn recovers_as_periodic(fs: &dyn FileSystem, dir: &Path, options: &Options) -> Result<bool> {
        Ok(matches!(options.durability, Durability::Periodic(_))
            || crate::store::periodic_session_left(fs, dir)?)
    }

    fn live_generation(fs: &dyn FileSystem, dir: &Path) -> Result<u64> {
        let current_path = dir.join(layout::CURRENT_FILE);
        match read_optional(fs, &current_path, 256)? {
            Some(bytes) => layout::parse_current(&bytes).map_err(|what| Error::Corrupt {
                path: current_path,
                what,
            }),
            None => Err(Error::Corrupt {
                path: current_path,
                what: "missing: not a store directory".to_string(),
            }),
        }
    }

    pub(crate) fn verify(dir: &Path, options: &Options) -> Result<VerifyReport> {
        let fs = &*options.file_system;
        let hasher = options.key_hasher;
        let _lock = lock_offline(fs, dir)?;
        let n = live_generation(fs, dir)?;
        let gen_dir = dir.join(layout::gen_name(n));
        let mut report = VerifyReport {
            generation: n,
            ..VerifyReport::default()
        };
        let log_path = gen_dir.join(layout::MAP_LOG);
        let mut map: HashMap<Box<[u8]>, u16> = HashMap::new();
        match read_optional(fs, &log_path, usize::MAX)? {
            None => report
                .problems
                .push(format!("map log {} is missing", log_path.display())),
            Some(bytes) => {
                let (end, _) = maplog::decode_log(&bytes, |rec| match rec {
                    MapRecord::Put { key, idx } => {
                        map.insert(key.0.into(), idx);
                    }
                    MapRecord::Remove { key } => {
                        map.remove(key.0);
                    }
                });
                match end {
                    LogEnd::Clean => {}
                    LogEnd::TornTail { what, .. } => report
                        .problems
                        .push(format!("map log {}: torn tail: {what}", log_path.display())),
                    LogEnd::Damaged { at, what } => report.problems.push(format!(
                        "map log {} damaged at offset {at}: {what}",
                        log_path.display()
                    )),
                }
            }
        }
        let scan = scan_generation(fs, &gen_dir, hasher, false)?;
        report.files_checked = scan.files;
        report.spare_files = scan.spares;
        report.problems.extend(scan.problems);
        let mut found: HashMap<Box<[u8]>, u16> = scan.keys.into_iter().collect();
        let mut leftovers: HashMap<PathBuf, Leftover> = scan
            .leftovers
            .into_iter()
            .map(|l| (l.path.clone(), l))
            .collect();
        let periodic = recovers_as_periodic(fs, dir, options)?;
        for (key, idx) in &map {
            let found_at = found.remove(key);
            let path = gen_dir.join(layout::value_rel_path(hasher(key), *idx));
            let leftover = leftovers.remove(&path);
            if found_at != Some(*idx) && periodic {
                if let Some((from, cas)) = recoverable(fs, &gen_dir, hasher, key, *idx)? {
                    report.recoverable_keys += 1;
                    report.problems.push(format!(
                        "key {} is in the map but its value file {} is not good; \
                         recoverable: its last record (cas {cas}) is in {} (repair restores it)",
                        show_key(key),
                        gen_dir
                            .join(layout::value_rel_path(hasher(key), *idx))
                            .display(),
                        from.display()
                    ));
                    continue;
                }
            }
            match found_at {
                Some(i) if i == *idx => report.keys_ok += 1,
                Some(i) => report.problems.push(format!(
                    "key {} is mapped to file index {idx} but found in index {i}",
                    show_key(key)
                )),
                None => {
                    if let Some(leftover) = &leftover {
                        match hidden_by_leftover(fs, &gen_dir, hasher, key, *idx, leftover)? {
                            None => report.dangling_entries += 1,
                            Some(problem) => report.problems.push(problem),
                        }
                    } else if fs.file_len(&path).map_err(|e| io_err(&path, e))?.is_none() {
                        report.dangling_entries += 1;
                    } else {
                        report.problems.push(format!(
                            "key {} is in the map but its value file {} is not good",
                            show_key(key),
                            path.display()
                        ));
                    }
                }
            }
        }
        report.stray_files = found.len() as u64;
        // Leftovers no map entry points to: strays, if a store could have
        // put them there.
        for leftover in leftovers.into_values() {
            let path = leftover.path.display();
            if layout::subdir_index(leftover.hash) != leftover.sub {
                report
                    .problems
                    .push(format!("value file {path} is not in its subdirectory"));
            } else if matches!(&leftover.tombstone, Some((k, _)) if hasher(k) != leftover.hash) {
                report.problems.push(format!(
                    "value file {path} holds a tombstone of a key that does not hash to its name"
                ));
            } else {
                report.stray_files += 1;
            }
        }
        for name in list_names(fs, dir)? {
            if let Some(g) = layout::parse_gen_name(&name) {
                if g != n {
                    report.old_generations += 1;
                }
            } else if layout::parse_journal_name(&name).is_some() {
                report.journal_files += 1;
            }
        }
        Ok(report)
    }

    pub(crate) fn repair(dir: &Path, options: &Options) -> Result<RepairReport> {
        let fs = &*options.file_system;
        let hasher = options.key_hasher;
        let _lock = lock_offline(fs, dir)?;
        let mut report = RepairReport::default();
        let mut gens: Vec<u64> = list_names(fs, dir)?
            .iter()
            .filter_map(|n| layout::parse_gen_name(n))
            .collect();
        gens.sort_unstable();
        let n = match live_generation(fs, dir) {
            Ok(n) => n,
            Err(e) => {
                let n = gens.last().copied().unwrap_or(0);
                report.problems.push(format!("{e}; using generation {n}"));
                n
            }
        };
        let gen_dir = dir.join(layout::gen_name(n));
        create_generation_dir(fs, &gen_dir, true)?;
        if recovers_as_periodic(fs, dir, options)? {
            restore_from_spares(fs, &gen_dir, hasher, &mut report)?;
        }
        let scan = scan_generation(fs, &gen_dir, hasher, true)?;
        let max_cas_epoch = scan.max_cas >> 40;
        report.files_scanned = scan.files;
        report.keys_recovered = scan.keys.len() as u64;
        report.files_dropped = scan.dropped;
        report.problems.extend(scan.problems);
        let gen = Generation {
            dir: gen_dir.clone(),
            number: n,
            shards: empty_shards(),
            count: AtomicUsize::new(0),
            log: Mutex::new(LogState {
                file: Box::new(NullAppend),
                records: 0,
            }),
            subdir_ready: Box::new([]),
            spares: Box::new([]),
            spare_counter: AtomicU64::new(0),
            expiring_marked: AtomicBool::new(false),
        };
        gen.insert_scanned(scan.keys, hasher);
        write_log_snapshot(fs, &gen, true)?;
        // Cas numbers must stay unique: the boot epoch must be past every
        // cas found (its high bits), whatever EPOCH says or if it is damaged.
        let epoch_path = dir.join(layout::EPOCH_FILE);
        let min_epoch = max_cas_epoch;
        let epoch_ok = matches!(read_u64_file(fs, &epoch_path), Ok(Some(e)) if e >= min_epoch);
        if !epoch_ok {
            report
                .problems
                .push(format!("{} reset to {min_epoch}", epoch_path.display()));
            write_small_file(
                fs,
                dir,
                layout::EPOCH_FILE,
                format!("{min_epoch}\n").as_bytes(),
                true,
            )?;
        }
        write_small_file(
            fs,
            dir,
            layout::CURRENT_FILE,
            layout::current_contents(n).as_bytes(),
            true,
        )?;
        let stop = Stop::default();
        for g in gens.into_iter().filter(|&g| g != n) {
            let path = dir.join(layout::gen_name(g));
            remove_tree(fs, &path, &stop).map_err(|e| io_err(&path, e))?;
            report
                .problems
                .push(format!("removed old generation {}", path.display()));
        }
        Ok(report)
    }

    /// The mapped key `key` (index `idx`), whose value file is `leftover`:
    /// a problem line if the key has a record that opening would not
    /// restore (opening drops the key: see [`Inner::current`]), `None` if
    /// dropping it loses nothing.
    ///
    /// Opening in `Periodic` mode restores the key's newest record in a
    /// spare or another value file of its hash if that is newer than every
    /// tombstone of the key there ([`recoverable`], checked before) and the
    /// file is not the key's own tombstone; opening in another mode does
    /// not. So a record is hidden if it is the newest there ([`find_latest`])
    /// and newer than the key's tombstone in its own file, if that is what
    /// the file holds.
    fn hidden_by_leftover(
        fs: &dyn FileSystem,
        gen_dir: &Path,
        hasher: fn(&[u8]) -> u64,
        key: &[u8],
        idx: u16,
        leftover: &Leftover,
    ) -> Result<Option<String>> {
        let own_tombstone = match &leftover.tombstone {
            Some((k, cas)) if **k == *key => Some(*cas),
            _ => None,
        };
        let Some(Latest {
            path: from,
            item: Some(item),
            ..
        }) = find_latest(fs, gen_dir, hasher(key), idx, key)?
        else {
            return Ok(None);
        };
        if own_tombstone.is_some_and(|t| t >= item.cas) {
            return Ok(None);
        }
        Ok(Some(format!(
            "key {} is in the map but its value file {} holds {}, while a newer record of it \
             (cas {}) is in {}: opening drops the key{}",
            show_key(key),
            leftover.path.display(),
            leftover.describe(key),
            item.cas,
            from.display(),
            if own_tombstone.is_some() {
                ""
            } else {
                " unless in `Periodic` mode (repair with `Periodic` options restores it)"
            }
        )))
    }

    /// `Periodic`: whether the mapped key `key` (index `idx`) has a value
    /// file without a good record of it, and a newer record than every
    /// tombstone in a spare or stray file of its subdirectory (what
    /// [`Inner::recover`] would swap in): that file and the record's cas.
    fn recoverable(
        fs: &dyn FileSystem,
        gen_dir: &Path,
        hasher: fn(&[u8]) -> u64,
        key: &[u8],
        idx: u16,
    ) -> Result<Option<(PathBuf, u64)>> {
        let hash = hasher(key);
        let path = gen_dir.join(layout::value_rel_path(hash, idx));
        if !matches!(
            read_record(fs, &path, key)?,
            FileRead::OtherKey | FileRead::Corrupt(_)
        ) {
            return Ok(None);
        }
        Ok(match find_latest(fs, gen_dir, hash, idx, key)? {
            Some(Latest {
                path,
                item: Some(item),
                ..
            }) => Some((path, item.cas)),
            _ => None,
        })
    }

    /// `Periodic`: restores every mapped key that is recoverable (see
    /// [`recoverable`]) by renaming the file with its last record over its
    /// bad value file, before the map is rebuilt from the value files. The
    /// map log is read as far as it is good; keys it no longer names are
    /// not looked for.
    fn restore_from_spares(
        fs: &dyn FileSystem,
        gen_dir: &Path,
        hasher: fn(&[u8]) -> u64,
        report: &mut RepairReport,
    ) -> Result<()> {
        let log_path = gen_dir.join(layout::MAP_LOG);
        let Some(bytes) = read_optional(fs, &log_path, usize::MAX)? else {
            return Ok(());
        };
        let mut map: HashMap<Box<[u8]>, u16> = HashMap::new();
        maplog::decode_log(&bytes, |rec| match rec {
            MapRecord::Put { key, idx } => {
                map.insert(key.0.into(), idx);
            }
            MapRecord::Remove { key } => {
                map.remove(key.0);
            }
        });
        let mut keys: Vec<_> = map.into_iter().collect();
        keys.sort_unstable();
        for (key, idx) in keys {
            let Some((from, cas)) = recoverable(fs, gen_dir, hasher, &key, idx)? else {
                continue;
            };
            let target = gen_dir.join(layout::value_rel_path(hasher(&key), idx));
            fs.rename(&from, &target).map_err(|e| io_err(&target, e))?;
            let subdir = gen_dir.join(layout::subdir_name(hasher(&key)));
            fs.sync_dir(&subdir).map_err(|e| io_err(&subdir, e))?;
            report.keys_restored += 1;
            report.problems.push(format!(
                "key {}: value file {} held no good record; restored its last record (cas {cas}) from {}",
                show_key(&key),
                target.display(),
                from.display()
            ));
        }
        Ok(())
    }

    fn show_key(key: &[u8]) -> String {
        match std::str::from_utf8(key) {
            Ok(s) if s.chars().all(|c| !c.is_control()) => format!("{s:?}"),
            _ => key.iter().map(|b| format!("{b:02x}")).collect(),
        }
    }
}

/// Locks the existing store directory `dir` for an offline pass (verify or
/// repair): a missing directory is an error, not a new empty store.
fn lock_offline(fs: &dyn FileSystem, dir: &Path) -> Result<DirLock> {
    if fs.file_len(dir).map_err(|e| io_err(dir, e))?.is_none() {
        return Err(io_err(
            dir,
            io::Error::new(io::ErrorKind::NotFound, "no such directory"),
        ));
    }
    lock_dir(fs, dir)
}
