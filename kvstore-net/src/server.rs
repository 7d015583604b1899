//! Listeners, connection threads and shutdown.
//!
//! Each listener has one accept thread; each connection gets its own
//! thread with a small stack ([`CONNECTION_STACK_BYTES`]), counted by a
//! guard that releases its slot on drop. Over `max_connections` a new
//! connection gets its dialect's error line and is closed.
//!
//! Shutdown order: set the flag, wake the blocking accepts, stop accepting,
//! stop reading (requests already received are answered), wait for the
//! connection threads, flush the store.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvstore_core::Store;

use crate::auth::AuthFile;
use crate::connection::{self, End, Handler, SharedTcp, Stream};
use crate::error::{Error, Result};
use crate::exec::{Executor, Stats};
use crate::handler::{Context, McPortHandler, SeedHandler};
use crate::protocol::{memcached, seed, KeyPolicy};
use crate::stats::Settings;
use crate::tls::TlsAcceptor;

/// Stack size of a connection thread: parsing works on heap buffers, so a
/// small stack lets 10,000 connections fit comfortably.
pub const CONNECTION_STACK_BYTES: usize = 128 * 1024;

/// The largest `max_value_bytes` honoured (as memcached's `-I` limit):
/// a value is buffered whole before it is stored, so the bound must stay
/// far below memory.
pub const MAX_VALUE_BYTES_LIMIT: usize = 1 << 30;

/// How long shutdown waits for connections to finish their requests
/// before it closes them outright.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Listen backlog (accept queue length) of the listeners. std binds with
/// 128, which a burst of connects (thousands of clients starting at once)
/// overflows: Linux then drops the SYNs and each of those clients stalls
/// for a 1 s retransmit. The kernel caps it at `net.core.somaxconn`
/// (4096 by default since Linux 5.4).
const LISTEN_BACKLOG: i32 = 4096;

/// Binds `addr` and raises its backlog to [`LISTEN_BACKLOG`].
///
/// std offers no backlog parameter; calling `listen` again on a socket
/// that already listens only updates its backlog (Linux and the BSDs),
/// which avoids building the socket by hand or a new dependency.
fn bind_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let listener = TcpListener::bind(addr)?;
    // SAFETY: listen on a valid socket fd that `listener` owns for the
    // duration of the call; it touches no memory of ours.
    if unsafe { libc::listen(listener.as_raw_fd(), LISTEN_BACKLOG) } != 0 {
        // Not fatal: the socket still listens, with std's backlog.
        log::warn!(
            "cannot raise the listen backlog of {addr} to {LISTEN_BACKLOG}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(listener)
}

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
    /// Largest value accepted (default 1 MiB; at most
    /// [`MAX_VALUE_BYTES_LIMIT`], larger settings are lowered to it).
    pub max_value_bytes: usize,
    /// Close connections idle this long (`None`: never).
    pub idle_timeout: Option<Duration>,
    /// Which protocols the memcached port speaks (default: both, told
    /// apart by each connection's first byte).
    pub memcached_protocol: MemcachedProtocol,
    /// Honour the memcached dialect's `shutdown` command (memcached's
    /// `-A`); off by default, when `shutdown` is refused.
    pub enable_shutdown: bool,
    /// TLS on every listener (default: none, plain TCP). Its files can be
    /// re-read while the server runs ([`TlsAcceptor::reload`], memcached's
    /// `refresh_certs`).
    pub tls: Option<Arc<TlsAcceptor>>,
    /// Credentials every connection must present before anything else
    /// (memcached's `-Y` file; default: none). Each dialect authenticates
    /// its own way: docs/PROTOCOL.md, "Authentication".
    pub auth: Option<Arc<AuthFile>>,
    /// Listen on a non-loopback address with neither `auth` nor client
    /// certificates (`TlsFiles::client_ca`). Off by default, when
    /// [`Server::start`] refuses such a configuration (protected mode).
    pub unprotected: bool,
}

/// Which of memcached's protocols the memcached port speaks (memcached's
/// `-B`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MemcachedProtocol {
    /// Both: a connection whose first byte is `0x80` speaks the binary
    /// protocol, any other the text protocol.
    #[default]
    Auto,
    /// The text protocol only (binary bytes get text errors).
    Ascii,
    /// The binary protocol only (a connection that does not start with
    /// `0x80` is closed).
    Binary,
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
            memcached_protocol: MemcachedProtocol::Auto,
            enable_shutdown: false,
            tls: None,
            auth: None,
            unprotected: false,
        }
    }
}

/// The server: binds its listeners and serves one store.
pub struct Server;

/// A running server; shut it down with [`ServerHandle::shutdown`], or
/// trigger the shutdown from elsewhere (a signal handler thread) with a
/// [`ShutdownTrigger`] and wait for it with [`ServerHandle::wait`].
pub struct ServerHandle {
    shared: Arc<Shared>,
    seed_addr: Option<SocketAddr>,
    memcached_addr: Option<SocketAddr>,
    acceptors: Vec<JoinHandle<()>>,
}

/// Starts the shutdown of a server from any thread; cheap to clone.
#[derive(Clone)]
pub struct ShutdownTrigger {
    shared: Arc<Shared>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dialect {
    Seed,
    Memcached,
}

impl Dialect {
    fn name(self) -> &'static str {
        match self {
            Dialect::Seed => "seed",
            Dialect::Memcached => "memcached",
        }
    }

    fn too_many_connections(self) -> &'static [u8] {
        match self {
            Dialect::Seed => seed::INVALID_REQUEST,
            Dialect::Memcached => memcached::TOO_MANY_CONNECTIONS,
        }
    }
}

/// State shared by the handle, the acceptors and the connections.
struct Shared {
    store: Arc<Store>,
    config: ServerConfig,
    keys: KeyPolicy,
    stats: Arc<Stats>,
    exec: Arc<Executor>,
    stopping: AtomicBool,
    /// Set once shutdown is triggered; `wait` blocks on it.
    triggered: Mutex<bool>,
    triggered_cv: Condvar,
    /// Live connections: id -> socket, so shutdown can stop their reads.
    /// A connection removes itself before its socket is closed, so every
    /// descriptor here is open.
    conns: Mutex<HashMap<u64, RawFd>>,
    conns_cv: Condvar,
    next_id: AtomicU64,
    /// The listeners, kept open here so that `trigger` can wake their
    /// accepts without racing a close.
    listeners: Mutex<Vec<Arc<TcpListener>>>,
}

impl Shared {
    fn conns(&self) -> MutexGuard<'_, HashMap<u64, RawFd>> {
        self.conns.lock()
    }

    fn trigger(&self) {
        if self.stopping.swap(true, SeqCst) {
            return;
        }
        self.stats.accepting.store(false, SeqCst);
        let mut t = self.triggered.lock();
        *t = true;
        self.triggered_cv.notify_all();
        drop(t);
        // Wake each blocking accept: shutting a listening socket down makes
        // accept fail at once on Linux; elsewhere, connect to it.
        let listeners = self.listeners.lock().clone();
        for listener in listeners {
            // SAFETY: the Arc keeps the listener (and so its descriptor)
            // open for the duration of the call.
            if unsafe { libc::shutdown(listener.as_raw_fd(), libc::SHUT_RD) } == 0 {
                continue;
            }
            let Ok(addr) = listener.local_addr() else {
                continue;
            };
            let target = match addr.ip() {
                IpAddr::V4(ip) if ip.is_unspecified() => {
                    SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port())
                }
                IpAddr::V6(ip) if ip.is_unspecified() => {
                    SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port())
                }
                _ => addr,
            };
            if let Err(e) = TcpStream::connect_timeout(&target, Duration::from_secs(1)) {
                log::warn!("cannot wake the listener on {addr}: {e}");
            }
        }
    }
}

/// Releases a connection's slot (and its entry in the registry) on drop.
struct ConnGuard {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let mut conns = self.shared.conns();
        conns.remove(&self.id);
        self.shared.stats.conn_closed(self.id);
        self.shared.stats.curr_connections.fetch_sub(1, SeqCst);
        self.shared.conns_cv.notify_all();
    }
}

impl Server {
    /// Binds the listeners of `config` and starts serving `store` on
    /// background threads.
    ///
    /// # Errors
    /// [`Error::Bind`] naming the address (and so the port) that could not
    /// be bound; [`Error::Unprotected`] when `config` listens beyond
    /// loopback with neither an auth file nor client certificates, unless
    /// [`ServerConfig::unprotected`] (protected mode, see
    /// [`check_protected`]).
    pub fn start(store: Arc<Store>, config: ServerConfig) -> Result<ServerHandle> {
        Server::start_with_key_policy(store, config, KeyPolicy::Strict)
    }

    /// As [`Server::start`], with keys checked under `keys` instead of
    /// docs/PROTOCOL.md's strict rule ([`KeyPolicy::MemcachedCompatible`] is for
    /// load generators such as memcaslap, whose keys hold control bytes).
    ///
    /// # Errors
    /// As [`Server::start`].
    pub fn start_with_key_policy(
        store: Arc<Store>,
        config: ServerConfig,
        keys: KeyPolicy,
    ) -> Result<ServerHandle> {
        check_protected(&config)?;
        let mut config = config;
        if config.max_value_bytes > MAX_VALUE_BYTES_LIMIT {
            log::warn!(
                "max_value_bytes {} lowered to {MAX_VALUE_BYTES_LIMIT}",
                config.max_value_bytes
            );
            config.max_value_bytes = MAX_VALUE_BYTES_LIMIT;
        }
        let bind = |port: u16| {
            let addr = SocketAddr::new(config.bind, port);
            bind_listener(addr).map_err(|source| Error::Bind {
                addr: addr.to_string(),
                source,
            })
        };
        let seed_listener = config.seed_port.map(bind).transpose()?.map(Arc::new);
        let mc_listener = config.memcached_port.map(bind).transpose()?.map(Arc::new);
        let local = |l: &Arc<TcpListener>| {
            l.local_addr().map_err(|source| Error::Bind {
                addr: config.bind.to_string(),
                source,
            })
        };
        let seed_addr = seed_listener.as_ref().map(local).transpose()?;
        let memcached_addr = mc_listener.as_ref().map(local).transpose()?;

        let stats = Arc::new(Stats::new());
        stats.set_settings(Settings {
            max_connections: config.max_connections,
            max_value_bytes: config.max_value_bytes,
            bind: config.bind.to_string(),
            memcached_port: memcached_addr.map_or(0, |a| a.port()),
            binding_protocol: match config.memcached_protocol {
                MemcachedProtocol::Auto => "auto-negotiate",
                MemcachedProtocol::Ascii => "ascii",
                MemcachedProtocol::Binary => "binary",
            },
            idle_timeout_secs: config.idle_timeout.map_or(0, |d| d.as_secs()),
            shutdown_enabled: config.enable_shutdown,
            tcp_backlog: LISTEN_BACKLOG,
        });
        for (listener, addr) in [(&seed_listener, seed_addr), (&mc_listener, memcached_addr)] {
            if let (Some(l), Some(addr)) = (listener, addr) {
                stats.add_listener(l.as_raw_fd(), addr);
            }
        }
        let exec = Arc::new(Executor::new(Arc::clone(&store), Arc::clone(&stats)));
        let shared = Arc::new(Shared {
            store,
            stats,
            exec,
            config,
            keys,
            stopping: AtomicBool::new(false),
            triggered: Mutex::new(false),
            triggered_cv: Condvar::new(),
            conns: Mutex::new(HashMap::new()),
            conns_cv: Condvar::new(),
            next_id: AtomicU64::new(0),
            listeners: Mutex::new(
                seed_listener
                    .iter()
                    .chain(mc_listener.iter())
                    .cloned()
                    .collect(),
            ),
        });
        let weak = Arc::downgrade(&shared);
        shared.exec.on_shutdown(Box::new(move || {
            if let Some(shared) = weak.upgrade() {
                shared.trigger();
            }
        }));

        let mut acceptors = Vec::new();
        for (listener, dialect) in [
            (seed_listener, Dialect::Seed),
            (mc_listener, Dialect::Memcached),
        ] {
            let Some(listener) = listener else { continue };
            let acceptor_shared = Arc::clone(&shared);
            let spawned = std::thread::Builder::new()
                .name(format!("accept-{}", dialect.name()))
                .spawn(move || accept_loop(listener, dialect, acceptor_shared));
            match spawned {
                Ok(h) => acceptors.push(h),
                Err(source) => {
                    let handle = ServerHandle {
                        shared,
                        seed_addr,
                        memcached_addr,
                        acceptors,
                    };
                    let _ = handle.shutdown();
                    return Err(Error::Bind {
                        addr: format!("the {} listener (no thread)", dialect.name()),
                        source,
                    });
                }
            }
        }
        Ok(ServerHandle {
            shared,
            seed_addr,
            memcached_addr,
            acceptors,
        })
    }
}

/// Protected mode, after Redis': a server that listens on an address other
/// machines can reach must keep them out, with an auth file or with client
/// certificates; `unprotected` says that a firewall or a private network
/// does it instead. Loopback addresses pass.
///
/// # Errors
/// [`Error::Unprotected`] naming the address and the ways out.
pub fn check_protected(config: &ServerConfig) -> Result<()> {
    let has_listener = config.seed_port.is_some() || config.memcached_port.is_some();
    let client_certs = config
        .tls
        .as_ref()
        .is_some_and(|tls| tls.files().client_ca.is_some());
    if !has_listener
        || config.bind.is_loopback()
        || config.auth.is_some()
        || client_certs
        || config.unprotected
    {
        return Ok(());
    }
    Err(Error::Unprotected(format!(
        "refusing to listen on {} without protection (protected mode): anyone who can reach \
         this address could read, overwrite and flush every key. Choose one: \
         --auth-file FILE to require a user and password (memcached's -Y format, user:password \
         per line, chmod 600); --tls-cert/--tls-key with --tls-ca CA to require client \
         certificates; --bind 127.0.0.1 to serve this machine only; or --unprotected if a \
         firewall or a private network already keeps others out",
        config.bind
    )))
}

fn accept_loop(listener: Arc<TcpListener>, dialect: Dialect, shared: Arc<Shared>) {
    loop {
        let accepted = listener.accept();
        if shared.stopping.load(SeqCst) {
            break;
        }
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of descriptors or a connection reset before accept:
                // keep serving the others; back off so a full fd table
                // does not spin.
                log::warn!("accept on the {} listener failed: {e}", dialect.name());
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        if let Err(e) = stream.set_nodelay(true) {
            log::debug!("cannot set TCP_NODELAY for {peer}: {e}");
        }
        let stats = &shared.stats;
        let current = stats.curr_connections.fetch_add(1, SeqCst);
        if current >= shared.config.max_connections {
            stats.curr_connections.fetch_sub(1, SeqCst);
            let rejected = stats.rejected_connections.fetch_add(1, Relaxed) + 1;
            // A burst over the limit would otherwise write one line per
            // connection: warn on the first and every 1,000th.
            let level = if rejected == 1 || rejected.is_multiple_of(1000) {
                log::Level::Warn
            } else {
                log::Level::Debug
            };
            log::log!(
                level,
                "refusing connection from {peer}: {} connections already open \
                 ({rejected} refused so far)",
                shared.config.max_connections
            );
            refuse(stream, dialect, shared.config.tls.is_some());
            continue;
        }
        stats.total_connections.fetch_add(1, Relaxed);
        let id = shared.next_id.fetch_add(1, Relaxed);
        shared.conns().insert(id, stream.as_raw_fd());
        let local = stream.local_addr().unwrap_or(peer);
        let last_active = stats.conn_opened(id, stream.as_raw_fd(), peer, local);
        let guard = ConnGuard {
            shared: Arc::clone(&shared),
            id,
        };
        let spawned = std::thread::Builder::new()
            .name(format!("conn-{id}"))
            .stack_size(CONNECTION_STACK_BYTES)
            .spawn(move || run_connection(stream, peer, dialect, guard, last_active));
        if let Err(e) = spawned {
            // The closure (with the stream and the guard) was dropped: the
            // slot is released and the socket closed.
            log::error!("cannot start a thread for {peer}: {e}");
        }
    }
}

/// Sends the over-limit line and closes, without blocking the acceptor.
/// On a TLS listener nothing is sent: the client expects a handshake, and
/// plaintext is never written there.
fn refuse(mut stream: TcpStream, dialect: Dialect, tls: bool) {
    let _ = stream.set_nonblocking(true);
    if !tls {
        let _ = stream.write_all(dialect.too_many_connections());
    }
    // Read what the client already sent, so the close is a FIN and not a
    // reset that could destroy the reply.
    let mut sink = [0u8; 1024];
    while let Ok(n) = stream.read(&mut sink) {
        if n == 0 {
            break;
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Write);
}

fn run_connection(
    stream: TcpStream,
    peer: SocketAddr,
    dialect: Dialect,
    guard: ConnGuard,
    last_active: Arc<AtomicU64>,
) {
    let shared = &guard.shared;
    let ctx = Context {
        exec: Arc::clone(&shared.exec),
        max_value_bytes: shared.config.max_value_bytes,
        keys: shared.keys,
        last_active,
        auth: shared.config.auth.clone(),
        tls: shared.config.tls.clone(),
        peer,
    };
    let mut seed_handler;
    let mut mc_handler;
    let handler: &mut dyn Handler = match dialect {
        Dialect::Seed => {
            seed_handler = SeedHandler::new(ctx);
            &mut seed_handler
        }
        Dialect::Memcached => {
            mc_handler = McPortHandler::new(ctx, shared.config.memcached_protocol);
            &mut mc_handler
        }
    };
    // The stream lives until the end of this function, after the guard
    // has left the registry: the registry never names a closed descriptor.
    let mut plain;
    let mut secured;
    let stream: std::io::Result<&mut dyn Stream> = match &shared.config.tls {
        None => {
            plain = SharedTcp(Arc::new(stream));
            Ok(&mut plain)
        }
        // The handshake runs on the first read, under the idle timeout; a
        // failed one ends this connection like any other read error.
        Some(tls) => match tls.accept(stream) {
            Ok(stream) => {
                secured = stream;
                Ok(&mut secured)
            }
            Err(e) => Err(std::io::Error::other(e)),
        },
    };
    // This thread's calls to the store acknowledge nothing before the
    // replies are written, which waits for the journal in `Always`.
    let acks = shared.exec.store().defer_acks();
    let served =
        stream.and_then(|s| connection::serve(s, handler, shared.config.idle_timeout, Some(acks)));
    match served {
        Ok(End::Eof) | Ok(End::Closed) => log::debug!("{peer} closed"),
        Ok(End::EofMidRequest) => {
            log::debug!("{peer} disconnected inside a request; nothing of it was stored")
        }
        Ok(End::Idle) => {
            shared.stats.idle_kicks.fetch_add(1, Relaxed);
            log::debug!("closing {peer}: idle")
        }
        Err(e) => log::info!("connection from {peer} failed: {e}"),
    }
    // Leave the registry before the socket is closed.
    drop(guard);
}

impl ServerHandle {
    /// Address of the seed-dialect listener, if any.
    pub fn seed_addr(&self) -> Option<SocketAddr> {
        self.seed_addr
    }

    /// Address of the memcached-dialect listener, if any.
    pub fn memcached_addr(&self) -> Option<SocketAddr> {
        self.memcached_addr
    }

    /// A handle that starts the shutdown from another thread (for example
    /// one that waits for SIGINT/SIGTERM).
    pub fn trigger(&self) -> ShutdownTrigger {
        ShutdownTrigger {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Number of connections currently open.
    pub fn connections(&self) -> usize {
        self.shared.stats.curr_connections.load(SeqCst)
    }

    /// Stops accepting, finishes requests in flight, joins the connection
    /// threads and flushes the store.
    ///
    /// # Errors
    /// The store's error if the final flush fails.
    pub fn shutdown(self) -> Result<()> {
        self.shared.trigger();
        self.wait()
    }

    /// Blocks until a [`ShutdownTrigger`] fires (or [`shutdown`] is
    /// called), then shuts down as [`ServerHandle::shutdown`] does.
    ///
    /// [`shutdown`]: ShutdownTrigger::shutdown
    ///
    /// # Errors
    /// The store's error if the final flush fails.
    pub fn wait(mut self) -> Result<()> {
        {
            let mut t = self.shared.triggered.lock();
            while !*t {
                self.shared.triggered_cv.wait(&mut t);
            }
        }
        for acceptor in self.acceptors.drain(..) {
            if acceptor.join().is_err() {
                log::error!("a listener thread panicked");
            }
        }
        // Stop reading: each connection answers what it already received,
        // sees end of input and exits.
        self.close_connections(libc::SHUT_RD);
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        if !self.wait_connections(deadline) {
            // Stuck writing to a client that does not read: cut it off.
            self.close_connections(libc::SHUT_RDWR);
            self.wait_connections(Instant::now() + SHUTDOWN_GRACE);
        }
        self.shared.store.flush()?;
        Ok(())
    }

    fn close_connections(&self, how: libc::c_int) {
        let conns = self.shared.conns();
        for &fd in conns.values() {
            // SAFETY: the registry lock is held and a connection leaves the
            // registry before its socket is closed, so `fd` is an open
            // socket owned by that connection; shutdown does not close it.
            unsafe {
                libc::shutdown(fd, how);
            }
        }
    }

    /// Waits until no connection is open; `false` at the deadline.
    fn wait_connections(&self, deadline: Instant) -> bool {
        let mut conns = self.shared.conns();
        while !conns.is_empty() {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            self.shared.conns_cv.wait_for(&mut conns, deadline - now);
        }
        true
    }
}

impl ShutdownTrigger {
    /// Starts the shutdown: the listeners stop accepting and
    /// [`ServerHandle::wait`] returns once the rest is done. Safe to call
    /// more than once.
    pub fn shutdown(&self) {
        self.shared.trigger();
    }
}

impl Drop for ServerHandle {
    /// A handle dropped without [`ServerHandle::shutdown`] stops the
    /// listeners (connections end when their clients leave).
    fn drop(&mut self) {
        if !self.acceptors.is_empty() {
            self.shared.trigger();
            for acceptor in self.acceptors.drain(..) {
                let _ = acceptor.join();
            }
        }
    }
}
