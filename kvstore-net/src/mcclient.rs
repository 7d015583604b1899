//! Client of the memcached dialect, with flags, exptime and cas. Works
//! against kvstore-server's memcached listener and against memcached
//! itself; the cluster client builds on it.

use std::net::ToSocketAddrs;
use std::time::Duration;

use crate::client::{check_key, lossy, Conn, ConnectOptions, Credentials, DEFAULT_TIMEOUT};
use crate::error::{Error, Result};
use crate::protocol::memcached::{self as mc, parse_reply, Reply, StoreMode};
use crate::protocol::Keys;

/// A value read with [`McClient::get`] or [`McClient::gets`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McItem {
    /// The value.
    pub value: Vec<u8>,
    /// The client flags stored with it.
    pub flags: u32,
    /// The cas unique (only from `gets`/`gats`).
    pub cas: Option<u64>,
}

/// Outcome of [`McClient::cas`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum McCasOutcome {
    /// Stored.
    Stored,
    /// The item changed since its cas was read.
    Exists,
    /// The key does not exist.
    NotFound,
}

/// A connection to a server speaking the memcached ASCII protocol.
///
/// `exptime` arguments follow memcached: 0 never expires, up to 30 days
/// is relative seconds, larger is a Unix time, negative is expired.
pub struct McClient {
    conn: Conn,
}

impl McClient {
    /// Connects with the default timeouts (10 s).
    ///
    /// # Errors
    /// [`Error::Connect`] when no address answers.
    pub fn connect(addr: impl ToSocketAddrs) -> Result<McClient> {
        McClient::connect_timeout(addr, DEFAULT_TIMEOUT)
    }

    /// Connects with `timeout` for the connect and every read and write.
    ///
    /// # Errors
    /// [`Error::Connect`] when no address answers.
    pub fn connect_timeout(addr: impl ToSocketAddrs, timeout: Duration) -> Result<McClient> {
        McClient::connect_with(addr, &ConnectOptions::with_timeout(timeout))
    }

    /// Connects as `options` say (timeout, TLS).
    ///
    /// # Errors
    /// [`Error::Connect`] when no address answers or the TLS handshake
    /// fails (the server's certificate is refused, or it refuses ours).
    ///
    /// With credentials, it authenticates first with memcached's ASCII
    /// auth (a `set` whose data is `<user> <password>`); [`Error::Auth`]
    /// if the server refuses them.
    pub fn connect_with(addr: impl ToSocketAddrs, options: &ConnectOptions) -> Result<McClient> {
        if let Some(credentials) = &options.credentials {
            credentials.check()?;
        }
        let mut client = McClient {
            conn: Conn::connect(addr, options)?,
        };
        if let Some(credentials) = &options.credentials {
            client.authenticate(credentials)?;
        }
        Ok(client)
    }

    /// memcached's ASCII auth: the key is ignored, the data block is the
    /// user name and password separated by one space.
    fn authenticate(&mut self, credentials: &Credentials) -> Result<()> {
        let data = format!("{} {}", credentials.user, credentials.password);
        let request = format!("set auth 0 0 {}\r\n{data}\r\n", data.len());
        self.conn.authenticate(
            request.as_bytes(),
            b"STORED",
            b"CLIENT_ERROR authentication failure",
            credentials,
        )
    }

    /// The address of the server.
    pub fn peer(&self) -> &str {
        &self.conn.addr
    }

    /// Reads one reply line; error lines become errors.
    fn reply(&mut self) -> Result<Vec<u8>> {
        let line = self.conn.line()?;
        match parse_reply(&line) {
            Some(Reply::Error(e)) if e.starts_with(b"SERVER_ERROR") => {
                log::debug!("{}: {}", self.conn.addr, lossy(e));
                Err(Error::NotStored)
            }
            Some(Reply::Error(e)) => Err(Error::Rejected(lossy(e))),
            Some(_) => Ok(line),
            None => Err(Error::Protocol(lossy(&line))),
        }
    }

    fn storage(
        &mut self,
        mode: StoreMode,
        key: &[u8],
        value: &[u8],
        flags: u32,
        exptime: i64,
    ) -> Result<Reply<'static>> {
        check_key(key)?;
        mc::Request::Store {
            mode,
            key,
            flags,
            exptime,
            value,
            noreply: false,
        }
        .encode(&mut self.conn.out);
        self.conn.send()?;
        let line = self.reply()?;
        match parse_reply(&line) {
            Some(Reply::Stored) => Ok(Reply::Stored),
            Some(Reply::NotStored) => Ok(Reply::NotStored),
            Some(Reply::Exists) => Ok(Reply::Exists),
            Some(Reply::NotFound) => Ok(Reply::NotFound),
            _ => Err(Error::Protocol(lossy(&line))),
        }
    }

    fn stored(
        &mut self,
        mode: StoreMode,
        key: &[u8],
        value: &[u8],
        flags: u32,
        exptime: i64,
    ) -> Result<bool> {
        match self.storage(mode, key, value, flags, exptime)? {
            Reply::Stored => Ok(true),
            Reply::NotStored => Ok(false),
            other => Err(Error::Protocol(format!(
                "{other:?} in reply to a storage command"
            ))),
        }
    }

    /// Stores `value` under `key` (memcached `set`).
    ///
    /// # Errors
    /// [`Error::NotStored`] on `SERVER_ERROR` (too large, store failure),
    /// [`Error::Rejected`] on a client error, [`Error::Io`] on socket errors.
    pub fn set(
        &mut self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        flags: u32,
        exptime: i64,
    ) -> Result<()> {
        match self.stored(StoreMode::Set, key.as_ref(), value.as_ref(), flags, exptime)? {
            true => Ok(()),
            false => Err(Error::NotStored),
        }
    }

    /// Stores only if `key` is absent; `false` if it existed.
    ///
    /// # Errors
    /// As [`McClient::set`].
    pub fn add(
        &mut self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        flags: u32,
        exptime: i64,
    ) -> Result<bool> {
        self.stored(StoreMode::Add, key.as_ref(), value.as_ref(), flags, exptime)
    }

    /// Stores only if `key` is present; `false` if it was missing.
    ///
    /// # Errors
    /// As [`McClient::set`].
    pub fn replace(
        &mut self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        flags: u32,
        exptime: i64,
    ) -> Result<bool> {
        self.stored(
            StoreMode::Replace,
            key.as_ref(),
            value.as_ref(),
            flags,
            exptime,
        )
    }

    /// Appends to an existing value; `false` if the key was missing.
    ///
    /// # Errors
    /// As [`McClient::set`].
    pub fn append(&mut self, key: impl AsRef<[u8]>, data: impl AsRef<[u8]>) -> Result<bool> {
        self.stored(StoreMode::Append, key.as_ref(), data.as_ref(), 0, 0)
    }

    /// Prepends to an existing value; `false` if the key was missing.
    ///
    /// # Errors
    /// As [`McClient::set`].
    pub fn prepend(&mut self, key: impl AsRef<[u8]>, data: impl AsRef<[u8]>) -> Result<bool> {
        self.stored(StoreMode::Prepend, key.as_ref(), data.as_ref(), 0, 0)
    }

    /// Stores only if the item's cas is still `cas` (from [`McClient::gets`]).
    ///
    /// # Errors
    /// As [`McClient::set`].
    pub fn cas(
        &mut self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        flags: u32,
        exptime: i64,
        cas: u64,
    ) -> Result<McCasOutcome> {
        match self.storage(
            StoreMode::Cas(cas),
            key.as_ref(),
            value.as_ref(),
            flags,
            exptime,
        )? {
            Reply::Stored => Ok(McCasOutcome::Stored),
            Reply::Exists => Ok(McCasOutcome::Exists),
            Reply::NotFound => Ok(McCasOutcome::NotFound),
            other => Err(Error::Protocol(format!("{other:?} in reply to cas"))),
        }
    }

    fn retrieve<K: AsRef<[u8]>>(
        &mut self,
        with_cas: bool,
        exptime: Option<i64>,
        keys: &[K],
    ) -> Result<Vec<(Vec<u8>, McItem)>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut raw = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            check_key(key.as_ref())?;
            if i > 0 {
                raw.push(b' ');
            }
            raw.extend_from_slice(key.as_ref());
        }
        let keys = Keys::from_raw(&raw);
        match exptime {
            None => mc::Request::Get { with_cas, keys },
            Some(exptime) => mc::Request::GetAndTouch {
                with_cas,
                exptime,
                keys,
            },
        }
        .encode(&mut self.conn.out);
        self.conn.send()?;
        let mut items = Vec::new();
        loop {
            let line = self.reply()?;
            match parse_reply(&line) {
                Some(Reply::End) => return Ok(items),
                Some(Reply::Value {
                    key,
                    flags,
                    bytes,
                    cas,
                }) => {
                    let key = key.to_vec();
                    let value = self.conn.block(bytes)?;
                    items.push((key, McItem { value, flags, cas }));
                }
                _ => return Err(Error::Protocol(lossy(&line))),
            }
        }
    }

    /// The item of `key`, if present.
    ///
    /// # Errors
    /// [`Error::Io`] on socket errors, [`Error::Protocol`] on a reply that
    /// is not the protocol.
    pub fn get(&mut self, key: impl AsRef<[u8]>) -> Result<Option<McItem>> {
        Ok(self
            .retrieve(false, None, &[key])?
            .pop()
            .map(|(_, item)| item))
    }

    /// The item of `key` with its cas, if present.
    ///
    /// # Errors
    /// As [`McClient::get`].
    pub fn gets(&mut self, key: impl AsRef<[u8]>) -> Result<Option<McItem>> {
        Ok(self
            .retrieve(true, None, &[key])?
            .pop()
            .map(|(_, item)| item))
    }

    /// The items of the keys present among `keys` (misses are omitted), in
    /// one round trip; with their cas if `with_cas`.
    ///
    /// # Errors
    /// As [`McClient::get`].
    pub fn get_many<K: AsRef<[u8]>>(
        &mut self,
        keys: &[K],
        with_cas: bool,
    ) -> Result<Vec<(Vec<u8>, McItem)>> {
        self.retrieve(with_cas, None, keys)
    }

    /// Gets the item of `key` and sets its expiry (`gat`).
    ///
    /// # Errors
    /// As [`McClient::get`].
    pub fn gat(&mut self, key: impl AsRef<[u8]>, exptime: i64) -> Result<Option<McItem>> {
        Ok(self
            .retrieve(true, Some(exptime), &[key])?
            .pop()
            .map(|(_, item)| item))
    }

    /// Sends `request` and reads its one-line reply; `accept` turns the
    /// replies it expects into the result, anything else is a protocol
    /// error naming `what`.
    fn simple<T>(
        &mut self,
        request: mc::Request<'_>,
        what: &str,
        accept: impl FnOnce(&Reply<'_>) -> Option<T>,
    ) -> Result<T> {
        request.encode(&mut self.conn.out);
        self.conn.send()?;
        let line = self.reply()?;
        parse_reply(&line)
            .as_ref()
            .and_then(accept)
            .ok_or_else(|| Error::Protocol(format!("{:?} in reply to {what}", lossy(&line))))
    }

    /// Deletes `key`; `true` if it existed.
    ///
    /// # Errors
    /// As [`McClient::set`].
    pub fn delete(&mut self, key: impl AsRef<[u8]>) -> Result<bool> {
        let key = key.as_ref();
        check_key(key)?;
        let request = mc::Request::Delete {
            key,
            noreply: false,
        };
        self.simple(request, "delete", |r| match r {
            Reply::Deleted => Some(true),
            Reply::NotFound => Some(false),
            _ => None,
        })
    }

    fn counter(&mut self, incr: bool, key: &[u8], delta: u64) -> Result<Option<u64>> {
        check_key(key)?;
        let request = mc::Request::Counter {
            incr,
            key,
            delta,
            noreply: false,
        };
        self.simple(request, "incr/decr", |r| match r {
            Reply::Number(n) => Some(Some(*n)),
            Reply::NotFound => Some(None),
            _ => None,
        })
    }

    /// Adds `delta` to a decimal counter (wrapping at 2^64); the new value,
    /// or `None` if the key is missing.
    ///
    /// # Errors
    /// [`Error::Rejected`] when the value is not a number; otherwise as
    /// [`McClient::set`].
    pub fn incr(&mut self, key: impl AsRef<[u8]>, delta: u64) -> Result<Option<u64>> {
        self.counter(true, key.as_ref(), delta)
    }

    /// Subtracts `delta` from a decimal counter (stopping at 0); the new
    /// value, or `None` if the key is missing.
    ///
    /// # Errors
    /// As [`McClient::incr`].
    pub fn decr(&mut self, key: impl AsRef<[u8]>, delta: u64) -> Result<Option<u64>> {
        self.counter(false, key.as_ref(), delta)
    }

    /// Sets a new expiry on `key`; `false` if it is missing.
    ///
    /// # Errors
    /// As [`McClient::set`].
    pub fn touch(&mut self, key: impl AsRef<[u8]>, exptime: i64) -> Result<bool> {
        let key = key.as_ref();
        check_key(key)?;
        let request = mc::Request::Touch {
            key,
            exptime,
            noreply: false,
        };
        self.simple(request, "touch", |r| match r {
            Reply::Touched => Some(true),
            Reply::NotFound => Some(false),
            _ => None,
        })
    }

    /// Invalidates every item, `delay` seconds from now (0: now).
    ///
    /// # Errors
    /// As [`McClient::set`].
    pub fn flush_all(&mut self, delay: i64) -> Result<()> {
        let request = mc::Request::FlushAll {
            delay,
            noreply: false,
        };
        self.simple(request, "flush_all", |r| {
            matches!(r, Reply::Ok).then_some(())
        })
    }

    /// The server's version string.
    ///
    /// # Errors
    /// [`Error::Io`] on socket errors, [`Error::Protocol`] on a bad reply.
    pub fn version(&mut self) -> Result<String> {
        mc::Request::Version.encode(&mut self.conn.out);
        self.conn.send()?;
        let line = self.reply()?;
        match parse_reply(&line) {
            Some(Reply::Version(v)) => Ok(lossy(v)),
            _ => Err(Error::Protocol(lossy(&line))),
        }
    }

    /// The server's `stats`, as name/value pairs in the order sent.
    ///
    /// # Errors
    /// As [`McClient::version`].
    pub fn stats(&mut self) -> Result<Vec<(String, String)>> {
        mc::Request::Stats(mc::StatsRequest::General).encode(&mut self.conn.out);
        self.conn.send()?;
        let mut stats = Vec::new();
        loop {
            let line = self.reply()?;
            match parse_reply(&line) {
                Some(Reply::End) => return Ok(stats),
                Some(Reply::Stat(name, value)) => stats.push((lossy(name), lossy(value))),
                _ => return Err(Error::Protocol(lossy(&line))),
            }
        }
    }
}
