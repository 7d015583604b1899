//! # kvstore
//!
//! A persistent key-value store: memcached's simplicity with the guarantee
//! that the data is still there after a restart, a crash or a power cut.
//!
//! This facade re-exports the embeddable store ([`Store`], from
//! `kvstore-core`) at the top level and the TCP server and clients (from
//! `kvstore-net`) under [`net`].
//!
//! ```
//! # fn main() -> Result<(), kvstore::Error> {
//! # let tmp = tempfile::tempdir().unwrap();
//! # let dir = tmp.path().join("data");
//! let store = kvstore::Store::open(&dir)?;
//! store.set("greeting", "hello")?;
//! assert_eq!(store.get("greeting")?.as_deref(), Some(&b"hello"[..]));
//! drop(store);
//! let store = kvstore::Store::open(&dir)?; // the data survives a reopen
//! assert_eq!(store.get("greeting")?.as_deref(), Some(&b"hello"[..]));
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

pub use kvstore_core::*;

/// The TCP server, its two protocol dialects and the clients (`kvstore-net`).
pub mod net {
    pub use kvstore_net::*;
}
