//! The seed dialect's handler: each request maps to one command (a `get`
//! of several keys to one per key), and one encoder writes the replies.

use std::io;

use kvstore_core::ItemMeta;

use super::{reject_step, Context};
use crate::connection::{Handler, IoCounts, Output, Step};
use crate::exec::{self, Command, Response};
use crate::protocol::{seed, Parsed};

/// The seed dialect.
pub(crate) struct SeedHandler {
    ctx: Context,
    /// Whether requests are served: from the start without an auth file,
    /// else after a successful `auth`.
    authenticated: bool,
}

impl SeedHandler {
    /// A new connection's handler.
    pub(crate) fn new(ctx: Context) -> SeedHandler {
        SeedHandler {
            authenticated: !ctx.auth_required(),
            ctx,
        }
    }
}

/// The seed dialect's encoder: its replies have no error lines but
/// `NOT-STORED`, which also ends a failed read.
fn encode_seed(key: &[u8], resp: Response<'_>, out: &mut Vec<u8>) {
    match resp {
        Response::Hit(item) => seed::encode_value(out, key, item.value),
        // A missing key reads as an empty value.
        Response::Miss => seed::encode_value(out, key, b""),
        Response::Stored { .. } => out.extend_from_slice(seed::STORED),
        Response::Deleted | Response::Ok => out.extend_from_slice(seed::DELETED),
        Response::NotFound => out.extend_from_slice(seed::NOT_FOUND),
        _ => out.extend_from_slice(seed::NOT_STORED),
    }
}

impl Handler for SeedHandler {
    fn step(&mut self, buf: &[u8], out: &mut Output<'_>) -> io::Result<Step> {
        let limits = seed::Limits {
            max_value_bytes: self.ctx.max_value_bytes,
            keys: self.ctx.keys,
        };
        let (request, consumed) = match seed::parse(buf, &limits) {
            Parsed::Request { request, consumed } => (request, consumed),
            Parsed::Incomplete => return Ok(Step::Incomplete),
            // Before `auth`, a rejected request is answered AUTH-REQUIRED
            // too (it tells nothing of the server's limits); its recovery
            // stays, so a refused data block is still skipped.
            Parsed::Reject(mut r) => {
                if !self.authenticated && !r.reply.is_empty() {
                    r.reply = seed::AUTH_REQUIRED;
                }
                return Ok(reject_step(r, out.buf()));
            }
        };
        if let seed::Request::Auth { user, password } = request {
            // A later `auth` may switch users; a failed one leaves the
            // connection as it was.
            let ok = self.ctx.authenticate("seed", user, password);
            self.authenticated |= ok;
            out.buf().extend_from_slice(if ok {
                seed::AUTHENTICATED
            } else {
                seed::AUTH_FAILED
            });
            return Ok(Step::Consumed(consumed));
        }
        if !self.authenticated {
            // The request was parsed whole (a `set` with its data block),
            // so the stream stays in step.
            out.buf().extend_from_slice(seed::AUTH_REQUIRED);
            return Ok(Step::Consumed(consumed));
        }
        let exec = &*self.ctx.exec;
        match request {
            seed::Request::Set { key, value } => {
                let cmd = Command::Store {
                    mode: exec::StoreMode::Set,
                    key,
                    value,
                    meta: ItemMeta::default(),
                    cas: None,
                };
                exec.execute(&cmd, &mut |resp| encode_seed(key, resp, out.buf()));
            }
            seed::Request::Get { keys } => {
                for key in keys {
                    let mut failed = false;
                    exec.execute(&Command::Get { key, touch: None }, &mut |resp| {
                        failed = matches!(resp, Response::Failed(_));
                        encode_seed(key, resp, out.buf());
                    });
                    if failed {
                        // The seed dialect has no error reply for a read;
                        // the reply ends at the NOT-STORED, as memcached's
                        // does on a server error.
                        return Ok(Step::Consumed(consumed));
                    }
                    out.flush_if_large()?;
                }
                out.buf().extend_from_slice(seed::END);
            }
            seed::Request::Delete { key } => {
                let cmd = Command::Delete { key, cas: None };
                exec.execute(&cmd, &mut |resp| encode_seed(key, resp, out.buf()));
            }
            seed::Request::Clear => {
                let cmd = Command::Flush { delay_secs: 0 };
                exec.execute(&cmd, &mut |resp| encode_seed(b"", resp, out.buf()));
            }
            seed::Request::Auth { .. } => {}
        }
        Ok(Step::Consumed(consumed))
    }

    fn batch_done(&mut self, io: &IoCounts) {
        self.ctx.batch_done(io);
    }
}
