//! `kvstore-cli`: talk to a kvstore server from the command line.
//!
//! Parses arguments (clap), dispatches to the library's functions, and
//! turns their `Result` into an exit status: 0 on success, 1 on an error
//! (one `error: ...` line on stderr) or a failed check, 2 for bad usage.

use std::ffi::OsString;
use std::io::{self, BufRead, IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use kvstore_cli::{commands, shell, stress, Endpoint, Error, Result};
use kvstore_net::tls::TlsConnector;
use kvstore_net::Credentials;

/// Command-line client of a kvstore server (seed dialect).
#[derive(Debug, Parser)]
#[command(name = "kvstore-cli", version, about, propagate_version = true)]
struct Cli {
    /// Server host name or address.
    #[arg(long, global = true, value_name = "HOST", default_value = "127.0.0.1")]
    host: String,
    /// Server port (seed dialect).
    #[arg(
        long,
        global = true,
        value_name = "PORT",
        env = "SERVER_PORT",
        default_value_t = 7878
    )]
    port: u16,
    /// Seconds (or 500ms, 2s, 1m) to wait for the connection and for every
    /// reply [default: 10; stress: 60, as thousands of clients queue behind
    /// each other].
    #[arg(long, global = true, value_name = "SECS", value_parser = parse_secs)]
    timeout: Option<Duration>,
    /// Talk to the server over TLS, trusting the system's CA store (or
    /// --tls-ca).
    #[arg(long, global = true)]
    tls: bool,
    /// Trust this CA (PEM) for the server's certificate; implies --tls.
    #[arg(long, global = true, value_name = "PEM")]
    tls_ca: Option<PathBuf>,
    /// Present this client certificate (PEM) when the server asks for one;
    /// needs --tls-key; implies --tls.
    #[arg(long, global = true, value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, global = true, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Authenticate as this user; the password comes from the
    /// KVSTORE_PASSWORD environment variable, else from a prompt (never
    /// from the command line).
    #[arg(long, global = true, value_name = "NAME")]
    user: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the values of keys, exactly as stored (a newline after each
    /// only when stdout is a terminal; a missing key prints nothing).
    Get {
        /// The keys.
        #[arg(required = true, value_name = "KEY")]
        keys: Vec<String>,
    },
    /// Store a value; `-` reads it from stdin (binary safe). Prints STORED.
    Set {
        /// The key.
        #[arg(value_name = "KEY")]
        key: String,
        /// The value, or `-` for stdin.
        #[arg(value_name = "VALUE", allow_hyphen_values = true)]
        value: OsString,
    },
    /// Delete a key; prints DELETED or NOT-FOUND.
    Delete {
        /// The key.
        key: String,
    },
    /// Delete every key and value (asks first on a terminal).
    Clear {
        /// Do not ask for confirmation.
        #[arg(long, short)]
        yes: bool,
    },
    /// Interactive prompt: set, get, delete, help, exit (reads a script
    /// from a pipe without prompts).
    Shell,
    /// Run concurrent clients doing verified set/get rounds; the last line
    /// is `clients=N ok=N failed=F`, and the exit status is 1 when F > 0.
    Stress {
        /// Concurrent clients, each with its own connection.
        #[arg(long, value_name = "N")]
        clients: usize,
        /// Longest key in bytes (keys are 1..=max-key bytes).
        #[arg(long, value_name = "BYTES", default_value_t = 30)]
        max_key: usize,
        /// Longest value in bytes (values are 1..=max-value bytes).
        #[arg(long, value_name = "BYTES", default_value_t = 1000)]
        max_value: usize,
        /// Set/get/verify rounds per client.
        #[arg(long, value_name = "R", default_value_t = 1)]
        rounds: usize,
        /// Seed of the random keys and values (default: from the clock).
        #[arg(long, value_name = "S")]
        seed: Option<u64>,
    },
    /// Check an offline store directory (refused while a server holds it).
    Verify {
        /// The store directory.
        #[arg(long, value_name = "PATH")]
        dir: PathBuf,
    },
    /// Rebuild the map of an offline store directory from its value files
    /// (refused while a server holds it).
    Repair {
        /// The store directory.
        #[arg(long, value_name = "PATH")]
        dir: PathBuf,
    },
}

/// Seconds (`10`, `2.5`), or with a unit: `500ms`, `2s`, `1m`.
fn parse_secs(s: &str) -> std::result::Result<Duration, String> {
    let (number, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    let secs = number
        .trim()
        .parse::<f64>()
        .map(|n| n * scale)
        .map_err(|_| format!("`{s}` is not a duration (seconds, or with ms/s/m)"))?;
    if !(secs > 0.0 && secs <= 86_400.0) {
        return Err(format!("`{s}` is not between 0 and 86400 seconds"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(Error::Local { source, .. }) if source.kind() == io::ErrorKind::BrokenPipe => {
            // The reader went away (`| head`): not an error of ours.
            ExitCode::SUCCESS
        }
        Err(err) => {
            let message = err.to_string().replace(['\n', '\r'], " ");
            let _ = writeln!(io::stderr(), "error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The password of `--user`: `KVSTORE_PASSWORD`, else a prompt on the
/// terminal (not echoed).
fn password() -> Result<String> {
    if let Some(password) = std::env::var_os(PASSWORD_ENV) {
        return password
            .into_string()
            .map_err(|_| Error::Usage(format!("{PASSWORD_ENV} is not valid UTF-8")));
    }
    if !io::stdin().is_terminal() {
        return Err(Error::Usage(format!(
            "--user needs a password: set {PASSWORD_ENV} (there is no terminal to ask on)"
        )));
    }
    rpassword::prompt_password("password: ").map_err(|e| Error::Local {
        action: "read the password".into(),
        source: e,
    })
}

/// Where `--user`'s password comes from when it is not typed at a prompt.
const PASSWORD_ENV: &str = "KVSTORE_PASSWORD";

fn run(cli: Cli) -> Result<ExitCode> {
    let timeout = cli.timeout.unwrap_or(match cli.command {
        Command::Stress { .. } => stress::DEFAULT_TIMEOUT,
        _ => kvstore_cli::endpoint::DEFAULT_TIMEOUT,
    });
    let mut endpoint = Endpoint::new(cli.host, cli.port).with_timeout(timeout);
    let client_cert = cli.tls_cert.as_deref().zip(cli.tls_key.as_deref());
    if cli.tls || cli.tls_ca.is_some() || client_cert.is_some() {
        let connector = match &cli.tls_ca {
            Some(ca) => TlsConnector::new(ca, client_cert),
            None => TlsConnector::with_system_roots(client_cert),
        };
        endpoint.tls = Some(connector.map_err(|e| Error::Usage(e.to_string()))?);
    }
    if let Some(user) = cli.user {
        endpoint.credentials = Some(Credentials::new(user, password()?));
    }
    let stdout = io::stdout();
    let mut out = stdout.lock();
    match cli.command {
        Command::Get { keys } => {
            let newline = io::stdout().is_terminal();
            commands::get(&endpoint, &keys, &mut out, newline)?;
        }
        Command::Set { key, value } => {
            let value = if value == "-" {
                let mut buf = Vec::new();
                io::stdin()
                    .lock()
                    .read_to_end(&mut buf)
                    .map_err(|e| Error::local("read the value from stdin", e))?;
                buf
            } else {
                os_bytes(value)
            };
            commands::set(&endpoint, key.as_bytes(), &value, &mut out)?;
        }
        Command::Delete { key } => {
            commands::delete(&endpoint, key.as_bytes(), &mut out)?;
        }
        Command::Clear { yes } => {
            if !yes && io::stdin().is_terminal() {
                confirm(&format!(
                    "delete every key and value on {}? [y/N] ",
                    endpoint.addr()
                ))?;
            }
            commands::clear(&endpoint, &mut out)?;
        }
        Command::Shell => {
            let mut client = endpoint.connect()?;
            if io::stdin().is_terminal() {
                println!(
                    "connected to {}; type help for the commands, exit to leave",
                    endpoint.addr()
                );
                shell::run_terminal(&mut client, &endpoint)?;
            } else {
                let stdin = io::stdin();
                shell::run(&mut client, &endpoint, stdin.lock(), &mut out, false)?;
            }
        }
        Command::Stress {
            clients,
            max_key,
            max_value,
            rounds,
            seed,
        } => {
            let config = stress::StressConfig {
                endpoint,
                clients,
                max_key,
                max_value,
                rounds,
                seed,
                progress: true,
            };
            let summary = stress::run(&config)?;
            writeln!(out, "{summary}").map_err(|e| Error::local("write to stdout", e))?;
            if summary.failed > 0 {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Verify { dir } => {
            if !commands::verify(&dir, &mut out)? {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Repair { dir } => {
            commands::repair(&dir, &mut out)?;
        }
    }
    out.flush()
        .map_err(|e| Error::local("write to stdout", e))?;
    Ok(ExitCode::SUCCESS)
}

/// Asks `question` on stderr; anything but y/yes is [`Error::Aborted`].
fn confirm(question: &str) -> Result<()> {
    let mut err = io::stderr();
    err.write_all(question.as_bytes())
        .and_then(|()| err.flush())
        .map_err(|e| Error::local("write to stderr", e))?;
    let mut answer = String::new();
    io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|e| Error::local("read the answer", e))?;
    match answer.trim().to_ascii_lowercase().as_str() {
        "y" | "yes" => Ok(()),
        _ => Err(Error::Aborted),
    }
}

#[cfg(unix)]
fn os_bytes(s: OsString) -> Vec<u8> {
    use std::os::unix::ffi::OsStringExt;
    s.into_vec()
}

#[cfg(not(unix))]
fn os_bytes(s: OsString) -> Vec<u8> {
    s.to_string_lossy().into_owned().into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn timeouts_parse_with_and_without_units() {
        assert_eq!(parse_secs("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_secs("2.5"), Ok(Duration::from_millis(2500)));
        assert_eq!(parse_secs("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_secs("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_secs("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_secs("0").is_err());
        assert!(parse_secs("-1").is_err());
        assert!(parse_secs("soon").is_err());
        assert!(parse_secs("NaN").is_err());
    }
}
