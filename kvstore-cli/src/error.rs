//! The one error type of the command-line client.

use std::io;
use std::time::Duration;

/// Everything that can make a `kvstore-cli` command fail.
///
/// Every message is one lowercase line; those about the server name its
/// `host:port`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The TCP connection could not be made.
    #[error("cannot connect to {addr}: {reason}")]
    Connect {
        /// The server, as `host:port`.
        addr: String,
        /// Why, in words (for example "connection refused").
        reason: String,
    },
    /// The server did not answer within the timeout.
    #[error("timed out after {} talking to {addr}", fmt_secs(*.timeout))]
    Timeout {
        /// The server, as `host:port`.
        addr: String,
        /// The timeout that expired.
        timeout: Duration,
    },
    /// The connection broke after it was made.
    #[error("connection to {addr} failed: {reason}")]
    Connection {
        /// The server, as `host:port`.
        addr: String,
        /// Why, in words.
        reason: String,
    },
    /// The server answered with an error or with something unexpected.
    #[error("server {addr} {what}")]
    Server {
        /// The server, as `host:port`.
        addr: String,
        /// What it did (for example "could not store the value").
        what: String,
    },
    /// The request cannot be sent as given (for example a key with a space).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// `verify` or `repair` found the store held by a running server.
    #[error("cannot {action} {dir} while it is in use: {source}; stop the server first")]
    InUse {
        /// "verify" or "repair".
        action: &'static str,
        /// The store directory.
        dir: String,
        /// The lock error of the store.
        #[source]
        source: kvstore_core::Error,
    },
    /// The store failed (verify, repair, or the driver's own store).
    #[error(transparent)]
    Store(#[from] kvstore_core::Error),
    /// Starting or stopping an in-process server failed.
    #[error("server: {0}")]
    ServerStart(kvstore_net::Error),
    /// Reading standard input, writing standard output, or a similar local
    /// operation failed.
    #[error("cannot {action}: {}", describe_io(.source))]
    Local {
        /// What was being done, for example "read the value from stdin".
        action: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The arguments do not make sense together.
    #[error("{0}")]
    Usage(String),
    /// The user declined a confirmation.
    #[error("aborted: nothing was deleted")]
    Aborted,
}

/// `Result` with [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Translates an error of [`kvstore_net::Client`] into one that names
    /// the server `addr` (`host:port`); `timeout` is the one the client was
    /// given, for the message.
    pub fn from_net(addr: &str, timeout: Duration, err: kvstore_net::Error) -> Error {
        use kvstore_net::Error as Net;
        let addr = addr.to_string();
        match err {
            Net::Connect { source, .. } => {
                let reason = if is_timeout(&source) {
                    format!("timed out after {}", fmt_secs(timeout))
                } else {
                    describe_io(&source)
                };
                Error::Connect { addr, reason }
            }
            Net::Io { source, .. } if is_timeout(&source) => Error::Timeout { addr, timeout },
            Net::Io { source, .. } => Error::Connection {
                addr,
                reason: describe_io(&source),
            },
            Net::NotStored => Error::Server {
                addr,
                what: "could not store the value".to_string(),
            },
            Net::Rejected(reply) => Error::Server {
                addr,
                what: format!("rejected the request: {}", reply.trim_end()),
            },
            Net::Protocol(what) => Error::Server {
                addr,
                what: format!("sent an unexpected reply: {what}"),
            },
            Net::InvalidRequest(what) => Error::InvalidRequest(what),
            other => Error::Server {
                addr,
                what: format!("failed: {other}"),
            },
        }
    }

    /// Whether the connection to the server is gone or unusable, so that a
    /// session cannot go on (as opposed to one rejected request).
    pub fn is_connection_lost(&self) -> bool {
        matches!(
            self,
            Error::Connect { .. } | Error::Timeout { .. } | Error::Connection { .. }
        )
    }

    /// Shorthand for [`Error::Local`].
    pub fn local(action: impl Into<String>, source: io::Error) -> Error {
        Error::Local {
            action: action.into(),
            source,
        }
    }
}

fn is_timeout(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
    )
}

/// An I/O error in lowercase words, without the "(os error N)" suffix.
pub fn describe_io(err: &io::Error) -> String {
    use io::ErrorKind as K;
    let words = match err.kind() {
        K::ConnectionRefused => "connection refused",
        K::ConnectionReset => "connection reset by peer",
        K::ConnectionAborted => "connection aborted",
        K::BrokenPipe | K::UnexpectedEof => "connection closed by the server",
        K::TimedOut | K::WouldBlock => "timed out",
        K::AddrNotAvailable => "address not available",
        K::NotConnected => "not connected",
        K::PermissionDenied => "permission denied",
        _ => {
            let text = err.to_string();
            let text = match text.find(" (os error") {
                Some(at) => text[..at].to_string(),
                None => text,
            };
            let mut chars = text.chars();
            return match chars.next() {
                Some(first) => first.to_lowercase().chain(chars).collect(),
                None => "unknown error".to_string(),
            };
        }
    };
    words.to_string()
}

/// `1.5s`, `10s`, `250ms`.
pub(crate) fn fmt_secs(d: Duration) -> String {
    if d.as_millis() < 1000 && d.subsec_millis() != 0 {
        format!("{}ms", d.as_millis())
    } else if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_connect_names_the_address() {
        let err = Error::from_net(
            "127.0.0.1:9",
            Duration::from_secs(10),
            kvstore_net::Error::Connect {
                addr: "whatever".into(),
                source: io::Error::from(io::ErrorKind::ConnectionRefused),
            },
        );
        assert_eq!(
            err.to_string(),
            "cannot connect to 127.0.0.1:9: connection refused"
        );
        assert!(err.is_connection_lost());
    }

    #[test]
    fn read_timeout_becomes_timeout() {
        let err = Error::from_net(
            "h:1",
            Duration::from_millis(1500),
            kvstore_net::Error::Io {
                addr: "h:1".into(),
                source: io::Error::from(io::ErrorKind::WouldBlock),
            },
        );
        assert_eq!(err.to_string(), "timed out after 1.5s talking to h:1");
    }

    #[test]
    fn rejected_names_server_and_reply() {
        let err = Error::from_net(
            "h:1",
            Duration::from_secs(1),
            kvstore_net::Error::Rejected("INVALID REQUEST".into()),
        );
        assert_eq!(
            err.to_string(),
            "server h:1 rejected the request: INVALID REQUEST"
        );
        assert!(!err.is_connection_lost());
    }

    #[test]
    fn os_error_suffix_is_dropped_and_lowercased() {
        let err = io::Error::from_raw_os_error(libc::ENOSPC);
        let text = describe_io(&err);
        assert!(!text.contains("os error"), "{text}");
        assert!(text.starts_with(|c: char| c.is_lowercase()), "{text}");
    }

    #[test]
    fn durations_format_compactly() {
        assert_eq!(fmt_secs(Duration::from_secs(10)), "10s");
        assert_eq!(fmt_secs(Duration::from_millis(250)), "250ms");
        assert_eq!(fmt_secs(Duration::from_millis(2500)), "2.5s");
    }
}
