//! The wire protocol: pure functions over byte buffers, no sockets.
//!
//! Both dialects (see `docs/PROTOCOL.md`) share the framing rules implemented
//! here: lines end with `\r\n` (a bare `\n` is accepted), tokens are
//! separated by one or more spaces, a command line is at most
//! [`MAX_LINE_BYTES`] long except retrieval lines (`get`, `gets`, `gat`,
//! `gats`), which may grow to [`MAX_RETRIEVAL_LINE_BYTES`]. The key rules
//! live in [`validate_key`], used by both dialects and by the clients.
//!
//! A parser takes the buffered bytes and answers with a [`Parsed`]: a
//! request and the bytes it used, "need more bytes", or a rejection that
//! carries the reply and how the connection resynchronizes ([`Reject`] for
//! the text dialects, [`binary::Reject`] for the binary protocol, whose
//! error replies echo fields of the request).

pub mod binary;
pub mod memcached;
pub mod meta;
pub mod seed;

use std::fmt;

/// The longest key, in bytes.
pub const MAX_KEY_BYTES: usize = kvstore_core::MAX_KEY_BYTES;

/// The longest command line (terminator excluded) before the connection is
/// closed, for every command except the retrieval commands.
pub const MAX_LINE_BYTES: usize = 2048;

/// The longest retrieval line (`get`, `gets`, `gat`, `gats` with many keys).
pub const MAX_RETRIEVAL_LINE_BYTES: usize = 2 << 20;

/// Why a key is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyError {
    /// The key is empty.
    Empty,
    /// The key is longer than [`MAX_KEY_BYTES`].
    TooLong(usize),
    /// The key holds a whitespace or control byte (`<= 0x20` or `0x7f`).
    BadByte(u8),
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::Empty => write!(f, "key is empty"),
            KeyError::TooLong(len) => {
                write!(f, "key of {len} bytes is longer than {MAX_KEY_BYTES} bytes")
            }
            KeyError::BadByte(b) => write!(f, "key holds the control or space byte 0x{b:02x}"),
        }
    }
}

impl std::error::Error for KeyError {}

/// Checks the key rules shared by both dialects and the clients: 1 to
/// [`MAX_KEY_BYTES`] bytes, none of them whitespace or control bytes
/// (`<= 0x20` or `0x7f`). Any other byte, UTF-8 or not, is allowed.
///
/// # Errors
/// [`KeyError`] naming the rule the key breaks.
pub fn validate_key(key: &[u8]) -> Result<(), KeyError> {
    validate_key_with(key, KeyPolicy::Strict)
}

/// Which bytes a key may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyPolicy {
    /// docs/PROTOCOL.md's rule: no whitespace or control bytes (`<= 0x20`,
    /// `0x7f`). The default.
    #[default]
    Strict,
    /// What memcached itself accepts: any byte but space, `\r` and `\n`.
    /// Only for load generators that need it (memcaslap puts eight 0x10
    /// bytes at the start of every key); not docs/PROTOCOL.md conforming.
    MemcachedCompatible,
}

/// [`validate_key`] under a [`KeyPolicy`].
///
/// # Errors
/// [`KeyError`] naming the rule the key breaks.
pub fn validate_key_with(key: &[u8], policy: KeyPolicy) -> Result<(), KeyError> {
    if key.is_empty() {
        return Err(KeyError::Empty);
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(KeyError::TooLong(key.len()));
    }
    let bad = match policy {
        KeyPolicy::Strict => key.iter().find(|&&b| b <= 0x20 || b == 0x7f),
        KeyPolicy::MemcachedCompatible => key.iter().find(|&&b| matches!(b, b' ' | b'\r' | b'\n')),
    };
    match bad {
        Some(&b) => Err(KeyError::BadByte(b)),
        None => Ok(()),
    }
}

/// What to do with the connection after a rejected request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// Send the reply, then discard this many bytes (they may not all be
    /// buffered yet: an oversized data block is skipped as it arrives, never
    /// buffered) and go on with the next request.
    Discard(u64),
    /// Send the reply (if any), then close the connection.
    Close,
}

/// A rejected request: the reply to send and how to resynchronize.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reject {
    /// The complete reply, terminator included; empty for none.
    pub reply: &'static [u8],
    /// How the connection goes on.
    pub recovery: Recovery,
}

/// How a rejection tells the connection to go on; implemented by every
/// dialect's rejection type.
pub trait Rejection {
    /// What to do with the connection once the reply (if any) is sent.
    fn recovery(&self) -> Recovery;
}

impl Rejection for Reject {
    fn recovery(&self) -> Recovery {
        self.recovery
    }
}

/// The result of parsing buffered bytes: `R` is the dialect's request, `J`
/// its rejection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed<R, J = Reject> {
    /// A complete request that used the first `consumed` bytes.
    Request {
        /// The request.
        request: R,
        /// Bytes of the buffer it used.
        consumed: usize,
    },
    /// The buffer does not hold a complete request yet (not an error).
    Incomplete,
    /// The request is refused.
    Reject(J),
}

/// Parses `buf` as a connection does, one request after another, up to
/// the first incomplete request or a close, and describes each step (the
/// `Debug` form of the request or the rejection). A checking aid shared by
/// every dialect's property tests and the fuzz targets.
///
/// # Panics
/// If `parse` breaks its contract: a request that consumes nothing or more
/// than the buffer, or a rejection that discards nothing.
pub fn describe_steps<'a, R: fmt::Debug, J: fmt::Debug + Rejection>(
    buf: &'a [u8],
    mut parse: impl FnMut(&'a [u8]) -> Parsed<R, J>,
) -> Vec<String> {
    let mut pos = 0usize;
    let mut steps = Vec::new();
    while pos < buf.len() {
        match parse(&buf[pos..]) {
            Parsed::Request { request, consumed } => {
                assert!(consumed > 0 && consumed <= buf.len() - pos);
                steps.push(format!("{request:?}"));
                pos += consumed;
            }
            Parsed::Incomplete => break,
            Parsed::Reject(r) => {
                steps.push(format!("{r:?}"));
                match r.recovery() {
                    Recovery::Discard(n) => {
                        assert!(n > 0);
                        pos = pos.saturating_add(usize::try_from(n).unwrap_or(usize::MAX));
                    }
                    Recovery::Close => break,
                }
            }
        }
    }
    steps
}

/// The keys of a retrieval line, iterated lazily without allocating.
#[derive(Clone, Copy)]
pub struct Keys<'a> {
    rest: &'a [u8],
}

impl<'a> Keys<'a> {
    /// Keys separated by spaces in `raw` (already validated by the parser).
    pub fn from_raw(raw: &'a [u8]) -> Keys<'a> {
        Keys { rest: raw }
    }

    /// The raw space-separated keys.
    pub fn as_raw(&self) -> &'a [u8] {
        self.rest
    }
}

impl<'a> Iterator for Keys<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let start = self.rest.iter().position(|&b| b != b' ')?;
        let rest = &self.rest[start..];
        let end = rest.iter().position(|&b| b == b' ').unwrap_or(rest.len());
        self.rest = &rest[end..];
        Some(&rest[..end])
    }
}

impl PartialEq for Keys<'_> {
    fn eq(&self, other: &Self) -> bool {
        (*self).eq(*other)
    }
}

impl Eq for Keys<'_> {}

impl fmt::Debug for Keys<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries((*self).map(|k| String::from_utf8_lossy(k).into_owned()))
            .finish()
    }
}

/// A complete line found in the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Line<'a> {
    /// The line without its terminator, and the bytes it used with it.
    Complete(&'a [u8], usize),
    /// No terminator yet, and the line is still within its cap.
    Incomplete,
    /// No terminator within the cap: the connection must be closed.
    TooLong,
}

/// Whether `buf` starts like a retrieval command, whose line may be long.
fn is_retrieval_start(buf: &[u8]) -> bool {
    [&b"get "[..], b"gets ", b"gat ", b"gats "]
        .iter()
        .any(|p| buf.starts_with(p))
}

/// Finds the first line of `buf`, enforcing the line caps.
pub(crate) fn split_line(buf: &[u8]) -> Line<'_> {
    let cap = if is_retrieval_start(buf) {
        MAX_RETRIEVAL_LINE_BYTES
    } else {
        MAX_LINE_BYTES
    };
    // The terminator may be `\r\n`: look one byte past the cap.
    let window = &buf[..buf.len().min(cap + 2)];
    match window.iter().position(|&b| b == b'\n') {
        Some(nl) => {
            let line = &buf[..nl];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.len() > cap {
                Line::TooLong
            } else {
                Line::Complete(line, nl + 1)
            }
        }
        None if buf.len() > cap + 1 => Line::TooLong,
        None => Line::Incomplete,
    }
}

/// Up to `N` space-separated tokens of a line; `None` if there are more.
pub(crate) fn tokens<const N: usize>(line: &[u8]) -> Option<([&[u8]; N], usize)> {
    let mut out: [&[u8]; N] = [&[]; N];
    let mut n = 0;
    for tok in Keys::from_raw(line) {
        if n == N {
            return None;
        }
        out[n] = tok;
        n += 1;
    }
    Some((out, n))
}

/// The bytes after the first token of `line` (the keys of a `get`).
pub(crate) fn after_first_token(line: &[u8]) -> &[u8] {
    let start = line.iter().position(|&b| b != b' ').unwrap_or(line.len());
    let rest = &line[start..];
    let end = rest.iter().position(|&b| b == b' ').unwrap_or(rest.len());
    &rest[end..]
}

/// Whether a line looks like the request line of HTTP, which closes the
/// connection (a browser or a scanner, not a client of ours).
pub(crate) fn looks_like_http(line: &[u8]) -> bool {
    const METHODS: [&[u8]; 9] = [
        b"GET", b"POST", b"PUT", b"HEAD", b"DELETE", b"OPTIONS", b"PATCH", b"CONNECT", b"TRACE",
    ];
    let mut toks = Keys::from_raw(line);
    let first = toks.next();
    let last = toks.last();
    first.is_some_and(|f| METHODS.contains(&f)) || last.is_some_and(|l| l.starts_with(b"HTTP/"))
}

/// Parses a decimal number made of ASCII digits only (no sign, no spaces);
/// `None` on anything else or on overflow.
pub(crate) fn parse_u64(tok: &[u8]) -> Option<u64> {
    if tok.is_empty() || tok.len() > 20 {
        return None;
    }
    let mut n: u64 = 0;
    for &b in tok {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(n)
}

/// Parses a decimal number with an optional leading `-`.
pub(crate) fn parse_i64(tok: &[u8]) -> Option<i64> {
    match tok.strip_prefix(b"-") {
        Some(digits) => {
            let n = parse_u64(digits)?;
            if n > i64::MAX as u64 + 1 {
                None
            } else {
                Some((n as i128).wrapping_neg() as i64)
            }
        }
        None => i64::try_from(parse_u64(tok)?).ok(),
    }
}

/// Appends the decimal form of `n` to `out` without going through `fmt`.
pub fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&tmp[i..]);
}

/// What follows a data block that starts at `start` and is `len` bytes
/// long: `Ok(total)` when `\r\n` follows (total bytes used from the start
/// of the buffer), `Err(parsed)` otherwise.
pub(crate) fn data_block<R>(
    buf: &[u8],
    start: usize,
    len: usize,
    bad_chunk: &'static [u8],
) -> Result<usize, Parsed<R>> {
    let end = start + len;
    if buf.len() < end + 2 {
        return Err(Parsed::Incomplete);
    }
    if &buf[end..end + 2] == b"\r\n" {
        return Ok(end + 2);
    }
    // Resynchronize at the end of the line the block overran into, so that
    // one bad block gives one error reply.
    let skip_to = match buf[end..].iter().position(|&b| b == b'\n') {
        Some(nl) => end + nl + 1,
        None if buf.len() - end <= MAX_LINE_BYTES => return Err(Parsed::Incomplete),
        None => end + 2,
    };
    Err(Parsed::Reject(Reject {
        reply: bad_chunk,
        recovery: Recovery::Discard(skip_to as u64),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_rules() {
        assert_eq!(validate_key(b"a"), Ok(()));
        assert_eq!(validate_key(&[b'k'; 250]), Ok(()));
        assert_eq!(validate_key(&[b'k'; 251]), Err(KeyError::TooLong(251)));
        assert_eq!(validate_key(b""), Err(KeyError::Empty));
        assert_eq!(validate_key(b"a b"), Err(KeyError::BadByte(b' ')));
        assert_eq!(validate_key(b"a\tb"), Err(KeyError::BadByte(b'\t')));
        assert_eq!(validate_key(b"a\x7f"), Err(KeyError::BadByte(0x7f)));
        assert_eq!(validate_key(b"\x00"), Err(KeyError::BadByte(0)));
        assert_eq!(validate_key(b"\xff\xfe/../etc"), Ok(()));
        let lenient = KeyPolicy::MemcachedCompatible;
        assert_eq!(validate_key_with(b"\x10\x10abc\x00", lenient), Ok(()));
        assert_eq!(
            validate_key_with(b"a\rb", lenient),
            Err(KeyError::BadByte(b'\r'))
        );
        assert_eq!(
            validate_key_with(&[b'k'; 251], lenient),
            Err(KeyError::TooLong(251))
        );
    }

    #[test]
    fn lines_end_with_crlf_or_lf() {
        assert_eq!(split_line(b"get a\r\nx"), Line::Complete(b"get a", 7));
        assert_eq!(split_line(b"get a\nx"), Line::Complete(b"get a", 6));
        assert_eq!(split_line(b"get a\r"), Line::Incomplete);
        assert_eq!(split_line(b""), Line::Incomplete);
    }

    #[test]
    fn line_caps() {
        let mut long = vec![b'x'; MAX_LINE_BYTES];
        assert_eq!(split_line(&long), Line::Incomplete);
        long.extend_from_slice(b"\r\n");
        assert!(matches!(split_line(&long), Line::Complete(_, _)));
        let mut too_long = vec![b'x'; MAX_LINE_BYTES + 1];
        too_long.extend_from_slice(b"\r\n");
        assert_eq!(split_line(&too_long), Line::TooLong);
        assert_eq!(split_line(&vec![b'x'; MAX_LINE_BYTES + 2]), Line::TooLong);
        let mut get = b"get ".to_vec();
        get.extend(std::iter::repeat_n(b'k', 100_000));
        assert_eq!(split_line(&get), Line::Incomplete);
        get.extend_from_slice(b"\r\n");
        assert!(matches!(split_line(&get), Line::Complete(_, n) if n == get.len()));
    }

    #[test]
    fn tokens_split_on_runs_of_spaces() {
        let (t, n) = tokens::<4>(b"  set  k 5 ").unwrap();
        assert_eq!(n, 3);
        assert_eq!(&t[..n], &[&b"set"[..], b"k", b"5"]);
        assert!(tokens::<2>(b"a b c").is_none());
        assert_eq!(after_first_token(b" get a b"), b" a b");
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_u64(b"0"), Some(0));
        assert_eq!(parse_u64(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_u64(b"18446744073709551616"), None);
        assert_eq!(parse_u64(b"-1"), None);
        assert_eq!(parse_u64(b"+1"), None);
        assert_eq!(parse_u64(b"1x"), None);
        assert_eq!(parse_u64(b""), None);
        assert_eq!(parse_i64(b"-1"), Some(-1));
        assert_eq!(parse_i64(b"-9223372036854775808"), Some(i64::MIN));
        assert_eq!(parse_i64(b"9223372036854775808"), None);
        assert_eq!(parse_i64(b"-"), None);
        let mut out = Vec::new();
        push_u64(&mut out, 0);
        out.push(b' ');
        push_u64(&mut out, u64::MAX);
        assert_eq!(out, b"0 18446744073709551615");
    }

    #[test]
    fn http_lines_are_recognized() {
        assert!(looks_like_http(b"GET / HTTP/1.1"));
        assert!(looks_like_http(b"POST /x HTTP/1.0"));
        assert!(looks_like_http(b"GET"));
        assert!(!looks_like_http(b"get a"));
        assert!(!looks_like_http(b""));
    }
}
