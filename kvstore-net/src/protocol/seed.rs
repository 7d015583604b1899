//! The seed dialect (docs/PROTOCOL.md, "Seed dialect"): request parser, reply
//! encoders, and the reply decoders the [`Client`](crate::Client) uses.
//!
//! | request | reply |
//! | --- | --- |
//! | `set <key> <bytes>\r\n<data>\r\n` | `STORED` / `NOT-STORED` |
//! | `get <key>...` | `VALUE <key> <bytes>\r\n<data>\r\n` per key (missing: empty), `END` |
//! | `delete` | `DELETED` (every key removed) |
//! | `delete <key>` | `DELETED` / `NOT-FOUND` |
//! | `auth <user> <password>` | `AUTHENTICATED` / `AUTH-FAILED` |
//! | anything before `auth`, on a server with an auth file | `AUTH-REQUIRED` |
//! | anything else | `INVALID REQUEST` |

use super::{
    after_first_token, data_block, looks_like_http, parse_u64, push_u64, split_line, tokens,
    validate_key_with, KeyPolicy, Keys, Line, Parsed, Recovery, Reject,
};

/// `STORED\r\n`
pub const STORED: &[u8] = b"STORED\r\n";
/// `NOT-STORED\r\n`
pub const NOT_STORED: &[u8] = b"NOT-STORED\r\n";
/// `DELETED\r\n`
pub const DELETED: &[u8] = b"DELETED\r\n";
/// `NOT-FOUND\r\n`
pub const NOT_FOUND: &[u8] = b"NOT-FOUND\r\n";
/// `END\r\n`
pub const END: &[u8] = b"END\r\n";
/// `INVALID REQUEST\r\n`
pub const INVALID_REQUEST: &[u8] = b"INVALID REQUEST\r\n";
/// `AUTHENTICATED\r\n`: `auth` succeeded.
pub const AUTHENTICATED: &[u8] = b"AUTHENTICATED\r\n";
/// `AUTH-FAILED\r\n`: wrong credentials, or a server without an auth file.
pub const AUTH_FAILED: &[u8] = b"AUTH-FAILED\r\n";
/// `AUTH-REQUIRED\r\n`: a request before a successful `auth`.
pub const AUTH_REQUIRED: &[u8] = b"AUTH-REQUIRED\r\n";

/// A request of the seed dialect, borrowing from the buffer it was parsed
/// from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request<'a> {
    /// `set <key> <bytes>\r\n<data>\r\n`
    Set {
        /// The key.
        key: &'a [u8],
        /// The data block.
        value: &'a [u8],
    },
    /// `get <key> [<key>...]`
    Get {
        /// The keys, in request order.
        keys: Keys<'a>,
    },
    /// `delete <key>`
    Delete {
        /// The key.
        key: &'a [u8],
    },
    /// `delete` without a key: removes every key.
    Clear,
    /// `auth <user> <password>`: single tokens, no spaces in either.
    Auth {
        /// The user name.
        user: &'a [u8],
        /// The password.
        password: &'a [u8],
    },
}

impl Request<'_> {
    /// Appends the wire form of the request to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Request::Set { key, value } => {
                out.extend_from_slice(b"set ");
                out.extend_from_slice(key);
                out.push(b' ');
                push_u64(out, value.len() as u64);
                out.extend_from_slice(b"\r\n");
                out.extend_from_slice(value);
                out.extend_from_slice(b"\r\n");
            }
            Request::Get { keys } => encode_get(out, *keys),
            Request::Delete { key } => {
                out.extend_from_slice(b"delete ");
                out.extend_from_slice(key);
                out.extend_from_slice(b"\r\n");
            }
            Request::Clear => out.extend_from_slice(b"delete\r\n"),
            Request::Auth { user, password } => {
                out.extend_from_slice(b"auth ");
                out.extend_from_slice(user);
                out.push(b' ');
                out.extend_from_slice(password);
                out.extend_from_slice(b"\r\n");
            }
        }
    }
}

/// Appends `get <k1> <k2> ...\r\n` to `out`.
pub fn encode_get<'k>(out: &mut Vec<u8>, keys: impl IntoIterator<Item = &'k [u8]>) {
    out.extend_from_slice(b"get");
    for key in keys {
        out.push(b' ');
        out.extend_from_slice(key);
    }
    out.extend_from_slice(b"\r\n");
}

/// Limits the parser enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest data block accepted; a larger one is answered `NOT-STORED`
    /// and skipped without being buffered.
    pub max_value_bytes: usize,
    /// Which bytes keys may hold.
    pub keys: KeyPolicy,
}

const fn reject_line(consumed: usize) -> Parsed<Request<'static>> {
    Parsed::Reject(Reject {
        reply: INVALID_REQUEST,
        recovery: Recovery::Discard(consumed as u64),
    })
}

const CLOSE: Reject = Reject {
    reply: b"",
    recovery: Recovery::Close,
};

/// Parses the first request in `buf`.
///
/// A rejected `set` whose header parsed (three tokens and a decimal size)
/// also discards its announced data block; any other rejected line discards
/// the line. A line over the cap closes the connection after
/// `INVALID REQUEST`; a line that looks like HTTP closes it at once.
pub fn parse<'a>(buf: &'a [u8], limits: &Limits) -> Parsed<Request<'a>> {
    let (line, line_len) = match split_line(buf) {
        Line::Complete(line, used) => (line, used),
        Line::Incomplete => return Parsed::Incomplete,
        Line::TooLong => {
            return Parsed::Reject(Reject {
                reply: INVALID_REQUEST,
                recovery: Recovery::Close,
            })
        }
    };
    let Some((toks, n)) = tokens::<3>(line) else {
        if looks_like_http(line) {
            return Parsed::Reject(CLOSE);
        }
        // Only `get` takes more than three tokens.
        return parse_get(line, line_len, limits.keys);
    };
    match (&toks[..n], n) {
        ([b"set", key, size], 3) => {
            let Some(size) = parse_u64(size) else {
                return reject_line(line_len);
            };
            let block_end = (line_len as u64).saturating_add(size).saturating_add(2);
            if validate_key_with(key, limits.keys).is_err() {
                return Parsed::Reject(Reject {
                    reply: INVALID_REQUEST,
                    recovery: Recovery::Discard(block_end),
                });
            }
            if size > limits.max_value_bytes as u64 {
                return Parsed::Reject(Reject {
                    reply: NOT_STORED,
                    recovery: Recovery::Discard(block_end),
                });
            }
            let size = size as usize;
            match data_block(buf, line_len, size, INVALID_REQUEST) {
                Ok(consumed) => Parsed::Request {
                    request: Request::Set {
                        key,
                        value: &buf[line_len..line_len + size],
                    },
                    consumed,
                },
                Err(parsed) => parsed,
            }
        }
        ([b"get", ..], _) => parse_get(line, line_len, limits.keys),
        ([b"auth", user, password], 3) => Parsed::Request {
            request: Request::Auth { user, password },
            consumed: line_len,
        },
        ([b"delete"], 1) => Parsed::Request {
            request: Request::Clear,
            consumed: line_len,
        },
        ([b"delete", key], 2) if validate_key_with(key, limits.keys).is_ok() => Parsed::Request {
            request: Request::Delete { key },
            consumed: line_len,
        },
        _ if looks_like_http(line) => Parsed::Reject(CLOSE),
        _ => reject_line(line_len),
    }
}

fn parse_get(line: &[u8], line_len: usize, policy: KeyPolicy) -> Parsed<Request<'_>> {
    if !line.trim_ascii_start().starts_with(b"get ") {
        return reject_line(line_len);
    }
    let raw = after_first_token(line);
    let keys = Keys::from_raw(raw);
    let mut count = 0;
    for key in keys {
        if validate_key_with(key, policy).is_err() {
            return reject_line(line_len);
        }
        count += 1;
    }
    if count == 0 {
        return reject_line(line_len);
    }
    Parsed::Request {
        request: Request::Get { keys },
        consumed: line_len,
    }
}

/// Appends one `VALUE <key> <bytes>\r\n<data>\r\n` block to `out` (a
/// missing key is sent with an empty value).
pub fn encode_value(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    out.extend_from_slice(b"VALUE ");
    out.extend_from_slice(key);
    out.push(b' ');
    push_u64(out, value.len() as u64);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A status line of the seed dialect, as the client reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// `STORED`
    Stored,
    /// `NOT-STORED`
    NotStored,
    /// `DELETED`
    Deleted,
    /// `NOT-FOUND`
    NotFound,
    /// `END`
    End,
    /// `INVALID REQUEST`
    Invalid,
    /// `AUTHENTICATED`
    Authenticated,
    /// `AUTH-FAILED`
    AuthFailed,
    /// `AUTH-REQUIRED`
    AuthRequired,
}

/// Decodes a reply line (terminator stripped) that is not a `VALUE` line.
pub fn parse_status(line: &[u8]) -> Option<Status> {
    Some(match line {
        b"STORED" => Status::Stored,
        b"NOT-STORED" => Status::NotStored,
        b"DELETED" => Status::Deleted,
        b"NOT-FOUND" => Status::NotFound,
        b"END" => Status::End,
        b"INVALID REQUEST" => Status::Invalid,
        b"AUTHENTICATED" => Status::Authenticated,
        b"AUTH-FAILED" => Status::AuthFailed,
        b"AUTH-REQUIRED" => Status::AuthRequired,
        _ => return None,
    })
}

/// Decodes a `VALUE <key> <bytes>` line (terminator stripped) into the key
/// and the size of the block that follows.
pub fn parse_value_header(line: &[u8]) -> Option<(&[u8], usize)> {
    match tokens::<3>(line)? {
        ([b"VALUE", key, size], 3) => Some((key, usize::try_from(parse_u64(size)?).ok()?)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIMITS: Limits = Limits {
        max_value_bytes: 1 << 20,
        keys: KeyPolicy::Strict,
    };

    fn req(buf: &[u8]) -> (Request<'_>, usize) {
        match parse(buf, &LIMITS) {
            Parsed::Request { request, consumed } => (request, consumed),
            other => panic!(
                "expected a request from {:?}, got {other:?}",
                String::from_utf8_lossy(buf)
            ),
        }
    }

    fn rejected(buf: &[u8]) -> Reject {
        match parse(buf, &LIMITS) {
            Parsed::Reject(r) => r,
            other => panic!(
                "expected a reject from {:?}, got {other:?}",
                String::from_utf8_lossy(buf)
            ),
        }
    }

    fn invalid_discarding(n: u64) -> Reject {
        Reject {
            reply: INVALID_REQUEST,
            recovery: Recovery::Discard(n),
        }
    }

    #[test]
    fn set_row() {
        let buf = b"set greeting 5\r\nhello\r\nget x\r\n";
        assert_eq!(
            req(buf),
            (
                Request::Set {
                    key: b"greeting",
                    value: b"hello"
                },
                23
            )
        );
    }

    #[test]
    fn set_block_may_hold_crlf_and_any_byte() {
        let buf = b"set k 6\r\n\r\n\x00\xff\r\n\r\n";
        assert_eq!(
            req(buf),
            (
                Request::Set {
                    key: b"k",
                    value: b"\r\n\x00\xff\r\n"
                },
                buf.len()
            )
        );
    }

    #[test]
    fn empty_value_and_bare_lf_and_extra_spaces() {
        assert_eq!(
            req(b"set  k  0 \n\r\n"),
            (
                Request::Set {
                    key: b"k",
                    value: b""
                },
                13
            )
        );
    }

    #[test]
    fn set_waits_for_the_whole_block() {
        for cut in 0..b"set k 5\r\nhello\r\n".len() {
            assert_eq!(
                parse(&b"set k 5\r\nhello\r\n"[..cut], &LIMITS),
                Parsed::Incomplete
            );
        }
    }

    #[test]
    fn get_rows() {
        let (r, n) = req(b"get greeting\r\n");
        assert_eq!(n, 14);
        assert_eq!(
            r,
            Request::Get {
                keys: Keys::from_raw(b"greeting")
            }
        );
        let (r, _) = req(b"get a  b c\r\n");
        let Request::Get { keys } = r else { panic!() };
        assert_eq!(keys.collect::<Vec<_>>(), vec![&b"a"[..], b"b", b"c"]);
    }

    #[test]
    fn delete_rows() {
        assert_eq!(req(b"delete\r\n"), (Request::Clear, 8));
        assert_eq!(req(b"delete k\r\n"), (Request::Delete { key: b"k" }, 10));
    }

    #[test]
    fn anything_else_is_invalid_and_skips_the_line() {
        for line in [
            &b"fetch x\r\n"[..],
            b"\r\n",
            b"SET k 1\r\n",
            b"set k\r\n",
            b"set k 1 2\r\n",
            b"set k x\r\n",
            b"set k -1\r\n",
            b"set k 99999999999999999999999\r\n",
            b"get\r\n",
            b"get \r\n",
            b"delete a b\r\n",
            b"delete a\x01\r\n",
            b"get a\x7f\r\n",
            b"get a b c d \x02\r\n",
            b"stats\r\n",
        ] {
            assert_eq!(
                rejected(line),
                invalid_discarding(line.len() as u64),
                "{line:?}"
            );
        }
        let long_key = [b"get ".as_slice(), &[b'k'; 251], b"\r\n"].concat();
        assert_eq!(
            rejected(&long_key),
            invalid_discarding(long_key.len() as u64)
        );
    }

    #[test]
    fn bad_key_in_set_skips_its_block() {
        let buf = b"set a\x01 5\r\nhello\r\n";
        assert_eq!(rejected(buf), invalid_discarding(buf.len() as u64));
        let long = [b"set ".as_slice(), &[b'k'; 251], b" 1\r\n"].concat();
        assert_eq!(rejected(&long), invalid_discarding(long.len() as u64 + 3));
    }

    #[test]
    fn block_not_followed_by_crlf_is_invalid() {
        // Longer than announced: skip through the end of the overrun line.
        let buf = b"set k 3\r\nhello\r\nget k\r\n";
        assert_eq!(rejected(buf), invalid_discarding(16));
        let buf = b"set k 5\r\nhelloXX";
        assert_eq!(parse(buf, &LIMITS), Parsed::Incomplete);
    }

    #[test]
    fn oversized_set_is_skipped_not_buffered() {
        let buf = b"set k 1000000000000\r\n";
        assert_eq!(
            rejected(buf),
            Reject {
                reply: NOT_STORED,
                recovery: Recovery::Discard(buf.len() as u64 + 1_000_000_000_002)
            }
        );
        let small = Limits {
            max_value_bytes: 4,
            keys: KeyPolicy::Strict,
        };
        assert_eq!(
            parse(b"set k 5\r\n", &small),
            Parsed::Reject(Reject {
                reply: NOT_STORED,
                recovery: Recovery::Discard(9 + 7)
            })
        );
        assert!(matches!(
            parse(b"set k 4\r\nabcd\r\n", &small),
            Parsed::Request { .. }
        ));
    }

    #[test]
    fn long_lines_close() {
        let line = vec![b'x'; 3000];
        assert_eq!(
            rejected(&line),
            Reject {
                reply: INVALID_REQUEST,
                recovery: Recovery::Close
            }
        );
    }

    #[test]
    fn http_closes() {
        for line in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"POST /x HTTP/1.0\r\n",
            b"GET /\r\n",
        ] {
            assert_eq!(rejected(line), CLOSE, "{line:?}");
        }
    }

    #[test]
    fn reply_encoders_and_decoders() {
        let mut out = Vec::new();
        encode_value(&mut out, b"greeting", b"hello");
        encode_value(&mut out, b"nothing", b"");
        out.extend_from_slice(END);
        assert_eq!(
            out,
            b"VALUE greeting 5\r\nhello\r\nVALUE nothing 0\r\n\r\nEND\r\n".to_vec()
        );
        assert_eq!(
            parse_value_header(b"VALUE greeting 5"),
            Some((&b"greeting"[..], 5))
        );
        assert_eq!(parse_value_header(b"VALUE greeting x"), None);
        for (line, status) in [
            (STORED, Status::Stored),
            (NOT_STORED, Status::NotStored),
            (DELETED, Status::Deleted),
            (NOT_FOUND, Status::NotFound),
            (END, Status::End),
            (INVALID_REQUEST, Status::Invalid),
        ] {
            assert_eq!(parse_status(&line[..line.len() - 2]), Some(status));
        }
        assert_eq!(parse_status(b"STORED "), None);
    }

    fn key_strategy() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(0x21u8..=0xff, 1..=40).prop_map(|k| {
            k.into_iter()
                .map(|b| if b == 0x7f { b'x' } else { b })
                .collect()
        })
    }

    #[derive(Debug, Clone)]
    enum Owned {
        Set(Vec<u8>, Vec<u8>),
        Get(Vec<Vec<u8>>),
        Delete(Vec<u8>),
        Clear,
    }

    fn owned_strategy() -> impl Strategy<Value = Owned> {
        prop_oneof![
            (
                key_strategy(),
                proptest::collection::vec(any::<u8>(), 0..200)
            )
                .prop_map(|(k, v)| Owned::Set(k, v)),
            proptest::collection::vec(key_strategy(), 1..5).prop_map(Owned::Get),
            key_strategy().prop_map(Owned::Delete),
            Just(Owned::Clear),
        ]
    }

    fn encode_owned(op: &Owned, out: &mut Vec<u8>) {
        match op {
            Owned::Set(k, v) => Request::Set { key: k, value: v }.encode(out),
            Owned::Get(keys) => encode_get(out, keys.iter().map(|k| k.as_slice())),
            Owned::Delete(k) => Request::Delete { key: k }.encode(out),
            Owned::Clear => Request::Clear.encode(out),
        }
    }

    fn matches_owned(op: &Owned, r: &Request<'_>) -> bool {
        match (op, r) {
            (Owned::Set(k, v), Request::Set { key, value }) => k == key && v == value,
            (Owned::Get(ks), Request::Get { keys }) => ks.iter().map(|k| k.as_slice()).eq(*keys),
            (Owned::Delete(k), Request::Delete { key }) => k == key,
            (Owned::Clear, Request::Clear) => true,
            _ => false,
        }
    }

    /// Parses a whole buffer, returning what each step produced.
    fn parse_all(buf: &[u8]) -> Vec<String> {
        crate::protocol::describe_steps(buf, |b| parse(b, &LIMITS))
    }

    proptest! {
        #[test]
        fn encode_then_parse_round_trips(ops in proptest::collection::vec(owned_strategy(), 1..8)) {
            let mut buf = Vec::new();
            for op in &ops {
                encode_owned(op, &mut buf);
            }
            let mut pos = 0;
            for op in &ops {
                match parse(&buf[pos..], &LIMITS) {
                    Parsed::Request { request, consumed } => {
                        prop_assert!(matches_owned(op, &request), "{op:?} vs {request:?}");
                        pos += consumed;
                    }
                    other => prop_assert!(false, "{op:?} gave {other:?}"),
                }
            }
            prop_assert_eq!(pos, buf.len());
        }

        #[test]
        fn arbitrary_bytes_never_panic(buf in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = parse_all(&buf);
        }

        #[test]
        fn near_protocol_bytes_never_panic(
            parts in proptest::collection::vec(
                prop_oneof![
                    Just(&b"set "[..]), Just(&b"get "[..]), Just(&b"delete"[..]), Just(&b" "[..]),
                    Just(&b"\r\n"[..]), Just(&b"\n"[..]), Just(&b"5"[..]), Just(&b"k"[..]),
                    Just(&b"-1"[..]), Just(&b"\x00"[..]), Just(&b"99999999999999999999"[..]),
                ],
                0..40,
            )
        ) {
            let _ = parse_all(&parts.concat());
        }

        #[test]
        fn chunked_input_parses_as_whole(
            ops in proptest::collection::vec(owned_strategy(), 1..6),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
        ) {
            let mut buf = Vec::new();
            for op in &ops {
                encode_owned(op, &mut buf);
            }
            let whole = parse_all(&buf);
            // Feed the bytes in chunks, parsing after each chunk as a
            // connection does.
            let mut cut_points: Vec<usize> = cuts.iter().map(|i| i.index(buf.len() + 1)).collect();
            cut_points.push(buf.len());
            cut_points.sort_unstable();
            let mut fed = 0;
            let mut pos = 0;
            let mut seen = Vec::new();
            for cut in cut_points {
                fed = fed.max(cut);
                loop {
                    match parse(&buf[pos..fed], &LIMITS) {
                        Parsed::Request { request, consumed } => {
                            seen.push(format!("{request:?}"));
                            pos += consumed;
                        }
                        Parsed::Incomplete => break,
                        Parsed::Reject(r) => {
                            prop_assert!(false, "reject {r:?}");
                        }
                    }
                }
            }
            prop_assert_eq!(seen, whole);
        }
    }
}
