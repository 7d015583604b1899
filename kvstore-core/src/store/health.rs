//! The store's health: writable, or read-only since a failure whose outcome
//! on disk is unknown (a failed sync, a failed generation switch, a failed
//! apply of journaled changes). Only a reopen, whose recovery decides from
//! what is on disk, makes the store writable again (docs/DESIGN.md, 1).

use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

use crate::error::{Error, Result};

#[derive(Default)]
pub(super) struct Health {
    read_only: AtomicBool,
    /// Why, for [`Error::ReadOnly`]: the first failure's.
    reason: Mutex<String>,
}

impl Health {
    /// Whether writes are refused.
    pub(super) fn read_only(&self) -> bool {
        self.read_only.load(Ordering::SeqCst)
    }

    /// `Ok` while writable; [`Error::ReadOnly`] with the reason after a
    /// failure.
    pub(super) fn check(&self) -> Result<()> {
        if self.read_only() {
            return Err(Error::ReadOnly {
                reason: self.reason.lock().clone(),
            });
        }
        Ok(())
    }

    /// Turns the store read-only (the first reason is kept).
    pub(super) fn fail(&self, reason: String) {
        let mut r = self.reason.lock();
        if !self.read_only.swap(true, Ordering::SeqCst) {
            *r = reason;
        }
    }
}
