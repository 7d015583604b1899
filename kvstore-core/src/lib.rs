//! # kvstore-core: the embeddable persistent store
//!
//! SKELETON: docs and doctest to be written with the implementation.
#![warn(missing_docs)]

pub mod error;
pub mod item;
pub mod options;
mod store;

pub use error::{Error, Result};
pub use item::{CasOutcome, CounterOutcome, Expiry, Item, ItemMeta, StoreOutcome, TouchOutcome};
pub use options::{Durability, Options};
pub use store::{RepairReport, Store, VerifyReport};

/// The longest key accepted, in bytes (memcached's limit).
pub const MAX_KEY_BYTES: usize = 250;
