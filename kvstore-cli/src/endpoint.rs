//! Where the server is, and connecting to it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use kvstore_net::tls::TlsConnector;
use kvstore_net::{Client, ConnectOptions, Credentials};

use crate::backoff::Backoff;

use crate::error::{Error, Result};

/// Default `--timeout`: 10 s for the connect and for every read and write.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// A server address, the timeout to use with it, and how to secure the
/// connection (TLS, credentials).
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Host name or IP address.
    pub host: String,
    /// TCP port of the seed dialect.
    pub port: u16,
    /// Timeout for the connect and for every read and write.
    pub timeout: Duration,
    /// TLS; the server's certificate is checked against [`Endpoint::host`].
    pub tls: Option<TlsConnector>,
    /// Credentials sent right after connecting.
    pub credentials: Option<Credentials>,
}

impl Endpoint {
    /// An endpoint with the default timeout.
    pub fn new(host: impl Into<String>, port: u16) -> Endpoint {
        Endpoint {
            host: host.into(),
            port,
            timeout: DEFAULT_TIMEOUT,
            tls: None,
            credentials: None,
        }
    }

    /// The endpoint of a socket address (for example a server's
    /// `seed_addr()`), with the default timeout.
    pub fn from_socket_addr(addr: SocketAddr) -> Endpoint {
        Endpoint::new(addr.ip().to_string(), addr.port())
    }

    /// The same endpoint with another timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Endpoint {
        self.timeout = timeout;
        self
    }

    /// `host:port`, with brackets around an IPv6 address.
    pub fn addr(&self) -> String {
        if self.host.contains(':') && !self.host.starts_with('[') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Opens one connection.
    ///
    /// # Errors
    ///
    /// [`Error::Connect`] naming `host:port` when the server cannot be
    /// reached within the timeout.
    pub fn connect(&self) -> Result<Client> {
        let mut options = ConnectOptions::with_timeout(self.timeout);
        if let Some(tls) = &self.tls {
            options = options.tls(tls.clone(), self.host.clone());
        }
        options.credentials = self.credentials.clone();
        Client::connect_with((self.host.as_str(), self.port), &options).map_err(|e| self.error(e))
    }

    /// Opens one connection, retrying with exponential backoff (10 ms
    /// doubling up to 1 s) while `attempts` and the timeout allow: for many
    /// clients connecting at once, when the server's listen backlog
    /// overflows.
    ///
    /// # Errors
    ///
    /// The last connect error, as [`Endpoint::connect`].
    pub fn connect_with_retries(&self, attempts: u32) -> Result<Client> {
        let deadline = Instant::now() + self.timeout;
        let mut backoff = Backoff::new(Duration::from_millis(10), Duration::from_secs(1));
        let mut attempt = 1;
        loop {
            match self.connect() {
                Ok(client) => return Ok(client),
                Err(err)
                    if attempt >= attempts.max(1)
                        || Instant::now() + backoff.bound() > deadline =>
                {
                    return Err(err)
                }
                Err(_) => {
                    std::thread::sleep(backoff.delay());
                    attempt += 1;
                }
            }
        }
    }

    /// Translates a client error into one naming this endpoint.
    pub fn error(&self, err: kvstore_net::Error) -> Error {
        Error::from_net(&self.addr(), self.timeout, err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addr_brackets_ipv6() {
        assert_eq!(Endpoint::new("127.0.0.1", 7878).addr(), "127.0.0.1:7878");
        assert_eq!(Endpoint::new("::1", 7878).addr(), "[::1]:7878");
        assert_eq!(Endpoint::new("localhost", 1).addr(), "localhost:1");
    }

    #[test]
    fn from_socket_addr_keeps_ip_and_port() {
        let addr: SocketAddr = "127.0.0.1:4242".parse().unwrap();
        let ep = Endpoint::from_socket_addr(addr);
        assert_eq!(ep.addr(), "127.0.0.1:4242");
        assert_eq!(ep.timeout, DEFAULT_TIMEOUT);
    }
}
