//! The map of one generation: key -> collision index of its value file,
//! held in memory (sharded by key hash) and in the append-only map log,
//! which is compacted when dead records dominate (see docs/DESIGN.md).
//!
//! [`KeyMap`] owns the shards, the key count and the log; a change is
//! logged first and then made in memory ([`KeyMap::put`],
//! [`KeyMap::remove`]), so the map never holds what the log lacks.

use super::*;

/// Compaction starts when the log has more than this many dead records...
const COMPACT_MIN_DEAD: u64 = 4096;
/// ...and dead records outnumber live ones by this factor.
const COMPACT_DEAD_RATIO: u64 = 2;

/// One shard of the in-memory map: key -> collision index of its file.
type MapShard = RwLock<HashMap<Box<[u8]>, u16>>;

/// The open map log.
struct LogState {
    file: Box<dyn AppendFile>,
    /// Records in the file (live and dead).
    records: u64,
}

/// The log of a map whose log is not open yet: every append fails.
struct NullAppend;

impl AppendFile for NullAppend {
    fn append(&mut self, _data: &[u8]) -> io::Result<()> {
        Err(io::Error::other("map log not open"))
    }
    fn sync_data(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The map of one generation and its log.
pub(super) struct KeyMap {
    fs: Arc<dyn FileSystem>,
    /// The generation directory, which holds the log.
    dir: PathBuf,
    /// Whether a rewritten log is flushed before and after it replaces the
    /// old one (every durability mode but `Never`).
    sync: bool,
    /// [`MAP_SHARDS`] shards; a key lives in shard `hash % MAP_SHARDS`.
    shards: Box<[MapShard]>,
    /// Keys in all shards.
    count: AtomicUsize,
    /// Held while a change is logged and made in memory, so that the log's
    /// order is the map's.
    log: Mutex<LogState>,
}

impl KeyMap {
    /// A map holding `loaded` (shard `i` holds the keys whose hash is `i`
    /// modulo [`MAP_SHARDS`]; missing shards are empty), whose log in `dir`
    /// has `records` records and is not open yet (see [`KeyMap::open_log`]
    /// and [`KeyMap::rewrite_log`]).
    pub(super) fn new(
        fs: Arc<dyn FileSystem>,
        dir: &Path,
        sync: bool,
        loaded: Vec<HashMap<Box<[u8]>, u16>>,
        records: u64,
    ) -> KeyMap {
        let mut loaded = loaded.into_iter();
        let shards: Box<[MapShard]> = (0..MAP_SHARDS)
            .map(|_| RwLock::new(loaded.next().unwrap_or_default()))
            .collect();
        let count = shards.iter().map(|s| s.read().len()).sum();
        KeyMap {
            fs,
            dir: dir.to_path_buf(),
            sync,
            shards,
            count: AtomicUsize::new(count),
            log: Mutex::new(LogState {
                file: Box::new(NullAppend),
                records,
            }),
        }
    }

    fn shard(&self, hash: u64) -> &MapShard {
        &self.shards[(hash as usize) % MAP_SHARDS]
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join(layout::MAP_LOG)
    }

    /// The collision index of `key`'s file, if the key is mapped.
    pub(super) fn lookup(&self, hash: u64, key: &[u8]) -> Option<u16> {
        self.shard(hash).read().get(key).copied()
    }

    /// Number of mapped keys.
    pub(super) fn len(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Number of shards (see [`KeyMap::read_shard`]).
    pub(super) fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// Shard `i` (`i < shard_count()`), read-locked.
    pub(super) fn read_shard(&self, i: usize) -> RwLockReadGuard<'_, HashMap<Box<[u8]>, u16>> {
        self.shards[i].read()
    }

    /// Every shard in turn, each read-locked while the caller holds it.
    pub(super) fn read_shards(
        &self,
    ) -> impl Iterator<Item = RwLockReadGuard<'_, HashMap<Box<[u8]>, u16>>> {
        self.shards.iter().map(|s| s.read())
    }

    /// A copy of every (key, collision index), in no particular order.
    pub(super) fn snapshot(&self) -> Vec<(Box<[u8]>, u16)> {
        let mut out = Vec::with_capacity(self.count.load(Ordering::Relaxed));
        for shard in self.shards.iter() {
            let shard = shard.read();
            out.extend(shard.iter().map(|(k, &i)| (k.clone(), i)));
        }
        out
    }

    /// Puts keys found by scanning the value files into the map and
    /// recounts it (the log is not written: see [`KeyMap::rewrite_log`]).
    pub(super) fn insert_scanned(&self, keys: Vec<(Box<[u8]>, u16)>, hasher: fn(&[u8]) -> u64) {
        for (key, idx) in keys {
            self.shard(hasher(&key)).write().insert(key, idx);
        }
        let count = self.shards.iter().map(|s| s.read().len()).sum();
        self.count.store(count, Ordering::Relaxed);
    }

    /// Logs that `key` is in file `idx`, then maps it.
    pub(super) fn put(&self, hash: u64, key: &[u8], idx: u16) -> Result<()> {
        let mut log = self.log.lock();
        self.append_log(
            &mut log,
            &MapRecord::Put {
                key: Bytes(key),
                idx,
            },
        )?;
        let old = self.shard(hash).write().insert(key.into(), idx);
        if old.is_none() {
            self.count.fetch_add(1, Ordering::Relaxed);
        }
        self.maybe_compact(&mut log);
        Ok(())
    }

    /// Logs the removal of `key`, then unmaps it.
    pub(super) fn remove(&self, hash: u64, key: &[u8]) -> Result<()> {
        let mut log = self.log.lock();
        // Only a logged removal is forgotten: if the append fails, the key
        // and its file stay as they were.
        self.append_log(&mut log, &MapRecord::Remove { key: Bytes(key) })?;
        let old = self.shard(hash).write().remove(key);
        if old.is_some() {
            self.count.fetch_sub(1, Ordering::Relaxed);
        }
        self.maybe_compact(&mut log);
        Ok(())
    }

    fn append_log(&self, log: &mut LogState, record: &MapRecord<'_>) -> Result<()> {
        let mut frame = Vec::with_capacity(64);
        maplog::encode_frame(record, &mut frame);
        log.file
            .append(&frame)
            .map_err(|e| io_err(&self.log_path(), e))?;
        log.records += 1;
        Ok(())
    }

    /// Rewrites the log with only live records when dead ones dominate.
    /// Failure is not fatal: the old log stays valid.
    fn maybe_compact(&self, log: &mut LogState) {
        let live = self.count.load(Ordering::Relaxed) as u64;
        let dead = log.records.saturating_sub(live);
        if dead < COMPACT_MIN_DEAD || dead < live.saturating_mul(COMPACT_DEAD_RATIO) {
            return;
        }
        match self.write_snapshot() {
            Ok((file, records)) => {
                log.file = file;
                log.records = records;
            }
            Err(e) => log::warn!("map log compaction failed: {e}"),
        }
    }

    /// Opens the existing log (the one the map was loaded from) for
    /// appending.
    pub(super) fn open_log(&self) -> Result<()> {
        let path = self.log_path();
        let file = self.fs.open_append(&path).map_err(|e| io_err(&path, e))?;
        self.log.lock().file = file;
        Ok(())
    }

    /// Replaces the log by one holding the live map and opens it for
    /// appending.
    pub(super) fn rewrite_log(&self) -> Result<()> {
        let (file, records) = self.write_snapshot()?;
        *self.log.lock() = LogState { file, records };
        Ok(())
    }

    /// Writes a fresh log with the live map (temp + rename) and opens it
    /// for appending; returns it and its number of records.
    pub(super) fn write_snapshot(&self) -> Result<(Box<dyn AppendFile>, u64)> {
        let fs = &*self.fs;
        let snapshot = self.snapshot();
        let mut buf = Vec::with_capacity(8 + snapshot.len() * 32);
        buf.extend_from_slice(&maplog::MAGIC);
        for (key, idx) in &snapshot {
            maplog::encode_frame(
                &MapRecord::Put {
                    key: Bytes(key),
                    idx: *idx,
                },
                &mut buf,
            );
        }
        let tmp = self.dir.join(layout::MAP_LOG_TMP);
        let path = self.log_path();
        let _ = fs.remove_file(&tmp);
        fs.create_new(&tmp, &buf).map_err(|e| io_err(&tmp, e))?;
        if self.sync {
            fs.sync_file(&tmp).map_err(|e| io_err(&tmp, e))?;
        }
        fs.rename(&tmp, &path).map_err(|e| io_err(&path, e))?;
        if self.sync {
            fs.sync_dir(&self.dir).map_err(|e| io_err(&self.dir, e))?;
        }
        let file = fs.open_append(&path).map_err(|e| io_err(&path, e))?;
        Ok((file, snapshot.len() as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::StdFileSystem;

    fn hash(key: &[u8]) -> u64 {
        crate::layout::fnv1a64(key)
    }

    /// A map with an empty, open log in a fresh directory.
    fn open_map() -> (tempfile::TempDir, KeyMap) {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join(layout::MAP_LOG), maplog::MAGIC).unwrap();
        let map = KeyMap::new(Arc::new(StdFileSystem), tmp.path(), false, Vec::new(), 0);
        map.open_log().unwrap();
        (tmp, map)
    }

    /// The map the log on disk describes, and its number of records.
    fn replay(dir: &Path) -> (HashMap<Vec<u8>, u16>, u64) {
        let bytes = std::fs::read(dir.join(layout::MAP_LOG)).unwrap();
        let mut map = HashMap::new();
        let (end, records) = maplog::decode_log(&bytes, |rec| match rec {
            MapRecord::Put { key, idx } => {
                map.insert(key.0.to_vec(), idx);
            }
            MapRecord::Remove { key } => {
                map.remove(key.0);
            }
        });
        assert!(matches!(end, LogEnd::Clean), "log not clean");
        (map, records)
    }

    fn in_memory(map: &KeyMap) -> HashMap<Vec<u8>, u16> {
        map.snapshot()
            .into_iter()
            .map(|(k, i)| (k.into_vec(), i))
            .collect()
    }

    #[test]
    fn changes_are_logged_and_counted() {
        let (tmp, map) = open_map();
        for (key, idx) in [(&b"a"[..], 0), (b"b", 1), (b"c", 0), (b"a", 2)] {
            map.put(hash(key), key, idx).unwrap();
        }
        map.remove(hash(b"b"), b"b").unwrap();
        map.remove(hash(b"absent"), b"absent").unwrap();
        assert_eq!(map.len(), 2);
        assert_eq!(map.lookup(hash(b"a"), b"a"), Some(2));
        assert_eq!(map.lookup(hash(b"b"), b"b"), None);
        let (logged, records) = replay(tmp.path());
        assert_eq!(logged, in_memory(&map));
        assert_eq!(records, 6);
        let shards: usize = map.read_shards().map(|s| s.len()).sum();
        assert_eq!(shards, 2);
        assert_eq!(map.shard_count(), MAP_SHARDS);
    }

    #[test]
    fn compaction_keeps_the_log_to_the_live_records() {
        let (tmp, map) = open_map();
        map.put(hash(b"live"), b"live", 0).unwrap();
        let rounds = COMPACT_MIN_DEAD * 2;
        for _ in 0..rounds {
            map.put(hash(b"churn"), b"churn", 1).unwrap();
            map.remove(hash(b"churn"), b"churn").unwrap();
        }
        let (logged, records) = replay(tmp.path());
        assert_eq!(logged, in_memory(&map));
        assert_eq!(map.len(), 1);
        assert!(
            records <= COMPACT_MIN_DEAD + 2,
            "{records} records after {} changes: never compacted",
            2 * rounds + 1
        );
        assert!(!tmp.path().join(layout::MAP_LOG_TMP).exists());
    }

    #[test]
    fn a_change_that_cannot_be_logged_is_not_made() {
        let tmp = tempfile::tempdir().unwrap();
        let mut loaded: Vec<HashMap<Box<[u8]>, u16>> =
            (0..MAP_SHARDS).map(|_| HashMap::new()).collect();
        loaded[(hash(b"k") as usize) % MAP_SHARDS].insert((&b"k"[..]).into(), 3);
        // The log is not open: every append fails.
        let map = KeyMap::new(Arc::new(StdFileSystem), tmp.path(), false, loaded, 1);
        assert!(map.put(hash(b"new"), b"new", 0).is_err());
        assert!(map.remove(hash(b"k"), b"k").is_err());
        assert_eq!(map.len(), 1);
        assert_eq!(map.lookup(hash(b"k"), b"k"), Some(3));
        assert_eq!(map.lookup(hash(b"new"), b"new"), None);
    }

    #[test]
    fn a_rewritten_log_holds_the_scanned_keys() {
        let tmp = tempfile::tempdir().unwrap();
        let map = KeyMap::new(Arc::new(StdFileSystem), tmp.path(), true, Vec::new(), 0);
        let keys: Vec<(Box<[u8]>, u16)> = (0..100u16)
            .map(|i| (format!("key{i}").into_bytes().into_boxed_slice(), i % 3))
            .collect();
        map.insert_scanned(keys, hash);
        assert_eq!(map.len(), 100);
        map.rewrite_log().unwrap();
        map.put(hash(b"after"), b"after", 0).unwrap();
        let (logged, records) = replay(tmp.path());
        assert_eq!(records, 101);
        assert_eq!(logged, in_memory(&map));
    }
}
