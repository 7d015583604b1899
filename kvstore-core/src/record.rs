//! The value-file record: a self-describing, checksummed encoding of one
//! item. Pure functions over byte slices.
//!
//! ```text
//! offset size field
//!      0    4 magic  b"KVSR"
//!      4    1 format version (1)
//!      5    1 reserved (0)
//!      6    2 key length, u16 LE
//!      8    4 flags, u32 LE
//!     12    4 value length, u32 LE
//!     16    8 expiry: 0 = never, else Unix seconds (>= 1), u64 LE
//!     24    8 cas, u64 LE
//!     32    4 crc32 (crc32fast) of bytes 0..32, the key and the value
//!     36      key bytes, then value bytes
//! ```
//!
//! A value file may be longer than its record: spare files are reused
//! without truncation, so bytes after the record are ignored.

use crate::item::Expiry;
use crate::layout::FORMAT_VERSION;

/// Magic bytes at the start of every value file.
pub const MAGIC: [u8; 4] = *b"KVSR";
/// Length of the fixed header.
pub const HEADER_LEN: usize = 36;

/// The decoded fixed header of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Key length.
    pub key_len: usize,
    /// Value length.
    pub value_len: usize,
    /// Client flags.
    pub flags: u32,
    /// Expiry.
    pub expiry: Expiry,
    /// Cas number.
    pub cas: u64,
    crc: u32,
}

impl Header {
    /// Total length of the record (header, key and value).
    pub fn record_len(&self) -> usize {
        HEADER_LEN + self.key_len + self.value_len
    }
}

/// A decoded record borrowing from its buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    /// The key stored in the file.
    pub key: &'a [u8],
    /// The value.
    pub value: &'a [u8],
    /// Client flags.
    pub flags: u32,
    /// Expiry.
    pub expiry: Expiry,
    /// Cas number.
    pub cas: u64,
}

fn expiry_to_u64(expiry: Expiry) -> u64 {
    match expiry {
        Expiry::Never => 0,
        Expiry::At(t) => t.max(1),
    }
}

fn expiry_from_u64(v: u64) -> Expiry {
    if v == 0 {
        Expiry::Never
    } else {
        Expiry::At(v)
    }
}

/// Encodes a record. `None` if the key or value is too long for the format
/// (callers check the store's limits first, which are far smaller).
pub fn encode(key: &[u8], value: &[u8], flags: u32, expiry: Expiry, cas: u64) -> Option<Vec<u8>> {
    let key_len = u16::try_from(key.len()).ok()?;
    let value_len = u32::try_from(value.len()).ok()?;
    let mut buf = Vec::with_capacity(HEADER_LEN + key.len() + value.len());
    buf.extend_from_slice(&MAGIC);
    buf.push(FORMAT_VERSION);
    buf.push(0);
    buf.extend_from_slice(&key_len.to_le_bytes());
    buf.extend_from_slice(&flags.to_le_bytes());
    buf.extend_from_slice(&value_len.to_le_bytes());
    buf.extend_from_slice(&expiry_to_u64(expiry).to_le_bytes());
    buf.extend_from_slice(&cas.to_le_bytes());
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&buf[..32]);
    hasher.update(key);
    hasher.update(value);
    buf.extend_from_slice(&hasher.finalize().to_le_bytes());
    buf.extend_from_slice(key);
    buf.extend_from_slice(value);
    Some(buf)
}

fn u32_at(buf: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&buf[at..at + 4]);
    u32::from_le_bytes(b)
}

fn u64_at(buf: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    u64::from_le_bytes(b)
}

/// Decodes the fixed header (no checksum check: that needs the body).
pub fn decode_header(buf: &[u8]) -> Result<Header, String> {
    if buf.len() < HEADER_LEN {
        return Err(format!(
            "file of {} bytes is shorter than a record header",
            buf.len()
        ));
    }
    if buf[..4] != MAGIC {
        return Err("bad magic".to_string());
    }
    if buf[4] != FORMAT_VERSION {
        return Err(format!("unsupported record version {}", buf[4]));
    }
    Ok(Header {
        key_len: u16::from_le_bytes([buf[6], buf[7]]) as usize,
        flags: u32_at(buf, 8),
        value_len: u32_at(buf, 12) as usize,
        expiry: expiry_from_u64(u64_at(buf, 16)),
        cas: u64_at(buf, 24),
        crc: u32_at(buf, 32),
    })
}

/// The key of the record whose header starts `buf`, if `buf` holds it
/// (no checksum check: a hint of whose file it is).
pub fn header_key(buf: &[u8]) -> Option<&[u8]> {
    let header = decode_header(buf).ok()?;
    buf.get(HEADER_LEN..HEADER_LEN + header.key_len)
}

/// Decodes and checks a whole record at the start of `buf` (trailing bytes
/// are ignored).
pub fn decode(buf: &[u8]) -> Result<Record<'_>, String> {
    let header = decode_header(buf)?;
    let end = header.record_len();
    if buf.len() < end {
        return Err(format!(
            "record of {end} bytes is cut short at {} bytes",
            buf.len()
        ));
    }
    let key = &buf[HEADER_LEN..HEADER_LEN + header.key_len];
    let value = &buf[HEADER_LEN + header.key_len..end];
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&buf[..32]);
    hasher.update(key);
    hasher.update(value);
    if hasher.finalize() != header.crc {
        return Err("checksum mismatch".to_string());
    }
    Ok(Record {
        key,
        value,
        flags: header.flags,
        expiry: header.expiry,
        cas: header.cas,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_trailing_garbage() {
        let mut buf = encode(b"key", b"value", 7, Expiry::At(99), 1234).unwrap();
        buf.extend_from_slice(b"old stale bytes of a longer record");
        let rec = decode(&buf).unwrap();
        assert_eq!(rec.key, b"key");
        assert_eq!(rec.value, b"value");
        assert_eq!(rec.flags, 7);
        assert_eq!(rec.expiry, Expiry::At(99));
        assert_eq!(rec.cas, 1234);
        let empty = encode(b"k", b"", 0, Expiry::Never, 1).unwrap();
        assert_eq!(decode(&empty).unwrap().value, b"");
        assert_eq!(decode(&empty).unwrap().expiry, Expiry::Never);
    }

    #[test]
    fn damage_is_detected() {
        let buf = encode(b"key", b"value", 0, Expiry::Never, 1).unwrap();
        for i in 0..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x40;
            assert!(decode(&bad).is_err(), "flip at byte {i} not detected");
        }
        for len in 0..buf.len() {
            assert!(decode(&buf[..len]).is_err());
        }
    }
}
