//! The meta commands' handler (`mg`, `ms`, `md`, `ma`, `mn`, `me`). They
//! share the text dialect's connections: `text.rs` hands every line that
//! `protocol::meta::is_meta` claims to [`step`], which maps the request to
//! a `Command::Meta*` (or a plain command) and encodes the response with
//! [`encode_meta`].

use std::io;

use kvstore_core::item::unix_now;
use kvstore_core::{Expiry, ItemMeta};

use super::text::encode_plain;
use super::{reject_step, Context};
use crate::connection::{Output, Step};
use crate::exec::{self, Command, Failure, Response};
use crate::protocol::memcached as mc;
use crate::protocol::{meta, push_u64, Parsed};

/// Seconds left before `expiry` at Unix time `now`; `None` for never.
fn remaining(expiry: Expiry, now: u64) -> Option<u64> {
    match expiry {
        Expiry::Never => None,
        Expiry::At(at) => Some(at.saturating_sub(now)),
    }
}

/// The meta commands' encoder: maps a response to the reply `request`
/// asks for (`protocol::meta` writes its bytes).
/// `now` is the Unix time the request's own times were converted at, so a
/// `T30 t` reports `t30`.
fn encode_meta(request: &meta::Request<'_>, resp: Response<'_>, now: u64, out: &mut Vec<u8>) {
    let flags = match request {
        meta::Request::Get { flags, .. }
        | meta::Request::Set { flags, .. }
        | meta::Request::SetTooLarge { flags, .. }
        | meta::Request::Delete { flags, .. }
        | meta::Request::Arithmetic { flags, .. } => *flags,
        meta::Request::NoOp => return meta::encode_noop(out),
        meta::Request::Debug { key } => {
            let info = match resp {
                Response::MetaHit {
                    item,
                    fetched,
                    idle_secs,
                    ..
                } => Some(meta::DebugInfo {
                    ttl: remaining(item.expiry, now),
                    last_access: idle_secs,
                    cas: item.cas,
                    fetched,
                    // As stored: the record's header, key and value.
                    size: (RECORD_HEADER_BYTES + key.bytes().len() + item.value.len()) as u64,
                }),
                Response::Failed(f) => return encode_failure(f, out),
                _ => None,
            };
            return meta::encode_debug(out, key, info.as_ref());
        }
    };
    let info = |cas, size, ttl| meta::ItemInfo {
        cas,
        size,
        ttl,
        ..meta::ItemInfo::default()
    };
    let mut digits = Vec::new();
    let reply = match resp {
        Response::MetaHit {
            item,
            fetched,
            idle_secs,
            lease,
        } => {
            // `C` with `v`: the value only if the cas changed.
            let send_value = flags.value && flags.compare_cas != Some(item.cas);
            meta::Reply {
                code: if send_value {
                    meta::Code::Va
                } else {
                    meta::Code::Hd
                },
                item: Some(meta::ItemInfo {
                    cas: item.cas,
                    client_flags: item.flags,
                    size: item.value.len(),
                    ttl: remaining(item.expiry, now),
                    fetched,
                    last_access: idle_secs,
                }),
                value: if send_value { item.value } else { b"" },
                lease: meta::Lease {
                    won: lease.won,
                    stale: lease.stale,
                    already_won: lease.already_won,
                },
            }
        }
        Response::Hit(item) => meta::Reply {
            item: Some(info(
                item.cas,
                item.value.len(),
                remaining(item.expiry, now),
            )),
            ..meta::Reply::code(meta::Code::Hd)
        },
        Response::Miss => meta::Reply::code(meta::Code::En),
        Response::MetaStored { cas, size } => meta::Reply {
            item: Some(info(cas, size, None)),
            ..meta::Reply::code(meta::Code::Hd)
        },
        Response::Stored { cas } => meta::Reply {
            item: Some(info(cas, 0, None)),
            ..meta::Reply::code(meta::Code::Hd)
        },
        Response::MetaCounter { value, cas, expiry } => {
            push_u64(&mut digits, value);
            meta::Reply {
                code: if flags.value {
                    meta::Code::Va
                } else {
                    meta::Code::Hd
                },
                item: Some(info(cas, digits.len(), remaining(expiry, now))),
                value: &digits,
                lease: meta::Lease::default(),
            }
        }
        Response::Counter { value, cas } => {
            push_u64(&mut digits, value);
            meta::Reply {
                item: Some(info(cas, digits.len(), None)),
                value: &digits,
                ..meta::Reply::code(meta::Code::Hd)
            }
        }
        Response::NotStored => meta::Reply::code(meta::Code::Ns),
        Response::Exists => meta::Reply::code(meta::Code::Ex),
        Response::NotFound => meta::Reply::code(meta::Code::Nf),
        Response::Deleted | Response::Touched | Response::Ok => meta::Reply::code(meta::Code::Hd),
        Response::NonNumeric => return out.extend_from_slice(mc::NON_NUMERIC),
        Response::Failed(f) => return encode_failure(f, out),
        // Not answers to meta commands; encoded as the text dialect would.
        Response::Version(_)
        | Response::Stats(_)
        | Response::Reset
        | Response::DetailDump(_)
        | Response::MemlimitTooSmall
        | Response::CacheDisabled
        | Response::ShutdownRefused
        | Response::ShuttingDown => return encode_plain(resp, out),
    };
    meta::encode(out, request, &reply);
}

/// The memcached error line of a failed command (never silenced).
fn encode_failure(f: Failure<'_>, out: &mut Vec<u8>) {
    encode_plain(Response::Failed(f), out);
}

/// Bytes of a value file's record header (`me` reports the stored size).
const RECORD_HEADER_BYTES: usize = 36;

/// One meta command (`mg`, `ms`, `md`, `ma`, `mn`, `me`) at the start of
/// `buf`: parses it, runs it and encodes the reply.
pub(super) fn step(ctx: &Context, buf: &[u8], out: &mut Output<'_>) -> io::Result<Step> {
    let limits = mc::Limits {
        max_value_bytes: ctx.max_value_bytes,
        keys: ctx.keys,
    };
    let (request, consumed) = match meta::parse(buf, &limits) {
        Parsed::Request { request, consumed } => (request, consumed),
        Parsed::Incomplete => return Ok(Step::Incomplete),
        Parsed::Reject(r) => return Ok(reject_step(r, out.buf())),
    };
    let now = unix_now();
    let exp = |e: i64| mc::expiry_from_exptime(e, now);
    let cmd = match &request {
        meta::Request::NoOp => {
            meta::encode_noop(out.buf());
            return Ok(Step::Consumed(consumed));
        }
        meta::Request::Debug { key } => Command::MetaDebug { key: key.bytes() },
        meta::Request::SetTooLarge {
            key, data_bytes, ..
        } => {
            // memcached removes the key's current value when it
            // refuses an `ms` for size, whatever the mode.
            let cmd = Command::StoreTooLarge {
                key: key.bytes(),
                drop_old: true,
            };
            ctx.exec.execute(&cmd, &mut |resp| {
                encode_meta(&request, resp, now, out.buf())
            });
            return Ok(Step::Discard((consumed as u64).saturating_add(*data_bytes)));
        }
        meta::Request::Get { key, flags } => Command::MetaGet {
            key: key.bytes(),
            touch: flags.ttl.map(exp),
            vivify: flags.vivify.map(exp),
            recache: flags.recache.map(exp),
            bump: !flags.no_bump,
        },
        meta::Request::Set {
            key,
            mode,
            value,
            flags,
        } => Command::MetaStore {
            mode: match mode {
                meta::SetMode::Set => exec::StoreMode::Set,
                meta::SetMode::Add => exec::StoreMode::Add,
                meta::SetMode::Replace => exec::StoreMode::Replace,
                meta::SetMode::Append => exec::StoreMode::Append,
                meta::SetMode::Prepend => exec::StoreMode::Prepend,
            },
            key: key.bytes(),
            value,
            meta: ItemMeta {
                flags: flags.client_flags.unwrap_or(0),
                expiry: flags.ttl.map(exp).unwrap_or(Expiry::Never),
            },
            cas: flags.compare_cas,
            invalidate: flags.invalidate,
            vivify: flags.vivify.map(exp),
        },
        meta::Request::Delete { key, flags } => Command::MetaDelete {
            key: key.bytes(),
            cas: flags.compare_cas,
            invalidate: flags.invalidate,
            clear_value: flags.remove_value.then(|| flags.client_flags.unwrap_or(0)),
            expiry: flags.ttl.map(exp),
        },
        meta::Request::Arithmetic { key, mode, flags } => Command::MetaArithmetic {
            key: key.bytes(),
            incr: *mode == meta::ArithmeticMode::Increment,
            delta: flags.delta.unwrap_or(1),
            initial: flags.vivify.map(|e| {
                let meta = ItemMeta {
                    flags: 0,
                    expiry: exp(e),
                };
                (flags.initial.unwrap_or(0), meta)
            }),
            cas: flags.compare_cas,
            touch: flags.ttl.map(exp),
        },
    };
    ctx.exec.execute(&cmd, &mut |resp| {
        encode_meta(&request, resp, now, out.buf())
    });
    Ok(Step::Consumed(consumed))
}
