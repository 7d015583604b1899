//! Items with memcached metadata, and the outcomes of conditional operations.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// When an item expires. Stored as an absolute Unix time, so a restart does
/// not extend it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Expiry {
    /// The item never expires.
    #[default]
    Never,
    /// The item expires at this Unix time, in seconds. A time in the past
    /// means the item is already expired.
    At(u64),
}

impl Expiry {
    /// An expiry `delay` from now.
    pub fn after(delay: Duration) -> Expiry {
        Expiry::At(unix_now().saturating_add(delay.as_secs()))
    }

    /// Whether an item with this expiry is expired at Unix time `now`.
    pub fn is_expired_at(self, now: u64) -> bool {
        match self {
            Expiry::Never => false,
            Expiry::At(t) => t <= now,
        }
    }
}

/// The current Unix time in seconds (0 if the clock is before 1970).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Metadata given with a value: memcached's client flags and the expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ItemMeta {
    /// Opaque 32-bit client flags, returned as given.
    pub flags: u32,
    /// When the item expires.
    pub expiry: Expiry,
}

/// A stored value with its metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// The value bytes.
    pub value: Vec<u8>,
    /// Opaque client flags.
    pub flags: u32,
    /// When the item expires.
    pub expiry: Expiry,
    /// A number that changes on every modification of the key, unique over
    /// the store's life (also across restarts).
    pub cas: u64,
}

/// Outcome of `add`, `replace`, `append` and `prepend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOutcome {
    /// The value was stored; `cas` is the item's new cas number.
    Stored {
        /// The new cas number.
        cas: u64,
    },
    /// The condition did not hold (add on an existing key,
    /// replace/append/prepend on a missing one); nothing changed.
    NotStored,
}

/// Outcome of `compare_and_swap`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CasOutcome {
    /// The cas matched and the value was stored.
    Stored {
        /// The new cas number.
        cas: u64,
    },
    /// The item was modified since the cas was read; nothing changed.
    Exists,
    /// The key does not exist (or has expired).
    NotFound,
}

/// Outcome of `incr` and `decr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CounterOutcome {
    /// The new value of the counter.
    Value(u64),
    /// The key does not exist (or has expired).
    NotFound,
    /// The value is not a decimal number that fits in 64 bits.
    NotNumeric,
}

/// Outcome of `touch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TouchOutcome {
    /// The expiry was updated.
    Touched,
    /// The key does not exist (or has expired).
    NotFound,
}
