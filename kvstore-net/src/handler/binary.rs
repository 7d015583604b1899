//! The binary dialect's handler: parses one packet
//! ([`protocol::binary`](crate::protocol::binary)), maps it to a
//! [`Command`], and encodes the [`Response`] as memcached 1.6 does: the
//! request's opcode and opaque echoed, the item's cas in the header, the
//! status's message as the body of an error. Quiet opcodes answer errors
//! (and a quiet get its hits) but not successes.

use std::io;

use kvstore_core::item::unix_now;
use kvstore_core::{Expiry, ItemMeta};

use super::Context;
use crate::connection::{Handler, IoCounts, Output, Step};
use crate::exec::{self, Command, Failure, Response, StatsGroup};
use crate::protocol::binary::{
    self as bin, counter_value, flags_extras, Request, Status, NO_AUTO_CREATE,
};
use crate::protocol::memcached::{self as mc, Limits};
use crate::protocol::{Parsed, Recovery};

/// A connection speaking memcached's binary protocol.
pub(crate) struct BinaryHandler {
    ctx: Context,
    /// Whether commands are served: from the start without an auth file,
    /// else after a successful SASL `PLAIN` authentication.
    authenticated: bool,
}

/// The one SASL mechanism offered: `PLAIN` (RFC 4616), which memjs and
/// libmemcached send.
const SASL_PLAIN: &[u8] = b"PLAIN";

/// The user and password of a SASL `PLAIN` message,
/// `[authzid] NUL authcid NUL passwd`; the authorization identity, which
/// kvstore has no use for, must be empty or the user itself.
fn sasl_plain(data: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut parts = data.splitn(3, |&b| b == 0);
    let authzid = parts.next()?;
    let user = parts.next()?;
    let password = parts.next()?;
    (authzid.is_empty() || authzid == user).then_some((user, password))
}

impl BinaryHandler {
    /// A new connection's handler.
    pub(crate) fn new(ctx: Context) -> BinaryHandler {
        BinaryHandler {
            authenticated: !ctx.auth_required(),
            ctx,
        }
    }

    /// SASL as memcached started with `-S` does it: `list mechs`, `auth`
    /// and `version` are served before authentication; any other command
    /// gets `Auth failure.` (status 0x20) and the connection is closed.
    /// `None`: run the command; `Some(close)`: answered here.
    fn sasl(
        &mut self,
        command: &bin::Command<'_>,
        reply: Reply<'_>,
        out: &mut Vec<u8>,
    ) -> Option<bool> {
        match command {
            bin::Command::SaslListMechs => {
                reply.success(out, 0, SASL_PLAIN);
                Some(false)
            }
            bin::Command::SaslAuth {
                step,
                mechanism,
                data,
            } => {
                // PLAIN is one step: a `step` is as wrong as another
                // mechanism.
                let credentials = (!*step && *mechanism == SASL_PLAIN)
                    .then(|| sasl_plain(data))
                    .flatten();
                let ok = match credentials {
                    Some((user, password)) => {
                        self.ctx.authenticate("memcached binary", user, password)
                    }
                    None => {
                        self.ctx.exec.stats().auth_attempt(false);
                        log::warn!(
                            "{}: SASL authentication refused: not a PLAIN start with \
                             user and password",
                            self.ctx.peer
                        );
                        false
                    }
                };
                if ok {
                    self.authenticated = true;
                    reply.success(out, 0, b"Authenticated");
                } else {
                    reply.error(out, Status::AuthError);
                }
                Some(false)
            }
            bin::Command::Version => None,
            _ if self.authenticated => None,
            _ => {
                // A quiet command is answered too: the client must learn
                // why the connection closes.
                bin::Response::error(reply.opcode, reply.opaque, Status::AuthError).encode(out);
                Some(true)
            }
        }
    }
}

/// What a request needs to answer, beyond the response itself.
#[derive(Clone, Copy)]
struct Reply<'a> {
    /// The request's opcode byte, echoed.
    opcode: u8,
    /// The request's opaque, echoed.
    opaque: u32,
    /// The key, for `getk`/`gatk` (empty otherwise).
    key: &'a [u8],
    /// Whether a hit carries the value (not for `touch`).
    with_value: bool,
    /// Answer errors only (a quiet get still answers its hits).
    quiet: bool,
    /// What `NotStored` means for this command.
    not_stored: Status,
}

impl<'a> Reply<'a> {
    fn new(opcode: u8, opaque: u32) -> Reply<'a> {
        Reply {
            opcode,
            opaque,
            key: b"",
            with_value: true,
            quiet: false,
            not_stored: Status::NotStored,
        }
    }

    fn success(&self, out: &mut Vec<u8>, cas: u64, value: &[u8]) {
        if !self.quiet {
            bin::Response {
                cas,
                value,
                ..bin::Response::empty(self.opcode, self.opaque)
            }
            .encode(out);
        }
    }

    fn error(&self, out: &mut Vec<u8>, status: Status) {
        bin::Response::error(self.opcode, self.opaque, status).encode(out);
    }
}

/// The binary dialect's encoder.
fn encode(r: Reply<'_>, resp: Response<'_>, out: &mut Vec<u8>) {
    match resp {
        Response::Hit(item) => {
            let flags = flags_extras(item.flags);
            bin::Response {
                opcode: r.opcode,
                status: Status::Success,
                opaque: r.opaque,
                cas: item.cas,
                extras: &flags,
                key: r.key,
                value: if r.with_value { item.value } else { b"" },
            }
            .encode(out);
        }
        Response::Miss if r.quiet => {}
        // A getk miss carries the key instead of a message.
        Response::Miss if !r.key.is_empty() => bin::Response {
            status: Status::KeyNotFound,
            key: r.key,
            ..bin::Response::empty(r.opcode, r.opaque)
        }
        .encode(out),
        Response::Miss | Response::NotFound => r.error(out, Status::KeyNotFound),
        Response::Stored { cas } => r.success(out, cas, b""),
        Response::NotStored => r.error(out, r.not_stored),
        Response::Exists => r.error(out, Status::KeyExists),
        // `stat reset` and `stat detail on|off` answer the stat terminator,
        // which is this same empty response.
        Response::Deleted | Response::Touched | Response::Ok | Response::Reset => {
            r.success(out, 0, b"")
        }
        Response::Counter { value, cas } => r.success(out, cas, &counter_value(value)),
        Response::NonNumeric => r.error(out, Status::DeltaBadValue),
        Response::Version(v) => r.success(out, 0, v.as_bytes()),
        Response::Stats(fields) => {
            for (name, value) in &fields {
                bin::Response {
                    key: name.as_bytes(),
                    value: value.as_bytes(),
                    ..bin::Response::empty(r.opcode, r.opaque)
                }
                .encode(out);
            }
            bin::Response::empty(r.opcode, r.opaque).encode(out);
        }
        // memcached sends the whole dump as one statistic, `detailed`.
        Response::DetailDump(lines) => {
            let mut dump = Vec::new();
            for l in &lines {
                dump.extend_from_slice(l.as_bytes());
                dump.extend_from_slice(b"\r\n");
            }
            dump.extend_from_slice(mc::END);
            bin::Response {
                key: b"detailed",
                value: &dump,
                ..bin::Response::empty(r.opcode, r.opaque)
            }
            .encode(out);
            bin::Response::empty(r.opcode, r.opaque).encode(out);
        }
        // Answers to text-only commands (cache_memlimit, shutdown), which
        // no binary opcode maps to.
        Response::MemlimitTooSmall
        | Response::CacheDisabled
        | Response::ShutdownRefused
        | Response::ShuttingDown => r.error(out, Status::UnknownCommand),
        // Answers to meta commands, which no binary opcode maps to.
        Response::MetaHit { .. } | Response::MetaStored { .. } | Response::MetaCounter { .. } => {
            r.error(out, Status::UnknownCommand)
        }
        Response::Failed(Failure::TooLarge) => r.error(out, Status::TooLarge),
        Response::Failed(Failure::BadKey) => r.error(out, Status::InvalidArguments),
        // memcached's answer to a write it could not keep; the body gives
        // the reason.
        Response::Failed(Failure::Store(e)) => bin::Response {
            status: Status::OutOfMemory,
            value: e.to_string().as_bytes(),
            ..bin::Response::empty(r.opcode, r.opaque)
        }
        .encode(out),
    }
}

/// The statistics group a stat key names, matched as memcached's
/// `process_bin_stat` does (`reset`, `settings` and `detail` by prefix).
fn stats_group(group: &[u8]) -> Option<StatsGroup> {
    Some(match group {
        b"" => StatsGroup::General,
        b"items" => StatsGroup::Items,
        b"slabs" => StatsGroup::Slabs,
        b"sizes" => StatsGroup::Sizes,
        b"conns" => StatsGroup::Conns,
        _ if group.starts_with(b"reset") => StatsGroup::Reset,
        _ if group.starts_with(b"settings") => StatsGroup::Settings,
        _ if group.starts_with(b"detail dump") => StatsGroup::DetailDump,
        _ if group.starts_with(b"detail on") => StatsGroup::DetailOn,
        _ if group.starts_with(b"detail off") => StatsGroup::DetailOff,
        _ => return None,
    })
}

/// An exptime of the binary protocol as an expiry (the text protocol's
/// rules; binary exptimes are unsigned, so never "already expired").
fn expiry(exptime: u32) -> Expiry {
    mc::expiry_from_exptime(i64::from(exptime), unix_now())
}

impl BinaryHandler {
    fn run(&self, cmd: &Command<'_>, r: Reply<'_>, out: &mut Vec<u8>) {
        self.ctx.exec.execute(cmd, &mut |resp| encode(r, resp, out));
    }

    /// A refused packet: its error reply, after the executor has counted
    /// (and for a set, applied) a refusal for size.
    fn reject(&self, r: bin::Reject<'_>, out: &mut Vec<u8>) -> Step {
        match (r.too_large, r.reply) {
            (Some(t), Some(e)) => {
                let cmd = Command::StoreTooLarge {
                    key: t.key,
                    drop_old: t.drop_old,
                };
                self.run(&cmd, Reply::new(e.opcode, e.opaque), out);
            }
            (_, Some(e)) => e.encode(out),
            (_, None) => {}
        }
        match r.recovery {
            Recovery::Discard(n) => Step::Discard(n),
            Recovery::Close => Step::Close,
        }
    }
}

impl Handler for BinaryHandler {
    fn step(&mut self, buf: &[u8], out: &mut Output<'_>) -> io::Result<Step> {
        let limits = Limits {
            max_value_bytes: self.ctx.max_value_bytes,
            keys: self.ctx.keys,
        };
        let (
            Request {
                command,
                opaque,
                cas,
            },
            consumed,
        ) = match bin::parse(buf, &limits) {
            Parsed::Request { request, consumed } => (request, consumed),
            Parsed::Incomplete => return Ok(Step::Incomplete),
            // Before authentication a refused packet changes nothing (a
            // too-large set keeps the old value) and closes, as any other
            // command does then.
            Parsed::Reject(r) if !self.authenticated => {
                if let Some(e) = r.reply {
                    bin::Response::error(e.opcode, e.opaque, Status::AuthError).encode(out.buf());
                }
                return Ok(Step::Close);
            }
            Parsed::Reject(r) => return Ok(self.reject(r, out.buf())),
        };
        let reply = Reply {
            quiet: command.is_quiet(),
            ..Reply::new(command.opcode().byte(), opaque)
        };
        if self.ctx.auth_required() {
            if let Some(close) = self.sasl(&command, reply, out.buf()) {
                return Ok(if close {
                    Step::Close
                } else {
                    Step::Consumed(consumed)
                });
            }
        }
        // A request cas of 0 means "no cas".
        let cas = (cas != 0).then_some(cas);
        match command {
            bin::Command::Get { key, with_key, .. } => {
                let reply = Reply {
                    key: if with_key { key } else { b"" },
                    ..reply
                };
                self.run(&Command::Get { key, touch: None }, reply, out.buf());
            }
            bin::Command::GetAndTouch {
                key,
                exptime,
                with_key,
                ..
            } => {
                let reply = Reply {
                    key: if with_key { key } else { b"" },
                    ..reply
                };
                let cmd = Command::Get {
                    key,
                    touch: Some(expiry(exptime)),
                };
                self.run(&cmd, reply, out.buf());
            }
            // memcached answers a touch like a gat without the value: the
            // flags and the cas of the item.
            bin::Command::Touch { key, exptime } => {
                let reply = Reply {
                    with_value: false,
                    ..reply
                };
                let cmd = Command::Get {
                    key,
                    touch: Some(expiry(exptime)),
                };
                self.run(&cmd, reply, out.buf());
            }
            bin::Command::Store {
                mode,
                key,
                flags,
                exptime,
                value,
                ..
            } => {
                let (mode, not_stored) = match mode {
                    bin::StoreMode::Set => (exec::StoreMode::Set, Status::NotStored),
                    // An add with a cas is a compare-and-swap in memcached.
                    bin::StoreMode::Add if cas.is_some() => {
                        (exec::StoreMode::Set, Status::NotStored)
                    }
                    bin::StoreMode::Add => (exec::StoreMode::Add, Status::KeyExists),
                    bin::StoreMode::Replace => (exec::StoreMode::Replace, Status::KeyNotFound),
                };
                let cmd = Command::Store {
                    mode,
                    key,
                    value,
                    meta: ItemMeta {
                        flags,
                        expiry: expiry(exptime),
                    },
                    cas,
                };
                let reply = Reply {
                    not_stored,
                    ..reply
                };
                self.run(&cmd, reply, out.buf());
            }
            bin::Command::Concat {
                append, key, value, ..
            } => {
                let cmd = Command::Store {
                    mode: if append {
                        exec::StoreMode::Append
                    } else {
                        exec::StoreMode::Prepend
                    },
                    key,
                    value,
                    meta: ItemMeta::default(),
                    cas,
                };
                self.run(&cmd, reply, out.buf());
            }
            bin::Command::Delete { key, .. } => {
                self.run(&Command::Delete { key, cas }, reply, out.buf());
            }
            bin::Command::Counter {
                incr,
                key,
                delta,
                initial,
                exptime,
                ..
            } => {
                let initial = (exptime != NO_AUTO_CREATE).then(|| {
                    let meta = ItemMeta {
                        flags: 0,
                        expiry: expiry(exptime),
                    };
                    (initial, meta)
                });
                let cmd = Command::Counter {
                    key,
                    incr,
                    delta,
                    initial,
                    cas,
                };
                self.run(&cmd, reply, out.buf());
            }
            bin::Command::Flush { delay, .. } => {
                let delay = i64::from(delay.unwrap_or(0));
                let cmd = Command::Flush {
                    delay_secs: mc::flush_delay(delay, unix_now()),
                };
                self.run(&cmd, reply, out.buf());
            }
            bin::Command::Noop => reply.success(out.buf(), 0, b""),
            bin::Command::Version => self.run(&Command::Version, reply, out.buf()),
            bin::Command::Stat { group } => match stats_group(group) {
                Some(group) => self.run(&Command::Stats(group), reply, out.buf()),
                // memcached's answer to a group it does not have.
                None => reply.error(out.buf(), Status::KeyNotFound),
            },
            bin::Command::Quit { .. } => {
                reply.success(out.buf(), 0, b"");
                return Ok(Step::Close);
            }
            // What memcached answers when it was built or started without
            // SASL.
            bin::Command::SaslListMechs | bin::Command::SaslAuth { .. } => {
                reply.error(out.buf(), Status::UnknownCommand)
            }
        }
        out.flush_if_large()?;
        Ok(Step::Consumed(consumed))
    }

    fn batch_done(&mut self, io: &IoCounts) {
        self.ctx.batch_done(io);
    }
}
