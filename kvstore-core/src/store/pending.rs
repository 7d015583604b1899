//! The pending table of `Durability::Periodic` and `Always`: acknowledged changes whose
//! journal entries the value files do not reflect yet, in front of the
//! cache and the files for every read (see docs/DESIGN.md, 3.3).
//!
//! A writer stages its change here right after its journal entry is
//! written to the file (both under the key's stripe lock, so per key the
//! table and the journal agree on the order). The flusher, after making
//! the journal durable, writes each key's newest *durable* change to the
//! value files and removes it here.
//!
//! Per key the table keeps the latest change and, when a newer one
//! replaces a change not applied yet, that one as `prev`: the latest may
//! not be durable when the flusher runs, and the key's files must still
//! catch up with the newest change that is.

use super::*;

/// One change of a key.
#[derive(Clone)]
pub(super) enum Change {
    Put(Arc<CachedItem>),
    Remove,
}

/// A change and the number of its journal entry.
#[derive(Clone)]
pub(super) struct Staged {
    pub(super) n: u64,
    pub(super) change: Change,
}

struct Slot {
    latest: Staged,
    prev: Option<Staged>,
    bytes: usize,
}

/// Bytes a staged change is counted for: its key, its value and the
/// table's bookkeeping (measured: hash map slot, boxes, `Arc` header).
fn cost(key: &[u8], change: &Change) -> usize {
    const OVERHEAD: usize = 128;
    OVERHEAD
        + key.len()
        + match change {
            Change::Put(it) => it.value.len(),
            Change::Remove => 0,
        }
}

/// Shards of the table (by key hash), as the map's.
const SHARDS: usize = 64;

/// One shard: key -> its staged changes.
type Shard = Mutex<HashMap<Box<[u8]>, Slot>>;

/// The pending table.
pub(super) struct Pending {
    shards: Box<[Shard]>,
    /// Keys in the table: reads skip it while this is 0.
    keys: AtomicUsize,
    bytes: AtomicUsize,
    max_bytes: usize,
    /// Writers waiting for room wait here; the applier notifies.
    room: Mutex<()>,
    room_cv: Condvar,
    /// Applications of a staged change begun and finished: a change moves
    /// from this table to the map in steps, and a count over both is only
    /// consistent while none is under way ([`Pending::consistent`]).
    applies_begun: AtomicU64,
    applies_finished: AtomicU64,
    /// Held shared by every application, exclusively by a count that
    /// could not find a moment between applications.
    applies_gate: RwLock<()>,
    /// The shard the next [`Pending::share`] starts at: helping writers
    /// take turns over the shards rather than all taking the same keys.
    next_share: AtomicUsize,
}

/// Marks one application of a staged change as under way until dropped.
pub(super) struct Applying<'a> {
    pending: &'a Pending,
    _gate: RwLockReadGuard<'a, ()>,
}

impl Drop for Applying<'_> {
    fn drop(&mut self) {
        self.pending.applies_finished.fetch_add(1, Ordering::AcqRel);
    }
}

impl Pending {
    pub(super) fn new(max_bytes: usize) -> Pending {
        Pending {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            keys: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
            max_bytes,
            room: Mutex::new(()),
            room_cv: Condvar::new(),
            applies_begun: AtomicU64::new(0),
            applies_finished: AtomicU64::new(0),
            applies_gate: RwLock::new(()),
            next_share: AtomicUsize::new(0),
        }
    }

    /// Announces an application of a staged change (to the map and the
    /// files, then its removal here), finished when the guard drops.
    pub(super) fn applying(&self) -> Applying<'_> {
        let gate = self.applies_gate.read();
        self.applies_begun.fetch_add(1, Ordering::AcqRel);
        Applying {
            pending: self,
            _gate: gate,
        }
    }

    /// Runs `view` (a reading of this table together with the map) while
    /// no application of a staged change is under way, so that no key is
    /// counted in both places or in neither: between applications when a
    /// few tries find such a moment, else holding new applications off
    /// (a write storm, whoever applies: the flusher or helping writers).
    pub(super) fn consistent<T>(&self, mut view: impl FnMut() -> T) -> T {
        const TRIES: usize = 64;
        for _ in 0..TRIES {
            let finished = self.applies_finished.load(Ordering::Acquire);
            if self.applies_begun.load(Ordering::Acquire) == finished {
                let seen = view();
                if self.applies_begun.load(Ordering::Acquire) == finished {
                    return seen;
                }
            }
            std::thread::yield_now();
        }
        let _no_applications = self.applies_gate.write();
        view()
    }

    fn shard(&self, hash: u64) -> &Shard {
        &self.shards[(hash as usize) % SHARDS]
    }

    /// The bound on [`Pending::bytes`].
    pub(super) fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// Bytes staged now.
    pub(super) fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Whether `bytes` (of the table, or of the journal buffer that holds
    /// the same changes before coalescing) reach the bound: writers then
    /// wait for the flusher, until [`Pending::below_low_water`].
    pub(super) fn over(&self, bytes: usize) -> bool {
        bytes >= self.max_bytes
    }

    /// Whether `bytes` are below three quarters of the bound. Writers that
    /// waited go on only then, all at once, rather than one at a time each
    /// time a single change is applied (a herd of wake-ups that starves the
    /// flusher of CPU).
    pub(super) fn below_low_water(&self, bytes: usize) -> bool {
        bytes < self.low_water()
    }

    fn low_water(&self) -> usize {
        self.max_bytes - self.max_bytes / 4
    }

    /// The key's latest change, if it has one staged: the number of its
    /// journal entry, and its item (`None` for a removal).
    pub(super) fn get(&self, hash: u64, key: &[u8]) -> Option<(u64, Option<Arc<CachedItem>>)> {
        if self.keys.load(Ordering::Acquire) == 0 {
            return None;
        }
        let shard = self.shard(hash).lock();
        shard.get(key).map(|slot| {
            let item = match &slot.latest.change {
                Change::Put(it) => Some(it.clone()),
                Change::Remove => None,
            };
            (slot.latest.n, item)
        })
    }

    /// Stages the change of journal entry `n` (written to the journal
    /// file). Stripe lock of the key held.
    pub(super) fn stage(&self, hash: u64, key: &[u8], n: u64, change: Change) {
        let add = cost(key, &change);
        let mut shard = self.shard(hash).lock();
        match shard.get_mut(key) {
            Some(slot) => {
                let new = Staged { n, change };
                // The replaced change is written, so at least as durable
                // as the older `prev`, which it supersedes.
                let old = std::mem::replace(&mut slot.latest, new);
                let freed = slot.prev.replace(old).map_or(0, |p| cost(key, &p.change));
                slot.bytes = slot.bytes + add - freed;
                self.bytes.fetch_add(add, Ordering::Relaxed);
                self.bytes.fetch_sub(freed, Ordering::Relaxed);
            }
            None => {
                shard.insert(
                    key.into(),
                    Slot {
                        latest: Staged { n, change },
                        prev: None,
                        bytes: add,
                    },
                );
                self.bytes.fetch_add(add, Ordering::Relaxed);
                self.keys.fetch_add(1, Ordering::Release);
            }
        }
    }

    /// Per key, the newest change whose journal entry is durable
    /// (`n <= synced`) and not yet applied.
    pub(super) fn due(&self, synced: u64) -> Vec<(Box<[u8]>, Staged)> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard.lock();
            for (key, slot) in shard.iter() {
                let pick = if slot.latest.n <= synced {
                    Some(&slot.latest)
                } else {
                    slot.prev.as_ref().filter(|p| p.n <= synced)
                };
                if let Some(s) = pick {
                    out.push((key.clone(), s.clone()));
                }
            }
        }
        out
    }

    /// A share of the due changes (as [`Pending::due`]) for one helping
    /// writer: up to `max` of them from the next shard that has any, so
    /// that concurrent helpers mostly take different keys.
    pub(super) fn share(&self, synced: u64, max: usize) -> Vec<(Box<[u8]>, Staged)> {
        let mut out = Vec::new();
        if self.keys.load(Ordering::Acquire) == 0 {
            return out;
        }
        for _ in 0..SHARDS {
            let i = self.next_share.fetch_add(1, Ordering::Relaxed) % SHARDS;
            let shard = self.shards[i].lock();
            for (key, slot) in shard.iter() {
                let pick = if slot.latest.n <= synced {
                    Some(&slot.latest)
                } else {
                    slot.prev.as_ref().filter(|p| p.n <= synced)
                };
                if let Some(s) = pick {
                    out.push((key.clone(), s.clone()));
                    if out.len() == max {
                        break;
                    }
                }
            }
            if !out.is_empty() {
                break;
            }
        }
        out
    }

    /// Whether the key still has change `n` staged (as latest or prev).
    pub(super) fn has(&self, hash: u64, key: &[u8], n: u64) -> bool {
        self.shard(hash)
            .lock()
            .get(key)
            .is_some_and(|s| s.latest.n == n || s.prev.as_ref().is_some_and(|p| p.n == n))
    }

    /// Change `n` of the key is in the value files: it and everything
    /// older of the key leave the table.
    pub(super) fn applied(&self, hash: u64, key: &[u8], n: u64) {
        let mut shard = self.shard(hash).lock();
        let Some(slot) = shard.get_mut(key) else {
            return;
        };
        let freed = if slot.latest.n == n {
            let bytes = slot.bytes;
            shard.remove(key);
            self.keys.fetch_sub(1, Ordering::Release);
            bytes
        } else if slot.prev.as_ref().is_some_and(|p| p.n == n) {
            let freed = slot.prev.take().map_or(0, |p| cost(key, &p.change));
            slot.bytes -= freed;
            freed
        } else {
            return;
        };
        drop(shard);
        let before = self.bytes.fetch_sub(freed, Ordering::Relaxed);
        // Waiting writers are woken when the table drops below its low
        // water mark, not for every change applied.
        let low = self.low_water();
        if before >= low && before - freed < low {
            self.notify_room();
        }
    }

    /// Drops everything (a clear: the staged changes belong to the old
    /// generation, whose journal entries replay ignores).
    pub(super) fn clear(&self) {
        for shard in self.shards.iter() {
            let mut shard = shard.lock();
            let n = shard.len();
            shard.clear();
            self.keys.fetch_sub(n, Ordering::Release);
        }
        self.bytes.store(0, Ordering::Relaxed);
        let _g = self.room.lock();
        self.room_cv.notify_all();
    }

    /// Waits until `busy()` is false or `timeout` passed.
    pub(super) fn wait_for_room(&self, timeout: Duration, busy: impl Fn() -> bool) {
        let mut g = self.room.lock();
        if busy() {
            let _ = self.room_cv.wait_for(&mut g, timeout);
        }
    }

    /// Wakes the writers waiting for room (the flusher has made some).
    pub(super) fn notify_room(&self) {
        let _g = self.room.lock();
        self.room_cv.notify_all();
    }

    /// The staged keys with whether their latest change is a put.
    pub(super) fn snapshot(&self) -> Vec<(Box<[u8]>, bool)> {
        if self.keys.load(Ordering::Acquire) == 0 {
            return Vec::new();
        }
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard.lock();
            out.extend(
                shard
                    .iter()
                    .map(|(k, s)| (k.clone(), matches!(s.latest.change, Change::Put(_)))),
            );
        }
        out
    }
}
