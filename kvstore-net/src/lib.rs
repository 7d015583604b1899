//! # kvstore-net: the TCP server and clients
//!
//! SKELETON: signatures are the contract; bodies are being written.
#![warn(missing_docs)]

pub mod client;
pub mod cluster;
mod connection;
pub mod error;
mod handler;
pub mod mcclient;
pub mod protocol;
pub mod server;

pub use client::Client;
pub use cluster::{ketama_name, Cluster, ClusterOptions, Continuum, KeyHash, Node, ServerSpec};
pub use error::{Error, Result};
pub use mcclient::{McCasOutcome, McClient, McItem};
pub use server::{Server, ServerConfig, ServerHandle, ShutdownTrigger};
