//! The bounded value cache: recently used items, within a byte budget.
//!
//! Sharded by key hash; each shard is a hash map plus a FIFO queue with a
//! "referenced" bit per entry (second-chance / CLOCK eviction), so a hit
//! costs one mutex, one lookup and an `Arc` clone.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::item::Expiry;

const SHARDS: usize = 16;
/// Bookkeeping bytes counted per entry besides key and value.
const ENTRY_OVERHEAD: usize = 96;

/// A cached item. Shared by `Arc` so a hit copies no bytes under the lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedItem {
    /// The value.
    pub value: Vec<u8>,
    /// Client flags.
    pub flags: u32,
    /// Expiry.
    pub expiry: Expiry,
    /// Cas number.
    pub cas: u64,
}

struct Entry {
    item: Arc<CachedItem>,
    id: u64,
    referenced: bool,
    size: usize,
}

#[derive(Default)]
struct Shard {
    map: HashMap<Arc<[u8]>, Entry>,
    fifo: VecDeque<(Arc<[u8]>, u64)>,
    bytes: usize,
    next_id: u64,
}

/// The cache. A budget of 0 disables it (every call is a cheap no-op).
pub struct Cache {
    shards: Box<[Mutex<Shard>]>,
    /// Budget of one shard; changed at run time by [`Cache::set_budget`].
    shard_budget: AtomicUsize,
}

impl Cache {
    /// A cache of about `budget` bytes.
    pub fn new(budget: usize) -> Cache {
        let shards = if budget == 0 { 0 } else { SHARDS };
        Cache {
            shards: (0..shards).map(|_| Mutex::new(Shard::default())).collect(),
            shard_budget: AtomicUsize::new(budget / SHARDS),
        }
    }

    fn shard(&self, hash: u64) -> Option<&Mutex<Shard>> {
        if self.shards.is_empty() {
            None
        } else {
            Some(&self.shards[(hash.rotate_left(7) as usize) % SHARDS])
        }
    }

    /// The cached item of `key`, if any.
    pub fn get(&self, hash: u64, key: &[u8]) -> Option<Arc<CachedItem>> {
        let mut shard = self.shard(hash)?.lock();
        let entry = shard.map.get_mut(key)?;
        entry.referenced = true;
        Some(entry.item.clone())
    }

    /// Caches `item` for `key` if `still_valid()` (checked under the shard
    /// lock) holds; a writer that changes the key after `still_valid` was
    /// read updates the cache after us, so a stale read never sticks.
    pub fn insert_if(
        &self,
        hash: u64,
        key: &[u8],
        item: Arc<CachedItem>,
        still_valid: impl FnOnce() -> bool,
    ) {
        let Some(shard) = self.shard(hash) else {
            return;
        };
        let mut shard = shard.lock();
        if still_valid() {
            self.insert_locked(&mut shard, key, item);
        }
    }

    /// Caches `item` for `key`, replacing what was there.
    pub fn insert(&self, hash: u64, key: &[u8], item: Arc<CachedItem>) {
        let Some(shard) = self.shard(hash) else {
            return;
        };
        let mut shard = shard.lock();
        self.insert_locked(&mut shard, key, item);
    }

    fn insert_locked(&self, shard: &mut Shard, key: &[u8], item: Arc<CachedItem>) {
        let size = key.len() + item.value.len() + ENTRY_OVERHEAD;
        if size > self.shard_budget.load(Ordering::Relaxed) / 4 {
            remove_locked(shard, key);
            return;
        }
        let id = shard.next_id;
        shard.next_id += 1;
        if let Some(entry) = shard.map.get_mut(key) {
            let old = entry.size;
            *entry = Entry {
                item,
                id,
                referenced: true,
                size,
            };
            shard.bytes = shard.bytes - old + size;
            // The old queue slot becomes stale; re-queue under the new id.
            let k = shard
                .map
                .get_key_value(key)
                .map(|(k, _)| k.clone())
                .unwrap_or_else(|| Arc::from(key));
            shard.fifo.push_back((k, id));
        } else {
            let k: Arc<[u8]> = Arc::from(key);
            shard.map.insert(
                k.clone(),
                Entry {
                    item,
                    id,
                    referenced: false,
                    size,
                },
            );
            shard.bytes += size;
            shard.fifo.push_back((k, id));
        }
        self.evict(shard);
    }

    fn evict(&self, shard: &mut Shard) {
        let mut steps = shard.fifo.len() * 2 + 2;
        while shard.bytes > self.shard_budget.load(Ordering::Relaxed) && steps > 0 {
            steps -= 1;
            let Some((k, id)) = shard.fifo.pop_front() else {
                break;
            };
            let Some(entry) = shard.map.get_mut(&k) else {
                continue;
            };
            if entry.id != id {
                continue;
            }
            if entry.referenced {
                entry.referenced = false;
                shard.fifo.push_back((k, id));
            } else {
                remove_locked(shard, &k);
            }
        }
        if shard.fifo.len() > shard.map.len() * 2 + 32 {
            let Shard { map, fifo, .. } = shard;
            fifo.retain(|(k, id)| map.get(k).is_some_and(|e| e.id == *id));
        }
    }

    /// Forgets `key`.
    pub fn remove(&self, hash: u64, key: &[u8]) {
        let Some(shard) = self.shard(hash) else {
            return;
        };
        remove_locked(&mut shard.lock(), key);
    }

    /// Forgets everything.
    pub fn clear(&self) {
        for shard in self.shards.iter() {
            let mut shard = shard.lock();
            shard.map.clear();
            shard.fifo.clear();
            shard.bytes = 0;
        }
    }

    /// Whether the cache is enabled (a cache created with a budget of 0
    /// stays disabled).
    pub fn enabled(&self) -> bool {
        !self.shards.is_empty()
    }

    /// The budget, in bytes.
    pub fn budget(&self) -> usize {
        self.shard_budget.load(Ordering::Relaxed) * self.shards.len()
    }

    /// Changes the budget of an enabled cache, evicting down to a smaller
    /// one at once. Returns `false`, changing nothing, if the cache is
    /// disabled.
    pub fn set_budget(&self, budget: usize) -> bool {
        if !self.enabled() {
            return false;
        }
        self.shard_budget.store(budget / SHARDS, Ordering::Relaxed);
        for shard in self.shards.iter() {
            self.evict(&mut shard.lock());
        }
        true
    }

    /// Bytes currently accounted.
    pub fn bytes(&self) -> usize {
        self.shards.iter().map(|s| s.lock().bytes).sum()
    }
}

fn remove_locked(shard: &mut Shard, key: &[u8]) {
    if let Some(entry) = shard.map.remove(key) {
        shard.bytes -= entry.size;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(len: usize, cas: u64) -> Arc<CachedItem> {
        Arc::new(CachedItem {
            value: vec![7; len],
            flags: 0,
            expiry: Expiry::Never,
            cas,
        })
    }

    #[test]
    fn stays_within_budget_and_keeps_hot_keys() {
        let cache = Cache::new(16 * 10_000);
        let hot = b"hot".to_vec();
        let hh = 12345;
        cache.insert(hh, &hot, item(100, 1));
        for i in 0..5_000u64 {
            let key = i.to_le_bytes();
            cache.insert(i.wrapping_mul(0x9e3779b97f4a7c15), &key, item(100, i));
            assert!(cache.get(hh, &hot).is_some(), "hot key evicted at {i}");
        }
        assert!(cache.bytes() <= 16 * 10_000);
    }

    #[test]
    fn disabled_cache_stores_nothing_and_guard_blocks_stale_insert() {
        let off = Cache::new(0);
        off.insert(1, b"k", item(1, 1));
        assert!(off.get(1, b"k").is_none());

        let cache = Cache::new(1 << 20);
        cache.insert_if(1, b"k", item(1, 1), || false);
        assert!(cache.get(1, b"k").is_none());
        cache.insert_if(1, b"k", item(1, 2), || true);
        assert_eq!(cache.get(1, b"k").unwrap().cas, 2);
        cache.insert(1, b"k", item(5, 3));
        assert_eq!(cache.get(1, b"k").unwrap().cas, 3);
        cache.remove(1, b"k");
        assert!(cache.get(1, b"k").is_none());
        assert_eq!(cache.bytes(), 0);
    }
}
