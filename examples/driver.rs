//! The end-to-end demo: a persistent store, a server over it, many
//! concurrent clients, then an interactive shell on the same server.
//!
//! ```text
//! cargo run --release --example driver                    # asks how many clients
//! cargo run --release --example driver -- --clients 1000  # no question
//! cargo run --release --example driver -- --clients 100 --no-shell --dir /tmp/kv
//! ```
//!
//! It opens (or creates) the store in `--dir` (default `./kvstore-data`) and
//! says how many keys it found there, so a second run shows the data of the
//! first; starts the server in this process on 127.0.0.1, on ports the OS
//! picks; runs the clients exactly as `kvstore-cli stress` does (each its own
//! connection, set a random key of up to 30 bytes to a random value of up to
//! 1000 bytes, read it back, verify); then opens the shell until `exit`
//! (skipped with `--no-shell` or when stdin is not a terminal); and shuts
//! the server down cleanly, flushing the store. The exit status is non-zero
//! when any client failed.

use std::io::{self, BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use kvstore::net::{Server, ServerConfig, ServerHandle};
use kvstore::Store;
use kvstore_cli::{shell, stress, Endpoint, Error, Result};

/// Clients used when stdin is not a terminal and `--clients` is not given.
const DEFAULT_CLIENTS: usize = 10;

/// kvstore end-to-end demo: server, concurrent clients, shell.
#[derive(Debug, Parser)]
#[command(name = "driver", about)]
struct Args {
    /// Store directory (created if missing; its data survives the run).
    #[arg(long, default_value = "./kvstore-data")]
    dir: PathBuf,
    /// Concurrent clients to run (0 skips them); asked on a terminal when
    /// not given, 10 otherwise.
    #[arg(long)]
    clients: Option<usize>,
    /// Do not open the shell after the clients.
    #[arg(long)]
    no_shell: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            let message = err.to_string().replace(['\n', '\r'], " ");
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the demo; `Ok(false)` when some client failed.
fn run(args: Args) -> Result<bool> {
    let store = Arc::new(Store::open(&args.dir)?);
    println!("store {}: {} keys found", args.dir.display(), store.len());
    let clients = match args.clients {
        Some(n) => n,
        None if io::stdin().is_terminal() => ask_clients()?,
        None => DEFAULT_CLIENTS,
    };
    // Each client holds a socket here and the server holds the other end.
    let fd_limit = stress::raise_fd_limit();
    if let Some(limit) = fd_limit {
        let needed = 2 * clients as u64 + 256;
        if needed > limit {
            return Err(Error::Usage(format!(
                "{clients} clients need about {needed} open files in this process, over the \
                 limit of {limit}: use fewer, or run kvstore-server and kvstore-cli stress"
            )));
        }
    }
    let defaults = ServerConfig::default();
    let config = ServerConfig {
        seed_port: Some(0),
        memcached_port: Some(0),
        max_connections: defaults.max_connections.max(clients + 64),
        ..defaults
    };
    let server = Server::start(Arc::clone(&store), config).map_err(Error::ServerStart)?;
    let outcome = serve(&server, clients, args.no_shell);
    let stopped = server.shutdown().map_err(Error::ServerStart);
    let ok = outcome?;
    stopped?;
    println!(
        "server stopped; {} keys in {}",
        store.len(),
        args.dir.display()
    );
    Ok(ok)
}

/// The part that needs the running server: clients, then the shell.
fn serve(server: &ServerHandle, clients: usize, no_shell: bool) -> Result<bool> {
    let Some(seed_addr) = server.seed_addr() else {
        return Err(Error::Usage(
            "the server has no seed-dialect listener".into(),
        ));
    };
    let endpoint = Endpoint::from_socket_addr(seed_addr).with_timeout(stress::DEFAULT_TIMEOUT);
    print!("server listening on {seed_addr} (seed dialect)");
    if let Some(mc) = server.memcached_addr() {
        print!(" and {mc} (memcached dialect)");
    }
    println!();
    let mut ok = true;
    if clients > 0 {
        let summary = stress::run(&stress::StressConfig::new(endpoint.clone(), clients))?;
        println!("{summary}");
        ok = summary.failed == 0;
    }
    if !no_shell && io::stdin().is_terminal() {
        let mut client = endpoint.connect()?;
        println!(
            "shell on {}: type help for the commands, exit to leave",
            endpoint.addr()
        );
        shell::run_terminal(&mut client, &endpoint)?;
    }
    Ok(ok)
}

/// Asks on the terminal until it gets a number; end of input means the
/// default.
fn ask_clients() -> Result<usize> {
    let stdin = io::stdin();
    loop {
        print!("how many clients? [{DEFAULT_CLIENTS}] ");
        io::stdout()
            .flush()
            .map_err(|e| Error::local("write to stdout", e))?;
        let mut line = String::new();
        let n = stdin
            .lock()
            .read_line(&mut line)
            .map_err(|e| Error::local("read stdin", e))?;
        let answer = line.trim();
        if n == 0 || answer.is_empty() {
            return Ok(DEFAULT_CLIENTS);
        }
        match answer.replace(['_', ','], "").parse() {
            Ok(n) => return Ok(n),
            Err(_) => println!("`{answer}` is not a number of clients"),
        }
    }
}
