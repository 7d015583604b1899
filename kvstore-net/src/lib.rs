//! # kvstore-net: the TCP server and clients
//!
//! Serves a [`kvstore_core::Store`] over TCP on two listeners (the wire
//! contract, with every reply and error line, is the repository's
//! `docs/PROTOCOL.md`):
//!
//! - the **seed dialect**, a small text protocol (`set`/`get`/`delete`);
//! - the **memcached port**, memcached's text protocol, its meta commands
//!   (`mg`, `ms`, `md`, `ma`, `mn`, `me`) on the same connections, its
//!   operators' commands (stats groups, key dumps, `cache_memlimit`,
//!   `shutdown`), and its binary protocol, so existing memcached clients,
//!   tools, proxies and
//!   monitoring work against a store that survives restarts. Each
//!   connection's first byte picks its protocol, as memcached does
//!   ([`MemcachedProtocol`]).
//!
//! ## Layout
//!
//! - [`protocol`]: pure functions over byte buffers, no sockets:
//!   [`protocol::seed`], [`protocol::memcached`], [`protocol::meta`] and
//!   [`protocol::binary`] parse requests (a request and the bytes it used,
//!   "need more", or a rejection carrying the reply and how to
//!   resynchronize) and encode replies; the key rules live in one
//!   function, [`protocol::validate_key`].
//! - `exec` (private): the executor every dialect shares. A dialect parses
//!   a request, maps it to typed commands, the executor runs them against
//!   the store and hands back typed responses, and the dialect encodes
//!   them; statistics are derived there from what was executed (`stats`,
//!   private). `handler` (private) holds each dialect's mapping and
//!   encoder; `exec.rs` explains how a new dialect plugs in.
//! - `marks` (private): the per-key state of the meta commands the store
//!   does not keep (fetched, last access, stale, recache winner).
//! - `connection` (private): one connection's buffers, limits, EOF and idle
//!   timeout; one read and one write per batch of pipelined requests.
//! - [`server`]: [`Server::start`] binds the listeners and returns a
//!   [`ServerHandle`]; one thread with a small stack per connection, a
//!   bound on connections, graceful [`ServerHandle::shutdown`].
//! - [`client`]: [`Client`], the seed dialect's client; [`mcclient`]:
//!   [`McClient`], the memcached dialect's client (flags, exptime, cas).
//! - `src/bin/kvstore-server.rs`: the `kvstore-server` binary.
//!
//! ## Features
//!
//! - `server-bin` (default): builds the `kvstore-server` binary and pulls
//!   in its own dependencies (clap, env_logger, signal-hook, rlimit). A
//!   program that uses this crate as a library turns it off
//!   (`default-features = false`); the `kvstore` facade does.
//!
//! ## Example
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use kvstore_net::{Client, McClient, Server, ServerConfig};
//!
//! # let tmp = tempfile::tempdir()?;
//! let store = Arc::new(kvstore_core::Store::open(tmp.path())?);
//! let config = ServerConfig {
//!     seed_port: Some(0), // the OS picks free ports
//!     memcached_port: Some(0),
//!     ..ServerConfig::default()
//! };
//! let server = Server::start(store, config)?;
//!
//! let mut client = Client::connect(server.seed_addr().unwrap())?;
//! client.set("greeting", "hello")?;
//! assert_eq!(client.get("greeting")?, b"hello");
//!
//! let mut mc = McClient::connect(server.memcached_addr().unwrap())?;
//! let item = mc.gets("greeting")?.unwrap();
//! assert_eq!(item.value, b"hello");
//! mc.set("counter", "41", 0, 0)?;
//! assert_eq!(mc.incr("counter", 1)?, Some(42));
//!
//! drop((client, mc));
//! server.shutdown()?; // stop accepting, finish requests, flush the store
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

pub mod auth;
pub mod client;
pub mod cluster;
mod connection;
pub mod error;
mod exec;
mod handler;
mod marks;
pub mod mcclient;
pub mod protocol;
pub mod server;
mod stats;
pub mod tls;

pub use client::{Client, ConnectOptions, Credentials};
pub use cluster::{ketama_name, Cluster, ClusterOptions, Continuum, KeyHash, Node, ServerSpec};
pub use error::{Error, Result};
pub use mcclient::{McCasOutcome, McClient, McItem};
pub use server::{MemcachedProtocol, Server, ServerConfig, ServerHandle, ShutdownTrigger};

/// The README's code blocks, compiled as doctests so that they keep up with
/// the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
