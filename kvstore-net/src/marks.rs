//! The per-key state of the meta commands that the store does not keep:
//! whether an item was read, when it was last accessed, whether it is
//! stale, and whether a client already won its recache (docs/PROTOCOL.md,
//! "Per-item meta state").
//!
//! Held in memory, in a table sharded by key hash. Access marks are
//! bounded: past [`MAX_MARKS`] entries, an entry that carries no stale or
//! win mark makes room (its key then reads as "not fetched", last accessed
//! at the server's start). Stale and win marks are never dropped while
//! their key lives: losing one would serve invalidated data as fresh, or
//! let a second client win a recache.
//!
//! The table stays off, and costs reads and writes one relaxed atomic
//! load, until the first meta command: a server that only speaks the text
//! or seed dialects keeps its throughput. Reads before that point are not
//! recorded (their keys read as not fetched).
//!
//! Writers hold the executor's lock of the key when they change its marks,
//! so a mark and the item it describes change together. A plain read
//! (`get`) records its access without that lock, to keep reads lock-free:
//! racing a write, its access may land on the value just written.

use parking_lot::{Mutex, MutexGuard};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Instant;

/// Shards of the table.
const SHARDS: usize = 64;
/// Entries kept before access-only entries are dropped to make room.
pub(crate) const MAX_MARKS: usize = 1 << 18;

/// The marks of one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Mark {
    /// Seconds after the server's start of the last access (0 when not
    /// known).
    pub last_access: u32,
    /// Read since it was last written.
    pub fetched: bool,
    /// Marked stale by `md I` or `ms I`.
    pub stale: bool,
    /// A client already won the right to recache it.
    pub won: bool,
}

impl Mark {
    fn is_access_only(&self) -> bool {
        !self.stale && !self.won
    }
}

/// The table of marks.
pub(crate) struct Marks {
    started: Instant,
    /// Set by the first meta command; until then nothing is recorded.
    active: AtomicBool,
    shards: Vec<Mutex<HashMap<Box<[u8]>, Mark>>>,
}

impl Marks {
    /// An empty table; times count from now.
    pub(crate) fn new() -> Marks {
        Marks {
            started: Instant::now(),
            active: AtomicBool::new(false),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    /// Starts recording (called by every meta command, which are the only
    /// readers of the marks).
    pub(crate) fn activate(&self) {
        if !self.active.load(Relaxed) {
            self.active.store(true, Relaxed);
        }
    }

    fn is_active(&self) -> bool {
        self.active.load(Relaxed)
    }

    /// Seconds since the server started.
    pub(crate) fn now(&self) -> u32 {
        u32::try_from(self.started.elapsed().as_secs()).unwrap_or(u32::MAX)
    }

    /// Seconds since the access `mark` records (since the server's start
    /// when it records none).
    pub(crate) fn idle_secs(&self, mark: &Mark) -> u64 {
        u64::from(self.now().saturating_sub(mark.last_access))
    }

    fn shard(&self, key: &[u8]) -> MutexGuard<'_, HashMap<Box<[u8]>, Mark>> {
        let h = crate::exec::key_hash(key);
        self.shards[(h as usize) % SHARDS].lock()
    }

    /// The marks of `key` (all clear if it has none).
    pub(crate) fn get(&self, key: &[u8]) -> Mark {
        self.shard(key).get(key).copied().unwrap_or_default()
    }

    /// Sets the marks of `key`.
    pub(crate) fn set(&self, key: &[u8], mark: Mark) {
        let mut shard = self.shard(key);
        if let Some(m) = shard.get_mut(key) {
            *m = mark;
            return;
        }
        if shard.len() >= MAX_MARKS / SHARDS {
            let victim = shard
                .iter()
                .find(|(_, m)| m.is_access_only())
                .map(|(k, _)| k.clone());
            match victim {
                Some(v) => {
                    shard.remove(&v);
                }
                // Every entry holds a mark that must not be lost: keep
                // this one only if it must not be lost either.
                None if mark.is_access_only() => return,
                None => {}
            }
        }
        shard.insert(key.into(), mark);
    }

    /// Records a read of `key` (a hit that counts as an access).
    pub(crate) fn read(&self, key: &[u8]) {
        if !self.is_active() {
            return;
        }
        let now = self.now();
        let mut shard = self.shard(key);
        if let Some(m) = shard.get_mut(key) {
            m.fetched = true;
            m.last_access = now;
            return;
        }
        drop(shard);
        self.set(
            key,
            Mark {
                last_access: now,
                fetched: true,
                ..Mark::default()
            },
        );
    }

    /// Records a new value for `key`: not read yet, not stale, no winner.
    pub(crate) fn written(&self, key: &[u8]) {
        if !self.is_active() {
            return;
        }
        self.set(
            key,
            Mark {
                last_access: self.now(),
                ..Mark::default()
            },
        );
    }

    /// Forgets `key` (deleted, or found absent).
    pub(crate) fn remove(&self, key: &[u8]) {
        if !self.is_active() {
            return;
        }
        self.shard(key).remove(key);
    }

    /// Forgets every key (`flush_all`).
    pub(crate) fn clear(&self) {
        for shard in &self.shards {
            shard.lock().clear();
        }
    }

    /// How many keys have marks.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_follow_reads_and_writes() {
        let m = Marks::new();
        // Off until a meta command: nothing is recorded.
        m.read(b"k");
        assert_eq!(m.len(), 0);
        m.activate();
        assert_eq!(m.get(b"k"), Mark::default());
        m.written(b"k");
        assert!(!m.get(b"k").fetched);
        m.read(b"k");
        assert!(m.get(b"k").fetched);
        m.set(
            b"k",
            Mark {
                stale: true,
                won: true,
                ..m.get(b"k")
            },
        );
        m.written(b"k");
        assert!(!m.get(b"k").stale);
        assert!(!m.get(b"k").won);
        m.read(b"x");
        assert!(m.get(b"x").fetched);
        m.remove(b"x");
        assert_eq!(m.get(b"x"), Mark::default());
        m.clear();
        assert_eq!(m.len(), 0);
    }

    #[test]
    fn access_marks_are_bounded_but_stale_marks_are_kept() {
        let m = Marks::new();
        m.activate();
        let stale = Mark {
            stale: true,
            ..Mark::default()
        };
        for i in 0..1000u32 {
            m.set(&i.to_le_bytes(), stale);
        }
        for i in 0..(MAX_MARKS as u32 + 5000) {
            m.read(format!("k{i}").as_bytes());
        }
        assert!(m.len() <= MAX_MARKS + 1000);
        for i in 0..1000u32 {
            assert!(m.get(&i.to_le_bytes()).stale);
        }
    }
}
