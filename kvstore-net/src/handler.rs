//! Maps parsed requests of each dialect to [`Store`] calls and encodes the
//! replies. Client mistakes get the dialect's error reply; store failures
//! get `NOT-STORED` (seed) or `SERVER_ERROR <reason>` (memcached) and are
//! logged.

use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvstore_core::item::unix_now;
use kvstore_core::{
    CasOutcome, CounterOutcome, Error as StoreError, ItemMeta, Store, StoreOutcome, TouchOutcome,
};

use crate::connection::{Handler, IoCounts, Output, Step};
use crate::protocol::memcached::{self as mc, StoreMode};
use crate::protocol::{push_u64, seed, KeyPolicy, Parsed, Recovery, Reject};

/// Server-wide counters behind `stats` (memcached dialect).
#[derive(Debug)]
pub(crate) struct Stats {
    pub started: Instant,
    pub max_connections: usize,
    pub curr_connections: AtomicUsize,
    pub total_connections: AtomicU64,
    pub rejected_connections: AtomicU64,
    pub cmd_get: AtomicU64,
    pub cmd_set: AtomicU64,
    pub cmd_flush: AtomicU64,
    pub cmd_touch: AtomicU64,
    pub get_hits: AtomicU64,
    pub get_misses: AtomicU64,
    pub delete_hits: AtomicU64,
    pub delete_misses: AtomicU64,
    pub incr_hits: AtomicU64,
    pub incr_misses: AtomicU64,
    pub decr_hits: AtomicU64,
    pub decr_misses: AtomicU64,
    pub cas_hits: AtomicU64,
    pub cas_misses: AtomicU64,
    pub cas_badval: AtomicU64,
    pub touch_hits: AtomicU64,
    pub touch_misses: AtomicU64,
    pub store_errors: AtomicU64,
    pub bytes_read: AtomicU64,
    pub bytes_written: AtomicU64,
    /// `read` calls on client sockets.
    pub read_calls: AtomicU64,
    /// `write` calls on client sockets (one per batch of pipelined
    /// requests, unless a reply is larger than the flush threshold).
    pub write_calls: AtomicU64,
}

impl Stats {
    pub(crate) fn new(max_connections: usize) -> Stats {
        Stats {
            started: Instant::now(),
            max_connections,
            curr_connections: AtomicUsize::new(0),
            total_connections: AtomicU64::new(0),
            rejected_connections: AtomicU64::new(0),
            cmd_get: AtomicU64::new(0),
            cmd_set: AtomicU64::new(0),
            cmd_flush: AtomicU64::new(0),
            cmd_touch: AtomicU64::new(0),
            get_hits: AtomicU64::new(0),
            get_misses: AtomicU64::new(0),
            delete_hits: AtomicU64::new(0),
            delete_misses: AtomicU64::new(0),
            incr_hits: AtomicU64::new(0),
            incr_misses: AtomicU64::new(0),
            decr_hits: AtomicU64::new(0),
            decr_misses: AtomicU64::new(0),
            cas_hits: AtomicU64::new(0),
            cas_misses: AtomicU64::new(0),
            cas_badval: AtomicU64::new(0),
            touch_hits: AtomicU64::new(0),
            touch_misses: AtomicU64::new(0),
            store_errors: AtomicU64::new(0),
            bytes_read: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
            read_calls: AtomicU64::new(0),
            write_calls: AtomicU64::new(0),
        }
    }

    fn encode(&self, store: &Store, out: &mut Vec<u8>) {
        let now = unix_now();
        let n = |a: &AtomicU64| a.load(Relaxed).to_string();
        let lines: [(&str, String); 32] = [
            ("pid", std::process::id().to_string()),
            ("uptime", self.started.elapsed().as_secs().to_string()),
            ("time", now.to_string()),
            ("version", env!("CARGO_PKG_VERSION").to_string()),
            ("pointer_size", (usize::BITS).to_string()),
            (
                "curr_connections",
                self.curr_connections.load(Relaxed).to_string(),
            ),
            ("total_connections", n(&self.total_connections)),
            ("rejected_connections", n(&self.rejected_connections)),
            ("max_connections", self.max_connections.to_string()),
            ("cmd_get", n(&self.cmd_get)),
            ("cmd_set", n(&self.cmd_set)),
            ("cmd_flush", n(&self.cmd_flush)),
            ("cmd_touch", n(&self.cmd_touch)),
            ("get_hits", n(&self.get_hits)),
            ("get_misses", n(&self.get_misses)),
            ("delete_hits", n(&self.delete_hits)),
            ("delete_misses", n(&self.delete_misses)),
            ("incr_hits", n(&self.incr_hits)),
            ("incr_misses", n(&self.incr_misses)),
            ("decr_hits", n(&self.decr_hits)),
            ("decr_misses", n(&self.decr_misses)),
            ("cas_hits", n(&self.cas_hits)),
            ("cas_misses", n(&self.cas_misses)),
            ("cas_badval", n(&self.cas_badval)),
            ("touch_hits", n(&self.touch_hits)),
            ("touch_misses", n(&self.touch_misses)),
            ("store_errors", n(&self.store_errors)),
            ("bytes_read", n(&self.bytes_read)),
            ("bytes_written", n(&self.bytes_written)),
            ("read_calls", n(&self.read_calls)),
            ("write_calls", n(&self.write_calls)),
            ("curr_items", store.len().to_string()),
        ];
        for (name, value) in &lines {
            mc::encode_stat(out, name, value);
        }
        out.extend_from_slice(mc::END);
    }

    fn store_failed(&self, what: &str, key: &[u8], err: &StoreError) {
        self.store_errors.fetch_add(1, Relaxed);
        log::error!(
            "{what} of key {:?} failed: {err}",
            String::from_utf8_lossy(key)
        );
    }
}

/// What both dialects' handlers share.
pub(crate) struct Context {
    pub store: Arc<Store>,
    pub stats: Arc<Stats>,
    pub max_value_bytes: usize,
    pub keys: KeyPolicy,
}

impl Context {
    fn batch_done(&self, io: &IoCounts) {
        if io.bytes_read > 0 {
            self.stats.bytes_read.fetch_add(io.bytes_read, Relaxed);
            self.stats.read_calls.fetch_add(io.reads, Relaxed);
        }
        if io.bytes_written > 0 {
            self.stats
                .bytes_written
                .fetch_add(io.bytes_written, Relaxed);
            self.stats.write_calls.fetch_add(io.writes, Relaxed);
        }
    }
}

fn reject_step(r: Reject, out: &mut Vec<u8>) -> Step {
    out.extend_from_slice(r.reply);
    match r.recovery {
        Recovery::Discard(n) => Step::Discard(n),
        Recovery::Close => Step::Close,
    }
}

/// The seed dialect.
pub(crate) struct SeedHandler {
    pub ctx: Context,
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
            Parsed::Reject(r) => return Ok(reject_step(r, out.buf())),
        };
        let store = &*self.ctx.store;
        let stats = &*self.ctx.stats;
        match request {
            seed::Request::Set { key, value } => {
                stats.cmd_set.fetch_add(1, Relaxed);
                match store.set(key, value) {
                    Ok(()) => out.buf().extend_from_slice(seed::STORED),
                    Err(e) => {
                        stats.store_failed("set", key, &e);
                        out.buf().extend_from_slice(seed::NOT_STORED);
                    }
                }
            }
            seed::Request::Get { keys } => {
                for key in keys {
                    stats.cmd_get.fetch_add(1, Relaxed);
                    // Zero-copy: a cached value is encoded straight from
                    // the store's cache into the output buffer.
                    let found = store.get_item_with(key, |item| {
                        seed::encode_value(out.buf(), key, item.value);
                    });
                    match found {
                        Ok(found) => {
                            if found.is_none() {
                                seed::encode_value(out.buf(), key, b"");
                            }
                            let counter = match found {
                                Some(()) => &stats.get_hits,
                                None => &stats.get_misses,
                            };
                            counter.fetch_add(1, Relaxed);
                            out.flush_if_large()?;
                        }
                        Err(e) => {
                            // The seed dialect has no error reply for a
                            // read; the reply ends here, as memcached's
                            // does on a server error.
                            stats.store_failed("get", key, &e);
                            out.buf().extend_from_slice(seed::NOT_STORED);
                            return Ok(Step::Consumed(consumed));
                        }
                    }
                }
                out.buf().extend_from_slice(seed::END);
            }
            seed::Request::Delete { key } => match store.delete(key) {
                Ok(true) => {
                    stats.delete_hits.fetch_add(1, Relaxed);
                    out.buf().extend_from_slice(seed::DELETED)
                }
                Ok(false) => {
                    stats.delete_misses.fetch_add(1, Relaxed);
                    out.buf().extend_from_slice(seed::NOT_FOUND)
                }
                Err(e) => {
                    stats.store_failed("delete", key, &e);
                    out.buf().extend_from_slice(seed::NOT_STORED);
                }
            },
            seed::Request::Clear => {
                stats.cmd_flush.fetch_add(1, Relaxed);
                match store.clear() {
                    Ok(()) => out.buf().extend_from_slice(seed::DELETED),
                    Err(e) => {
                        stats.store_failed("clear", b"", &e);
                        out.buf().extend_from_slice(seed::NOT_STORED);
                    }
                }
            }
        }
        Ok(Step::Consumed(consumed))
    }

    fn batch_done(&mut self, io: &IoCounts) {
        self.ctx.batch_done(io);
    }
}

/// The memcached dialect.
pub(crate) struct McHandler {
    pub ctx: Context,
}

/// Appends a normal reply unless the request said `noreply`.
fn reply(out: &mut Vec<u8>, noreply: bool, bytes: &[u8]) {
    if !noreply {
        out.extend_from_slice(bytes);
    }
}

/// The reply to a failed store call: a value over the limit gets
/// memcached's own line, anything else `SERVER_ERROR <reason>`. Errors are
/// sent even with `noreply`.
fn store_error(stats: &Stats, what: &str, key: &[u8], err: &StoreError, out: &mut Vec<u8>) {
    match err {
        StoreError::ValueTooLarge { .. } => out.extend_from_slice(mc::TOO_LARGE),
        StoreError::KeyTooLong { .. } | StoreError::InvalidKey { .. } => {
            out.extend_from_slice(mc::BAD_FORMAT)
        }
        _ => {
            stats.store_failed(what, key, err);
            mc::encode_server_error(out, &err.to_string());
        }
    }
}

impl McHandler {
    fn store(
        &self,
        mode: StoreMode,
        key: &[u8],
        meta: ItemMeta,
        value: &[u8],
        noreply: bool,
        out: &mut Vec<u8>,
    ) {
        let store = &*self.ctx.store;
        let stats = &*self.ctx.stats;
        stats.cmd_set.fetch_add(1, Relaxed);
        let outcome = match mode {
            StoreMode::Set => store.set_with(key, value, meta).map(|_| mc::STORED),
            StoreMode::Add => store.add(key, value, meta).map(stored_or_not),
            StoreMode::Replace => store.replace(key, value, meta).map(stored_or_not),
            StoreMode::Append => store.append(key, value).map(stored_or_not),
            StoreMode::Prepend => store.prepend(key, value).map(stored_or_not),
            StoreMode::Cas(cas) => store
                .compare_and_swap(key, value, meta, cas)
                .map(|o| match o {
                    CasOutcome::Stored { .. } => {
                        stats.cas_hits.fetch_add(1, Relaxed);
                        mc::STORED
                    }
                    CasOutcome::Exists => {
                        stats.cas_badval.fetch_add(1, Relaxed);
                        mc::EXISTS
                    }
                    CasOutcome::NotFound => {
                        stats.cas_misses.fetch_add(1, Relaxed);
                        mc::NOT_FOUND
                    }
                }),
        };
        match outcome {
            Ok(bytes) => reply(out, noreply, bytes),
            Err(e) => store_error(stats, "store", key, &e, out),
        }
    }
}

fn stored_or_not(o: StoreOutcome) -> &'static [u8] {
    match o {
        StoreOutcome::Stored { .. } => mc::STORED,
        StoreOutcome::NotStored => mc::NOT_STORED,
    }
}

impl Handler for McHandler {
    fn step(&mut self, buf: &[u8], out: &mut Output<'_>) -> io::Result<Step> {
        let limits = mc::Limits {
            max_value_bytes: self.ctx.max_value_bytes,
            keys: self.ctx.keys,
        };
        let (request, consumed) = match mc::parse(buf, &limits) {
            Parsed::Request { request, consumed } => (request, consumed),
            Parsed::Incomplete => return Ok(Step::Incomplete),
            Parsed::Reject(r) => return Ok(reject_step(r, out.buf())),
        };
        let store = &*self.ctx.store;
        let stats = &*self.ctx.stats;
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
                self.store(mode, key, meta, value, noreply, out.buf());
            }
            mc::Request::Get { with_cas, keys } => {
                for key in keys {
                    stats.cmd_get.fetch_add(1, Relaxed);
                    // Zero-copy: a cached value is encoded straight from
                    // the store's cache into the output buffer.
                    let found = store.get_item_with(key, |item| {
                        let cas = with_cas.then_some(item.cas);
                        mc::encode_value(out.buf(), key, item.flags, item.value, cas);
                    });
                    match found {
                        Ok(Some(())) => {
                            stats.get_hits.fetch_add(1, Relaxed);
                            out.flush_if_large()?;
                        }
                        Ok(None) => {
                            stats.get_misses.fetch_add(1, Relaxed);
                        }
                        Err(e) => {
                            store_error(stats, "get", key, &e, out.buf());
                            return Ok(Step::Consumed(consumed));
                        }
                    }
                }
                out.buf().extend_from_slice(mc::END);
            }
            mc::Request::GetAndTouch {
                with_cas,
                exptime,
                keys,
            } => {
                let expiry = mc::expiry_from_exptime(exptime, unix_now());
                for key in keys {
                    stats.cmd_get.fetch_add(1, Relaxed);
                    stats.cmd_touch.fetch_add(1, Relaxed);
                    match store.get_and_touch(key, expiry) {
                        Ok(Some(item)) => {
                            stats.get_hits.fetch_add(1, Relaxed);
                            stats.touch_hits.fetch_add(1, Relaxed);
                            let cas = with_cas.then_some(item.cas);
                            mc::encode_value(out.buf(), key, item.flags, &item.value, cas);
                            out.flush_if_large()?;
                        }
                        Ok(None) => {
                            stats.get_misses.fetch_add(1, Relaxed);
                            stats.touch_misses.fetch_add(1, Relaxed);
                        }
                        Err(e) => {
                            store_error(stats, "gat", key, &e, out.buf());
                            return Ok(Step::Consumed(consumed));
                        }
                    }
                }
                out.buf().extend_from_slice(mc::END);
            }
            mc::Request::Delete { key, noreply } => match store.delete(key) {
                Ok(true) => {
                    stats.delete_hits.fetch_add(1, Relaxed);
                    reply(out.buf(), noreply, mc::DELETED)
                }
                Ok(false) => {
                    stats.delete_misses.fetch_add(1, Relaxed);
                    reply(out.buf(), noreply, mc::NOT_FOUND)
                }
                Err(e) => store_error(stats, "delete", key, &e, out.buf()),
            },
            mc::Request::Counter {
                incr,
                key,
                delta,
                noreply,
            } => {
                let result = if incr {
                    store.incr(key, delta)
                } else {
                    store.decr(key, delta)
                };
                let (hits, misses) = if incr {
                    (&stats.incr_hits, &stats.incr_misses)
                } else {
                    (&stats.decr_hits, &stats.decr_misses)
                };
                match result {
                    Ok(CounterOutcome::Value(n)) => {
                        hits.fetch_add(1, Relaxed);
                        if !noreply {
                            push_u64(out.buf(), n);
                            out.buf().extend_from_slice(b"\r\n");
                        }
                    }
                    Ok(CounterOutcome::NotFound) => {
                        misses.fetch_add(1, Relaxed);
                        reply(out.buf(), noreply, mc::NOT_FOUND)
                    }
                    Ok(CounterOutcome::NotNumeric) => out.buf().extend_from_slice(mc::NON_NUMERIC),
                    Err(e) => store_error(stats, "incr/decr", key, &e, out.buf()),
                }
            }
            mc::Request::Touch {
                key,
                exptime,
                noreply,
            } => {
                stats.cmd_touch.fetch_add(1, Relaxed);
                match store.touch(key, mc::expiry_from_exptime(exptime, unix_now())) {
                    Ok(TouchOutcome::Touched) => {
                        stats.touch_hits.fetch_add(1, Relaxed);
                        reply(out.buf(), noreply, mc::TOUCHED)
                    }
                    Ok(TouchOutcome::NotFound) => {
                        stats.touch_misses.fetch_add(1, Relaxed);
                        reply(out.buf(), noreply, mc::NOT_FOUND)
                    }
                    Err(e) => store_error(stats, "touch", key, &e, out.buf()),
                }
            }
            mc::Request::FlushAll { delay, noreply } => {
                stats.cmd_flush.fetch_add(1, Relaxed);
                let delay = mc::flush_delay(delay, unix_now());
                let result = if delay == 0 {
                    store.clear()
                } else {
                    store.clear_after(Duration::from_secs(delay))
                };
                match result {
                    Ok(()) => reply(out.buf(), noreply, mc::OK),
                    Err(e) => store_error(stats, "flush_all", b"", &e, out.buf()),
                }
            }
            mc::Request::Stats => stats.encode(store, out.buf()),
            mc::Request::Version => {
                out.buf().extend_from_slice(b"VERSION ");
                out.buf()
                    .extend_from_slice(env!("CARGO_PKG_VERSION").as_bytes());
                out.buf().extend_from_slice(b"\r\n");
            }
            mc::Request::Verbosity { noreply } => reply(out.buf(), noreply, mc::OK),
            mc::Request::Quit => return Ok(Step::Close),
        }
        Ok(Step::Consumed(consumed))
    }

    fn batch_done(&mut self, io: &IoCounts) {
        self.ctx.batch_done(io);
    }
}
