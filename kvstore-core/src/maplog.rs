//! The map log: an append-only file of map records (postcard-encoded,
//! length-prefixed, checksummed). Pure encode/decode over byte slices.
//!
//! ```text
//! file   := MAGIC (8 bytes "KVSMAP1\n") frame*
//! frame  := len u32 LE | crc32 u32 LE of payload | payload (len bytes)
//! payload:= postcard(MapRecord)
//! ```
//!
//! A record is written only when a key gets a file (`Put`, with its
//! collision index) or loses it (`Remove`); overwrites write nothing. A
//! frame cut short at the end of the file (a torn append) is dropped; a
//! damaged frame with intact frames after it means the log cannot be trusted
//! and the map is rebuilt from the value files.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Magic bytes at the start of the map log.
pub const MAGIC: [u8; 8] = *b"KVSMAP1\n";
/// Bytes before a frame's payload.
pub const FRAME_HEADER: usize = 8;
/// Largest payload a frame may claim; a larger length is damage.
pub const MAX_PAYLOAD: usize = 1024;

/// Key bytes, serialized as postcard bytes (length + raw), borrowed on
/// decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bytes<'a>(pub &'a [u8]);

impl Serialize for Bytes<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Bytes<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <&'a [u8]>::deserialize(d).map(Bytes)
    }
}

/// One change of the map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MapRecord<'a> {
    /// `key` now lives in the file with collision index `idx`.
    Put {
        /// The key.
        #[serde(borrow)]
        key: Bytes<'a>,
        /// Collision index of its file.
        idx: u16,
    },
    /// `key` has no file any more.
    Remove {
        /// The key.
        #[serde(borrow)]
        key: Bytes<'a>,
    },
}

/// Appends one framed record to `out`.
pub fn encode_frame(record: &MapRecord<'_>, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME_HEADER]);
    // Serializing into a Vec cannot fail for these types.
    let payload = postcard::to_stdvec(record).unwrap_or_default();
    out.extend_from_slice(&payload);
    let len = payload.len() as u32;
    let crc = crc32fast::hash(&payload);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// How reading a log ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogEnd {
    /// Every byte belonged to a good frame.
    Clean,
    /// The last frame was cut short or damaged at the end of the file:
    /// everything from `valid_len` on should be dropped.
    TornTail {
        /// Length of the good prefix.
        valid_len: u64,
        /// What was wrong.
        what: String,
    },
    /// Damage with more data after it (or a bad file header): the log cannot
    /// be trusted.
    Damaged {
        /// Offset of the damage.
        at: u64,
        /// What was wrong.
        what: String,
    },
}

/// Decodes a whole log, calling `apply` for each good record in order.
/// Returns how it ended and the number of records applied.
pub fn decode_log<'a>(buf: &'a [u8], mut apply: impl FnMut(MapRecord<'a>)) -> (LogEnd, u64) {
    if buf.len() < MAGIC.len() {
        // A log cut short while its header was written: treat as empty.
        if MAGIC.starts_with(buf) {
            return (
                LogEnd::TornTail {
                    valid_len: 0,
                    what: "log header cut short".to_string(),
                },
                0,
            );
        }
        return (
            LogEnd::Damaged {
                at: 0,
                what: "bad log header".to_string(),
            },
            0,
        );
    }
    if buf[..MAGIC.len()] != MAGIC {
        return (
            LogEnd::Damaged {
                at: 0,
                what: "bad log header".to_string(),
            },
            0,
        );
    }
    let mut pos = MAGIC.len();
    let mut count = 0;
    while pos < buf.len() {
        let rest = &buf[pos..];
        if rest.len() < FRAME_HEADER {
            return (
                LogEnd::TornTail {
                    valid_len: pos as u64,
                    what: format!("frame header cut short at offset {pos}"),
                },
                count,
            );
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
        let bad = |what: String, end: usize| {
            if end >= buf.len() || buf[end.min(buf.len())..].iter().all(|&b| b == 0) {
                LogEnd::TornTail {
                    valid_len: pos as u64,
                    what,
                }
            } else {
                LogEnd::Damaged {
                    at: pos as u64,
                    what,
                }
            }
        };
        if len == 0 || len > MAX_PAYLOAD {
            // A zeroed or garbled length. If nothing but zeros follows, it is
            // a torn append (file extended, data not written).
            let end = if len > MAX_PAYLOAD {
                buf.len()
            } else {
                pos + FRAME_HEADER
            };
            let all_zero = buf[pos..].iter().all(|&b| b == 0);
            let what = format!("bad frame length {len} at offset {pos}");
            return (
                if all_zero || end >= buf.len() && len <= MAX_PAYLOAD {
                    LogEnd::TornTail {
                        valid_len: pos as u64,
                        what,
                    }
                } else {
                    LogEnd::Damaged {
                        at: pos as u64,
                        what,
                    }
                },
                count,
            );
        }
        let end = pos + FRAME_HEADER + len;
        if end > buf.len() {
            return (
                LogEnd::TornTail {
                    valid_len: pos as u64,
                    what: format!("frame at offset {pos} cut short"),
                },
                count,
            );
        }
        let payload = &buf[pos + FRAME_HEADER..end];
        if crc32fast::hash(payload) != crc {
            return (
                bad(format!("checksum mismatch in frame at offset {pos}"), end),
                count,
            );
        }
        match postcard::from_bytes::<MapRecord<'a>>(payload) {
            Ok(rec) => apply(rec),
            Err(e) => {
                return (
                    bad(format!("undecodable frame at offset {pos}: {e}"), end),
                    count,
                )
            }
        }
        count += 1;
        pos = end;
    }
    (LogEnd::Clean, count)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut buf = MAGIC.to_vec();
        encode_frame(
            &MapRecord::Put {
                key: Bytes(b"a"),
                idx: 0,
            },
            &mut buf,
        );
        encode_frame(
            &MapRecord::Put {
                key: Bytes(&[0xff; 250]),
                idx: 7,
            },
            &mut buf,
        );
        encode_frame(&MapRecord::Remove { key: Bytes(b"a") }, &mut buf);
        buf
    }

    fn collect(buf: &[u8]) -> (Vec<MapRecord<'_>>, LogEnd) {
        let mut out = Vec::new();
        let (end, n) = decode_log(buf, |r| out.push(r));
        assert_eq!(n as usize, out.len());
        (out, end)
    }

    #[test]
    fn round_trip() {
        let buf = sample();
        let (recs, end) = collect(&buf);
        assert_eq!(end, LogEnd::Clean);
        assert_eq!(recs.len(), 3);
        assert_eq!(
            recs[1],
            MapRecord::Put {
                key: Bytes(&[0xff; 250]),
                idx: 7
            }
        );
        assert_eq!(recs[2], MapRecord::Remove { key: Bytes(b"a") });
    }

    #[test]
    fn every_truncation_is_a_torn_tail_keeping_whole_frames() {
        let buf = sample();
        let (full, _) = collect(&buf);
        for cut in 0..buf.len() {
            let (recs, end) = collect(&buf[..cut]);
            assert!(
                matches!(end, LogEnd::TornTail { .. } | LogEnd::Clean),
                "cut {cut}: {end:?}"
            );
            assert_eq!(recs[..], full[..recs.len()]);
        }
    }

    #[test]
    fn garbled_last_frame_is_torn_and_garbled_middle_is_damage() {
        let buf = sample();
        let mut last = buf.clone();
        let n = last.len();
        last[n - 1] ^= 1;
        let (recs, end) = collect(&last);
        assert_eq!(recs.len(), 2);
        assert!(matches!(end, LogEnd::TornTail { .. }));

        let mut middle = buf.clone();
        middle[MAGIC.len() + FRAME_HEADER] ^= 1;
        let (recs, end) = collect(&middle);
        assert!(recs.is_empty());
        assert!(matches!(end, LogEnd::Damaged { at: 8, .. }));

        let mut zeros = buf.clone();
        zeros.extend_from_slice(&[0u8; 100]);
        let (recs, end) = collect(&zeros);
        assert_eq!(recs.len(), 3);
        assert!(matches!(end, LogEnd::TornTail { .. }));

        let (_, end) = collect(b"NOTALOG!....");
        assert!(matches!(end, LogEnd::Damaged { .. }));
    }
}
