//! # kvstore-cli: the command-line client as a library
//!
//! The `kvstore-cli` binary is a thin layer of argument parsing over this
//! library, and the end-to-end demo (`examples/driver.rs` at the repository
//! root) reuses the same pieces against an in-process server.
//!
//! - [`Endpoint`]: where the server is (`host:port`, timeout) and how to
//!   connect to it, with retries for many clients at once.
//! - [`commands`]: the one-shot commands (`get`, `set`, `delete`, `clear`,
//!   `verify`, `repair`), each a function returning [`Result`].
//! - [`shell`]: the interactive prompt, over a terminal (rustyline) or a
//!   pipe.
//! - [`stress`]: N concurrent clients doing verified set/get rounds, with
//!   a progress bar and a [`stress::StressSummary`] whose last line is
//!   `clients=N ok=N failed=F`.
//! - [`backoff`]: the exponential back-off every retry loop uses.
//! - [`Error`]: one error type whose messages are single lowercase lines
//!   naming the server's `host:port` where the server is involved.
//!
//! ```no_run
//! use kvstore_cli::{stress, Endpoint};
//!
//! # fn main() -> Result<(), kvstore_cli::Error> {
//! let config = stress::StressConfig::new(Endpoint::new("127.0.0.1", 7878), 100);
//! let summary = stress::run(&config)?;
//! println!("{summary}");
//! assert_eq!(summary.failed, 0);
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

pub mod backoff;
pub mod commands;
pub mod endpoint;
pub mod error;
pub mod shell;
pub mod stress;

pub use endpoint::Endpoint;
pub use error::{Error, Result};
