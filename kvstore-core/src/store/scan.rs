//! Operators' views of a store: listing keys in bounded chunks (for dump
//! tools over millions of keys), and the value cache's size and budget.

use std::collections::BinaryHeap;

use super::*;

/// Where a key scan resumes: the map shard, and the last key returned from
/// it (keys of a shard come out in byte order).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanCursor {
    shard: usize,
    after: Option<Box<[u8]>>,
}

impl ScanCursor {
    /// A cursor at the start of the store.
    pub fn start() -> ScanCursor {
        ScanCursor::default()
    }
}

/// Keeps `key` in `best` if it is among the `limit` smallest seen.
fn offer<'k>(best: &mut BinaryHeap<&'k [u8]>, key: &'k [u8], limit: usize) {
    if best.len() < limit {
        best.push(key);
    } else if best.peek().is_some_and(|&top| key < top) {
        best.pop();
        best.push(key);
    }
}

impl Store {
    /// Up to `limit` keys (at least one per call while keys remain) from
    /// `cursor` on, and the cursor of the next chunk (`None` once every key
    /// was listed). Expired items not yet removed are included.
    ///
    /// Memory is bounded by the chunk, whatever the store's size: each call
    /// walks one map shard under its read lock and keeps only the `limit`
    /// smallest keys past the cursor. A key present for the whole scan is
    /// listed exactly once; a key added or removed during the scan may or
    /// may not be. A `clear` during the scan ends it.
    ///
    /// # Errors
    /// [`Error::Io`] if a pending clear is due and fails.
    pub fn scan_keys(
        &self,
        cursor: &ScanCursor,
        limit: usize,
    ) -> Result<(Vec<Vec<u8>>, Option<ScanCursor>)> {
        self.inner.clear_if_due()?;
        let limit = limit.max(1);
        let gen = self.inner.current_gen();
        let mut shard_no = cursor.shard;
        let mut after = cursor.after.clone();
        // Changes staged in the pending table are not in the map yet: they
        // count as the map will hold them (bounded by the table's bound).
        let staged: HashMap<Box<[u8]>, bool> = self.inner.pending.snapshot().into_iter().collect();
        while shard_no < gen.map.shard_count() {
            let in_shard =
                |key: &[u8]| ((self.inner.hasher)(key) as usize) % MAP_SHARDS == shard_no;
            let past = |key: &[u8]| after.as_deref().is_none_or(|a| key > a);
            // A max-heap of the `limit` smallest keys past `after`.
            let mut best: BinaryHeap<&[u8]> = BinaryHeap::with_capacity(limit + 1);
            let shard = gen.map.read_shard(shard_no);
            for key in shard.keys() {
                let key: &[u8] = key;
                if past(key) && staged.get(key).copied().unwrap_or(true) {
                    offer(&mut best, key, limit);
                }
            }
            for (key, put) in &staged {
                let key: &[u8] = key;
                if *put && past(key) && in_shard(key) && !shard.contains_key(key) {
                    offer(&mut best, key, limit);
                }
            }
            let full = best.len() == limit;
            let keys: Vec<Vec<u8>> = best
                .into_sorted_vec()
                .into_iter()
                .map(<[u8]>::to_vec)
                .collect();
            drop(shard);
            if keys.is_empty() {
                shard_no += 1;
                after = None;
                continue;
            }
            let next = if full {
                ScanCursor {
                    shard: shard_no,
                    after: keys.last().map(|k| k.clone().into_boxed_slice()),
                }
            } else {
                ScanCursor {
                    shard: shard_no + 1,
                    after: None,
                }
            };
            let done = next.shard >= gen.map.shard_count();
            return Ok((keys, (!done).then_some(next)));
        }
        Ok((Vec::new(), None))
    }

    /// Bytes of values (with their keys and bookkeeping) held by the value
    /// cache now.
    pub fn cache_bytes(&self) -> usize {
        self.inner.cache.bytes()
    }

    /// The value cache's byte budget (0 when the cache is disabled).
    pub fn cache_budget(&self) -> usize {
        self.inner.cache.budget()
    }

    /// Changes the value cache's byte budget at run time, evicting down to
    /// a smaller one at once. Returns `false`, changing nothing, if the
    /// store was opened with the cache disabled (a budget of 0).
    pub fn set_cache_budget(&self, bytes: usize) -> bool {
        self.inner.cache.set_budget(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_lists_every_key_once_in_bounded_chunks() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let mut want: Vec<Vec<u8>> = (0..1000).map(|i| format!("k{i}").into_bytes()).collect();
        for k in &want {
            store.set(k, b"v").unwrap();
        }
        let mut got = Vec::new();
        let mut cursor = Some(ScanCursor::start());
        let mut calls = 0;
        while let Some(c) = cursor {
            let (keys, next) = store.scan_keys(&c, 7).unwrap();
            assert!(keys.len() <= 7);
            got.extend(keys);
            cursor = next;
            calls += 1;
            assert!(calls < 1000, "scan does not end");
        }
        got.sort();
        want.sort();
        assert_eq!(got, want);
        // An empty store: one call, no keys.
        store.clear().unwrap();
        assert_eq!(
            store.scan_keys(&ScanCursor::start(), 10).unwrap(),
            (Vec::new(), None)
        );
    }

    #[test]
    fn cache_budget_changes_at_run_time() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open_with(tmp.path(), Options::new().cache_bytes(1 << 20)).unwrap();
        assert_eq!(store.cache_budget(), 1 << 20);
        for i in 0..100 {
            store.set(format!("k{i}"), vec![b'x'; 1000]).unwrap();
            store.get(format!("k{i}")).unwrap();
        }
        assert!(store.cache_bytes() > 50_000);
        assert!(store.set_cache_budget(16 * 1024));
        assert!(store.cache_bytes() <= 16 * 1024);
        let off = tempfile::tempdir().unwrap();
        let store = Store::open_with(off.path(), Options::new().cache_bytes(0)).unwrap();
        assert!(!store.set_cache_budget(1 << 20));
        assert_eq!(store.cache_budget(), 0);
    }
}
