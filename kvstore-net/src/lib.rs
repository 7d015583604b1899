//! # kvstore-net: the TCP server and clients
//!
//! Serves a [`kvstore_core::Store`] over TCP in two dialects, each on its
//! own listener (the wire contract is `PROTOCOL.md`):
//!
//! - the **seed dialect**, a small text protocol (`set`/`get`/`delete`);
//! - the **memcached dialect**, memcached's text protocol and, on the same
//!   port, its binary protocol (told apart by each connection's first
//!   byte, docs/PROTOCOL.md), so existing memcached clients, tools and
//!   proxies work against a store that survives restarts.
//!
//! ## Layout
//!
//! - [`protocol`]: pure functions over byte buffers, no sockets:
//!   [`protocol::seed`], [`protocol::memcached`] and [`protocol::binary`]
//!   parse requests (a request and the bytes it used, "need more", or a
//!   rejection carrying the reply and how to resynchronize) and encode
//!   replies; the key rules live in one function,
//!   [`protocol::validate_key`].
//! - `connection` (private): one connection's buffers, limits, EOF and idle
//!   timeout; one read and one write per batch of pipelined requests.
//! - [`server`]: [`Server::start`] binds the listeners and returns a
//!   [`ServerHandle`]; one thread with a small stack per connection, a
//!   bound on connections, graceful [`ServerHandle::shutdown`].
//! - [`client`]: [`Client`], the seed dialect's client; [`mcclient`]:
//!   [`McClient`], the memcached dialect's client (flags, exptime, cas).
//! - `src/bin/kvstore-server.rs`: the `kvstore-server` binary.
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

pub mod client;
pub mod cluster;
mod connection;
pub mod error;
mod exec;
mod handler;
pub mod mcclient;
pub mod protocol;
pub mod server;

pub use client::Client;
pub use cluster::{ketama_name, Cluster, ClusterOptions, Continuum, KeyHash, Node, ServerSpec};
pub use error::{Error, Result};
pub use mcclient::{McCasOutcome, McClient, McItem};
pub use server::{MemcachedProtocol, Server, ServerConfig, ServerHandle, ShutdownTrigger};
