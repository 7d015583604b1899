//! Listeners, connection threads and shutdown.
//!
//! SKELETON: signatures are the contract; bodies are being written.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use kvstore_core::Store;

use crate::error::Result;

/// What the server listens on and the limits it enforces.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to bind (default 127.0.0.1).
    pub bind: IpAddr,
    /// Port of the seed dialect (0: the OS picks; `None`: no listener).
    pub seed_port: Option<u16>,
    /// Port of the memcached dialect (`None`: no listener).
    pub memcached_port: Option<u16>,
    /// Most concurrent connections (default 4096).
    pub max_connections: usize,
    /// Largest value accepted (default 1 MiB).
    pub max_value_bytes: usize,
    /// Close connections idle this long (`None`: never).
    pub idle_timeout: Option<Duration>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            seed_port: Some(7878),
            memcached_port: None,
            max_connections: 4096,
            max_value_bytes: 1 << 20,
            idle_timeout: None,
        }
    }
}

/// The server: binds its listeners and serves one store.
pub struct Server;

/// A running server; shut it down with [`ServerHandle::shutdown`].
pub struct ServerHandle {
    _private: (),
}

#[allow(unused_variables)]
impl Server {
    /// Binds the listeners of `config` and starts serving `store` on
    /// background threads.
    pub fn start(store: Arc<Store>, config: ServerConfig) -> Result<ServerHandle> {
        todo!()
    }
}

impl ServerHandle {
    /// Address of the seed-dialect listener, if any.
    pub fn seed_addr(&self) -> Option<SocketAddr> {
        todo!()
    }
    /// Address of the memcached-dialect listener, if any.
    pub fn memcached_addr(&self) -> Option<SocketAddr> {
        todo!()
    }
    /// Stops accepting, finishes requests in flight, joins the connection
    /// threads and flushes the store.
    pub fn shutdown(self) -> Result<()> {
        todo!()
    }
}
