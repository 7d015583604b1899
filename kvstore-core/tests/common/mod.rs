//! A file system for tests that forwards every call to the real one
//! ([`StdFileSystem`]) unless a [`Hook`] answers the call first: to fail,
//! count or skip chosen steps without writing out the whole trait.

#![allow(dead_code)]

use std::ffi::OsString;
use std::io;
use std::path::Path;

use kvstore_core::io::{AppendFile, FileSystem, StdFileSystem};

/// A step the store asks the file system for (the ones that return
/// nothing but success or an error).
#[derive(Debug, Clone, Copy)]
pub enum Step<'a> {
    CreateDir(&'a Path),
    RemoveDir(&'a Path),
    CreateNew(&'a Path),
    WriteAt(&'a Path),
    Rename(&'a Path, &'a Path),
    RenameExchange(&'a Path, &'a Path),
    RenameNoreplace(&'a Path, &'a Path),
    RemoveFile(&'a Path),
    SetLen(&'a Path),
    SyncFile(&'a Path),
    SyncFileData(&'a Path),
    SyncDir(&'a Path),
    Syncfs(&'a Path),
}

/// Decides about steps before the real file system sees them.
pub trait Hook: Send + Sync {
    /// `Some(result)` answers the step instead of the real file system;
    /// `None` lets it through.
    fn before(&self, step: Step<'_>) -> Option<io::Result<()>>;
}

/// The real file system behind a [`Hook`].
pub struct HookedFs<H>(pub H);

impl<H: Hook> HookedFs<H> {
    fn run(&self, step: Step<'_>, real: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
        match self.0.before(step) {
            Some(answer) => answer,
            None => real(),
        }
    }
}

impl<H: Hook> FileSystem for HookedFs<H> {
    fn create_dir(&self, p: &Path) -> io::Result<()> {
        self.run(Step::CreateDir(p), || StdFileSystem.create_dir(p))
    }
    fn remove_dir(&self, p: &Path) -> io::Result<()> {
        self.run(Step::RemoveDir(p), || StdFileSystem.remove_dir(p))
    }
    fn list_dir(&self, p: &Path) -> io::Result<Vec<OsString>> {
        StdFileSystem.list_dir(p)
    }
    fn create_new(&self, p: &Path, data: &[u8]) -> io::Result<()> {
        self.run(Step::CreateNew(p), || StdFileSystem.create_new(p, data))
    }
    fn write_at(&self, p: &Path, offset: u64, data: &[u8]) -> io::Result<()> {
        self.run(Step::WriteAt(p), || StdFileSystem.write_at(p, offset, data))
    }
    fn read_at(&self, p: &Path, offset: u64, max_len: usize) -> io::Result<Vec<u8>> {
        StdFileSystem.read_at(p, offset, max_len)
    }
    fn file_len(&self, p: &Path) -> io::Result<Option<u64>> {
        StdFileSystem.file_len(p)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.run(Step::Rename(from, to), || StdFileSystem.rename(from, to))
    }
    fn rename_exchange(&self, a: &Path, b: &Path) -> io::Result<()> {
        self.run(Step::RenameExchange(a, b), || {
            StdFileSystem.rename_exchange(a, b)
        })
    }
    fn rename_noreplace(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.run(Step::RenameNoreplace(from, to), || {
            StdFileSystem.rename_noreplace(from, to)
        })
    }
    fn remove_file(&self, p: &Path) -> io::Result<()> {
        self.run(Step::RemoveFile(p), || StdFileSystem.remove_file(p))
    }
    fn set_len(&self, p: &Path, len: u64) -> io::Result<()> {
        self.run(Step::SetLen(p), || StdFileSystem.set_len(p, len))
    }
    fn sync_file(&self, p: &Path) -> io::Result<()> {
        self.run(Step::SyncFile(p), || StdFileSystem.sync_file(p))
    }
    fn sync_file_data(&self, p: &Path) -> io::Result<()> {
        self.run(Step::SyncFileData(p), || StdFileSystem.sync_file_data(p))
    }
    fn sync_dir(&self, p: &Path) -> io::Result<()> {
        self.run(Step::SyncDir(p), || StdFileSystem.sync_dir(p))
    }
    fn syncfs(&self, p: &Path) -> io::Result<()> {
        self.run(Step::Syncfs(p), || StdFileSystem.syncfs(p))
    }
    fn open_append(&self, p: &Path) -> io::Result<Box<dyn AppendFile>> {
        StdFileSystem.open_append(p)
    }
    fn open_lock_file(&self, p: &Path) -> io::Result<std::fs::File> {
        StdFileSystem.open_lock_file(p)
    }
}
