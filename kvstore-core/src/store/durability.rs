//! Durability: group commit of `syncfs`, and the flusher of `Periodic` and `Always` that makes the journal durable and applies the pending table behind it (see docs/DESIGN.md).

use std::time::Instant;

use super::*;

/// Group commit: a writer waits until a flush that started after its
/// writes has finished; one leader flushes for all waiting writers.
#[derive(Default)]
pub(super) struct GroupSync {
    pub(super) state: Mutex<SyncState>,
    pub(super) cv: Condvar,
}

#[derive(Default)]
pub(super) struct SyncState {
    pub(super) requested: u64,
    pub(super) done: u64,
    pub(super) running: bool,
}

impl Inner {
    /// Waits until a `syncfs` that started after this call has finished;
    /// one leader flushes for all waiting callers (group commit).
    pub(super) fn group_sync(&self) -> Result<()> {
        let mut st = self.group.state.lock();
        st.requested += 1;
        let ticket = st.requested;
        loop {
            self.check_writable()?;
            if st.done >= ticket {
                return Ok(());
            }
            if !st.running {
                st.running = true;
                let target = st.requested;
                drop(st);
                let res = self.fs.syncfs(&self.dir);
                st = self.group.state.lock();
                st.running = false;
                match res {
                    Ok(()) => {
                        st.done = st.done.max(target);
                    }
                    Err(e) => {
                        self.set_read_only(format!("flush of {} failed: {e}", self.dir.display()));
                        self.group.cv.notify_all();
                        return Err(io_err(&self.dir, e));
                    }
                }
                self.group.cv.notify_all();
            } else {
                self.group.cv.wait(&mut st);
            }
        }
    }
}

/// The flusher's own state.
pub(super) struct TickState {
    last_checkpoint: Instant,
}

impl TickState {
    pub(super) fn new() -> TickState {
        TickState {
            last_checkpoint: Instant::now(),
        }
    }
}

/// Longest a writer waits for the applier at a time before it looks at the
/// store's health again.
const ROOM_WAIT: Duration = Duration::from_millis(50);

/// Most changes a waiting writer applies before it looks whether there is
/// room again.
const HELP_SHARE: usize = 64;

impl Inner {
    /// Whether writes go to the journal first and are applied to the value
    /// files behind it (`Periodic`, `Always`), rather than written to the
    /// value files by the writer (`Never`).
    pub(super) fn journaled_behind(&self) -> bool {
        self.journal.is_some()
    }

    /// Back-pressure: waits while the pending table is at the bound,
    /// asking the flusher to run now and helping it.
    pub(super) fn wait_for_room(&self) -> Result<()> {
        let Some(j) = &self.journal else {
            return Ok(());
        };
        if !self.pending.over(self.pending.bytes()) {
            return Ok(());
        }
        // Wait for the low water mark (hysteresis), not just the bound.
        let busy = || !self.pending.below_low_water(self.pending.bytes());
        while busy() {
            self.check_writable()?;
            self.stop.kick();
            if !self.help_apply(j)? {
                self.pending.wait_for_room(ROOM_WAIT, busy);
            }
        }
        Ok(())
    }

    /// A waiting writer's share of the applier's work: makes the journal
    /// durable (one `fdatasync` for all helpers at once, see
    /// [`Journal::flush`]) and applies a share of the changes it
    /// covers, so that applying runs on as many threads as are writing
    /// rather than on the flusher's alone. `false` when nothing was due.
    ///
    /// The rules hold as in the flusher: only changes whose journal entry
    /// is durable are applied, each under its key's stripe lock, and one
    /// applied or replaced in the meantime is skipped (`apply_staged`), so
    /// per key the newest durable change wins whoever applies it.
    fn help_apply(&self, j: &Journal) -> Result<bool> {
        let synced = j.flush()?;
        let share = self.pending.share(synced, HELP_SHARE);
        if share.is_empty() {
            return Ok(false);
        }
        self.apply_each(share)?;
        Ok(true)
    }

    /// The flusher thread: a flush-and-apply pass every interval, or at
    /// once when kicked (a full pending table, a long journal).
    pub(super) fn flusher_loop(&self, every: Duration) {
        while !self.stop.wait(every) {
            if self.health.read_only() {
                continue;
            }
            if let Err(e) = self.flush_and_apply(true) {
                log::error!(
                    "flush of the journal or applying it failed, store is now read-only: {e}"
                );
            }
        }
    }

    /// Makes the journal durable, applies every staged change
    /// it covers to the value files, and (with `may_checkpoint`, when one
    /// is due) checkpoints the journal. A failure turns the store
    /// read-only: acknowledged changes then stay in the pending table
    /// (readable) and in the journal (replayed by the next open).
    pub(super) fn flush_and_apply(&self, may_checkpoint: bool) -> Result<()> {
        let Some(j) = &self.journal else {
            return Ok(());
        };
        let mut tick = self.tick.lock();
        self.check_writable()?;
        let synced = j.flush()?;
        self.pending.notify_room();
        self.apply_each(self.pending.due(synced))?;
        self.pending.notify_room();
        let due = tick.last_checkpoint.elapsed() >= self.checkpoint_interval
            || j.len() > CHECKPOINT_BYTES;
        // One retirement at a time: the next checkpoint waits for it.
        let retiring = self.retire.lock().is_some();
        if may_checkpoint && due && !retiring && j.since_checkpoint() > 0 {
            tick.last_checkpoint = Instant::now();
            self.checkpoint(j)?;
        }
        Ok(())
    }

    /// Checkpoint, without stopping the writers: the journal switches
    /// files (every entry of the old one durable first), the writers that
    /// appended to the old file are let finish staging (each stripe lock
    /// is taken once), and every change of the old file still staged, or
    /// the older durable one it replaced, is applied; then the retirer
    /// thread makes the value files durable and sets the old file aside,
    /// while this thread goes on. New writes meanwhile go to the new file
    /// and are not waited for.
    fn checkpoint(&self, j: &Journal) -> Result<()> {
        let (old, last) = j.switch()?;
        // A writer appends and stages under its key's stripe lock: once
        // each stripe has been free, every entry up to `last` is staged.
        for stripe in self.stripes.iter() {
            drop(stripe.lock.lock());
        }
        // Per key, the newest change numbered up to `last` (a newer one,
        // once applied, removes it too); applying one never stages more.
        loop {
            let due = self.pending.due(last);
            if due.is_empty() {
                break;
            }
            self.apply_each(due)?;
        }
        self.pending.notify_room();
        *self.retire.lock() = Some(old);
        self.retire_cv.notify_all();
        Ok(())
    }

    /// The retirer thread: runs the `syncfs` of a checkpoint and
    /// then sets its old journal file aside, off the flusher's thread (a
    /// `syncfs` after a second of writes takes long on a slow disk, and the
    /// flusher keeps applying meanwhile). Finishes a handed-over file
    /// before it stops.
    pub(super) fn retirer_loop(&self) {
        loop {
            let old = {
                let mut slot = self.retire.lock();
                loop {
                    if let Some(old) = slot.clone() {
                        break old;
                    }
                    if self.stop.stopped() {
                        return;
                    }
                    self.retire_cv.wait_for(&mut slot, ROOM_WAIT);
                }
            };
            if let Err(e) = self.retire_journal(&old) {
                log::error!("journal checkpoint failed: {e}");
            }
            *self.retire.lock() = None;
        }
    }

    /// Checkpoint, second half (the retirer's): makes the value files
    /// durable (`syncfs`), then sets the old journal file `old` aside.
    pub(super) fn retire_journal(&self, old: &Path) -> Result<()> {
        let Some(j) = &self.journal else {
            return Ok(());
        };
        self.group_sync()?;
        j.set_aside(old)
    }

    /// At a clean close, with nothing left staged: everything is made
    /// durable and the journal set aside, so the next open replays nothing.
    pub(super) fn close_journal(&self) -> Result<()> {
        let Some(j) = &self.journal else {
            return Ok(());
        };
        self.group_sync()?;
        j.close()
    }

    /// Applies staged changes (journal entries durable) one by one, each
    /// under the generation's read lock and its key's stripe lock.
    fn apply_each(&self, changes: Vec<(Box<[u8]>, Staged)>) -> Result<()> {
        for (key, staged) in changes {
            let hash = (self.hasher)(&key);
            let gen = self.gen_read();
            let _g = self.stripe(hash).lock.lock();
            self.apply_staged(&gen, hash, &key, &staged)?;
        }
        Ok(())
    }

    /// Applies one staged change (journal entry durable) to the value
    /// files and drops it from the table; a failure turns the store
    /// read-only. Generation read lock and the key's stripe lock held.
    fn apply_staged(&self, gen: &Generation, hash: u64, key: &[u8], staged: &Staged) -> Result<()> {
        // Gone (a clear emptied the table) or applied by an earlier pass.
        if !self.pending.has(hash, key, staged.n) {
            return Ok(());
        }
        let _applying = self.pending.applying();
        let mut applied = self.apply_change(gen, hash, key, staged);
        // A full disk: the journal gives back the zeros it grew ahead of
        // its entries, and the change is tried once more.
        let disk_full = |r: &Result<()>| matches!(r, Err(Error::Io { source, .. }) if source.kind() == io::ErrorKind::StorageFull);
        if disk_full(&applied) && self.journal.as_ref().is_some_and(|j| j.release_reserve()) {
            applied = self.apply_change(gen, hash, key, staged);
        }
        applied.inspect_err(|e| {
            self.set_read_only(format!("applying a journaled write failed: {e}"));
            self.pending.notify_room();
        })?;
        self.pending.applied(hash, key, staged.n);
        Ok(())
    }

    fn apply_change(&self, gen: &Generation, hash: u64, key: &[u8], staged: &Staged) -> Result<()> {
        let idx = gen.map.lookup(hash, key);
        match &staged.change {
            Change::Put(it) => {
                let rec = record::encode(key, &it.value, it.flags, it.expiry, it.cas).ok_or(
                    Error::ValueTooLarge {
                        len: it.value.len(),
                        max: self.max_value_bytes,
                    },
                )?;
                self.write_files(gen, hash, key, idx, &rec)
            }
            Change::Remove => self.remove_files(gen, hash, key, idx),
        }
    }
}
