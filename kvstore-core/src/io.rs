//! The file-system seam: every file-system call the store makes goes through
//! a [`FileSystem`].
//!
//! [`StdFileSystem`] is the real one. Tests (and the reliability suite in
//! other crates) wrap it to record every operation (for power-cut replay) or
//! to inject faults (`ENOSPC`, `EIO`, `EACCES`) at any write, rename, fsync or
//! directory step, and hand the wrapper to the store through
//! [`Options::file_system`](crate::Options::file_system).
//!
//! Contract for implementations:
//! - files are created owner-only (`0600`), directories `0700`;
//! - opens of existing files do not follow a symlink in the last component
//!   (`O_NOFOLLOW`), so a planted symlink cannot lead the store out of its
//!   directory;
//! - [`FileSystem::rename_exchange`] returns an error of kind
//!   [`io::ErrorKind::Unsupported`] when the platform or the file system
//!   cannot exchange atomically; the store then falls back to plain renames.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::Path;

/// An open file that the store appends to (the map log).
pub trait AppendFile: Send {
    /// Appends all of `data` at the end of the file.
    fn append(&mut self, data: &[u8]) -> io::Result<()>;
    /// Makes the appended data durable (`fdatasync`).
    fn sync_data(&mut self) -> io::Result<()>;
}

/// The file-system operations the store uses. All paths are absolute or
/// relative to the current directory, as given by the store.
pub trait FileSystem: Send + Sync {
    /// Creates one directory (mode `0700`). Fails with `AlreadyExists` if it
    /// exists, `NotFound` if its parent does not.
    fn create_dir(&self, path: &Path) -> io::Result<()>;
    /// Removes an empty directory.
    fn remove_dir(&self, path: &Path) -> io::Result<()>;
    /// The names of the entries of a directory, in no particular order
    /// (without `.` and `..`).
    fn list_dir(&self, path: &Path) -> io::Result<Vec<OsString>>;
    /// Creates a new file (mode `0600`; fails with `AlreadyExists` if the
    /// name is taken) and writes `data` into it.
    fn create_new(&self, path: &Path, data: &[u8]) -> io::Result<()>;
    /// Writes `data` at `offset` into an existing file, without truncating
    /// it and without following a symlink.
    fn write_at(&self, path: &Path, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Replaces the content of an existing file with `data` in place (it
    /// is written from the start, then cut to its length), without
    /// following a symlink. Not atomic: a crash can leave a mix of old and
    /// new bytes. The default is [`FileSystem::write_at`] then
    /// [`FileSystem::set_len`].
    fn overwrite(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        self.write_at(path, 0, data)?;
        self.set_len(path, data.len() as u64)
    }
    /// Reads at most `max_len` bytes from `offset` of a file (fewer at its
    /// end), without following a symlink.
    fn read_at(&self, path: &Path, offset: u64, max_len: usize) -> io::Result<Vec<u8>>;
    /// The length of a file, or `None` if nothing has that name. Does not
    /// follow symlinks.
    fn file_len(&self, path: &Path) -> io::Result<Option<u64>>;
    /// Whether `path` is a directory itself, not a symlink to one (nor
    /// anything else); `false` if it does not exist. The default asks
    /// `std::fs::symlink_metadata`.
    fn is_real_dir(&self, path: &Path) -> io::Result<bool> {
        match fs::symlink_metadata(path) {
            Ok(meta) => Ok(meta.file_type().is_dir()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }
    /// Renames `from` to `to`, replacing `to` if it exists.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Atomically exchanges two existing names (`renameat2` with
    /// `RENAME_EXCHANGE`); `Unsupported` where that is not available.
    fn rename_exchange(&self, a: &Path, b: &Path) -> io::Result<()>;
    /// Renames `from` to `to` only if `to` does not exist (`renameat2`
    /// with `RENAME_NOREPLACE`): `AlreadyExists` if it does. The default
    /// returns `Unsupported`, and the store then checks with
    /// [`FileSystem::file_len`] before a plain rename.
    fn rename_noreplace(&self, from: &Path, to: &Path) -> io::Result<()> {
        let _ = (from, to);
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "rename_noreplace not implemented",
        ))
    }
    /// Removes a file.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Shortens (or extends) a file to `len` bytes.
    fn set_len(&self, path: &Path, len: u64) -> io::Result<()>;
    /// `fsync` of a file: its data and metadata are on stable storage.
    fn sync_file(&self, path: &Path) -> io::Result<()>;
    /// `fdatasync` of a file: its data (and the metadata needed to read
    /// it, such as its length) are on stable storage; timestamps may not
    /// be. Used for the `Always` journal, which is rewritten in place so
    /// that this flush need not write the inode. The default calls
    /// [`FileSystem::sync_file`].
    fn sync_file_data(&self, path: &Path) -> io::Result<()> {
        self.sync_file(path)
    }
    /// `fsync` of a directory: its entries are on stable storage.
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
    /// `syncfs` of the file system holding `path`: everything written to it
    /// so far is on stable storage.
    fn syncfs(&self, path: &Path) -> io::Result<()>;
    /// Opens (creating, `0600`) a file for appending.
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn AppendFile>>;
    /// Opens (creating, `0600`) the lock file, read-write. The caller locks
    /// it with fs2.
    fn open_lock_file(&self, path: &Path) -> io::Result<File>;
}

/// The real file system (`std::fs` and `libc`).
#[derive(Debug, Clone, Copy, Default)]
pub struct StdFileSystem;

fn open_existing(path: &Path, write: bool) -> io::Result<File> {
    OpenOptions::new()
        .read(!write)
        .write(write)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

struct StdAppendFile {
    file: File,
}

impl AppendFile for StdAppendFile {
    fn append(&mut self, data: &[u8]) -> io::Result<()> {
        self.file.write_all(data)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }
}

impl FileSystem for StdFileSystem {
    fn create_dir(&self, path: &Path) -> io::Result<()> {
        fs::DirBuilder::new().mode(0o700).create(path)
    }

    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        fs::remove_dir(path)
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<OsString>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(path)? {
            names.push(entry?.file_name());
        }
        Ok(names)
    }

    fn create_new(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)?;
        file.write_all(data)
    }

    fn write_at(&self, path: &Path, offset: u64, data: &[u8]) -> io::Result<()> {
        let file = open_existing(path, true)?;
        file.write_all_at(data, offset)
    }

    fn overwrite(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        let file = open_existing(path, true)?;
        file.write_all_at(data, 0)?;
        file.set_len(data.len() as u64)
    }

    fn read_at(&self, path: &Path, offset: u64, max_len: usize) -> io::Result<Vec<u8>> {
        let mut file = open_existing(path, false)?;
        if offset > 0 {
            file.seek(SeekFrom::Start(offset))?;
        }
        let mut buf = Vec::with_capacity(max_len.min(64 << 10));
        file.take(max_len as u64).read_to_end(&mut buf)?;
        Ok(buf)
    }

    fn file_len(&self, path: &Path) -> io::Result<Option<u64>> {
        match fs::symlink_metadata(path) {
            Ok(meta) => Ok(Some(meta.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn rename_exchange(&self, a: &Path, b: &Path) -> io::Result<()> {
        renameat2(a, b, RENAME_EXCHANGE)
    }

    fn rename_noreplace(&self, from: &Path, to: &Path) -> io::Result<()> {
        renameat2(from, to, RENAME_NOREPLACE)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn set_len(&self, path: &Path, len: u64) -> io::Result<()> {
        open_existing(path, true)?.set_len(len)
    }

    fn sync_file(&self, path: &Path) -> io::Result<()> {
        open_existing(path, false)?.sync_all()
    }

    fn sync_file_data(&self, path: &Path) -> io::Result<()> {
        open_existing(path, false)?.sync_data()
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        File::open(path)?.sync_all()
    }

    fn syncfs(&self, path: &Path) -> io::Result<()> {
        syncfs(path)
    }

    fn open_append(&self, path: &Path) -> io::Result<Box<dyn AppendFile>> {
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)?;
        Ok(Box::new(StdAppendFile { file }))
    }

    fn open_lock_file(&self, path: &Path) -> io::Result<File> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
    }
}

#[cfg(target_os = "linux")]
const RENAME_EXCHANGE: rustix::fs::RenameFlags = rustix::fs::RenameFlags::EXCHANGE;
#[cfg(target_os = "linux")]
const RENAME_NOREPLACE: rustix::fs::RenameFlags = rustix::fs::RenameFlags::NOREPLACE;
#[cfg(not(target_os = "linux"))]
const RENAME_EXCHANGE: u32 = 2;
#[cfg(not(target_os = "linux"))]
const RENAME_NOREPLACE: u32 = 1;

#[cfg(target_os = "linux")]
fn renameat2(a: &Path, b: &Path, flags: rustix::fs::RenameFlags) -> io::Result<()> {
    use rustix::io::Errno;
    match rustix::fs::renameat_with(rustix::fs::CWD, a, rustix::fs::CWD, b, flags) {
        Ok(()) => Ok(()),
        Err(e @ (Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP)) => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("renameat2 flags {flags:?} not supported here: {e}"),
        )),
        Err(e) => Err(e.into()),
    }
}

#[cfg(not(target_os = "linux"))]
fn renameat2(_a: &Path, _b: &Path, _flags: u32) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "renameat2 is only available on linux",
    ))
}

#[cfg(target_os = "linux")]
fn syncfs(path: &Path) -> io::Result<()> {
    let file = File::open(path)?;
    Ok(rustix::fs::syncfs(&file)?)
}

#[cfg(not(target_os = "linux"))]
fn syncfs(path: &Path) -> io::Result<()> {
    // Without syncfs, flush the directory at least; callers sync files too.
    File::open(path)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn exchange_swaps_contents_and_files_are_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let fs = StdFileSystem;
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        fs.create_new(&a, b"first").unwrap();
        fs.create_new(&b, b"second").unwrap();
        fs.rename_exchange(&a, &b).unwrap();
        let err = fs.rename_noreplace(&a, &b).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs.read_at(&a, 0, 100).unwrap(), b"second");
        assert_eq!(fs.read_at(&b, 0, 100).unwrap(), b"first");
        let mode = std::fs::metadata(&a).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let sub = dir.path().join("sub");
        fs.create_dir(&sub).unwrap();
        let mode = std::fs::metadata(&sub).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }

    #[test]
    fn write_at_keeps_the_tail_and_symlinks_are_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let fs = StdFileSystem;
        let a = dir.path().join("a");
        fs.create_new(&a, b"0123456789").unwrap();
        fs.write_at(&a, 0, b"ab").unwrap();
        assert_eq!(fs.read_at(&a, 0, 100).unwrap(), b"ab23456789");
        assert_eq!(fs.read_at(&a, 8, 100).unwrap(), b"89");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&a, &link).unwrap();
        assert!(fs.read_at(&link, 0, 10).is_err());
        assert!(fs.write_at(&link, 0, b"x").is_err());
        assert_eq!(
            fs.file_len(&link).unwrap(),
            Some(a.to_str().unwrap().len() as u64)
        );
        assert_eq!(fs.file_len(&dir.path().join("none")).unwrap(), None);
    }
}
