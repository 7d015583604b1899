//! The one-shot commands of `kvstore-cli`, each a function from its
//! arguments to a `Result`, writing what the user sees to `out`.

use std::io::Write;
use std::path::Path;

use kvstore_core::Store;

use crate::endpoint::Endpoint;
use crate::error::{Error, Result};

fn write_out(e: std::io::Error) -> Error {
    Error::local("write to stdout", e)
}

/// `get KEY...`: writes each value exactly as stored, followed by a newline
/// only when `newline` (stdout is a terminal). A missing key reads as an
/// empty value (the seed dialect does not tell them apart).
///
/// # Errors
///
/// Connection and server errors naming the endpoint; a failed write.
pub fn get<K: AsRef<[u8]>>(
    endpoint: &Endpoint,
    keys: &[K],
    out: &mut dyn Write,
    newline: bool,
) -> Result<()> {
    let mut client = endpoint.connect()?;
    let values = client.get_many(keys).map_err(|e| endpoint.error(e))?;
    for value in values {
        out.write_all(&value).map_err(write_out)?;
        if newline {
            out.write_all(b"\n").map_err(write_out)?;
        }
    }
    out.flush().map_err(write_out)
}

/// `set KEY VALUE`: stores the value and prints `STORED`.
///
/// # Errors
///
/// Connection and server errors naming the endpoint (a value the server
/// cannot store is [`Error::Server`]); a failed write.
pub fn set(endpoint: &Endpoint, key: &[u8], value: &[u8], out: &mut dyn Write) -> Result<()> {
    let mut client = endpoint.connect()?;
    client.set(key, value).map_err(|e| endpoint.error(e))?;
    writeln!(out, "STORED").map_err(write_out)
}

/// `delete KEY`: prints `DELETED` or `NOT-FOUND`; returns whether the key
/// existed.
///
/// # Errors
///
/// Connection and server errors naming the endpoint; a failed write.
pub fn delete(endpoint: &Endpoint, key: &[u8], out: &mut dyn Write) -> Result<bool> {
    let mut client = endpoint.connect()?;
    let existed = client.delete(key).map_err(|e| endpoint.error(e))?;
    writeln!(out, "{}", if existed { "DELETED" } else { "NOT-FOUND" }).map_err(write_out)?;
    Ok(existed)
}

/// `clear`: deletes every key and value and prints `DELETED`. The caller
/// asks for confirmation first where it should.
///
/// # Errors
///
/// Connection and server errors naming the endpoint; a failed write.
pub fn clear(endpoint: &Endpoint, out: &mut dyn Write) -> Result<()> {
    let mut client = endpoint.connect()?;
    client.clear().map_err(|e| endpoint.error(e))?;
    writeln!(out, "DELETED").map_err(write_out)
}

fn offline(action: &'static str, dir: &Path, err: kvstore_core::Error) -> Error {
    match err {
        err @ kvstore_core::Error::Locked { .. } => Error::InUse {
            action,
            dir: dir.display().to_string(),
            source: err,
        },
        err => Error::Store(err),
    }
}

fn check_dir(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "store directory {} does not exist",
            dir.display()
        )))
    }
}

/// `verify --dir PATH`: checks an offline store and prints what was
/// checked and every problem found; returns whether the store is sound.
///
/// # Errors
///
/// [`Error::InUse`] while a server holds the store; [`Error::Usage`] when
/// the directory does not exist; store errors that stop the check.
pub fn verify(dir: &Path, out: &mut dyn Write) -> Result<bool> {
    check_dir(dir)?;
    let report = Store::verify(dir).map_err(|e| offline("verify", dir, e))?;
    writeln!(
        out,
        "verified {}: {} files checked, {} keys ok, {} problems",
        dir.display(),
        report.files_checked,
        report.keys_ok,
        report.problems.len()
    )
    .map_err(write_out)?;
    for problem in &report.problems {
        writeln!(out, "problem: {problem}").map_err(write_out)?;
    }
    Ok(report.problems.is_empty())
}

/// `repair --dir PATH`: rebuilds the map of an offline store from its value
/// files and prints what it found and did.
///
/// # Errors
///
/// As [`verify`].
pub fn repair(dir: &Path, out: &mut dyn Write) -> Result<()> {
    check_dir(dir)?;
    let report = Store::repair(dir).map_err(|e| offline("repair", dir, e))?;
    writeln!(
        out,
        "repaired {}: {} files scanned, {} keys recovered, {} files dropped",
        dir.display(),
        report.files_scanned,
        report.keys_recovered,
        report.files_dropped
    )
    .map_err(write_out)?;
    for problem in &report.problems {
        writeln!(out, "fixed: {problem}").map_err(write_out)?;
    }
    Ok(())
}
