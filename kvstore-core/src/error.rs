//! The one error type of the store.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong in a [`Store`](crate::Store) call.
///
/// Conditional outcomes (a missing key, a failed `add`, a cas mismatch) are
/// not errors: they are values of the outcome enums in [`crate::item`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Another process (or another `Store` in this process) has the
    /// directory open.
    #[error("cannot lock store directory {}: held by another process{}", dir.display(), pid.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    Locked {
        /// The store directory.
        dir: PathBuf,
        /// The holder's process id, when the lock file names one.
        pid: Option<u32>,
    },
    /// The key is longer than [`MAX_KEY_BYTES`](crate::MAX_KEY_BYTES).
    #[error("key of {len} bytes is longer than the limit of {max} bytes")]
    KeyTooLong {
        /// Length of the key given.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The key is not acceptable (for example, empty).
    #[error("invalid key: {reason}")]
    InvalidKey {
        /// Why the key was refused.
        reason: &'static str,
    },
    /// The value is larger than the store's `max_value_bytes`.
    #[error("value of {len} bytes is larger than the limit of {max} bytes")]
    ValueTooLarge {
        /// Length of the value given (or that would result).
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A file-system call failed.
    #[error("i/o error on {}: {source}", path.display())]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Data on disk is damaged.
    #[error("corrupt data in {}: {what}", path.display())]
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// What is wrong with it.
        what: String,
    },
    /// A flush to stable storage failed earlier; the store refuses writes
    /// until it is reopened, because the kernel may have dropped the data.
    #[error("store is read-only until reopened: {reason}")]
    ReadOnly {
        /// The failure that made it read-only.
        reason: String,
    },
}

/// `Result` with [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
