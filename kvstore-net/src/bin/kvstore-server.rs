//! `kvstore-server`: serves one store directory over TCP, in the seed
//! dialect (`--port`) and optionally the memcached dialect
//! (`--memcached-port`).
//!
//! Prints one `listening on ADDR (seed|memcached)` line per listener on
//! stdout; logs go to stderr. SIGINT/SIGTERM shut it down gracefully (stop
//! accepting, answer requests in flight, flush the store) and it exits 0;
//! 1 when the store could not be flushed (it had turned read-only after a
//! failed write to the disk: the journal keeps what was acknowledged and
//! the next start replays it).

use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use kvstore_core::{Durability, Options, Store};
use kvstore_net::auth::AuthFile;
use kvstore_net::protocol::KeyPolicy;
use kvstore_net::server::check_protected;
use kvstore_net::tls::{TlsAcceptor, TlsFiles};
use kvstore_net::{MemcachedProtocol, Server, ServerConfig};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ProtocolArg {
    /// Both, told apart by each connection's first byte (0x80: binary).
    Auto,
    /// The text protocol only.
    Ascii,
    /// The binary protocol only.
    Binary,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum DurabilityArg {
    /// Leave write-back to the OS (survives a process crash, not a power cut).
    Never,
    /// Flush to stable storage every --sync-interval-ms in the background.
    Periodic,
    /// Acknowledge a write only once it is on stable storage.
    Always,
}

/// Serve a kvstore directory over TCP (seed dialect, and memcached's text
/// and binary protocols when --memcached-port is given).
#[derive(Debug, Parser)]
#[command(name = "kvstore-server", version, about)]
struct Args {
    /// The store directory (created if missing; one server per directory).
    #[arg(long, value_name = "PATH", default_value = "./kvstore-data")]
    dir: PathBuf,

    /// Address to listen on; use 0.0.0.0 to listen on all interfaces.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1")]
    bind: IpAddr,

    /// Port of the seed dialect (0: the OS picks one).
    #[arg(long, value_name = "N", env = "SERVER_PORT", default_value_t = 7878)]
    port: u16,

    /// Port of the memcached dialect (0: the OS picks one; off unless given).
    #[arg(long, value_name = "N")]
    memcached_port: Option<u16>,

    /// Which memcached protocols the memcached port speaks (memcached's -B).
    #[arg(long, value_enum, default_value = "auto")]
    memcached_protocol: ProtocolArg,

    /// Honour the memcached `shutdown` command (memcached's -A); without
    /// it, `shutdown` is refused.
    #[arg(long)]
    enable_shutdown: bool,

    /// What an acknowledged write survives: never (process crash only),
    /// periodic (at most --sync-interval-ms lost on power failure), always.
    #[arg(long, value_enum, default_value = "periodic")]
    durability: DurabilityArg,

    /// Interval of the background flush with --durability periodic.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    sync_interval_ms: u64,

    /// Most concurrent connections; more get an error line and are closed.
    #[arg(long, value_name = "N", default_value_t = 4096)]
    max_connections: usize,

    /// Largest value accepted, in bytes (at most 1073741824).
    #[arg(long, value_name = "N", default_value_t = 1 << 20,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(0..=1 << 30))]
    max_value_bytes: usize,

    /// Close connections idle this many seconds (0: never).
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    idle_timeout: u64,

    /// Byte budget of the in-memory value cache (0 disables it).
    #[arg(long, value_name = "N", default_value_t = kvstore_core::options::DEFAULT_CACHE_BYTES)]
    cache_bytes: usize,

    /// With --durability periodic or always: most bytes of acknowledged changes not
    /// yet applied to the value files; writers wait when it is reached.
    #[arg(long, value_name = "N", default_value_t = kvstore_core::options::DEFAULT_MAX_PENDING_BYTES)]
    max_pending_bytes: usize,

    /// Accept any key byte but space, CR and LF, as memcached itself does
    /// (for load generators such as memcaslap, whose keys start with
    /// control bytes); by default keys follow docs/PROTOCOL.md and may not hold
    /// control bytes.
    #[arg(long)]
    lenient_keys: bool,

    /// TLS on every listener: the server's certificate chain (PEM). Needs
    /// --tls-key. Certificate and key are re-read on SIGHUP.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,

    /// Require client certificates signed by this CA (PEM); needs
    /// --tls-cert and --tls-key.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_ca: Option<PathBuf>,

    /// Require every connection to authenticate with a user and password
    /// from FILE (memcached's -Y format: `user:password` per line; must not
    /// be readable by group or others). Re-read on SIGHUP.
    #[arg(long, value_name = "FILE")]
    auth_file: Option<PathBuf>,

    /// Listen on a non-loopback --bind address without --auth-file or
    /// --tls-ca (protected mode refuses that otherwise): only when a
    /// firewall or a private network keeps strangers out.
    #[arg(long)]
    unprotected: bool,

    /// More log output on stderr (-v info, -vv debug, -vvv trace); RUST_LOG
    /// overrides it with filters such as `kvstore_net=debug`.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let level = match args.verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .target(env_logger::Target::Stderr)
        .init();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), String> {
    raise_fd_limit();
    let durability = match args.durability {
        DurabilityArg::Never => Durability::Never,
        DurabilityArg::Periodic => {
            Durability::Periodic(Duration::from_millis(args.sync_interval_ms.max(1)))
        }
        DurabilityArg::Always => Durability::Always,
    };
    let options = Options::new()
        .durability(durability)
        .cache_bytes(args.cache_bytes)
        .max_pending_bytes(args.max_pending_bytes)
        .max_value_bytes(args.max_value_bytes);
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(Arc::new(
            TlsAcceptor::new(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: args.tls_ca.clone(),
            })
            .map_err(|e| e.to_string())?,
        )),
        _ => None,
    };
    let auth = args
        .auth_file
        .as_ref()
        .map(|path| AuthFile::load(path).map(Arc::new))
        .transpose()
        .map_err(|e| e.to_string())?;
    let config = ServerConfig {
        bind: args.bind,
        seed_port: Some(args.port),
        memcached_port: args.memcached_port,
        max_connections: args.max_connections,
        max_value_bytes: args.max_value_bytes,
        idle_timeout: (args.idle_timeout > 0).then(|| Duration::from_secs(args.idle_timeout)),
        memcached_protocol: match args.memcached_protocol {
            ProtocolArg::Auto => MemcachedProtocol::Auto,
            ProtocolArg::Ascii => MemcachedProtocol::Ascii,
            ProtocolArg::Binary => MemcachedProtocol::Binary,
        },
        enable_shutdown: args.enable_shutdown,
        tls: tls.clone(),
        auth: auth.clone(),
        unprotected: args.unprotected,
    };
    // Before the store is opened (or its directory created): a refused
    // configuration leaves nothing behind.
    check_protected(&config).map_err(|e| e.to_string())?;
    let store = Store::open_with(&args.dir, options).map_err(|e| e.to_string())?;
    let keys = if args.lenient_keys {
        KeyPolicy::MemcachedCompatible
    } else {
        KeyPolicy::Strict
    };
    let handle =
        Server::start_with_key_policy(Arc::new(store), config, keys).map_err(|e| e.to_string())?;

    let trigger = handle.trigger();
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ])
    .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                if sig != signal_hook::consts::SIGHUP {
                    log::info!("signal {sig}: shutting down");
                    trigger.shutdown();
                    break;
                }
                // SIGHUP: re-read what lives in files, keeping the old
                // state when the new files are wrong.
                if let Some(tls) = &tls {
                    match tls.reload() {
                        Ok(()) => log::info!("SIGHUP: TLS certificate and key reloaded"),
                        Err(e) => log::error!("SIGHUP: keeping the old TLS files: {e}"),
                    }
                }
                if let Some(auth) = &auth {
                    match auth.reload() {
                        Ok(()) => log::info!("SIGHUP: auth file reloaded"),
                        Err(e) => log::error!("SIGHUP: keeping the old credentials: {e}"),
                    }
                }
            }
        })
        .map_err(|e| format!("cannot start the signal thread: {e}"))?;

    let announce = |addr: Option<std::net::SocketAddr>, dialect: &str| -> Result<(), String> {
        if let Some(addr) = addr {
            let mut stdout = std::io::stdout().lock();
            writeln!(stdout, "listening on {addr} ({dialect})")
                .and_then(|()| stdout.flush())
                .map_err(|e| format!("cannot write to stdout: {e}"))?;
        }
        Ok(())
    };
    announce(handle.seed_addr(), "seed")?;
    announce(handle.memcached_addr(), "memcached")?;

    handle.wait().map_err(|e| e.to_string())?;
    log::info!("store flushed; bye");
    Ok(())
}

/// Raises the soft limit of open files to the hard limit, so that many
/// connections fit.
fn raise_fd_limit() {
    if let Err(err) = rlimit::increase_nofile_limit(u64::MAX) {
        log::warn!("cannot raise the open-file limit: {err}");
    }
}
