//! The write-ahead journal of `Durability::Periodic` and `Always`: a
//! checksummed file format of batches of entries. Pure functions over byte
//! slices. How the store uses it: docs/DESIGN.md, sections 2.3 and 3.
//!
//! ```text
//! file:    header, then batches
//! header:  magic b"KVSJRNL2" | u64 LE file number | u32 LE crc32 of those 16 bytes
//! batch:   u32 LE length of the frames | u32 LE crc32 of (file number LE, frames) | frames
//! frame:   u32 LE payload length | u32 LE crc32 of the payload | payload
//! payload: u8 kind | u64 LE generation | body
//!   kind 1, put:    body = a value record (record.rs), carrying key and cas
//!   kind 2, remove: body = u64 LE cas | key
//!   kind 3, cancel: body = u64 LE cas of an earlier entry whose file change
//!                   failed (the writer was told so): replay skips it
//! ```
//!
//! A batch is what one flush made durable. Journal files are reused in
//! place (so that a flush rewrites data blocks but not the inode), which
//! leaves the batches of an earlier use after the current end: the file
//! number in every batch's checksum makes them fail. Decoding stops at the
//! first batch that is short, empty or fails its checksum, so what is
//! replayed is always a prefix of the writes.

use crate::record;

/// Magic bytes at the start of a journal file.
pub const MAGIC: [u8; 8] = *b"KVSJRNL2";
/// Length of the file header.
pub const HEADER_LEN: usize = 20;
/// Length of a batch's and of a frame's header (length and checksum).
pub const FRAME_HEADER: usize = 8;

/// The header of journal file number `seq`.
pub fn header(seq: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(&MAGIC);
    h[8..16].copy_from_slice(&seq.to_le_bytes());
    let crc = crc32fast::hash(&h[..16]);
    h[16..].copy_from_slice(&crc.to_le_bytes());
    h
}

/// The header of a batch of `frames` (encoded with [`encode`]) in journal
/// file number `seq`.
pub fn batch_header(seq: u64, frames: &[u8]) -> [u8; FRAME_HEADER] {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&seq.to_le_bytes());
    hasher.update(frames);
    let mut h = [0u8; FRAME_HEADER];
    h[..4].copy_from_slice(&(frames.len() as u32).to_le_bytes());
    h[4..].copy_from_slice(&hasher.finalize().to_le_bytes());
    h
}

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

/// Decodes journal file number `seq`, calling `apply` for each entry in
/// order, up to the first bad batch. A file whose header is missing,
/// damaged or of another number has no entries.
pub fn decode<'a>(buf: &'a [u8], seq: u64, mut apply: impl FnMut(Entry<'a>)) -> End {
    if buf.get(..HEADER_LEN) != Some(&header(seq)[..]) {
        return End::Stopped {
            at: 0,
            what: format!("no header of journal {seq}"),
        };
    }
    let mut at = HEADER_LEN;
    while at < buf.len() {
        let stop = |what: &str| End::Stopped {
            at,
            what: what.into(),
        };
        let (Some(len), Some(crc)) = (u32_at(buf, at), u32_at(buf, at + 4)) else {
            return stop("short batch header");
        };
        let start = at + FRAME_HEADER;
        let Some(frames) = start
            .checked_add(len as usize)
            .and_then(|end| buf.get(start..end))
        else {
            return stop("short batch");
        };
        if len == 0 || batch_header(seq, frames)[4..] != crc.to_le_bytes() {
            return stop("end of batches (checksum mismatch)");
        }
        let mut entries = Vec::new();
        if decode_frames(frames, |e| entries.push(e)).is_err() {
            return stop("malformed entry in a good batch");
        }
        entries.into_iter().for_each(&mut apply);
        at = start + frames.len();
    }
    End::Clean
}

/// Decodes the frames of one batch; `Err` at the first bad one.
fn decode_frames<'a>(buf: &'a [u8], mut apply: impl FnMut(Entry<'a>)) -> Result<(), ()> {
    let mut at = 0;
    while at < buf.len() {
        let len = u32_at(buf, at).ok_or(())? as usize;
        let crc = u32_at(buf, at + 4).ok_or(())?;
        let start = at + FRAME_HEADER;
        let payload = start
            .checked_add(len)
            .and_then(|end| buf.get(start..end))
            .ok_or(())?;
        if crc32fast::hash(payload) != crc {
            return Err(());
        }
        apply(decode_payload(payload).ok_or(())?);
        at = start + len;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::item::Expiry;

    /// A journal file numbered `seq` with one batch per slice of entries.
    fn file(seq: u64, batches: &[&[Entry<'_>]]) -> Vec<u8> {
        let mut buf = header(seq).to_vec();
        for batch in batches {
            let mut frames = Vec::new();
            for e in batch.iter() {
                encode(e, &mut frames);
            }
            buf.extend_from_slice(&batch_header(seq, &frames));
            buf.extend_from_slice(&frames);
        }
        buf
    }

    fn all(buf: &[u8], seq: u64) -> (Vec<Entry<'_>>, End) {
        let mut out = Vec::new();
        let end = decode(buf, seq, |e| out.push(e));
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
        let buf = file(9, &[&entries[..2], &entries[2..]]);
        let (got, end) = all(&buf, 9);
        assert_eq!(end, End::Clean);
        assert_eq!(got, entries);
        // Read under another number, the same bytes hold nothing.
        assert!(all(&buf, 8).0.is_empty());
    }

    #[test]
    fn a_torn_batch_hides_itself_and_everything_after() {
        let rec = record::encode(b"k", b"v", 0, Expiry::Never, 1).unwrap();
        let one = Entry::Put {
            gen: 1,
            record: &rec,
        };
        let buf = file(1, &[&[one], &[one, one], &[one]]);
        let first_end = file(1, &[&[one]]).len();
        let second_end = file(1, &[&[one], &[one, one]]).len();
        for cut in first_end..second_end {
            let (got, end) = all(&buf[..cut], 1);
            assert_eq!(got.len(), 1, "cut at {cut}");
            if cut > first_end {
                assert!(matches!(end, End::Stopped { at, .. } if at == first_end));
            }
        }
        let mut bad = buf.clone();
        bad[first_end + FRAME_HEADER + 3] ^= 1;
        assert_eq!(all(&bad, 1).0.len(), 1);
        // Zeros after the last batch (a preallocated or reused file).
        let mut zeros = buf.clone();
        zeros.extend_from_slice(&[0; 64]);
        assert_eq!(all(&zeros, 1).0.len(), 4);
        assert!(matches!(all(b"nonsense", 1).1, End::Stopped { at: 0, .. }));
    }

    #[test]
    fn batches_of_an_earlier_use_of_the_file_are_not_read() {
        let rec = record::encode(b"k", b"old", 0, Expiry::Never, 1).unwrap();
        let new_rec = record::encode(b"k", b"new", 0, Expiry::Never, 2).unwrap();
        let old = Entry::Put {
            gen: 1,
            record: &rec,
        };
        let new = Entry::Put {
            gen: 1,
            record: &new_rec,
        };
        let mut reused = file(5, &[&[old], &[old], &[old]]);
        let fresh = file(7, &[&[new]]);
        reused[..fresh.len()].copy_from_slice(&fresh);
        let (got, end) = all(&reused, 7);
        assert_eq!(got, vec![new]);
        assert!(matches!(end, End::Stopped { .. }));
    }

    #[test]
    fn huge_length_is_not_trusted() {
        let mut buf = header(1).to_vec();
        buf.extend_from_slice(&u32::MAX.to_le_bytes());
        buf.extend_from_slice(&[0; 4]);
        buf.extend_from_slice(b"short");
        let (got, end) = all(&buf, 1);
        assert!(got.is_empty());
        assert!(matches!(end, End::Stopped { at: HEADER_LEN, .. }));
    }
}
