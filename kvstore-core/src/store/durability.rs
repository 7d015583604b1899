//! Durability: the flusher thread, group commit, and noting each write step for the flusher.

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
    /// Called after each file step of a write: notes that there is
    /// something to flush, so the periodic flusher does not skip the
    /// interval. (`Always` makes a write durable through the journal before
    /// its file steps, see `store/journal.rs`, so no step waits here.)
    pub(super) fn note_change(&self) {
        self.changes.fetch_add(1, Ordering::SeqCst);
    }

    /// Waits until a `syncfs` that started after this call has finished;
    /// one leader flushes for all waiting callers (group commit).
    pub(super) fn group_sync(&self) -> Result<()> {
        let mut st = lock(&self.group.state);
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
                let number = self.flush_started.fetch_add(1, Ordering::SeqCst) + 1;
                let res = self.fs.syncfs(&self.dir);
                st = lock(&self.group.state);
                st.running = false;
                match res {
                    Ok(()) => {
                        st.done = st.done.max(target);
                        self.flush_done.fetch_max(number, Ordering::SeqCst);
                    }
                    Err(e) => {
                        self.set_read_only(format!("flush of {} failed: {e}", self.dir.display()));
                        self.group.cv.notify_all();
                        return Err(io_err(&self.dir, e));
                    }
                }
                self.group.cv.notify_all();
            } else {
                st = self.group.cv.wait(st).unwrap_or_else(|e| e.into_inner());
            }
        }
    }
}

impl Inner {
    pub(super) fn flusher_loop(&self, every: Duration) {
        let mut flushed = 0;
        let mut last = std::time::Instant::now();
        while !self.stop.wait(every) {
            // Kicked by a writer short of spares: not more often than
            // every KICK_GAP.
            let since = last.elapsed();
            if since < KICK_GAP.min(every) {
                std::thread::sleep(KICK_GAP.min(every) - since);
                if self.stop.stopped() {
                    return;
                }
            }
            last = std::time::Instant::now();
            let changes = self.changes.load(Ordering::SeqCst);
            if self.read_only.load(Ordering::SeqCst) || changes == flushed {
                continue;
            }
            flushed = changes;
            if let Err(e) = self.group_sync() {
                log::error!("periodic flush failed, store is now read-only: {e}");
                continue;
            }
            // Spares freed before that flush are neutralized now; a second
            // flush makes them reusable right away.
            if self.neutralize_matured() {
                flushed = self.changes.load(Ordering::SeqCst);
                if let Err(e) = self.group_sync() {
                    log::error!("periodic flush failed, store is now read-only: {e}");
                }
            }
        }
    }
}
