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
    /// write. Harmless (recycled on the next open), not counted as
    /// problems.
    pub stray_files: u64,
    /// Recycled spare files (not values).
    pub spare_files: u64,
    /// The live generation.
    pub generation: u64,
    /// Directories of cleared generations not yet deleted (deletion runs
    /// in the background and resumes on the next open); not problems.
    pub old_generations: u64,
    /// Map entries whose value file is missing (left by a delete
    /// interrupted between its two steps). They read as absent and are
    /// dropped on the next access, losing nothing, so not counted as
    /// problems.
    pub dangling_entries: u64,
    /// Write-ahead journal files of a `Periodic` or `Always` session that
    /// did not close. Verify does not read them; opening the store (in any
    /// mode) or [`Store::repair`] replays them first, which finishes the
    /// writes they hold and may resolve problems listed here (a value file
    /// a crash left torn, a map entry not yet written).
    pub journal_files: u64,
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
    /// One line per problem found and dealt with.
    pub problems: Vec<String>,
}

impl fmt::Display for RepairReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "value files scanned: {}", self.files_scanned)?;
        writeln!(f, "keys recovered: {}", self.keys_recovered)?;
        writeln!(f, "files dropped: {}", self.files_dropped)?;
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
        for (key, idx) in &map {
            let found_at = found.remove(key);
            let path = gen_dir.join(layout::value_rel_path(hasher(key), *idx));
            match found_at {
                Some(i) if i == *idx => report.keys_ok += 1,
                Some(i) => report.problems.push(format!(
                    "key {} is mapped to file index {idx} but found in index {i}",
                    show_key(key)
                )),
                None => {
                    if fs.file_len(&path).map_err(|e| io_err(&path, e))?.is_none() {
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
        let scan = scan_generation(fs, &gen_dir, hasher, true)?;
        let max_cas_epoch = scan.max_cas >> 40;
        report.files_scanned = scan.files;
        report.keys_recovered = scan.keys.len() as u64;
        report.files_dropped = scan.dropped;
        report.problems.extend(scan.problems);
        let map = KeyMap::new(options.file_system.clone(), &gen_dir, true, Vec::new(), 0);
        map.insert_scanned(scan.keys, hasher);
        map.write_snapshot()?;
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
