//! The exclusive directory lock (fs2 advisory lock on `<dir>/LOCK`). Every
//! lock call of the crate is in this file.
//!
//! `flock` locks belong to an open file description, so a second `Store` in
//! the same process is refused just like another process. Not for network
//! file systems.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::io::FileSystem;
use crate::layout::LOCK_FILE;
use crate::retry::retry_for;

/// How long a contended lock is retried before `Locked` is returned.
///
/// A `flock` lock lives as long as any descriptor of its open file
/// description: a child process forked by another thread (between `fork`
/// and `exec`, before close-on-exec applies) briefly holds the lock of a
/// store that was just dropped. Retrying for a moment turns that race into
/// a short wait instead of a spurious `Locked`.
const CONTENTION_GRACE: Duration = Duration::from_millis(250);

/// A held lock; released when dropped (the file is closed).
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

/// Locks `dir` exclusively, writing our pid into the lock file.
///
/// # Errors
/// [`Error::Locked`] (with the holder's pid when the file names one) if
/// another process or `Store` holds it; [`Error::Io`] if the file cannot be
/// opened.
pub fn lock_dir(fs: &dyn FileSystem, dir: &Path) -> Result<DirLock> {
    let path = dir.join(LOCK_FILE);
    let io_err = |source: io::Error| Error::Io {
        path: path.clone(),
        source,
    };
    let mut file = fs.open_lock_file(&path).map_err(io_err)?;
    let locked = retry_for(
        CONTENTION_GRACE,
        CONTENTION_GRACE / 10,
        is_contention,
        || fs2::FileExt::try_lock_exclusive(&file),
    );
    match locked {
        Ok(()) => {}
        Err(e) if is_contention(&e) => {
            return Err(Error::Locked {
                dir: dir.to_path_buf(),
                pid: read_pid(&mut file),
            })
        }
        Err(e) => return Err(io_err(e)),
    }
    // Best effort: the pid only improves the error message of others.
    let pid = format!("{}\n", std::process::id());
    let _ = file
        .set_len(0)
        .and_then(|()| file.seek(SeekFrom::Start(0)))
        .and_then(|_| file.write_all(pid.as_bytes()));
    Ok(DirLock { _file: file })
}

fn is_contention(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
        || e.raw_os_error() == fs2::lock_contended_error().raw_os_error()
}

fn read_pid(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    file.take(32).read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}
