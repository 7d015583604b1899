//! The memcached text dialect's handler: requests map to commands, one
//! encoder writes the replies; the key dumps (`stats cachedump`,
//! `lru_crawler metadump`) stream their lines here. Meta command lines
//! (`mg`, `ms`, ...) go to `meta.rs`.

use std::io;

use kvstore_core::item::unix_now;
use kvstore_core::{Expiry, ItemMeta};

use super::{reject_step, Context};
use crate::connection::{Handler, IoCounts, Output, Step};
use crate::exec::{self, Command, Failure, Response, StatsGroup};
use crate::protocol::memcached::{self as mc, StoreMode};
use crate::protocol::{meta, push_u64, Parsed};

/// The memcached text dialect.
pub(crate) struct McHandler {
    ctx: Context,
    /// Whether commands are served: from the start without an auth file,
    /// else after memcached's ASCII authentication ([`McHandler::ascii_auth`]).
    authenticated: bool,
}

impl McHandler {
    /// A new connection's handler.
    pub(crate) fn new(ctx: Context) -> McHandler {
        McHandler {
            authenticated: !ctx.auth_required(),
            ctx,
        }
    }

    /// memcached's ASCII authentication ([`mc::parse_ascii_auth`]): before
    /// it the only command is a `set` whose data is `<user> <password>`,
    /// answered `STORED` or `CLIENT_ERROR authentication failure`; every
    /// other line, meta commands included, is refused.
    fn ascii_auth(&mut self, buf: &[u8], out: &mut Vec<u8>) -> Step {
        match mc::parse_ascii_auth(buf) {
            mc::AuthStep::Incomplete => Step::Incomplete,
            mc::AuthStep::Close => Step::Close,
            mc::AuthStep::Refuse { reply, consumed } => {
                out.extend_from_slice(reply);
                Step::Consumed(consumed)
            }
            mc::AuthStep::Credentials {
                user,
                password,
                consumed,
            } => {
                if self.ctx.authenticate("memcached text", user, password) {
                    self.authenticated = true;
                    out.extend_from_slice(mc::STORED);
                } else {
                    out.extend_from_slice(mc::AUTH_FAILURE);
                }
                Step::Consumed(consumed)
            }
        }
    }
}

/// What a text request needs to answer, beyond the response itself.
#[derive(Clone, Copy)]
struct TextReply<'a> {
    /// The key, echoed in `VALUE` lines.
    key: &'a [u8],
    /// Whether `VALUE` lines carry the cas (`gets`, `gats`).
    with_cas: bool,
    /// Send nothing but errors memcached does not silence.
    noreply: bool,
}

/// The memcached text dialect's encoder.
fn encode_text(r: TextReply<'_>, resp: Response<'_>, out: &mut Vec<u8>) {
    let line: &[u8] = match resp {
        Response::Hit(item) | Response::MetaHit { item, .. } => {
            let cas = r.with_cas.then_some(item.cas);
            mc::encode_value(out, r.key, item.flags, item.value, cas);
            return;
        }
        Response::MetaStored { .. } => mc::STORED,
        Response::Miss => return,
        Response::Stored { .. } => mc::STORED,
        Response::NotStored => mc::NOT_STORED,
        Response::Exists => mc::EXISTS,
        Response::NotFound => mc::NOT_FOUND,
        Response::Deleted => mc::DELETED,
        Response::Touched => mc::TOUCHED,
        Response::Ok => mc::OK,
        Response::Counter { value, .. } | Response::MetaCounter { value, .. } => {
            if !r.noreply {
                push_u64(out, value);
                out.extend_from_slice(b"\r\n");
            }
            return;
        }
        Response::Version(v) => {
            out.extend_from_slice(b"VERSION ");
            out.extend_from_slice(v.as_bytes());
            out.extend_from_slice(b"\r\n");
            return;
        }
        Response::Stats(lines) => {
            for (name, value) in &lines {
                mc::encode_stat(out, name, value);
            }
            out.extend_from_slice(mc::END);
            return;
        }
        Response::DetailDump(lines) => {
            for l in &lines {
                out.extend_from_slice(l.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(mc::END);
            return;
        }
        Response::Reset => mc::RESET,
        Response::MemlimitTooSmall => mc::MEMLIMIT_TOO_SMALL,
        Response::CacheDisabled => {
            // Sent even with `noreply`: the setting did not change.
            mc::encode_server_error(out, "the value cache is disabled (--cache-bytes 0)");
            return;
        }
        Response::ShutdownRefused => mc::SHUTDOWN_NOT_ENABLED,
        Response::ShuttingDown => return,
        // memcached silences these with `noreply` too.
        Response::NonNumeric => mc::NON_NUMERIC,
        Response::Failed(Failure::TooLarge) => mc::TOO_LARGE,
        Response::Failed(Failure::BadKey) => mc::BAD_FORMAT,
        Response::Failed(Failure::Store(e)) => {
            // A server error is sent even with `noreply`: the client must
            // learn that its write was not kept.
            mc::encode_server_error(out, &e.to_string());
            return;
        }
    };
    if !r.noreply {
        out.extend_from_slice(line);
    }
}

/// Encodes a response that echoes no key and is never silenced, as the
/// text dialect does: the meta encoder's answer to error responses and to
/// responses no meta command produces.
pub(super) fn encode_plain(resp: Response<'_>, out: &mut Vec<u8>) {
    let r = TextReply {
        key: b"",
        with_cas: false,
        noreply: false,
    };
    encode_text(r, resp, out);
}

impl McHandler {
    /// Runs one command and encodes its response.
    fn run(&self, cmd: &Command<'_>, r: TextReply<'_>, out: &mut Vec<u8>) {
        self.ctx
            .exec
            .execute(cmd, &mut |resp| encode_text(r, resp, out));
    }

    /// `get`/`gets`/`gat`/`gats`: one [`Command::Get`] per key, then `END`.
    fn retrieve(
        &self,
        keys: crate::protocol::Keys<'_>,
        with_cas: bool,
        touch: Option<Expiry>,
        out: &mut Output<'_>,
    ) -> io::Result<()> {
        for key in keys {
            let r = TextReply {
                key,
                with_cas,
                noreply: false,
            };
            let mut failed = false;
            self.ctx
                .exec
                .execute(&Command::Get { key, touch }, &mut |resp| {
                    failed = matches!(resp, Response::Failed(_));
                    encode_text(r, resp, out.buf());
                });
            if failed {
                // A SERVER_ERROR ends the reply, without END.
                return Ok(());
            }
            out.flush_if_large()?;
        }
        out.buf().extend_from_slice(mc::END);
        Ok(())
    }
}

/// Appends `key` as memcached's metadump prints it: URI-encoded, every
/// byte but the unreserved ones (`A-Z a-z 0-9 - . _ ~`) as `%XX`.
fn push_uri_encoded(out: &mut Vec<u8>, key: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in key {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        }
    }
}

/// Memory an item is reported to take in dumps: key, value and the
/// record header on disk.
fn item_size(key: &[u8], value_len: usize) -> u64 {
    (key.len() + value_len + RECORD_OVERHEAD) as u64
}

/// Bytes of a record on disk besides its key and value.
const RECORD_OVERHEAD: usize = 48;

impl McHandler {
    /// `stats cachedump <class> <limit>`: `ITEM <key> [<bytes> b; <exp> s]`
    /// lines, streamed in bounded chunks. Class 1 holds every item.
    fn cachedump(&self, class: u64, limit: u64, out: &mut Output<'_>) -> io::Result<()> {
        if class == 0 || class > mc::MAX_ITEM_CLASS {
            out.buf().extend_from_slice(mc::ILLEGAL_SLAB_ID);
            return Ok(());
        }
        if class == 1 {
            let mut listed = 0u64;
            let walked = self.ctx.exec.for_each_item(|key, item| {
                if limit > 0 && listed >= limit {
                    return Err(None);
                }
                listed += 1;
                let buf = out.buf();
                buf.extend_from_slice(b"ITEM ");
                buf.extend_from_slice(key);
                buf.extend_from_slice(b" [");
                push_u64(buf, item.value.len() as u64);
                buf.extend_from_slice(b" b; ");
                push_u64(
                    buf,
                    match item.expiry {
                        Expiry::Never => 0,
                        Expiry::At(t) => t,
                    },
                );
                buf.extend_from_slice(b" s]\r\n");
                out.flush_if_large().map_err(Some)
            });
            if !self.dump_ended(walked, out)? {
                return Ok(());
            }
        }
        out.buf().extend_from_slice(mc::END);
        Ok(())
    }

    /// `lru_crawler metadump all`: one `key=<uri-encoded> exp=<unix time or
    /// -1> la=<unix time> cas=<n> fetch=no cls=1 size=<bytes>` line per
    /// item (ended by `\n` alone, as memcached does), then `END`. kvstore
    /// tracks neither access times nor fetches: `la` is the time of the
    /// dump and `fetch` is `no`.
    fn metadump(&self, out: &mut Output<'_>) -> io::Result<()> {
        let now = unix_now();
        let walked = self.ctx.exec.for_each_item(|key, item| {
            let buf = out.buf();
            buf.extend_from_slice(b"key=");
            push_uri_encoded(buf, key);
            buf.extend_from_slice(b" exp=");
            match item.expiry {
                Expiry::Never => buf.extend_from_slice(b"-1"),
                Expiry::At(t) => push_u64(buf, t),
            }
            buf.extend_from_slice(b" la=");
            push_u64(buf, now);
            buf.extend_from_slice(b" cas=");
            push_u64(buf, item.cas);
            buf.extend_from_slice(b" fetch=no cls=1 size=");
            push_u64(buf, item_size(key, item.value.len()));
            buf.push(b'\n');
            out.flush_if_large().map_err(Some)
        });
        if self.dump_ended(walked, out)? {
            out.buf().extend_from_slice(mc::END);
        }
        Ok(())
    }

    /// How a dump's walk ended: `true` when the reply goes on with `END`
    /// (done, or stopped at its limit); `false` after a store failure,
    /// answered `SERVER_ERROR` instead; a socket error is returned.
    fn dump_ended(
        &self,
        walked: Result<(), exec::ScanError<Option<io::Error>>>,
        out: &mut Output<'_>,
    ) -> io::Result<bool> {
        match walked {
            Ok(()) | Err(exec::ScanError::Visit(None)) => Ok(true),
            Err(exec::ScanError::Visit(Some(e))) => Err(e),
            Err(exec::ScanError::Store(e)) => {
                self.ctx.exec.stats().store_failed("dump", b"", &e);
                mc::encode_server_error(out.buf(), &e.to_string());
                Ok(false)
            }
        }
    }
}

impl Handler for McHandler {
    fn step(&mut self, buf: &[u8], out: &mut Output<'_>) -> io::Result<Step> {
        if !self.authenticated {
            return Ok(self.ascii_auth(buf, out.buf()));
        }
        // Meta commands arrive mixed with text commands (see
        // `meta::is_meta` for how a line is told apart).
        if meta::is_meta(buf) {
            return super::meta::step(&self.ctx, buf, out);
        }
        let limits = mc::Limits {
            max_value_bytes: self.ctx.max_value_bytes,
            keys: self.ctx.keys,
        };
        let (request, consumed) = match mc::parse(buf, &limits) {
            Parsed::Request { request, consumed } => (request, consumed),
            Parsed::Incomplete => return Ok(Step::Incomplete),
            Parsed::Reject(r) => return Ok(reject_step(r, out.buf())),
        };
        let plain = |key, noreply| TextReply {
            key,
            with_cas: false,
            noreply,
        };
        match request {
            mc::Request::Store {
                mode,
                key,
                flags,
                exptime,
                value,
                noreply,
            } => {
                let meta = ItemMeta {
                    flags,
                    expiry: mc::expiry_from_exptime(exptime, unix_now()),
                };
                let (mode, cas) = match mode {
                    StoreMode::Set => (exec::StoreMode::Set, None),
                    StoreMode::Add => (exec::StoreMode::Add, None),
                    StoreMode::Replace => (exec::StoreMode::Replace, None),
                    StoreMode::Append => (exec::StoreMode::Append, None),
                    StoreMode::Prepend => (exec::StoreMode::Prepend, None),
                    StoreMode::Cas(cas) => (exec::StoreMode::Set, Some(cas)),
                };
                let cmd = Command::Store {
                    mode,
                    key,
                    value,
                    meta,
                    cas,
                };
                self.run(&cmd, plain(key, noreply), out.buf());
            }
            mc::Request::TooLarge {
                mode,
                key,
                data_bytes,
                noreply,
            } => {
                // memcached removes the old value on a refused `set` (and
                // only then), so a client never reads the value it meant
                // to replace.
                let cmd = Command::StoreTooLarge {
                    key,
                    drop_old: mode == StoreMode::Set,
                };
                self.run(&cmd, plain(key, noreply), out.buf());
                return Ok(Step::Discard((consumed as u64).saturating_add(data_bytes)));
            }
            mc::Request::Get { with_cas, keys } => {
                self.retrieve(keys, with_cas, None, out)?;
            }
            mc::Request::GetAndTouch {
                with_cas,
                exptime,
                keys,
            } => {
                let expiry = mc::expiry_from_exptime(exptime, unix_now());
                self.retrieve(keys, with_cas, Some(expiry), out)?;
            }
            mc::Request::Delete { key, noreply } => {
                let cmd = Command::Delete { key, cas: None };
                self.run(&cmd, plain(key, noreply), out.buf());
            }
            mc::Request::Counter {
                incr,
                key,
                delta,
                noreply,
            } => {
                let cmd = Command::Counter {
                    key,
                    incr,
                    delta,
                    initial: None,
                    cas: None,
                };
                self.run(&cmd, plain(key, noreply), out.buf());
            }
            mc::Request::Touch {
                key,
                exptime,
                noreply,
            } => {
                let expiry = mc::expiry_from_exptime(exptime, unix_now());
                let cmd = Command::Touch { key, expiry };
                self.run(&cmd, plain(key, noreply), out.buf());
            }
            mc::Request::FlushAll { delay, noreply } => {
                let cmd = Command::Flush {
                    delay_secs: mc::flush_delay(delay, unix_now()),
                };
                self.run(&cmd, plain(b"", noreply), out.buf());
            }
            mc::Request::Stats(group) => {
                let group = match group {
                    mc::StatsRequest::General => StatsGroup::General,
                    mc::StatsRequest::Settings => StatsGroup::Settings,
                    mc::StatsRequest::Items => StatsGroup::Items,
                    mc::StatsRequest::Slabs => StatsGroup::Slabs,
                    mc::StatsRequest::Sizes => StatsGroup::Sizes,
                    mc::StatsRequest::Conns => StatsGroup::Conns,
                    mc::StatsRequest::Reset => StatsGroup::Reset,
                    mc::StatsRequest::DetailOn => StatsGroup::DetailOn,
                    mc::StatsRequest::DetailOff => StatsGroup::DetailOff,
                    mc::StatsRequest::DetailDump => StatsGroup::DetailDump,
                    mc::StatsRequest::Cachedump { class, limit } => {
                        self.cachedump(class, limit, out)?;
                        return Ok(Step::Consumed(consumed));
                    }
                };
                self.run(&Command::Stats(group), plain(b"", false), out.buf());
            }
            mc::Request::Metadump { includes_items } => {
                if includes_items {
                    self.metadump(out)?;
                } else {
                    out.buf().extend_from_slice(mc::END);
                }
            }
            mc::Request::CacheMemlimit { megabytes, noreply } => {
                let cmd = Command::CacheMemlimit { megabytes };
                self.run(&cmd, plain(b"", noreply), out.buf());
            }
            mc::Request::Shutdown => {
                let mut stopping = false;
                self.ctx.exec.execute(&Command::Shutdown, &mut |resp| {
                    stopping = matches!(resp, Response::ShuttingDown);
                    encode_text(plain(b"", false), resp, out.buf());
                });
                if stopping {
                    return Ok(Step::Close);
                }
            }
            mc::Request::Version => self.run(&Command::Version, plain(b"", false), out.buf()),
            mc::Request::Verbosity { level, noreply } => self.run(
                &Command::Verbosity { level },
                plain(b"", noreply),
                out.buf(),
            ),
            mc::Request::Quit => return Ok(Step::Close),
            mc::Request::RefreshCerts => match &self.ctx.tls {
                // What a memcached without TLS answers: an unknown command.
                None => out.buf().extend_from_slice(mc::ERROR),
                Some(tls) => match tls.reload() {
                    Ok(()) => {
                        log::info!("refresh_certs: TLS certificate and key reloaded");
                        out.buf().extend_from_slice(mc::OK);
                    }
                    Err(e) => {
                        log::error!("refresh_certs: keeping the old TLS files: {e}");
                        mc::encode_server_error(out.buf(), &e.to_string());
                    }
                },
            },
        }
        Ok(Step::Consumed(consumed))
    }

    fn batch_done(&mut self, io: &IoCounts) {
        self.ctx.batch_done(io);
    }
}
