//! Generations and clearing: `clear`, `clear_after`, the deleter of old generations.

use super::*;

impl Inner {
    /// Clears the store if a `clear_after` deadline has passed.
    pub(super) fn clear_if_due(&self) -> Result<()> {
        let deadline = self.clear_deadline.load(Ordering::Relaxed);
        if deadline == 0 || now_millis() < deadline {
            return Ok(());
        }
        let guard = self.clear_lock.lock();
        let deadline = self.clear_deadline.load(Ordering::SeqCst);
        if deadline == 0 || now_millis() < deadline {
            return Ok(());
        }
        self.clear_locked(guard)
    }

    pub(super) fn clear_now(&self) -> Result<()> {
        let guard = self.clear_lock.lock();
        self.clear_locked(guard)
    }

    /// Switches to a fresh generation. Holds the clear lock (so a due
    /// deadline is acted on once) and the generation write lock (so no
    /// operation is in flight).
    pub(super) fn clear_locked(&self, _clear: MutexGuard<'_, ()>) -> Result<()> {
        self.check_writable()?;
        let sync_meta = self.durability != Durability::Never;
        let mut gen = self.gen.write();
        let n = self.next_gen.fetch_add(1, Ordering::SeqCst);
        let gen_dir = self.dir.join(layout::gen_name(n));
        create_generation_dir(&*self.fs, &gen_dir, sync_meta)?;
        let new_gen = match load_generation(&self.fs, &gen_dir, self.hasher, sync_meta, self.epoch)
        {
            Ok(g) => g,
            Err(e) => {
                self.doomed.lock().push(gen_dir);
                return Err(e);
            }
        };
        if let Err(e) = write_small_file(
            &*self.fs,
            &self.dir,
            layout::CURRENT_FILE,
            layout::current_contents(n).as_bytes(),
            sync_meta,
        ) {
            // Whether CURRENT was switched is unknown now (the rename or
            // its flush failed): refuse writes until a reopen decides.
            self.set_read_only(format!("switching generation failed: {e}"));
            return Err(e);
        }
        let old = std::mem::replace(&mut *gen, Arc::new(new_gen));
        // Staged changes of the old generation: replay ignores their
        // journal entries, and nothing applies them now.
        self.pending.clear();
        self.cache.clear();
        for s in self.stripes.iter() {
            s.seq.fetch_add(1, Ordering::Release);
        }
        drop(gen);
        if self.clear_deadline.swap(0, Ordering::SeqCst) != 0 {
            let _ = self.fs.remove_file(&self.dir.join(layout::CLEAR_AT_FILE));
        }
        let mut doomed = self.doomed.lock();
        doomed.push(old.dir.clone());
        self.doomed_cv.notify_all();
        Ok(())
    }
}

impl Inner {
    /// Deletes doomed generation directories, one file at a time, until
    /// stopped.
    pub(super) fn deleter_loop(&self) {
        loop {
            let next = {
                let mut doomed = self.doomed.lock();
                loop {
                    if self.stop.stopped() {
                        return;
                    }
                    if let Some(d) = doomed.pop() {
                        break d;
                    }
                    self.doomed_cv.wait(&mut doomed);
                }
            };
            if let Err(e) = remove_tree(&*self.fs, &next, &self.stop) {
                log::warn!("cannot remove old generation {}: {e}", next.display());
            }
        }
    }
}

/// Removes a directory tree through the seam, stopping early if asked.
pub(super) fn remove_tree(fs: &dyn FileSystem, dir: &Path, stop: &Stop) -> io::Result<()> {
    let names = match fs.list_dir(dir) {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for name in names {
        if stop.stopped() {
            return Ok(());
        }
        let path = dir.join(&name);
        match fs.remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(_) => remove_tree(fs, &path, stop)?,
        }
    }
    if stop.stopped() {
        return Ok(());
    }
    match fs.remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}
