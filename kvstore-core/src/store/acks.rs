//! Acknowledgements in `Always` mode: a change, or a read that saw a
//! change, returns only once the journal entry behind it is durable, so
//! that nothing a caller is told can be undone by a power cut. A call
//! notes the newest entry it wrote or saw while it holds its locks, and
//! waits for it after it let them go ([`Inner::settle`]), so no lock is
//! held across a flush.
//!
//! A server answering a batch of requests can defer that wait
//! ([`Store::defer_acks`]): the calls of the batch return at once, and
//! their replies go out once the newest entry any of them owes is durable
//! ([`Unsynced`]), one wait for the whole batch, or none on the
//! connection's thread at all ([`Unsynced::then`]).

use std::cell::Cell;

use super::*;

thread_local! {
    /// The newest journal entry the running call wrote or saw that may
    /// not be durable yet (0: none); settled when the call ends.
    static OWED: Cell<u64> = const { Cell::new(0) };
    /// The deferral open on this thread: the store (its `Inner`'s
    /// address) and the newest entry the calls made so far owe.
    static DEFERRED: Cell<Option<(usize, u64)>> = const { Cell::new(None) };
}

/// Notes that the running call wrote or saw journal entry `n`.
pub(super) fn owe(n: u64) {
    OWED.with(|owed| owed.set(owed.get().max(n)));
}

impl Inner {
    /// Ends a call (its locks released): in `Always`, waits until the
    /// entries it wrote or saw are durable, or adds them to this thread's
    /// deferral. `reading`: the call only read, and returns what it read
    /// even from a store that failed before the entry was durable (it has
    /// no promise left to keep, and the next open decides).
    pub(super) fn settle(&self, reading: bool) -> Result<()> {
        let n = OWED.with(|owed| owed.replace(0));
        let Some(j) = &self.journal else {
            return Ok(());
        };
        if n == 0 || !j.owes(n) {
            return Ok(());
        }
        let me = self as *const Inner as usize;
        let deferred = DEFERRED.with(|d| match d.get() {
            Some((store, upto)) if store == me => {
                d.set(Some((store, upto.max(n))));
                true
            }
            _ => false,
        });
        if deferred {
            return Ok(());
        }
        match j.wait_durable(n) {
            Err(_) if reading => Ok(()),
            waited => waited,
        }
    }
}

/// Acknowledgements deferred on one thread, from [`Store::defer_acks`]
/// until this is dropped.
///
/// While it lives, calls on this thread to its store return without
/// waiting for the journal flush an `Always` store makes before it
/// acknowledges a change (or a read of a change not yet durable).
/// Their results must not be passed on before [`DeferredAcks::take`]'s
/// [`Unsynced`] says the flush happened: a power cut before it can undo
/// them. In `Periodic` and `Never` nothing is deferred.
#[must_use = "calls return unacknowledged results while this lives"]
pub struct DeferredAcks {
    inner: Arc<Inner>,
    /// The deferral this one replaced on the thread (put back on drop).
    outer: Option<(usize, u64)>,
}

impl DeferredAcks {
    pub(super) fn begin(inner: Arc<Inner>) -> DeferredAcks {
        let me = Arc::as_ptr(&inner) as usize;
        let outer = DEFERRED.with(|d| d.replace(Some((me, 0))));
        DeferredAcks { inner, outer }
    }

    /// What the calls since the last `take` need durable before their
    /// results are passed on; `None` when nothing (every entry they wrote
    /// or saw is durable, or the store is not `Always`).
    pub fn take(&self) -> Option<Unsynced> {
        let me = Arc::as_ptr(&self.inner) as usize;
        let upto = DEFERRED.with(|d| match d.get() {
            Some((store, upto)) if store == me => {
                d.set(Some((store, 0)));
                upto
            }
            _ => 0,
        });
        let j = self.inner.journal.as_ref()?;
        j.owes(upto).then(|| Unsynced {
            inner: self.inner.clone(),
            upto,
        })
    }
}

impl Drop for DeferredAcks {
    fn drop(&mut self) {
        DEFERRED.with(|d| d.set(self.outer));
    }
}

impl fmt::Debug for DeferredAcks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeferredAcks").finish_non_exhaustive()
    }
}

/// Journal entries that must be durable before the results of some
/// deferred calls are passed on (see [`DeferredAcks`]).
#[must_use = "the results it covers may not be passed on before it is durable"]
pub struct Unsynced {
    inner: Arc<Inner>,
    upto: u64,
}

impl Unsynced {
    /// Waits until the entries are durable. An error means the store
    /// turned read-only first: the results it covers may or may not
    /// survive a restart, so they must not be reported as done.
    pub fn wait(self) -> Result<()> {
        match &self.inner.journal {
            Some(j) => j.wait_durable(self.upto),
            None => Ok(()),
        }
    }

    /// Calls `then` once the entries are durable, with `Ok`, or with the
    /// error that turned the store read-only first; without waiting: on
    /// this thread when that is already known, else on the store's syncer
    /// thread right after its flush. `then` should be quick (it holds up
    /// the acknowledgements of other callers) and must not block.
    pub fn then(self, then: impl FnOnce(Result<()>) + Send + 'static) {
        match &self.inner.journal {
            Some(j) => j.when_durable(self.upto, Box::new(then)),
            None => then(Ok(())),
        }
    }
}

impl fmt::Debug for Unsynced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Unsynced")
            .field("upto", &self.upto)
            .finish_non_exhaustive()
    }
}
