//! Client of the seed dialect.
//!
//! SKELETON: signatures are the contract; bodies are being written.

use std::net::ToSocketAddrs;
use std::time::Duration;

use crate::error::Result;

/// A connection to a kvstore server speaking the seed dialect.
pub struct Client {
    _private: (),
}

#[allow(unused_variables)]
impl Client {
    /// Connects with the default timeouts (connect, read and write: 10 s).
    pub fn connect(addr: impl ToSocketAddrs) -> Result<Client> {
        todo!()
    }
    /// Connects with `timeout` for the connect and for every read and write.
    pub fn connect_timeout(addr: impl ToSocketAddrs, timeout: Duration) -> Result<Client> {
        todo!()
    }
    /// Stores `value` under `key`.
    pub fn set(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<()> {
        todo!()
    }
    /// The value of `key`; the seed dialect answers a missing key with an
    /// empty value, so a missing key reads as empty.
    pub fn get(&mut self, key: impl AsRef<[u8]>) -> Result<Vec<u8>> {
        todo!()
    }
    /// The values of several keys, in order, in one round trip.
    pub fn get_many<K: AsRef<[u8]>>(&mut self, keys: &[K]) -> Result<Vec<Vec<u8>>> {
        todo!()
    }
    /// Deletes `key`; `true` if it existed.
    pub fn delete(&mut self, key: impl AsRef<[u8]>) -> Result<bool> {
        todo!()
    }
    /// Deletes every key.
    pub fn clear(&mut self) -> Result<()> {
        todo!()
    }
}
