//! # kvstore-net: the TCP server and clients
//!
//! SKELETON: signatures are the contract; bodies are being written.
#![warn(missing_docs)]

pub mod client;
pub mod cluster;
pub mod error;
pub mod server;

pub use client::Client;
pub use cluster::{ketama_name, Continuum, KeyHash, Node, ServerSpec};
pub use error::{Error, Result};
pub use server::{Server, ServerConfig, ServerHandle};
