//! # kvstore-net: the TCP server and clients
//!
//! SKELETON: signatures are the contract; bodies are being written.
#![warn(missing_docs)]

pub mod client;
pub mod error;
pub mod protocol;
pub mod server;

pub use client::Client;
pub use error::{Error, Result};
pub use server::{Server, ServerConfig, ServerHandle};
