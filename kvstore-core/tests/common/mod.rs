//! A file system for tests that forwards every call to the real one
//! ([`StdFileSystem`]) unless a [`Hook`] answers the call first: to fail,
//! count or skip chosen steps without writing out the whole trait.
//!
//! The calls that only read (`read_at`, `file_len`, `is_real_dir`) and the
//! lock file are not hooked. The map log's append handle is: its appends
//! and flushes reach the hook as [`Step::Append`] and [`Step::SyncAppend`].

#![allow(dead_code)]

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use kvstore_core::io::{AppendFile, FileSystem, StdFileSystem};

/// A step the store asks the file system for.
///
/// [`Step::ListDir`] and [`Step::OpenAppend`] return something the hook
/// cannot make up: only an error answers them, and `Some(Ok(()))` lets the
/// real call through as `None` does. Every other step returns nothing but
/// success or an error, so `Some(Ok(()))` skips it.
#[derive(Debug, Clone, Copy)]
pub enum Step<'a> {
    CreateDir(&'a Path),
    RemoveDir(&'a Path),
    ListDir(&'a Path),
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
    OpenAppend(&'a Path),
    /// [`AppendFile::append`] on the file opened at that path.
    Append(&'a Path),
    /// [`AppendFile::sync_data`] on the file opened at that path.
    SyncAppend(&'a Path),
}

/// Decides about steps before the real file system sees them.
pub trait Hook: Send + Sync + 'static {
    /// `Some(result)` answers the step instead of the real file system;
    /// `None` lets it through.
    fn before(&self, step: Step<'_>) -> Option<io::Result<()>>;

    /// How many of the `len` bytes of an append that [`Hook::before`]
    /// failed still reach the file before the error, as a short write on a
    /// full disk leaves them. None by default.
    fn torn_append_len(&self, len: usize) -> usize {
        let _ = len;
        0
    }
}

/// The real file system behind a [`Hook`] (shared with the append handles
/// it opens; `fs.0` reaches the hook).
pub struct HookedFs<H>(pub Arc<H>);

impl<H: Hook> HookedFs<H> {
    /// The real file system behind `hook`.
    pub fn new(hook: H) -> Self {
        HookedFs(Arc::new(hook))
    }
}

fn run<H: Hook>(hook: &H, step: Step<'_>, real: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
    match hook.before(step) {
        Some(answer) => answer,
        None => real(),
    }
}

/// For the steps only an error can answer (see [`Step`]).
fn fail_only<H: Hook>(hook: &H, step: Step<'_>) -> io::Result<()> {
    match hook.before(step) {
        Some(Err(e)) => Err(e),
        Some(Ok(())) | None => Ok(()),
    }
}

struct HookedAppend<H> {
    hook: Arc<H>,
    path: PathBuf,
    inner: Box<dyn AppendFile>,
}

impl<H: Hook> AppendFile for HookedAppend<H> {
    fn append(&mut self, data: &[u8]) -> io::Result<()> {
        match self.hook.before(Step::Append(&self.path)) {
            None => self.inner.append(data),
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => {
                let torn = self.hook.torn_append_len(data.len()).min(data.len());
                if torn > 0 {
                    let _ = self.inner.append(&data[..torn]);
                }
                Err(e)
            }
        }
    }
    fn sync_data(&mut self) -> io::Result<()> {
        let inner = &mut self.inner;
        run(&*self.hook, Step::SyncAppend(&self.path), || {
            inner.sync_data()
        })
    }
}

impl<H: Hook> FileSystem for HookedFs<H> {
    fn create_dir(&self, p: &Path) -> io::Result<()> {
        run(&*self.0, Step::CreateDir(p), || StdFileSystem.create_dir(p))
    }
    fn remove_dir(&self, p: &Path) -> io::Result<()> {
        run(&*self.0, Step::RemoveDir(p), || StdFileSystem.remove_dir(p))
    }
    fn list_dir(&self, p: &Path) -> io::Result<Vec<OsString>> {
        fail_only(&*self.0, Step::ListDir(p))?;
        StdFileSystem.list_dir(p)
    }
    fn create_new(&self, p: &Path, data: &[u8]) -> io::Result<()> {
        run(&*self.0, Step::CreateNew(p), || {
            StdFileSystem.create_new(p, data)
        })
    }
    fn write_at(&self, p: &Path, offset: u64, data: &[u8]) -> io::Result<()> {
        run(&*self.0, Step::WriteAt(p), || {
            StdFileSystem.write_at(p, offset, data)
        })
    }
    fn read_at(&self, p: &Path, offset: u64, max_len: usize) -> io::Result<Vec<u8>> {
        StdFileSystem.read_at(p, offset, max_len)
    }
    fn file_len(&self, p: &Path) -> io::Result<Option<u64>> {
        StdFileSystem.file_len(p)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        run(&*self.0, Step::Rename(from, to), || {
            StdFileSystem.rename(from, to)
        })
    }
    fn rename_exchange(&self, a: &Path, b: &Path) -> io::Result<()> {
        run(&*self.0, Step::RenameExchange(a, b), || {
            StdFileSystem.rename_exchange(a, b)
        })
    }
    fn rename_noreplace(&self, from: &Path, to: &Path) -> io::Result<()> {
        run(&*self.0, Step::RenameNoreplace(from, to), || {
            StdFileSystem.rename_noreplace(from, to)
        })
    }
    fn remove_file(&self, p: &Path) -> io::Result<()> {
        run(&*self.0, Step::RemoveFile(p), || {
            StdFileSystem.remove_file(p)
        })
    }
    fn set_len(&self, p: &Path, len: u64) -> io::Result<()> {
        run(&*self.0, Step::SetLen(p), || StdFileSystem.set_len(p, len))
    }
    fn sync_file(&self, p: &Path) -> io::Result<()> {
        run(&*self.0, Step::SyncFile(p), || StdFileSystem.sync_file(p))
    }
    fn sync_file_data(&self, p: &Path) -> io::Result<()> {
        run(&*self.0, Step::SyncFileData(p), || {
            StdFileSystem.sync_file_data(p)
        })
    }
    fn sync_dir(&self, p: &Path) -> io::Result<()> {
        run(&*self.0, Step::SyncDir(p), || StdFileSystem.sync_dir(p))
    }
    fn syncfs(&self, p: &Path) -> io::Result<()> {
        run(&*self.0, Step::Syncfs(p), || StdFileSystem.syncfs(p))
    }
    fn open_append(&self, p: &Path) -> io::Result<Box<dyn AppendFile>> {
        fail_only(&*self.0, Step::OpenAppend(p))?;
        Ok(Box::new(HookedAppend {
            hook: self.0.clone(),
            path: p.to_path_buf(),
            inner: StdFileSystem.open_append(p)?,
        }))
    }
    fn open_lock_file(&self, p: &Path) -> io::Result<std::fs::File> {
        StdFileSystem.open_lock_file(p)
    }
}

/// A hook that holds every journal `fdatasync` while closed, to see what
/// waits for it, and counts the journal flushes that finished.
#[derive(Default)]
pub struct JournalGate {
    closed: Mutex<bool>,
    opened: Condvar,
    flushes: AtomicUsize,
}

/// The gate closed until this is dropped: also when a test fails, so that
/// the store can still flush and close.
pub struct GateClosed(Arc<JournalGate>);

impl Drop for GateClosed {
    fn drop(&mut self) {
        self.0.set_closed(false);
    }
}

impl JournalGate {
    /// Closes the gate (journal flushes wait) until the guard is dropped.
    pub fn close(gate: &Arc<JournalGate>) -> GateClosed {
        gate.set_closed(true);
        GateClosed(gate.clone())
    }

    fn set_closed(&self, closed: bool) {
        *self.closed.lock().unwrap() = closed;
        self.opened.notify_all();
    }

    /// Journal flushes finished so far.
    pub fn flushes(&self) -> usize {
        self.flushes.load(Ordering::SeqCst)
    }
}

impl Hook for JournalGate {
    fn before(&self, step: Step<'_>) -> Option<io::Result<()>> {
        if let Step::SyncFileData(path) = step {
            let journal = path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("journal."));
            if journal {
                let mut closed = self.closed.lock().unwrap();
                while *closed {
                    closed = self.opened.wait(closed).unwrap();
                }
                self.flushes.fetch_add(1, Ordering::SeqCst);
            }
        }
        None
    }
}
