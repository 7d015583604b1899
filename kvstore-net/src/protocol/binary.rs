//! memcached's binary protocol (docs/PROTOCOL.md, "Binary protocol"):
//! the 24-byte header, the request parser, the response encoder, and the
//! response decoder clients and tests use. Pure code over byte slices.
//!
//! Every packet is a header followed by a body of `extras`, `key` and
//! `value`, in that order; all numbers are big-endian:
//!
//! | offset | size | request          | response         |
//! |-------:|-----:|------------------|------------------|
//! |      0 |    1 | magic `0x80`     | magic `0x81`     |
//! |      1 |    1 | opcode           | opcode (echoed)  |
//! |      2 |    2 | key length       | key length       |
//! |      4 |    1 | extras length    | extras length    |
//! |      5 |    1 | data type (0)    | data type (0)    |
//! |      6 |    2 | vbucket (unused) | status           |
//! |      8 |    4 | body length      | body length      |
//! |     12 |    4 | opaque           | opaque (echoed)  |
//! |     16 |    8 | cas              | cas              |
//!
//! The parser follows memcached 1.6's `proto_bin.c` for what it accepts and
//! how it refuses: a packet whose header is inconsistent, or whose shape
//! does not fit its command, gets its error reply and closes the
//! connection (memcached cannot know where the next packet starts); an
//! unknown opcode, and a value over the size limit, get their error reply
//! and the packet is skipped (never buffered).

use std::fmt;

use super::memcached::Limits;
use super::{validate_key_with, Parsed, Recovery, Rejection, MAX_KEY_BYTES};

/// Bytes in a request or response header.
pub const HEADER_BYTES: usize = 24;
/// The first byte of every request; on the memcached port it also tells a
/// binary connection from a text one.
pub const REQUEST_MAGIC: u8 = 0x80;
/// The first byte of every response.
pub const RESPONSE_MAGIC: u8 = 0x81;
/// Largest body a header may announce: memcached's
/// `ITEM_SIZE_MAX_UPPER_LIMIT` (1 GiB). Past it the connection is closed.
pub const MAX_BODY_BYTES: u32 = 1 << 30;
/// Largest extras of any request (`incr`/`decr`: delta, initial, exptime).
pub const MAX_EXTRAS_BYTES: usize = 20;
/// `incr`/`decr` with this exptime fail on a missing key instead of
/// creating it with the initial value.
pub const NO_AUTO_CREATE: u32 = 0xffff_ffff;

/// The most bytes [`parse`] asks to have buffered before it answers: a
/// header, the largest extras, the longest key and a value of
/// `max_value_bytes`. Anything longer is rejected from its header alone.
pub const fn max_request_bytes(max_value_bytes: usize) -> usize {
    HEADER_BYTES + MAX_EXTRAS_BYTES + MAX_KEY_BYTES + max_value_bytes
}

/// The commands of the binary protocol this server knows (memcached's
/// `protocol_binary_command`, without the range commands nobody serves).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Opcode {
    /// `get`
    Get = 0x00,
    /// `set`
    Set = 0x01,
    /// `add`
    Add = 0x02,
    /// `replace`
    Replace = 0x03,
    /// `delete`
    Delete = 0x04,
    /// `incr`
    Increment = 0x05,
    /// `decr`
    Decrement = 0x06,
    /// `quit`
    Quit = 0x07,
    /// `flush_all`
    Flush = 0x08,
    /// quiet `get`: no reply on a miss.
    GetQ = 0x09,
    /// `noop`: an empty reply, used to end a pipeline of quiet commands.
    Noop = 0x0a,
    /// `version`
    Version = 0x0b,
    /// `get` that returns the key.
    GetK = 0x0c,
    /// quiet `get` that returns the key.
    GetKQ = 0x0d,
    /// `append`
    Append = 0x0e,
    /// `prepend`
    Prepend = 0x0f,
    /// `stats [group]`
    Stat = 0x10,
    /// quiet `set`
    SetQ = 0x11,
    /// quiet `add`
    AddQ = 0x12,
    /// quiet `replace`
    ReplaceQ = 0x13,
    /// quiet `delete`
    DeleteQ = 0x14,
    /// quiet `incr`
    IncrementQ = 0x15,
    /// quiet `decr`
    DecrementQ = 0x16,
    /// quiet `quit`: close without a reply.
    QuitQ = 0x17,
    /// quiet `flush_all`
    FlushQ = 0x18,
    /// quiet `append`
    AppendQ = 0x19,
    /// quiet `prepend`
    PrependQ = 0x1a,
    /// `touch`
    Touch = 0x1c,
    /// `gat`: get and touch.
    Gat = 0x1d,
    /// quiet `gat`
    GatQ = 0x1e,
    /// SASL: list the mechanisms.
    SaslListMechs = 0x20,
    /// SASL: start authenticating.
    SaslAuth = 0x21,
    /// SASL: next step of an authentication.
    SaslStep = 0x22,
    /// `gat` that returns the key.
    GatK = 0x23,
    /// quiet `gat` that returns the key.
    GatKQ = 0x24,
}

impl Opcode {
    /// The opcode of a byte, `None` for one this server does not know.
    pub fn from_byte(byte: u8) -> Option<Opcode> {
        use Opcode::*;
        Some(match byte {
            0x00 => Get,
            0x01 => Set,
            0x02 => Add,
            0x03 => Replace,
            0x04 => Delete,
            0x05 => Increment,
            0x06 => Decrement,
            0x07 => Quit,
            0x08 => Flush,
            0x09 => GetQ,
            0x0a => Noop,
            0x0b => Version,
            0x0c => GetK,
            0x0d => GetKQ,
            0x0e => Append,
            0x0f => Prepend,
            0x10 => Stat,
            0x11 => SetQ,
            0x12 => AddQ,
            0x13 => ReplaceQ,
            0x14 => DeleteQ,
            0x15 => IncrementQ,
            0x16 => DecrementQ,
            0x17 => QuitQ,
            0x18 => FlushQ,
            0x19 => AppendQ,
            0x1a => PrependQ,
            0x1c => Touch,
            0x1d => Gat,
            0x1e => GatQ,
            0x20 => SaslListMechs,
            0x21 => SaslAuth,
            0x22 => SaslStep,
            0x23 => GatK,
            0x24 => GatKQ,
            _ => return None,
        })
    }

    /// The byte on the wire.
    pub fn byte(self) -> u8 {
        self as u8
    }
}

/// Response statuses (memcached's `protocol_binary_response_status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Status {
    /// The command succeeded.
    Success = 0x00,
    /// No such key (or a cas on a missing key).
    KeyNotFound = 0x01,
    /// The key exists (`add`), or its cas differs.
    KeyExists = 0x02,
    /// The value is over the size limit.
    TooLarge = 0x03,
    /// A malformed packet, or arguments the command does not take.
    InvalidArguments = 0x04,
    /// `append`/`prepend` to a missing key.
    NotStored = 0x05,
    /// `incr`/`decr` on a value that is not a number.
    DeltaBadValue = 0x06,
    /// Authentication failed, or a command refused by configuration.
    AuthError = 0x20,
    /// Authentication needs another step.
    AuthContinue = 0x21,
    /// An opcode the server does not serve.
    UnknownCommand = 0x81,
    /// The server could not do it (here: a store failure).
    OutOfMemory = 0x82,
}

impl Status {
    /// The status of a response's status field, `None` for an unknown one.
    pub fn from_code(code: u16) -> Option<Status> {
        use Status::*;
        Some(match code {
            0x00 => Success,
            0x01 => KeyNotFound,
            0x02 => KeyExists,
            0x03 => TooLarge,
            0x04 => InvalidArguments,
            0x05 => NotStored,
            0x06 => DeltaBadValue,
            0x20 => AuthError,
            0x21 => AuthContinue,
            0x81 => UnknownCommand,
            0x82 => OutOfMemory,
            _ => return None,
        })
    }

    /// The number on the wire.
    pub fn code(self) -> u16 {
        self as u16
    }

    /// The text memcached puts in the body of an error response with this
    /// status (empty for the statuses that are not errors).
    pub fn message(self) -> &'static [u8] {
        match self {
            Status::Success | Status::AuthContinue => b"",
            Status::KeyNotFound => b"Not found",
            Status::KeyExists => b"Data exists for key.",
            Status::TooLarge => b"Too large.",
            Status::InvalidArguments => b"Invalid arguments",
            Status::NotStored => b"Not stored.",
            Status::DeltaBadValue => b"Non-numeric server-side value for incr or decr",
            Status::AuthError => b"Auth failure.",
            Status::UnknownCommand => b"Unknown command",
            Status::OutOfMemory => b"Out of memory",
        }
    }
}

/// A packet header, request or response, with its numbers in host order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Header {
    /// [`REQUEST_MAGIC`] or [`RESPONSE_MAGIC`].
    pub magic: u8,
    /// The command.
    pub opcode: u8,
    /// Bytes of key in the body.
    pub key_len: u16,
    /// Bytes of extras in the body.
    pub extras_len: u8,
    /// Always 0 (raw bytes).
    pub data_type: u8,
    /// A request's vbucket (ignored) or a response's status.
    pub status: u16,
    /// Bytes of body: extras, key and value.
    pub body_len: u32,
    /// Set by the client, echoed in the response.
    pub opaque: u32,
    /// A request's compare-and-swap value, or a response's item cas.
    pub cas: u64,
}

impl Header {
    /// Decodes the first [`HEADER_BYTES`] of a packet.
    pub fn decode(bytes: &[u8; HEADER_BYTES]) -> Header {
        let be16 = |at: usize| u16::from_be_bytes([bytes[at], bytes[at + 1]]);
        let be32 = |at: usize| {
            u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        let mut cas = [0u8; 8];
        cas.copy_from_slice(&bytes[16..24]);
        Header {
            magic: bytes[0],
            opcode: bytes[1],
            key_len: be16(2),
            extras_len: bytes[4],
            data_type: bytes[5],
            status: be16(6),
            body_len: be32(8),
            opaque: be32(12),
            cas: u64::from_be_bytes(cas),
        }
    }

    /// Appends the [`HEADER_BYTES`] wire form to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.magic);
        out.push(self.opcode);
        out.extend_from_slice(&self.key_len.to_be_bytes());
        out.push(self.extras_len);
        out.push(self.data_type);
        out.extend_from_slice(&self.status.to_be_bytes());
        out.extend_from_slice(&self.body_len.to_be_bytes());
        out.extend_from_slice(&self.opaque.to_be_bytes());
        out.extend_from_slice(&self.cas.to_be_bytes());
    }
}

/// The storage commands that carry flags and an exptime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreMode {
    /// Store unconditionally.
    Set,
    /// Store only if absent.
    Add,
    /// Store only if present.
    Replace,
}

/// A command of the binary protocol with its arguments, borrowing from the
/// buffer it was parsed from. The variant and its `quiet`/`with_key` flags
/// determine the opcode ([`Command::opcode`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command<'a> {
    /// `get`/`getq`/`getk`/`getkq`.
    Get {
        /// The key.
        key: &'a [u8],
        /// Return the key in the response.
        with_key: bool,
        /// No response on a miss.
        quiet: bool,
    },
    /// `gat`/`gatq`/`gatk`/`gatkq`: get, and set the exptime.
    GetAndTouch {
        /// The key.
        key: &'a [u8],
        /// Raw exptime, as `exptime` of the text protocol.
        exptime: u32,
        /// Return the key in the response.
        with_key: bool,
        /// No response on a miss.
        quiet: bool,
    },
    /// `touch`: set the exptime; the response carries the flags only.
    Touch {
        /// The key.
        key: &'a [u8],
        /// Raw exptime.
        exptime: u32,
    },
    /// `set`/`add`/`replace` and their quiet forms; a nonzero request cas
    /// makes any of them a compare-and-swap.
    Store {
        /// Which command.
        mode: StoreMode,
        /// The key.
        key: &'a [u8],
        /// Client flags.
        flags: u32,
        /// Raw exptime.
        exptime: u32,
        /// The value.
        value: &'a [u8],
        /// No response on success.
        quiet: bool,
    },
    /// `append`/`prepend` and their quiet forms (no flags, no exptime); a
    /// nonzero request cas must match the item's.
    Concat {
        /// `append` (else `prepend`).
        append: bool,
        /// The key.
        key: &'a [u8],
        /// The bytes to add.
        value: &'a [u8],
        /// No response on success.
        quiet: bool,
    },
    /// `delete`/`deleteq`; a nonzero request cas must match the item's.
    Delete {
        /// The key.
        key: &'a [u8],
        /// No response on success.
        quiet: bool,
    },
    /// `incr`/`decr` and their quiet forms; a nonzero request cas must
    /// match the item's.
    Counter {
        /// `incr` (else `decr`).
        incr: bool,
        /// The key.
        key: &'a [u8],
        /// The amount.
        delta: u64,
        /// The value a missing key is created with, unless `exptime` is
        /// [`NO_AUTO_CREATE`].
        initial: u64,
        /// Raw exptime of a created item, or [`NO_AUTO_CREATE`].
        exptime: u32,
        /// No response on success.
        quiet: bool,
    },
    /// `flush`/`flushq`.
    Flush {
        /// Raw delay, as `flush_all <delay>`; `None` when the request has
        /// no extras, which means 0.
        delay: Option<u32>,
        /// No response on success.
        quiet: bool,
    },
    /// `noop`
    Noop,
    /// `version`
    Version,
    /// `stat [group]`: one response per statistic, then an empty one.
    Stat {
        /// The group (`settings`, `items`, `reset`...), empty for the
        /// general statistics.
        group: &'a [u8],
    },
    /// `quit`/`quitq`: close after the response (none when quiet).
    Quit {
        /// No response.
        quiet: bool,
    },
    /// SASL: list the mechanisms.
    SaslListMechs,
    /// SASL: an authentication start or step.
    SaslAuth {
        /// A step of a started authentication (else the start).
        step: bool,
        /// The mechanism name.
        mechanism: &'a [u8],
        /// The mechanism's data.
        data: &'a [u8],
    },
}

impl Command<'_> {
    /// The opcode this command is sent with.
    pub fn opcode(&self) -> Opcode {
        use Opcode::*;
        match *self {
            Command::Get {
                with_key, quiet, ..
            } => match (with_key, quiet) {
                (false, false) => Get,
                (false, true) => GetQ,
                (true, false) => GetK,
                (true, true) => GetKQ,
            },
            Command::GetAndTouch {
                with_key, quiet, ..
            } => match (with_key, quiet) {
                (false, false) => Gat,
                (false, true) => GatQ,
                (true, false) => GatK,
                (true, true) => GatKQ,
            },
            Command::Touch { .. } => Touch,
            Command::Store { mode, quiet, .. } => match (mode, quiet) {
                (StoreMode::Set, false) => Set,
                (StoreMode::Set, true) => SetQ,
                (StoreMode::Add, false) => Add,
                (StoreMode::Add, true) => AddQ,
                (StoreMode::Replace, false) => Replace,
                (StoreMode::Replace, true) => ReplaceQ,
            },
            Command::Concat { append, quiet, .. } => match (append, quiet) {
                (true, false) => Append,
                (true, true) => AppendQ,
                (false, false) => Prepend,
                (false, true) => PrependQ,
            },
            Command::Delete { quiet, .. } => {
                if quiet {
                    DeleteQ
                } else {
                    Delete
                }
            }
            Command::Counter { incr, quiet, .. } => match (incr, quiet) {
                (true, false) => Increment,
                (true, true) => IncrementQ,
                (false, false) => Decrement,
                (false, true) => DecrementQ,
            },
            Command::Flush { quiet, .. } => {
                if quiet {
                    FlushQ
                } else {
                    Flush
                }
            }
            Command::Noop => Noop,
            Command::Version => Version,
            Command::Stat { .. } => Stat,
            Command::Quit { quiet } => {
                if quiet {
                    QuitQ
                } else {
                    Quit
                }
            }
            Command::SaslListMechs => SaslListMechs,
            Command::SaslAuth { step, .. } => {
                if step {
                    SaslStep
                } else {
                    SaslAuth
                }
            }
        }
    }

    /// Whether a successful outcome gets no response (the quiet opcodes;
    /// errors are always answered, and a quiet get answers its hits).
    pub fn is_quiet(&self) -> bool {
        match *self {
            Command::Get { quiet, .. }
            | Command::GetAndTouch { quiet, .. }
            | Command::Store { quiet, .. }
            | Command::Concat { quiet, .. }
            | Command::Delete { quiet, .. }
            | Command::Counter { quiet, .. }
            | Command::Flush { quiet, .. }
            | Command::Quit { quiet } => quiet,
            _ => false,
        }
    }
}

/// A request: a command and the header fields every command shares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    /// The command and its arguments.
    pub command: Command<'a>,
    /// Echoed in every response to this request.
    pub opaque: u32,
    /// For storage commands, `delete` and `incr`/`decr`: when nonzero,
    /// the command applies only if the item's cas is this one. Other
    /// commands ignore it.
    pub cas: u64,
}

impl Request<'_> {
    /// Appends the wire form of the request to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut extras = [0u8; MAX_EXTRAS_BYTES];
        let (extras_len, key, value): (usize, &[u8], &[u8]) = match self.command {
            Command::Get { key, .. } | Command::Delete { key, .. } => (0, key, b""),
            Command::GetAndTouch { key, exptime, .. } | Command::Touch { key, exptime } => {
                extras[..4].copy_from_slice(&exptime.to_be_bytes());
                (4, key, b"")
            }
            Command::Store {
                key,
                flags,
                exptime,
                value,
                ..
            } => {
                extras[..4].copy_from_slice(&flags.to_be_bytes());
                extras[4..8].copy_from_slice(&exptime.to_be_bytes());
                (8, key, value)
            }
            Command::Concat { key, value, .. } => (0, key, value),
            Command::Counter {
                key,
                delta,
                initial,
                exptime,
                ..
            } => {
                extras[..8].copy_from_slice(&delta.to_be_bytes());
                extras[8..16].copy_from_slice(&initial.to_be_bytes());
                extras[16..20].copy_from_slice(&exptime.to_be_bytes());
                (20, key, b"")
            }
            Command::Flush { delay, .. } => match delay {
                Some(delay) => {
                    extras[..4].copy_from_slice(&delay.to_be_bytes());
                    (4, b"", b"")
                }
                None => (0, b"", b""),
            },
            Command::Noop | Command::Version | Command::Quit { .. } | Command::SaslListMechs => {
                (0, b"", b"")
            }
            Command::Stat { group } => (0, group, b""),
            Command::SaslAuth {
                mechanism, data, ..
            } => (0, mechanism, data),
        };
        let body_len = extras_len + key.len() + value.len();
        Header {
            magic: REQUEST_MAGIC,
            opcode: self.command.opcode().byte(),
            key_len: key.len() as u16,
            extras_len: extras_len as u8,
            data_type: 0,
            status: 0,
            body_len: body_len as u32,
            opaque: self.opaque,
            cas: self.cas,
        }
        .encode(out);
        out.extend_from_slice(&extras[..extras_len]);
        out.extend_from_slice(key);
        out.extend_from_slice(value);
    }
}

/// An error response to a request that never became a [`Request`]: the
/// opcode and opaque it echoes, and the status. Its body is the status's
/// [`Status::message`], as memcached sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorReply {
    /// The request's opcode byte (possibly one this server does not know).
    pub opcode: u8,
    /// The request's opaque.
    pub opaque: u32,
    /// Why the request is refused.
    pub status: Status,
}

impl ErrorReply {
    /// Appends the response to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        Response::error(self.opcode, self.opaque, self.status).encode(out);
    }
}

/// A refused request: the reply, how the connection goes on, and for a
/// storage packet refused for size what the server still has to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reject<'a> {
    /// The error response; `None` closes without one (a packet that does
    /// not start with [`REQUEST_MAGIC`], as memcached does).
    pub reply: Option<ErrorReply>,
    /// Skip the packet (counted from the start of the buffer, possibly
    /// past what is buffered) or close the connection.
    pub recovery: Recovery,
    /// Set when a storage packet with a valid key was refused for the
    /// size of its value.
    pub too_large: Option<TooLarge<'a>>,
}

/// A storage packet refused for the size of its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLarge<'a> {
    /// Its key.
    pub key: &'a [u8],
    /// Whether the key's old value goes: memcached removes it on a refused
    /// `set`/`setq` (and only then), so that no client reads the value the
    /// set meant to replace.
    pub drop_old: bool,
}

impl Rejection for Reject<'_> {
    fn recovery(&self) -> Recovery {
        self.recovery
    }
}

/// A response, to encode (server) or as decoded (client).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response<'a> {
    /// The request's opcode byte, echoed.
    pub opcode: u8,
    /// The outcome.
    pub status: Status,
    /// The request's opaque, echoed.
    pub opaque: u32,
    /// The item's cas after the command, or 0.
    pub cas: u64,
    /// The extras (a get's flags).
    pub extras: &'a [u8],
    /// The key (`getk`, `gatk`, stat names).
    pub key: &'a [u8],
    /// The value, a counter's 8 bytes, a stat value or an error message.
    pub value: &'a [u8],
}

impl<'a> Response<'a> {
    /// A response with no body and no cas: `noop`, `quit`, `flush`, the
    /// end of `stat`.
    pub fn empty(opcode: u8, opaque: u32) -> Response<'static> {
        Response {
            opcode,
            status: Status::Success,
            opaque,
            cas: 0,
            extras: b"",
            key: b"",
            value: b"",
        }
    }

    /// An error response whose body is the status's message.
    pub fn error(opcode: u8, opaque: u32, status: Status) -> Response<'static> {
        Response {
            status,
            value: status.message(),
            ..Response::empty(opcode, opaque)
        }
    }

    /// Appends the wire form to `out`.
    ///
    /// The caller keeps the key under 64 KiB, the extras under 256 bytes
    /// and the whole body under 4 GiB (values are capped far below).
    pub fn encode(&self, out: &mut Vec<u8>) {
        let body_len = self.extras.len() + self.key.len() + self.value.len();
        out.reserve(HEADER_BYTES + body_len);
        Header {
            magic: RESPONSE_MAGIC,
            opcode: self.opcode,
            key_len: self.key.len() as u16,
            extras_len: self.extras.len() as u8,
            data_type: 0,
            status: self.status.code(),
            body_len: body_len as u32,
            opaque: self.opaque,
            cas: self.cas,
        }
        .encode(out);
        out.extend_from_slice(self.extras);
        out.extend_from_slice(self.key);
        out.extend_from_slice(self.value);
    }

    /// Decodes the first response in `buf`: `Ok(None)` until it is
    /// complete, else the response and the bytes it used.
    ///
    /// # Errors
    /// [`BadResponse`] when the bytes are not a response packet.
    pub fn decode(buf: &'a [u8]) -> Result<Option<(Response<'a>, usize)>, BadResponse> {
        let Some(head) = buf.first_chunk::<HEADER_BYTES>() else {
            return Ok(None);
        };
        let h = Header::decode(head);
        if h.magic != RESPONSE_MAGIC {
            return Err(BadResponse::Magic(h.magic));
        }
        let status = Status::from_code(h.status).ok_or(BadResponse::Status(h.status))?;
        let body_len = h.body_len as usize;
        let (extras_len, key_len) = (usize::from(h.extras_len), usize::from(h.key_len));
        if extras_len + key_len > body_len {
            return Err(BadResponse::Lengths);
        }
        let Some(body) = buf[HEADER_BYTES..].get(..body_len) else {
            return Ok(None);
        };
        let (extras, rest) = body.split_at(extras_len);
        let (key, value) = rest.split_at(key_len);
        Ok(Some((
            Response {
                opcode: h.opcode,
                status,
                opaque: h.opaque,
                cas: h.cas,
                extras,
                key,
                value,
            },
            HEADER_BYTES + body_len,
        )))
    }
}

/// Why bytes are not a binary response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadResponse {
    /// The first byte is not [`RESPONSE_MAGIC`].
    Magic(u8),
    /// A status this protocol does not define.
    Status(u16),
    /// The extras and key are longer than the body.
    Lengths,
}

impl fmt::Display for BadResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BadResponse::Magic(m) => write!(f, "binary response starts with 0x{m:02x}, not 0x81"),
            BadResponse::Status(s) => write!(f, "binary response has unknown status 0x{s:04x}"),
            BadResponse::Lengths => write!(f, "binary response has extras and key past its body"),
        }
    }
}

impl std::error::Error for BadResponse {}

/// The extras of a get, gat or touch response: the item's flags.
pub fn flags_extras(flags: u32) -> [u8; 4] {
    flags.to_be_bytes()
}

/// The body of an `incr`/`decr` response: the new value.
pub fn counter_value(value: u64) -> [u8; 8] {
    value.to_be_bytes()
}

/// Which body an opcode takes, as memcached's `dispatch_bin_command`
/// checks it: `true` when the lengths fit.
fn shape_fits(op: Opcode, h: &Header) -> bool {
    use Opcode::*;
    let (extras, key, body) = (u32::from(h.extras_len), u32::from(h.key_len), h.body_len);
    match op {
        Version | Noop | Quit | QuitQ | SaslListMechs => extras == 0 && key == 0 && body == 0,
        Flush | FlushQ => key == 0 && body == extras && (extras == 0 || extras == 4),
        Set | SetQ | Add | AddQ | Replace | ReplaceQ => extras == 8 && key != 0,
        Get | GetQ | GetK | GetKQ | Delete | DeleteQ => extras == 0 && key != 0 && body == key,
        Increment | IncrementQ | Decrement | DecrementQ => {
            extras == 20 && key != 0 && body == key + extras
        }
        Append | AppendQ | Prepend | PrependQ => extras == 0 && key != 0,
        // memcached reads a stat's stray value, and a touch's, as the next
        // packet; here such a packet is refused.
        Stat => extras == 0 && body == key,
        SaslAuth | SaslStep => extras == 0 && key != 0,
        Touch | Gat | GatQ | GatK | GatKQ => extras == 4 && key != 0 && body == key + extras,
    }
}

fn be32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_be_bytes(a)
}

fn be64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

/// Parses the first request in `buf`.
///
/// In memcached's order: a first byte other than [`REQUEST_MAGIC`] closes
/// the connection without a reply; extras and key longer than the body
/// close it after [`Status::UnknownCommand`]; a body over
/// [`MAX_BODY_BYTES`], a key over [`MAX_KEY_BYTES`], or lengths the
/// opcode does not take close it after [`Status::InvalidArguments`]. An
/// unknown opcode gets [`Status::UnknownCommand`] and its packet is
/// skipped; a value over `limits.max_value_bytes` gets
/// [`Status::TooLarge`] and its packet is skipped as it arrives. A key the
/// key policy refuses gets [`Status::InvalidArguments`] and its packet is
/// skipped. Nothing is buffered past [`max_request_bytes`].
pub fn parse<'a>(buf: &'a [u8], limits: &Limits) -> Parsed<Request<'a>, Reject<'a>> {
    match buf.first() {
        None => return Parsed::Incomplete,
        Some(&REQUEST_MAGIC) => {}
        Some(_) => {
            return Parsed::Reject(Reject {
                reply: None,
                recovery: Recovery::Close,
                too_large: None,
            })
        }
    }
    let Some(head) = buf.first_chunk::<HEADER_BYTES>() else {
        return Parsed::Incomplete;
    };
    let h = Header::decode(head);
    let refuse = |status, recovery, too_large| {
        Parsed::Reject(Reject {
            reply: Some(ErrorReply {
                opcode: h.opcode,
                opaque: h.opaque,
                status,
            }),
            recovery,
            too_large,
        })
    };
    let (extras_len, key_len) = (usize::from(h.extras_len), usize::from(h.key_len));
    let body_len = h.body_len as usize;
    if extras_len + key_len > body_len {
        return refuse(Status::UnknownCommand, Recovery::Close, None);
    }
    if h.body_len > MAX_BODY_BYTES || key_len > MAX_KEY_BYTES {
        return refuse(Status::InvalidArguments, Recovery::Close, None);
    }
    let packet_len = HEADER_BYTES + body_len;
    let skip = Recovery::Discard(packet_len as u64);
    let Some(op) = Opcode::from_byte(h.opcode) else {
        return refuse(Status::UnknownCommand, skip, None);
    };
    if !shape_fits(op, &h) {
        return refuse(Status::InvalidArguments, Recovery::Close, None);
    }
    let value_len = body_len - extras_len - key_len;
    if value_len > limits.max_value_bytes {
        // Only storage and SASL packets carry a value (see `shape_fits`).
        if matches!(op, Opcode::SaslAuth | Opcode::SaslStep) {
            // Without SASL memcached answers every SASL packet this way.
            return refuse(Status::UnknownCommand, skip, None);
        }
        // The key is within the first bytes: wait for it (the executor
        // counts the refusal, and may remove the old value).
        let key_end = HEADER_BYTES + extras_len + key_len;
        let Some(key) = buf.get(key_end - key_len..key_end) else {
            return Parsed::Incomplete;
        };
        let too_large = validate_key_with(key, limits.keys)
            .is_ok()
            .then_some(TooLarge {
                key,
                drop_old: matches!(op, Opcode::Set | Opcode::SetQ),
            });
        return refuse(Status::TooLarge, skip, too_large);
    }
    let Some(body) = buf.get(HEADER_BYTES..packet_len) else {
        return Parsed::Incomplete;
    };
    let (extras, rest) = body.split_at(extras_len);
    let (key, value) = rest.split_at(key_len);
    if !key.is_empty()
        && op != Opcode::Stat
        && op != Opcode::SaslAuth
        && op != Opcode::SaslStep
        && validate_key_with(key, limits.keys).is_err()
    {
        return refuse(Status::InvalidArguments, skip, None);
    }
    use Opcode::*;
    let command = match op {
        Get | GetQ | GetK | GetKQ => Command::Get {
            key,
            with_key: matches!(op, GetK | GetKQ),
            quiet: matches!(op, GetQ | GetKQ),
        },
        Gat | GatQ | GatK | GatKQ => Command::GetAndTouch {
            key,
            exptime: be32(extras),
            with_key: matches!(op, GatK | GatKQ),
            quiet: matches!(op, GatQ | GatKQ),
        },
        Touch => Command::Touch {
            key,
            exptime: be32(extras),
        },
        Set | SetQ | Add | AddQ | Replace | ReplaceQ => Command::Store {
            mode: match op {
                Set | SetQ => StoreMode::Set,
                Add | AddQ => StoreMode::Add,
                _ => StoreMode::Replace,
            },
            key,
            flags: be32(extras),
            exptime: be32(&extras[4..]),
            value,
            quiet: matches!(op, SetQ | AddQ | ReplaceQ),
        },
        Append | AppendQ | Prepend | PrependQ => Command::Concat {
            append: matches!(op, Append | AppendQ),
            key,
            value,
            quiet: matches!(op, AppendQ | PrependQ),
        },
        Delete | DeleteQ => Command::Delete {
            key,
            quiet: op == DeleteQ,
        },
        Increment | IncrementQ | Decrement | DecrementQ => Command::Counter {
            incr: matches!(op, Increment | IncrementQ),
            key,
            delta: be64(extras),
            initial: be64(&extras[8..]),
            exptime: be32(&extras[16..]),
            quiet: matches!(op, IncrementQ | DecrementQ),
        },
        Flush | FlushQ => Command::Flush {
            delay: (!extras.is_empty()).then(|| be32(extras)),
            quiet: op == FlushQ,
        },
        Noop => Command::Noop,
        Version => Command::Version,
        Stat => Command::Stat { group: key },
        Quit | QuitQ => Command::Quit { quiet: op == QuitQ },
        SaslListMechs => Command::SaslListMechs,
        SaslAuth | SaslStep => Command::SaslAuth {
            step: op == SaslStep,
            mechanism: key,
            data: value,
        },
    };
    Parsed::Request {
        request: Request {
            command,
            opaque: h.opaque,
            cas: h.cas,
        },
        consumed: packet_len,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{describe_steps, KeyPolicy};
    use proptest::prelude::*;

    const LIMITS: Limits = Limits {
        max_value_bytes: 1 << 20,
        keys: KeyPolicy::Strict,
    };
    const OPAQUE: u32 = 0xdead_beef;

    /// A request packet built field by field, independently of
    /// [`Request::encode`].
    fn packet(opcode: u8, extras: &[u8], key: &[u8], value: &[u8], cas: u64) -> Vec<u8> {
        packet_with_len(
            opcode,
            extras,
            key,
            value,
            cas,
            (extras.len() + key.len() + value.len()) as u32,
        )
    }

    fn packet_with_len(
        opcode: u8,
        extras: &[u8],
        key: &[u8],
        value: &[u8],
        cas: u64,
        body_len: u32,
    ) -> Vec<u8> {
        let mut p = vec![0x80, opcode];
        p.extend_from_slice(&(key.len() as u16).to_be_bytes());
        p.push(extras.len() as u8);
        p.extend_from_slice(&[0, 0, 0]);
        p.extend_from_slice(&body_len.to_be_bytes());
        p.extend_from_slice(&OPAQUE.to_be_bytes());
        p.extend_from_slice(&cas.to_be_bytes());
        p.extend_from_slice(extras);
        p.extend_from_slice(key);
        p.extend_from_slice(value);
        p
    }

    fn req(buf: &[u8]) -> Request<'_> {
        match parse(buf, &LIMITS) {
            Parsed::Request { request, consumed } => {
                assert_eq!(consumed, buf.len(), "{request:?}");
                request
            }
            other => panic!("expected a request from {buf:02x?}, got {other:?}"),
        }
    }

    fn rejected(buf: &[u8]) -> Reject<'_> {
        match parse(buf, &LIMITS) {
            Parsed::Reject(r) => r,
            other => panic!("expected a reject from {buf:02x?}, got {other:?}"),
        }
    }

    fn error(opcode: u8, status: Status) -> Option<ErrorReply> {
        Some(ErrorReply {
            opcode,
            opaque: OPAQUE,
            status,
        })
    }

    #[test]
    fn header_round_trips_on_bytes() {
        let bytes: [u8; 24] = [
            0x81, 0x0c, 0x00, 0x01, 0x04, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x08, 0xde, 0xad,
            0xbe, 0xef, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x02,
        ];
        let h = Header::decode(&bytes);
        assert_eq!(
            h,
            Header {
                magic: RESPONSE_MAGIC,
                opcode: 0x0c,
                key_len: 1,
                extras_len: 4,
                data_type: 0,
                status: 1,
                body_len: 8,
                opaque: OPAQUE,
                cas: 0x0102,
            }
        );
        let mut out = Vec::new();
        h.encode(&mut out);
        assert_eq!(out, bytes);
    }

    #[test]
    fn opcodes_and_statuses_map_both_ways() {
        for byte in 0..=u8::MAX {
            if let Some(op) = Opcode::from_byte(byte) {
                assert_eq!(op.byte(), byte);
            }
        }
        assert_eq!(Opcode::from_byte(0x1b), None);
        assert_eq!(Opcode::from_byte(0x30), None);
        for code in 0..=0x100u16 {
            if let Some(status) = Status::from_code(code) {
                assert_eq!(status.code(), code);
            }
        }
    }

    #[test]
    fn retrieval_commands() {
        for (opcode, with_key, quiet) in [
            (0x00, false, false),
            (0x09, false, true),
            (0x0c, true, false),
            (0x0d, true, true),
        ] {
            let buf = packet(opcode, b"", b"key", b"", 0);
            assert_eq!(
                req(&buf),
                Request {
                    command: Command::Get {
                        key: b"key",
                        with_key,
                        quiet
                    },
                    opaque: OPAQUE,
                    cas: 0
                }
            );
        }
        for (opcode, with_key, quiet) in [
            (0x1d, false, false),
            (0x1e, false, true),
            (0x23, true, false),
            (0x24, true, true),
        ] {
            let buf = packet(opcode, &100u32.to_be_bytes(), b"k", b"", 0);
            assert_eq!(
                req(&buf).command,
                Command::GetAndTouch {
                    key: b"k",
                    exptime: 100,
                    with_key,
                    quiet
                }
            );
        }
        let buf = packet(0x1c, &[0xff, 0xff, 0xff, 0xff], b"k", b"", 0);
        assert_eq!(
            req(&buf).command,
            Command::Touch {
                key: b"k",
                exptime: u32::MAX
            }
        );
    }

    #[test]
    fn storage_commands_carry_cas() {
        let extras = [0, 0, 0, 7, 0, 0, 0, 60];
        for (opcode, mode, quiet) in [
            (0x01, StoreMode::Set, false),
            (0x11, StoreMode::Set, true),
            (0x02, StoreMode::Add, false),
            (0x12, StoreMode::Add, true),
            (0x03, StoreMode::Replace, false),
            (0x13, StoreMode::Replace, true),
        ] {
            let buf = packet(opcode, &extras, b"k", b"val\r\n", 42);
            assert_eq!(
                req(&buf),
                Request {
                    command: Command::Store {
                        mode,
                        key: b"k",
                        flags: 7,
                        exptime: 60,
                        value: b"val\r\n",
                        quiet
                    },
                    opaque: OPAQUE,
                    cas: 42
                }
            );
        }
        for (opcode, append, quiet) in [
            (0x0e, true, false),
            (0x19, true, true),
            (0x0f, false, false),
            (0x1a, false, true),
        ] {
            let buf = packet(opcode, b"", b"k", b"", 9);
            let r = req(&buf);
            assert_eq!(r.cas, 9);
            assert_eq!(
                r.command,
                Command::Concat {
                    append,
                    key: b"k",
                    value: b"",
                    quiet
                }
            );
        }
        // An empty value is a value.
        let buf = packet(0x01, &[0; 8], b"z", b"", 0);
        assert!(matches!(
            req(&buf).command,
            Command::Store { value: b"", .. }
        ));
    }

    #[test]
    fn other_commands() {
        assert_eq!(
            req(&packet(0x04, b"", b"k", b"", 5)),
            Request {
                command: Command::Delete {
                    key: b"k",
                    quiet: false
                },
                opaque: OPAQUE,
                cas: 5
            }
        );
        assert_eq!(
            req(&packet(0x14, b"", b"k", b"", 0)).command,
            Command::Delete {
                key: b"k",
                quiet: true
            }
        );
        let mut extras = Vec::new();
        extras.extend_from_slice(&5u64.to_be_bytes());
        extras.extend_from_slice(&10u64.to_be_bytes());
        extras.extend_from_slice(&NO_AUTO_CREATE.to_be_bytes());
        for (opcode, incr, quiet) in [
            (0x05, true, false),
            (0x15, true, true),
            (0x06, false, false),
            (0x16, false, true),
        ] {
            assert_eq!(
                req(&packet(opcode, &extras, b"n", b"", 0)).command,
                Command::Counter {
                    incr,
                    key: b"n",
                    delta: 5,
                    initial: 10,
                    exptime: NO_AUTO_CREATE,
                    quiet
                }
            );
        }
        assert_eq!(
            req(&packet(0x08, b"", b"", b"", 0)).command,
            Command::Flush {
                delay: None,
                quiet: false
            }
        );
        assert_eq!(
            req(&packet(0x18, &[0, 0, 0, 30], b"", b"", 0)).command,
            Command::Flush {
                delay: Some(30),
                quiet: true
            }
        );
        for (opcode, command) in [
            (0x0a, Command::Noop),
            (0x0b, Command::Version),
            (0x07, Command::Quit { quiet: false }),
            (0x17, Command::Quit { quiet: true }),
            (0x20, Command::SaslListMechs),
            (0x10, Command::Stat { group: b"" }),
        ] {
            assert_eq!(req(&packet(opcode, b"", b"", b"", 0)).command, command);
        }
        // Stat groups hold spaces ("detail on"): not a key.
        assert_eq!(
            req(&packet(0x10, b"", b"detail on", b"", 0)).command,
            Command::Stat {
                group: b"detail on"
            }
        );
        assert_eq!(
            req(&packet(0x21, b"", b"PLAIN", b"\0u\0p", 0)).command,
            Command::SaslAuth {
                step: false,
                mechanism: b"PLAIN",
                data: b"\0u\0p"
            }
        );
        assert_eq!(
            req(&packet(0x22, b"", b"PLAIN", b"", 0)).command,
            Command::SaslAuth {
                step: true,
                mechanism: b"PLAIN",
                data: b""
            }
        );
    }

    #[test]
    fn vbucket_and_data_type_are_ignored() {
        let mut buf = packet(0x00, b"", b"k", b"", 0);
        buf[5] = 1;
        buf[6] = 0;
        buf[7] = 7;
        assert!(matches!(req(&buf).command, Command::Get { key: b"k", .. }));
    }

    #[test]
    fn every_prefix_is_incomplete() {
        let full = packet(0x01, &[0; 8], b"key", b"value", 0);
        for cut in 0..full.len() {
            assert_eq!(parse(&full[..cut], &LIMITS), Parsed::Incomplete, "{cut}");
        }
        assert!(matches!(
            parse(&full, &LIMITS),
            Parsed::Request { consumed, .. } if consumed == full.len()
        ));
    }

    #[test]
    fn a_first_byte_other_than_the_magic_closes_without_a_reply() {
        for buf in [&b"get a\r\n"[..], &[0x81], &[0x00; 24]] {
            assert_eq!(
                rejected(buf),
                Reject {
                    reply: None,
                    recovery: Recovery::Close,
                    too_large: None
                }
            );
        }
    }

    #[test]
    fn inconsistent_headers_close_after_memcacheds_status() {
        // Extras and key longer than the body.
        let buf = packet_with_len(0x00, b"", b"k", b"", 0, 0);
        assert_eq!(
            rejected(&buf),
            Reject {
                reply: error(0x00, Status::UnknownCommand),
                recovery: Recovery::Close,
                too_large: None
            }
        );
        // A body over 1 GiB, refused from the header alone.
        let buf = packet_with_len(0x01, &[0; 8], b"k", b"", 0, MAX_BODY_BYTES + 1);
        assert_eq!(
            rejected(&buf[..HEADER_BYTES]).reply,
            error(0x01, Status::InvalidArguments)
        );
        // A key over 250 bytes, refused before it arrives.
        let buf = packet(0x00, b"", &[b'k'; 251], b"", 0);
        let r = rejected(&buf[..HEADER_BYTES]);
        assert_eq!(r.reply, error(0x00, Status::InvalidArguments));
        assert_eq!(r.recovery, Recovery::Close);
    }

    #[test]
    fn malformed_shapes_close_with_invalid_arguments() {
        // Opcode, extras, key, value.
        type Packet<'a> = (u8, &'a [u8], &'a [u8], &'a [u8]);
        let cases: &[Packet<'_>] = &[
            (0x00, b"xxxx", b"k", b""),   // get with extras
            (0x00, b"", b"", b""),        // get without a key
            (0x00, b"", b"k", b"v"),      // get with a value
            (0x04, &[0; 4], b"k", b""),   // delete with extras
            (0x0e, &[0; 4], b"k", b"v"),  // append with extras
            (0x0e, b"", b"", b"v"),       // append without a key
            (0x01, b"", b"k", b"v"),      // set without extras
            (0x01, &[0; 8], b"", b"v"),   // set without a key
            (0x05, &[0; 8], b"k", b""),   // incr with short extras
            (0x05, &[0; 20], b"k", b"v"), // incr with a value
            (0x0b, b"", b"k", b""),       // version with a key
            (0x0a, b"", b"", b"x"),       // noop with a body
            (0x07, b"", b"", b"x"),       // quit with a body
            (0x08, &[0; 2], b"", b""),    // flush with 2 bytes of extras
            (0x08, b"", b"k", b""),       // flush with a key
            (0x10, b"", b"", b"xx"),      // stat with a value
            (0x10, &[0; 4], b"", b""),    // stat with extras
            (0x20, b"", b"k", b""),       // list mechs with a key
            (0x21, b"", b"", b"x"),       // sasl auth without a mechanism
            (0x1c, b"", b"k", b""),       // touch without extras
            (0x1d, &[0; 4], b"", b""),    // gat without a key
            (0x1d, &[0; 4], b"k", b"v"),  // gat with a value
        ];
        for &(opcode, extras, key, value) in cases {
            let buf = packet(opcode, extras, key, value, 0);
            assert_eq!(
                rejected(&buf),
                Reject {
                    reply: error(opcode, Status::InvalidArguments),
                    recovery: Recovery::Close,
                    too_large: None
                },
                "opcode {opcode:#04x}"
            );
        }
    }

    #[test]
    fn unknown_opcodes_are_skipped_whole() {
        for opcode in [0x1b, 0x25, 0x30, 0x50, 0xff] {
            let buf = packet(opcode, b"ee", b"kk", b"vvvv", 0);
            // Refused from the header: the body is skipped, never buffered.
            assert_eq!(
                rejected(&buf[..HEADER_BYTES]),
                Reject {
                    reply: error(opcode, Status::UnknownCommand),
                    recovery: Recovery::Discard(buf.len() as u64),
                    too_large: None
                }
            );
        }
    }

    #[test]
    fn oversized_values_are_skipped_not_buffered() {
        let limits = Limits {
            max_value_bytes: 4,
            keys: KeyPolicy::Strict,
        };
        // A storage packet waits for its key only: the executor counts the
        // refusal and, for a set, removes the old value.
        for (opcode, extras, drop_old) in [
            (0x11, &[0u8; 8][..], true),
            (0x01, &[0; 8], true),
            (0x02, &[0; 8], false),
            (0x13, &[0; 8], false),
            (0x0e, b"", false),
            (0x1a, b"", false),
        ] {
            let buf = packet(opcode, extras, b"key", b"12345", 0);
            let head = &buf[..HEADER_BYTES + extras.len() + 3];
            assert_eq!(parse(&head[..head.len() - 1], &limits), Parsed::Incomplete);
            assert_eq!(
                parse(head, &limits),
                Parsed::Reject(Reject {
                    reply: error(opcode, Status::TooLarge),
                    recovery: Recovery::Discard(buf.len() as u64),
                    too_large: Some(TooLarge {
                        key: b"key",
                        drop_old
                    })
                })
            );
        }
        // A key the policy refuses is not handed on.
        let buf = packet(0x01, &[0; 8], b"a b", b"12345", 0);
        assert_eq!(
            parse(&buf, &limits),
            Parsed::Reject(Reject {
                reply: error(0x01, Status::TooLarge),
                recovery: Recovery::Discard(buf.len() as u64),
                too_large: None
            })
        );
        // Without SASL, an authentication of any size is an unknown command.
        let buf = packet(0x21, b"", b"PLAIN", b"12345", 0);
        assert_eq!(
            parse(&buf[..HEADER_BYTES], &limits),
            Parsed::Reject(Reject {
                reply: error(0x21, Status::UnknownCommand),
                recovery: Recovery::Discard(buf.len() as u64),
                too_large: None
            })
        );
        // A value at the limit is accepted.
        let buf = packet(0x01, &[0; 8], b"key", b"1234", 0);
        assert!(matches!(parse(&buf, &limits), Parsed::Request { .. }));
    }

    #[test]
    fn keys_the_policy_refuses_are_skipped() {
        let buf = packet(0x00, b"", b"a b", b"", 0);
        assert_eq!(
            rejected(&buf),
            Reject {
                reply: error(0x00, Status::InvalidArguments),
                recovery: Recovery::Discard(buf.len() as u64),
                too_large: None
            }
        );
        let lenient = Limits {
            keys: KeyPolicy::MemcachedCompatible,
            ..LIMITS
        };
        let buf = packet(0x00, b"", b"a\tb", b"", 0);
        assert!(matches!(parse(&buf, &lenient), Parsed::Request { .. }));
    }

    /// A response as memcached 1.6.18 sends it, field by field.
    fn memcached_response(
        opcode: u8,
        status: u16,
        cas: u64,
        extras: &[u8],
        key: &[u8],
        value: &[u8],
    ) -> Vec<u8> {
        let mut r = vec![0x81, opcode];
        r.extend_from_slice(&(key.len() as u16).to_be_bytes());
        r.push(extras.len() as u8);
        r.push(0);
        r.extend_from_slice(&status.to_be_bytes());
        r.extend_from_slice(&((extras.len() + key.len() + value.len()) as u32).to_be_bytes());
        r.extend_from_slice(&OPAQUE.to_be_bytes());
        r.extend_from_slice(&cas.to_be_bytes());
        r.extend_from_slice(extras);
        r.extend_from_slice(key);
        r.extend_from_slice(value);
        r
    }

    fn encoded(r: Response<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        r.encode(&mut out);
        out
    }

    #[test]
    fn responses_match_memcached_bytes() {
        // Each case was captured from memcached 1.6.18 (`-B binary`).
        let flags = flags_extras(7);
        let hit = Response {
            opcode: 0x00,
            status: Status::Success,
            opaque: OPAQUE,
            cas: 2,
            extras: &flags,
            key: b"",
            value: b"val",
        };
        assert_eq!(
            encoded(hit),
            memcached_response(0x00, 0, 2, &[0, 0, 0, 7], b"", b"val")
        );
        assert_eq!(
            encoded(Response {
                opcode: 0x0c,
                key: b"k",
                ..hit
            }),
            memcached_response(0x0c, 0, 2, &[0, 0, 0, 7], b"k", b"val")
        );
        // A touch answers the flags without the value.
        assert_eq!(
            encoded(Response {
                opcode: 0x1c,
                value: b"",
                ..hit
            }),
            memcached_response(0x1c, 0, 2, &[0, 0, 0, 7], b"", b"")
        );
        assert_eq!(
            encoded(Response::error(0x00, OPAQUE, Status::KeyNotFound)),
            memcached_response(0x00, 1, 0, b"", b"", b"Not found")
        );
        // A getk miss carries the key and no message.
        assert_eq!(
            encoded(Response {
                status: Status::KeyNotFound,
                key: b"nokey",
                ..Response::empty(0x0c, OPAQUE)
            }),
            memcached_response(0x0c, 1, 0, b"", b"nokey", b"")
        );
        let cases: &[(u8, Status, &[u8])] = &[
            (0x02, Status::KeyExists, b"Data exists for key."),
            (0x03, Status::KeyNotFound, b"Not found"),
            (0x0e, Status::NotStored, b"Not stored."),
            (
                0x15,
                Status::DeltaBadValue,
                b"Non-numeric server-side value for incr or decr",
            ),
            (0x01, Status::TooLarge, b"Too large."),
            (0x20, Status::UnknownCommand, b"Unknown command"),
            (0x00, Status::InvalidArguments, b"Invalid arguments"),
        ];
        for &(opcode, status, message) in cases {
            assert_eq!(
                encoded(Response::error(opcode, OPAQUE, status)),
                memcached_response(opcode, status.code(), 0, b"", b"", message)
            );
            let mut out = Vec::new();
            ErrorReply {
                opcode,
                opaque: OPAQUE,
                status,
            }
            .encode(&mut out);
            assert_eq!(out, encoded(Response::error(opcode, OPAQUE, status)));
        }
        let ten = counter_value(10);
        assert_eq!(
            encoded(Response {
                cas: 7,
                value: &ten,
                ..Response::empty(0x05, OPAQUE)
            }),
            memcached_response(0x05, 0, 7, b"", b"", &[0, 0, 0, 0, 0, 0, 0, 10])
        );
        assert_eq!(
            encoded(Response {
                value: b"1.6.18",
                ..Response::empty(0x0b, OPAQUE)
            }),
            memcached_response(0x0b, 0, 0, b"", b"", b"1.6.18")
        );
        assert_eq!(
            encoded(Response {
                key: b"maxconns",
                value: b"1024",
                ..Response::empty(0x10, OPAQUE)
            }),
            memcached_response(0x10, 0, 0, b"", b"maxconns", b"1024")
        );
        assert_eq!(
            encoded(Response::empty(0x10, OPAQUE)),
            memcached_response(0x10, 0, 0, b"", b"", b"")
        );
    }

    #[test]
    fn responses_decode() {
        let flags = flags_extras(7);
        let r = Response {
            opcode: 0x0d,
            status: Status::Success,
            opaque: 1,
            cas: u64::MAX,
            extras: &flags,
            key: b"k",
            value: b"v",
        };
        let mut buf = encoded(r);
        let n = buf.len();
        for cut in 0..n {
            assert_eq!(Response::decode(&buf[..cut]), Ok(None));
        }
        buf.extend_from_slice(b"next");
        assert_eq!(Response::decode(&buf), Ok(Some((r, n))));
        assert_eq!(Response::decode(&[0x80; 24]), Err(BadResponse::Magic(0x80)));
        let mut bad = encoded(Response::empty(0, 0));
        bad[7] = 0x99;
        assert_eq!(Response::decode(&bad), Err(BadResponse::Status(0x99)));
        bad[7] = 0;
        bad[3] = 1;
        assert_eq!(Response::decode(&bad), Err(BadResponse::Lengths));
    }

    #[test]
    fn quiet_forms() {
        assert!(Command::Get {
            key: b"k",
            with_key: false,
            quiet: true
        }
        .is_quiet());
        assert!(Command::Quit { quiet: true }.is_quiet());
        assert!(!Command::Noop.is_quiet());
        assert!(!Command::Touch {
            key: b"k",
            exptime: 0
        }
        .is_quiet());
    }

    // Property tests.

    fn key_strategy() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(0x21u8..=0xff, 1..=30).prop_map(|k| {
            k.into_iter()
                .map(|b| if b == 0x7f { b'x' } else { b })
                .collect()
        })
    }

    /// An owned command, to generate with proptest.
    #[derive(Debug, Clone)]
    enum Owned {
        Get(Vec<u8>, bool, bool),
        Gat(Vec<u8>, u32, bool, bool),
        Touch(Vec<u8>, u32),
        Store(u8, Vec<u8>, u32, u32, Vec<u8>, bool),
        Concat(bool, Vec<u8>, Vec<u8>, bool),
        Delete(Vec<u8>, bool),
        Counter(bool, Vec<u8>, u64, u64, u32, bool),
        Flush(Option<u32>, bool),
        Stat(Vec<u8>),
        Quit(bool),
        Sasl(bool, Vec<u8>, Vec<u8>),
        Simple(u8),
    }

    fn owned_strategy() -> impl Strategy<Value = (Owned, u32, u64)> {
        let value = || proptest::collection::vec(any::<u8>(), 0..64);
        let command = prop_oneof![
            (key_strategy(), any::<bool>(), any::<bool>())
                .prop_map(|(k, w, q)| Owned::Get(k, w, q)),
            (key_strategy(), any::<u32>(), any::<bool>(), any::<bool>())
                .prop_map(|(k, e, w, q)| Owned::Gat(k, e, w, q)),
            (key_strategy(), any::<u32>()).prop_map(|(k, e)| Owned::Touch(k, e)),
            (
                0u8..3,
                key_strategy(),
                any::<u32>(),
                any::<u32>(),
                value(),
                any::<bool>()
            )
                .prop_map(|(m, k, f, e, v, q)| Owned::Store(m, k, f, e, v, q)),
            (any::<bool>(), key_strategy(), value(), any::<bool>())
                .prop_map(|(a, k, v, q)| Owned::Concat(a, k, v, q)),
            (key_strategy(), any::<bool>()).prop_map(|(k, q)| Owned::Delete(k, q)),
            (
                any::<bool>(),
                key_strategy(),
                any::<u64>(),
                any::<u64>(),
                any::<u32>(),
                any::<bool>()
            )
                .prop_map(|(i, k, d, n, e, q)| Owned::Counter(i, k, d, n, e, q)),
            (proptest::option::of(any::<u32>()), any::<bool>())
                .prop_map(|(d, q)| Owned::Flush(d, q)),
            proptest::collection::vec(any::<u8>(), 0..12).prop_map(Owned::Stat),
            any::<bool>().prop_map(Owned::Quit),
            (any::<bool>(), key_strategy(), value()).prop_map(|(s, m, d)| Owned::Sasl(s, m, d)),
            (0u8..3).prop_map(Owned::Simple),
        ];
        (command, any::<u32>(), any::<u64>())
    }

    fn with_command<T>(op: &Owned, f: impl FnOnce(Command<'_>) -> T) -> T {
        f(match op {
            Owned::Get(key, with_key, quiet) => Command::Get {
                key,
                with_key: *with_key,
                quiet: *quiet,
            },
            Owned::Gat(key, exptime, with_key, quiet) => Command::GetAndTouch {
                key,
                exptime: *exptime,
                with_key: *with_key,
                quiet: *quiet,
            },
            Owned::Touch(key, exptime) => Command::Touch {
                key,
                exptime: *exptime,
            },
            Owned::Store(mode, key, flags, exptime, value, quiet) => Command::Store {
                mode: [StoreMode::Set, StoreMode::Add, StoreMode::Replace][usize::from(*mode)],
                key,
                flags: *flags,
                exptime: *exptime,
                value,
                quiet: *quiet,
            },
            Owned::Concat(append, key, value, quiet) => Command::Concat {
                append: *append,
                key,
                value,
                quiet: *quiet,
            },
            Owned::Delete(key, quiet) => Command::Delete { key, quiet: *quiet },
            Owned::Counter(incr, key, delta, initial, exptime, quiet) => Command::Counter {
                incr: *incr,
                key,
                delta: *delta,
                initial: *initial,
                exptime: *exptime,
                quiet: *quiet,
            },
            Owned::Flush(delay, quiet) => Command::Flush {
                delay: *delay,
                quiet: *quiet,
            },
            Owned::Stat(group) => Command::Stat { group },
            Owned::Quit(quiet) => Command::Quit { quiet: *quiet },
            Owned::Sasl(step, mechanism, data) => Command::SaslAuth {
                step: *step,
                mechanism,
                data,
            },
            Owned::Simple(0) => Command::Noop,
            Owned::Simple(1) => Command::Version,
            Owned::Simple(_) => Command::SaslListMechs,
        })
    }

    fn encode_owned((op, opaque, cas): &(Owned, u32, u64), out: &mut Vec<u8>) {
        with_command(op, |command| {
            Request {
                command,
                opaque: *opaque,
                cas: *cas,
            }
            .encode(out)
        })
    }

    fn parse_all(buf: &[u8], limits: &Limits) -> Vec<String> {
        describe_steps(buf, |b| parse(b, limits))
    }

    /// A header with arbitrary fields (magic right most of the time), and
    /// a body of up to `body` bytes: the packets a confused or hostile
    /// client sends.
    fn hostile_packet() -> impl Strategy<Value = Vec<u8>> {
        (
            prop_oneof![9 => Just(REQUEST_MAGIC), 1 => any::<u8>()],
            prop_oneof![
                Just(0x00u8),
                Just(0x01),
                Just(0x05),
                Just(0x0e),
                Just(0x10),
                Just(0x1d),
                Just(0x21),
                any::<u8>()
            ],
            prop_oneof![0u16..40, any::<u16>()],
            prop_oneof![Just(0u8), Just(4), Just(8), Just(20), any::<u8>()],
            prop_oneof![0u32..100, any::<u32>()],
            any::<u64>(),
            proptest::collection::vec(any::<u8>(), 0..100),
        )
            .prop_map(
                |(magic, opcode, key_len, extras_len, body_len, cas, body)| {
                    let mut p = Vec::new();
                    Header {
                        magic,
                        opcode,
                        key_len,
                        extras_len,
                        data_type: 0,
                        status: 0,
                        body_len,
                        opaque: 1,
                        cas,
                    }
                    .encode(&mut p);
                    p.extend_from_slice(&body);
                    p
                },
            )
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
                        with_command(&op.0, |command| {
                            assert_eq!(&request.command, &command);
                            assert_eq!(request.command.opcode().byte(), buf[pos + 1]);
                        });
                        prop_assert_eq!(request.opaque, op.1);
                        prop_assert_eq!(request.cas, op.2);
                        let mut again = Vec::new();
                        request.encode(&mut again);
                        prop_assert_eq!(&again[..], &buf[pos..pos + consumed]);
                        pos += consumed;
                    }
                    other => prop_assert!(false, "{:?} gave {:?}", op, other),
                }
            }
            prop_assert_eq!(pos, buf.len());
        }

        #[test]
        fn responses_round_trip(
            opcode in any::<u8>(),
            status in prop_oneof![Just(Status::Success), Just(Status::KeyNotFound), Just(Status::TooLarge)],
            opaque in any::<u32>(),
            cas in any::<u64>(),
            extras in proptest::collection::vec(any::<u8>(), 0..8),
            key in proptest::collection::vec(any::<u8>(), 0..8),
            value in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let r = Response { opcode, status, opaque, cas, extras: &extras, key: &key, value: &value };
            let buf = encoded(r);
            prop_assert_eq!(Response::decode(&buf), Ok(Some((r, buf.len()))));
        }

        #[test]
        fn arbitrary_bytes_never_panic(buf in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = parse_all(&buf, &LIMITS);
        }

        #[test]
        fn hostile_packets_never_panic_and_buffer_a_bounded_amount(
            packets in proptest::collection::vec(hostile_packet(), 1..6),
            small in any::<bool>(),
        ) {
            let limits = Limits {
                max_value_bytes: if small { 16 } else { 1 << 20 },
                keys: KeyPolicy::Strict,
            };
            let buf = packets.concat();
            let _ = parse_all(&buf, &limits);
            // With max_request_bytes buffered, the parser always answers:
            // it never waits for more than one bounded request.
            let bound = max_request_bytes(limits.max_value_bytes);
            let mut padded = packets[0].clone();
            padded.resize(padded.len().max(bound), 0);
            prop_assert_ne!(parse(&padded[..bound], &limits), Parsed::Incomplete);
        }

        #[test]
        fn chunked_input_parses_as_whole(
            ops in proptest::collection::vec(owned_strategy(), 1..6),
            hostile in proptest::option::of(hostile_packet()),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
        ) {
            let mut buf = Vec::new();
            for op in &ops {
                encode_owned(op, &mut buf);
            }
            if let Some(h) = hostile {
                buf.extend_from_slice(&h);
            }
            let whole = parse_all(&buf, &LIMITS);
            let mut cut_points: Vec<usize> = cuts.iter().map(|i| i.index(buf.len() + 1)).collect();
            cut_points.push(buf.len());
            cut_points.sort_unstable();
            // Feed the bytes as a connection receives them; a skip may run
            // past what has arrived.
            let mut pos = 0usize;
            let mut seen = Vec::new();
            let mut closed = false;
            for fed in cut_points {
                while !closed && pos < fed {
                    match parse(&buf[pos..fed], &LIMITS) {
                        Parsed::Request { request, consumed } => {
                            seen.push(format!("{request:?}"));
                            pos += consumed;
                        }
                        Parsed::Incomplete => break,
                        Parsed::Reject(r) => {
                            seen.push(format!("{r:?}"));
                            match r.recovery {
                                Recovery::Discard(n) => pos = pos.saturating_add(n as usize),
                                Recovery::Close => closed = true,
                            }
                        }
                    }
                }
            }
            prop_assert_eq!(seen, whole);
        }
    }
}
