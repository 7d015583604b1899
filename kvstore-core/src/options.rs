//! Options for opening a store.

use std::time::Duration;

/// How hard the store works to keep acknowledged writes across a power cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Leave write-back to the OS: acknowledged writes survive a process
    /// crash or `kill -9`, not a power cut.
    Never,
    /// Flush everything to stable storage every interval in the background:
    /// at most that window is lost on a power cut.
    Periodic(Duration),
    /// A write returns only once its data and directory entry are on stable
    /// storage. Concurrent writers share flushes (group commit).
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
}

impl Options {
    /// The defaults: `Durability::Periodic(1 s)`, a 64 MiB cache, 1 MiB
    /// values.
    pub fn new() -> Options {
        Options {
            durability: Durability::default(),
            cache_bytes: DEFAULT_CACHE_BYTES,
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
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
            .finish_non_exhaustive()
    }
}
