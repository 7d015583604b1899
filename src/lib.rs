//! # kvstore
//!
//! A persistent key-value store: memcached's simplicity with the guarantee
//! that the data is still there after a restart, a crash or a power cut.
//!
//! This facade re-exports the embeddable store ([`Store`], from
//! `kvstore-core`) at the top level and the TCP server library and clients
//! (from `kvstore-net`, without its binary) under [`net`]. It is the crate
//! to add when a program embeds the store: it compiles none of the
//! binaries' crates (no clap, env_logger, signal-hook, rustyline or
//! indicatif).
//!
//! ## Which crate for which job
//!
//! - **Embed a store, and talk to kvstore servers from Rust**: `kvstore`
//!   (this crate).
//! - **Only the store, fewest dependencies**: `kvstore-core`.
//! - **Run a server**: install `kvstore-server` from `kvstore-net`
//!   (`cargo install --path kvstore-net`; its default feature `server-bin`
//!   builds the binary). As a library, `kvstore-net` with
//!   `default-features = false`, or [`net`] here.
//! - **Use the command line**: install `kvstore-cli` from `kvstore-cli`
//!   (`cargo install --path kvstore-cli`).
//!
//! The repository's `docs/` holds the wire protocol (`PROTOCOL.md`), the
//! disk format and write protocol (`DESIGN.md`), the promises and their
//! tests (`RELIABILITY.md`) and the measured figures (`PERFORMANCE.md`).
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

/// The README's code blocks, compiled as doctests so that they keep up with
/// the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
