//! The memcached ASCII dialect (docs/PROTOCOL.md, "Memcached dialect"): request
//! parser, reply encoders, the exptime rules, and the reply decoders the
//! [`McClient`](crate::McClient) uses.

use kvstore_core::Expiry;

use super::{
    after_first_token, data_block, looks_like_http, parse_i64, parse_u64, push_u64, split_line,
    tokens, validate_key_with, KeyPolicy, Keys, Line, Parsed, Recovery, Reject,
};

/// `STORED\r\n`
pub const STORED: &[u8] = b"STORED\r\n";
/// `NOT_STORED\r\n`
pub const NOT_STORED: &[u8] = b"NOT_STORED\r\n";
/// `EXISTS\r\n`
pub const EXISTS: &[u8] = b"EXISTS\r\n";
/// `NOT_FOUND\r\n`
pub const NOT_FOUND: &[u8] = b"NOT_FOUND\r\n";
/// `DELETED\r\n`
pub const DELETED: &[u8] = b"DELETED\r\n";
/// `TOUCHED\r\n`
pub const TOUCHED: &[u8] = b"TOUCHED\r\n";
/// `OK\r\n`
pub const OK: &[u8] = b"OK\r\n";
/// `END\r\n`
pub const END: &[u8] = b"END\r\n";
/// `ERROR\r\n`: unknown command.
pub const ERROR: &[u8] = b"ERROR\r\n";
/// A malformed command line.
pub const BAD_FORMAT: &[u8] = b"CLIENT_ERROR bad command line format\r\n";
/// A data block not followed by `\r\n`.
pub const BAD_CHUNK: &[u8] = b"CLIENT_ERROR bad data chunk\r\n";
/// A command line over the cap (the connection is then closed).
pub const LINE_TOO_LONG: &[u8] = b"CLIENT_ERROR line too long\r\n";
/// A delta of `incr`/`decr` that is not a 64-bit decimal number.
pub const BAD_DELTA: &[u8] = b"CLIENT_ERROR invalid numeric delta argument\r\n";
/// `incr`/`decr` on a value that is not a number.
pub const NON_NUMERIC: &[u8] = b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n";
/// A value over the server's limit (its block is skipped).
pub const TOO_LARGE: &[u8] = b"SERVER_ERROR object too large for cache\r\n";
/// A connection over `max_connections` (memcached's own line).
pub const TOO_MANY_CONNECTIONS: &[u8] = b"ERROR Too many open connections\r\n";
/// An `exptime` (of `touch`, `gat`, `gats`) or a `flush_all` delay that is
/// not a decimal number.
pub const INVALID_EXPTIME: &[u8] = b"CLIENT_ERROR invalid exptime argument\r\n";
/// `stats detail` without `on`, `off` or `dump`.
pub const DETAIL_USAGE: &[u8] = b"CLIENT_ERROR usage: stats detail on|off|dump\r\n";
/// `stats cachedump` with arguments that are not two numbers.
pub const BAD_COMMAND_LINE: &[u8] = b"CLIENT_ERROR bad command line\r\n";
/// `stats cachedump` of a class that cannot exist.
pub const ILLEGAL_SLAB_ID: &[u8] = b"CLIENT_ERROR Illegal slab id\r\n";
/// `shutdown` on a server started without shutdown enabled.
pub const SHUTDOWN_NOT_ENABLED: &[u8] = b"ERROR: shutdown not enabled\r\n";
/// `cache_memlimit` below the floor.
pub const MEMLIMIT_TOO_SMALL: &[u8] = b"MEMLIMIT_TOO_SMALL cannot set maxbytes to less than 8m\r\n";
/// `RESET\r\n`: the reply of `stats reset`.
pub const RESET: &[u8] = b"RESET\r\n";
/// The largest item class `stats cachedump` accepts (memcached has 63).
pub const MAX_ITEM_CLASS: u64 = 63;
/// A `delete` with arguments memcached does not accept.
pub const DELETE_USAGE: &[u8] =
    b"CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]\r\n";
/// The largest data block length a storage command may announce; larger
/// (or negative) lengths are a malformed line, as in memcached, whose
/// lengths are 32-bit signed numbers with room for the `\r\n`.
pub const MAX_ANNOUNCED_BYTES: u64 = i32::MAX as u64 - 2;

/// Largest relative `exptime`: 30 days; larger values are Unix times.
pub const MAX_RELATIVE_EXPTIME: i64 = 60 * 60 * 24 * 30;

/// Converts a memcached `exptime` to an [`Expiry`] at Unix time `now`: 0
/// never expires; up to [`MAX_RELATIVE_EXPTIME`] counts seconds from now;
/// larger is an absolute Unix time; negative is already expired.
pub fn expiry_from_exptime(exptime: i64, now: u64) -> Expiry {
    match exptime {
        0 => Expiry::Never,
        e if e < 0 => Expiry::At(1),
        e if e <= MAX_RELATIVE_EXPTIME => Expiry::At(now.saturating_add(e as u64)),
        e => Expiry::At(e as u64),
    }
}

/// The delay of `flush_all <delay>` in seconds from Unix time `now` (the
/// same rules as `exptime`; 0 or a time already past is "now").
pub fn flush_delay(delay: i64, now: u64) -> u64 {
    match delay {
        d if d <= 0 => 0,
        d if d <= MAX_RELATIVE_EXPTIME => d as u64,
        d => (d as u64).saturating_sub(now),
    }
}

/// Which storage command, and the cas of `cas`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreMode {
    /// `set`: store unconditionally.
    Set,
    /// `add`: store only if absent.
    Add,
    /// `replace`: store only if present.
    Replace,
    /// `append`: add the data after the existing value.
    Append,
    /// `prepend`: add the data before the existing value.
    Prepend,
    /// `cas <unique>`: store only if unchanged since read.
    Cas(u64),
}

impl StoreMode {
    fn name(self) -> &'static [u8] {
        match self {
            StoreMode::Set => b"set",
            StoreMode::Add => b"add",
            StoreMode::Replace => b"replace",
            StoreMode::Append => b"append",
            StoreMode::Prepend => b"prepend",
            StoreMode::Cas(_) => b"cas",
        }
    }
}

/// Which statistics `stats [<group>]` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatsRequest {
    /// `stats`
    General,
    /// `stats settings`
    Settings,
    /// `stats items`
    Items,
    /// `stats slabs`
    Slabs,
    /// `stats sizes`
    Sizes,
    /// `stats conns`
    Conns,
    /// `stats reset`
    Reset,
    /// `stats detail on`
    DetailOn,
    /// `stats detail off`
    DetailOff,
    /// `stats detail dump`
    DetailDump,
    /// `stats cachedump <class> <limit>`: up to `limit` keys of an item
    /// class (0: all).
    Cachedump {
        /// The item class.
        class: u64,
        /// The most keys listed; 0 lists all.
        limit: u64,
    },
}

impl StatsRequest {
    fn words(self) -> &'static str {
        match self {
            StatsRequest::General => "",
            StatsRequest::Settings => " settings",
            StatsRequest::Items => " items",
            StatsRequest::Slabs => " slabs",
            StatsRequest::Sizes => " sizes",
            StatsRequest::Conns => " conns",
            StatsRequest::Reset => " reset",
            StatsRequest::DetailOn => " detail on",
            StatsRequest::DetailOff => " detail off",
            StatsRequest::DetailDump => " detail dump",
            StatsRequest::Cachedump { .. } => " cachedump",
        }
    }
}

/// A request of the memcached dialect, borrowing from the buffer it was
/// parsed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request<'a> {
    /// `set`/`add`/`replace`/`append`/`prepend`/`cas`.
    Store {
        /// Which command.
        mode: StoreMode,
        /// The key.
        key: &'a [u8],
        /// Client flags.
        flags: u32,
        /// Raw exptime (see [`expiry_from_exptime`]).
        exptime: i64,
        /// The data block.
        value: &'a [u8],
        /// Send no reply.
        noreply: bool,
    },
    /// `get`/`gets`.
    Get {
        /// `gets`: include the cas.
        with_cas: bool,
        /// The keys.
        keys: Keys<'a>,
    },
    /// `gat`/`gats`.
    GetAndTouch {
        /// `gats`: include the cas.
        with_cas: bool,
        /// Raw exptime.
        exptime: i64,
        /// The keys.
        keys: Keys<'a>,
    },
    /// A storage command whose announced value is over the limit: the
    /// line was read, the `data_bytes` after it (block and `\r\n`) are to
    /// be skipped as they arrive, never buffered.
    TooLarge {
        /// Which command.
        mode: StoreMode,
        /// The key.
        key: &'a [u8],
        /// Bytes to skip after the line.
        data_bytes: u64,
        /// Send no reply.
        noreply: bool,
    },
    /// `delete <key>`.
    Delete {
        /// The key.
        key: &'a [u8],
        /// Send no reply.
        noreply: bool,
    },
    /// `incr`/`decr`.
    Counter {
        /// `incr` (else `decr`).
        incr: bool,
        /// The key.
        key: &'a [u8],
        /// The amount.
        delta: u64,
        /// Send no reply.
        noreply: bool,
    },
    /// `touch <key> <exptime>`.
    Touch {
        /// The key.
        key: &'a [u8],
        /// Raw exptime.
        exptime: i64,
        /// Send no reply.
        noreply: bool,
    },
    /// `flush_all [delay]`.
    FlushAll {
        /// Raw delay (see [`flush_delay`]).
        delay: i64,
        /// Send no reply.
        noreply: bool,
    },
    /// `stats [<group>]`.
    Stats(StatsRequest),
    /// `lru_crawler metadump <classes>`: every key with its metadata.
    Metadump {
        /// Whether the classes (`all`, or a comma-separated list) include
        /// class 1, the only class kvstore has.
        includes_items: bool,
    },
    /// `cache_memlimit <megabytes>`.
    CacheMemlimit {
        /// The new budget of the value cache, in MiB.
        megabytes: u64,
        /// Send no reply.
        noreply: bool,
    },
    /// `shutdown [graceful]`.
    Shutdown,
    /// `version`.
    Version,
    /// `verbosity <n>`.
    Verbosity {
        /// The level.
        level: u64,
        /// Send no reply.
        noreply: bool,
    },
    /// `quit`.
    Quit,
    /// `refresh_certs`: re-read the TLS certificate and key.
    RefreshCerts,
}

impl Request<'_> {
    /// Appends the wire form of the request to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        fn noreply_crlf(out: &mut Vec<u8>, noreply: bool) {
            if noreply {
                out.extend_from_slice(b" noreply");
            }
            out.extend_from_slice(b"\r\n");
        }
        fn push_i64(out: &mut Vec<u8>, n: i64) {
            if n < 0 {
                out.push(b'-');
            }
            push_u64(out, n.unsigned_abs());
        }
        match self {
            Request::Store {
                mode,
                key,
                flags,
                exptime,
                value,
                noreply,
            } => {
                out.extend_from_slice(mode.name());
                out.push(b' ');
                out.extend_from_slice(key);
                out.push(b' ');
                push_u64(out, u64::from(*flags));
                out.push(b' ');
                push_i64(out, *exptime);
                out.push(b' ');
                push_u64(out, value.len() as u64);
                if let StoreMode::Cas(cas) = mode {
                    out.push(b' ');
                    push_u64(out, *cas);
                }
                noreply_crlf(out, *noreply);
                out.extend_from_slice(value);
                out.extend_from_slice(b"\r\n");
            }
            Request::Get { with_cas, keys } => {
                out.extend_from_slice(if *with_cas { b"gets" } else { b"get" });
                for key in *keys {
                    out.push(b' ');
                    out.extend_from_slice(key);
                }
                out.extend_from_slice(b"\r\n");
            }
            Request::GetAndTouch {
                with_cas,
                exptime,
                keys,
            } => {
                out.extend_from_slice(if *with_cas { b"gats " } else { b"gat " });
                push_i64(out, *exptime);
                for key in *keys {
                    out.push(b' ');
                    out.extend_from_slice(key);
                }
                out.extend_from_slice(b"\r\n");
            }
            Request::Delete { key, noreply } => {
                out.extend_from_slice(b"delete ");
                out.extend_from_slice(key);
                noreply_crlf(out, *noreply);
            }
            Request::Counter {
                incr,
                key,
                delta,
                noreply,
            } => {
                out.extend_from_slice(if *incr { b"incr " } else { b"decr " });
                out.extend_from_slice(key);
                out.push(b' ');
                push_u64(out, *delta);
                noreply_crlf(out, *noreply);
            }
            Request::Touch {
                key,
                exptime,
                noreply,
            } => {
                out.extend_from_slice(b"touch ");
                out.extend_from_slice(key);
                out.push(b' ');
                push_i64(out, *exptime);
                noreply_crlf(out, *noreply);
            }
            Request::FlushAll { delay, noreply } => {
                out.extend_from_slice(b"flush_all ");
                push_i64(out, *delay);
                noreply_crlf(out, *noreply);
            }
            Request::Stats(group) => {
                out.extend_from_slice(b"stats");
                out.extend_from_slice(group.words().as_bytes());
                if let StatsRequest::Cachedump { class, limit } = group {
                    out.push(b' ');
                    push_u64(out, *class);
                    out.push(b' ');
                    push_u64(out, *limit);
                }
                out.extend_from_slice(b"\r\n");
            }
            Request::Metadump { includes_items } => {
                out.extend_from_slice(if *includes_items {
                    b"lru_crawler metadump all\r\n"
                } else {
                    b"lru_crawler metadump 2\r\n"
                });
            }
            Request::CacheMemlimit { megabytes, noreply } => {
                out.extend_from_slice(b"cache_memlimit ");
                push_u64(out, *megabytes);
                noreply_crlf(out, *noreply);
            }
            Request::Shutdown => out.extend_from_slice(b"shutdown\r\n"),
            Request::Version => out.extend_from_slice(b"version\r\n"),
            Request::RefreshCerts => out.extend_from_slice(b"refresh_certs\r\n"),
            Request::TooLarge {
                mode,
                key,
                data_bytes,
                noreply,
            } => {
                // The line only: the data block was never held.
                out.extend_from_slice(mode.name());
                out.push(b' ');
                out.extend_from_slice(key);
                out.extend_from_slice(b" 0 0 ");
                push_u64(out, data_bytes.saturating_sub(2));
                if let StoreMode::Cas(cas) = mode {
                    out.push(b' ');
                    push_u64(out, *cas);
                }
                noreply_crlf(out, *noreply);
            }
            Request::Verbosity { level, noreply } => {
                out.extend_from_slice(b"verbosity ");
                push_u64(out, *level);
                noreply_crlf(out, *noreply);
            }
            Request::Quit => out.extend_from_slice(b"quit\r\n"),
        }
    }
}

/// Limits the parser enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest data block accepted; a larger one is answered
    /// [`TOO_LARGE`] and skipped without being buffered.
    pub max_value_bytes: usize,
    /// Which bytes keys may hold.
    pub keys: KeyPolicy,
}

const fn reject(reply: &'static [u8], discard: usize) -> Parsed<Request<'static>> {
    Parsed::Reject(Reject {
        reply,
        recovery: Recovery::Discard(discard as u64),
    })
}

/// Parses the first request in `buf`.
///
/// Unknown commands, and known ones with a token count memcached does not
/// accept, get [`ERROR`]; malformed arguments get [`BAD_FORMAT`],
/// [`BAD_DELTA`], [`INVALID_EXPTIME`] or [`DELETE_USAGE`], silenced by
/// `noreply` as memcached does (the line is skipped; a storage command
/// whose numbers parsed also skips its data block); a block without `\r\n`
/// after it gets [`BAD_CHUNK`]. A value over the limit is
/// [`Request::TooLarge`], for the server to answer (its block is skipped as
/// it arrives). A line over the cap closes the connection after
/// [`LINE_TOO_LONG`]; a line that looks like HTTP closes it at once.
pub fn parse<'a>(buf: &'a [u8], limits: &Limits) -> Parsed<Request<'a>> {
    let (line, n) = match split_line(buf) {
        Line::Complete(line, used) => (line, used),
        Line::Incomplete => return Parsed::Incomplete,
        Line::TooLong => {
            return Parsed::Reject(Reject {
                reply: LINE_TOO_LONG,
                recovery: Recovery::Close,
            })
        }
    };
    if looks_like_http(line) {
        return Parsed::Reject(Reject {
            reply: b"",
            recovery: Recovery::Close,
        });
    }
    let Some((toks, count)) = tokens::<8>(line) else {
        // Only the retrieval commands take more than eight tokens; memcached
        // answers `ERROR` to any other command with that many.
        return match line.trim_ascii_start().split(|&b| b == b' ').next() {
            Some(b"get") => parse_get(line, n, false, None, limits.keys),
            Some(b"gets") => parse_get(line, n, true, None, limits.keys),
            Some(b"gat") => parse_gat(line, n, false, limits.keys),
            Some(b"gats") => parse_gat(line, n, true, limits.keys),
            _ => reject(ERROR, n),
        };
    };
    let toks = &toks[..count];
    let Some((&cmd, args)) = toks.split_first() else {
        return reject(ERROR, n);
    };
    let request = |request| Parsed::Request {
        request,
        consumed: n,
    };
    match cmd {
        b"get" => parse_get(line, n, false, None, limits.keys),
        b"gets" => parse_get(line, n, true, None, limits.keys),
        b"gat" => parse_gat(line, n, false, limits.keys),
        b"gats" => parse_gat(line, n, true, limits.keys),
        b"set" => parse_store(buf, n, StoreMode::Set, args, limits),
        b"add" => parse_store(buf, n, StoreMode::Add, args, limits),
        b"replace" => parse_store(buf, n, StoreMode::Replace, args, limits),
        b"append" => parse_store(buf, n, StoreMode::Append, args, limits),
        b"prepend" => parse_store(buf, n, StoreMode::Prepend, args, limits),
        b"cas" => parse_store(buf, n, StoreMode::Cas(0), args, limits),
        b"delete" => {
            if args.is_empty() || args.len() > 3 {
                return reject(ERROR, n);
            }
            let noreply = args.last() == Some(&&b"noreply"[..]);
            match args {
                // `delete <key> 0` is an old form memcached still accepts.
                [key] | [key, b"0"] | [key, b"noreply"] | [key, b"0", b"noreply"]
                    if validate_key_with(key, limits.keys).is_ok() =>
                {
                    request(Request::Delete { key, noreply })
                }
                [key, ..] if validate_key_with(key, limits.keys).is_err() => {
                    reject_unless(noreply, BAD_FORMAT, n)
                }
                _ => reject_unless(noreply, DELETE_USAGE, n),
            }
        }
        b"incr" | b"decr" => {
            let (args, noreply) = match args.len() {
                2 => (args, false),
                3 => (&args[..2], args[2] == b"noreply"),
                _ => return reject(ERROR, n),
            };
            let (key, delta) = (args[0], args[1]);
            if validate_key_with(key, limits.keys).is_err() {
                return reject_unless(noreply, BAD_FORMAT, n);
            }
            match parse_u64(delta) {
                Some(delta) => request(Request::Counter {
                    incr: cmd == b"incr",
                    key,
                    delta,
                    noreply,
                }),
                None => reject_unless(noreply, BAD_DELTA, n),
            }
        }
        b"touch" => {
            let (args, noreply) = match args.len() {
                2 => (args, false),
                3 => (&args[..2], args[2] == b"noreply"),
                _ => return reject(ERROR, n),
            };
            let (key, exptime) = (args[0], args[1]);
            if validate_key_with(key, limits.keys).is_err() {
                return reject_unless(noreply, BAD_FORMAT, n);
            }
            match parse_i64(exptime) {
                Some(exptime) => request(Request::Touch {
                    key,
                    exptime,
                    noreply,
                }),
                None => reject_unless(noreply, INVALID_EXPTIME, n),
            }
        }
        b"flush_all" => {
            if args.len() > 2 {
                return reject(ERROR, n);
            }
            let noreply = args.last() == Some(&&b"noreply"[..]);
            // memcached reads the delay from the first argument unless it
            // is the `noreply`, and ignores a second one.
            let delay = match args.first() {
                None => Some(0),
                Some(&b"noreply") => Some(0),
                Some(delay) => parse_i64(delay),
            };
            match delay {
                Some(delay) => request(Request::FlushAll { delay, noreply }),
                None => reject_unless(noreply, INVALID_EXPTIME, n),
            }
        }
        b"stats" => {
            // memcached ignores the tokens after a group's name.
            let group = match args {
                [] => StatsRequest::General,
                [b"settings", ..] => StatsRequest::Settings,
                [b"items", ..] => StatsRequest::Items,
                [b"slabs", ..] => StatsRequest::Slabs,
                [b"sizes", ..] => StatsRequest::Sizes,
                [b"conns", ..] => StatsRequest::Conns,
                [b"reset", ..] => StatsRequest::Reset,
                [b"detail", b"on", ..] => StatsRequest::DetailOn,
                [b"detail", b"off", ..] => StatsRequest::DetailOff,
                [b"detail", b"dump", ..] => StatsRequest::DetailDump,
                [b"detail", ..] => return reject(DETAIL_USAGE, n),
                [b"cachedump", class, limit, ..] => match (parse_u64(class), parse_u64(limit)) {
                    (Some(class), Some(limit)) => StatsRequest::Cachedump { class, limit },
                    _ => return reject(BAD_COMMAND_LINE, n),
                },
                [b"cachedump", ..] => return reject(BAD_COMMAND_LINE, n),
                _ => return reject(ERROR, n),
            };
            request(Request::Stats(group))
        }
        b"lru_crawler" => match args {
            [b"metadump", classes, ..] => request(Request::Metadump {
                includes_items: *classes == b"all"
                    || classes.split(|&b| b == b',').any(|c| c == b"1"),
            }),
            _ => reject(ERROR, n),
        },
        b"cache_memlimit" => {
            let (mb, noreply) = match args {
                [mb] => (*mb, false),
                [mb, last] => (*mb, *last == b"noreply"),
                _ => return reject(ERROR, n),
            };
            match parse_u64(mb) {
                Some(megabytes) => request(Request::CacheMemlimit { megabytes, noreply }),
                None => reject(ERROR, n),
            }
        }
        b"shutdown" if args.len() <= 1 => request(Request::Shutdown),
        // memcached 1.6 ignores the tokens after `version` and `quit`
        // (memcapable expects it of a server that reports 1.6).
        b"version" => request(Request::Version),
        b"quit" => request(Request::Quit),
        // memcached ignores the tokens after `refresh_certs`.
        b"refresh_certs" => request(Request::RefreshCerts),
        b"verbosity" => {
            let (level, noreply) = match args {
                [level] => (*level, *level == b"noreply"),
                [level, last] => (*level, *last == b"noreply"),
                _ => return reject(ERROR, n),
            };
            match parse_u64(level) {
                Some(level) => request(Request::Verbosity { level, noreply }),
                // memcached's error for a bad level is silenced by
                // `noreply`, and clients (memcapable) rely on that.
                None => reject_unless(noreply, BAD_FORMAT, n),
            }
        }
        _ => reject(ERROR, n),
    }
}

/// The error reply of a malformed line, or none when it said `noreply`
/// (memcached silences the errors of the commands that take `noreply`).
fn reject_unless(noreply: bool, reply: &'static [u8], line_len: usize) -> Parsed<Request<'static>> {
    reject(if noreply { b"" } else { reply }, line_len)
}

fn parse_store<'a>(
    buf: &'a [u8],
    line_len: usize,
    mode: StoreMode,
    args: &[&'a [u8]],
    limits: &Limits,
) -> Parsed<Request<'a>> {
    // memcached takes the arguments it needs plus one more token, which is
    // `noreply` or ignored (its proxy sends `noreplY`, for example); a
    // different count is not a storage command at all.
    let needed = if matches!(mode, StoreMode::Cas(_)) {
        5
    } else {
        4
    };
    let noreply = match args.len() {
        len if len == needed => false,
        len if len == needed + 1 => args[needed] == b"noreply",
        _ => return reject(ERROR, line_len),
    };
    let (key, flags, exptime, size) = (args[0], args[1], args[2], args[3]);
    let flags = parse_u64(flags).and_then(|f| u32::try_from(f).ok());
    let exptime = parse_i64(exptime);
    let size = parse_u64(size).filter(|&s| s <= MAX_ANNOUNCED_BYTES);
    let cas = match mode {
        StoreMode::Cas(_) => parse_u64(args[4]).map(StoreMode::Cas),
        mode => Some(mode),
    };
    let (Some(flags), Some(exptime), Some(size), Some(mode)) = (flags, exptime, size, cas) else {
        // Nothing after the line is skipped: with a length that did not
        // parse, the data block's end is unknown (memcached reads the
        // following bytes as commands too).
        return reject_unless(noreply, BAD_FORMAT, line_len);
    };
    let block_end = (line_len as u64).saturating_add(size).saturating_add(2);
    if validate_key_with(key, limits.keys).is_err() {
        return Parsed::Reject(Reject {
            reply: if noreply { b"" } else { BAD_FORMAT },
            recovery: Recovery::Discard(block_end),
        });
    }
    if size > limits.max_value_bytes as u64 {
        return Parsed::Request {
            request: Request::TooLarge {
                mode,
                key,
                data_bytes: size + 2,
                noreply,
            },
            consumed: line_len,
        };
    }
    let size = size as usize;
    match data_block(buf, line_len, size, if noreply { b"" } else { BAD_CHUNK }) {
        Ok(consumed) => Parsed::Request {
            request: Request::Store {
                mode,
                key,
                flags,
                exptime,
                value: &buf[line_len..line_len + size],
                noreply,
            },
            consumed,
        },
        Err(parsed) => parsed,
    }
}

fn parse_get(
    line: &[u8],
    line_len: usize,
    with_cas: bool,
    exptime: Option<i64>,
    policy: KeyPolicy,
) -> Parsed<Request<'_>> {
    let mut raw = after_first_token(line);
    if exptime.is_some() {
        raw = after_first_token(raw);
    }
    let keys = Keys::from_raw(raw);
    let mut count = 0;
    for key in keys {
        if validate_key_with(key, policy).is_err() {
            return reject(BAD_FORMAT, line_len);
        }
        count += 1;
    }
    // `gat <exptime>` without keys is answered `END`, as memcached does.
    if count == 0 && exptime.is_none() {
        return reject(ERROR, line_len);
    }
    let request = match exptime {
        None => Request::Get { with_cas, keys },
        Some(exptime) => Request::GetAndTouch {
            with_cas,
            exptime,
            keys,
        },
    };
    Parsed::Request {
        request,
        consumed: line_len,
    }
}

fn parse_gat(
    line: &[u8],
    line_len: usize,
    with_cas: bool,
    policy: KeyPolicy,
) -> Parsed<Request<'_>> {
    let mut toks = Keys::from_raw(line);
    toks.next();
    match toks.next().map(parse_i64) {
        Some(Some(exptime)) => parse_get(line, line_len, with_cas, Some(exptime), policy),
        Some(None) => reject(INVALID_EXPTIME, line_len),
        None => reject(ERROR, line_len),
    }
}

/// Appends `VALUE <key> <flags> <bytes>[ <cas>]\r\n<data>\r\n` to `out`.
pub fn encode_value(out: &mut Vec<u8>, key: &[u8], flags: u32, value: &[u8], cas: Option<u64>) {
    out.extend_from_slice(b"VALUE ");
    out.extend_from_slice(key);
    out.push(b' ');
    push_u64(out, u64::from(flags));
    out.push(b' ');
    push_u64(out, value.len() as u64);
    if let Some(cas) = cas {
        out.push(b' ');
        push_u64(out, cas);
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Appends `STAT <name> <value>\r\n` to `out`. The value must be a single
/// token; spaces in it are replaced by `_`.
pub fn encode_stat(out: &mut Vec<u8>, name: &str, value: &str) {
    out.extend_from_slice(b"STAT ");
    out.extend_from_slice(name.as_bytes());
    out.push(b' ');
    out.extend(value.bytes().map(|b| if b <= b' ' { b'_' } else { b }));
    out.extend_from_slice(b"\r\n");
}

/// Appends `SERVER_ERROR <reason>\r\n`, the reason made one line.
pub fn encode_server_error(out: &mut Vec<u8>, reason: &str) {
    out.extend_from_slice(b"SERVER_ERROR ");
    out.extend(reason.bytes().map(|b| if b < b' ' { b' ' } else { b }));
    out.extend_from_slice(b"\r\n");
}

/// A reply line of the memcached dialect, as a client reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply<'a> {
    /// `STORED`
    Stored,
    /// `NOT_STORED`
    NotStored,
    /// `EXISTS`
    Exists,
    /// `NOT_FOUND`
    NotFound,
    /// `DELETED`
    Deleted,
    /// `TOUCHED`
    Touched,
    /// `OK`
    Ok,
    /// `END`
    End,
    /// A number (the reply of `incr`/`decr`).
    Number(u64),
    /// `VALUE <key> <flags> <bytes> [<cas>]`: a data block of `bytes`
    /// follows.
    Value {
        /// The key.
        key: &'a [u8],
        /// The flags.
        flags: u32,
        /// Size of the block that follows.
        bytes: usize,
        /// The cas, for `gets`/`gats`.
        cas: Option<u64>,
    },
    /// `VERSION <version>`
    Version(&'a [u8]),
    /// `STAT <name> <value>`
    Stat(&'a [u8], &'a [u8]),
    /// `ERROR`, `CLIENT_ERROR ...` or `SERVER_ERROR ...` (the whole line).
    Error(&'a [u8]),
}

/// Decodes one reply line (terminator stripped).
pub fn parse_reply(line: &[u8]) -> Option<Reply<'_>> {
    Some(match line {
        b"STORED" => Reply::Stored,
        b"NOT_STORED" => Reply::NotStored,
        b"EXISTS" => Reply::Exists,
        b"NOT_FOUND" => Reply::NotFound,
        b"DELETED" => Reply::Deleted,
        b"TOUCHED" => Reply::Touched,
        b"OK" => Reply::Ok,
        b"END" => Reply::End,
        _ if line == b"ERROR"
            || line.starts_with(b"CLIENT_ERROR ")
            || line.starts_with(b"SERVER_ERROR ") =>
        {
            Reply::Error(line)
        }
        _ if line.starts_with(b"VERSION ") => Reply::Version(&line[8..]),
        _ if line.starts_with(b"STAT ") => {
            let rest = &line[5..];
            let sp = rest.iter().position(|&b| b == b' ')?;
            Reply::Stat(&rest[..sp], &rest[sp + 1..])
        }
        _ if line.starts_with(b"VALUE ") => {
            let (toks, n) = tokens::<5>(line)?;
            let cas = match n {
                4 => None,
                5 => Some(parse_u64(toks[4])?),
                _ => return None,
            };
            Reply::Value {
                key: toks[1],
                flags: u32::try_from(parse_u64(toks[2])?).ok()?,
                bytes: usize::try_from(parse_u64(toks[3])?).ok()?,
                cas,
            }
        }
        _ => Reply::Number(parse_u64(line)?),
    })
}

/// `CLIENT_ERROR unauthenticated`: a command before the authentication.
pub const UNAUTHENTICATED: &[u8] = b"CLIENT_ERROR unauthenticated\r\n";
/// `CLIENT_ERROR authentication failure`: wrong user or password.
pub const AUTH_FAILURE: &[u8] = b"CLIENT_ERROR authentication failure\r\n";
/// The answer to authentication data longer than [`MAX_AUTH_DATA_BYTES`].
pub const AUTH_TOO_LONG: &[u8] = b"CLIENT_ERROR auth token too long\r\n";
/// The answer to authentication data without a space between user and
/// password.
pub const AUTH_BAD_FORMAT: &[u8] = b"CLIENT_ERROR bad authentication token format\r\n";
/// The answer to authentication data not ended by `\r\n`.
pub const AUTH_BAD_TERMINATION: &[u8] = b"CLIENT_ERROR bad command line termination\r\n";
/// The largest authentication data block (memcached's `MAX_AUTH_REQ_LEN`).
pub const MAX_AUTH_DATA_BYTES: u64 = 16384;
/// A line shorter than this (before its `\n`) cannot be an
/// authentication and closes the connection (memcached's
/// `MIN_AUTH_REQ_LEN`).
const MIN_AUTH_LINE_BYTES: usize = 6;
/// Unauthenticated bytes without a newline past this close the connection.
pub const MAX_AUTH_LINE_BYTES: usize = 2048;

/// What memcached's ASCII authentication makes of the bytes an
/// unauthenticated connection sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthStep<'a> {
    /// No complete step is buffered.
    Incomplete,
    /// Close the connection, answering nothing.
    Close,
    /// Answer `reply` and skip `consumed` bytes.
    Refuse {
        /// The error line.
        reply: &'static [u8],
        /// Bytes used.
        consumed: usize,
    },
    /// Credentials to check: answer `STORED` or [`AUTH_FAILURE`].
    Credentials {
        /// The user (before the first space of the data).
        user: &'a [u8],
        /// The password (the rest of the data).
        password: &'a [u8],
        /// Bytes used: the line and the data block.
        consumed: usize,
    },
}

/// Parses the first step of memcached's ASCII authentication in `buf`, as
/// memcached 1.6.45 does it (`proto_text.c`, `try_read_command_asciiauth`):
/// a `set <any key> <flags> <exptime> <bytes>` line (five tokens or more,
/// starting with `set`, the fifth a 32-bit number) whose data is
/// `<user> <password>`, split at the first space. Any other line is
/// refused with [`UNAUTHENTICATED`] and skipped; a line under 6 bytes
/// before its `\n`, or more than [`MAX_AUTH_LINE_BYTES`] bytes without a
/// newline, closes. A data length over [`MAX_AUTH_DATA_BYTES`] is refused
/// with the line alone skipped (the data is then read as commands).
pub fn parse_ascii_auth(buf: &[u8]) -> AuthStep<'_> {
    let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
        return if buf.len() > MAX_AUTH_LINE_BYTES {
            AuthStep::Close
        } else {
            AuthStep::Incomplete
        };
    };
    if nl < MIN_AUTH_LINE_BYTES {
        return AuthStep::Close;
    }
    let line_len = nl + 1;
    let line = &buf[..nl];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let size = line
        .split(|&b| b == b' ')
        .filter(|t| !t.is_empty())
        .nth(4)
        .and_then(parse_u64)
        .filter(|&n| n <= u64::from(u32::MAX));
    let refuse = |reply, consumed| AuthStep::Refuse { reply, consumed };
    let Some(size) = size.filter(|_| line.starts_with(b"set")) else {
        return refuse(UNAUTHENTICATED, line_len);
    };
    if size > MAX_AUTH_DATA_BYTES {
        return refuse(AUTH_TOO_LONG, line_len);
    }
    let size = size as usize;
    let end = line_len + size + 2;
    if buf.len() < end {
        return AuthStep::Incomplete;
    }
    let data = &buf[line_len..end];
    if !data.ends_with(b"\r\n") {
        return refuse(AUTH_BAD_TERMINATION, end);
    }
    let data = &data[..size];
    match data.iter().position(|&b| b == b' ') {
        Some(mid) => AuthStep::Credentials {
            user: &data[..mid],
            password: &data[mid + 1..],
            consumed: end,
        },
        None => refuse(AUTH_BAD_FORMAT, end),
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

    fn reply_of(buf: &[u8]) -> (&'static [u8], Recovery) {
        match parse(buf, &LIMITS) {
            Parsed::Reject(r) => (r.reply, r.recovery),
            other => panic!(
                "expected a reject from {:?}, got {other:?}",
                String::from_utf8_lossy(buf)
            ),
        }
    }

    #[test]
    fn storage_commands() {
        let buf = b"set k 5 0 3\r\nabc\r\n";
        assert_eq!(
            req(buf),
            (
                Request::Store {
                    mode: StoreMode::Set,
                    key: b"k",
                    flags: 5,
                    exptime: 0,
                    value: b"abc",
                    noreply: false
                },
                buf.len()
            )
        );
        for (name, mode) in [
            ("add", StoreMode::Add),
            ("replace", StoreMode::Replace),
            ("append", StoreMode::Append),
            ("prepend", StoreMode::Prepend),
        ] {
            let buf = format!("{name} k 4294967295 -1 0 noreply\r\n\r\n");
            assert_eq!(
                req(buf.as_bytes()).0,
                Request::Store {
                    mode,
                    key: b"k",
                    flags: u32::MAX,
                    exptime: -1,
                    value: b"",
                    noreply: true
                }
            );
        }
        let buf = b"cas k 0 100 2 18446744073709551615\r\nhi\r\n";
        assert_eq!(
            req(buf).0,
            Request::Store {
                mode: StoreMode::Cas(u64::MAX),
                key: b"k",
                flags: 0,
                exptime: 100,
                value: b"hi",
                noreply: false
            }
        );
    }

    #[test]
    fn retrieval_commands() {
        let (r, n) = req(b"get a b\r\n");
        assert_eq!(n, 9);
        assert_eq!(
            r,
            Request::Get {
                with_cas: false,
                keys: Keys::from_raw(b"a b")
            }
        );
        assert_eq!(
            req(b"gets a\r\n").0,
            Request::Get {
                with_cas: true,
                keys: Keys::from_raw(b"a")
            }
        );
        assert_eq!(
            req(b"gat 10 a b\r\n").0,
            Request::GetAndTouch {
                with_cas: false,
                exptime: 10,
                keys: Keys::from_raw(b"a b")
            }
        );
        assert_eq!(
            req(b"gats -1 a\r\n").0,
            Request::GetAndTouch {
                with_cas: true,
                exptime: -1,
                keys: Keys::from_raw(b"a")
            }
        );
        // Many keys: more tokens than any other command has.
        let many: Vec<u8> = [b"get".as_slice(), &b" k".repeat(300), b"\r\n"].concat();
        let Request::Get { keys, .. } = req(&many).0 else {
            panic!()
        };
        assert_eq!(keys.count(), 300);
    }

    #[test]
    fn other_commands() {
        assert_eq!(
            req(b"delete k\r\n").0,
            Request::Delete {
                key: b"k",
                noreply: false
            }
        );
        assert_eq!(
            req(b"delete k 0 noreply\r\n").0,
            Request::Delete {
                key: b"k",
                noreply: true
            }
        );
        assert_eq!(
            req(b"incr k 18446744073709551615\r\n").0,
            Request::Counter {
                incr: true,
                key: b"k",
                delta: u64::MAX,
                noreply: false
            }
        );
        assert_eq!(
            req(b"decr k 1 noreply\r\n").0,
            Request::Counter {
                incr: false,
                key: b"k",
                delta: 1,
                noreply: true
            }
        );
        assert_eq!(
            req(b"touch k 10\r\n").0,
            Request::Touch {
                key: b"k",
                exptime: 10,
                noreply: false
            }
        );
        assert_eq!(
            req(b"flush_all\r\n").0,
            Request::FlushAll {
                delay: 0,
                noreply: false
            }
        );
        assert_eq!(
            req(b"flush_all noreply\r\n").0,
            Request::FlushAll {
                delay: 0,
                noreply: true
            }
        );
        assert_eq!(
            req(b"flush_all 5 noreply\r\n").0,
            Request::FlushAll {
                delay: 5,
                noreply: true
            }
        );
        assert_eq!(req(b"stats\r\n").0, Request::Stats(StatsRequest::General));
        assert_eq!(req(b"version\r\n").0, Request::Version);
        assert_eq!(req(b"quit\r\n").0, Request::Quit);
        assert_eq!(
            req(b"verbosity 1\r\n").0,
            Request::Verbosity {
                level: 1,
                noreply: false
            }
        );
        assert_eq!(
            req(b"verbosity 0 noreply\r\n").0,
            Request::Verbosity {
                level: 0,
                noreply: true
            }
        );
        // memcached sends nothing here (its error is silenced by noreply),
        // and memcapable relies on it.
        assert_eq!(
            reply_of(b"verbosity noreply\r\n"),
            (&b""[..], Recovery::Discard(19))
        );
    }

    #[test]
    fn memccapable_error_cases() {
        // As memcached 1.6.18: extra tokens after `version` and `quit` are
        // ignored.
        for (line, request) in [
            (&b"quit foo bar\r\n"[..], Request::Quit),
            (b"quit noreply\r\n", Request::Quit),
            (b"version foo bar\r\n", Request::Version),
            (b"version noreply\r\n", Request::Version),
        ] {
            assert_eq!(req(line), (request, line.len()));
        }
        for line in [
            &b"verbosity foo bar my\r\n"[..],
            b"verbosity\r\n",
            b"delete\r\n",
            b"delete a b c d e\r\n",
            b"stats noreply\r\n",
            b"get\r\n",
            b"gets\r\n",
        ] {
            let (reply, recovery) = reply_of(line);
            assert!(
                reply.starts_with(b"ERROR") || reply.starts_with(b"CLIENT_ERROR"),
                "{line:?}"
            );
            assert_eq!(recovery, Recovery::Discard(line.len() as u64), "{line:?}");
        }
    }

    #[test]
    fn malformed_lines() {
        // Each reply as memcached 1.6.18 gives it for the same bytes.
        let cases: &[(&[u8], &[u8])] = &[
            (b"bogus\r\n", ERROR),
            (b"\r\n", ERROR),
            (b"SET k 0 0 1\r\n", ERROR),
            (b"set k 0 0\r\n", ERROR),
            (b"set k 0 0 1 2 3\r\n", ERROR),
            (b"set k x 0 1\r\n", BAD_FORMAT),
            (b"set k -1 0 1\r\n", BAD_FORMAT),
            (b"set k 4294967296 0 1\r\n", BAD_FORMAT),
            (b"set k 0 x 1\r\n", BAD_FORMAT),
            (b"set k 0 0 -1\r\n", BAD_FORMAT),
            (b"set k 0 0 4294967295\r\n", BAD_FORMAT),
            (b"set k 0 0 2147483646\r\n", BAD_FORMAT),
            (b"set k 0 0 99999999999999999999999\r\n", BAD_FORMAT),
            (b"set k 0 x 1 noreply\r\n", b""),
            (b"cas k 0 0 1\r\n", ERROR),
            (b"cas k 0 0 1 \r\n", ERROR),
            (b"cas k 0 0 1 x\r\n", BAD_FORMAT),
            (b"set a b c d e f g h i\r\n", ERROR),
            (b"incr k x\r\n", BAD_DELTA),
            (b"incr k -1\r\n", BAD_DELTA),
            (b"incr k x noreply\r\n", b""),
            (b"incr k\r\n", ERROR),
            (b"incr k 1 2 3\r\n", ERROR),
            (b"delete\r\n", ERROR),
            (b"delete k 10\r\n", DELETE_USAGE),
            (b"delete k noreplY\r\n", DELETE_USAGE),
            (b"delete k 10 noreply\r\n", b""),
            (b"delete k x noreply\r\n", b""),
            (b"touch k\r\n", ERROR),
            (b"touch k x\r\n", INVALID_EXPTIME),
            (b"touch k x noreply\r\n", b""),
            (b"flush_all x\r\n", INVALID_EXPTIME),
            (b"flush_all x noreply\r\n", b""),
            (b"flush_all 1 2 3\r\n", ERROR),
            (b"verbosity\r\n", ERROR),
            (b"verbosity x\r\n", BAD_FORMAT),
            (b"verbosity 1 2 noreply\r\n", ERROR),
            (b"get a\x01\r\n", BAD_FORMAT),
            (b"gat x a\r\n", INVALID_EXPTIME),
            (b"gat\r\n", ERROR),
            (b"stats foo\r\n", ERROR),
            (b"stats detail\r\n", DETAIL_USAGE),
            (b"stats detail x\r\n", DETAIL_USAGE),
            (b"stats cachedump\r\n", BAD_COMMAND_LINE),
            (b"stats cachedump 1\r\n", BAD_COMMAND_LINE),
            (b"stats cachedump x 0\r\n", BAD_COMMAND_LINE),
            (b"lru_crawler metadump\r\n", ERROR),
            (b"lru_crawler foo\r\n", ERROR),
            (b"cache_memlimit\r\n", ERROR),
            (b"cache_memlimit x\r\n", ERROR),
        ];
        for (line, reply) in cases {
            assert_eq!(
                reply_of(line),
                (*reply, Recovery::Discard(line.len() as u64)),
                "{}",
                String::from_utf8_lossy(line)
            );
        }
        let long_key = [b"get ".as_slice(), &[b'k'; 251], b"\r\n"].concat();
        assert_eq!(
            reply_of(&long_key),
            (BAD_FORMAT, Recovery::Discard(long_key.len() as u64))
        );
    }

    #[test]
    fn bad_key_in_a_storage_command_skips_its_block() {
        let buf = b"set a\x7f 0 0 5\r\nhello\r\n";
        assert_eq!(
            reply_of(buf),
            (BAD_FORMAT, Recovery::Discard(buf.len() as u64))
        );
    }

    #[test]
    fn bad_data_chunk() {
        let buf = b"set k 0 0 3\r\nhello\r\n";
        assert_eq!(
            reply_of(buf),
            (BAD_CHUNK, Recovery::Discard(buf.len() as u64))
        );
        for cut in 0..b"set k 0 0 3\r\nabc\r\n".len() {
            assert_eq!(
                parse(&b"set k 0 0 3\r\nabc\r\n"[..cut], &LIMITS),
                Parsed::Incomplete
            );
        }
    }

    #[test]
    fn oversized_values_are_skipped_not_buffered() {
        let buf = b"set k 0 0 2000000 noreply\r\n";
        assert_eq!(
            req(buf),
            (
                Request::TooLarge {
                    mode: StoreMode::Set,
                    key: b"k",
                    data_bytes: 2_000_002,
                    noreply: true
                },
                buf.len()
            )
        );
        let (r, _) = req(b"cas k 0 0 2147483645 7\r\n");
        assert!(matches!(
            r,
            Request::TooLarge {
                mode: StoreMode::Cas(7),
                data_bytes: 2147483647,
                ..
            }
        ));
    }

    #[test]
    fn tolerated_tokens() {
        // memcached ignores one token after a storage command's arguments
        // (its proxy rewrites `noreply` as `noreplY`), and the old
        // `delete <key> 0`.
        for line in [
            &b"set k 0 0 1 noreplY\r\na\r\n"[..],
            b"set k 0 0 1 P\r\na\r\n",
            b"cas k 0 0 1 5 foo\r\na\r\n",
        ] {
            let (r, n) = req(line);
            assert_eq!(n, line.len());
            assert!(matches!(r, Request::Store { noreply: false, .. }), "{r:?}");
        }
        for (line, noreply) in [
            (&b"incr k 1 noreplY\r\n"[..], false),
            (b"touch k 1 noreplY\r\n", false),
            (b"flush_all 0 noreplY\r\n", false),
            (b"flush_all 1 2\r\n", false),
            (b"verbosity 1 noreplY\r\n", false),
            (b"delete k 0 noreply\r\n", true),
            (b"delete k noreply\r\n", true),
        ] {
            let (r, _) = req(line);
            let got = matches!(
                r,
                Request::Counter { noreply: true, .. }
                    | Request::Touch { noreply: true, .. }
                    | Request::FlushAll { noreply: true, .. }
                    | Request::Verbosity { noreply: true, .. }
                    | Request::Delete { noreply: true, .. }
            );
            assert_eq!(got, noreply, "{r:?}");
        }
        // `gat <exptime>` with no key is an empty reply, not an error.
        assert_eq!(
            req(b"gat 10\r\n").0,
            Request::GetAndTouch {
                with_cas: false,
                exptime: 10,
                keys: Keys::from_raw(b"")
            }
        );
    }

    #[test]
    fn long_line_and_http_close() {
        assert_eq!(reply_of(&[b'x'; 2100]), (LINE_TOO_LONG, Recovery::Close));
        assert_eq!(reply_of(b"GET / HTTP/1.1\r\n"), (&b""[..], Recovery::Close));
    }

    #[test]
    fn exptime_rules() {
        let now = 1_700_000_000;
        assert_eq!(expiry_from_exptime(0, now), Expiry::Never);
        assert_eq!(expiry_from_exptime(10, now), Expiry::At(now + 10));
        assert_eq!(
            expiry_from_exptime(2_592_000, now),
            Expiry::At(now + 2_592_000)
        );
        assert_eq!(expiry_from_exptime(2_592_001, now), Expiry::At(2_592_001));
        assert!(expiry_from_exptime(2_592_001, now).is_expired_at(now));
        assert!(expiry_from_exptime(-1, now).is_expired_at(now));
        assert_eq!(flush_delay(0, now), 0);
        assert_eq!(flush_delay(-5, now), 0);
        assert_eq!(flush_delay(30, now), 30);
        assert_eq!(flush_delay(now as i64 + 60, now), 60);
        assert_eq!(flush_delay(now as i64 - 60, now), 0);
    }

    #[test]
    fn reply_encoders_and_decoders() {
        let mut out = Vec::new();
        encode_value(&mut out, b"k", 7, b"v\r\n", None);
        encode_value(&mut out, b"k", 0, b"", Some(42));
        assert_eq!(
            out,
            b"VALUE k 7 3\r\nv\r\n\r\nVALUE k 0 0 42\r\n\r\n".to_vec()
        );
        out.clear();
        encode_stat(&mut out, "version", "0.1.0 x");
        encode_server_error(&mut out, "disk\nfull");
        assert_eq!(
            out,
            b"STAT version 0.1.0_x\r\nSERVER_ERROR disk full\r\n".to_vec()
        );
        assert_eq!(
            parse_reply(b"VALUE k 7 3"),
            Some(Reply::Value {
                key: b"k",
                flags: 7,
                bytes: 3,
                cas: None
            })
        );
        assert_eq!(
            parse_reply(b"VALUE k 0 0 42"),
            Some(Reply::Value {
                key: b"k",
                flags: 0,
                bytes: 0,
                cas: Some(42)
            })
        );
        assert_eq!(parse_reply(b"12"), Some(Reply::Number(12)));
        assert_eq!(
            parse_reply(b"VERSION 0.1.0"),
            Some(Reply::Version(b"0.1.0"))
        );
        assert_eq!(
            parse_reply(b"STAT pid 12"),
            Some(Reply::Stat(b"pid", b"12"))
        );
        assert_eq!(parse_reply(b"ERROR"), Some(Reply::Error(b"ERROR")));
        assert_eq!(
            parse_reply(TOO_LARGE.strip_suffix(b"\r\n").unwrap()),
            Some(Reply::Error(&TOO_LARGE[..TOO_LARGE.len() - 2]))
        );
        for (line, r) in [
            (STORED, Reply::Stored),
            (NOT_STORED, Reply::NotStored),
            (EXISTS, Reply::Exists),
            (NOT_FOUND, Reply::NotFound),
            (DELETED, Reply::Deleted),
            (TOUCHED, Reply::Touched),
            (OK, Reply::Ok),
            (END, Reply::End),
        ] {
            assert_eq!(parse_reply(&line[..line.len() - 2]), Some(r));
        }
        assert_eq!(parse_reply(b"bogus"), None);
    }

    fn key_strategy() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(0x21u8..=0xff, 1..=30).prop_map(|k| {
            k.into_iter()
                .map(|b| if b == 0x7f { b'x' } else { b })
                .collect()
        })
    }

    #[derive(Debug, Clone)]
    enum Owned {
        Store(StoreMode, Vec<u8>, u32, i64, Vec<u8>, bool),
        Get(bool, Vec<Vec<u8>>),
        Gat(bool, i64, Vec<Vec<u8>>),
        Delete(Vec<u8>, bool),
        Counter(bool, Vec<u8>, u64, bool),
        Touch(Vec<u8>, i64, bool),
        Flush(i64, bool),
        Simple(u8),
        Operator(u64, u64, bool),
    }

    fn owned_strategy() -> impl Strategy<Value = Owned> {
        let mode = prop_oneof![
            Just(StoreMode::Set),
            Just(StoreMode::Add),
            Just(StoreMode::Replace),
            Just(StoreMode::Append),
            Just(StoreMode::Prepend),
            any::<u64>().prop_map(StoreMode::Cas),
        ];
        let keys = || proptest::collection::vec(key_strategy(), 1..4);
        prop_oneof![
            (
                mode,
                key_strategy(),
                any::<u32>(),
                any::<i64>(),
                proptest::collection::vec(any::<u8>(), 0..100),
                any::<bool>()
            )
                .prop_map(|(m, k, f, e, v, n)| Owned::Store(m, k, f, e, v, n)),
            (any::<bool>(), keys()).prop_map(|(c, k)| Owned::Get(c, k)),
            (any::<bool>(), any::<i64>(), keys()).prop_map(|(c, e, k)| Owned::Gat(c, e, k)),
            (key_strategy(), any::<bool>()).prop_map(|(k, n)| Owned::Delete(k, n)),
            (any::<bool>(), key_strategy(), any::<u64>(), any::<bool>())
                .prop_map(|(i, k, d, n)| Owned::Counter(i, k, d, n)),
            (key_strategy(), any::<i64>(), any::<bool>())
                .prop_map(|(k, e, n)| Owned::Touch(k, e, n)),
            (any::<i64>(), any::<bool>()).prop_map(|(d, n)| Owned::Flush(d, n)),
            (0u8..20).prop_map(Owned::Simple),
            (any::<u64>(), any::<u64>(), any::<bool>())
                .prop_map(|(a, b, n)| Owned::Operator(a, b, n)),
        ]
    }

    fn encode_owned(op: &Owned, out: &mut Vec<u8>) {
        // Keys are joined into a raw line the way a client writes them.
        let joined = |keys: &Vec<Vec<u8>>| keys.join(&b' ');
        match op {
            Owned::Store(mode, key, flags, exptime, value, noreply) => Request::Store {
                mode: *mode,
                key,
                flags: *flags,
                exptime: *exptime,
                value,
                noreply: *noreply,
            }
            .encode(out),
            Owned::Get(with_cas, keys) => {
                let raw = joined(keys);
                Request::Get {
                    with_cas: *with_cas,
                    keys: Keys::from_raw(&raw),
                }
                .encode(out)
            }
            Owned::Gat(with_cas, exptime, keys) => {
                let raw = joined(keys);
                Request::GetAndTouch {
                    with_cas: *with_cas,
                    exptime: *exptime,
                    keys: Keys::from_raw(&raw),
                }
                .encode(out)
            }
            Owned::Delete(key, noreply) => Request::Delete {
                key,
                noreply: *noreply,
            }
            .encode(out),
            Owned::Counter(incr, key, delta, noreply) => Request::Counter {
                incr: *incr,
                key,
                delta: *delta,
                noreply: *noreply,
            }
            .encode(out),
            Owned::Touch(key, exptime, noreply) => Request::Touch {
                key,
                exptime: *exptime,
                noreply: *noreply,
            }
            .encode(out),
            Owned::Flush(delay, noreply) => Request::FlushAll {
                delay: *delay,
                noreply: *noreply,
            }
            .encode(out),
            Owned::Simple(0) => Request::Stats(StatsRequest::General).encode(out),
            Owned::Simple(1) => Request::Version.encode(out),
            Owned::Simple(2) => Request::Verbosity {
                level: 1,
                noreply: false,
            }
            .encode(out),
            Owned::Simple(3) => Request::Verbosity {
                level: 0,
                noreply: true,
            }
            .encode(out),
            Owned::Simple(n) => {
                let request = match n {
                    4 => Request::Stats(StatsRequest::Settings),
                    5 => Request::Stats(StatsRequest::Items),
                    6 => Request::Stats(StatsRequest::Slabs),
                    7 => Request::Stats(StatsRequest::Sizes),
                    8 => Request::Stats(StatsRequest::Conns),
                    9 => Request::Stats(StatsRequest::Reset),
                    10 => Request::Stats(StatsRequest::DetailOn),
                    11 => Request::Stats(StatsRequest::DetailOff),
                    12 => Request::Stats(StatsRequest::DetailDump),
                    13 => Request::Metadump {
                        includes_items: true,
                    },
                    14 => Request::Metadump {
                        includes_items: false,
                    },
                    15 => Request::Shutdown,
                    _ => Request::Quit,
                };
                request.encode(out)
            }
            Owned::Operator(class, limit, true) => Request::Stats(StatsRequest::Cachedump {
                class: *class,
                limit: *limit,
            })
            .encode(out),
            Owned::Operator(_, megabytes, false) => Request::CacheMemlimit {
                megabytes: *megabytes,
                noreply: *megabytes % 2 == 0,
            }
            .encode(out),
        }
    }

    fn encoded(op: &Owned) -> Vec<u8> {
        let mut out = Vec::new();
        encode_owned(op, &mut out);
        out
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
                        // Re-encoding what was parsed gives the same bytes.
                        let mut again = Vec::new();
                        request.encode(&mut again);
                        prop_assert_eq!(&again, &encoded(op), "{:?}", op);
                        pos += consumed;
                    }
                    other => prop_assert!(false, "{:?} gave {:?}", op, other),
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
                    Just(&b"set "[..]), Just(&b"cas "[..]), Just(&b"get "[..]), Just(&b"gat "[..]),
                    Just(&b"incr "[..]), Just(&b"flush_all"[..]), Just(&b" "[..]), Just(&b"noreply"[..]),
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
            let mut cut_points: Vec<usize> = cuts.iter().map(|i| i.index(buf.len() + 1)).collect();
            cut_points.push(buf.len());
            cut_points.sort_unstable();
            let mut pos = 0;
            let mut seen = Vec::new();
            for fed in cut_points {
                loop {
                    match parse(&buf[pos..fed], &LIMITS) {
                        Parsed::Request { request, consumed } => {
                            seen.push(format!("{request:?}"));
                            pos += consumed;
                        }
                        Parsed::Incomplete => break,
                        Parsed::Reject(r) => prop_assert!(false, "reject {:?}", r),
                    }
                }
            }
            prop_assert_eq!(seen, whole);
        }
    }

    #[test]
    fn ascii_auth_steps() {
        use AuthStep::*;
        assert_eq!(parse_ascii_auth(b"set a 0 0 7\r\nfoo b"), Incomplete);
        assert_eq!(
            parse_ascii_auth(b"set a 0 0 7\r\nfoo bar\r\nget x\r\n"),
            Credentials {
                user: b"foo",
                password: b"bar",
                consumed: 22
            }
        );
        assert_eq!(
            parse_ascii_auth(b"set a 0 0 9\r\nfoo b ar \r\n"),
            Credentials {
                user: b"foo",
                password: b"b ar ",
                consumed: 24
            }
        );
        let refused = |buf: &[u8]| match parse_ascii_auth(buf) {
            Refuse { reply, consumed } => (reply, consumed),
            other => panic!("{other:?}"),
        };
        assert_eq!(refused(b"get foo\r\n"), (UNAUTHENTICATED, 9));
        assert_eq!(refused(b"set a 0 0\r\n"), (UNAUTHENTICATED, 11));
        assert_eq!(refused(b"set a 0 0 x\r\n"), (UNAUTHENTICATED, 13));
        assert_eq!(refused(b"set a 0 0 4294967296\r\n"), (UNAUTHENTICATED, 22));
        assert_eq!(refused(b"set a 0 0 16385\r\n"), (AUTH_TOO_LONG, 17));
        assert_eq!(refused(b"set a 0 0 3\r\nabc\r\n"), (AUTH_BAD_FORMAT, 18));
        assert_eq!(refused(b"set a 0 0 3\r\nabcde"), (AUTH_BAD_TERMINATION, 18));
        assert_eq!(parse_ascii_auth(b"quit\r\n"), Close);
        assert_eq!(parse_ascii_auth(b"\n"), Close);
        assert_eq!(parse_ascii_auth(&[b'x'; 2048]), Incomplete);
        assert_eq!(parse_ascii_auth(&[b'x'; 2049]), Close);
    }
}
