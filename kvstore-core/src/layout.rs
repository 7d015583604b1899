//! The directory layout: pure functions from keys to names. Nothing here
//! touches the disk.
//!
//! ```text
//! <dir>/LOCK                 fs2 lock file; holds the owner's pid
//! <dir>/CURRENT              "kvstore-format 1\ngen <N>\n": the live generation
//! <dir>/EPOCH                boot counter, the high bits of every cas number
//! <dir>/CLEAR_AT             pending clear_after deadline (Unix seconds), if any
//! <dir>/gen-<N>/map.log      the append-only map log of generation N
//! <dir>/gen-<N>/expiring     present once an item with an expiry was written
//! <dir>/gen-<N>/<hh>/<hash>  value file of a key: <hash> = FNV-1a 64 of the key
//!                            in 16 lower-case hex digits, <hh> = its first byte
//! <dir>/gen-<N>/<hh>/<hash>.<i>  the i-th key with the same hash (collisions)
//! <dir>/gen-<N>/<hh>/~spare.<n>  a recycled file, not a value (see store/spares.rs)
//! ```
//!
//! Value names only contain hex digits and a dot; every other file the store
//! makes starts with `~` or is upper case, so they can never be mistaken for
//! values.

use std::hash::Hasher;

/// Version of the on-disk format, written into `CURRENT` and every record.
pub const FORMAT_VERSION: u8 = 1;
/// Number of value subdirectories per generation.
pub const SUBDIRS: usize = 256;
/// Name of the lock file.
pub const LOCK_FILE: &str = "LOCK";
/// Name of the file naming the live generation.
pub const CURRENT_FILE: &str = "CURRENT";
/// Name of the boot-epoch file.
pub const EPOCH_FILE: &str = "EPOCH";
/// Name of the pending-clear file.
pub const CLEAR_AT_FILE: &str = "CLEAR_AT";
/// Name of the map log inside a generation.
pub const MAP_LOG: &str = "map.log";
/// Temporary name of a compacted map log before it is renamed over.
pub const MAP_LOG_TMP: &str = "map.log.~tmp";
/// Marker: some item of this generation was written with an expiry.
pub const EXPIRING_MARK: &str = "expiring";
/// Suffix of a small file being replaced (`CURRENT.~tmp`).
pub const TMP_SUFFIX: &str = ".~tmp";
/// Prefix of spare (recycled) files in value subdirectories.
pub const SPARE_PREFIX: &str = "~spare.";
/// Highest collision index: at most this many + 1 keys can share a hash.
pub const MAX_COLLISION_INDEX: u16 = u16::MAX;

/// FNV-1a 64 of the key: the default key hasher.
pub fn fnv1a64(key: &[u8]) -> u64 {
    let mut h = fnv::FnvHasher::default();
    h.write(key);
    h.finish()
}

/// Name of the subdirectory holding a hash: its first byte in hex.
pub fn subdir_name(hash: u64) -> String {
    format!("{:02x}", subdir_index(hash))
}

/// Index (0..256) of the subdirectory holding a hash.
pub fn subdir_index(hash: u64) -> usize {
    (hash >> 56) as usize
}

/// File name of the value with `hash` and collision index `idx`.
pub fn value_name(hash: u64, idx: u16) -> String {
    if idx == 0 {
        format!("{hash:016x}")
    } else {
        format!("{hash:016x}.{idx}")
    }
}

/// Relative path (`<hh>/<name>`) of a value inside its generation.
pub fn value_rel_path(hash: u64, idx: u16) -> String {
    format!("{}/{}", subdir_name(hash), value_name(hash, idx))
}

/// Parses a value file name back into (hash, collision index).
pub fn parse_value_name(name: &str) -> Option<(u64, u16)> {
    let (hex, idx) = match name.split_once('.') {
        Some((hex, idx)) => {
            if idx.is_empty() || idx.starts_with('0') || !idx.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let idx: u16 = idx.parse().ok()?;
            (hex, idx)
        }
        None => (name, 0),
    };
    if hex.len() != 16 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    Some((u64::from_str_radix(hex, 16).ok()?, idx))
}

/// The decimal number after `prefix` in `name` (digits only, no sign).
fn parse_numbered(name: &str, prefix: &str) -> Option<u64> {
    let n = name.strip_prefix(prefix)?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse().ok()
}

/// File name of spare number `n`.
pub fn spare_name(n: u64) -> String {
    format!("{SPARE_PREFIX}{n}")
}

/// Parses a spare file name back into its number.
pub fn parse_spare_name(name: &str) -> Option<u64> {
    parse_numbered(name, SPARE_PREFIX)
}

/// Prefix of the write-ahead journal files (`journal.<n>`) in the store
/// directory.
pub const JOURNAL_PREFIX: &str = "journal.";

/// A journal file set aside by a checkpoint for reuse (not replayed).
pub const JOURNAL_SPARE: &str = "journal.spare";

/// File name of journal number `n`.
pub fn journal_name(n: u64) -> String {
    format!("{JOURNAL_PREFIX}{n}")
}

/// Parses a journal file name back into its number.
pub fn parse_journal_name(name: &str) -> Option<u64> {
    parse_numbered(name, JOURNAL_PREFIX)
}

/// Directory name of generation `n`.
pub fn gen_name(n: u64) -> String {
    format!("gen-{n}")
}

/// Parses a generation directory name.
pub fn parse_gen_name(name: &str) -> Option<u64> {
    parse_numbered(name, "gen-")
}

/// Contents of `CURRENT` naming generation `n`.
pub fn current_contents(n: u64) -> String {
    format!("kvstore-format {FORMAT_VERSION}\ngen {n}\n")
}

/// Parses `CURRENT`; `Err` says what is wrong.
pub fn parse_current(bytes: &[u8]) -> Result<u64, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not utf-8".to_string())?;
    let mut lines = text.lines();
    match lines.next() {
        Some(l) if l == format!("kvstore-format {FORMAT_VERSION}") => {}
        Some(l) if l.starts_with("kvstore-format ") => {
            return Err(format!("unsupported format version line {l:?}"))
        }
        _ => return Err("missing format line".to_string()),
    }
    let gen = lines
        .next()
        .and_then(|l| l.strip_prefix("gen "))
        .and_then(|n| n.parse::<u64>().ok())
        .ok_or_else(|| "missing or bad generation line".to_string())?;
    if lines.next().is_some() || !text.ends_with('\n') {
        return Err("trailing data".to_string());
    }
    Ok(gen)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_matches_reference_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn value_names_round_trip() {
        let h = 0x0123456789abcdef;
        assert_eq!(value_rel_path(h, 0), "01/0123456789abcdef");
        assert_eq!(value_name(h, 3), "0123456789abcdef.3");
        assert_eq!(parse_value_name("0123456789abcdef"), Some((h, 0)));
        assert_eq!(parse_value_name("0123456789abcdef.3"), Some((h, 3)));
        assert_eq!(parse_value_name("0123456789abcdef.03"), None);
        assert_eq!(parse_value_name("0123456789abcdef."), None);
        assert_eq!(parse_value_name("0123456789ABCDEF"), None);
        assert_eq!(parse_value_name("~spare.1"), None);
        assert_eq!(parse_spare_name("~spare.17"), Some(17));
        assert_eq!(parse_spare_name("0123456789abcdef"), None);
        assert_eq!(subdir_name(u64::MAX), "ff");
    }

    #[test]
    fn current_round_trips_and_rejects_garbage() {
        assert_eq!(parse_current(current_contents(42).as_bytes()), Ok(42));
        assert!(parse_current(b"gen 4\n").is_err());
        assert!(parse_current(b"kvstore-format 1\ngen x\n").is_err());
        assert!(parse_current(b"kvstore-format 9\ngen 1\n").is_err());
        assert_eq!(parse_gen_name("gen-7"), Some(7));
        assert_eq!(parse_gen_name("gen-"), None);
    }
}
