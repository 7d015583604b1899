//! Client of the seed dialect, the mirror of the server side: it encodes
//! requests with [`crate::protocol::seed`] and decodes the replies with the
//! same module.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::protocol::seed::{self, Request, Status};
use crate::protocol::validate_key;
use crate::tls::{TlsClientStream, TlsConnector};

/// Default connect, read and write timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest reply line a client accepts (a `VALUE` line holds a key of at
/// most 250 bytes and a few numbers).
pub(crate) const MAX_REPLY_LINE_BYTES: u64 = 4096;

/// A connection to a kvstore server speaking the seed dialect.
///
/// After an error of kind [`Error::Io`] or [`Error::Protocol`] the
/// connection is in an unknown state: drop it and connect again.
pub struct Client {
    conn: Conn,
}

/// How a client connects: the timeout of the connect and of every read and
/// write, TLS, and the credentials it authenticates with.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Timeout of the connect and of every read and write.
    pub timeout: Duration,
    /// TLS: the connector, and the name the server's certificate must be
    /// valid for (a DNS name or an IP address).
    pub tls: Option<(TlsConnector, String)>,
    /// Credentials to authenticate with right after connecting (a server
    /// started with `--auth-file` requires them).
    pub credentials: Option<Credentials>,
}

/// A user name and password for a server's auth file.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user name (no spaces or control bytes).
    pub user: String,
    /// The password (no spaces or control bytes).
    pub password: String,
}

impl Credentials {
    /// `user` with `password`.
    pub fn new(user: impl Into<String>, password: impl Into<String>) -> Credentials {
        Credentials {
            user: user.into(),
            password: password.into(),
        }
    }

    /// Both parts must be single protocol tokens: the text protocols
    /// carry them separated by a space.
    pub(crate) fn check(&self) -> Result<()> {
        let token = |s: &str| !s.is_empty() && s.bytes().all(|b| b > b' ' && b != 0x7f);
        if token(&self.user) && token(&self.password) {
            Ok(())
        } else {
            Err(Error::InvalidRequest(
                "user name and password must be non-empty and hold no spaces or control bytes"
                    .into(),
            ))
        }
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the password.
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl Default for ConnectOptions {
    fn default() -> ConnectOptions {
        ConnectOptions::with_timeout(DEFAULT_TIMEOUT)
    }
}

impl ConnectOptions {
    /// Plain TCP with `timeout`, no credentials.
    pub fn with_timeout(timeout: Duration) -> ConnectOptions {
        ConnectOptions {
            timeout,
            tls: None,
            credentials: None,
        }
    }

    /// The same options over TLS, checking the server's certificate for
    /// `server_name`.
    pub fn tls(mut self, connector: TlsConnector, server_name: impl Into<String>) -> Self {
        self.tls = Some((connector, server_name.into()));
        self
    }

    /// The same options, authenticating with `credentials`.
    pub fn credentials(mut self, credentials: Credentials) -> Self {
        self.credentials = Some(credentials);
        self
    }
}

/// The byte stream under a client: plain TCP or TLS over TCP.
pub(crate) enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsClientStream>),
}

impl Read for Transport {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => s.read(buf),
            Transport::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Transport {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => s.write(buf),
            Transport::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Transport::Plain(s) => s.flush(),
            Transport::Tls(s) => s.flush(),
        }
    }
}

/// A buffered connection with its peer's name for error messages.
pub(crate) struct Conn {
    pub(crate) reader: BufReader<Transport>,
    pub(crate) out: Vec<u8>,
    pub(crate) addr: String,
}

impl Conn {
    pub(crate) fn connect(addr: impl ToSocketAddrs, options: &ConnectOptions) -> Result<Conn> {
        let timeout = options.timeout;
        let addrs: Vec<_> = addr
            .to_socket_addrs()
            .map_err(|source| Error::Connect {
                addr: "(unresolved address)".into(),
                source,
            })?
            .collect();
        let mut last = None;
        for a in &addrs {
            match TcpStream::connect_timeout(a, timeout) {
                Ok(stream) => {
                    let name = a.to_string();
                    let io = |source| Error::Connect {
                        addr: name.clone(),
                        source,
                    };
                    stream.set_read_timeout(Some(timeout)).map_err(io)?;
                    stream.set_write_timeout(Some(timeout)).map_err(io)?;
                    stream.set_nodelay(true).map_err(io)?;
                    let transport = match &options.tls {
                        None => Transport::Plain(stream),
                        Some((connector, server_name)) => {
                            let mut tls = connector.connect(server_name, stream)?;
                            // Handshake now, so that a refused certificate
                            // is a connect error, not the first request's.
                            while tls.conn.is_handshaking() {
                                tls.conn.complete_io(&mut tls.sock).map_err(io)?;
                            }
                            Transport::Tls(Box::new(tls))
                        }
                    };
                    return Ok(Conn {
                        reader: BufReader::new(transport),
                        out: Vec::new(),
                        addr: name,
                    });
                }
                Err(e) => last = Some((a.to_string(), e)),
            }
        }
        let (addr, source) = last.unwrap_or_else(|| {
            (
                "(no address)".into(),
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "address resolved to nothing",
                ),
            )
        });
        Err(Error::Connect { addr, source })
    }

    fn io(&self, source: std::io::Error) -> Error {
        Error::Io {
            addr: self.addr.clone(),
            source,
        }
    }

    /// Sends an authentication `request` and reads its one-line verdict:
    /// `ok`, or `refused` ([`Error::Auth`]).
    pub(crate) fn authenticate(
        &mut self,
        request: &[u8],
        ok: &[u8],
        refused: &[u8],
        credentials: &Credentials,
    ) -> Result<()> {
        self.out.extend_from_slice(request);
        self.send()?;
        let line = self.line()?;
        if line == ok {
            Ok(())
        } else if line == refused {
            Err(Error::Auth(format!(
                "{} refused the credentials of user {}",
                self.addr, credentials.user
            )))
        } else {
            Err(Error::Protocol(format!(
                "{} in reply to the authentication",
                lossy(&line)
            )))
        }
    }

    /// Sends the buffered request bytes.
    pub(crate) fn send(&mut self) -> Result<()> {
        let stream = self.reader.get_mut();
        let res = stream.write_all(&self.out).and_then(|()| stream.flush());
        self.out.clear();
        res.map_err(|e| self.io(e))
    }

    /// Reads one reply line, terminator stripped.
    pub(crate) fn line(&mut self) -> Result<Vec<u8>> {
        let mut line = Vec::new();
        let n = (&mut self.reader)
            .take(MAX_REPLY_LINE_BYTES)
            .read_until(b'\n', &mut line)
            .map_err(|e| self.io(e))?;
        if n == 0 {
            return Err(self.io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "server closed the connection",
            )));
        }
        if line.pop() != Some(b'\n') {
            return Err(Error::Protocol(format!(
                "reply line without end or longer than {MAX_REPLY_LINE_BYTES} bytes"
            )));
        }
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        Ok(line)
    }

    /// Reads a data block of `len` bytes and its `\r\n`.
    pub(crate) fn block(&mut self, len: usize) -> Result<Vec<u8>> {
        if len > crate::server::MAX_VALUE_BYTES_LIMIT {
            return Err(Error::Protocol(format!(
                "server announced a value of {len} bytes"
            )));
        }
        let mut data = vec![0u8; len + 2];
        self.reader.read_exact(&mut data).map_err(|e| self.io(e))?;
        if !data.ends_with(b"\r\n") {
            return Err(Error::Protocol("data block not followed by \\r\\n".into()));
        }
        data.truncate(len);
        Ok(data)
    }
}

pub(crate) fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub(crate) fn check_key(key: &[u8]) -> Result<()> {
    validate_key(key).map_err(|e| Error::InvalidRequest(format!("{e}: {:?}", lossy(key))))
}

impl Client {
    /// Connects with the default timeouts (connect, read and write: 10 s).
    ///
    /// # Errors
    /// [`Error::Connect`] when no address answers.
    pub fn connect(addr: impl ToSocketAddrs) -> Result<Client> {
        Client::connect_timeout(addr, DEFAULT_TIMEOUT)
    }

    /// Connects with `timeout` for the connect and for every read and write.
    ///
    /// # Errors
    /// [`Error::Connect`] when no address answers.
    pub fn connect_timeout(addr: impl ToSocketAddrs, timeout: Duration) -> Result<Client> {
        Client::connect_with(addr, &ConnectOptions::with_timeout(timeout))
    }

    /// Connects as `options` say (timeout, TLS).
    ///
    /// # Errors
    /// [`Error::Connect`] when no address answers or the TLS handshake
    /// fails (the server's certificate is refused, or it refuses ours).
    ///
    /// With credentials, it authenticates first with the seed dialect's
    /// `auth` command; [`Error::Auth`] if the server refuses them.
    pub fn connect_with(addr: impl ToSocketAddrs, options: &ConnectOptions) -> Result<Client> {
        if let Some(credentials) = &options.credentials {
            credentials.check()?;
        }
        let mut client = Client {
            conn: Conn::connect(addr, options)?,
        };
        if let Some(credentials) = &options.credentials {
            client.authenticate(credentials)?;
        }
        Ok(client)
    }

    /// Sends `auth <user> <password>` and reads the verdict.
    fn authenticate(&mut self, credentials: &Credentials) -> Result<()> {
        let mut request = Vec::new();
        Request::Auth {
            user: credentials.user.as_bytes(),
            password: credentials.password.as_bytes(),
        }
        .encode(&mut request);
        let line = |reply: &'static [u8]| reply.strip_suffix(b"\r\n").unwrap_or(reply);
        self.conn.authenticate(
            &request,
            line(seed::AUTHENTICATED),
            line(seed::AUTH_FAILED),
            credentials,
        )
    }

    /// The address of the server.
    pub fn peer(&self) -> &str {
        &self.conn.addr
    }

    fn auth_required(&self) -> Error {
        Error::Auth(format!(
            "{} requires authentication (connect with credentials)",
            self.conn.addr
        ))
    }

    fn status(&mut self) -> Result<Status> {
        let line = self.conn.line()?;
        match seed::parse_status(&line) {
            Some(Status::Invalid) => Err(Error::Rejected(lossy(&line))),
            Some(Status::NotStored) => Err(Error::NotStored),
            Some(Status::AuthRequired) => Err(self.auth_required()),
            Some(status) => Ok(status),
            None => Err(Error::Protocol(lossy(&line))),
        }
    }

    /// Stores `value` under `key`.
    ///
    /// # Errors
    /// [`Error::InvalidRequest`] for a key the protocol cannot carry,
    /// [`Error::NotStored`] when the server could not store it (too large,
    /// disk full), [`Error::Io`] on socket errors and timeouts.
    pub fn set(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<()> {
        let key = key.as_ref();
        check_key(key)?;
        Request::Set {
            key,
            value: value.as_ref(),
        }
        .encode(&mut self.conn.out);
        self.conn.send()?;
        match self.status()? {
            Status::Stored => Ok(()),
            other => Err(Error::Protocol(format!("{other:?} in reply to set"))),
        }
    }

    /// The value of `key`; the seed dialect answers a missing key with an
    /// empty value, so a missing key reads as empty.
    ///
    /// # Errors
    /// As [`Client::get_many`].
    pub fn get(&mut self, key: impl AsRef<[u8]>) -> Result<Vec<u8>> {
        let mut values = self.get_many(&[key])?;
        values
            .pop()
            .ok_or_else(|| Error::Protocol("no value in reply to get".into()))
    }

    /// The values of several keys, in order, in one round trip.
    ///
    /// # Errors
    /// [`Error::InvalidRequest`] for a bad key, [`Error::Protocol`] if the
    /// reply does not match the request, [`Error::Io`] on socket errors.
    pub fn get_many<K: AsRef<[u8]>>(&mut self, keys: &[K]) -> Result<Vec<Vec<u8>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        for key in keys {
            check_key(key.as_ref())?;
        }
        seed::encode_get(&mut self.conn.out, keys.iter().map(|k| k.as_ref()));
        self.conn.send()?;
        let mut values = Vec::with_capacity(keys.len());
        for key in keys {
            let line = self.conn.line()?;
            let Some((got, len)) = seed::parse_value_header(&line) else {
                return match seed::parse_status(&line) {
                    Some(Status::NotStored) => Err(Error::NotStored),
                    Some(Status::Invalid) => Err(Error::Rejected(lossy(&line))),
                    Some(Status::AuthRequired) => Err(self.auth_required()),
                    _ => Err(Error::Protocol(lossy(&line))),
                };
            };
            if got != key.as_ref() {
                return Err(Error::Protocol(format!(
                    "value for key {:?} where {:?} was expected",
                    lossy(got),
                    lossy(key.as_ref())
                )));
            }
            values.push(self.conn.block(len)?);
        }
        match self.status()? {
            Status::End => Ok(values),
            other => Err(Error::Protocol(format!("{other:?} instead of END"))),
        }
    }

    /// Deletes `key`; `true` if it existed.
    ///
    /// # Errors
    /// [`Error::InvalidRequest`] for a bad key, [`Error::NotStored`] when
    /// the store failed, [`Error::Io`] on socket errors.
    pub fn delete(&mut self, key: impl AsRef<[u8]>) -> Result<bool> {
        let key = key.as_ref();
        check_key(key)?;
        Request::Delete { key }.encode(&mut self.conn.out);
        self.conn.send()?;
        match self.status()? {
            Status::Deleted => Ok(true),
            Status::NotFound => Ok(false),
            other => Err(Error::Protocol(format!("{other:?} in reply to delete"))),
        }
    }

    /// Deletes every key.
    ///
    /// # Errors
    /// [`Error::NotStored`] when the store failed, [`Error::Io`] on socket
    /// errors.
    pub fn clear(&mut self) -> Result<()> {
        Request::Clear.encode(&mut self.conn.out);
        self.conn.send()?;
        match self.status()? {
            Status::Deleted => Ok(()),
            other => Err(Error::Protocol(format!("{other:?} in reply to delete"))),
        }
    }
}
