//! Options for opening a store.

use std::sync::Arc;
use std::time::Duration;

use crate::io::{FileSystem, StdFileSystem};

/// How hard the store works to keep acknowledged writes across a power cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Leave write-back to the OS: acknowledged writes survive a process
    /// crash or `kill -9`, not a power cut.
    Never,
    /// Every change is appended to a write-ahead journal that a background
    /// flusher makes durable every interval; the value files change only
    /// after that, behind the journal. A power cut loses at most the
    /// changes since the last completed flush, never older ones, whatever
    /// mode the store is reopened in. Reads see every acknowledged change
    /// at once (a bounded table of pending changes sits in front of the
    /// files, see [`Options::max_pending_bytes`]).
    Periodic(Duration),
    /// A write returns only once it is on stable storage: its record is
    /// appended to a write-ahead journal and flushed (`fdatasync`) before
    /// the value files change, and replayed onto them on open after a
    /// power cut. Concurrent writers share flushes (group commit).
    Always,
}

impl Default for Durability {
    /// `Periodic(1 s)`, like Redis' `appendfsync everysec`.
    fn default() -> Self {
        Durability::Periodic(Duration::from_secs(1))
    }
}

/// Default byte budget of the value cache: 64 MiB.
pub const DEFAULT_CACHE_BYTES: usize = 64 << 20;
/// Default largest value: 1 MiB, as memcached.
pub const DEFAULT_MAX_VALUE_BYTES: usize = 1 << 20;

/// Options for [`Store::open_with`](crate::Store::open_with), built with
/// chained setters.
#[derive(Clone)]
pub struct Options {
    pub(crate) durability: Durability,
    pub(crate) cache_bytes: usize,
    pub(crate) max_value_bytes: usize,
    pub(crate) file_system: Arc<dyn FileSystem>,
    pub(crate) key_hasher: fn(&[u8]) -> u64,
    pub(crate) checkpoint_interval: Duration,
    pub(crate) max_pending_bytes: usize,
}

/// Default bound of the pending table (`Durability::Periodic` and `Always`): 64 MiB.
pub const DEFAULT_MAX_PENDING_BYTES: usize = 64 << 20;

/// Default interval between journal checkpoints.
pub const DEFAULT_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(30);

impl Options {
    /// The defaults: `Durability::Periodic(1 s)`, a 64 MiB cache, 1 MiB
    /// values.
    pub fn new() -> Options {
        Options {
            durability: Durability::default(),
            cache_bytes: DEFAULT_CACHE_BYTES,
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
            file_system: Arc::new(StdFileSystem),
            key_hasher: crate::layout::fnv1a64,
            checkpoint_interval: DEFAULT_CHECKPOINT_INTERVAL,
            max_pending_bytes: DEFAULT_MAX_PENDING_BYTES,
        }
    }

    /// What a write promises (default `Periodic(1 s)`).
    pub fn durability(mut self, durability: Durability) -> Options {
        self.durability = durability;
        self
    }

    /// Byte budget of the in-memory value cache; 0 disables it (default
    /// 64 MiB).
    pub fn cache_bytes(mut self, bytes: usize) -> Options {
        self.cache_bytes = bytes;
        self
    }

    /// The largest value accepted (default 1 MiB).
    pub fn max_value_bytes(mut self, bytes: usize) -> Options {
        self.max_value_bytes = bytes;
        self
    }

    /// The file system the store works through (default
    /// [`StdFileSystem`]). Tests wrap the real one to record operations or
    /// inject faults; see [`crate::io`].
    pub fn file_system(mut self, file_system: Arc<dyn FileSystem>) -> Options {
        self.file_system = file_system;
        self
    }

    /// `Durability::Periodic` and `Always`: how often the write-ahead
    /// journal is checkpointed when there were writes (everything flushed with
    /// `syncfs`, then the journal file removed), which bounds the replay
    /// after a power cut (default 30 s; sooner when the journal passes
    /// 128 MiB). Between checkpoints a value file rewritten many times is
    /// written back once.
    pub fn checkpoint_interval(mut self, every: Duration) -> Options {
        self.checkpoint_interval = every.max(Duration::from_millis(1));
        self
    }

    /// `Durability::Periodic` and `Always`: the most bytes of acknowledged changes
    /// (keys, values and about 128 bytes of bookkeeping each) held in
    /// memory until the flusher has applied them to the value files
    /// (default 64 MiB). When the table is full, writers wait for the
    /// flusher, which is asked to run at once: memory stays bounded under
    /// any write rate. [`Store::pending_bytes`](crate::Store::pending_bytes)
    /// reads the current figure.
    pub fn max_pending_bytes(mut self, bytes: usize) -> Options {
        self.max_pending_bytes = bytes;
        self
    }

    /// **Testing hook** (cargo feature `test-support`, for this crate's
    /// own tests): the function that maps a key to the 64-bit hash
    /// naming its file (default FNV-1a 64). A deliberately weak hasher
    /// forces hash collisions. A store must always be opened with the same
    /// hasher (the files are named by it); [`Store::verify`](crate::Store::verify)
    /// and [`Store::repair`](crate::Store::repair) assume the default, use
    /// [`Store::verify_with`](crate::Store::verify_with) and
    /// [`Store::repair_with`](crate::Store::repair_with) otherwise.
    #[cfg(feature = "test-support")]
    pub fn key_hasher(mut self, hasher: fn(&[u8]) -> u64) -> Options {
        self.key_hasher = hasher;
        self
    }
}

impl Default for Options {
    fn default() -> Self {
        Options::new()
    }
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("durability", &self.durability)
            .field("cache_bytes", &self.cache_bytes)
            .field("max_value_bytes", &self.max_value_bytes)
            .field("checkpoint_interval", &self.checkpoint_interval)
            .field("max_pending_bytes", &self.max_pending_bytes)
            .finish_non_exhaustive()
    }
}
