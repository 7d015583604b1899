//! The write-ahead journal of `Durability::Always`: a checksummed,
//! append-only file format. Pure functions over byte slices.
//!
//! In `Always` mode a write first appends its whole record to the journal
//! and waits for a group-committed `fdatasync` of it (one flush shared by
//! every writer waiting at that moment), and only then changes the value
//! files, without flushing them. After a power cut, opening the store
//! replays the journal onto the files; a checkpoint (`syncfs`, then the
//! journal file is removed) bounds its length.
//!
//! ```text
//! file:    magic b"KVSJRNL1", then frames
//! frame:   u32 LE payload length | u32 LE crc32 of the payload | payload
//! payload: u8 kind | u64 LE generation | body
//!   kind 1, put:    body = a value record (record.rs), carrying key and cas
//!   kind 2, remove: body = u64 LE cas | key
//!   kind 3, cancel: body = u64 LE cas of an earlier entry whose file change
//!                   failed (the writer was told so): replay skips it
//! ```
//!
//! Decoding stops at the first frame that is short or fails its checksum:
//! a torn tail (or a frame written after one, out of order) is never
//! replayed, so what is replayed is always a prefix of the writes.

use crate::record;

/// Magic bytes at the start of a journal file.
pub const MAGIC: [u8; 8] = *b"KVSJRNL1";
/// Length of a frame's header (length and checksum).
pub const FRAME_HEADER: usize = 8;

const KIND_PUT: u8 = 1;
const KIND_REMOVE: u8 = 2;
const KIND_CANCEL: u8 = 3;

/// One journal entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry<'a> {
    /// The key was set to this value record (see `record.rs`).
    Put {
        /// Generation the write belongs to.
        gen: u64,
        /// The encoded value record.
        record: &'a [u8],
    },
    /// The key was removed.
    Remove {
        /// Generation the removal belongs to.
        gen: u64,
        /// The removal's cas number (identifies the entry).
        cas: u64,
        /// The key.
        key: &'a [u8],
    },
    /// The entry with this cas did not happen (its file change failed).
    Cancel {
        /// Generation of the cancelled entry.
        gen: u64,
        /// Cas of the cancelled entry.
        cas: u64,
    },
}

/// Appends the frame of `entry` to `out`.
pub fn encode(entry: &Entry<'_>, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER]);
    let (kind, gen) = match *entry {
        Entry::Put { gen, .. } => (KIND_PUT, gen),
        Entry::Remove { gen, .. } => (KIND_REMOVE, gen),
        Entry::Cancel { gen, .. } => (KIND_CANCEL, gen),
    };
    out.push(kind);
    out.extend_from_slice(&gen.to_le_bytes());
    match *entry {
        Entry::Put { record, .. } => out.extend_from_slice(record),
        Entry::Remove { cas, key, .. } => {
            out.extend_from_slice(&cas.to_le_bytes());
            out.extend_from_slice(key);
        }
        Entry::Cancel { cas, .. } => out.extend_from_slice(&cas.to_le_bytes()),
    }
    let payload = &out[start + FRAME_HEADER..];
    let len = payload.len() as u32;
    let crc = crc32fast::hash(payload);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

fn u64_at(buf: &[u8], at: usize) -> Option<u64> {
    let b: [u8; 8] = buf.get(at..at + 8)?.try_into().ok()?;
    Some(u64::from_le_bytes(b))
}

fn u32_at(buf: &[u8], at: usize) -> Option<u32> {
    let b: [u8; 4] = buf.get(at..at + 4)?.try_into().ok()?;
    Some(u32::from_le_bytes(b))
}

/// Decodes one payload (after its checksum was checked).
fn decode_payload(p: &[u8]) -> Option<Entry<'_>> {
    let kind = *p.first()?;
    let gen = u64_at(p, 1)?;
    let body = p.get(9..)?;
    match kind {
        KIND_PUT => {
            // The record must decode on its own, checksum included.
            record::decode(body).ok()?;
            Some(Entry::Put { gen, record: body })
        }
        KIND_REMOVE => Some(Entry::Remove {
            gen,
            cas: u64_at(body, 0)?,
            key: body.get(8..)?,
        }),
        KIND_CANCEL if body.len() == 8 => Some(Entry::Cancel {
            gen,
            cas: u64_at(body, 0)?,
        }),
        _ => None,
    }
}

/// How far a journal file decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// Every byte belongs to a good frame.
    Clean,
    /// Decoding stopped at `at` (a torn or damaged frame): what follows is
    /// ignored.
    Stopped {
        /// Offset of the first bad frame.
        at: usize,
        /// What was wrong.
        what: String,
    },
}

/// Decodes a whole journal file, calling `apply` for each good entry in
/// order, up to the first bad frame.
pub fn decode<'a>(buf: &'a [u8], mut apply: impl FnMut(Entry<'a>)) -> End {
    if buf.len() < MAGIC.len() || buf[..MAGIC.len()] != MAGIC {
        return End::Stopped {
            at: 0,
            what: "no journal magic".into(),
        };
    }
    let mut at = MAGIC.len();
    while at < buf.len() {
        let stop = |what: &str| End::Stopped {
            at,
            what: what.into(),
        };
        let (Some(len), Some(crc)) = (u32_at(buf, at), u32_at(buf, at + 4)) else {
            return stop("short frame header");
        };
        let start = at + FRAME_HEADER;
        let Some(payload) = start
            .checked_add(len as usize)
            .and_then(|end| buf.get(start..end))
        else {
            return stop("short frame");
        };
        if crc32fast::hash(payload) != crc {
            return stop("checksum mismatch");
        }
        let Some(entry) = decode_payload(payload) else {
            return stop("malformed entry");
        };
        apply(entry);
        at = start + payload.len();
    }
    End::Clean
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::item::Expiry;

    fn file(entries: &[Entry<'_>]) -> Vec<u8> {
        let mut buf = MAGIC.to_vec();
        for e in entries {
            encode(e, &mut buf);
        }
        buf
    }

    fn all(buf: &[u8]) -> (Vec<Entry<'_>>, End) {
        let mut out = Vec::new();
        let end = decode(buf, |e| out.push(e));
        (out, end)
    }

    #[test]
    fn round_trip_of_every_kind() {
        let rec = record::encode(b"k", b"value", 7, Expiry::Never, 42).unwrap();
        let entries = [
            Entry::Put {
                gen: 3,
                record: &rec,
            },
            Entry::Remove {
                gen: 3,
                cas: 43,
                key: b"k",
            },
            Entry::Cancel { gen: 3, cas: 43 },
        ];
        let buf = file(&entries);
        let (got, end) = all(&buf);
        assert_eq!(end, End::Clean);
        assert_eq!(got, entries);
    }

    #[test]
    fn torn_tail_and_damage_stop_decoding() {
        let rec = record::encode(b"k", b"v", 0, Expiry::Never, 1).unwrap();
        let one = Entry::Put {
            gen: 1,
            record: &rec,
        };
        let buf = file(&[one, one]);
        let first_end = (buf.len() - MAGIC.len()) / 2 + MAGIC.len();
        for cut in first_end..buf.len() {
            let (got, end) = all(&buf[..cut]);
            assert_eq!(got.len(), 1, "cut at {cut}");
            if cut == first_end {
                assert_eq!(end, End::Clean);
            } else {
                assert!(matches!(end, End::Stopped { at, .. } if at == first_end));
            }
        }
        let mut bad = buf.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert_eq!(all(&bad).0.len(), 1);
        // A damaged first frame hides the good one after it.
        let mut bad = buf.clone();
        bad[MAGIC.len() + FRAME_HEADER + 3] ^= 1;
        assert_eq!(all(&bad).0.len(), 0);
        assert!(matches!(all(b"nonsense").1, End::Stopped { at: 0, .. }));
    }

    #[test]
    fn huge_length_is_not_trusted() {
        let mut buf = MAGIC.to_vec();
        buf.extend_from_slice(&u32::MAX.to_le_bytes());
        buf.extend_from_slice(&[0; 4]);
        buf.extend_from_slice(b"short");
        let (got, end) = all(&buf);
        assert!(got.is_empty());
        assert!(matches!(end, End::Stopped { at: 8, .. }));
    }
}
