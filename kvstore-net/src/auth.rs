//! Password authentication: the auth file and the checks against it.
//!
//! The file has memcached's `-Y` format: one `user:password` per line (the
//! password is everything after the first `:`, up to the end of the line;
//! a `\r` before the newline is not part of it). Blank lines are skipped.
//! Because it holds passwords in clear, the server refuses a file that
//! group or others may read.
//!
//! Passwords are compared in constant time ([`subtle`]), and every entry is
//! compared, so the time a check takes tells nothing about which user
//! exists or how much of a password was right.

use std::fs;
use std::path::{Path, PathBuf};

use parking_lot::RwLock;
use subtle::ConstantTimeEq;

use crate::error::{Error, Result};

/// One `user:password` line.
#[derive(Clone, PartialEq, Eq)]
struct Entry {
    user: Vec<u8>,
    password: Vec<u8>,
}

/// The credentials of an auth file, re-readable while the server runs.
#[derive(Debug)]
pub struct AuthFile {
    path: PathBuf,
    entries: RwLock<Vec<Entry>>,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print a password, even in a debug dump.
        f.debug_struct("Entry")
            .field("user", &String::from_utf8_lossy(&self.user))
            .finish_non_exhaustive()
    }
}

impl AuthFile {
    /// Reads the file at `path`.
    ///
    /// # Errors
    ///
    /// [`Error::Auth`] if the file cannot be read, is readable by group or
    /// others (the message says how to fix it), holds a line without `:`,
    /// or holds no entry at all.
    pub fn load(path: impl AsRef<Path>) -> Result<AuthFile> {
        let path = path.as_ref().to_path_buf();
        let entries = read_entries(&path)?;
        Ok(AuthFile {
            path,
            entries: RwLock::new(entries),
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Re-reads the file; on an error the credentials in force stay.
    ///
    /// # Errors
    ///
    /// As [`AuthFile::load`].
    pub fn reload(&self) -> Result<()> {
        let entries = read_entries(&self.path)?;
        *self.entries.write() = entries;
        Ok(())
    }

    /// Whether `user` with `password` is in the file.
    pub fn check(&self, user: &[u8], password: &[u8]) -> bool {
        let entries = self.entries.read();
        let mut found = subtle::Choice::from(0);
        for entry in entries.iter() {
            // `ct_eq` on slices of different lengths is false at once; the
            // lengths of user names and passwords are not secret here
            // (memcached compares them first too).
            found |= entry.user.ct_eq(user) & entry.password.ct_eq(password);
        }
        bool::from(found)
    }
}

fn read_entries(path: &Path) -> Result<Vec<Entry>> {
    let err = |what: String| Error::Auth(format!("auth file {}: {what}", path.display()));
    let meta = fs::metadata(path).map_err(|e| err(format!("cannot read it: {e}")))?;
    refuse_if_shared(&meta).map_err(err)?;
    let text = fs::read(path).map_err(|e| err(format!("cannot read it: {e}")))?;
    let mut entries = Vec::new();
    for (n, line) in text.split(|&b| b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return Err(err(format!("line {} is not user:password (no ':')", n + 1)));
        };
        entries.push(Entry {
            user: line[..colon].to_vec(),
            password: line[colon + 1..].to_vec(),
        });
    }
    if entries.is_empty() {
        return Err(err("holds no user:password line".to_string()));
    }
    Ok(entries)
}

#[cfg(unix)]
fn refuse_if_shared(meta: &fs::Metadata) -> std::result::Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode();
    if mode & 0o044 != 0 {
        return Err(format!(
            "is readable by group or others (mode {:o}); it holds passwords, so make it \
             private: chmod 600 <file>",
            mode & 0o777
        ));
    }
    Ok(())
}

#[cfg(not(unix))]
fn refuse_if_shared(_meta: &fs::Metadata) -> std::result::Result<(), String> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn write(dir: &Path, text: &str, mode: u32) -> PathBuf {
        let path = dir.join("auth");
        fs::write(&path, text).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn checks_users_and_passwords_as_written() {
        let tmp = tempfile::tempdir().unwrap();
        let path = write(
            tmp.path(),
            "alice:s3cret\r\n\nbob:pa:ss word\ncarol:",
            0o600,
        );
        let auth = AuthFile::load(&path).unwrap();
        assert!(auth.check(b"alice", b"s3cret"));
        assert!(auth.check(b"bob", b"pa:ss word"), "the first ':' splits");
        assert!(auth.check(b"carol", b""), "an empty password is a password");
        assert!(!auth.check(b"alice", b"s3cre"));
        assert!(!auth.check(b"alice", b"s3cret\r"));
        assert!(!auth.check(b"alice", b"pa:ss word"));
        assert!(!auth.check(b"mallory", b"s3cret"));
        assert!(!auth.check(b"", b""));
    }

    #[test]
    fn a_file_others_may_read_is_refused_with_the_fix() {
        let tmp = tempfile::tempdir().unwrap();
        for mode in [0o644, 0o640, 0o604] {
            let path = write(tmp.path(), "a:b\n", mode);
            let msg = AuthFile::load(&path).unwrap_err().to_string();
            assert!(msg.contains("readable by group or others"), "{msg}");
            assert!(msg.contains("chmod 600"), "{msg}");
        }
        let path = write(tmp.path(), "a:b\n", 0o400);
        assert!(AuthFile::load(path).is_ok());
    }

    #[test]
    fn malformed_and_empty_files_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let msg = AuthFile::load(write(tmp.path(), "a:b\nnocolon\n", 0o600))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("line 2"), "{msg}");
        assert!(AuthFile::load(write(tmp.path(), "\n\n", 0o600)).is_err());
        assert!(AuthFile::load(tmp.path().join("missing")).is_err());
    }

    #[test]
    fn reload_replaces_the_credentials_and_a_bad_reload_keeps_them() {
        let tmp = tempfile::tempdir().unwrap();
        let path = write(tmp.path(), "a:1\n", 0o600);
        let auth = AuthFile::load(&path).unwrap();
        write(tmp.path(), "a:2\n", 0o600);
        auth.reload().unwrap();
        assert!(auth.check(b"a", b"2") && !auth.check(b"a", b"1"));
        write(tmp.path(), "garbage\n", 0o600);
        assert!(auth.reload().is_err());
        assert!(auth.check(b"a", b"2"), "the last good credentials stay");
    }

    #[test]
    fn debug_output_never_shows_a_password() {
        let tmp = tempfile::tempdir().unwrap();
        let auth = AuthFile::load(write(tmp.path(), "user:hunter2\n", 0o600)).unwrap();
        let dump = format!("{auth:?}");
        assert!(dump.contains("user") && !dump.contains("hunter2"), "{dump}");
    }
}
