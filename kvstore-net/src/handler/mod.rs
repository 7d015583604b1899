//! The dialects' connection handlers: each parses one request, maps it to
//! [`Command`](crate::exec::Command)s for the [`Executor`], and encodes the
//! [`Response`](crate::exec::Response)s (see `exec.rs` for the shape every
//! dialect follows), one file per dialect: `seed.rs`, `text.rs` (memcached's
//! text protocol), `meta.rs` (memcached's meta commands, which share the
//! text protocol's connections: `text.rs` hands them their lines),
//! `binary.rs` (memcached's binary protocol). This file holds what they
//! share and the memcached port's
//! choice of dialect by the first byte of a connection. Client mistakes get
//! the dialect's error reply; store failures get `NOT-STORED` (seed) or
//! `SERVER_ERROR <reason>` (memcached) and are logged by the executor.

mod binary;
mod meta;
mod seed;
mod text;

pub(crate) use binary::BinaryHandler;
pub(crate) use seed::SeedHandler;
pub(crate) use text::McHandler;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use kvstore_core::item::unix_now;

use crate::auth::AuthFile;
use crate::connection::{Handler, IoCounts, Output, Step};
use crate::exec::Executor;
use crate::protocol::binary::REQUEST_MAGIC;
use crate::protocol::{KeyPolicy, Recovery, Reject};
use crate::server::MemcachedProtocol;
use crate::tls::TlsAcceptor;

/// What every dialect's handler shares.
#[derive(Clone)]
pub(crate) struct Context {
    /// The executor, shared by every connection.
    pub exec: Arc<Executor>,
    /// Largest value accepted.
    pub max_value_bytes: usize,
    /// Which bytes keys may hold.
    pub keys: KeyPolicy,
    /// When the connection last received bytes (`stats conns`).
    pub last_active: Arc<AtomicU64>,
    /// The credentials a connection must present before anything else
    /// (`None`: no authentication).
    pub auth: Option<Arc<AuthFile>>,
    /// The server's TLS files, for `refresh_certs` (`None`: plain TCP).
    pub tls: Option<Arc<TlsAcceptor>>,
    /// The client's address, for the log.
    pub peer: SocketAddr,
}

impl Context {
    /// Whether a new connection starts unauthenticated.
    pub(crate) fn auth_required(&self) -> bool {
        self.auth.is_some()
    }

    /// Checks credentials against the auth file, counts the attempt
    /// (`auth_cmds`, `auth_errors`) and logs a failure with the peer's
    /// address and the user name (never the password). Without an auth
    /// file every attempt fails: there is nothing to check against.
    pub(crate) fn authenticate(&self, dialect: &str, user: &[u8], password: &[u8]) -> bool {
        let ok = self
            .auth
            .as_ref()
            .is_some_and(|auth| auth.check(user, password));
        self.exec.stats().auth_attempt(ok);
        if ok {
            log::debug!(
                "{}: authenticated as {:?} ({dialect})",
                self.peer,
                String::from_utf8_lossy(user)
            );
        } else if self.auth.is_none() {
            log::warn!(
                "{}: authentication as {:?} refused: the server has no auth file ({dialect})",
                self.peer,
                String::from_utf8_lossy(user)
            );
        } else {
            log::warn!(
                "{}: authentication as {:?} failed ({dialect})",
                self.peer,
                String::from_utf8_lossy(user)
            );
        }
        ok
    }

    /// Adds a batch's socket figures to the statistics and marks the
    /// connection active.
    pub(crate) fn batch_done(&self, io: &IoCounts) {
        if io.bytes_read > 0 {
            self.last_active.store(unix_now(), Relaxed);
        }
        self.exec
            .stats()
            .add_io(io.reads, io.bytes_read, io.writes, io.bytes_written);
    }
}

/// Appends a rejection's reply and says how the connection goes on.
pub(crate) fn reject_step(r: Reject, out: &mut Vec<u8>) -> Step {
    out.extend_from_slice(r.reply);
    match r.recovery {
        Recovery::Discard(n) => Step::Discard(n),
        Recovery::Close => Step::Close,
    }
}

/// A connection of the memcached port: its first byte picks the dialect,
/// as memcached does (`0x80` is the binary protocol, anything else text),
/// unless the server was told to speak only one of them.
pub(crate) struct McPortHandler {
    protocol: MemcachedProtocol,
    state: McPortState,
}

enum McPortState {
    /// No byte seen yet.
    Sniffing(Context),
    Text(McHandler),
    Binary(BinaryHandler),
}

impl McPortHandler {
    /// A connection that will speak `protocol`.
    pub(crate) fn new(ctx: Context, protocol: MemcachedProtocol) -> McPortHandler {
        McPortHandler {
            protocol,
            state: McPortState::Sniffing(ctx),
        }
    }
}

impl Handler for McPortHandler {
    fn step(&mut self, buf: &[u8], out: &mut Output<'_>) -> io::Result<Step> {
        if let McPortState::Sniffing(ctx) = &self.state {
            // `Ascii` reads binary bytes as text, as a memcached started
            // with `-B ascii` does; `Binary` closes a text connection at its
            // first byte (not the binary magic), as `-B binary` does.
            let binary = match self.protocol {
                MemcachedProtocol::Ascii => false,
                MemcachedProtocol::Binary => true,
                MemcachedProtocol::Auto => buf.first() == Some(&REQUEST_MAGIC),
            };
            let ctx = ctx.clone();
            self.state = if binary {
                McPortState::Binary(BinaryHandler::new(ctx))
            } else {
                McPortState::Text(McHandler::new(ctx))
            };
        }
        match &mut self.state {
            McPortState::Sniffing(_) => Ok(Step::Incomplete),
            McPortState::Text(h) => h.step(buf, out),
            McPortState::Binary(h) => h.step(buf, out),
        }
    }

    fn batch_done(&mut self, io: &IoCounts) {
        match &mut self.state {
            McPortState::Sniffing(ctx) => ctx.batch_done(io),
            McPortState::Text(h) => h.batch_done(io),
            McPortState::Binary(h) => h.batch_done(io),
        }
    }
}
