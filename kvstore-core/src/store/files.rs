//! Small filesystem helpers through the `FileSystem` seam.

use super::*;

/// Creates `dir` and its missing parents (mode 0700) through the seam.
pub(super) fn create_dir_all(fs: &dyn FileSystem, dir: &Path) -> Result<()> {
    match fs.create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                create_dir_all(fs, parent)?;
            }
            match fs.create_dir(dir) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
                Err(e) => Err(io_err(dir, e)),
            }
        }
        Err(e) => Err(io_err(dir, e)),
    }
}

pub(super) fn list_names(fs: &dyn FileSystem, dir: &Path) -> Result<Vec<String>> {
    Ok(fs
        .list_dir(dir)
        .map_err(|e| io_err(dir, e))?
        .into_iter()
        .filter_map(|n: OsString| n.into_string().ok())
        .collect())
}

pub(super) fn read_optional(
    fs: &dyn FileSystem,
    path: &Path,
    max: usize,
) -> Result<Option<Vec<u8>>> {
    match fs.read_at(path, 0, max) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(path, e)),
    }
}

pub(super) fn read_u64_file(fs: &dyn FileSystem, path: &Path) -> Result<Option<u64>> {
    let Some(bytes) = read_optional(fs, path, 64)? else {
        return Ok(None);
    };
    std::str::from_utf8(&bytes)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .map(Some)
        .ok_or_else(|| Error::Corrupt {
            path: path.to_path_buf(),
            what: "not a decimal number".to_string(),
        })
}

/// Creates `path` holding `data` unless something has that name already.
pub(super) fn create_if_missing(fs: &dyn FileSystem, path: &Path, data: &[u8]) -> Result<()> {
    match fs.create_new(path, data) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(io_err(path, e)),
        _ => Ok(()),
    }
}

/// Replaces `dir/name` atomically: temp file, (fsync), rename, (fsync dir).
pub(super) fn write_small_file(
    fs: &dyn FileSystem,
    dir: &Path,
    name: &str,
    data: &[u8],
    sync: bool,
) -> Result<()> {
    let tmp = dir.join(format!("{name}{}", layout::TMP_SUFFIX));
    let path = dir.join(name);
    let _ = fs.remove_file(&tmp);
    fs.create_new(&tmp, data).map_err(|e| io_err(&tmp, e))?;
    if sync {
        fs.sync_file(&tmp).map_err(|e| io_err(&tmp, e))?;
    }
    fs.rename(&tmp, &path).map_err(|e| io_err(&path, e))?;
    if sync {
        fs.sync_dir(dir).map_err(|e| io_err(dir, e))?;
    }
    Ok(())
}

/// Creates an empty generation directory with an empty map log.
/// An existing directory inside the store must be a directory itself, not
/// a symlink (planted or not) that would lead writes out of the store.
pub(super) fn require_real_dir(fs: &dyn FileSystem, path: &Path) -> Result<()> {
    match fs.is_real_dir(path) {
        Ok(true) => Ok(()),
        Ok(false) => Err(io_err(
            path,
            io::Error::new(
                io::ErrorKind::InvalidData,
                "not a directory (a symbolic link?): refusing to write through it",
            ),
        )),
        Err(e) => Err(io_err(path, e)),
    }
}

pub(super) fn create_generation_dir(fs: &dyn FileSystem, dir: &Path, sync: bool) -> Result<()> {
    match fs.create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => require_real_dir(fs, dir)?,
        Err(e) => return Err(io_err(dir, e)),
    }
    let log = dir.join(layout::MAP_LOG);
    create_if_missing(fs, &log, &maplog::MAGIC)?;
    if sync {
        fs.sync_file(&log).map_err(|e| io_err(&log, e))?;
        fs.sync_dir(dir).map_err(|e| io_err(dir, e))?;
        if let Some(parent) = dir.parent() {
            fs.sync_dir(parent).map_err(|e| io_err(parent, e))?;
        }
    }
    Ok(())
}
