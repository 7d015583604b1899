//! The error type of the server and clients.

use std::io;

/// What can go wrong in the server or a client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Connecting to the server failed.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The address tried.
        addr: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A socket error after connecting (including timeouts).
    #[error("i/o error talking to {addr}: {source}")]
    Io {
        /// The peer.
        addr: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The server answered `NOT-STORED` / `SERVER_ERROR`.
    #[error("server could not store the value")]
    NotStored,
    /// The server rejected the request (`INVALID REQUEST`, `CLIENT_ERROR`, `ERROR`).
    #[error("server rejected the request: {0}")]
    Rejected(String),
    /// The server sent something that is not the protocol.
    #[error("unexpected reply from server: {0}")]
    Protocol(String),
    /// The request cannot be sent (for example a key with a space).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// Binding a listener failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Protected mode: the server would listen beyond loopback with
    /// nothing keeping strangers out; the message lists the choices.
    #[error("{0}")]
    Unprotected(String),
    /// TLS could not be set up: a certificate, key or CA file that cannot
    /// be read or used, or a server name that is not valid.
    #[error("tls: {0}")]
    Tls(String),
    /// An auth file that cannot be used, or credentials the server refused.
    #[error("{0}")]
    Auth(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] kvstore_core::Error),
}

/// `Result` with [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
