//! The map log: appending puts and removes, snapshots and compaction.

use super::*;

pub(super) struct LogState {
    pub(super) file: Box<dyn AppendFile>,
    /// Records in the file (live and dead).
    pub(super) records: u64,
}

impl Inner {
    pub(super) fn append_log(
        &self,
        gen: &Generation,
        log: &mut LogState,
        record: &MapRecord<'_>,
    ) -> Result<()> {
        let mut frame = Vec::with_capacity(64);
        maplog::encode_frame(record, &mut frame);
        log.file
            .append(&frame)
            .map_err(|e| io_err(&gen.log_path(), e))?;
        log.records += 1;
        Ok(())
    }

    pub(super) fn log_put(&self, gen: &Generation, hash: u64, key: &[u8], idx: u16) -> Result<()> {
        let mut log = gen.log.lock();
        self.append_log(
            gen,
            &mut log,
            &MapRecord::Put {
                key: Bytes(key),
                idx,
            },
        )?;
        let old = gen.shard(hash).write().insert(key.into(), idx);
        if old.is_none() {
            gen.count.fetch_add(1, Ordering::Relaxed);
        }
        self.maybe_compact(gen, &mut log);
        Ok(())
    }

    pub(super) fn log_remove(&self, gen: &Generation, hash: u64, key: &[u8]) -> Result<()> {
        let mut log = gen.log.lock();
        // Only a logged removal is forgotten: if the append fails, the key
        // and its file stay as they were.
        self.append_log(gen, &mut log, &MapRecord::Remove { key: Bytes(key) })?;
        let old = gen.shard(hash).write().remove(key);
        if old.is_some() {
            gen.count.fetch_sub(1, Ordering::Relaxed);
        }
        self.maybe_compact(gen, &mut log);
        Ok(())
    }

    /// Rewrites the log with only live records when dead ones dominate.
    /// Failure is not fatal: the old log stays valid.
    pub(super) fn maybe_compact(&self, gen: &Generation, log: &mut LogState) {
        let live = gen.count.load(Ordering::Relaxed) as u64;
        let dead = log.records.saturating_sub(live);
        if dead < COMPACT_MIN_DEAD || dead < live.saturating_mul(COMPACT_DEAD_RATIO) {
            return;
        }
        let sync = self.durability != Durability::Never;
        match write_log_snapshot(&*self.fs, gen, sync) {
            Ok((file, records)) => {
                log.file = file;
                log.records = records;
            }
            Err(e) => log::warn!("map log compaction failed: {e}"),
        }
    }
}

pub(super) struct NullAppend;

impl AppendFile for NullAppend {
    fn append(&mut self, _data: &[u8]) -> io::Result<()> {
        Err(io::Error::other("map log not open"))
    }
    fn sync_data(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Writes a fresh log with the live map of `gen` (temp + rename) and opens
/// it for appending.
pub(super) fn write_log_snapshot(
    fs: &dyn FileSystem,
    gen: &Generation,
    sync: bool,
) -> Result<(Box<dyn AppendFile>, u64)> {
    let snapshot = gen.map_snapshot();
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
    let tmp = gen.dir.join(layout::MAP_LOG_TMP);
    let path = gen.log_path();
    let _ = fs.remove_file(&tmp);
    fs.create_new(&tmp, &buf).map_err(|e| io_err(&tmp, e))?;
    if sync {
        fs.sync_file(&tmp).map_err(|e| io_err(&tmp, e))?;
    }
    fs.rename(&tmp, &path).map_err(|e| io_err(&path, e))?;
    if sync {
        fs.sync_dir(&gen.dir).map_err(|e| io_err(&gen.dir, e))?;
    }
    let file = fs.open_append(&path).map_err(|e| io_err(&path, e))?;
    Ok((file, snapshot.len() as u64))
}
